//! The VM spec: what a user asks for, in TOML (files) or JSON (API).
//!
//! Unknown fields are rejected everywhere, and `validate` checks every value
//! so that errors name the field and say how to fix it before anything is
//! created on the host.

use paddock_images::DiskFormat;
use paddock_net::PortForward;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::spec_error::SpecError;

/// Longest VM name: `paddock-` + name must stay a readable process name, and
/// later the TAP name is derived from an index, never from the name.
pub const MAX_NAME_LEN: usize = 31;

/// Build one in code with [`VmSpec::builder`]: only the name and the boot
/// source are required, everything else has the same default as in a file:
///
/// ```
/// # use paddock_actors::spec::{Boot, VmSpec};
/// let spec = VmSpec::builder("web").boot(Boot::kernel("/srv/vmlinuz")).memory_mib(256).vsock(true).build();
/// assert_eq!(spec.vcpus, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, bon::Builder, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[builder(on(String, into))]
pub struct VmSpec {
    #[builder(start_fn)]
    pub name: String,
    #[serde(default)]
    #[builder(default)]
    pub backend: BackendKind,
    #[serde(default = "default_vcpus")]
    #[builder(default = default_vcpus())]
    pub vcpus: u32,
    #[serde(default = "default_memory")]
    #[builder(default = default_memory())]
    pub memory_mib: u64,
    pub boot: Boot,
    #[serde(default)]
    #[builder(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    #[builder(default)]
    pub network: Network,
    #[serde(default)]
    #[builder(default)]
    pub accel: Accel,
    /// The guest's firmware: `bios` (QEMU's SeaBIOS, or `boot.firmware`),
    /// or `uefi`: OVMF from Debian's ovmf package with the VM's own UEFI
    /// variable store, kept across restarts and removed with the VM
    /// (QEMU only; see `crate::host::uefi`).
    #[serde(default, skip_serializing_if = "Firmware::is_bios")]
    #[builder(default)]
    pub firmware: Firmware,
    /// A regular expression; the VM is "ready" once a console line of the
    /// current boot matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_pattern: Option<String>,
    /// A readiness probe besides the pattern (both must pass when both are
    /// set): e.g. `{ tcp = 22 }`, the guest's SSH port answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_probe: Option<ReadyProbe>,
    #[serde(default)]
    #[builder(default)]
    pub restart: RestartSpec,
    /// What a guest kernel panic (pvpanic) does to the VM.
    #[serde(default, skip_serializing_if = "OnPanic::is_default")]
    #[builder(default)]
    pub on_panic: OnPanic,
    /// A virtio-vsock device with a per-VM guest CID, reached from the
    /// host through the hybrid socket `<run-dir>/<name>/vsock.sock` on
    /// both backends (see `crate::vsock`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[builder(default)]
    pub vsock: bool,
    /// A qcow2 data disk kept across restarts (deleted only by `rm --volumes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disk: Option<DataDiskSpec>,
    /// A cloud-init NoCloud seed, attached read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInitSpec>,
    /// A FAT service disk (files, host trees, a launcher), built at every
    /// start, attached read-only, deleted with the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_disk: Option<ServiceDiskSpec>,
    /// A graphical console: `"vnc"` serves the guest's screen on the Unix
    /// socket `RUN_DIR/NAME/vnc.sock`, `"vnc-tcp"` on 127.0.0.1 at a free
    /// port (QEMU only; see `crate::display`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<Display>,
    /// How `paddock ssh` logs in, and a key Paddock makes for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshSpec>,
    /// Bounds of this VM's console files, over the daemon's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_log: Option<crate::bounds::ConsoleLogSpec>,
    /// Free-form `key = "value"` pairs for outside schedulers; listing can
    /// filter on them (`GET /v1/vms?label=team=x`). See `crate::labels`.
    #[serde(default, skip_serializing_if = "crate::labels::Labels::is_empty")]
    #[builder(default)]
    pub labels: crate::labels::Labels,
    /// What the VM's cgroup enforces (memory cap, CPU, pids, I/O).
    #[serde(default, skip_serializing_if = "crate::confine::limits::Limits::is_default")]
    #[builder(default)]
    pub limits: crate::confine::limits::Limits,
}

/// A FAT service disk: the service's files and a launcher script whose
/// every value is shell-quoted (see `paddock_images::ServiceDisk`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceDiskSpec {
    /// FAT volume label, 1-11 characters of A-Z 0-9 space - _.
    #[serde(default = "default_service_label")]
    pub label: String,
    /// Files at `/`-separated paths on the disk: inline text or a host file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ServiceFile>,
    /// Host directories copied recursively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<ServiceTree>,
    /// `launch.sh` at the disk's root; the guest runs `sh /MOUNT/launch.sh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher: Option<LauncherSpec>,
}

impl Default for ServiceDiskSpec {
    fn default() -> Self {
        ServiceDiskSpec { label: default_service_label(), files: Vec::new(), trees: Vec::new(), launcher: None }
    }
}

/// The default service disk label.
pub fn default_service_label() -> String {
    "SERVICE".into()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Where on the disk, e.g. `bin/app`.
    pub path: String,
    /// The file's text; or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// a host file, copied at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTree {
    /// A host directory.
    #[schema(value_type = String)]
    pub source: PathBuf,
    /// The directory on the disk ("" or absent: the root).
    #[serde(default)]
    pub at: String,
}

