//! The contract every hypervisor backend fulfils.
//!
//! A backend is two small pieces: `prepare` turns a spec into a launch plan
//! (argv, socket paths; no side effects), and `connect` opens the control
//! channel of a started process. Spawning, exit watching, the console and
//! the shutdown ladder are the same for every hypervisor and live in the
//! actors, so a backend cannot get them subtly different.

use async_trait::async_trait;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

use crate::error::Error;
use paddock_images::check_file;
use crate::spec::{Accel, BackendKind, VmSpec};
pub use crate::state::run_paths::RunPaths;

/// `sun_path` is 108 bytes including the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Everything needed to start the hypervisor, decided before it starts.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub program: PathBuf,
    /// argv[0] when it is not `program`: Cloud Hypervisor has no `-name`,
    /// so its marker is its process name.
    pub arg0: Option<OsString>,
    pub args: Vec<OsString>,
    pub paths: RunPaths,
    pub accel: Accel,
    /// How to reach the guest from the host, e.g. "127.0.0.1:8022->22/tcp".
    pub guest_address: Vec<String>,
    /// Recognises our process in /proc/PID/cmdline (e.g. `paddock-web`).
    pub marker: String,
    /// A backend's own boot configuration, sent over its control channel
    /// after the spawn rather than on argv (Cloud Hypervisor: the body of
    /// `vm.create`). Opaque here: only its backend reads it.
    pub boot_payload: Option<serde_json::Value>,
    /// The guest's network, typed (None without a network).
    pub network: Option<crate::board::NetworkInfo>,
    /// How the host reaches the guest's vsock (None without vsock).
    pub vsock: Option<crate::vsock::VsockInfo>,
    /// A vhost-user vsock device process to start before the hypervisor
    /// (QEMU without /dev/vhost-vsock).
    pub vsock_device: Option<crate::vsock::DevicePlan>,
}

/// The marker of VM `name`'s hypervisor process, the same for every
/// backend: QEMU carries it as `-name`, Cloud Hypervisor as argv[0].
pub fn marker(name: &str) -> String {
    format!("paddock-{name}")
}

/// A disk of the spec, its file checked, its format and serial known.
#[derive(Debug, Clone)]
pub struct CheckedDisk {
    pub path: PathBuf,
    pub format: paddock_images::DiskFormat,
    pub readonly: bool,
    /// The virtio serial: /dev/disk/by-id/virtio-<serial> in the guest.
    pub serial: String,
}

/// Checks every disk the guest gets besides a firmware boot disk, in the
/// order the guest sees them: with a direct kernel boot, `boot.disk` (an
/// image's overlay by now) first as the root disk (serial `root`), then the
/// spec's disks (serial `disk<i>` unless set; the data disk and seed come
/// last, with their own serials).
pub fn check_disks(spec: &VmSpec) -> Result<Vec<CheckedDisk>, Error> {
    let mut disks = Vec::new();
    if let (Some(_), Some(root)) = (&spec.boot.kernel, &spec.boot.disk) {
        check_file("boot.disk", root)?;
        let format = paddock_images::detect_format("boot.disk", root)?;
        disks.push(CheckedDisk { path: root.clone(), format, readonly: false, serial: crate::disks::ROOT_SERIAL.into() });
    }
    for (i, d) in spec.disks.iter().enumerate() {
        let field = format!("disks[{i}].path");
        paddock_images::check_file(&field, &d.path)?;
        let format = match d.format {
            Some(f) => f,
            None => paddock_images::detect_format(&field, &d.path)?,
        };
        let serial = d.serial.clone().unwrap_or_else(|| format!("disk{i}"));
        disks.push(CheckedDisk { path: d.path.clone(), format, readonly: d.readonly, serial });
    }
    Ok(disks)
}

/// The plan of a process we did not start (adopted after a supervisor
/// restart): only its sockets and how to reach the guest matter; the argv
/// is whatever the previous supervisor used.
pub fn adoption_plan(spec: &VmSpec, paths: &RunPaths, lease: Option<&crate::netmgr::Lease>) -> LaunchPlan {
    LaunchPlan {
        program: PathBuf::new(),
        arg0: None,
        args: Vec::new(),
        paths: paths.clone(),
        accel: spec.accel,
        guest_address: reach(spec, lease).into_iter().chain(crate::display::address(spec, paths)).collect(),
        marker: marker(&spec.name),
        boot_payload: None,
        network: network_info(spec, lease),
        vsock: vsock_info(spec, paths),
        vsock_device: None,
    }
}

/// How the host reaches the guest's vsock: the hybrid socket (the same
/// path on every backend), or, for QEMU on the kernel's vhost-vsock, the
/// CID alone.
pub fn vsock_info(spec: &VmSpec, paths: &RunPaths) -> Option<crate::vsock::VsockInfo> {
    spec.vsock.then(|| crate::vsock::VsockInfo {
        cid: crate::vsock::guest_cid(&spec.name),
        socket: (spec.backend == BackendKind::CloudHypervisor || !Path::new(crate::vsock::VHOST_VSOCK_DEV).exists())
            .then(|| crate::vsock::host_socket(paths)),
    })
}

