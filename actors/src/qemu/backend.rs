//! `Backend` for QEMU: spec -> checked files -> argv; QMP as the control
//! channel.

use async_trait::async_trait;
use paddock_images::{check_file, detect_format};
use paddock_net::MacAddress;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

use super::argv::{self, QemuBoot, QemuConfig, QemuNet};
use super::qmp::QmpClient;
use crate::accel;
use crate::backend::{check_disks, image_error, Backend, ControlChannel, ControlError, ControlEvent, GuestStatus, LaunchPlan, RunPaths, MAX_SOCKET_PATH};
use crate::error::{Error, SpecError};
use crate::spec::{BackendKind, NetworkMode, VmSpec};

#[derive(Debug, Clone)]
pub struct QemuBackend {
    /// `qemu-system-x86_64`, or a stand-in for tests.
    pub binary: PathBuf,
    /// Deadline for connecting and for every QMP command.
    pub control_timeout: Duration,
}

impl QemuBackend {
    pub fn new(binary: PathBuf, control_timeout: Duration) -> Self {
        QemuBackend { binary, control_timeout }
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn prepare(&self, spec: &VmSpec, paths: &RunPaths, lease: Option<&crate::netmgr::Lease>) -> Result<LaunchPlan, Error> {
        for p in [&paths.control_socket, &paths.serial_socket] {
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(Error::Io {
                    context: format!("socket path {p:?} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --run-dir"),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                });
            }
        }
        if spec.vsock {
            return Err(SpecError::new("vsock", "vsock is available with backend = \"cloud-hypervisor\" only, for now").into());
        }
        let boot = match (&spec.boot.kernel, &spec.boot.disk) {
            (Some(kernel), _) => {
                let (initrd, cmdline) = crate::backend::kernel_boot(spec, kernel, lease)?;
                QemuBoot::Kernel { kernel: kernel.clone(), initrd, cmdline }
            }
            (None, Some(disk)) => {
                check_file("boot.disk", disk).map_err(image_error)?;
                if let Some(fw) = &spec.boot.firmware {
                    check_file("boot.firmware", fw).map_err(image_error)?;
                }
                let format = detect_format("boot.disk", disk).map_err(image_error)?;
                QemuBoot::Disk { disk: disk.clone(), format, firmware: spec.boot.firmware.clone() }
            }
            (None, None) => return Err(SpecError::new("boot", "set boot.kernel or boot.disk").into()),
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
            paths: paths.clone(),
            on_panic: spec.on_panic,
        };
        let guest_address = crate::backend::reach(spec, lease);
        Ok(LaunchPlan {
            program: self.binary.clone(),
            arg0: None,
            args: argv::build(&cfg),
            paths: paths.clone(),
            accel,
            guest_address,
            marker: argv::marker(&spec.name),
            api_config: None,
        })
    }

    async fn connect(&self, plan: &LaunchPlan) -> Result<Box<dyn ControlChannel>, ControlError> {
        let client = QmpClient::connect(&plan.paths.control_socket, self.control_timeout).await?;
        Ok(Box::new(QmpControl { client }))
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
            _ => GuestStatus::Other,
        })
    }

    async fn power_button(&mut self) -> Result<(), ControlError> {
        self.client.execute("system_powerdown", None).await.map(drop)
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
}