/// What `launch.sh` runs: `cd workdir; export env...; exec program args...`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LauncherSpec {
    /// Relative paths are relative to the disk's root.
    pub program: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

impl ServiceFile {
    /// A host file, copied at every start.
    pub fn host(path: impl Into<String>, source: impl Into<PathBuf>) -> Self {
        ServiceFile { path: path.into(), content: None, source: Some(source.into()) }
    }

    /// A file with this text.
    pub fn text(path: impl Into<String>, content: impl Into<String>) -> Self {
        ServiceFile { path: path.into(), content: Some(content.into()), source: None }
    }
}

impl ServiceTree {
    /// Host directory `source` at `at` on the disk ("" for the root).
    pub fn new(source: impl Into<PathBuf>, at: impl Into<String>) -> Self {
        ServiceTree { source: source.into(), at: at.into() }
    }
}

impl LauncherSpec {
    /// `exec program` with no arguments or environment.
    pub fn new(program: impl Into<String>) -> Self {
        LauncherSpec { program: program.into(), ..Default::default() }
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn env<K: Into<String>, V: Into<String>>(mut self, env: impl IntoIterator<Item = (K, V)>) -> Self {
        self.env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        self
    }

    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }
}

impl ServiceDiskSpec {
    /// The `paddock_images` description of this disk.
    pub fn to_image(&self) -> paddock_images::ServiceDisk {
        paddock_images::ServiceDisk {
            label: self.label.clone(),
            files: Vec::new(),
            trees: self.trees.iter().map(|t| (t.source.clone(), t.at.clone())).collect(),
            launcher: self.launcher.as_ref().map(|l| paddock_images::Launcher {
                program: l.program.clone(),
                args: l.args.clone(),
                env: l.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                workdir: l.workdir.clone(),
            }),
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        let l = &self.label;
        if l.is_empty() || l.len() > 11 || !l.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b" -_".contains(&b)) {
            return Err(SpecError::new("service_disk.label", format!("{l:?}: use 1 to 11 characters of A-Z, 0-9, space, '-' and '_'")));
        }
        let on_disk = |field: String, p: &str| -> Result<(), SpecError> {
            let bad = p.split('/').any(|c| c == ".." || c == ".") || p.contains('\0') || p.contains('\\');
            if bad || p.trim_matches('/').is_empty() && !field.ends_with(".at") {
                return Err(SpecError::new(field, format!("{p:?} is not a path on the disk; use names separated by '/', without '.' or '..'")));
            }
            Ok(())
        };
        for (i, f) in self.files.iter().enumerate() {
            on_disk(format!("service_disk.files[{i}].path"), &f.path)?;
            match (&f.content, &f.source) {
                (Some(_), None) => {}
                (None, Some(src)) if src.is_absolute() => {}
                (None, Some(src)) => {
                    return Err(SpecError::new(format!("service_disk.files[{i}].source"), format!("{src:?} must be an absolute path")));
                }
                _ => return Err(SpecError::new(format!("service_disk.files[{i}]"), "give exactly one of content or source")),
            }
        }
        for (i, t) in self.trees.iter().enumerate() {
            if !t.source.is_absolute() {
                return Err(SpecError::new(format!("service_disk.trees[{i}].source"), format!("{:?} must be an absolute path", t.source)));
            }
            on_disk(format!("service_disk.trees[{i}].at"), &t.at)?;
        }
        if let Some(l) = self.to_image().launcher {
            // Rendering is pure: it finds empty programs, bad variable
            // names and NUL bytes before anything is written.
            l.render().map_err(|e| SpecError::new("service_disk.launcher", e.to_string().trim_start_matches("launcher.").to_string()))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataDiskSpec {
    pub size_gib: u64,
    /// Where the guest mounts it (needs `cloud_init`): cloud-init makes the
    /// filesystem on first boot only and mounts it on every boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The filesystem made on it; needs `mount`. Default ext4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
}

impl DataDiskSpec {
    /// A data disk of `size_gib`, attached unformatted (no `mount`).
    pub fn gib(size_gib: u64) -> Self {
        DataDiskSpec { size_gib, mount: None, filesystem: None }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Ext4,
    Xfs,
    Btrfs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
            Filesystem::Btrfs => "btrfs",
        }
    }
}

/// How Paddock decides, besides `ready_pattern`, that the guest is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadyProbe {
    /// A guest TCP port: on a TAP lease, ready when a connection to the
    /// guest's address is accepted; through a user-mode forward (QEMU
    /// accepts those itself), when the guest sends its first bytes (SSH's
    /// banner does).
    pub tcp: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitSpec {
    /// Defaults to the VM name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<CloudInitUser>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_files: Vec<CloudInitFile>,
    /// Shell commands run once per instance (first boot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runcmd: Vec<String>,
    /// Shell commands run early on every boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootcmd: Vec<String>,
    /// Your own user-data (any format cloud-init reads). Alone it is
    /// passed through as is; with the typed fields, both become parts of
    /// one MIME multipart user-data and cloud-init merges them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// iso (volume `cidata`, default) or vfat (label `CIDATA`).
    #[serde(default)]
    pub format: paddock_images::SeedFormat,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitUser {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// A sudoers rule, e.g. `ALL=(ALL) NOPASSWD:ALL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// cloud-init's default is true (no password login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_passwd: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitFile {
    pub path: String,
    pub content: String,
}

fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> u64 {
    512
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    #[default]
    Qemu,
    CloudHypervisor,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::CloudHypervisor => "cloud-hypervisor",
        }
    }
}

/// A direct kernel boot, a disk booted by firmware, or both: with
/// `kernel`, a `disk` or `image` is the guest's first disk (its root disk,
/// e.g. `root=LABEL=...` or `/dev/vda` in `cmdline`) and no firmware runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub disk: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub firmware: Option<PathBuf>,
    /// A cached image (`sha256:<hex>`, see `paddock image pull`), booted
    /// through the VM's own copy-on-write overlay: by firmware, or with
    /// `kernel` as the root disk of a direct kernel boot. An absolute path
    /// (relative in a spec file: to the file) is imported into the cache
    /// by content when the VM is created and replaced by its `sha256:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The overlay's size; defaults to the image's (never smaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_gib: Option<u64>,
    /// Start from this booted snapshot (`paddock snapshot`) instead of
    /// booting; a snapshot that does not fit the host boots cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// OVMF and the VM's variable store of `firmware = "uefi"`, found when
    /// its disks are made; never part of a spec anyone writes.
    #[serde(skip)]
    #[schema(ignore)]
    pub efi: Option<crate::host::uefi::EfiFlash>,
}

