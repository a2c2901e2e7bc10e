//! `Runtime`: the embedding API. Owns the store, the event bus, the status
//! board and the Registry actor; every method is a request with a deadline.

use ractor::{Actor, ActorRef, RpcReplyPort};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

use paddock_actors::cloud_hypervisor::CloudHypervisorBackend;
use paddock_actors::qemu::QemuBackend;
use paddock_actors::vm::VmRequest;
use paddock_actors::volumes::VolumeInfo;
use paddock_actors::vsock::{VsockError, VsockStream};
use paddock_actors::{
    Backends, ConsoleAttach, ConsoleFollow, Error, Event, EventBus, EventKind, RecoveryReport, RegistryActor, RegistryArgs, RegistryMessage,
    Result, StatusBoard, StopOutcome, Store, VmInfo, VmSpec, WaitFor,
};
use paddock_actors::snapshot::{AfterSnapshot, SnapshotInfo, Snapshots};

/// Where state lives and how hypervisors are reached.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Durable state (the SQLite database).
    pub state_dir: PathBuf,
    /// Sockets, logs and other per-run files of each VM.
    pub run_dir: PathBuf,
    pub qemu_binary: PathBuf,
    /// `cloud-hypervisor`, found on PATH unless a path is given. A VM with
    /// `backend = "cloud-hypervisor"` is refused with the reason when the
    /// binary is missing or the host has no hardware virtualisation.
    pub cloud_hypervisor_binary: PathBuf,
    /// The vhost-user vsock device for QEMU VMs with `vsock = true` on
    /// hosts without /dev/vhost-vsock (`vhost-device-vsock`, on PATH
    /// unless a path is given).
    pub vsock_device_binary: PathBuf,
    /// Deadline for connecting to a control socket and for each command.
    pub control_timeout: Duration,
    /// Address pool and NAT for `network.mode = "tap"`.
    pub net: paddock_actors::netmgr::NetConfig,
    /// Console log sizes (defaults; a spec may override) and event retention.
    pub bounds: paddock_actors::Bounds,
    /// Hypervisors as unprivileged identities with a syscall filter and
    /// limits (the default); `Confinement::off()` only for debugging.
    pub confine: paddock_actors::confine::Confinement,
}

impl RuntimeConfig {
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            cloud_hypervisor_binary: PathBuf::from("cloud-hypervisor"),
            vsock_device_binary: PathBuf::from("vhost-device-vsock"),
            control_timeout: Duration::from_secs(10),
            net: paddock_actors::netmgr::NetConfig::default(),
            bounds: paddock_actors::Bounds::default(),
            confine: paddock_actors::confine::Confinement::default(),
        }
    }
}

/// With confinement, the VM identities pass through the state and run
/// directories (0711: traversable, not listable) to their own 0700
/// directories; every parent must let them through too.
fn open_for_vms(config: &RuntimeConfig) -> Result<()> {
    use paddock_actors::confine;
    let Some(mode) = &config.confine.identity else {
        tracing::warn!("confinement is OFF (--no-confine): hypervisors run as root with every capability and no syscall filter");
        return Ok(());
    };
    confine::identity::validate(mode).map_err(|e| Error::io("confinement".to_string(), std::io::Error::other(e)))?;
    let vms = paddock_actors::disks::vm_dir(&config.state_dir, "");
    paddock_actors::private_dir::ensure_private_dir(&vms).map_err(|e| Error::io(format!("cannot create {vms:?}"), e))?;
    for dir in [&config.state_dir, &config.run_dir, &vms] {
        confine::open_for_traversal(dir).map_err(|e| Error::io(format!("cannot chmod {dir:?}"), e))?;
        confine::check_traversable(dir).map_err(|e| Error::io("confinement".to_string(), std::io::Error::other(e.to_string())))?;
    }
    tracing::info!(identity = ?mode, "confinement on: hypervisors run unprivileged, without capabilities, filtered");
    Ok(())
}

/// Extra time allowed for a request beyond the work it asks for.
const MARGIN: Duration = Duration::from_secs(10);
/// How long a start request may take: waiting for readiness is bounded by
/// the caller's timeout itself (a 504 then, not `timeout` + MARGIN later);
/// waiting for `running` gets the margin for the start's own work.
fn start_budget(wait: WaitFor, timeout: Duration) -> Duration {
    match wait {
        WaitFor::Ready => timeout,
        WaitFor::Running => timeout.saturating_add(MARGIN),
    }
}

