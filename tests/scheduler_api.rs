//! The API an outside scheduler drives a host with, on a real daemon over
//! its socket: labels and the label filter, idempotent create, waiting for
//! a run's end (power-off of a real guest, kill -9, the ladder), and the
//! host's description.

mod common;

use common::*;
use paddock::run_end::EndCause;
use paddock::{Rung, VmPhase, WaitFor};

fn labeled(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> paddock::VmSpec {
    let mut spec = fake_spec(d, name);
    spec.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    spec
}

fn names(vms: &[paddock::VmInfo]) -> Vec<String> {
    vms.iter().map(|v| v.name.clone()).collect()
}

#[test]
fn labels_are_kept_and_listing_filters_on_every_selector() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    block_on(async {
        let c = &d.client;
        c.up(&labeled(&d, "a", &[("team", "web"), ("tier", "front")]), WaitFor::Running, 30).await.expect("up a");
        c.up(&labeled(&d, "b", &[("team", "web"), ("tier", "back")]), WaitFor::Running, 30).await.expect("up b");
        c.up(&labeled(&d, "c", &[("team", "db")]), WaitFor::Running, 30).await.expect("up c");
        c.up(&fake_spec(&d, "n"), WaitFor::Running, 30).await.expect("up n");

        assert_eq!(c.get("a").await.expect("get").spec.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(names(&c.list_labeled(&["team=web"]).await.expect("list")), ["a", "b"]);
        assert_eq!(names(&c.list_labeled(&["team=web", "tier=back"]).await.expect("list")), ["b"]);
        assert_eq!(names(&c.list_labeled(&["team=nobody"]).await.expect("list")), Vec::<String>::new());
        assert_eq!(names(&c.list_labeled(&[]).await.expect("list")).len(), 4);

        // A selector that is not key=value, or an unknown parameter: 400 naming it.
        let e = c.list_labeled(&["team"]).await.expect_err("bad selector");
        assert_eq!((e.kind(), field_of(&e)), (Some("invalid_request"), "label".to_string()));
        let e = c.stream("/v1/vms?lable=team=web").await.expect_err("misspelt parameter");
        assert_eq!(field_of(&e), "lable");

        // A bad label in a spec names the label and creates nothing.
        let e = c.up(&labeled(&d, "bad", &[("team", "has space")]), WaitFor::Running, 30).await.expect_err("bad label");
        assert_eq!((e.kind(), field_of(&e)), (Some("invalid_spec"), "labels.team".to_string()));
        let e = c.up(&labeled(&d, "bad", &[("-x", "y")]), WaitFor::Running, 30).await.expect_err("bad key");
        assert_eq!(field_of(&e), "labels");
        assert!(c.get("bad").await.is_err(), "a refused spec left a VM behind");
    });
}

fn field_of(e: &paddock::client::ClientError) -> String {
    match e {
        paddock::client::ClientError::Api { detail, .. } => detail.field.clone().unwrap_or_default(),
        other => panic!("not an API error: {other}"),
    }
}

#[test]
fn a_repeated_idempotency_key_answers_the_first_result_and_a_different_spec_is_a_conflict() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    block_on(async {
        let c = &d.client;
        let spec = fake_spec(&d, "idem");
        let (first, replayed) = c.up_idempotent(&spec, "key-1", WaitFor::Running, 30).await.expect("first");
        assert!(!replayed);
        let (again, replayed) = c.up_idempotent(&spec, "key-1", WaitFor::Running, 30).await.expect("repeat");
        assert!(replayed, "the repeat was not marked as replayed");
        assert_eq!((again.name.as_str(), again.generation, again.pid), (first.name.as_str(), first.generation, first.pid));
        assert_eq!(hypervisors(&d), 1, "a repeat made a second hypervisor");

        // Same key, another spec: 409, nothing created.
        let mut other = fake_spec(&d, "idem2");
        other.memory_mib = 96;
        let e = c.up_idempotent(&other, "key-1", WaitFor::Running, 30).await.expect_err("different spec");
        assert_eq!(e.kind(), Some("conflict"), "{e}");
        assert!(c.get("idem2").await.is_err(), "the conflicting request created a VM");

        // A create that failed is not remembered: its retry, fixed, runs.
        let mut bad = fake_spec(&d, "idem5");
        bad.memory_mib = 1;
        let e = c.up_idempotent(&bad, "key-5", WaitFor::Running, 30).await.expect_err("too little memory");
        assert_eq!(e.kind(), Some("invalid_spec"));
        let (fixed, replayed) = c.up_idempotent(&fake_spec(&d, "idem5"), "key-5", WaitFor::Running, 30).await.expect("the fixed retry");
        assert!(!replayed && fixed.pid.is_some());
        c.remove("idem5", true).await.expect("rm idem5");

        // Concurrent requests with one key: one VM, both answered with it.
        let spec3 = fake_spec(&d, "idem3");
        let (r1, r2) = tokio::join!(
            c.up_idempotent(&spec3, "key-3", WaitFor::Running, 30),
            c.up_idempotent(&spec3, "key-3", WaitFor::Running, 30)
        );
        let (r1, r2) = (r1.expect("concurrent 1"), r2.expect("concurrent 2"));
        assert_eq!((r1.0.pid, r1.1 || r2.1), (r2.0.pid, true));
        assert_eq!(c.list().await.expect("list").len(), 2);

        // A key that is not printable ASCII is refused by name.
        let e = c.up_idempotent(&fake_spec(&d, "idem4"), "", WaitFor::Running, 30).await.expect_err("empty key");
        assert_eq!(field_of(&e), "idempotency-key");
        assert!(c.get("idem4").await.is_err());
    });
}