impl Boot {
    /// A direct kernel boot of `kernel`.
    pub fn kernel(kernel: impl Into<PathBuf>) -> Boot {
        Boot { kernel: Some(kernel.into()), ..Default::default() }
    }

    pub fn initrd(mut self, initrd: impl Into<PathBuf>) -> Boot {
        self.initrd = Some(initrd.into());
        self
    }

    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Boot {
        self.cmdline = Some(cmdline.into());
        self
    }

    /// A cached image (`sha256:<hex>`) booted by firmware through the VM's
    /// own overlay.
    pub fn image(image: impl Into<String>) -> Boot {
        Boot { image: Some(image.into()), ..Default::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Detected from the header when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    #[serde(default)]
    pub readonly: bool,
    /// The virtio serial (up to 20 of A-Z a-z 0-9 - _): the guest finds the
    /// disk as /dev/disk/by-id/virtio-<serial>. Default `disk<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default)]
    pub mode: NetworkMode,
    /// Host ports published to the guest (user: on 127.0.0.1; tap: on the
    /// host's addresses, by DNAT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<PortForward>,
    /// tap: VMs that share a group may reach each other; others may not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// tap: host TCP ports the guest may connect to (all else is dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<u16>,
}

impl Network {
    /// A TAP lease with no groups, host ports or forwards.
    pub fn tap() -> Network {
        Network { mode: NetworkMode::Tap, ..Default::default() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    None,
    /// QEMU's user-mode networking (no privileges needed).
    User,
    /// A TAP device with an address lease, NAT and isolation.
    Tap,
}

/// `paddock ssh`: the guest user, its port, and the key: one Paddock
/// generates (`generate_key`, given to cloud-init) or a host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    pub user: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// An ed25519 key made for this VM (needs `[cloud_init]`), kept in its
    /// state directory and deleted with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generate_key: bool,
    /// An existing private key on the host (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub key: Option<PathBuf>,
}

fn default_ssh_port() -> u16 {
    22
}

impl SshSpec {
    fn validate(&self, spec: &VmSpec) -> Result<(), SpecError> {
        let u = &self.user;
        if u.is_empty() || u.len() > 32 || u.bytes().any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')) || u.starts_with('-') {
            return Err(SpecError::new("ssh.user", "use 1 to 32 characters of a-z, A-Z, 0-9, '.', '-' and '_', not starting with '-'"));
        }
        if self.port == 0 {
            return Err(SpecError::new("ssh.port", "a port between 1 and 65535"));
        }
        if self.generate_key && self.key.is_some() {
            return Err(SpecError::new("ssh.key", "give ssh.key or ssh.generate_key = true, not both"));
        }
        if self.key.as_ref().is_some_and(|k| !k.is_absolute()) {
            return Err(SpecError::new("ssh.key", "must be an absolute path to a private key"));
        }
        if self.generate_key && spec.cloud_init.is_none() {
            return Err(SpecError::new("ssh.generate_key", "the key reaches the guest through cloud-init; add a [cloud_init] section"));
        }
        let forwarded = spec.network.forwards.iter().any(|f| f.guest == self.port && f.protocol == paddock_net::Protocol::Tcp);
        if spec.network.mode != NetworkMode::Tap && !forwarded {
            return Err(SpecError::new(
                "ssh",
                format!("the host cannot reach guest port {p}: use network.mode = \"tap\", or forward it (forwards = [{{ host = 8022, guest = {p} }}])", p = self.port),
            ));
        }
        Ok(())
    }
}

/// The least memory OVMF boots a kernel in: Debian 12's build faults
/// while loading even the busybox test guest at 144 MiB (measured under
/// TCG), and boots it at 160.
pub const MIN_UEFI_MEMORY_MIB: u64 = 160;

/// The firmware a QEMU guest boots with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// QEMU's SeaBIOS (or `boot.firmware`); a kernel boots directly.
    #[default]
    Bios,
    /// OVMF with a per-VM variable store.
    Uefi,
}

impl Firmware {
    pub fn is_bios(&self) -> bool {
        *self == Firmware::Bios
    }
}

/// A graphical display of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Display {
    /// QEMU's VNC server on a Unix socket in the VM's run directory.
    Vnc,
    /// QEMU's VNC server on 127.0.0.1, at a free port it picks (shown in
    /// `addresses` as `vnc tcp:127.0.0.1:PORT`).
    VncTcp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

/// What a guest panic does. `restart`: the run ends as a failure and the
/// restart policy decides (so with `never` the VM stays crashed); `stop`:
/// the run ends and is not restarted whatever the policy; `pause`: the
/// vCPUs stop and the VM stays paused for inspection; `ignore`: only the
/// `guest_panicked` event (the guest kernel decides, e.g. `panic=-1`
/// reboots it in place).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnPanic {
    #[default]
    Restart,
    Stop,
    Pause,
    Ignore,
}

