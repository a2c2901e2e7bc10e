//! `paddock serve`: the runtime behind an HTTP API on a Unix socket.

use anyhow::Context as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::{Runtime, RuntimeConfig};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    pub qemu_binary: PathBuf,
    pub control_timeout: Duration,
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let mut cfg = RuntimeConfig::new(&opts.state_dir, &opts.run_dir);
    cfg.qemu_binary = opts.qemu_binary.clone();
    cfg.control_timeout = opts.control_timeout;
    let listener = bind(&opts.socket).await?;
    let runtime = match Runtime::start(cfg).await {
        Ok(r) => Arc::new(r),
        Err(e) => {
            let _ = std::fs::remove_file(&opts.socket);
            return Err(anyhow::Error::new(e).context("cannot start the runtime"));
        }
    };
    tracing::info!(socket = ?opts.socket, state_dir = ?opts.state_dir, run_dir = ?opts.run_dir, "paddock serving");
    let app = crate::api::router(runtime.clone());
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await;
    let _ = std::fs::remove_file(&opts.socket);
    served.context("API server failed")?;
    // Leaves VMs running (their processes are in their own sessions).
    match Arc::try_unwrap(runtime) {
        Ok(rt) => rt.shutdown().await,
        Err(_) => tracing::warn!("requests still in flight at shutdown"),
    }
    tracing::info!("paddock stopped; VMs keep running");
    Ok(())
}

/// Binds the API socket (mode 0660). A socket file nobody listens on is a
/// leftover of a crashed daemon and is replaced; a live one means another
/// daemon owns this socket.
async fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir:?}"))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another paddock daemon is serving on {path:?}");
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {path:?}"))?;
    }
    let l = tokio::net::UnixListener::bind(path).with_context(|| format!("cannot bind {path:?}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).with_context(|| format!("cannot chmod {path:?}"))?;
    Ok(l)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
