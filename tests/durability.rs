//! Nothing acknowledged is lost, nothing of another daemon is touched:
//! a full state disk after the spawn, two daemons with nested run dirs,
//! a second daemon on one state dir, shutdown with followers connected,
//! a failed up's data disk. Real daemons, real fake-hypervisor processes,
//! a real tmpfs (needs root, as CI is).

mod common;

use common::*;
use http_body_util::BodyExt as _;
use paddock::{VmPhase, WaitFor};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn fake_args() -> [&'static str; 2] {
    ["--qemu-binary", fake_qemu()]
}

/// A tmpfs of `size` mounted on `dir` for one test; lazily unmounted.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mountpoint");
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(dir).output().expect("mount");
        assert!(out.status.success(), "mount tmpfs (needs root): {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

fn with_data_disk(mut spec: paddock::VmSpec, gib: u64) -> paddock::VmSpec {
    spec.data_disk = Some(serde_json::from_value(serde_json::json!({ "size_gib": gib })).expect("data disk"));
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_after_spawn_answers_an_error_and_leaves_nothing() {
    let mut d = Daemon::unstarted(&fake_args(), &[]);
    // Drop order: the daemon (declared later) goes first, then the mount.
    let _tmpfs = Tmpfs::mount(&d.state_dir(), "8m");
    d.spawn();
    let keep = d.client.up(&fake_spec(&d, "keep"), WaitFor::Running, 30).await.expect("up keep").pid.expect("pid");

    // From now on every fake hypervisor fills the state disk as it starts.
    // The fake runs as its VM's unprivileged identity: it fills the disk
    // from a directory it may write (made after the daemon's start, which
    // tightens what it finds in the state dir).
    let fill_dir = d.state_dir().join("fill");
    let filler = fill_dir.join("filler");
    d.kill9();
    d.envs.push(("PADDOCK_FAKE_QEMU".into(), format!("fill={}", filler.display())));
    d.spawn();
    std::fs::create_dir(&fill_dir).expect("mkdir fill");
    writable_by_vms(&fill_dir);
    let spec = with_data_disk(fake_spec(&d, "full"), 1);
    let err = d.client.up(&spec, WaitFor::Running, 30).await.expect_err("up must fail when its VM cannot be recorded");
    println!("up on a full disk: {err}");
    assert!(filler.exists(), "the fake did not fill the disk");

    // Nothing of `full` is left: no process, directory, data disk or listing.
    assert!(d.client.get("full").await.is_err(), "a failed up is still listed");
    assert!(pids_mentioning(&format!("{}/full/", d.run_dir().display())).is_empty(), "a hypervisor of the failed up runs");
    assert_eq!(d.run_dir_entries(), vec!["keep".to_string()]);
    assert!(!d.state_dir().join("vms/full").exists(), "the failed up left its disks");
    let v = d.client.get("keep").await.expect("keep");
    assert_eq!((v.phase, v.pid), (VmPhase::Running, Some(keep)));

    // Space back, daemon restarted: the acknowledged VM is kept and
    // adopted, the unacknowledged one's rows are gone.
    std::fs::remove_file(&filler).expect("free the space");
    d.kill9();
    d.envs.retain(|(k, _)| k != "PADDOCK_FAKE_QEMU");
    d.spawn();
    let v = d.client.get("keep").await.expect("keep after restart");
    assert_eq!((v.phase, v.pid), (VmPhase::Running, Some(keep)), "the acknowledged VM was rolled back");
    assert!(process_exists(keep));
    assert_eq!(d.db_vm_names(), vec!["keep".to_string()]);
    assert_eq!(d.hypervisor_pids(), vec![keep]);
    d.client.up(&spec, WaitFor::Running, 30).await.expect("up again with space");
    d.client.stop("full", 5).await.expect("stop");
    d.client.stop("keep", 5).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_run_dirs_of_two_daemons_leave_each_other_alone() {
    let mut outer = Daemon::start_with(&fake_args(), &[]);
    let mut inner = Daemon::unstarted(&fake_args(), &[]);
    // A valid VM name, so the outer daemon's sweep of unowned directories
    // sees it as a candidate.
    inner.run_dir_at = Some(outer.run_dir().join("nested"));
    inner.spawn();
    let a = outer.client.up(&fake_spec(&outer, "a"), WaitFor::Running, 30).await.expect("up a").pid.expect("pid");
    let b = inner.client.up(&fake_spec(&inner, "b"), WaitFor::Running, 30).await.expect("up b").pid.expect("pid");
    for round in 0..2 {
        // Each daemon restarts while the other's VM runs: its orphan scan
        // and directory sweep must not take the other's for its own.
        outer.kill9();
        outer.spawn();
        inner.kill9();
        inner.spawn();
        let report = outer.log();
        assert!(process_exists(a) && process_exists(b), "round {round}: a VM was stopped as an orphan");
        assert!(inner.run_dir().join("b").is_dir() && inner.run_dir().join(paddock::dir_lock::LOCK_FILE).exists(), "round {round}: inner run dir touched");
        assert_eq!(outer.client.get("a").await.expect("a").pid, Some(a), "round {round}");
        assert_eq!(inner.client.get("b").await.expect("b").pid, Some(b), "round {round}");
        assert!(!report.contains("orphan hypervisor"), "round {round}: {report}");
    }
    // A's VM named like B's run dir is refused rather than sharing it.
    let err = outer.client.up(&fake_spec(&outer, "nested"), WaitFor::Running, 30).await.expect_err("up over another daemon's dir");
    println!("{err}");
    assert!(err.to_string().contains("another paddock"), "{err}");
    assert!(inner.run_dir().join("b").is_dir());
    outer.client.stop("a", 5).await.expect("stop a");
    inner.client.stop("b", 5).await.expect("stop b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_one_state_dir_is_refused_naming_the_pid() {
    let first = Daemon::start_with(&fake_args(), &[]);
    let holder = first.child.as_ref().expect("running").id();
    // Same state dir, its own run dir and socket.
    let mut second = Daemon::unstarted(&fake_args(), &[]);
    second.state_dir_at = Some(first.state_dir());
    let (code, stderr) = second.serve_expecting_failure();
    println!("second daemon: exit {code}: {stderr}");
    assert_ne!(code, 0);
    assert!(stderr.contains(&format!("pid {holder}")) && stderr.contains("state"), "{stderr}");
    // Same run dir, its own state dir.
    let mut third = Daemon::unstarted(&fake_args(), &[]);
    third.run_dir_at = Some(first.run_dir());
    let (code, stderr) = third.serve_expecting_failure();
    assert_ne!(code, 0);
    assert!(stderr.contains(&format!("pid {holder}")), "{stderr}");
    // The first one still serves.
    first.client.health().await.expect("first daemon still serving");
}

/// Reads `body` to its end; returns the text.
async fn drain_body(mut body: hyper::body::Incoming, timeout: Duration) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Err(_) => panic!("stream not ended within {timeout:?}; saw:\n{}", String::from_utf8_lossy(&seen)),
            Ok(None) | Ok(Some(Err(_))) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    seen.extend_from_slice(d);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_followers_and_long_waits_finishes_within_the_bound() {
    for through_api in [false, true] {
        // The guest ignores ACPI, so a stop waits its whole graceful timeout.
        let mut d = Daemon::start_with(&fake_args(), &[("PADDOCK_FAKE_QEMU", "ignore-acpi")]);
        let mut events = subscribe(&d.client, 0).await;
        let held = d.client.up(&fake_spec(&d, "held"), WaitFor::Running, 30).await.expect("up").pid.expect("pid");
        let console = d.client.console("held", true).await.expect("console follow");
        let stopping = {
            let c = d.client.clone();
            tokio::spawn(async move { c.stop("held", 600).await })
        };
        events.until(Duration::from_secs(10), |e| e.vm == "held" && matches!(e.kind, paddock::EventKind::Rung { .. })).await;
        // An up that waits for a readiness line that never comes.
        let mut never = fake_spec(&d, "never");
        never.ready_pattern = Some("no such line".into());
        let waiting = {
            let c = d.client.clone();
            tokio::spawn(async move { c.up(&never, WaitFor::Ready, 600).await })
        };
        let never_pid = events
            .until(Duration::from_secs(10), |e| is_phase(e, "never", |p| *p == VmPhase::Running))
            .await;
        println!("in flight: stop of held, up of never (at seq {})", never_pid.seq);

        let t0 = Instant::now();
        if through_api {
            d.client.shutdown(false, 0).await.expect("shutdown");
        } else {
            let pid = nix::unistd::Pid::from_raw(d.child.as_ref().expect("running").id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        }
        let bound = paddock::daemon::SHUTDOWN_BOUND;
        let mut child = d.child.take().expect("running");
        let exited = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
        let took = t0.elapsed();
        println!("shutdown ({}) took {} ms (bound {} ms), exit {exited}", if through_api { "API" } else { "SIGTERM" }, took.as_millis(), bound.as_millis());
        assert!(took < bound, "shutdown took {took:?}");
        assert!(exited.success(), "{exited}");

        let last_event = drain_body(events.into_body(), Duration::from_secs(5)).await;
        assert!(last_event.contains("shutting down"), "events follower got no last line: {last_event}");
        let last_console = drain_body(console, Duration::from_secs(5)).await;
        assert!(last_console.contains("shutting down"), "console follower got no last line: {last_console}");
        let stop = stopping.await.expect("join").expect_err("the stop cannot have finished");
        let up = waiting.await.expect("join").expect_err("the up cannot be ready");
        println!("stop in flight: {stop}\nup in flight: {up}");
        assert_eq!(stop.kind(), Some("unavailable"));
        assert_eq!(up.kind(), Some("unavailable"));
        // VMs keep running.
        assert!(process_exists(held), "a VM was stopped by the daemon's exit");
        assert_eq!(d.hypervisor_pids().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_up_leaves_no_data_disk_and_a_different_size_is_refused() {
    let d = Daemon::start_with(&fake_args(), &[("PADDOCK_FAKE_QEMU", "exit=3")]);
    let disk = d.state_dir().join("vms/dd/data.qcow2");
    let err = d.client.up(&with_data_disk(fake_spec(&d, "dd"), 2), WaitFor::Running, 30).await.expect_err("the hypervisor exits");
    println!("{err}");
    assert!(!disk.exists() && !disk.parent().expect("dir").exists(), "the failed up left its data disk");
    assert!(d.db_vm_names().is_empty());

    // A disk kept from an earlier VM of that name, at another size.
    std::fs::create_dir_all(disk.parent().expect("dir")).expect("dir");
    paddock_images::ensure_data_disk(&disk, 1 << 30).expect("old disk");
    let before = std::fs::read(&disk).expect("read");
    let err = d.client.up(&with_data_disk(fake_spec(&d, "dd"), 2), WaitFor::Running, 30).await.expect_err("size differs");
    println!("{err}");
    assert_eq!(err.kind(), Some("invalid_spec"));
    let text = err.to_string();
    assert!(text.contains("1 GiB") && text.contains("2 GiB") && text.contains("data_disk.size_gib"), "{text}");
    assert_eq!(std::fs::read(&disk).expect("read"), before, "the existing disk was touched");
    assert!(d.db_vm_names().is_empty());
}
