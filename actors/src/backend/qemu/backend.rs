//! `Backend` for QEMU: spec -> checked files -> argv; QMP as the control
//! channel.

use async_trait::async_trait;
use paddock_images::{check_file, detect_format};
use paddock_net::MacAddress;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

use super::argv::{self, QemuBoot, QemuConfig, QemuNet, QemuVsock};
use super::qmp::QmpClient;
use crate::accel;
use crate::backend::{check_disks, SavedState, Backend, ControlChannel, ControlError, ControlEvent, GuestStatus, LaunchPlan, RunPaths, MAX_SOCKET_PATH};
use crate::error::{Error, SpecError};
use crate::spec::{BackendKind, NetworkMode, VmSpec};
use crate::vsock;

#[derive(Debug, Clone)]
pub struct QemuBackend {
    /// `qemu-system-x86_64`, or a stand-in for tests.
    pub binary: PathBuf,
    /// Deadline for connecting and for every QMP command.
    pub control_timeout: Duration,
    /// The vhost-user vsock device (`vhost-device-vsock`, found on PATH
    /// unless a path is given), used where /dev/vhost-vsock is missing.
    pub vsock_device: PathBuf,
    /// `--version`, asked once.
    version: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl QemuBackend {
    pub fn new(binary: PathBuf, control_timeout: Duration) -> Self {
        QemuBackend { binary, control_timeout, vsock_device: PathBuf::from("vhost-device-vsock"), version: Default::default() }
    }

    pub fn with_vsock_device(mut self, binary: PathBuf) -> Self {
        self.vsock_device = binary;
        self
    }

    /// The VM's vsock device: the kernel's where it exists, else a
    /// vhost-user device process (refused, with the fix, if not installed).
    fn vsock(&self, spec: &VmSpec, paths: &RunPaths) -> Result<(Option<QemuVsock>, Option<vsock::DevicePlan>), Error> {
        if !spec.vsock {
            return Ok((None, None));
        }
        let cid = vsock::guest_cid(&spec.name);
        if std::path::Path::new(vsock::VHOST_VSOCK_DEV).exists() {
            return Ok((Some(QemuVsock::Kernel { cid }), None));
        }
        let Some(binary) = crate::cloud_hypervisor::backend::find_binary(&self.vsock_device) else {
            return Err(Error::BackendUnavailable {
                name: spec.name.clone(),
                backend: BackendKind::Qemu.as_str(),
                reason: format!(
                    "vsock: this host has no {} and no vhost-user vsock device at {:?}; install one with `cargo install vhost-device-vsock` (or set --vsock-device-binary), or set vsock = false",
                    vsock::VHOST_VSOCK_DEV,
                    self.vsock_device
                ),
            });
        };
        let plan = vsock::device_plan(&binary, &spec.name, paths);
        // Guest-initiated connections arrive at `vsock.sock_<port>`.
        let longest = vsock::host_socket(paths).as_os_str().len() + 11;
        if longest > MAX_SOCKET_PATH {
            return Err(Error::io(
                format!("vsock socket paths under {:?} would be longer than {MAX_SOCKET_PATH} bytes; use a shorter --run-dir", paths.dir),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        Ok((Some(QemuVsock::User { cid, socket: plan.socket.clone() }), Some(plan)))
    }
}

/// Asks an orphaned QEMU (no VM actor) to quit over its QMP socket.
pub async fn quit_orphan(qmp: &std::path::Path, timeout: Duration) -> bool {
    match QmpClient::connect(qmp, timeout).await {
        Ok(mut c) => c.execute("quit", None).await.is_ok(),
        Err(_) => false,
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }
    /// QMP ends its stream with `Closed` after the last event.
    fn drains_events_after_exit(&self) -> bool {
        true
    }

    fn prepare(&self, spec: &VmSpec, paths: &RunPaths, lease: Option<&crate::netmgr::Lease>) -> Result<LaunchPlan, Error> {
        for p in [&paths.control_socket, &paths.serial_socket, &crate::display::vnc_socket(paths)] {
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(Error::Io {
                    context: format!("socket path {p:?} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --run-dir"),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                });
            }
        }
        let (vsock, vsock_device) = self.vsock(spec, paths)?;
        let boot = match (&spec.boot.kernel, &spec.boot.disk) {
            (Some(kernel), _) => {
                let (initrd, cmdline) = crate::backend::kernel_boot(spec, kernel, lease)?;
                QemuBoot::Kernel { kernel: kernel.clone(), initrd, cmdline }
            }
            (None, Some(disk)) => {
                check_file("boot.disk", disk)?;
                if let Some(fw) = &spec.boot.firmware {
                    check_file("boot.firmware", fw)?;
                }
                let format = detect_format("boot.disk", disk)?;
                QemuBoot::Disk { disk: disk.clone(), format, firmware: spec.boot.firmware.clone() }
            }
            (None, None) => return Err(SpecError::new("boot", "set boot.kernel or boot.disk").into()),
        };
        let efi = match (spec.firmware, &spec.boot.efi) {
            (crate::spec::Firmware::Bios, _) => None,
            (crate::spec::Firmware::Uefi, Some(flash)) => Some(flash.clone()),
            (crate::spec::Firmware::Uefi, None) => return Err(SpecError::new("firmware", "OVMF is found when the VM's disks are made; this start skipped that").into()),
        };
        let disks = check_disks(spec)?;
        let net = match (spec.network.mode, lease) {
            (NetworkMode::None, _) => QemuNet::None,
            (NetworkMode::User, _) => QemuNet::User { mac: MacAddress::for_vm(&spec.name), forwards: spec.network.forwards.clone() },
            (NetworkMode::Tap, Some(l)) => QemuNet::Tap { ifname: l.tap.clone(), mac: l.mac.clone() },
            // Validation only: the lease comes at start.
            (NetworkMode::Tap, None) => QemuNet::None,
        };
        let accel = accel::resolve(spec.accel, &spec.name);
        let cfg = QemuConfig {
            name: spec.name.clone(),
            accel,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            boot,
            disks,
            net,
            vsock,
            paths: paths.clone(),
            on_panic: spec.on_panic,
            display: spec.display,
            efi,
        };
        let mut guest_address = crate::backend::reach(spec, lease);
        guest_address.extend(crate::display::address(spec, paths));
        Ok(LaunchPlan {
            program: self.binary.clone(),
            arg0: None,
            args: argv::build(&cfg),
            paths: paths.clone(),
            accel,
            guest_address,
            marker: argv::marker(&spec.name),
            boot_payload: None,
            network: crate::backend::network_info(spec, lease),
            vsock: crate::backend::vsock_info(spec, paths),
            vsock_device,
        })
    }

    async fn connect(&self, plan: &LaunchPlan) -> Result<Box<dyn ControlChannel>, ControlError> {
        let client = QmpClient::connect(&plan.paths.control_socket, self.control_timeout).await?;
        Ok(Box::new(QmpControl { client }))
    }

    fn incoming(&self, _spec: &VmSpec, _source: &str, plan: &mut LaunchPlan) -> Result<(), Error> {
        // The state arrives later over QMP (`migrate-incoming`).
        plan.args.extend(["-incoming".into(), "defer".into()]);
        Ok(())
    }

    fn version(&self) -> String {
        self.version.get_or_init(|| qemu_version(&self.binary)).clone()
    }
}

/// The first line of `qemu-system-x86_64 --version`.
fn qemu_version(binary: &std::path::Path) -> String {
    match std::process::Command::new(binary).arg("--version").stdin(std::process::Stdio::null()).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string(),
        Err(e) => {
            tracing::warn!(binary = ?binary, error = %e, "cannot ask QEMU for its version");
            String::new()
        }
    }
}

struct QmpControl {
    client: QmpClient,
}

#[async_trait]
impl ControlChannel for QmpControl {
    async fn status(&mut self) -> Result<GuestStatus, ControlError> {
        let v = self.client.execute("query-status", None).await?;
        Ok(match v.get("status").and_then(Value::as_str) {
            Some("running") => GuestStatus::Running,
            Some("paused") | Some("suspended") => GuestStatus::Paused,
            Some("shutdown") => GuestStatus::Shutdown,
            // Started for a restore whose supervisor died before the state
            // was sent: it will never run; the start is failed (and an
            // unacknowledged one rolled back).
            Some("inmigrate") => {
                return Err(ControlError::Protocol("the VM still waits for its saved state (a restore was interrupted)".into()));
            }
            _ => GuestStatus::Other,
        })
    }

    async fn power_button(&mut self) -> Result<(), ControlError> {
        self.client.execute("system_powerdown", None).await.map(drop)
    }

    async fn display_address(&mut self) -> Result<Option<String>, ControlError> {
        let v = self.client.execute("query-vnc", None).await?;
        Ok(crate::display::tcp_address(&v))
    }

    async fn quit(&mut self) -> Result<(), ControlError> {
        match self.client.execute("quit", None).await {
            // QEMU may close the socket before its reply is read.
            Ok(_) | Err(ControlError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn pause(&mut self) -> Result<(), ControlError> {
        self.client.execute("stop", None).await.map(drop)
    }

    async fn resume(&mut self) -> Result<(), ControlError> {
        self.client.execute("cont", Some(json!({}))).await.map(drop)
    }

    fn take_events(&mut self) -> Option<mpsc::Receiver<ControlEvent>> {
        self.client.take_events()
    }

    async fn save_state(&mut self, state: &SavedState, timeout: Duration) -> Result<(), ControlError> {
        super::migrate::save(&mut self.client, &state.memory, timeout).await
    }

    async fn load_state(&mut self, state: &SavedState, timeout: Duration) -> Result<(), ControlError> {
        super::migrate::load(&mut self.client, &state.memory, timeout).await
    }
}
