//! vsock on QEMU without /dev/vhost-vsock: a vhost-user device process
//! (vhost-device-vsock) per VM, real guests under TCG, reached through the
//! CLI (`paddock vsock NAME PORT`), the API upgrade and the Runtime. The
//! device is supervised with its VM: adopted after a daemon kill -9,
//! stopped as an orphan when its VM died meanwhile, gone after `stop`.

mod common;

use common::*;
use paddock::{LauncherSpec, ServiceDiskSpec, ServiceFile, VmSpec, WaitFor};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PORT: u32 = 5000;

/// The test guest running the example's service from its service disk
/// (the only disk, so /dev/vda): it listens on vsock PORT.
fn vsock_spec(name: &str) -> VmSpec {
    let mut s = guest_spec(name, "paddock.run_disk=/dev/vda");
    s.ready_pattern = Some("SERVICE-READY".into());
    s.vsock = true;
    s.service_disk = Some(ServiceDiskSpec {
        files: vec![ServiceFile { path: "bin/service".into(), source: Some(service::guest_service().to_path_buf()), content: None }],
        launcher: Some(LauncherSpec {
            program: "bin/service".into(),
            args: vec!["one arg".into()],
            env: [("SERVICE_VSOCK_PORT".to_string(), PORT.to_string())].into(),
            workdir: None,
        }),
        ..Default::default()
    });
    s
}

/// `paddock vsock NAME PORT` with `input` on stdin, kept open until
/// `answers` lines came back (the command then lingers and exits):
/// (exit code, stdout, stderr). Every wait has a deadline.
fn cli_vsock(d: &Daemon, name: &str, port: u32, input: &str, answers: usize) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("--socket")
        .arg(d.client.socket())
        .args(["vsock", name, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run paddock vsock");
    let mut stdin = child.stdin.take().expect("stdin");
    // It may already have exited with an error: then the write fails.
    let _ = stdin.write_all(input.as_bytes());
    let (stdout, mut stderr) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = String::new();
    for _ in 0..answers {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => out.push_str(&format!("{line}\n")),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no answer over vsock within 60 s; got {out:?}"),
        }
    }
    drop(stdin);
    let (wtx, wrx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = wtx.send(child.wait());
    });
    let status = wrx.recv_timeout(Duration::from_secs(30)).expect("paddock vsock did not exit after its input ended").expect("wait");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        out.push_str(&format!("{line}\n"));
    }
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    (status.code().unwrap_or(-1), out, err)
}

/// The vsock device processes of VM `name` (argv[0] is their marker).
fn device_pids(name: &str) -> Vec<i32> {
    pids_mentioning(&format!("paddock-vsock:{name} "))
}

/// Waits until `needle` appeared `n` times on the console (all runs).
async fn wait_console_count(client: &paddock::client::Client, vm: &str, needle: &str, n: usize, timeout: Duration) {
    use http_body_util::BodyExt as _;
    let deadline = Instant::now() + timeout;
    let mut body = client.console(vm, true).await.expect("console");
    let mut seen = Vec::new();
    while String::from_utf8_lossy(&seen).matches(needle).count() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Ok(Some(Ok(frame))) => seen.extend_from_slice(frame.data_ref().map(|d| d.as_ref()).unwrap_or_default()),
            _ => panic!("{needle:?} not {n} times on the console within {timeout:?}; saw:\n{}", String::from_utf8_lossy(&seen)),
        }
    }
}

