//! `paddock console NAME`: the terminal in raw mode, joined to the serial
//! port; Ctrl-] detaches and restores the terminal.

use nix::sys::termios::{self, SetArg, Termios};
use std::os::fd::AsFd as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CliError;
use crate::client::Client;

const DETACH: u8 = 0x1d; // Ctrl-]

/// Restores the terminal on every exit path, including errors.
struct RawMode(Option<Termios>);

impl RawMode {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let Ok(orig) = termios::tcgetattr(stdin.as_fd()) else { return RawMode(None) }; // not a tty
        let mut raw = orig.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(orig) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, orig);
        }
    }
}

pub async fn attach(client: &Client, name: &str) -> Result<(), CliError> {
    let io = client.attach(name).await?;
    eprintln!("attached to {name}; Ctrl-] detaches\r");
    let _raw = RawMode::enter();
    let (mut rd, mut wr) = tokio::io::split(io);
    let to_terminal = async {
        let mut out = tokio::io::stdout();
        let mut buf = vec![0u8; 8192];
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
    let from_terminal = async {
        let mut inp = tokio::io::stdin();
        let mut buf = vec![0u8; 1024];
        loop {
            match inp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = &buf[..n];
                    if let Some(i) = data.iter().position(|b| *b == DETACH) {
                        let _ = wr.write_all(&data[..i]).await;
                        return;
                    }
                    if wr.write_all(data).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! { _ = to_terminal => {}, _ = from_terminal => {} }
    drop(_raw);
    eprintln!("\ndetached from {name}");
    Ok(())
}
