//! `GET /v1/host`: what an outside scheduler needs to place VMs on this
//! host: the version, each backend with its binary's version, whether
//! hardware virtualisation is usable (and why not), CPUs, memory, and the
//! VMs here with the memory they reserve.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

use crate::VmInfo;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostInfo {
    /// Paddock's version.
    pub version: String,
    pub backends: Vec<BackendInfo>,
    pub hardware_virtualization: HardwareVirtualization,
    pub cpus: usize,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub vms: HostVms,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendInfo {
    /// `qemu` or `cloud-hypervisor`.
    pub name: String,
    pub binary: String,
    /// The first line of `BINARY --version`; absent when it cannot run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why the binary gave no version (not found, failed, timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HardwareVirtualization {
    pub usable: bool,
    /// Why it is (or is not) usable, in words.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostVms {
    pub total: usize,
    /// VMs with a hypervisor process (starting, running, paused, stopping).
    pub active: usize,
    /// Guest memory of the active VMs.
    pub reserved_memory_bytes: u64,
}

/// How long a `--version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// The first line `binary --version` prints, or why there is none.
pub async fn binary_version(binary: &Path) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--version").stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(VERSION_TIMEOUT, cmd.output()).await {
        Err(_) => Err(format!("`{} --version` did not answer within {} s", binary.display(), VERSION_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", binary.display())),
        Ok(Ok(out)) if !out.status.success() => Err(format!("`{} --version` failed ({})", binary.display(), out.status)),
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string()),
    }
}

pub async fn backend(name: &str, binary: &Path) -> BackendInfo {
    let (version, error) = match binary_version(binary).await {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    BackendInfo { name: name.to_string(), binary: binary.display().to_string(), version, error }
}

/// `MemTotal` and `MemAvailable` of /proc/meminfo, in bytes.
pub fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

pub fn vms(list: &[VmInfo]) -> HostVms {
    let active: Vec<&VmInfo> = list.iter().filter(|v| v.phase.is_active()).collect();
    HostVms {
        total: list.len(),
        active: active.len(),
        reserved_memory_bytes: active.iter().map(|v| v.spec.memory_mib.saturating_mul(1 << 20)).sum(),
    }
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