fn hypervisors(d: &Daemon) -> usize {
    d.hypervisor_pids().len()
}

#[test]
fn wait_returns_how_the_run_ended_after_kill_9_and_after_the_ladder() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    block_on(async {
        let c = &d.client;
        let info = c.up(&fake_spec(&d, "k"), WaitFor::Running, 30).await.expect("up");
        let pid = info.pid.expect("pid");
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_exit("k", 60).await })
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
        let end = waiter.await.expect("join").expect("wait");
        assert_eq!(end.cause, EndCause::Crashed, "{end:?}");
        assert_eq!(end.exit.and_then(|e| e.signal), Some(9), "{end:?}");
        assert_eq!(end.generation, c.get("k").await.expect("get").generation);

        // Waiting on a VM that already ended answers at once, the same way.
        assert_eq!(c.wait_exit("k", 5).await.expect("again").cause, EndCause::Crashed);

        // The ladder: the answer names the rung that ended the VM.
        let d2 = fake_spec(&d, "l");
        c.up(&d2, WaitFor::Running, 30).await.expect("up l");
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_exit("l", 60).await })
        };
        let out = c.stop("l", 30).await.expect("stop");
        let end = waiter.await.expect("join").expect("wait");
        assert_eq!((end.cause, end.rung), (EndCause::Stopped, out.rung), "{end:?}");
        assert!(end.rung.is_some());

        // A running VM and a short timeout: 504; an unknown VM: 404; a bad `until`: 400.
        c.up(&fake_spec(&d, "r"), WaitFor::Running, 30).await.expect("up r");
        assert_eq!(c.wait_exit("r", 0).await.expect_err("timeout").kind(), Some("timeout"));
        assert_eq!(c.wait_exit("nope", 1).await.expect_err("unknown").kind(), Some("not_found"));
    });
}

#[test]
fn wait_says_power_off_when_the_real_guest_powers_itself_off() {
    let d = Daemon::start();
    block_on(async {
        let c = &d.client;
        let info = c.up(&guest_spec("off", "paddock.exit=1"), WaitFor::Running, 120).await.expect("up");
        let end = c.wait_exit("off", 180).await.expect("wait");
        assert_eq!(end.cause, EndCause::PowerOff, "{end:?}");
        assert_eq!(end.rung, None);
        assert!(end.generation >= info.generation);
        let now = c.get("off").await.expect("get");
        assert!(matches!(now.phase, VmPhase::Stopped { rung: None, .. }), "{:?}", now.phase);
    });
}

