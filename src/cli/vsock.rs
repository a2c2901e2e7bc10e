//! `paddock vsock NAME PORT` (stdin/stdout joined to a guest vsock port)
//! and `paddock volume ls|rm`.

use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{CliError, VolumeCommand};
use crate::client::Client;

/// Copies stdin to the guest port and the port to stdout. The guest
/// closing ends the command; so does the end of stdin, once the guest has
/// then been quiet for `linger` (its answer to the last input still
/// arrives, as with `socat -t`). A half-close cannot be used instead: the
/// vsock device turns it into a full shutdown.
pub async fn bridge(client: &Client, name: &str, port: u32, linger: Duration) -> Result<(), CliError> {
    let io = client.vsock(name, port).await?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let (stdin_done_tx, mut stdin_done) = tokio::sync::watch::channel(false);
    let to_stdout = async {
        let mut out = tokio::io::stdout();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let read = if *stdin_done.borrow() {
                match tokio::time::timeout(linger, rd.read(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => return, // quiet for `linger` after the end of input
                }
            } else {
                // Reads are cancel-safe: switching to the lingering read
                // loses no data.
                tokio::select! {
                    r = rd.read(&mut buf) => r,
                    _ = stdin_done.changed() => continue,
                }
            };
            match read {
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
        let _ = wr.flush().await;
        let _ = stdin_done_tx.send(true);
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
