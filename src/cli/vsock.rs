//! `paddock vsock NAME PORT` (stdin/stdout joined to a guest vsock port)
//! and `paddock volume ls|rm`.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{CliError, VolumeCommand};
use crate::client::Client;

/// Copies stdin to the guest port and the port to stdout. End of stdin
/// half-closes the stream, so a request piped in still gets its answer;
/// the guest closing ends the command.
pub async fn bridge(client: &Client, name: &str, port: u32) -> Result<(), CliError> {
    let io = client.vsock(name, port).await?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let to_stdout = async {
        let mut out = tokio::io::stdout();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out.write_all(&buf[..n]).await.is_err() || out.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let from_stdin = async {
        let mut inp = tokio::io::stdin();
        let _ = tokio::io::copy(&mut inp, &mut wr).await;
        let _ = wr.shutdown().await;
        // Keep waiting for the guest's answer.
        std::future::pending::<()>().await
    };
    tokio::select! { _ = to_stdout => {}, _ = from_stdin => {} }
    Ok(())
}

pub async fn volume(client: &Client, json: bool, cmd: VolumeCommand) -> Result<(), CliError> {
    match cmd {
        VolumeCommand::Ls => {
            let vols = client.volumes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vols).unwrap_or_default());
            } else {
                println!("{:<32}  {:>12}  {:<6}  PATH", "NAME", "SIZE", "VM");
                for v in vols {
                    println!("{:<32}  {:>12}  {:<6}  {}", v.name, v.size, if v.in_use { "yes" } else { "-" }, v.path.display());
                }
            }
        }
        VolumeCommand::Rm { name } => {
            client.volume_remove(&name).await?;
            if !json {
                println!("{name}: volume removed");
            }
        }
    }
    Ok(())
}
