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
    pub cloud_hypervisor_binary: PathBuf,
    pub control_timeout: Duration,
    pub net: paddock_actors::netmgr::NetConfig,
    /// Timeouts and the connection cap of the API socket.
    pub api: crate::api::server::ApiLimits,
    /// Console log size bounds and event retention.
    pub bounds: crate::Bounds,
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    // Nothing the daemon creates is for other users (see private_dir.rs).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    let mut cfg = RuntimeConfig::new(&opts.state_dir, &opts.run_dir);
    cfg.qemu_binary = opts.qemu_binary.clone();
    cfg.cloud_hypervisor_binary = opts.cloud_hypervisor_binary.clone();
    cfg.control_timeout = opts.control_timeout;
    cfg.net = opts.net.clone();
    cfg.bounds = opts.bounds;
    let listener = bind(&opts.socket).await?;
    let runtime = match Runtime::start(cfg).await {
        Ok(r) => Arc::new(r),
        Err(e) => {
            let _ = std::fs::remove_file(&opts.socket);
            return Err(anyhow::Error::new(e).context("cannot start the runtime"));
        }
    };
    let report = runtime.recovery_report();
    tracing::info!(
        socket = ?opts.socket,
        adopted = report.adopted.len(),
        lost = report.lost.len(),
        rolled_back = report.rolled_back.len(),
        orphans_stopped = report.orphans_stopped.len(),
        "paddock serving"
    );
    // READY=1 only now: every recorded VM is adopted or handled.
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("serving")]);
    let watchdog = start_watchdog(runtime.clone());
    let app = crate::api::router(runtime.clone());
    let rt2 = runtime.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = rt2.exit_requested() => tracing::info!("shutdown requested through the API"),
        }
    };
    crate::api::server::serve(listener, app, opts.api.clone(), stop).await;
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = std::fs::remove_file(&opts.socket);
    // Leaves VMs running (their processes are in their own sessions).
    match Arc::try_unwrap(runtime) {
        Ok(rt) => rt.shutdown().await,
        Err(_) => tracing::warn!("requests still in flight at shutdown"),
    }
    tracing::info!("paddock stopped; VMs keep running");
    Ok(())
}

fn notify(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// Pings systemd's watchdog at half its interval, but only when the
/// registry answers: a wedged actor system stops the pings and systemd
/// restarts the daemon (VMs keep running and are re-adopted).
fn start_watchdog(runtime: Arc<Runtime>) -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let period = Duration::from_micros(usec) / 2;
    tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if runtime.ping(period).await {
                notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("registry did not answer the watchdog ping");
            }
        }
    }))
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
