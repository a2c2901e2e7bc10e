//! `Backend` for Cloud Hypervisor: host and spec checks -> argv + the
//! `vm.create` body; the HTTP API as the control channel.
//!
//! Boot sequence (in `connect`, so it also completes a start interrupted
//! by a supervisor crash): wait for the API socket, `vmm.ping`, `vm.info`;
//! no VM yet -> `vm.create` + `vm.boot`; created but not booted ->
//! `vm.boot`; otherwise (an adopted, running VM) nothing to do.

use async_trait::async_trait;
use paddock_images::{check_file, detect_format};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use super::api::VmState;
use super::argv;
use super::client::ApiClient;
use super::config::{self, ChBoot, ChConfig};
use super::events;
use super::exit;
use super::stale;
use crate::accel;
use crate::backend::{check_disks, SavedState, Backend, ControlChannel, ControlError, ControlEvent, GuestStatus, LaunchPlan, RunPaths, MAX_SOCKET_PATH};
use crate::error::{Error, SpecError};
use crate::spec::{Accel, BackendKind, NetworkMode, VmSpec};
use crate::vm::phase::ExitInfo;

/// Events beyond this many unread are dropped (with a warning).
const EVENT_QUEUE: usize = 256;

#[derive(Debug, Clone)]
pub struct CloudHypervisorBackend {
    /// `cloud-hypervisor`, or a stand-in for tests.
    pub binary: PathBuf,
    /// Deadline for connecting and for every API call.
    pub control_timeout: Duration,
}

impl CloudHypervisorBackend {
    pub fn new(binary: PathBuf, control_timeout: Duration) -> Self {
        CloudHypervisorBackend { binary, control_timeout }
    }
}

/// The binary as the process would be started: a path, or a name on PATH.
pub(crate) fn find_binary(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.components().count() > 1 {
        return runnable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| runnable(p))
}

/// A guest CID for vsock, stable per VM name; 0-2 are reserved. CH's
/// vsock is hybrid (the host side is a Unix socket per VM), so the CID
/// only has to be valid, not unique on the host.
pub fn vsock_cid(name: &str) -> u32 {
    // FNV-1a: stable across builds, unlike std's hasher.
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    3 + h % (u32::MAX - 3)
}

impl CloudHypervisorBackend {
    fn unavailable(&self, spec: &VmSpec, reason: String) -> Error {
        Error::BackendUnavailable { name: spec.name.clone(), backend: BackendKind::CloudHypervisor.as_str(), reason }
    }