/// Checks a direct kernel boot's files and returns its initrd and kernel
/// command line. A leased guest without a cloud-init seed gets the kernel's
/// standard `ip=` argument (the same for every backend) with no device
/// name: the guest's NIC may not be `eth0` (Debian: `enp0s*`). A seed
/// carries network-config (matched by MAC) instead, and no `ip=`.
pub fn kernel_boot(
    spec: &VmSpec,
    kernel: &Path,
    lease: Option<&crate::netmgr::Lease>,
) -> Result<(Option<PathBuf>, Option<String>), Error> {
    check_file("boot.kernel", kernel)?;
    if let Some(i) = &spec.boot.initrd {
        check_file("boot.initrd", i)?;
    }
    let cmdline = match (lease.filter(|_| spec.cloud_init.is_none()), spec.boot.cmdline.clone()) {
        (Some(l), c) => {
            let ip = format!("ip={}::{}:{}:::off", l.addrs.guest, l.addrs.gateway, l.addrs.netmask());
            Some(match c {
                Some(c) if !c.is_empty() => format!("{c} {ip}"),
                _ => ip,
            })
        }
        (None, c) => c,
    };
    Ok((spec.boot.initrd.clone(), cmdline))
}

/// How to reach the guest, in words for `paddock ps`.
pub fn reach(spec: &VmSpec, lease: Option<&crate::netmgr::Lease>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(l) = lease {
        out.push(format!("{} ({})", l.addrs.guest, l.tap));
    }
    let host = if lease.is_some() { "*" } else { "127.0.0.1" };
    for f in &spec.network.forwards {
        let proto = if f.protocol == paddock_net::Protocol::Udp { "udp" } else { "tcp" };
        out.push(format!("{host}:{}->{}/{proto}", f.host, f.guest));
    }
    out
}

/// The guest's network, typed, for `VmInfo` and the API.
pub fn network_info(spec: &VmSpec, lease: Option<&crate::netmgr::Lease>) -> Option<crate::board::NetworkInfo> {
    use crate::spec::NetworkMode;
    let (mac, host_address) = match (spec.network.mode, lease) {
        (NetworkMode::None, _) => return None,
        (NetworkMode::Tap, Some(l)) => (l.mac.clone(), std::net::Ipv4Addr::UNSPECIFIED),
        (NetworkMode::Tap, None) => return None,
        (NetworkMode::User, _) => (paddock_net::MacAddress::for_vm(&spec.name).to_string(), std::net::Ipv4Addr::LOCALHOST),
    };
    let forwards = spec
        .network
        .forwards
        .iter()
        .map(|f| crate::board::ForwardInfo { host_address, host: f.host, guest: f.guest, protocol: f.protocol })
        .collect();
    Some(crate::board::NetworkInfo {
        mode: spec.network.mode,
        address: lease.map(|l| l.addrs.guest),
        gateway: lease.map(|l| l.addrs.gateway),
        prefix: lease.map(|l| l.addrs.prefix),
        mac,
        tap: lease.map(|l| l.tap.clone()),
        forwards,
    })
}

/// What the guest is doing, as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestStatus {
    Running,
    Paused,
    Shutdown,
    Other,
}

/// Asynchronous news from the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlEvent {
    /// The VM shut down; `guest` is true when the guest asked for it.
    Shutdown { guest: bool },
    Powerdown,
    Stop,
    Resume,
    Reset,
    GuestPanicked,
    /// The control connection ended (normally because the process exited).
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to control socket {path:?}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} got no answer within {timeout_ms} ms")]
    Timeout { what: String, timeout_ms: u64 },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("command {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("control connection closed")]
    Closed,
    #[error("control socket i/o")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
}

/// Where a VM's saved state goes: QEMU streams it into `memory` (a file
/// handed over as a descriptor); Cloud Hypervisor writes a directory of
/// its own files under `dir`.
#[derive(Debug)]
pub struct SavedState {
    pub memory: std::fs::File,
    pub dir: PathBuf,
}

