//! The daemon dies (abort, like kill -9) at each failpoint of up, start,
//! stop, rm and adoption; the next daemon must find every VM either
//! running or absent, with no orphan process, file, socket or row.
//! Run with `--features failpoints` (scripts/test.sh does).

mod common;

use common::*;
use paddock::{EventKind, VmPhase, WaitFor};
use std::time::Duration;

/// After recovery: `vm` is Running with the single hypervisor process of
/// this daemon, or absent with nothing left of it.
async fn running_or_absent(d: &Daemon, vm: &str) -> bool {
    let listed = d.client.list().await.expect("list");
    let pids = d.hypervisor_pids();
    match listed.iter().find(|v| v.name == vm) {
        Some(v) => {
            assert_eq!(v.phase, VmPhase::Running, "{vm} is neither running nor absent: {v:?}");
            assert_eq!(pids, vec![v.pid.expect("pid")], "processes other than the VM's own");
            assert_eq!(d.db_vm_names(), vec![vm.to_string()]);
            true
        }
        None => {
            assert!(pids.is_empty(), "orphan process {pids:?}");
            assert!(d.db_vm_names().is_empty(), "orphan row");
            assert!(d.run_dir_entries().is_empty(), "orphan files {:?}", d.run_dir_entries());
            false
        }
    }
}

fn daemon_failing_at(point: &str) -> Daemon {
    let fp = format!("{point}=return");
    Daemon::start_with(&["--qemu-binary", fake_qemu()], &[("FAILPOINTS", fp.as_str())])
}

fn restart_clean(d: &mut Daemon) {
    d.envs.retain(|(k, _)| k != "FAILPOINTS");
    d.spawn();
}

