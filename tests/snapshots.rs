//! Snapshots with real QEMU (TCG) and the busybox test guest: a snapshot
//! of a ready guest restores as a new VM that answers at once (no boot on
//! its console), side by side with the original; `boot.snapshot` in a
//! spec; a daemon killed in the middle of a snapshot or a restore leaves
//! the VM running and the snapshot absent or whole.

mod common;

use common::*;
use paddock::{AfterSnapshot, EventKind, VmPhase, WaitFor};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);

async fn up_ready(d: &Daemon, name: &str) -> paddock::VmInfo {
    d.client.up(&guest_spec(name, ""), WaitFor::Ready, BOOT.as_secs()).await.unwrap_or_else(|e| panic!("up {name}: {e}\n{}", d.log()))
}

/// The last line a shell command printed (the console echoes the command).
async fn run_in(d: &Daemon, vm: &str, cmd: &str) -> String {
    let (out, code) = guest_run(&d.client, vm, cmd, Duration::from_secs(60)).await;
    assert_eq!(code, 0, "{vm}: `{cmd}` failed:\n{out}");
    out.trim().lines().last().unwrap_or("").trim().to_string()
}

fn console_log(d: &Daemon, vm: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(d.run_dir().join(vm).join("console.log")).unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_as_a_new_vm_that_answers_at_once_beside_the_original() {
    let d = Daemon::start();
    let since = last_seq(&d.client).await;
    let src = up_ready(&d, "src").await;
    // Something only the source's memory knows, to find in the clone.
    assert_eq!(run_in(&d, "src", "export SECRET=from-the-source; echo ok").await, "ok");

    let snap = d.client.snapshot("src", Some("s1"), AfterSnapshot::Resume).await.expect("snapshot");
    assert_eq!((snap.name.as_str(), snap.vm.as_str(), snap.ready), ("s1", "src", true));
    assert!(snap.bytes >= 1 << 20, "the memory file is far too small: {} bytes", snap.bytes);
    wait_event(&d.client, since, Duration::from_secs(10), |e| {
        e.vm == "src" && matches!(&e.kind, EventKind::SnapshotTaken { snapshot, bytes } if snapshot == "s1" && *bytes == snap.bytes)
    })
    .await;
    let listed = d.client.snapshots().await.expect("snapshot ls");
    assert_eq!(listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["s1"]);
    assert_eq!(d.client.get("src").await.expect("src").phase, VmPhase::Running, "the source runs on after its snapshot");

    let boot_log = console_log(&d, "src");
    assert!(boot_log.contains(READY_MARKER), "the source's console shows its boot");
    let clone = d.client.restore("s1", Some("clone"), WaitFor::Ready, 60).await.unwrap_or_else(|e| panic!("restore: {e}\n{}", d.log()));
    assert_eq!(clone.phase, VmPhase::Running);
    assert_eq!(clone.spec.boot.snapshot.as_deref(), Some("s1"));
    assert_ne!(clone.pid, src.pid);
    // The clone's shell is the source's: its environment came along, and
    // it answers without booting.
    assert_eq!(run_in(&d, "clone", "echo NEW-$((40+2)) $SECRET").await, "NEW-42 from-the-source");
    let clone_log = console_log(&d, "clone");
    assert!(!clone_log.contains(READY_MARKER) && !clone_log.contains("Linux version"), "the clone booted:\n{clone_log}");
    wait_event(&d.client, since, Duration::from_secs(10), |e| e.vm == "clone" && matches!(&e.kind, EventKind::Restored { snapshot } if snapshot == "s1")).await;

    // Both run, each its own process, and the source's shell is its own.
    assert_eq!(run_in(&d, "src", "echo still $SECRET").await, "still from-the-source");
    let running: Vec<_> = d.client.list().await.expect("ps").into_iter().filter(|v| v.phase == VmPhase::Running).map(|v| v.name).collect();
    assert_eq!(running.len(), 2, "{running:?}");

    // `boot.snapshot` in an operator's own spec: a service VM that starts
    // from the booted snapshot...
    let mut svc = guest_spec("svc", "");
    svc.boot.snapshot = Some("s1".into());
    d.client.up(&svc, WaitFor::Ready, 60).await.unwrap_or_else(|e| panic!("up svc: {e}\n{}", d.log()));
    assert_eq!(run_in(&d, "svc", "echo $SECRET").await, "from-the-source");
    // ...and one whose machine differs from the snapshot's: a cold boot,
    // said in an event.
    let mut cold = guest_spec("cold", "");
    cold.memory_mib = 160;
    cold.boot.snapshot = Some("s1".into());
    d.client.up(&cold, WaitFor::Ready, BOOT.as_secs()).await.unwrap_or_else(|e| panic!("up cold: {e}\n{}", d.log()));
    let skipped = wait_event(&d.client, since, Duration::from_secs(10), |e| e.vm == "cold" && matches!(&e.kind, EventKind::SnapshotSkipped { .. })).await;
    assert!(skipped.message.as_deref().unwrap_or("").contains("memory_mib"), "{skipped:?}");
    assert!(console_log(&d, "cold").contains(READY_MARKER), "the cold VM did not boot");
    assert_eq!(run_in(&d, "cold", "echo \"[$SECRET]\"").await, "[]");
    for vm in ["svc", "cold"] {
        d.client.remove(vm, true).await.expect("rm");
    }

    // In use: not removable while the clone starts from it.
    let err = d.client.snapshot_remove("s1").await.expect_err("rm of a snapshot in use");
    assert!(err.to_string().contains("clone"), "{err}");
    // Taken twice under one name: refused, the first kept.
    let err = d.client.snapshot("src", Some("s1"), AfterSnapshot::Resume).await.expect_err("same name twice");
    assert!(err.to_string().contains("already exists"), "{err}");
    // The clone is supervised like any VM: stop, rm; then the snapshot goes.
    d.client.remove("clone", true).await.expect("rm clone");
    d.client.snapshot_remove("s1").await.expect("snapshot rm");
    assert!(d.client.snapshots().await.expect("ls").is_empty());
    assert!(!d.state_dir().join("snapshots/s1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_requests_are_refused_with_the_field_and_leave_nothing() {
    let d = Daemon::start();
    let err = d.client.snapshot("nope", Some("s"), AfterSnapshot::Resume).await.expect_err("unknown VM");
    assert_eq!(err.kind(), Some("not_found"), "{err}");
    let err = d.client.snapshot("nope", Some("../x"), AfterSnapshot::Resume).await.expect_err("bad name");
    assert!(err.to_string().contains("as"), "{err}");
    let err = d.client.restore("missing", Some("c"), WaitFor::Running, 10).await.expect_err("unknown snapshot");
    assert_eq!(err.kind(), Some("not_found"), "{err}");
    let mut spec = guest_spec("bad", "");
    spec.boot.snapshot = Some("Bad/Name".into());
    let err = d.client.up(&spec, WaitFor::Running, 10).await.expect_err("bad boot.snapshot");
    assert!(err.to_string().contains("boot.snapshot"), "{err}");
    spec.boot.snapshot = Some("absent".into());
    let err = d.client.up(&spec, WaitFor::Running, 10).await.expect_err("absent boot.snapshot");
    assert!(err.to_string().contains("absent"), "{err}");
    assert!(d.client.list().await.expect("ps").is_empty(), "a refused up left a VM");
    assert!(d.db_vm_names().is_empty());
}

/// Restarts the daemon with `point` armed (or none).
fn restart_with(d: &mut Daemon, point: Option<&str>) {
    d.kill9();
    d.envs.retain(|(k, _)| k != "FAILPOINTS");
    if let Some(p) = point {
        d.envs.push(("FAILPOINTS".into(), format!("{p}=return")));
    }
    d.spawn();
}

async fn wait_running(d: &Daemon, vm: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let since = last_seq(&d.client).await;
    if d.client.get(vm).await.map(|i| i.phase == VmPhase::Running).unwrap_or(false) {
        return;
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    wait_event(&d.client, since, left, |e| is_phase(e, vm, |p| *p == VmPhase::Running)).await;
}

/// The daemon dies after the state is saved (the VM paused), before the
/// snapshot is renamed into place, and while a restore loads the state:
/// after a restart the VM runs (resumed), the snapshot is absent or whole,
/// nothing partial is left, and the same requests then succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_snapshot_or_restore_leaves_the_vm_running_and_no_half_snapshot() {
    let mut d = Daemon::start();
    up_ready(&d, "src").await;
    assert_eq!(run_in(&d, "src", "export MARK=kept; echo ok").await, "ok");
    for point in ["snapshot.after-save", "snapshot.before-rename"] {
        restart_with(&mut d, Some(point));
        let r = d.client.snapshot("src", Some("s1"), AfterSnapshot::Resume).await;
        assert!(r.is_err(), "{point}: the snapshot succeeded although the daemon died");
        assert!(!d.wait_exit().success(), "{point}: the daemon did not die");
        restart_with(&mut d, None);
        wait_running(&d, "src").await;
        assert_eq!(run_in(&d, "src", "echo $MARK").await, "kept", "{point}: the VM is not the same one, running");
        assert!(d.client.snapshots().await.expect("ls").is_empty(), "{point}: a half-written snapshot is listed");
        let left: Vec<_> = std::fs::read_dir(d.state_dir().join("snapshots")).expect("snapshots dir").flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{point}: left behind {left:?}");
    }
    d.client.snapshot("src", Some("s1"), AfterSnapshot::Resume).await.expect("snapshot after the crashes");

    restart_with(&mut d, Some("restore.before-load"));
    let r = d.client.restore("s1", Some("clone"), WaitFor::Running, 60).await;
    assert!(r.is_err(), "the restore succeeded although the daemon died");
    assert!(!d.wait_exit().success(), "the daemon did not die");
    restart_with(&mut d, None);
    // The unacknowledged restore is rolled back: no VM, no process.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while d.client.get("clone").await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the interrupted restore was not rolled back:\n{}", d.log());
        tokio::task::yield_now().await;
    }
    assert!(pids_mentioning("paddock-clone").is_empty(), "the interrupted restore's QEMU still runs");
    assert_eq!(d.client.snapshots().await.expect("ls").len(), 1, "the snapshot must survive a failed restore");
    d.client.restore("s1", Some("clone"), WaitFor::Ready, 60).await.expect("restore after the crash");
    assert_eq!(run_in(&d, "clone", "echo $MARK").await, "kept");
}

/// `shutdown --suspend-vms` snapshots a running VM and stops it; the next
/// daemon starts it from that snapshot: the same shell, no second boot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_suspend_vms_brings_the_vm_back_where_it_was() {
    let mut d = Daemon::start();
    up_ready(&d, "sus").await;
    assert_eq!(run_in(&d, "sus", "export KEPT=across-the-restart; echo ok").await, "ok");
    let r = d.client.shutdown_with(false, true, 5).await.expect("shutdown --suspend-vms");
    assert_eq!(r["suspended"]["sus"]["snapshot"].as_str(), Some("suspend-sus"), "{r}");
    assert!(d.wait_exit().success(), "the daemon did not exit cleanly");
    assert!(pids_mentioning("paddock-sus").is_empty(), "the suspended VM still runs");

    d.spawn();
    let info = d.client.get("sus").await.expect("get");
    assert_eq!(info.phase, VmPhase::Running, "the suspended VM did not come back: {info:?}\n{}", d.log());
    assert_eq!(run_in(&d, "sus", "echo $KEPT").await, "across-the-restart");
    assert_eq!(console_log(&d, "sus").matches(READY_MARKER).count(), 1, "the VM booted again");
    // Once: a stop and start later boots it cold.
    d.client.stop("sus", 0).await.expect("stop");
    d.client.start("sus", WaitFor::Ready, BOOT.as_secs()).await.expect("start");
    assert_eq!(run_in(&d, "sus", "echo \"[$KEPT]\"").await, "[]");
}

/// On TAP leases: a clone gets its own lease (address, TAP, MAC, rules)
/// beside its source. The guest inside still carries the source's address
/// (virtio-net's MAC and the guest's configuration are restored state), as
/// the README says, until it reboots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_on_a_tap_lease_gets_its_own_lease_beside_its_source() {
    let lab = NetLab::new();
    let d = Daemon::start_in(&lab.host, &[], &[]);
    let c = &d.client;
    let src = c.up(&tap_guest_spec("tsrc", "", &[], &[]), WaitFor::Ready, BOOT.as_secs()).await.expect("up tsrc");
    c.snapshot("tsrc", Some("tap-snap"), AfterSnapshot::Resume).await.expect("snapshot");
    let clone = c.restore("tap-snap", Some("tclone"), WaitFor::Ready, 60).await.unwrap_or_else(|e| panic!("restore: {e}\n{}", d.log()));
    let (a, b) = (src.network.clone().expect("source network"), clone.network.clone().expect("clone network"));
    assert_ne!(a.address, b.address, "the clone shares its source's lease");
    assert_ne!(a.tap, b.tap);
    assert_ne!(a.mac, b.mac);
    assert_eq!(lab.taps().len(), 2, "{:?}", lab.taps());
    let table = lab.table();
    for ip in [lease_ip(&src), lease_ip(&clone)] {
        assert!(table.contains(&ip), "no rules for {ip}:\n{table}");
    }
    // Both guests run, each its own shell; the clone's still has the
    // source's address inside.
    let src_ip = lease_ip(&src);
    assert!(run_in(&d, "tsrc", "ip -4 -o addr show | grep -c 'inet '").await.parse::<u32>().unwrap_or(0) >= 1);
    let inside = run_in(&d, "tclone", &format!("ip -4 -o addr show | grep -c ' {src_ip}/'")).await;
    assert_eq!(inside, "1", "the clone's guest address changed: the README must say how");
    c.remove("tclone", true).await.expect("rm clone");
    assert_eq!(lab.taps().len(), 1, "the clone's TAP was left");
}