/// Deadline for requests that do no waiting of their own.
const QUICK: Duration = Duration::from_secs(30);

pub struct Runtime {
    registry: ActorRef<RegistryMessage>,
    registry_task: tokio::task::JoinHandle<()>,
    board: StatusBoard,
    events: EventBus,
    config: RuntimeConfig,
    recovery: RecoveryReport,
    exit: Arc<tokio::sync::Notify>,
    reaper: tokio::task::JoinHandle<()>,
    images: Arc<paddock_images::ImageCache>,
    idempotency: crate::idempotency::IdempotencyKeys,
    metrics: crate::metrics::Metrics,
    /// Drains the event stream into the metrics between scrapes.
    metrics_task: tokio::task::JoinHandle<()>,
    /// The state directory's identity (names the VMs' cgroups).
    instance: String,
    /// One runtime per state directory and per run directory, for life.
    _locks: [crate::dir_lock::DirLock; 2],
}

impl Runtime {
    /// Opens the store (refusing a damaged one), loads recorded VMs and
    /// starts the supervision tree.
    pub async fn start(config: RuntimeConfig) -> Result<Runtime> {
        for dir in [&config.state_dir, &config.run_dir] {
            paddock_actors::private_dir::ensure_private_dir(dir).map_err(|e| Error::io(format!("cannot create {dir:?}"), e))?;
            // Made by an older version, or by hand: other users lose access.
            paddock_actors::private_dir::tighten_tree(dir);
        }
        open_for_vms(&config)?;
        let locks = [lock(&config.state_dir)?, lock(&config.run_dir)?];
        let store = Store::open(&config.state_dir.join("paddock.db"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let recovery_began = std::time::Instant::now();
        let records = store.load_vms().await?;
        let instance = store.instance_id().await?;
        let stats_instance = instance.clone();
        let events = EventBus::with_retention(store.clone(), config.bounds.events);
        // A history grown while no daemon ran (or under other bounds) is
        // trimmed before anyone replays it.
        events.prune().await;
        let net = Arc::new(paddock_actors::netmgr::NetManager::new(config.net.clone(), store.clone()));
        let images = Arc::new(
            paddock_images::ImageCache::open(config.state_dir.join("images"), paddock_images::CacheOptions::default())
                .map_err(|e| Error::Io { context: "cannot open the image cache".into(), source: std::io::Error::other(e.to_string()) })?,
        );
        let board = StatusBoard::default();
        let qemu: Arc<dyn paddock_actors::Backend> =
            Arc::new(QemuBackend::new(config.qemu_binary.clone(), config.control_timeout).with_vsock_device(config.vsock_device_binary.clone()));
        let cloud_hypervisor: Arc<dyn paddock_actors::Backend> =
            Arc::new(CloudHypervisorBackend::new(config.cloud_hypervisor_binary.clone(), config.control_timeout));
        // Subscribed before the registry starts: recovery's events count.
        let metrics = crate::metrics::Metrics::new(events.subscribe());
        let metrics_task = {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::metrics::DRAIN_EVERY);
                loop {
                    tick.tick().await;
                    metrics.drain();
                }
            })
        };
        let args = RegistryArgs {
            store,
            events: events.clone(),
            board: board.clone(),
            run_dir: config.run_dir.clone(),
            backends: Backends { qemu: Some(qemu), cloud_hypervisor: Some(cloud_hypervisor) },
            control_timeout: config.control_timeout,
            records,
            net: net.clone(),
            images: images.clone(),
            state_dir: config.state_dir.clone(),
            instance,
            console_log: config.bounds.console_log,
            confine: config.confine.clone(),
            recovered: Some(tx),
        };
        let (registry, registry_task) = Actor::spawn(None, RegistryActor, args)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot start the registry: {e}")))?;
        // Every VM's recovery has its own deadline inside; this one only
        // guards against a registry that died before reporting.
        let recovery = tokio::time::timeout(config.control_timeout + Duration::from_secs(60), rx)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        metrics.set_adoption(recovery_began.elapsed());
        // A snapshot cut short by a crash: its partial files go, and a VM
        // it had paused runs again.
        let snapshots = Snapshots::new(&config.state_dir);
        snapshots.remove_partial();
        for vm in snapshots.take_resume_marks() {
            let resumed = route_to(&registry, &vm, QUICK, |reply| VmRequest::Resume { reply }).await;
            tracing::info!(vm = %vm, ok = resumed.is_ok(), "resumed a VM paused by an interrupted snapshot");
        }
        // VMs suspended by `shutdown --suspend-vms` start from their
        // snapshots (the VM actor takes the mark).
        for vm in snapshots.suspended() {
            let wait = WaitFor::Running;
            match route_to(&registry, &vm, start_budget(wait, QUICK), |reply| VmRequest::Start { wait, rollback: false, reply }).await {
                Ok(_) => tracing::info!(vm = %vm, "resumed from its suspend snapshot"),
                Err(e) => tracing::warn!(vm = %vm, error = %e, "cannot start a suspended VM"),
            }
        }
        // The reaper runs once in recovery, then every minute, with the
        // event retention.
        let bus = events.clone();
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = net.reap().await {
                    tracing::warn!(error = %e, "network reaper failed");
                }
                bus.prune().await;
            }
        });
        Ok(Runtime {
            registry,
            registry_task,
            board,
            events,
            config,
            recovery,
            exit: Arc::default(),
            reaper,
            images,
            idempotency: Default::default(),
            metrics,
            metrics_task,
            instance: stats_instance,
            _locks: locks,
        })
    }

    /// What the start-up recovery found: adopted, lost and rolled-back VMs,
    /// stopped orphans.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// True if the registry serves its mailbox within `timeout` (the
    /// daemon's watchdog pings only then, so a wedged registry gets the
    /// daemon restarted by systemd).
    pub async fn ping(&self, timeout: Duration) -> bool {
        matches!(self.registry.call(RegistryMessage::Ping, Some(timeout)).await, Ok(ractor::rpc::CallResult::Success(())))
    }

    /// Stops every VM concurrently through the ladder.
    pub async fn stop_all(&self, graceful: Duration) -> Vec<(String, Result<StopOutcome>)> {
        let names: Vec<String> = self.list().into_iter().map(|v| v.name).collect();
        let stops = names.iter().map(|n| self.stop(n, graceful));
        let outcomes = futures::future::join_all(stops).await;
        names.into_iter().zip(outcomes).collect()
    }

    /// Asks the embedding program (the daemon) to exit.
    pub fn request_exit(&self) {
        self.exit.notify_one();
    }

    /// Resolves once `request_exit` was called.
    pub async fn exit_requested(&self) {
        self.exit.notified().await
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Defines `spec` and boots it. On failure nothing of the VM remains.
    /// A `boot.image` that is a host path is imported into the image cache
    /// first and the spec names it by its `sha256:` from then on.
    pub async fn up(&self, mut spec: VmSpec, wait: WaitFor, timeout: Duration) -> Result<VmInfo> {
        // Before the clock starts: a bad spec is a 400 whatever the budget.
        spec.validate()?;
        if let Some(path) = spec.boot.image.clone().filter(|i| paddock_actors::spec::is_image_path(i)) {
            let img = self.import_image(path.into(), "boot.image").await?;
            spec.boot.image = Some(format!("sha256:{}", img.sha256));
        }
        let (tx, rx) = ractor::concurrency::oneshot();
        self.registry
            .cast(RegistryMessage::Create { spec: Box::new(spec), wait, reply: tx.into() })
            .map_err(|_| gone())?;
        await_reply(rx, start_budget(wait, timeout), "up").await
    }

    /// As `up`, once per `key`: a repeat with the same key and spec
    /// answers the first result (`replayed`), a different spec is a
    /// conflict (see `crate::idempotency`).
    pub async fn up_idempotent(&self, key: &str, spec: VmSpec, wait: WaitFor, timeout: Duration) -> Result<crate::idempotency::Created> {
        crate::idempotency::check_key(key).map_err(|m| Error::InvalidSpec(paddock_actors::SpecError::new("idempotency_key", m)))?;
        self.idempotency.run(key, spec, |spec| self.up(spec, wait, timeout)).await
    }

    pub async fn start_vm(&self, name: &str, wait: WaitFor, timeout: Duration) -> Result<VmInfo> {
        self.route(name, start_budget(wait, timeout), |reply| VmRequest::Start { wait, rollback: false, reply }).await
    }

    /// Runs the shutdown ladder; `graceful` bounds the ACPI rung.
    pub async fn stop(&self, name: &str, graceful: Duration) -> Result<StopOutcome> {
        // Saturating: an embedder may pass Duration::MAX for "no limit".
        let budget = graceful.saturating_add(paddock_actors::vm::RUNG_WAIT * 3 + MARGIN);
        self.route(name, budget, |reply| VmRequest::Stop { graceful, reply }).await
    }

    pub async fn pause(&self, name: &str) -> Result<VmInfo> {
        self.route(name, QUICK, |reply| VmRequest::Pause { reply }).await
    }

    pub async fn resume(&self, name: &str) -> Result<VmInfo> {
        self.route(name, QUICK, |reply| VmRequest::Resume { reply }).await
    }

    /// Deletes the VM and everything it owned except its data disk;
    /// `force` stops it first.
    pub async fn remove(&self, name: &str, force: bool) -> Result<()> {
        self.remove_with(name, force, false).await
    }

    /// As `remove`; with `volumes` the data disk is deleted too.
    pub async fn remove_with(&self, name: &str, force: bool, volumes: bool) -> Result<()> {
        let budget = paddock_actors::vm::RUNG_WAIT * 3 + MARGIN;
        self.route(name, budget, |reply| VmRequest::Remove { force, volumes, reply }).await
    }

    /// Pauses VM `name`, saves its state and disks as snapshot `snapshot`
    /// (`STATE_DIR/snapshots/`), then resumes or stops it as `then` says.
    pub async fn snapshot(&self, name: &str, snapshot: &str, then: AfterSnapshot) -> Result<SnapshotInfo> {
        paddock_actors::snapshot::validate_name(snapshot)?;
        let snapshot = snapshot.to_string();
        let budget = paddock_actors::control::STATE_TIMEOUT + self.config.control_timeout + MARGIN;
        self.route(name, budget, |reply| VmRequest::Snapshot { snapshot, then, reply }).await
    }

    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        Snapshots::new(&self.config.state_dir).list()
    }

    pub fn get_snapshot(&self, snapshot: &str) -> Result<SnapshotInfo> {
        Ok(Snapshots::new(&self.config.state_dir).get(snapshot)?)
    }

    /// Snapshots every running or paused VM (`suspend-NAME`) and stops
    /// it; the next `Runtime::start` starts each from its snapshot, once.
    pub async fn suspend_all(&self) -> Vec<(String, Result<SnapshotInfo>)> {
        let names: Vec<String> =
            self.list().into_iter().filter(|v| matches!(v.phase, paddock_actors::VmPhase::Running | paddock_actors::VmPhase::Paused)).map(|v| v.name).collect();
        let snapshots = Snapshots::new(&self.config.state_dir);
        let suspend = |name: String| {
            let snapshots = snapshots.clone();
            async move {
                let snap = format!("suspend-{name}");
                // The previous suspension's, used already.
                let _ = snapshots.remove(&snap, None);
                let r = self.snapshot(&name, &snap, AfterSnapshot::Stop).await;
                let r = match r {
                    Ok(info) => snapshots.mark_suspended(&name, &snap).map(|()| info).map_err(Error::from),
                    Err(e) => Err(e),
                };
                // The snapshot's answer comes as the stop begins: wait for
                // its end (a stop joins the one in progress).
                if r.is_ok() {
                    if let Err(e) = self.stop(&name, Duration::ZERO).await {
                        tracing::warn!(vm = %name, error = %e, "suspended VM did not stop");
                    }
                }
                (name, r)
            }
        };
        futures::future::join_all(names.into_iter().map(suspend)).await
    }

    /// Deletes a snapshot; refused while a VM starts from it.
    pub async fn remove_snapshot(&self, snapshot: &str) -> Result<()> {
        let user = self.list().into_iter().find(|v| v.spec.boot.snapshot.as_deref() == Some(snapshot)).map(|v| v.name);
        let info = Snapshots::new(&self.config.state_dir).remove(snapshot, user.as_deref())?;
        let message = format!("snapshot {snapshot:?} removed");
        self.events.publish(&info.vm, paddock_actors::EventKind::Note, 0, Some(message)).await;
        Ok(())
    }

    /// A new VM `name` (default: the snapshotted VM's name) started from
    /// snapshot `snapshot`: the snapshot's spec under the new name, with
    /// `boot.snapshot` set, supervised like any other VM.
    pub async fn restore(&self, snapshot: &str, name: Option<&str>, wait: WaitFor, timeout: Duration) -> Result<VmInfo> {
        let info = self.get_snapshot(snapshot)?;
        let mut spec = info.spec;
        spec.name = name.map(String::from).unwrap_or(info.vm);
        spec.boot.snapshot = Some(snapshot.to_string());
        self.up(spec, wait, timeout).await
    }

    /// Copies a host image file (zstd and xz are decompressed) into the
    /// image cache by content; `field` names it in errors. The file is only
    /// read.
    pub async fn import_image(&self, path: PathBuf, field: &str) -> Result<paddock_images::CachedImage> {
        let images = self.images.clone();
        let imported = tokio::task::spawn_blocking(move || images.import(&path))
            .await
            .map_err(|e| paddock_actors::Error::Unavailable(format!("image import: {e}")))?;
        imported.map_err(|e| paddock_actors::SpecError::new(field, crate::api::error::chain(&e)).into())
    }

    /// The image cache (`STATE_DIR/images`).
    pub fn images(&self) -> &Arc<paddock_images::ImageCache> {
        &self.images
    }

    pub fn list(&self) -> Vec<VmInfo> {
        self.board.list()
    }

    /// The VMs carrying every label of `selectors`.
    pub fn list_labeled(&self, selectors: &[paddock_actors::labels::Selector]) -> Vec<VmInfo> {
        self.board.list().into_iter().filter(|v| selectors.iter().all(|s| s.matches(&v.spec.labels))).collect()
    }

    /// Waits until the VM's current run ends (at once if it is not
    /// running) and says how: power-off, a ladder rung, a crash with its
    /// signal or exit code, a failure.
    pub async fn wait_exit(&self, name: &str, timeout: Duration) -> Result<crate::run_end::RunEnd> {
        use crate::run_end::RunEnd;
        // Subscribed before reading the board: an end after the read is
        // in the stream.
        let mut live = self.events.subscribe();
        let now = self.get(name)?;
        if let Some(end) = RunEnd::from_phase(name, &now.phase, now.generation) {
            return Ok(end);
        }
        let wait = async {
            loop {
                match live.recv().await {
                    Ok(ev) if ev.vm == name => match ev.kind {
                        EventKind::Phase { phase } => {
                            if let Some(end) = RunEnd::from_phase(name, &phase, ev.generation) {
                                return Ok(end);
                            }
                        }
                        EventKind::Removed => return Err(Error::NotFound { name: name.to_string() }),
                        _ => {}
                    },
                    Ok(_) => {}
                    // Fell behind: the board has the latest phase.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let now = self.get(name)?;
                        if let Some(end) = RunEnd::from_phase(name, &now.phase, now.generation) {
                            return Ok(end);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(gone()),
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| Err(Error::Timeout { what: format!("waiting for VM {name:?} to exit"), timeout_ms: timeout.as_millis() as u64 }))
    }

    /// The counters kept between scrapes (the API records its requests).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Every metric in the Prometheus text format.
    pub fn metrics_text(&self) -> std::result::Result<String, std::fmt::Error> {
        let vms = self.list();
        self.metrics.encode(&crate::metrics::Snapshot { vms: &vms, events_written: self.events.written() })
    }

    /// What each VM uses now (`paddock stats`), optionally one VM.
    pub fn stats(&self, name: Option<&str>) -> Result<Vec<crate::metrics::figures::VmFigures>> {
        let vms = match name {
            Some(n) => vec![self.get(n)?],
            None => self.list(),
        };
        Ok(vms.iter().map(crate::metrics::figures::of).collect())
    }

    /// This host as a scheduler sees it (`GET /v1/host`).
    pub async fn host(&self) -> crate::host::HostInfo {
        use crate::host;
        let (qemu, ch) = futures::join!(
            host::backend("qemu", &self.config.qemu_binary),
            host::backend("cloud-hypervisor", &self.config.cloud_hypervisor_binary)
        );
        let accel = paddock_actors::accel::host();
        let (memory_total_bytes, memory_available_bytes) = host::memory();
        host::HostInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            backends: vec![qemu, ch],
            hardware_virtualization: host::HardwareVirtualization { usable: accel.kvm_usable, reason: accel.reason.clone() },
            cpus: host::cpus(),
            memory_total_bytes,
            memory_available_bytes,
            vms: host::vms(&self.list()),
        }
    }

    pub fn get(&self, name: &str) -> Result<VmInfo> {
        let mut info = self.board.get(name).ok_or_else(|| Error::NotFound { name: name.to_string() })?;
        if info.pid.is_some() && self.config.confine.enabled() {
            info.stats = paddock_actors::confine::stats(&self.instance, name);
        }
        Ok(info)
    }

    /// A connected stream to port `port` of the guest's vsock, on either
    /// backend (the VM needs `vsock = true` and must be running). The
    /// guest must listen on that port; the handshake has a deadline.
    pub async fn vsock_connect(&self, name: &str, port: u32) -> Result<VsockStream> {
        let info = self.get(name)?;
        if !info.spec.vsock {
            return Err(VsockError::NotEnabled { name: name.to_string() }.into());
        }
        let Some(vsock) = info.vsock.filter(|_| info.pid.is_some()) else {
            return Err(VsockError::NotRunning { name: name.to_string() }.into());
        };
        Ok(paddock_actors::vsock::connect(name, &vsock, port, self.config.control_timeout).await?)
    }

    /// Data disks kept after their VM was removed (`rm` without
    /// `--volumes`), and those of existing VMs.
    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.registry_call(QUICK, |reply| RegistryMessage::Volumes { reply }).await
    }

    /// Deletes the kept data disk of `name`; refused while a VM of that
    /// name exists (use `remove_with(name, .., true)` for that).
    pub async fn remove_volume(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.registry_call(QUICK, |reply| RegistryMessage::RemoveVolume { name, reply }).await
    }

    async fn registry_call<T: Send + 'static>(&self, timeout: Duration, make: impl FnOnce(RpcReplyPort<Result<T>>) -> RegistryMessage) -> Result<T> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.registry.cast(make(tx.into())).map_err(|_| gone())?;
        await_reply(rx, timeout, "the registry").await
    }

    pub async fn console_follow(&self, name: &str) -> Result<ConsoleFollow> {
        self.route(name, QUICK, |reply| VmRequest::Follow { reply }).await
    }

    pub async fn console_attach(&self, name: &str) -> Result<ConsoleAttach> {
        self.route(name, QUICK, |reply| VmRequest::Attach { reply }).await
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Publishes a free-form note on the event stream (e.g. image pulls).
    pub async fn publish_note(&self, subject: &str, message: String) {
        self.events.publish(subject, paddock_actors::EventKind::Note, 0, Some(message)).await;
    }

    /// Recorded events above `since` as NDJSON (at most `limit`), with the
    /// last one's seq (None: no more).
    pub async fn event_lines_since(&self, since: u64, limit: u32) -> Result<(Vec<u8>, Option<u64>)> {
        Ok(self.events.store().event_lines_since(since, limit).await?)
    }

    /// Recorded events with a sequence number above `since`.
    pub async fn events_since(&self, since: u64, limit: u32) -> Result<Vec<Event>> {
        Ok(self.events.store().events_since(since, limit).await?)
    }

    /// Stops the supervision tree. VMs keep running: their processes live
    /// in their own sessions and are re-adopted by the next start.
    pub async fn shutdown(self) {
        self.reaper.abort();
        self.metrics_task.abort();
        self.registry.stop(None);
        let _ = self.registry_task.await;
    }

    async fn route<T: Send + 'static>(
        &self,
        name: &str,
        timeout: Duration,
        make: impl FnOnce(RpcReplyPort<Result<T>>) -> VmRequest,
    ) -> Result<T> {
        route_to(&self.registry, name, timeout, make).await
    }
}

