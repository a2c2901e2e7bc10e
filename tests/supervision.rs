//! Supervision that survives: a daemon killed with -9 comes back and
//! re-adopts its VMs; crash loops end in Failed; PID reuse is not fooled;
//! orphans are stopped; a damaged database stops the daemon, not the VMs.

mod common;

use common::*;
use paddock::{EventKind, Rung, VmPhase, WaitFor};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Tick numbers in the log; a tick may share its line with the guest
/// shell's prompt, which is printed concurrently.
fn ticks(log: &str) -> Vec<u64> {
    log.split("tick ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            let complete = rest[digits.len()..].starts_with(['\r', '\n']);
            if complete { digits.parse().ok() } else { None }
        })
        .collect()
}

/// Waits until process `pid` has exited (its pidfd becomes readable).
async fn wait_gone(pid: i32, timeout: Duration) {
    let Ok(fd) = paddock_actors::process::pidfd_open(pid) else { return };
    let fd = paddock_actors::process::watch_pidfd(fd).expect("watch pidfd");
    let _exited = tokio::time::timeout(timeout, fd.readable()).await.expect("process did not exit").expect("pidfd");
}

/// Reads the VM's serial socket directly (free while no daemon holds it)
/// until `needle` appears; the guest's own output is the event.
async fn wait_serial(socket: &std::path::Path, needle: &str, timeout: Duration) {
    use tokio::io::AsyncReadExt as _;
    let mut s = tokio::net::UnixStream::connect(socket).await.expect("serial socket");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut buf)).await.unwrap_or_else(|_| panic!("{needle:?} not seen")).expect("read");
        assert!(n > 0, "serial socket closed");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_kill_9_then_restart_readopts_three_running_vms() {
    let mut d = Daemon::start();
    let names = ["keep-a", "keep-b", "keep-c"];
    let mut pids = Vec::new();
    for n in names {
        let info = d.client.up(&guest_spec(n, "paddock.ticker=1"), WaitFor::Ready, 180).await.expect("up");
        pids.push(info.pid.expect("pid"));
    }
    wait_console(&d.client, "keep-c", "tick 3", Duration::from_secs(30)).await;
    d.kill9();
    // The guests keep printing while nobody supervises them.
    let log_a = d.run_dir().join("keep-a/console.log");
    let last_before = *ticks(&std::fs::read_to_string(&log_a).expect("log")).last().expect("ticks");
    // Tick +6 on the wire means tick +5 (0.2 s earlier) is in QEMU's log.
    let serial_a = d.run_dir().join("keep-a/serial.sock");
    wait_serial(&serial_a, &format!("tick {}\r", last_before + 6), Duration::from_secs(30)).await;
    let logged = ticks(&std::fs::read_to_string(&log_a).expect("log"));
    assert!(logged.contains(&(last_before + 5)), "the log stopped while the daemon was down");
    assert!(pids.iter().all(|p| process_exists(*p)), "a VM died with its supervisor");

    d.spawn();
    let listed = d.client.list().await.expect("list");
    assert_eq!(listed.len(), 3);
    for (n, pid) in names.iter().zip(&pids) {
        let v = listed.iter().find(|v| v.name == *n).expect("listed");
        assert_eq!((v.phase.clone(), v.pid), (VmPhase::Running, Some(*pid)), "{n} not re-adopted");
    }
    // Output printed before, during and after the downtime, without a gap.
    let marker = format!("tick {}", last_before + 10);
    for n in names {
        let log = wait_console(&d.client, n, &marker, Duration::from_secs(30)).await;
        let t = ticks(&log);
        let set: BTreeSet<u64> = t.iter().copied().collect();
        let (lo, hi) = (*set.first().expect("ticks"), *set.last().expect("ticks"));
        assert!(hi > last_before + 5, "{n}: no output after adoption");
        let missing: Vec<u64> = (lo..=hi).filter(|i| !set.contains(i)).collect();
        assert!(missing.is_empty(), "{n}: console gap, missing ticks {missing:?}");
    }
    // Control is re-connected: ACPI works on the adopted VMs.
    for n in names {
        let out = d.client.stop(n, 60).await.expect("stop");
        assert_eq!(out.rung, Some(Rung::Acpi), "{n}: {out:?}");
    }
    assert!(pids.iter().all(|p| !process_exists(*p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_is_neither_adopted_nor_killed() {
    let mut d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let info = d.client.up(&fake_spec(&d, "reuse"), WaitFor::Ready, 30).await.expect("up");
    let pid = info.pid.expect("pid");
    d.kill9();
    // SAFETY: kill(2) on the fake hypervisor we started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_gone(pid, Duration::from_secs(10)).await;
    // An unrelated process now holds the recorded pid (we rewrite the
    // record: the kernel will not hand out a chosen pid on request).
    let mut bystander = std::process::Command::new("sleep").arg("300").spawn().expect("sleep");
    let other = bystander.id() as i32;
    let db = rusqlite::Connection::open(d.state_dir().join("paddock.db")).expect("db");
    db.execute("UPDATE runs SET pid = ?1 WHERE vm = 'reuse'", [other]).expect("update");
    drop(db);

    d.spawn();
    let v = d.client.get("reuse").await.expect("get");
    assert!(matches!(v.phase, VmPhase::Crashed { .. }), "{v:?}");
    assert_eq!(v.pid, None);
    assert!(process_exists(other), "the unrelated process was killed");
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_keeps_panicking_is_restarted_with_backoff_then_failed() {
    let d = Daemon::start();
    let mut spec = guest_spec("panicky", "paddock.panic_after=2");
    spec.restart.policy = paddock::spec::RestartPolicy::OnFailure;
    spec.restart.max_restarts = 3;
    spec.restart.backoff_base_ms = 500;
    spec.restart.backoff_cap_ms = 10_000;
    let since = last_seq(&d.client).await;
    d.client.up(&spec, WaitFor::Running, 120).await.expect("up");
    let mut scheduled = Vec::new();
    let mut panics = 0;
    let mut crashes = Vec::new();
    let t0 = Instant::now();
    let failed = wait_event(&d.client, since, Duration::from_secs(240), |e| {
        if e.vm != "panicky" {
            return false;
        }
        match &e.kind {
            EventKind::GuestPanicked => panics += 1,
            EventKind::RestartScheduled { attempt, delay_ms, bound_ms } => scheduled.push((*attempt, *delay_ms, *bound_ms)),
            EventKind::Phase { phase: VmPhase::Crashed { .. } } => crashes.push(t0.elapsed()),
            _ => {}
        }
        matches!(&e.kind, EventKind::Phase { phase: VmPhase::Failed { .. } })
    })
    .await;
    for (attempt, delay, bound) in &scheduled {
        println!("restart {attempt}: waited {delay} ms (full jitter in [0, {bound}] ms)");
    }
    println!("crashes at {crashes:?}");
    assert_eq!(scheduled.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(scheduled.iter().map(|s| s.2).collect::<Vec<_>>(), vec![500, 1000, 2000], "bounds must double");
    assert!(scheduled.iter().all(|(_, d, b)| d <= b));
    assert_eq!(crashes.len(), 4, "three restarts, then the fourth crash gives up");
    assert!(panics >= 4, "each crash should be a guest panic (saw {panics})");
    let EventKind::Phase { phase: VmPhase::Failed { reason } } = failed.kind else { unreachable!() };
    assert!(reason.contains("max_restarts"), "{reason}");
    assert!(d.hypervisor_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecorded_paddock_process_is_an_orphan_and_is_stopped() {
    let mut d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let info = d.client.up(&fake_spec(&d, "stray"), WaitFor::Ready, 30).await.expect("up");
    let pid = info.pid.expect("pid");
    d.kill9();
    // Lose the database: the process now has our marker and no record.
    std::fs::remove_dir_all(d.state_dir()).expect("rm state");
    d.spawn();
    assert!(!process_exists(pid), "orphan still running after READY");
    assert!(d.client.list().await.expect("list").is_empty());
    assert!(d.run_dir_entries().is_empty(), "{:?}", d.run_dir_entries());
    let body = d.client.events(0, false).await.expect("events");
    let bytes = http_body_util::BodyExt::collect(body).await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("orphan_stopped") && text.contains(&pid.to_string()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_stops_the_daemon_and_touches_no_vm() {
    let mut d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let info = d.client.up(&fake_spec(&d, "precious"), WaitFor::Ready, 30).await.expect("up");
    let pid = info.pid.expect("pid");
    d.kill9();
    let db = d.state_dir().join("paddock.db");
    // Fold the WAL in first so the damage is in the main file.
    rusqlite::Connection::open(&db).expect("db").pragma_update(None, "wal_checkpoint", "TRUNCATE").expect("checkpoint");
    let mut bytes = std::fs::read(&db).expect("read db");
    bytes[..100].copy_from_slice(&[0xA5; 100]);
    std::fs::write(&db, &bytes).expect("damage db");
    let (code, stderr) = d.serve_expecting_failure();
    assert_ne!(code, 0);
    assert!(stderr.contains("paddock.db"), "{stderr}");
    assert!(stderr.contains("move it aside") || stderr.contains("damaged"), "{stderr}");
    assert!(process_exists(pid), "the VM was touched");
    assert!(!d.client.socket().exists(), "a refusing daemon must not leave its socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_vms_running_and_shutdown_stop_vms_stops_them() {
    let mut d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let pid = d.client.up(&fake_spec(&d, "stay"), WaitFor::Ready, 30).await.expect("up").pid.expect("pid");
    let daemon = d.child.as_ref().expect("daemon").id() as i32;
    // SAFETY: kill(2) on the daemon we started.
    unsafe { libc::kill(daemon, libc::SIGTERM) };
    let status = d.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(process_exists(pid), "SIGTERM of the daemon stopped a VM");
    d.spawn();
    assert_eq!(d.client.get("stay").await.expect("get").pid, Some(pid));
    let r = d.client.shutdown(true, 5).await.expect("shutdown");
    assert_eq!(r["stopped"]["stay"]["rung"], "acpi", "{r}");
    assert!(d.wait_exit().success());
    assert!(!process_exists(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_panic_is_a_crash_even_when_the_hypervisor_exits_0() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[("PADDOCK_FAKE_QEMU", "panic-after-ms=300")]);
    let since = last_seq(&d.client).await;
    let mut events = subscribe(&d.client, since).await;
    d.client.up(&fake_spec(&d, "oops"), WaitFor::Running, 30).await.expect("up");
    let mut panicked = false;
    let ev = events
        .until(Duration::from_secs(10), |e| {
            panicked |= e.vm == "oops" && matches!(e.kind, EventKind::GuestPanicked);
            is_phase(e, "oops", |p| matches!(p, VmPhase::Crashed { .. } | VmPhase::Stopped { .. }))
        })
        .await;
    assert!(panicked, "no guest_panicked event");
    let EventKind::Phase { phase: VmPhase::Crashed { exit } } = ev.kind else { panic!("a panic must be a crash: {:?}", ev.kind) };
    assert_eq!(exit.code, Some(0), "the fake exits 0 after a panic, like QEMU's panic action");
}
