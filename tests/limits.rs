//! `[limits]`: a confined VM's hypervisor lives in its own cgroup (v1
//! here: memory, cpu, pids) carrying the spec's limits; `inspect` shows
//! the cgroup's CPU time and memory; a restarted daemon finds the cgroup
//! again; a guest that drives its hypervisor over the memory cap is
//! killed by the kernel and reported as a crash with the reason (OOM),
//! then restarted by its policy.

mod common;

use common::*;
use paddock::WaitFor;
use paddock_actors::events::EventKind;
use paddock_actors::vm::phase::VmPhase;
use std::time::Duration;

/// The path of `pid`'s cgroup in `controller` (v1) or the unified one.
fn cgroup_of(pid: i32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup");
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            (ctrls.split(',').any(|c| c == controller) || ctrls.is_empty() && controller.is_empty()).then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("pid {pid} has no {controller} cgroup:\n{text}"))
}

fn read(path: String) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().to_string()
}

fn v1() -> bool {
    !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

#[test]
fn each_vm_is_in_its_own_cgroup_with_the_specs_limits_found_again_after_kill_9() {
    let mut d = Daemon::start();
    let mut spec = guest_spec("lim", "");
    spec.limits = serde_json::from_value(serde_json::json!({"memory_overhead_mib": 200, "cpu_weight": 50, "cpu_max": 0.5, "pids_max": 64})).expect("limits");
    block_on(d.client.up(&spec, WaitFor::Running, 120)).expect("up");
    let pid = block_on(d.client.get("lim")).expect("inspect").pid.expect("pid");
    let cap = (128u64 + 200) << 20;
    if v1() {
        let mem = cgroup_of(pid, "memory");
        assert!(mem.starts_with("/paddock/") && mem.ends_with("/lim"), "{mem}");
        assert_eq!(cgroup_of(pid, "pids"), mem, "the same cgroup in every hierarchy");
        assert_eq!(cgroup_of(pid, "cpu"), mem);
        assert_eq!(read(format!("/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes")), cap.to_string());
        assert_eq!(read(format!("/sys/fs/cgroup/pids{mem}/pids.max")), "64");
        assert_eq!(read(format!("/sys/fs/cgroup/cpu{mem}/cpu.shares")), "512");
        assert_eq!(read(format!("/sys/fs/cgroup/cpu{mem}/cpu.cfs_quota_us")), "50000");
        assert_eq!(read(format!("/sys/fs/cgroup/cpu{mem}/cpu.cfs_period_us")), "100000");
    } else {
        let cg = cgroup_of(pid, "");
        assert!(cg.ends_with("/lim"), "{cg}");
        assert_eq!(read(format!("/sys/fs/cgroup{cg}/memory.max")), cap.to_string());
        assert_eq!(read(format!("/sys/fs/cgroup{cg}/pids.max")), "64");
        assert_eq!(read(format!("/sys/fs/cgroup{cg}/cpu.max")), "50000 100000");
    }
    let stats = block_on(d.client.get("lim")).expect("inspect").stats.expect("a running confined VM has stats");
    assert!(stats.memory_bytes > 1 << 20, "{stats:?}");
    assert_eq!(stats.memory_max_bytes, Some(cap));
    assert!(stats.cpu_usec.is_some_and(|c| c > 0), "{stats:?}");
    assert!(stats.memory_peak_bytes.is_some_and(|p| p >= stats.memory_bytes), "{stats:?}");
    println!("cgroup stats of a TCG guest just booted: {stats:?}");
    // The daemon dies and comes back: the VM is adopted and its cgroup
    // (and so its stats) found again.
    d.kill9();
    d.spawn();
    let again = block_on(d.client.get("lim")).expect("inspect");
    assert_eq!(again.pid, Some(pid), "adopted, not restarted");
    let stats = again.stats.expect("stats after re-adoption");
    assert_eq!(stats.memory_max_bytes, Some(cap));
    block_on(d.client.remove_with("lim", true, true)).expect("rm");
}

#[test]
fn a_vm_over_its_memory_cap_is_killed_and_reported_as_an_oom_crash_then_restarted() {
    let d = Daemon::start();
    let mut spec = guest_spec("oom", "");
    spec.memory_mib = 256;
    spec.restart.policy = paddock::spec::RestartPolicy::OnFailure;
    let mut base = guest_spec("probe", "");
    base.memory_mib = 256;
    // What a booted guest costs here, to set the cap just above it.
    block_on(d.client.up(&base, WaitFor::Ready, 120)).expect("up probe");
    let used = block_on(d.client.get("probe")).expect("inspect").stats.expect("stats").memory_bytes >> 20;
    block_on(d.client.remove_with("probe", true, true)).expect("rm probe");
    // Guest RAM (256) + overhead = booted use + 48 MiB: the guest filling
    // 160 MiB of its RAM drives the hypervisor over it.
    let overhead = (used + 48).saturating_sub(256).max(1);
    spec.limits.memory_overhead_mib = Some(overhead);
    println!("a booted guest used {used} MiB; cap {} MiB", 256 + overhead);
    let info = block_on(d.client.up(&spec, WaitFor::Ready, 120)).expect("up");
    let pid = info.pid.expect("pid");
    let since = block_on(last_seq(&d.client));
    block_on(async {
        let mut console = d.client.attach("oom").await.expect("attach");
        use tokio::io::AsyncWriteExt as _;
        console.write_all(b"\ndd if=/dev/zero of=/fill bs=1M count=160\n").await.expect("type");
        let crash = wait_event(&d.client, since, Duration::from_secs(120), |e| is_phase(e, "oom", |p| matches!(p, VmPhase::Crashed { .. }))).await;
        let message = crash.message.clone().unwrap_or_default();
        assert!(message.contains("OOM"), "the crash says why: {crash:?}");
        match &crash.kind {
            EventKind::Phase { phase: VmPhase::Crashed { exit } } => assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}"),
            other => panic!("not a crash: {other:?}"),
        }
        assert!(!process_exists(pid));
        wait_event(&d.client, since, Duration::from_secs(60), |e| e.vm == "oom" && matches!(e.kind, EventKind::RestartScheduled { .. })).await;
    });
    block_on(d.client.remove_with("oom", true, true)).expect("rm");
}
