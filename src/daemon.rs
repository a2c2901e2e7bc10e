//! `paddock serve`: the runtime behind an HTTP API on a Unix socket.

use anyhow::Context as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::{Runtime, RuntimeConfig};

/// After SIGTERM or `POST /v1/shutdown`, how long open connections get to
/// finish before they are closed.
pub const API_DRAIN_BOUND: Duration = Duration::from_secs(2);
/// Then how long the supervision tree gets to stop (VMs keep running).
pub const RUNTIME_STOP_BOUND: Duration = Duration::from_secs(2);
/// The whole exit, signal to process end, is bounded by this (the sum of
/// the two above plus the process's own teardown).
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    pub qemu_binary: PathBuf,
    pub cloud_hypervisor_binary: PathBuf,
    pub vsock_device_binary: PathBuf,
    pub control_timeout: Duration,
    pub net: paddock_actors::netmgr::NetConfig,
    /// Timeouts and the connection cap of the API socket.
    pub api: crate::api::server::ApiLimits,
    /// Console log size bounds and event retention.
    pub bounds: crate::Bounds,
    /// How hypervisors are confined (`--no-confine` turns it off).
    pub confine: paddock_actors::confine::Confinement,
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    // Nothing the daemon creates is for other users (see private_dir.rs).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    let mut cfg = RuntimeConfig::new(&opts.state_dir, &opts.run_dir);
    cfg.qemu_binary = opts.qemu_binary.clone();
    cfg.cloud_hypervisor_binary = opts.cloud_hypervisor_binary.clone();
    cfg.vsock_device_binary = opts.vsock_device_binary.clone();
    cfg.control_timeout = opts.control_timeout;
    cfg.net = opts.net.clone();
    cfg.bounds = opts.bounds;
    cfg.confine = opts.confine.clone();
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
    let drain = crate::api::drain::Drain::default();
    let app = crate::api::router_with_drain(runtime.clone(), drain.clone());
    let rt2 = runtime.clone();
    let drain2 = drain.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = rt2.exit_requested() => tracing::info!("shutdown requested through the API"),
        }
        // Answers every wait in flight and ends every follower, so the
        // graceful shutdown below has nothing left to wait for.
        drain2.begin();
    };
    // The bound holds even against a client that never reads its last
    // line: open connections get API_DRAIN_BOUND once followers are ended.
    let mut api = opts.api.clone();
    api.shutdown_grace = api.shutdown_grace.min(API_DRAIN_BOUND);
    crate::api::server::serve(listener, app, api, stop).await;
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(w) = watchdog {
        w.abort();
        let _ = w.await;
    }
    let _ = std::fs::remove_file(&opts.socket);
    // Leaves VMs running (their processes are in their own sessions).
    match Arc::try_unwrap(runtime) {
        Ok(rt) => {
            if tokio::time::timeout(RUNTIME_STOP_BOUND, rt.shutdown()).await.is_err() {
                tracing::warn!(bound_ms = RUNTIME_STOP_BOUND.as_millis() as u64, "supervision tree did not stop in time; exiting anyway");
            }
        }
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
