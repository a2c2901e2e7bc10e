//! The VM core's decisions end to end, with the fake QEMU (real processes,
//! real QMP sockets, a real daemon killed with -9 and started again): a
//! stop during `up`, a running stop escalated by a second stop and by
//! `rm --force`, re-adoption of a VM whose control socket answers late,
//! and a crash streak that a daemon restart does not reset.

mod common;

use common::*;
use paddock::{EventKind, Rung, VmPhase, WaitFor};
use std::time::Duration;

const EVENT_WAIT: Duration = Duration::from_secs(60);

fn fake_with(flags: &str) -> Daemon {
    Daemon::start_with(&["--qemu-binary", fake_qemu(), "--control-timeout-ms", "1000"], &[("PADDOCK_FAKE_QEMU", flags)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_up_answers_the_up_and_keeps_the_vm_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The fake runs as the VM's unprivileged identity: it must reach the file.
    traversable(dir.path());
    let gate = dir.path().join("gate");
    std::fs::write(&gate, b"").expect("gate");
    let mut d = Daemon::start_with(
        &["--qemu-binary", fake_qemu(), "--control-timeout-ms", "30000"],
        &[("PADDOCK_FAKE_QEMU", &format!("gate={}", gate.display()))],
    );
    let since = last_seq(&d.client).await;
    let (client, spec) = (d.client.clone(), fake_spec(&d, "early"));
    let up = tokio::spawn(async move { client.up(&spec, WaitFor::Running, 60).await });
    // The hypervisor runs but its control socket does not answer yet.
    wait_event(&d.client, since, EVENT_WAIT, |e| is_phase(e, "early", |p| *p == VmPhase::Starting)).await;
    let stopped = d.client.stop("early", 0).await.expect("stop during up");
    assert!(matches!(stopped.phase, VmPhase::Stopped { .. }), "{stopped:?}");
    let refused = up.await.expect("task").expect_err("the up was overtaken by the stop");
    assert_eq!(refused.kind(), Some("conflict"), "{refused}");
    // The VM stays, and a later start boots it.
    std::fs::remove_file(&gate).expect("open the gate");
    let info = d.client.start("early", WaitFor::Running, 60).await.expect("start after the stop");
    assert_eq!(info.phase, VmPhase::Running);
    // A daemon restart keeps it: it is not an interrupted up.
    d.kill9();
    d.spawn();
    let info = d.client.get("early").await.expect("still there after a daemon restart");
    assert_eq!(info.phase, VmPhase::Running);
    assert_eq!(d.db_vm_names(), vec!["early".to_string()]);
    d.client.remove("early", true).await.expect("rm --force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stop_is_escalated_by_a_shorter_stop_and_by_rm_force() {
    let d = fake_with("ignore-acpi");
    for (vm, by_rm) in [("patient", false), ("doomed", true)] {
        d.client.up(&fake_spec(&d, vm), WaitFor::Running, 60).await.expect("up");
        let since = last_seq(&d.client).await;
        let client = d.client.clone();
        // Ten minutes of ACPI for a guest that ignores the button.
        let first = tokio::spawn(async move { client.stop(vm, 600).await });
        wait_event(&d.client, since, EVENT_WAIT, |e| e.vm == vm && matches!(e.kind, EventKind::Rung { rung: Rung::Acpi })).await;
        if by_rm {
            // Its budget has no room for the ten minutes: it must cut them.
            d.client.remove(vm, true).await.expect("rm --force escalates the running stop");
            let gone = d.client.get(vm).await.expect_err("removed");
            assert_eq!(gone.kind(), Some("not_found"), "{gone}");
        } else {
            let second = d.client.stop(vm, 1).await.expect("a shorter stop shortens the running one");
            assert_eq!(second.rung, Some(Rung::Quit), "{second:?}");
        }
        let first = first.await.expect("task").expect("the first stop is answered with the same end");
        assert_eq!(first.rung, Some(Rung::Quit), "{first:?}");
    }
    assert!(d.hypervisor_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_readopted_while_its_control_socket_is_busy_becomes_fully_controllable() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The fake runs as the VM's unprivileged identity: it must reach the file.
    traversable(dir.path());
    let gate = dir.path().join("gate");
    let mut d = fake_with(&format!("gate={}", gate.display()));
    d.client.up(&fake_spec(&d, "busy"), WaitFor::Ready, 60).await.expect("up");
    // The hypervisor stops answering on its control socket; the daemon dies.
    std::fs::write(&gate, b"").expect("gate");
    d.kill9();
    d.spawn();
    let since = last_seq(&d.client).await;
    let info = d.client.get("busy").await.expect("adopted");
    assert_eq!(info.phase, VmPhase::Running);
    let refused = d.client.pause("busy").await.expect_err("no control channel yet");
    assert_eq!(refused.kind(), Some("conflict"), "{refused}");
    // Long after the control timeout, the socket answers again: the
    // reconnection finds it, and readiness is seen again.
    std::fs::remove_file(&gate).expect("open the gate");
    wait_event(&d.client, since, EVENT_WAIT, |e| e.vm == "busy" && matches!(e.kind, EventKind::Ready)).await;
    assert_eq!(d.client.pause("busy").await.expect("pause").phase, VmPhase::Paused);
    assert_eq!(d.client.resume("busy").await.expect("resume").phase, VmPhase::Running);
    let out = d.client.stop("busy", 10).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Acpi), "a controllable VM is stopped with the power button: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_streak_survives_a_daemon_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The fake runs as the VM's unprivileged identity and removes the file
    // it reacts to (the directory is a test's own, never a shared one).
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod 777");
    }
    let crash = dir.path().join("crash");
    let mut d = fake_with(&format!("crash-when={}", crash.display()));
    let mut spec = fake_spec(&d, "loop");
    spec.restart.policy = paddock::spec::RestartPolicy::OnFailure;
    spec.restart.max_restarts = 2;
    spec.restart.window_secs = 600;
    spec.restart.stable_secs = 600;
    spec.restart.backoff_base_ms = 100;
    spec.restart.backoff_cap_ms = 1_000;
    d.client.up(&spec, WaitFor::Running, 60).await.expect("up");

    // Crashes once, and is restarted (attempt 1).
    let since = last_seq(&d.client).await;
    std::fs::write(&crash, b"").expect("crash");
    let ev = wait_event(&d.client, since, EVENT_WAIT, |e| e.vm == "loop" && matches!(e.kind, EventKind::RestartScheduled { .. })).await;
    assert!(matches!(ev.kind, EventKind::RestartScheduled { attempt: 1, .. }), "{ev:?}");
    wait_event(&d.client, ev.seq, EVENT_WAIT, |e| is_phase(e, "loop", |p| *p == VmPhase::Running)).await;

    // The daemon dies and comes back; the streak is still one restart long.
    d.kill9();
    d.spawn();
    let since = last_seq(&d.client).await;
    std::fs::write(&crash, b"").expect("crash");
    let ev = wait_event(&d.client, since, EVENT_WAIT, |e| e.vm == "loop" && matches!(e.kind, EventKind::RestartScheduled { .. })).await;
    assert!(matches!(ev.kind, EventKind::RestartScheduled { attempt: 2, .. }), "the streak was reset: {ev:?}");
    wait_event(&d.client, ev.seq, EVENT_WAIT, |e| is_phase(e, "loop", |p| *p == VmPhase::Running)).await;

    // The third crash in the window is one more than the policy allows.
    let since = last_seq(&d.client).await;
    std::fs::write(&crash, b"").expect("crash");
    let end = wait_event(&d.client, since, EVENT_WAIT, |e| {
        e.vm == "loop" && (matches!(e.kind, EventKind::RestartScheduled { .. }) || is_phase(e, "loop", |p| matches!(p, VmPhase::Failed { .. })))
    })
    .await;
    let EventKind::Phase { phase: VmPhase::Failed { reason } } = end.kind else { panic!("restarted a third time: {end:?}") };
    assert!(reason.contains("max_restarts"), "{reason}");
}
