//! Typed bodies of the Cloud Hypervisor HTTP API (`/api/v1`), following
//! the OpenAPI document `cloud-hypervisor-api.yaml` (0.3.0): names, types
//! and required fields as there. Only the fields Paddock sends are present;
//! optional ones are omitted when unset so CH applies its own defaults.
//!
//! Requests deny unknown fields so a test can round-trip them; responses
//! accept whatever a newer CH adds.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `VmConfig` (body of `vm.create`). `payload` is the only required field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub cpus: CpusConfig,
    pub memory: MemoryConfig,
    pub payload: PayloadConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    pub rng: RngConfig,
    pub serial: SerialConfig,
    pub console: ConsoleConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// The pvpanic device turns a guest kernel panic into a `guest`/`panic`
    /// event on the event monitor.
    pub pvpanic: bool,
}

/// `CpusConfig`: `boot_vcpus` and `max_vcpus` are required, minimum 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
}

/// `MemoryConfig`: `size` in bytes (int64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    pub size: i64,
}

/// `PayloadConfig`: a kernel (+ initramfs, cmdline) or firmware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
}

/// `ImageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    FixedVhd,
    Qcow2,
    Raw,
    Vhdx,
    Unknown,
}

/// `DiskConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<ImageType>,
    /// The virtio serial: /dev/disk/by-id/virtio-<serial> in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// `NetConfig`: the TAP device and MAC of the VM's network lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `RngConfig`: `src` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    pub src: PathBuf,
}

/// `ConsoleMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    Off,
    Pty,
    Tty,
    File,
    Socket,
    Null,
}

/// `SerialConfig`: `mode` is required; `file` with File, `socket` with Socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    pub mode: ConsoleMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `ConsoleConfig` (the virtio console): `mode` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub mode: ConsoleMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `VsockConfig`: `cid` (minimum 3) and `socket` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub cid: i64,
    pub socket: PathBuf,
}

/// `VmState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
    Paused,
    BreakPoint,
}

/// `VmInfo` (answer of `vm.info`). The config CH returns carries every
/// field with its default filled in, so it is kept as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub config: serde_json::Value,
    pub state: VmState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_actual_size: Option<i64>,
}

/// `VmmPingResponse` (answer of `vmm.ping`): `version` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_info_shape_from_the_spec_parses() {
        let v: VmInfo = serde_json::from_str(r#"{"config":{"payload":{"kernel":"/k"}},"state":"Paused","memory_actual_size":1}"#).unwrap();
        assert_eq!(v.state, VmState::Paused);
    }

    #[test]
    fn unset_optionals_are_omitted() {
        let s = serde_json::to_value(SerialConfig { mode: ConsoleMode::Off, file: None, socket: None }).unwrap();
        assert_eq!(s, serde_json::json!({"mode": "Off"}));
    }
}
