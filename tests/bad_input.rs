//! Bad input: each case gets a clear error naming the field, the daemon
//! keeps serving, and nothing is left in the state or run directories.

mod common;

use common::*;
use paddock::WaitFor;
use std::time::Instant;

/// After a refused request: the daemon answers, and no trace of `vm`
/// remains in the database, the run directory or the process table.
async fn assert_nothing_left(d: &Daemon, vm: &str) {
    d.client.health().await.expect("daemon stopped serving");
    assert!(d.client.list().await.expect("list").iter().all(|v| v.name != vm));
    assert!(!d.db_vm_names().contains(&vm.to_string()), "row left in the database");
    assert!(!d.run_dir_entries().contains(&vm.to_string()), "directory left in the run dir");
    assert!(d.hypervisor_pids().is_empty(), "hypervisor process left: {:?}", d.hypervisor_pids());
}

async fn up_json(d: &Daemon, body: serde_json::Value) -> paddock::client::ClientError {
    d.client
        .up_raw(serde_json::to_vec(&body).expect("json"), WaitFor::Running, 60)
        .await
        .expect_err("the daemon accepted a bad spec")
}

fn base(name: &str) -> serde_json::Value {
    let g = guest();
    serde_json::json!({
        "name": name,
        "memory_mib": 128,
        "boot": { "kernel": g.kernel, "initrd": g.initrd, "cmdline": "console=ttyS0 panic=-1 quiet" },
    })
}

fn field(e: &paddock::client::ClientError) -> Option<String> {
    match e {
        paddock::client::ClientError::Api { detail, .. } => detail.field.clone(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_with_the_field_named() {
    let d = Daemon::start();

    let mut bad_name = base("Bad_Name");
    let e = up_json(&d, bad_name.take()).await;
    assert_eq!((e.kind(), field(&e).as_deref()), (Some("invalid_spec"), Some("name")), "{e}");
    assert!(e.to_string().contains("a-z"), "the error should say what a name may contain: {e}");

    let mut unknown = base("unknown");
    unknown["colour"] = "red".into();
    let e = up_json(&d, unknown).await;
    assert_eq!(e.kind(), Some("invalid_spec"));
    assert!(e.to_string().contains("colour"), "{e}");
    assert_nothing_left(&d, "unknown").await;

    let mut nested = base("nested");
    nested["boot"]["kernal"] = "/x".into();
    let e = up_json(&d, nested).await;
    assert!(e.to_string().contains("kernal") && field(&e).is_some_and(|f| f.starts_with("boot")), "{e}");

    let mut missing = base("nokernel");
    missing["boot"]["kernel"] = "/nonexistent/vmlinuz".into();
    let e = up_json(&d, missing).await;
    assert_eq!((e.kind(), field(&e).as_deref()), (Some("invalid_spec"), Some("boot.kernel")), "{e}");
    assert!(e.to_string().contains("/nonexistent/vmlinuz"), "{e}");
    assert_nothing_left(&d, "nokernel").await;

    let mut zero = base("zero");
    zero["memory_mib"] = 0.into();
    let e = up_json(&d, zero).await;
    assert_eq!((e.kind(), field(&e).as_deref()), (Some("invalid_spec"), Some("memory_mib")), "{e}");
    assert_nothing_left(&d, "zero").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_name_is_a_conflict_and_the_first_vm_is_untouched() {
    let d = Daemon::start();
    let first = d.client.up_raw(serde_json::to_vec(&base("dup")).expect("json"), WaitFor::Running, 120).await.expect("up");
    let e = up_json(&d, base("dup")).await;
    assert_eq!((e.kind(), field(&e).as_deref()), (Some("conflict"), Some("name")), "{e}");
    let now = d.client.get("dup").await.expect("get");
    assert_eq!((now.pid, now.generation >= first.generation), (first.pid, true));
    assert!(process_exists(first.pid.expect("pid")));
    d.client.remove("dup", true).await.expect("rm");
    assert_nothing_left(&d, "dup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_that_exits_at_once_reports_its_stderr() {
    let d = Daemon::start();
    let garbage = d.dir.path().join("not-a-kernel");
    std::fs::write(&garbage, b"this is not a kernel").expect("write");
    let mut spec = base("badkernel");
    spec["boot"]["kernel"] = garbage.to_string_lossy().into_owned().into();
    spec["boot"].as_object_mut().expect("boot").remove("initrd");
    let e = up_json(&d, spec).await;
    assert_eq!(e.kind(), Some("start_failed"), "{e}");
    // QEMU's own words reach the user.
    assert!(e.to_string().contains("invalid kernel header"), "{e}");
    assert!(e.to_string().contains("exited with code 1"), "{e}");
    assert_nothing_left(&d, "badkernel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qmp_socket_that_never_answers_times_out_and_rolls_back() {
    let fake = env!("CARGO_BIN_EXE_paddock-fake-qemu");
    let d = Daemon::start_with(&["--qemu-binary", fake, "--control-timeout-ms", "1000"], &[("PADDOCK_FAKE_QEMU", "silent")]);
    let t0 = Instant::now();
    let e = up_json(&d, base("mute")).await;
    let took = t0.elapsed();
    assert_eq!(e.kind(), Some("start_failed"), "{e}");
    assert!(e.to_string().contains("QMP greeting got no answer within 1000 ms"), "{e}");
    assert!(took.as_secs() < 10, "a silent socket held up for {took:?}");
    assert_nothing_left(&d, "mute").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_qemu_binary_is_a_clear_start_error() {
    let d = Daemon::start_with(&["--qemu-binary", "/nonexistent/qemu-system-x86_64"], &[]);
    let e = up_json(&d, base("nobin")).await;
    assert_eq!(e.kind(), Some("start_failed"), "{e}");
    assert!(e.to_string().contains("/nonexistent/qemu-system-x86_64"), "{e}");
    assert_nothing_left(&d, "nobin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vm_is_not_found() {
    let d = Daemon::start();
    for e in [
        d.client.stop("ghost", 1).await.err(),
        d.client.get("ghost").await.err(),
        d.client.remove("ghost", false).await.err(),
    ] {
        assert_eq!(e.expect("must fail").kind(), Some("not_found"));
    }
}