impl OnPanic {
    pub fn is_default(&self) -> bool {
        *self == OnPanic::Restart
    }
    pub fn as_str(self) -> &'static str {
        match self {
            OnPanic::Restart => "restart",
            OnPanic::Stop => "stop",
            OnPanic::Pause => "pause",
            OnPanic::Ignore => "ignore",
        }
    }
}

/// Restart policy and its limits (enforced by the supervision issue's code;
/// stored with the spec from the start so no migration is needed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_window")]
    pub window_secs: u64,
    #[serde(default = "default_backoff_base")]
    pub backoff_base_ms: u64,
    #[serde(default = "default_backoff_cap")]
    pub backoff_cap_ms: u64,
    #[serde(default = "default_stable")]
    pub stable_secs: u64,
}

fn default_max_restarts() -> u32 {
    5
}
fn default_window() -> u64 {
    600
}
fn default_backoff_base() -> u64 {
    1_000
}
fn default_backoff_cap() -> u64 {
    300_000
}
fn default_stable() -> u64 {
    300
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Never,
            max_restarts: default_max_restarts(),
            window_secs: default_window(),
            backoff_base_ms: default_backoff_base(),
            backoff_cap_ms: default_backoff_cap(),
            stable_secs: default_stable(),
        }
    }
}

/// `[a-z0-9][a-z0-9-]{0,30}`: safe in paths, process names and (with a
/// prefix) interface names, and never `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok_first = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_first || !ok_rest {
        return Err(SpecError::new(
            "name",
            format!(
                "{name:?} is not a valid VM name; use 1 to {MAX_NAME_LEN} characters of a-z, 0-9 and '-', starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// The hex digest of `sha256:<hex>`.
pub fn image_digest(image: &str) -> Result<String, SpecError> {
    image
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|h| h.to_ascii_lowercase())
        .ok_or_else(|| {
            SpecError::new("boot.image", format!("{image:?} is neither sha256:<64 hex digits> (see `paddock image ls`) nor an absolute path to an image file"))
        })
}

/// Whether `boot.image` names a host file (imported into the cache by
/// content when the VM is created) rather than `sha256:<hex>`.
pub fn is_image_path(image: &str) -> bool {
    image.starts_with('/')
}

/// An absolute guest path, one line, no spaces (it lands in fstab).
fn check_guest_path(field: &str, p: &str) -> Result<(), SpecError> {
    if !p.starts_with('/') || p.len() > 255 || p.chars().any(|c| c.is_whitespace() || c.is_control()) || p.split('/').any(|c| c == "..") {
        return Err(SpecError::new(field, format!("{p:?} must be an absolute path without spaces, control characters or '..' (e.g. \"/srv/data\")")));
    }
    Ok(())
}

/// The longest serial virtio-blk passes to the guest.
pub const MAX_SERIAL_LEN: usize = 20;

fn check_serial(field: &str, s: &str) -> Result<(), SpecError> {
    if s.is_empty() || s.len() > MAX_SERIAL_LEN || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(SpecError::new(field, format!("{s:?}: use 1 to {MAX_SERIAL_LEN} characters of A-Z, a-z, 0-9, '-' and '_'")));
    }
    Ok(())
}

impl VmSpec {
    /// Checks every value that does not need the host. Files are checked by
    /// the backend's `prepare`, which knows which ones it needs.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        crate::labels::validate(&self.labels)?;
        if let Some(c) = &self.console_log {
            crate::bounds::ConsoleLogLimits::check(c.max_bytes, c.files, "console_log")?;
        }
        self.limits.validate()?;
        if self.vcpus == 0 || self.vcpus > 255 {
            return Err(SpecError::new("vcpus", format!("must be between 1 and 255 (got {})", self.vcpus)));
        }
        if self.memory_mib < 16 {
            return Err(SpecError::new(
                "memory_mib",
                format!("must be at least 16 (got {}); 256 is enough for a small Linux guest", self.memory_mib),
            ));
        }
        if self.memory_mib > 1 << 20 {
            return Err(SpecError::new("memory_mib", format!("{} MiB is more than 1 TiB", self.memory_mib)));
        }
        if self.boot.disk.is_some() && self.boot.image.is_some() {
            return Err(SpecError::new("boot", "set boot.disk or boot.image, not both (either one may go with boot.kernel)"));
        }
        if let Some(image) = &self.boot.image {
            if !is_image_path(image) {
                image_digest(image)?;
            }
        }
        if let Some(snap) = &self.boot.snapshot {
            crate::snapshot::validate_name(snap).map_err(|e| SpecError::new("boot.snapshot", e.to_string()))?;
        }
        if self.boot.overlay_gib.is_some() && self.boot.image.is_none() {
            return Err(SpecError::new("boot.overlay_gib", "an overlay size needs boot.image"));
        }
        if let Some(d) = &self.data_disk {
            if d.size_gib == 0 || d.size_gib > 64 * 1024 {
                return Err(SpecError::new("data_disk.size_gib", format!("must be between 1 and 65536 (got {})", d.size_gib)));
            }
            if d.filesystem.is_some() && d.mount.is_none() {
                return Err(SpecError::new("data_disk.filesystem", "a filesystem needs data_disk.mount (e.g. \"/srv/data\")"));
            }
            if let Some(m) = &d.mount {
                check_guest_path("data_disk.mount", m)?;
                if m == "/" {
                    return Err(SpecError::new("data_disk.mount", "\"/\" is the root filesystem; mount the data disk elsewhere, e.g. \"/srv/data\""));
                }
                if self.cloud_init.is_none() {
                    return Err(SpecError::new("data_disk.mount", "cloud-init formats and mounts the disk; add a [cloud_init] section"));
                }
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            if let Some(serial) = &d.serial {
                check_serial(&format!("disks[{i}].serial"), serial)?;
            }
        }
        if let Some(ci) = &self.cloud_init {
            let typed = !ci.users.is_empty() || !ci.write_files.is_empty() || !ci.runcmd.is_empty() || !ci.bootcmd.is_empty();
            let mounts = self.data_disk.as_ref().is_some_and(|d| d.mount.is_some());
            if let (Some(raw), true) = (&ci.user_data, typed || mounts) {
                // Combined as MIME multipart: its part needs a known type.
                paddock_images::multipart_part_type(raw).map_err(|e| SpecError::new("cloud_init.user_data", e.to_string()))?;
            }
            for (i, u) in ci.users.iter().enumerate() {
                if u.name.is_empty() || u.name.len() > 32 || u.name.bytes().any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')) {
                    return Err(SpecError::new(format!("cloud_init.users[{i}].name"), "use 1 to 32 characters of a-z, A-Z, 0-9, '.', '-' and '_'"));
                }
                if let Some(shell) = &u.shell {
                    check_guest_path(&format!("cloud_init.users[{i}].shell"), shell)?;
                }
                if u.sudo.as_deref().is_some_and(|r| r.contains('\n') || r.trim().is_empty()) {
                    return Err(SpecError::new(format!("cloud_init.users[{i}].sudo"), "one sudoers rule on one line, e.g. \"ALL=(ALL) NOPASSWD:ALL\""));
                }
            }
            if let Some(h) = &ci.hostname {
                if h.is_empty() || h.len() > 253 || h.contains('\0') {
                    return Err(SpecError::new("cloud_init.hostname", "must be 1 to 253 characters without NUL"));
                }
            }
        }
        if let Some(sd) = &self.service_disk {
            sd.validate()?;
        }
        if let Some(ssh) = &self.ssh {
            ssh.validate(self)?;
        }
        if self.display.is_some() && self.backend != BackendKind::Qemu {
            return Err(SpecError::new("display", "Cloud Hypervisor has no display; remove display or use backend = \"qemu\""));
        }
        if self.firmware == Firmware::Uefi {
            if self.backend != BackendKind::Qemu {
                return Err(SpecError::new("firmware", "Cloud Hypervisor keeps no UEFI variable store; use backend = \"qemu\", or boot.firmware = CLOUDHV.fd for a UEFI boot without one"));
            }
            if self.memory_mib < MIN_UEFI_MEMORY_MIB {
                return Err(SpecError::new(
                    "memory_mib",
                    format!("firmware = \"uefi\" needs at least {MIN_UEFI_MEMORY_MIB} MiB: OVMF faults in less while it loads the kernel; set memory_mib = 256 or more"),
                ));
            }
            if self.boot.firmware.is_some() {
                return Err(SpecError::new("boot.firmware", "firmware = \"uefi\" boots Debian's OVMF; remove boot.firmware, or set firmware = \"bios\" to boot your own"));
            }
        }
        let root_disk = self.boot.disk.is_some() || self.boot.image.is_some();
        match (&self.boot.kernel, root_disk) {
            (None, false) => {
                return Err(SpecError::new(
                    "boot",
                    "nothing to boot: set boot.kernel (direct kernel boot), boot.disk (firmware boot) or boot.image (a pulled image)",
                ));
            }
            (None, true) if self.boot.initrd.is_some() || self.boot.cmdline.is_some() => {
                return Err(SpecError::new("boot", "boot.initrd and boot.cmdline need boot.kernel"));
            }
            (Some(_), _) if self.boot.firmware.is_some() => {
                return Err(SpecError::new("boot.firmware", "firmware is not used with boot.kernel (the kernel boots directly); remove one"));
            }
            _ => {}
        }
        if let Some(cmdline) = &self.boot.cmdline {
            if cmdline.contains('\0') || cmdline.contains('\n') {
                return Err(SpecError::new("boot.cmdline", "must be one line without NUL bytes"));
            }
        }
        if self.network.mode == NetworkMode::None && !self.network.forwards.is_empty() {
            return Err(SpecError::new(
                "network.forwards",
                "port forwards need a network; set network.mode = \"user\"",
            ));
        }
        if self.network.mode != NetworkMode::Tap && (!self.network.groups.is_empty() || !self.network.host_ports.is_empty()) {
            return Err(SpecError::new("network.groups", "groups and host_ports need network.mode = \"tap\""));
        }
        for (i, g) in self.network.groups.iter().enumerate() {
            if g.is_empty() || g.len() > 32 || !g.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(SpecError::new(format!("network.groups[{i}]"), "use 1 to 32 characters of a-z, 0-9, '-' and '_'"));
            }
        }
        paddock_net::check_forwards(&self.network.forwards)
            .map_err(|e| SpecError::new("network.forwards", e.to_string()))?;
        if let Some(probe) = &self.ready_probe {
            if probe.tcp == 0 {
                return Err(SpecError::new("ready_probe.tcp", "a port between 1 and 65535"));
            }
            let forwarded = self.network.forwards.iter().any(|f| f.guest == probe.tcp && f.protocol == paddock_net::Protocol::Tcp);
            if self.network.mode != NetworkMode::Tap && !forwarded {
                return Err(SpecError::new(
                    "ready_probe.tcp",
                    format!("the host cannot reach guest port {}: use network.mode = \"tap\", or forward it (forwards = [{{ host = 8022, guest = {} }}])", probe.tcp, probe.tcp),
                ));
            }
        }
        if let Some(pattern) = &self.ready_pattern {
            regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| SpecError::new("ready_pattern", format!("not a valid regular expression: {e}")))?;
        }
        let r = &self.restart;
        // Zero would reset or empty the streak on every end: the limit
        // would never be reached (a VM restarted without end).
        if r.window_secs == 0 {
            return Err(SpecError::new("restart.window_secs", "must be at least 1 (seconds in which max_restarts restarts are allowed)"));
        }
        if r.stable_secs == 0 {
            return Err(SpecError::new("restart.stable_secs", "must be at least 1 (seconds of uptime after which the crash streak is forgotten)"));
        }
        if r.max_restarts == 0 && r.policy != RestartPolicy::Never {
            return Err(SpecError::new(
                "restart.max_restarts",
                "must be at least 1 with a restart policy; use policy = \"never\" for no restarts",
            ));
        }
        if r.backoff_base_ms == 0 || r.backoff_cap_ms < r.backoff_base_ms {
            return Err(SpecError::new(
                "restart.backoff_cap_ms",
                "backoff_base_ms must be > 0 and backoff_cap_ms >= backoff_base_ms",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        serde_json::from_str(r#"{"name":"web","boot":{"kernel":"/k"}}"#).unwrap()
    }

    #[test]
    fn defaults_fill_in() {
        let s = spec();
        assert_eq!((s.vcpus, s.memory_mib, s.backend, s.accel), (1, 512, BackendKind::Qemu, Accel::Auto));
        assert_eq!(s.restart.policy, RestartPolicy::Never);
        s.validate().unwrap();
    }

    #[test]
    fn restart_limits_that_would_never_bind_are_refused_naming_the_field() {
        type Breaker = fn(&mut RestartSpec);
        let cases: [(&str, Breaker); 3] = [
            ("restart.window_secs", |r| r.window_secs = 0),
            ("restart.stable_secs", |r| r.stable_secs = 0),
            ("restart.max_restarts", |r| r.max_restarts = 0),
        ];
        for (field, break_it) in cases {
            let mut s = spec();
            s.restart.policy = RestartPolicy::OnFailure;
            s.validate().unwrap();
            break_it(&mut s.restart);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
        // No restarts at all is said with the policy, and then fine.
        let mut s = spec();
        s.restart.max_restarts = 0;
        s.validate().unwrap();
    }

    #[test]
    fn names() {
        for good in ["a", "web-1", "0abc", "a234567890123456789012345678901"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "-a", "A", "a_b", "a/b", "..", "a.b", "a2345678901234567890123456789012", "é"] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad}");
        }
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = serde_json::from_str::<VmSpec>(r#"{"name":"a","boot":{"kernel":"/k"},"colour":1}"#).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = serde_json::from_str::<VmSpec>(r#"{"name":"a","boot":{"kernal":"/k"}}"#).unwrap_err();
        assert!(err.to_string().contains("kernal"), "{err}");
    }

    #[test]
    fn memory_zero_names_the_field() {
        let mut s = spec();
        s.memory_mib = 0;
        assert_eq!(s.validate().unwrap_err().field, "memory_mib");
    }

    #[test]
    fn boot_needs_a_source_and_at_most_one_root_disk() {
        let mut s = spec();
        s.boot.disk = Some("/d".into());
        s.validate().expect("a kernel with its root disk");
        s.boot.image = Some(format!("sha256:{}", "a".repeat(64)));
        assert_eq!(s.validate().unwrap_err().field, "boot");
        s.boot = Boot::default();
        assert_eq!(s.validate().unwrap_err().field, "boot");
    }

    #[test]
    fn forwards_need_user_network() {
        let s: VmSpec = serde_json::from_str(
            r#"{"name":"a","boot":{"kernel":"/k"},"network":{"forwards":[{"host":8022,"guest":22}]}}"#,
        )
        .unwrap();
        assert_eq!(s.validate().unwrap_err().field, "network.forwards");
    }

    #[test]
    fn bad_ready_pattern() {
        let mut s = spec();
        s.ready_pattern = Some("(".into());
        assert_eq!(s.validate().unwrap_err().field, "ready_pattern");
    }

    #[test]
    fn image_data_disk_and_cloud_init_are_checked() {
        let mut s = spec();
        s.boot.kernel = None;
        s.boot.image = Some("ubuntu".into());
        assert_eq!(s.validate().unwrap_err().field, "boot.image");
        s.boot.image = Some(format!("sha256:{}", "a".repeat(64)));
        s.validate().unwrap();
        s.boot.kernel = Some("/k".into());
        s.boot.cmdline = Some("root=LABEL=root".into());
        s.validate().expect("an image is the root disk of a kernel boot");
        s.boot.disk = Some("/d".into());
        assert_eq!(s.validate().unwrap_err().field, "boot", "two root disks");
        s.boot.disk = None;
        s.boot.firmware = Some("/fw".into());
        assert_eq!(s.validate().unwrap_err().field, "boot.firmware");
        let mut s = spec();
        s.data_disk = Some(DataDiskSpec { size_gib: 0, mount: None, filesystem: None });
        assert_eq!(s.validate().unwrap_err().field, "data_disk.size_gib");
        let mut s = spec();
        s.cloud_init = Some(CloudInitSpec { user_data: Some("#cloud-config".into()), runcmd: vec!["x".into()], ..Default::default() });
        s.validate().expect("raw user-data goes with typed fields (multipart)");
    }

    #[test]
    fn data_disk_mount_is_checked() {
        let mut s = spec();
        s.data_disk = Some(DataDiskSpec { size_gib: 1, mount: Some("/srv/data".into()), filesystem: None });
        assert_eq!(s.validate().unwrap_err().field, "data_disk.mount", "needs cloud_init");
        s.cloud_init = Some(CloudInitSpec::default());
        s.validate().unwrap();
        for bad in ["srv", "/", "/srv/a b", "/srv/../etc", "/x\n/y"] {
            s.data_disk.as_mut().unwrap().mount = Some(bad.into());
            assert_eq!(s.validate().unwrap_err().field, "data_disk.mount", "{bad:?}");
        }
        s.data_disk = Some(DataDiskSpec { size_gib: 1, mount: None, filesystem: Some(Filesystem::Xfs) });
        assert_eq!(s.validate().unwrap_err().field, "data_disk.filesystem");
    }

    #[test]
    fn users_serials_and_probe_are_checked() {
        let mut s = spec();
        s.cloud_init = Some(CloudInitSpec {
            users: vec![CloudInitUser { name: "ops".into(), shell: Some("bash".into()), ..Default::default() }],
            ..Default::default()
        });
        assert_eq!(s.validate().unwrap_err().field, "cloud_init.users[0].shell");
        s.cloud_init.as_mut().unwrap().users[0] = CloudInitUser { name: "o ps".into(), ..Default::default() };
        assert_eq!(s.validate().unwrap_err().field, "cloud_init.users[0].name");
        let mut s = spec();
        s.disks = vec![Disk { path: "/d".into(), format: None, readonly: false, serial: Some("a".repeat(21)) }];
        assert_eq!(s.validate().unwrap_err().field, "disks[0].serial");
        let mut s = spec();
        s.ready_probe = Some(ReadyProbe { tcp: 22 });
        assert_eq!(s.validate().unwrap_err().field, "ready_probe.tcp", "no network");
        s.network.mode = NetworkMode::Tap;
        s.validate().unwrap();
    }

    #[test]
    fn uefi_is_qemu_only_with_enough_memory_and_no_second_firmware() {
        let ok: VmSpec = serde_json::from_str(r#"{"name":"a","boot":{"kernel":"/k"},"firmware":"uefi","memory_mib":256}"#).unwrap();
        ok.validate().unwrap();
        let mut s = ok.clone();
        s.memory_mib = 128;
        assert_eq!(s.validate().unwrap_err().field, "memory_mib");
        let mut s = ok.clone();
        s.backend = BackendKind::CloudHypervisor;
        assert_eq!(s.validate().unwrap_err().field, "firmware");
        let mut s: VmSpec = serde_json::from_str(r#"{"name":"a","boot":{"disk":"/d"},"firmware":"uefi","memory_mib":256}"#).unwrap();
        s.boot.firmware = Some("/fw".into());
        assert_eq!(s.validate().unwrap_err().field, "boot.firmware");
        assert!(serde_json::from_str::<VmSpec>(r#"{"name":"a","boot":{"kernel":"/k"},"firmware":"efi"}"#).is_err());
    }

    #[test]
    fn display_is_qemu_only_and_local_images_are_paths() {
        let mut s: VmSpec = serde_json::from_str(r#"{"name":"a","boot":{"kernel":"/k"},"display":"vnc"}"#).unwrap();
        s.validate().unwrap();
        s.backend = BackendKind::CloudHypervisor;
        assert_eq!(s.validate().unwrap_err().field, "display");
        assert!(serde_json::from_str::<VmSpec>(r#"{"name":"a","boot":{"kernel":"/k"},"display":"sdl"}"#).is_err());
        let mut s = spec();
        s.boot.image = Some("/srv/base.qcow2".into());
        s.validate().expect("an absolute path");
        s.boot.image = Some("base.qcow2".into());
        assert_eq!(s.validate().unwrap_err().field, "boot.image");
    }

    #[test]
    fn ssh_is_checked() {
        let mut s: VmSpec = serde_json::from_str(
            r#"{"name":"a","boot":{"kernel":"/k"},"network":{"mode":"user","forwards":[{"host":8022,"guest":22}]},"ssh":{"user":"ops","generate_key":true}}"#,
        )
        .unwrap();
        assert_eq!(s.validate().unwrap_err().field, "ssh.generate_key", "needs cloud_init");
        s.cloud_init = Some(CloudInitSpec::default());
        s.validate().unwrap();
        s.ssh.as_mut().unwrap().port = 2222;
        assert_eq!(s.validate().unwrap_err().field, "ssh", "port not forwarded");
        let ssh = s.ssh.as_mut().unwrap();
        ssh.port = 22;
        ssh.user = "-oProxyCommand=x".into();
        assert_eq!(s.validate().unwrap_err().field, "ssh.user");
        let ssh = s.ssh.as_mut().unwrap();
        ssh.user = "ops".into();
        ssh.key = Some("id".into());
        assert_eq!(s.validate().unwrap_err().field, "ssh.key");
    }

    #[test]
    fn builder_has_the_file_defaults() {
        let built = VmSpec::builder("web").boot(Boot::kernel("/k")).build();
        assert_eq!(built, spec(), "builder and file defaults differ");
        let custom = VmSpec::builder("web").boot(Boot::kernel("/k").cmdline("quiet")).vcpus(2).vsock(true).build();
        assert_eq!((custom.vcpus, custom.memory_mib, custom.vsock), (2, 512, true));
        assert_eq!(custom.boot.cmdline.as_deref(), Some("quiet"));
    }

    fn with_service_disk(json: serde_json::Value) -> Result<VmSpec, String> {
        let sd: ServiceDiskSpec = serde_json::from_value(json).map_err(|e| e.to_string())?;
        let mut s = spec();
        s.service_disk = Some(sd);
        Ok(s)
    }

    #[test]
    fn service_disk_mistakes_name_their_field() {
        let cases = [
            (serde_json::json!({"label": "lower"}), "service_disk.label"),
            (serde_json::json!({"label": "TWELVE_CHARS"}), "service_disk.label"),
            (serde_json::json!({"files": [{"path": "../etc/passwd", "content": "x"}]}), "service_disk.files[0].path"),
            (serde_json::json!({"files": [{"path": "a"}]}), "service_disk.files[0]"),
            (serde_json::json!({"files": [{"path": "a", "content": "x", "source": "/x"}]}), "service_disk.files[0]"),
            (serde_json::json!({"files": [{"path": "a", "source": "rel"}]}), "service_disk.files[0].source"),
            (serde_json::json!({"trees": [{"source": "rel"}]}), "service_disk.trees[0].source"),
            (serde_json::json!({"trees": [{"source": "/srv", "at": "a/../b"}]}), "service_disk.trees[0].at"),
            (serde_json::json!({"launcher": {"program": ""}}), "service_disk.launcher"),
            (serde_json::json!({"launcher": {"program": "x", "env": {"A-B": "v"}}}), "service_disk.launcher"),
            (serde_json::json!({"launcher": {"program": "x", "args": ["nul\0"]}}), "service_disk.launcher"),
        ];
        for (json, field) in cases {
            let s = with_service_disk(json.clone()).unwrap();
            let e = s.validate().expect_err(&json.to_string());
            assert_eq!(e.field, field, "{json}: {e}");
        }
        let ok = with_service_disk(serde_json::json!({
            "files": [{"path": "bin/app", "source": "/usr/bin/true"}, {"path": "etc/app.conf", "content": "x=1"}],
            "trees": [{"source": "/srv/keys", "at": "keystore"}, {"source": "/srv/root"}],
            "launcher": {"program": "bin/app", "args": ["a b", "", "$x"], "env": {"EMPTY": ""}, "workdir": "keystore"}
        }))
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.service_disk.unwrap().label, "SERVICE");
        assert!(with_service_disk(serde_json::json!({"lable": "X"})).unwrap_err().contains("lable"));
    }
}