    /// CH runs only with hardware virtualisation: refuse where it cannot
    /// run, before anything is created. An explicit `accel = "kvm"` is the
    /// operator overruling the probe.
    fn check_host(&self, spec: &VmSpec) -> Result<(), Error> {
        if find_binary(&self.binary).is_none() {
            return Err(self.unavailable(
                spec,
                format!("no cloud-hypervisor binary at {:?}; install it or set --cloud-hypervisor-binary / CLOUD_HYPERVISOR_BIN", self.binary),
            ));
        }
        let host = accel::host();
        match spec.accel {
            Accel::Tcg => Err(SpecError::new(
                "accel",
                "cloud-hypervisor has no TCG (software emulation); use accel = \"auto\" or \"kvm\", or backend = \"qemu\"",
            )
            .into()),
            Accel::Auto if !host.kvm_usable => Err(self.unavailable(
                spec,
                format!(
                    "it needs hardware virtualisation and this host has none usable: {}; use backend = \"qemu\" (TCG), or set accel = \"kvm\" to try anyway",
                    host.reason
                ),
            )),
            // `accel = "kvm"` overrides the probe (warned in before_spawn,
            // once per start: prepare also runs to validate a spec).
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Backend for CloudHypervisorBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::CloudHypervisor
    }

    fn prepare(&self, spec: &VmSpec, paths: &RunPaths, lease: Option<&crate::netmgr::Lease>) -> Result<LaunchPlan, Error> {
        if paths.control_socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::io(
                format!("socket path {:?} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --run-dir", paths.control_socket),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        if paths.dir.to_string_lossy().contains(',') {
            return Err(Error::io(
                format!("run directory {:?} contains ','; cloud-hypervisor's option syntax cannot express it", paths.dir),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        self.check_host(spec)?;
        let boot = match (&spec.boot.kernel, &spec.boot.disk) {
            (Some(kernel), _) => {
                let (initrd, cmdline) = crate::backend::kernel_boot(spec, kernel, lease)?;
                ChBoot::Kernel { kernel: kernel.clone(), initrd, cmdline }
            }
            (None, Some(disk)) => {
                check_file("boot.disk", disk)?;
                let Some(fw) = &spec.boot.firmware else {
                    return Err(SpecError::new(
                        "boot.firmware",
                        "cloud-hypervisor has no built-in BIOS; set boot.firmware (rust-hypervisor-firmware or CLOUDHV.fd) to boot a disk",
                    )
                    .into());
                };
                check_file("boot.firmware", fw)?;
                let format = detect_format("boot.disk", disk)?;
                ChBoot::Disk { disk: disk.clone(), format, firmware: fw.clone() }
            }
            (None, None) => return Err(SpecError::new("boot", "set boot.kernel or boot.disk").into()),
        };
        let disks = check_disks(spec)?;
        if spec.network.mode == NetworkMode::User {
            return Err(SpecError::new(
                "network.mode",
                "cloud-hypervisor has no user-mode networking; use network.mode = \"tap\" (or \"none\"), or backend = \"qemu\"",
            )
            .into());
        }
        let cfg = ChConfig { vcpus: spec.vcpus, memory_mib: spec.memory_mib, boot, disks, vsock_cid: spec.vsock.then(|| vsock_cid(&spec.name)), tap: lease.map(|l| (l.tap.clone(), l.mac.clone())), paths: paths.clone() };
        let boot_payload = serde_json::to_value(config::vm_config(&cfg))
            .map_err(|e| Error::StartFailed { name: spec.name.clone(), reason: format!("cannot encode the vm.create body: {e}") })?;
        Ok(LaunchPlan {
            program: self.binary.clone(),
            arg0: Some(crate::backend::marker(&spec.name).into()),
            args: argv::build(paths),
            paths: paths.clone(),
            accel: Accel::Kvm,
            guest_address: crate::backend::reach(spec, lease),
            marker: crate::backend::marker(&spec.name),
            boot_payload: Some(boot_payload),
            network: crate::backend::network_info(spec, lease),
            vsock: crate::backend::vsock_info(spec, paths),
            vsock_device: None,
        })
    }

    async fn connect(&self, plan: &LaunchPlan) -> Result<Box<dyn ControlChannel>, ControlError> {
        let client = ApiClient::new(&plan.paths.control_socket, self.control_timeout);
        client.wait_for_socket(self.control_timeout).await?;
        let ping = client.ping().await?;
        tracing::debug!(version = %ping.version, socket = ?plan.paths.control_socket, "cloud-hypervisor answers");
        // CH opens (and truncates) the event file before it serves its API,
        // so once it answers, the file is this process's. Tail it from its
        // current end before anything is asked: no event of this boot is
        // missed, and none of an earlier life (or of before an adoption)
        // is replayed.
        let quit_sent = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let tail = events::spawn_tail(argv::events_path(&plan.paths), quit_sent.clone(), tx);
        let control = ChControl { client, quit_sent, events: Some(rx), tail };
        // Without a configuration (an adopted VM whose desired state is
        // stopped) nothing is created or booted: after `vm.shutdown` CH
        // says `Created`, and booting that would undo a stop the previous
        // supervisor had begun.
        let Some(body) = plan.boot_payload.as_ref() else { return Ok(Box::new(control)) };
        match control.client.info().await? {
            None => {
                control.client.create_body(body).await?;
                control.client.put("vm.boot").await?;
            }
            Some(info) if info.state == VmState::Created => control.client.put("vm.boot").await?,
            Some(_) => {}
        }
        Ok(Box::new(control))
    }

    fn before_spawn(&self, spec: &VmSpec, paths: &RunPaths) -> Result<(), Error> {
        if spec.accel == Accel::Kvm {
            let host = accel::host();
            if !host.kvm_usable {
                tracing::warn!(vm = %spec.name, reason = %host.reason, "accel = kvm overrides the hardware check; cloud-hypervisor may fail to start");
            }
        }
        stale::clean(paths).map_err(|e| {
            let reason = match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            };
            Error::StartFailed { name: spec.name.clone(), reason }
        })
    }

    /// CH restores the VM its snapshot describes (config.json names the
    /// source's disks, serial file and sockets): only under the source's
    /// own name, so those files are this VM's. The VMM starts without a
    /// VM; `load_state` restores it.
    fn incoming(&self, spec: &VmSpec, source: &str, plan: &mut LaunchPlan) -> Result<(), Error> {
        if spec.name != source {
            return Err(Error::Conflict {
                name: spec.name.clone(),
                message: format!(
                    "a Cloud Hypervisor snapshot restores only under the name of the VM it was taken of ({source:?}): its saved configuration names that VM's files"
                ),
            });
        }
        plan.boot_payload = None;
        Ok(())
    }

    fn exit_fault(&self, paths: &RunPaths, exit: &ExitInfo) -> Option<String> {
        if !exit.is_clean() {
            return None; // the status already says it failed
        }
        let log = std::fs::read(&paths.stderr_log).ok()?;
        // Only the end matters; a runaway log is not read whole.
        let tail = &log[log.len().saturating_sub(64 << 10)..];
        exit::fatal_error(&String::from_utf8_lossy(tail))
    }
}

/// Asks an orphaned Cloud Hypervisor (no VM actor) to end, over its API
/// socket: `vm.shutdown`, then `vmm.shutdown`.
pub async fn quit_orphan(api: &Path, timeout: Duration) -> bool {
    let c = ApiClient::new(api, timeout);
    quit(&c, &AtomicBool::new(true)).await.is_ok()
}

/// Ends the VMM: resume a paused VM first (shutting down a paused VM has
/// hung CH, #816/#817), `vm.shutdown`, then `vmm.shutdown`. The process may
/// exit before its answer arrives: a closed connection, or a socket nobody
/// listens on any more, is success.
pub async fn quit(client: &ApiClient, quit_sent: &AtomicBool) -> Result<(), ControlError> {
    let gone = |e: &ControlError| match e {
        ControlError::Closed => true,
        ControlError::Connect { source, .. } => {
            matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
        }
        _ => false,
    };
    quit_sent.store(true, Ordering::SeqCst);
    let state = match client.info().await {
        Ok(info) => info.map(|i| i.state),
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    if state == Some(VmState::Paused) {
        client.put("vm.resume").await?;
    }
    if matches!(state, Some(VmState::Running | VmState::Paused)) {
        match client.put("vm.shutdown").await {
            Ok(()) => {}
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        // Here CH says `Created`: a supervisor dying now must not make
        // adoption boot the VM again (tests/cloud_hypervisor.rs).
        crate::crash_point!("ch.quit.after-vm-shutdown");
    }
    match client.put("vmm.shutdown").await {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

struct ChControl {
    client: ApiClient,
    quit_sent: Arc<AtomicBool>,
    events: Option<mpsc::Receiver<ControlEvent>>,
    tail: tokio::task::JoinHandle<()>,
}

impl Drop for ChControl {
    fn drop(&mut self) {
        self.tail.abort();
    }
}

#[async_trait]
impl ControlChannel for ChControl {
    async fn status(&mut self) -> Result<GuestStatus, ControlError> {
        Ok(match self.client.info().await?.map(|i| i.state) {
            Some(VmState::Running) => GuestStatus::Running,
            Some(VmState::Paused) => GuestStatus::Paused,
            Some(VmState::Shutdown) => GuestStatus::Shutdown,
            Some(VmState::Created | VmState::BreakPoint) | None => GuestStatus::Other,
        })
    }

    async fn power_button(&mut self) -> Result<(), ControlError> {
        self.client.put("vm.power-button").await
    }

    async fn quit(&mut self) -> Result<(), ControlError> {
        quit(&self.client, &self.quit_sent).await
    }

    async fn pause(&mut self) -> Result<(), ControlError> {
        self.client.put("vm.pause").await
    }

    async fn resume(&mut self) -> Result<(), ControlError> {
        self.client.put("vm.resume").await
    }

    fn take_events(&mut self) -> Option<mpsc::Receiver<ControlEvent>> {
        self.events.take()
    }

    /// `vm.snapshot` of the paused VM into `state.dir` (CH's own files:
    /// config.json, state.json, memory ranges).
    async fn save_state(&mut self, state: &SavedState, timeout: Duration) -> Result<(), ControlError> {
        if self.client.info().await?.map(|i| i.state) == Some(VmState::Running) {
            self.client.put("vm.pause").await?;
        }
        let slow = ApiClient::new(self.client.socket(), timeout);
        slow.put_json("vm.snapshot", &serde_json::json!({ "destination_url": file_url(&state.dir) })).await
    }

    /// `vm.restore` into this VMM (started without a VM), then `vm.resume`.
    async fn load_state(&mut self, state: &SavedState, timeout: Duration) -> Result<(), ControlError> {
        let slow = ApiClient::new(self.client.socket(), timeout);
        slow.put_json("vm.restore", &serde_json::json!({ "source_url": file_url(&state.dir) })).await?;
        self.client.put("vm.resume").await
    }
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_cids_are_stable_and_valid() {
        assert_eq!(vsock_cid("web"), vsock_cid("web"));
        assert_ne!(vsock_cid("web"), vsock_cid("web2"));
        assert!(["a", "b", "web", ""].iter().all(|n| vsock_cid(n) >= 3));
    }

    fn backend() -> CloudHypervisorBackend {
        // Any runnable file passes the binary check; nothing is started.
        CloudHypervisorBackend::new("/bin/sh".into(), Duration::from_secs(1))
    }

    fn spec(dir: &Path, extra: serde_json::Value) -> VmSpec {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let mut v = serde_json::json!({"name": "t", "backend": "cloud-hypervisor", "accel": "kvm", "boot": {"kernel": kernel}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidSpec(s) => s.field,
            Error::ImageFile(f) => f.field().to_string(),
            other => panic!("not a spec error: {other}"),
        }
    }

    #[test]
    fn prepare_builds_the_marker_argv_and_create_body() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(Path::new("/run/p"), "t");
        let plan = backend().prepare(&spec(dir.path(), serde_json::json!({"vsock": true})), &paths, None).unwrap();
        assert_eq!(plan.arg0.as_deref(), Some(std::ffi::OsStr::new("paddock-t")));
        assert_eq!(plan.marker, "paddock-t");
        let cfg: crate::cloud_hypervisor::api::VmConfig = serde_json::from_value(plan.boot_payload.unwrap()).unwrap();
        assert_eq!(cfg.vsock.map(|v| v.cid), Some(i64::from(vsock_cid("t"))));
        assert_eq!(cfg.serial.file.as_deref(), Some(paths.console_log.as_path()));
    }

    #[test]
    fn what_cloud_hypervisor_cannot_do_is_an_invalid_spec() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(Path::new("/run/p"), "t");
        let b = backend();
        let tcg = spec(dir.path(), serde_json::json!({"accel": "tcg"}));
        assert_eq!(field_of(b.prepare(&tcg, &paths, None).unwrap_err()), "accel");
        let user = spec(dir.path(), serde_json::json!({"network": {"mode": "user"}}));
        assert_eq!(field_of(b.prepare(&user, &paths, None).unwrap_err()), "network.mode");
        let disk = dir.path().join("root.raw");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let no_fw = spec(dir.path(), serde_json::json!({"boot": {"disk": disk}}));
        assert_eq!(field_of(b.prepare(&no_fw, &paths, None).unwrap_err()), "boot.firmware");
    }

    #[test]
    fn a_missing_binary_is_not_found() {
        assert!(find_binary(Path::new("/nonexistent/cloud-hypervisor")).is_none());
        assert!(find_binary(Path::new("sh")).is_some());
    }
}