/// The daemon dies at each step of `up`; after a clean restart the VM is
/// running (and fully usable: ACPI stop, rm, up again) or absent.
/// `hypervisor` selects the backend's fake: QEMU's, or Cloud Hypervisor's,
/// where a crash after the spawn leaves a process with no VM in it that the
/// next daemon adopts and finishes booting (vm.create, vm.boot).
async fn crash_at_each_step_of_up(cloud_hypervisor: bool) {
    let expect = [
        ("up.before-insert", false),
        ("up.after-insert", false),
        ("start.after-dir", false),
        ("start.after-spawn", false),
        ("start.after-run-recorded", true),
        ("start.before-running", true),
    ];
    let spec = |d: &Daemon| {
        let mut s = fake_spec(d, "fp");
        if cloud_hypervisor {
            s.backend = paddock::spec::BackendKind::CloudHypervisor;
            s.accel = paddock::spec::Accel::Kvm;
        }
        s
    };
    for (point, running) in expect {
        let fp = format!("{point}=return");
        let binary = if cloud_hypervisor {
            ["--cloud-hypervisor-binary", fake_ch()]
        } else {
            ["--qemu-binary", fake_qemu()]
        };
        let mut d = Daemon::start_with(&binary, &[("FAILPOINTS", fp.as_str())]);
        let r = d.client.up(&spec(&d), WaitFor::Running, 30).await;
        assert!(r.is_err(), "{point}: up succeeded although the daemon died");
        assert!(!d.wait_exit().success(), "{point}: daemon did not die");
        restart_clean(&mut d);
        let is_running = running_or_absent(&d, "fp").await;
        println!("{point}: after restart the VM is {}", if is_running { "running" } else { "absent" });
        assert_eq!(is_running, running, "{point}");
        // Whatever remains is fully usable.
        if is_running {
            let out = d.client.stop("fp", 10).await.expect("stop");
            assert_eq!(out.rung, Some(paddock::Rung::Acpi), "{point}: {out:?}");
            d.client.remove("fp", false).await.expect("rm");
        }
        d.client.up(&spec(&d), WaitFor::Ready, 30).await.expect("up after recovery");
        d.client.remove("fp", true).await.expect("rm");
        assert!(!running_or_absent(&d, "fp").await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_each_step_of_up_leaves_the_vm_running_or_absent() {
    crash_at_each_step_of_up(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ch_crash_at_each_step_of_up_leaves_the_vm_running_or_absent() {
    crash_at_each_step_of_up(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_each_step_of_rm_leaves_the_vm_absent() {
    for point in ["rm.after-intent", "rm.after-dir", "rm.after-rows"] {
        let mut d = daemon_failing_at(point);
        d.client.up(&fake_spec(&d, "gone"), WaitFor::Ready, 30).await.expect("up");
        d.client.stop("gone", 5).await.expect("stop");
        assert!(d.client.remove("gone", false).await.is_err(), "{point}");
        assert!(!d.wait_exit().success());
        restart_clean(&mut d);
        assert!(!running_or_absent(&d, "gone").await, "{point}: VM came back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_stop_finishes_the_stop_after_restart() {
    let mut d = daemon_failing_at("stop.after-intent");
    let pid = d.client.up(&fake_spec(&d, "halt"), WaitFor::Ready, 30).await.expect("up").pid.expect("pid");
    assert!(d.client.stop("halt", 5).await.is_err());
    assert!(!d.wait_exit().success());
    assert!(process_exists(pid));
    let since = 0;
    restart_clean(&mut d);
    let ev = wait_event(&d.client, since, Duration::from_secs(30), |e| {
        is_phase(e, "halt", |p| matches!(p, VmPhase::Stopped { .. }))
    })
    .await;
    println!("interrupted stop finished: {:?}", ev.kind);
    assert!(!process_exists(pid));
    assert!(d.hypervisor_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_adoption_then_a_clean_start_adopts() {
    let mut d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let pid = d.client.up(&fake_spec(&d, "twice"), WaitFor::Ready, 30).await.expect("up").pid.expect("pid");
    d.kill9();
    // The second daemon dies while adopting, before it says READY.
    d.envs.push(("FAILPOINTS".into(), "adopt.after-verify=return".into()));
    let (code, _) = d.serve_expecting_failure();
    assert_ne!(code, 0);
    restart_clean(&mut d);
    let v = d.client.get("twice").await.expect("get");
    assert_eq!((v.phase, v.pid), (VmPhase::Running, Some(pid)));
    assert!(running_or_absent(&d, "twice").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_console_actor_is_restarted_alone() {
    let d = Daemon::start_with(&[], &[("FAILPOINTS", "console.output=1*return")]);
    let since = last_seq(&d.client).await;
    let info = d.client.up(&guest_spec("resilient", ""), WaitFor::Ready, 120).await.expect("up");
    assert!(info.ready, "readiness must survive a console restart");
    let ev = wait_event(&d.client, since, Duration::from_secs(30), |e| {
        e.vm == "resilient" && matches!(&e.kind, EventKind::ChildRestarted { child } if child == "console")
    })
    .await;
    println!("console restarted at generation {}", ev.generation);
    let now = d.client.get("resilient").await.expect("get");
    assert_eq!((now.phase, now.pid), (VmPhase::Running, info.pid), "the VM must keep its process");
    wait_console(&d.client, "resilient", READY_MARKER, Duration::from_secs(5)).await;
    d.client.stop("resilient", 60).await.expect("stop");
}

/// The daemon dies between the spawn and the run's record; the next one
/// rolls the up back (its directory and socket go) and then stops the
/// hypervisor as an orphan. With its socket gone the quit rung is
/// skipped, instead of waiting the whole control timeout (here 60 s) on
/// a socket that cannot answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_whose_socket_is_gone_is_not_asked_to_quit() {
    let mut d = Daemon::start_with(
        &["--qemu-binary", fake_qemu(), "--control-timeout-ms", "60000"],
        &[("FAILPOINTS", "start.after-spawn=return")],
    );
    assert!(d.client.up(&fake_spec(&d, "lost"), WaitFor::Running, 30).await.is_err());
    assert!(!d.wait_exit().success());
    let orphan = d.hypervisor_pids();
    assert_eq!(orphan.len(), 1, "the spawned hypervisor outlives the daemon");
    restart_clean(&mut d);
    // READY came before the 20 s that `spawn` waits, so far below 60 s.
    assert!(!process_exists(orphan[0]), "orphan still running after READY");
    let body = d.client.events(0, false).await.expect("events");
    let bytes = http_body_util::BodyExt::collect(body).await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    println!("{}", text.lines().filter(|l| l.contains("orphan")).collect::<Vec<_>>().join("\n"));
    assert!(text.contains("orphan_stopped") && text.contains("\"sigterm\""), "{text}");
    assert!(!running_or_absent(&d, "lost").await);
}
