//! A real QEMU guest under supervision (TCG here): boot, readiness, the
//! console, pause/resume, every way a VM ends, and what is left afterwards.

mod common;

use common::*;
use paddock::{Rung, VmPhase, WaitFor};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOOT: u64 = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_ready_then_stop_ends_on_the_acpi_rung() {
    let d = Daemon::start();
    let c = &d.client;
    let info = c.up(&guest_spec("acpi", ""), WaitFor::Ready, BOOT).await.expect("up");
    assert!(info.ready, "up --wait ready returned before ready: {info:?}");
    assert_eq!(info.phase, VmPhase::Running);
    assert_eq!(info.accel.as_deref(), Some(expected_accel()));
    let pid = info.pid.expect("pid");
    assert!(process_exists(pid));
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(cmdline.split('\0').any(|a| a == "paddock-acpi"), "process not named paddock-acpi: {cmdline:?}");

    let log = wait_console(c, "acpi", READY_MARKER, Duration::from_secs(5)).await;
    assert!(log.contains(READY_MARKER));

    let out = c.stop("acpi", 60).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Acpi), "{out:?}");
    assert_eq!(c.get("acpi").await.expect("get").phase, VmPhase::Stopped { rung: Some(Rung::Acpi), exit: out.exit });
    assert!(!process_exists(pid), "QEMU still running after stop");

    // Boots again from Stopped, then `rm` leaves nothing.
    let again = c.start("acpi", WaitFor::Ready, BOOT).await.expect("start again");
    assert!(again.ready);
    assert_ne!(again.pid, Some(pid));
    c.remove("acpi", true).await.expect("rm --force");
    assert!(d.run_dir_entries().is_empty(), "run dir not empty: {:?}", d.run_dir_entries());
    assert!(d.db_vm_names().is_empty());
    assert!(d.hypervisor_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_ignoring_acpi_is_stopped_by_the_next_rung_within_the_timeout() {
    let d = Daemon::start();
    let c = &d.client;
    let info = c.up(&guest_spec("deaf", "paddock.ignore_acpi=1"), WaitFor::Ready, BOOT).await.expect("up");
    let pid = info.pid.expect("pid");
    let graceful = 3;
    let t0 = Instant::now();
    let out = c.stop("deaf", graceful).await.expect("stop");
    let took = t0.elapsed();
    println!("ignore-acpi stop: rung {:?} after {took:?}", out.rung);
    assert_eq!(out.rung, Some(Rung::Quit), "{out:?}");
    assert!(took >= Duration::from_secs(graceful), "escalated before the graceful timeout: {took:?}");
    assert!(took < Duration::from_secs(graceful + 10), "took {took:?}");
    assert!(!process_exists(pid));
    assert!(d.hypervisor_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_hypervisor_climbs_every_rung_to_sigkill() {
    // Control calls time out after 1 s, so a frozen QEMU fails ACPI and quit
    // quickly; SIGTERM stays pending on a stopped process; SIGKILL works.
    let d = Daemon::start_with(&["--control-timeout-ms", "1000"], &[]);
    let c = &d.client;
    let info = c.up(&guest_spec("frozen", ""), WaitFor::Ready, BOOT).await.expect("up");
    let pid = info.pid.expect("pid");
    let since = last_seq(c).await;
    // SAFETY: kill(2) on the QEMU pid we were given.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let t0 = Instant::now();
    let out = c.stop("frozen", 30).await.expect("stop");
    println!("frozen stop: rung {:?} after {:?}", out.rung, t0.elapsed());
    assert_eq!(out.rung, Some(Rung::Kill), "{out:?}");
    assert_eq!(out.exit.and_then(|e| e.signal), Some(libc::SIGKILL));
    let mut rungs = Vec::new();
    let body = c.events(since, false).await.expect("events");
    let bytes = http_body_util::BodyExt::collect(body).await.expect("body").to_bytes();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Ok(paddock::Event { kind: paddock::EventKind::Rung { rung }, .. }) = serde_json::from_slice(line) {
            rungs.push(rung);
        }
    }
    assert_eq!(rungs, vec![Rung::Acpi, Rung::Quit, Rung::Term, Rung::Kill]);
    assert!(!process_exists(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_qemu_is_published_as_a_crash_within_a_second() {
    let d = Daemon::start();
    let c = &d.client;
    let info = c.up(&guest_spec("victim", ""), WaitFor::Running, BOOT).await.expect("up");
    let pid = info.pid.expect("pid");
    let since = last_seq(c).await;
    // Subscribed once this returns: the crash cannot be missed.
    let mut events = subscribe(c, since).await;
    let t0 = Instant::now();
    // SAFETY: kill(2) on the QEMU pid we were given.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let ev = events.until(Duration::from_secs(10), |e| is_phase(e, "victim", |p| matches!(p, VmPhase::Crashed { .. }))).await;
    let seen = Instant::now();
    let latency = seen.duration_since(t0);
    println!("crash published {latency:?} after kill -9");
    assert!(latency < Duration::from_secs(1), "crash took {latency:?} to publish");
    let paddock::EventKind::Phase { phase: VmPhase::Crashed { exit } } = ev.kind else { panic!("{ev:?}") };
    assert_eq!(exit.signal, Some(9));
    assert_eq!(c.get("victim").await.expect("get").phase, VmPhase::Crashed { exit });
}

/// Reads the console session until `needle` shows up (30 s at most).
async fn read_until(io: &mut hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, io.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle} from the guest shell; saw {}", String::from_utf8_lossy(&seen)))
            .expect("read");
        assert!(n > 0, "console closed; saw {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Attaches once the previous session has let go of the console.
async fn attach_when_free(c: &paddock::client::Client, name: &str) -> hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.attach(name).await {
            Ok(io) => return io,
            Err(e) if Instant::now() < deadline && e.kind() == Some("conflict") => tokio::task::yield_now().await,
            Err(e) => panic!("re-attach failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_an_interactive_console() {
    let d = Daemon::start();
    let c = &d.client;
    c.up(&guest_spec("shell", ""), WaitFor::Ready, BOOT).await.expect("up");

    let p = c.pause("shell").await.expect("pause");
    assert_eq!(p.phase, VmPhase::Paused);
    let e = c.pause("shell").await.expect_err("pausing twice");
    assert_eq!(e.kind(), Some("conflict"));
    let r = c.resume("shell").await.expect("resume");
    assert_eq!(r.phase, VmPhase::Running);

    let mut io = c.attach("shell").await.expect("attach");
    let second = c.attach("shell").await.expect_err("a second writer must be refused");
    assert_eq!(second.kind(), Some("conflict"));
    // The guest shell computes the answer, so an echo of our input alone
    // cannot satisfy the check.
    io.write_all(b"\necho sum=$((40+2))\n").await.expect("type");
    read_until(&mut io, "sum=42").await;
    drop(io);
    // Detaching frees the console for the next writer, and what a client
    // typed just before it detached still reaches the guest, even when the
    // session's output side fails first (the backlog has nowhere to go).
    let mut io = attach_when_free(c, "shell").await;
    io.write_all(b"echo quick=$((6*7))\n").await.expect("type");
    drop(io);
    let mut io = attach_when_free(c, "shell").await;
    read_until(&mut io, "quick=42").await;
    drop(io);
    let out = c.stop("shell", 60).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Acpi));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_that_powers_off_by_itself_is_stopped_not_crashed() {
    let d = Daemon::start();
    let c = &d.client;
    let since = last_seq(c).await;
    let r = c.up(&guest_spec("brief", "paddock.exit=1"), WaitFor::Running, BOOT).await;
    // It may already be gone by the time `up` answers; either way it ends clean.
    if let Err(e) = &r {
        assert_eq!(e.kind(), Some("start_failed"), "{e}");
    }
    let ev = wait_event(c, since, Duration::from_secs(BOOT), |e| {
        is_phase(e, "brief", |p| matches!(p, VmPhase::Stopped { .. } | VmPhase::Crashed { .. }))
    })
    .await;
    let paddock::EventKind::Phase { phase } = ev.kind else { unreachable!() };
    assert!(matches!(phase, VmPhase::Stopped { rung: None, .. }), "{phase:?}");
}

fn expected_accel() -> &'static str {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw && std::path::Path::new("/dev/kvm").exists() {
        "kvm"
    } else {
        "tcg"
    }
}
