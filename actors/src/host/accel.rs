//! Choosing an accelerator: KVM only where hardware virtualisation really
//! works, TCG otherwise.
//!
//! A PVM nested host has /dev/kvm (the `kvm_pvm` module) but neither vmx nor
//! svm in /proc/cpuinfo, and ordinary guests cannot run on it; opening
//! /dev/kvm alone is not proof.

use std::sync::OnceLock;

use crate::spec::Accel;

/// What the host offers, with the reason in words for the log and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAccel {
    pub kvm_usable: bool,
    pub reason: String,
}

/// The inputs of the decision, read from the host (kept apart so the rule
/// is testable without the host).
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub kvm_open_error: Option<String>,
    pub cpuinfo: String,
    pub modules: String,
}

impl HostFacts {
    pub fn read() -> Self {
        let kvm_open_error = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .err()
            .map(|e| e.to_string())
            .or_else(unprivileged_kvm_error);
        HostFacts {
            kvm_open_error,
            cpuinfo: std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            modules: std::fs::read_to_string("/proc/modules").unwrap_or_default(),
        }
    }
}

/// Confined hypervisors open /dev/kvm as their own identity: through the
/// kvm group (see `confine::identity::kvm_group`) or world access.
fn unprivileged_kvm_error() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata("/dev/kvm").ok()?;
    let open_to_others = meta.mode() & 0o006 == 0o006;
    (crate::confine::identity::kvm_group().is_none() && !open_to_others).then(|| {
        format!(
            "/dev/kvm (mode {:o}, gid {}) is closed to the unprivileged hypervisors; give it to group kvm with mode 0660 (Debian's udev rule; scripts/install-deps.sh)",
            meta.mode() & 0o777,
            meta.gid()
        )
    })
}

pub fn decide(facts: &HostFacts) -> HostAccel {
    if let Some(e) = &facts.kvm_open_error {
        return HostAccel { kvm_usable: false, reason: format!("/dev/kvm cannot be opened ({e})") };
    }
    let has_flag = facts
        .cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = facts.modules.lines().any(|l| l.split_whitespace().next() == Some("kvm_pvm"));
    match (has_flag, pvm) {
        (true, _) => HostAccel { kvm_usable: true, reason: "/dev/kvm opens and the CPU has vmx/svm".into() },
        (false, true) => HostAccel {
            kvm_usable: false,
            reason: "/dev/kvm belongs to kvm_pvm (a nested PVM host) and the CPU has no vmx/svm".into(),
        },
        (false, false) => HostAccel {
            kvm_usable: false,
            reason: "/dev/kvm opens but the CPU shows neither vmx nor svm".into(),
        },
    }
}

/// The host's answer, read once per process.
pub fn host() -> &'static HostAccel {
    static HOST: OnceLock<HostAccel> = OnceLock::new();
    HOST.get_or_init(|| {
        let a = decide(&HostFacts::read());
        tracing::info!(kvm_usable = a.kvm_usable, reason = %a.reason, "accelerator probe");
        a
    })
}

/// The accelerator a VM will use: `auto` follows the probe; an explicit
/// `kvm` is honoured (with a warning where the probe disagrees) because the
/// operator may know better than the heuristic.
pub fn resolve(requested: Accel, vm: &str) -> Accel {
    match requested {
        Accel::Kvm => {
            let h = host();
            if !h.kvm_usable {
                tracing::warn!(vm, reason = %h.reason, "accel = kvm requested although the probe says KVM is unusable");
            }
            Accel::Kvm
        }
        Accel::Tcg => Accel::Tcg,
        Accel::Auto => {
            let h = host();
            let chosen = if h.kvm_usable { Accel::Kvm } else { Accel::Tcg };
            tracing::info!(vm, accel = ?chosen, reason = %h.reason, "accel = auto");
            chosen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_host_without_vmx_uses_tcg() {
        let f = HostFacts {
            kvm_open_error: None,
            cpuinfo: "flags\t\t: fpu vme sse2 hypervisor\n".into(),
            modules: "kvm_pvm 200704 0 - Live 0x0\nkvm 1 0\n".into(),
        };
        let a = decide(&f);
        assert!(!a.kvm_usable);
        assert!(a.reason.contains("PVM"), "{}", a.reason);
    }

    #[test]
    fn vmx_host_uses_kvm() {
        let f = HostFacts { cpuinfo: "flags : fpu vmx sse2\n".into(), ..Default::default() };
        assert!(decide(&f).kvm_usable);
    }

    #[test]
    fn unopenable_kvm_uses_tcg() {
        let f = HostFacts { kvm_open_error: Some("No such file".into()), cpuinfo: "flags : svm".into(), ..Default::default() };
        assert!(!decide(&f).kvm_usable);
    }

    #[test]
    fn this_host_probe_is_consistent_with_cpuinfo() {
        let facts = HostFacts::read();
        let a = decide(&facts);
        if a.kvm_usable {
            assert!(facts.cpuinfo.contains("vmx") || facts.cpuinfo.contains("svm"));
        }
    }
}
