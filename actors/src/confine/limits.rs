//! `[limits]` of a spec: what the VM's cgroup enforces.

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// The hypervisor's own memory on top of guest RAM (device model,
/// buffers) that the cap allows by default with KVM.
pub const DEFAULT_OVERHEAD_MIB: u64 = 256;
/// Under TCG QEMU also fills a translation cache of up to 1 GiB.
pub const DEFAULT_TCG_OVERHEAD_MIB: u64 = 1280;
pub const DEFAULT_PIDS_MAX: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory cap = `memory_mib` + this (default 256, 1280 under TCG).
    /// Over it the kernel kills the hypervisor (a crash, reason OOM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_overhead_mib: Option<u64>,
    /// Relative CPU share, 1..=10000 (100 is the default of every cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// At most this many CPUs' worth of time (e.g. 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<f64>,
    /// Threads and processes of the hypervisor (and its vsock device).
    #[serde(default = "default_pids")]
    pub pids_max: u64,
    /// Relative block I/O share, 1..=10000 (needs the io / blkio controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<u32>,
}

fn default_pids() -> u64 {
    DEFAULT_PIDS_MAX
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_overhead_mib: None, cpu_weight: None, cpu_max: None, pids_max: DEFAULT_PIDS_MAX, io_weight: None }
    }
}

impl Limits {
    pub fn is_default(&self) -> bool {
        *self == Limits::default()
    }

    /// The cap in bytes for a guest of `memory_mib`.
    pub fn memory_max_bytes(&self, memory_mib: u64, tcg: bool) -> u64 {
        let default = if tcg { DEFAULT_TCG_OVERHEAD_MIB } else { DEFAULT_OVERHEAD_MIB };
        (memory_mib + self.memory_overhead_mib.unwrap_or(default)) << 20
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(o) = self.memory_overhead_mib.filter(|o| *o > 1 << 20) {
            return Err(SpecError::new("limits.memory_overhead_mib", format!("{o} MiB is more than 1 TiB")));
        }
        for (field, w) in [("limits.cpu_weight", self.cpu_weight), ("limits.io_weight", self.io_weight)] {
            if let Some(w) = w {
                if !(1..=10_000).contains(&w) {
                    return Err(SpecError::new(field, format!("must be between 1 and 10000 (got {w}); 100 is the default share")));
                }
            }
        }
        if let Some(c) = self.cpu_max {
            if !(c.is_finite() && (0.01..=1024.0).contains(&c)) {
                return Err(SpecError::new("limits.cpu_max", format!("must be a number of CPUs between 0.01 and 1024 (got {c}), e.g. 1.5")));
            }
        }
        if self.pids_max < 16 {
            return Err(SpecError::new("limits.pids_max", format!("must be at least 16 (got {}); a hypervisor has a thread per vCPU and more", self.pids_max)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_limits_name_their_field() {
        let bad = [
            (Limits { cpu_weight: Some(0), ..Limits::default() }, "limits.cpu_weight"),
            (Limits { io_weight: Some(20_000), ..Limits::default() }, "limits.io_weight"),
            (Limits { cpu_max: Some(f64::NAN), ..Limits::default() }, "limits.cpu_max"),
            (Limits { cpu_max: Some(0.0), ..Limits::default() }, "limits.cpu_max"),
            (Limits { pids_max: 3, ..Limits::default() }, "limits.pids_max"),
        ];
        for (l, field) in bad {
            let e = l.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(field), "{l:?}: {e}");
        }
        assert!(Limits::default().validate().is_ok());
        assert_eq!(Limits::default().memory_max_bytes(128, false), 384 << 20);
        assert_eq!(Limits::default().memory_max_bytes(128, true), (128 + 1280) << 20);
        assert_eq!(Limits { memory_overhead_mib: Some(16), ..Limits::default() }.memory_max_bytes(128, true), 144 << 20);
    }
}
