//! How a Cloud Hypervisor process really ended, from its own record.
//!
//! A fatal vCPU error makes CH log an ERROR line on stderr, then write
//! `vm shutdown`, `deleted`, `vmm shutdown` to the event monitor and exit
//! with code 0: from the outside exactly a guest that powered off. Its
//! stderr (RUN/NAME/hypervisor.log) is the only place the failure shows.
//! CH's log lines read `cloud-hypervisor: 4.067732s: <vcpu0> ERROR:vmm/src/cpu.rs:1487 -- VCPU generated error: ...`
//! (API errors are answered, not logged at this level).

/// The message of the last ERROR line in CH's log, if any.
pub fn fatal_error(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once(" ERROR:")?;
        let message = rest.split_once(" -- ").map_or(rest, |(_, m)| m).trim();
        let thread = line.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(t, _)| t);
        Some(match thread {
            Some(t) => format!("cloud-hypervisor ({t}): {message}"),
            None => format!("cloud-hypervisor: {message}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_line_is_the_cause() {
        let log = "cloud-hypervisor:   0.421325s: <vcpu0> WARN:vmm/src/cpu.rs:278 -- Kernel lacks CONFIG_SCHED_CORE support - no SMT isolation\n\
                   cloud-hypervisor:   4.067732s: <vcpu0> ERROR:vmm/src/cpu.rs:1487 -- VCPU generated error: VcpuRun(Bad address)\n";
        assert_eq!(fatal_error(log).as_deref(), Some("cloud-hypervisor (vcpu0): VCPU generated error: VcpuRun(Bad address)"));
    }

    #[test]
    fn warnings_alone_are_no_failure() {
        let log = "cloud-hypervisor:   0.421325s: <vcpu0> WARN:vmm/src/cpu.rs:278 -- Kernel lacks CONFIG_SCHED_CORE support\n";
        assert_eq!(fatal_error(log), None);
        assert_eq!(fatal_error(""), None);
    }
}