async fn route_to<T: Send + 'static>(
    registry: &ActorRef<RegistryMessage>,
    name: &str,
    timeout: Duration,
    make: impl FnOnce(RpcReplyPort<Result<T>>) -> VmRequest,
) -> Result<T> {
    let (tx, rx) = ractor::concurrency::oneshot();
    registry.cast(RegistryMessage::Route { name: name.to_string(), msg: make(tx.into()) }).map_err(|_| gone())?;
    await_reply(rx, timeout, name).await
}

fn gone() -> Error {
    Error::Unavailable("the registry is not running".into())
}

async fn await_reply<T>(rx: tokio::sync::oneshot::Receiver<Result<T>>, timeout: Duration, what: &str) -> Result<T> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(Error::Unavailable(format!("request for {what} was dropped"))),
        Err(_) => Err(Error::Timeout { what: format!("request for {what}"), timeout_ms: timeout.as_millis() as u64 }),
    }
}

fn lock(dir: &std::path::Path) -> Result<crate::dir_lock::DirLock> {
    crate::dir_lock::DirLock::acquire(dir).map_err(|e| {
        let source = match &e {
            crate::dir_lock::LockError::Io { source, .. } => std::io::Error::new(source.kind(), source.to_string()),
            crate::dir_lock::LockError::Held { .. } => std::io::Error::new(std::io::ErrorKind::WouldBlock, "the lock is held"),
        };
        Error::Io { context: e.to_string(), source }
    })
}