fn round_trip(d: &Daemon, name: &str) {
    let (code, out, err) = cli_vsock(d, name, PORT, "echo hello over vsock\nargs\n", 2);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "\"hello over vsock\"\n[\"one arg\"]\n", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsock_round_trip_survives_a_daemon_restart_and_the_device_ends_with_its_vm() {
    let mut d = Daemon::start();
    let info = d.client.up(&vsock_spec("vs1"), WaitFor::Ready, 180).await.expect("up");
    let v = info.vsock.expect("typed vsock info");
    assert!(v.cid >= 3);
    assert_eq!(v.socket.as_deref(), Some(d.run_dir().join("vs1/vsock.sock").as_path()));
    round_trip(&d, "vs1");
    // Guest -> host: the guest dials host port 6000, which arrives on
    // `vsock.sock_6000` next to the hybrid socket.
    let listener = std::os::unix::net::UnixListener::bind(d.run_dir().join("vs1/vsock.sock_6000")).expect("bind vsock.sock_6000");
    // The device runs as the VM's identity (the owner of its run dir):
    // a host listener is for that VM only when that identity may connect.
    {
        use std::os::unix::fs::MetadataExt as _;
        let owner = std::fs::metadata(d.run_dir().join("vs1")).expect("stat run dir");
        std::os::unix::fs::chown(d.run_dir().join("vs1/vsock.sock_6000"), Some(owner.uid()), Some(owner.gid())).expect("chown listener");
    }
    let (code, out, err) = cli_vsock(&d, "vs1", PORT, "dial 6000 hello from the guest\n", 1);
    assert_eq!((code, out.as_str()), (0, "\"ok\"\n"), "{err}");
    listener.set_nonblocking(false).expect("blocking");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let got = listener.accept().map(|(s, _)| {
            let mut line = String::new();
            let _ = BufReader::new(s).read_line(&mut line);
            line
        });
        let _ = tx.send(got);
    });
    let got = rx.recv_timeout(Duration::from_secs(30)).expect("the guest's connection in time").expect("accept");
    assert_eq!(got, "hello from the guest\n");
    let device = device_pids("vs1");
    assert_eq!(device.len(), 1, "one device process per VM");

    // A port nobody listens on is an error that says so.
    let (code, _, err) = cli_vsock(&d, "vs1", PORT + 1, "", 0);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("did not accept") && err.contains(&(PORT + 1).to_string()) && err.contains("\"vs1\""), "{err}");

    // The daemon dies; the VM and its device keep running and are adopted.
    d.kill9();
    d.spawn();
    let again = d.client.get("vs1").await.expect("adopted");
    assert_eq!(again.pid, info.pid, "the same QEMU was adopted");
    assert_eq!(device_pids("vs1"), device, "the device was adopted, not replaced or stopped");
    assert_eq!(again.vsock.map(|v| v.cid), Some(v.cid), "the guest CID is stable");
    round_trip(&d, "vs1");

    // Stopping the VM ends its device.
    let outcome = d.client.stop("vs1", 30).await.expect("stop");
    assert_eq!(outcome.rung, Some(paddock::Rung::Acpi));
    assert!(!process_exists(device[0]), "the device outlived its VM");
    let (code, _, err) = cli_vsock(&d, "vs1", PORT, "", 0);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("not running"), "{err}");

    // Started again: a new device, the same CID. (The readiness pattern
    // may match the first run's line, still in the appended console log:
    // wait for this run's own.)
    let info = d.client.start("vs1", WaitFor::Running, 180).await.expect("start");
    assert_eq!(info.vsock.map(|v| v.cid), Some(v.cid));
    wait_console_count(&d.client, "vs1", "SERVICE-READY", 2, Duration::from_secs(180)).await;
    round_trip(&d, "vs1");
    d.client.remove("vs1", true).await.expect("rm");
    assert!(device_pids("vs1").is_empty(), "device left after rm --force");
    assert!(d.hypervisor_pids().is_empty(), "processes left: {:?}", d.hypervisor_pids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_vm_died_while_the_daemon_was_down_is_stopped_as_an_orphan() {
    let mut d = Daemon::start();
    let info = d.client.up(&vsock_spec("vs2"), WaitFor::Ready, 180).await.expect("up");
    let device = device_pids("vs2");
    assert_eq!(device.len(), 1);
    d.kill9();
    let qemu = info.pid.expect("pid");
    // SAFETY: kill(2) of the QEMU we started, with SIGKILL.
    unsafe { libc::kill(qemu, libc::SIGKILL) };
    // The daemon answers only after recovery (orphans included) is done.
    d.spawn();
    assert!(!process_exists(device[0]), "the orphaned device was not stopped");
    d.client.remove("vs2", true).await.expect("rm");
    assert!(d.hypervisor_pids().is_empty(), "processes left: {:?}", d.hypervisor_pids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_vsock_device_a_vsock_vm_is_refused_and_nothing_is_created() {
    let d = Daemon::start_with(&["--vsock-device-binary", "/nonexistent/vhost-device-vsock"], &[]);
    let err = d.client.up(&vsock_spec("vs3"), WaitFor::Running, 60).await.expect_err("refused");
    assert_eq!(err.kind(), Some("backend_unavailable"), "{err}");
    let text = err.to_string();
    assert!(text.contains("cargo install vhost-device-vsock") && text.contains("vsock = false"), "{text}");
    assert!(d.db_vm_names().is_empty());
    assert!(d.run_dir_entries().is_empty(), "{:?}", d.run_dir_entries());
    assert!(!d.state_dir().join("vms/vs3").exists());
    // The daemon is still fine.
    d.client.health().await.expect("health");
}