#[test]
fn host_describes_versions_virtualisation_resources_and_reserved_memory() {
    let d = Daemon::start_with(&["--qemu-binary", "qemu-system-x86_64", "--cloud-hypervisor-binary", "/nonexistent/cloud-hypervisor"], &[]);
    block_on(async {
        let c = &d.client;
        let h = c.host().await.expect("host");
        assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
        let qemu = h.backends.iter().find(|b| b.name == "qemu").expect("qemu listed");
        assert!(qemu.version.as_deref().is_some_and(|v| v.starts_with("QEMU emulator version")), "{qemu:?}");
        let ch = h.backends.iter().find(|b| b.name == "cloud-hypervisor").expect("ch listed");
        assert!(ch.version.is_none() && ch.error.as_deref().is_some_and(|e| e.contains("/nonexistent/cloud-hypervisor")), "{ch:?}");
        assert!(!h.hardware_virtualization.reason.is_empty());
        assert_eq!(h.cpus, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        assert!(h.memory_total_bytes > 0 && h.memory_available_bytes <= h.memory_total_bytes);
        assert_eq!((h.vms.total, h.vms.active, h.vms.reserved_memory_bytes), (0, 0, 0));
    });
    drop(d);
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    block_on(async {
        let c = &d.client;
        c.up(&fake_spec(&d, "m1"), WaitFor::Running, 30).await.expect("up");
        let mut big = fake_spec(&d, "m2");
        big.memory_mib = 96;
        c.up(&big, WaitFor::Running, 30).await.expect("up");
        let h = c.host().await.expect("host");
        assert_eq!((h.vms.total, h.vms.active, h.vms.reserved_memory_bytes), (2, 2, (64 + 96) << 20));
        let out = c.stop("m2", 5).await.expect("stop");
        assert!(out.rung.is_some_and(|r| r >= Rung::Acpi));
        let h = c.host().await.expect("host");
        assert_eq!((h.vms.total, h.vms.active, h.vms.reserved_memory_bytes), (2, 1, 64 << 20));
    });
}

#[test]
fn console_reads_resume_from_a_byte_offset() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    block_on(async {
        let c = &d.client;
        let info = c.up(&fake_spec(&d, "co"), WaitFor::Ready, 30).await.expect("up");
        let (all, next, restarted) = c.console_from("co", 0).await.expect("from 0");
        let text = String::from_utf8_lossy(&all).into_owned();
        assert!(text.contains(READY_MARKER) && !restarted, "{text:?}");
        assert_eq!(next, all.len() as u64);
        assert_eq!(next, std::fs::metadata(&info.console_log).expect("log").len());

        // From the middle: exactly the rest; from the end: nothing, same next.
        let mid = next / 2;
        let (rest, n2, _) = c.console_from("co", mid).await.expect("from the middle");
        assert_eq!((&rest[..], n2), (&all[mid as usize..], next));
        let (none, n3, restarted) = c.console_from("co", next).await.expect("from the end");
        assert_eq!((none.len(), n3, restarted), (0, next, false));

        // Past the end (the file was rotated under the reader): from 0, said so.
        let (again, n4, restarted) = c.console_from("co", next + 1000).await.expect("past the end");
        assert_eq!((&again[..], n4, restarted), (&all[..], next, true));

        let e = c.stream("/v1/vms/co/console?offset=0&follow=true").await.expect_err("offset with follow");
        assert_eq!(field_of(&e), "offset");
        assert_eq!(c.console_from("nope", 0).await.expect_err("unknown").kind(), Some("not_found"));
    });
}

/// A scheduler that sees a VM gone (GET answers 404, or the listing lacks
/// it) may reuse its name at once: the name is freed in the same step that
/// takes the VM off the board. A second client removes the VM while the
/// first polls (GET or the listing, seeded) and re-creates the name the
/// moment it disappears.
#[test]
fn a_name_no_longer_listed_is_free_at_once() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let seed = rand_u32();
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(u64::from(seed));
    block_on(async {
        let c = &d.client;
        for round in 0..20 {
            c.up(&fake_spec(&d, "reuse"), WaitFor::Running, 30).await.expect("up");
            let by_list = rng.bool();
            let remover = tokio::spawn({
                let c = c.clone();
                async move { c.remove("reuse", true).await }
            });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let listed = match by_list {
                    true => c.list().await.expect("ls").iter().any(|v| v.name == "reuse"),
                    false => c.get("reuse").await.is_ok(),
                };
                if !listed {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "round {round}: the VM was never removed");
                tokio::task::yield_now().await;
            }
            c.up(&fake_spec(&d, "reuse"), WaitFor::Running, 30)
                .await
                .unwrap_or_else(|e| panic!("round {round} (seed {seed}, by_list {by_list}): the name was not free once the VM was gone: {e}"));
            remover.await.expect("join").expect("rm");
            c.remove("reuse", true).await.expect("rm again");
        }
    });
}