fn paddock_cli(d: &Daemon, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paddock")).arg("--socket").arg(d.client.socket()).args(args).output().expect("run paddock");
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The command line, with a hypervisor that cannot save state (the fake
/// QEMU answers `migrate-set-parameters` with CommandNotFound): the failed
/// snapshot is a conflict naming the reason, the VM runs on, nothing is
/// left; unknown snapshots are "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_snapshot_commands_and_a_hypervisor_that_cannot_save() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    d.client.up(&fake_spec(&d, "fk"), WaitFor::Running, 30).await.expect("up");
    let (code, out) = paddock_cli(&d, &["snapshot", "ls"]);
    assert_eq!((code, out.lines().count()), (0, 1), "{out}");
    let (code, out) = paddock_cli(&d, &["snapshot", "fk", "--as", "s1"]);
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("snapshot failed") && out.contains("CommandNotFound"), "{out}");
    wait_running(&d, "fk").await;
    assert!(d.client.snapshots().await.expect("ls").is_empty());
    assert!(std::fs::read_dir(d.state_dir().join("snapshots")).expect("dir").next().is_none(), "a failed snapshot left files");
    let (code, out) = paddock_cli(&d, &["snapshot", "fk", "--as", "Bad/Name"]);
    assert_ne!(code, 0);
    assert!(out.contains("as:"), "{out}");
    assert_eq!(paddock_cli(&d, &["snapshot", "rm", "nope"]).0, 3);
    assert_eq!(paddock_cli(&d, &["restore", "nope", "--name", "x"]).0, 3);
    let (code, out) = paddock_cli(&d, &["snapshot"]);
    assert_ne!(code, 0);
    assert!(out.contains("snapshot NAME"), "{out}");

    // A writable disk outside the VM's directory cannot be captured.
    let disk = d.dir.path().join("shared.raw");
    std::fs::write(&disk, vec![0u8; 4096]).expect("disk");
    let mut spec = fake_spec(&d, "fkd");
    spec.disks = vec![serde_json::from_value(serde_json::json!({ "path": disk })).expect("disk spec")];
    d.client.up(&spec, WaitFor::Running, 30).await.expect("up fkd");
    let err = d.client.snapshot("fkd", Some("s2"), AfterSnapshot::Resume).await.expect_err("writable disk");
    assert_eq!(err.kind(), Some("conflict"), "{err}");
    assert!(err.to_string().contains("disks[0]"), "{err}");
    assert!(d.client.snapshots().await.expect("ls").is_empty());
}