/// An open control connection. Every call has a deadline.
#[async_trait]
pub trait ControlChannel: Send {
    async fn status(&mut self) -> Result<GuestStatus, ControlError>;
    /// The ACPI power button.
    async fn power_button(&mut self) -> Result<(), ControlError>;
    /// Ask the hypervisor to exit now.
    async fn quit(&mut self) -> Result<(), ControlError>;
    async fn pause(&mut self) -> Result<(), ControlError>;
    async fn resume(&mut self) -> Result<(), ControlError>;
    /// The event stream; taken once by the Control actor.
    fn take_events(&mut self) -> Option<mpsc::Receiver<ControlEvent>>;
    /// The display server's TCP address as the hypervisor bound it
    /// (`vnc tcp:127.0.0.1:5901`), or None without one.
    async fn display_address(&mut self) -> Result<Option<String>, ControlError> {
        Ok(None)
    }
    /// Pauses the guest and writes its whole state (a snapshot); the guest
    /// stays paused. `timeout` bounds the whole save.
    async fn save_state(&mut self, _state: &SavedState, _timeout: std::time::Duration) -> Result<(), ControlError> {
        Err(ControlError::Unsupported("this backend cannot save a VM's state".into()))
    }
    /// Loads a state written by `save_state` into a process started with
    /// the backend's `incoming` arguments and runs the guest.
    async fn load_state(&mut self, _state: &SavedState, _timeout: std::time::Duration) -> Result<(), ControlError> {
        Err(ControlError::Unsupported("this backend cannot restore a VM's state".into()))
    }
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;
    /// Check the host and the files the spec names; build the launch plan.
    /// Reads files, creates nothing.
    /// `lease` is the VM's network lease when `network.mode = "tap"`
    /// (None while only validating a spec).
    fn prepare(&self, spec: &VmSpec, paths: &RunPaths, lease: Option<&crate::netmgr::Lease>) -> Result<LaunchPlan, Error>;
    /// Connect to the control socket of a process started from `plan`,
    /// waiting for the socket to appear; gives up at the deadline.
    async fn connect(&self, plan: &LaunchPlan) -> Result<Box<dyn ControlChannel>, ControlError>;
    /// Once per start, just before the process is spawned: clear what a
    /// dead earlier process of this VM left in `paths.dir` (refusing while
    /// a live one owns it), say what the start overrides.
    fn before_spawn(&self, _spec: &VmSpec, _paths: &RunPaths) -> Result<(), Error> {
        Ok(())
    }
    /// The hypervisor's own record of an exit: Some(its message) when its
    /// log says it failed although the exit status looks clean.
    fn exit_fault(&self, _paths: &RunPaths, _exit: &crate::vm::phase::ExitInfo) -> Option<String> {
        None
    }
    /// Turns a plan into one whose process waits for a saved state
    /// (`load_state`) instead of booting.
    /// `source` is the name of the VM the snapshot was taken of.
    fn incoming(&self, spec: &VmSpec, _source: &str, _plan: &mut LaunchPlan) -> Result<(), Error> {
        Err(Error::Conflict { name: spec.name.clone(), message: format!("the {} backend cannot start from a snapshot", self.kind().as_str()) })
    }
    /// The hypervisor's version string; a snapshot restores only into the
    /// same version.
    fn version(&self) -> String {
        String::new()
    }
    /// Whether the control channel ends with `Closed` after the last
    /// events of an exit (QMP does; CH's event file has no such end), so
    /// the exit waits for them before it is judged.
    fn drains_events_after_exit(&self) -> bool {
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn spec(network: serde_json::Value) -> VmSpec {
        serde_json::from_value(serde_json::json!({"name": "web", "boot": {"kernel": "/k"}, "network": network})).unwrap()
    }

    #[test]
    fn network_info_is_typed_for_every_mode() {
        assert_eq!(network_info(&spec(serde_json::json!({})), None), None);
        let user = network_info(&spec(serde_json::json!({"mode": "user", "forwards": [{"host": 8022, "guest": 22}]})), None).unwrap();
        assert_eq!((user.address, user.tap.as_deref()), (None, None));
        assert_eq!(user.mac, paddock_net::MacAddress::for_vm("web").to_string());
        assert_eq!((user.forwards[0].host_address, user.forwards[0].host, user.forwards[0].guest), (Ipv4Addr::LOCALHOST, 8022, 22));
        let lease = crate::netmgr::Lease {
            vm: "web".into(),
            index: 7,
            tap: "pdtap7".into(),
            mac: "02:50:44:00:00:07".into(),
            addrs: paddock_net::LeaseAddrs { gateway: Ipv4Addr::new(10, 88, 0, 29), guest: Ipv4Addr::new(10, 88, 0, 30), prefix: 30 },
        };
        let tap = network_info(&spec(serde_json::json!({"mode": "tap", "forwards": [{"host": 8080, "guest": 80}]})), Some(&lease)).unwrap();
        assert_eq!(tap.address, Some(Ipv4Addr::new(10, 88, 0, 30)));
        assert_eq!((tap.gateway, tap.prefix, tap.tap.as_deref(), tap.mac.as_str()), (Some(lease.addrs.gateway), Some(30), Some("pdtap7"), "02:50:44:00:00:07"));
        assert_eq!(tap.forwards[0].host_address, Ipv4Addr::UNSPECIFIED);
        // The JSON an API client reads.
        let json = serde_json::to_value(&tap).unwrap();
        assert_eq!((json["address"].as_str(), json["forwards"][0]["protocol"].as_str()), (Some("10.88.0.30"), Some("tcp")));
    }
}

/// Golden files under tests/golden/, refreshed with PADDOCK_UPDATE_GOLDEN=1.
#[cfg(test)]
pub(crate) mod tests_support {
    use std::path::Path;

    pub fn golden(name: &str, text: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden").join(name);
        if std::env::var_os("PADDOCK_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path:?}: {e}; run with PADDOCK_UPDATE_GOLDEN=1 to create it"));
        assert_eq!(text, want, "output differs from {path:?}; if intended, refresh with PADDOCK_UPDATE_GOLDEN=1");
    }
}

pub mod cloud_hypervisor;
pub mod qemu;
