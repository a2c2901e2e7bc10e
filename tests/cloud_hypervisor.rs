//! Cloud Hypervisor under the same supervision as QEMU: lifecycle, every
//! rung of the shutdown ladder, crash handling, re-adoption, orphans, the
//! refusal on a host without hardware virtualisation, and every request
//! the backend sends checked against CH's API document.
//!
//! Runs against the fake (`paddock-fake-ch`) by default. With
//! CLOUD_HYPERVISOR_BIN=/path/to/cloud-hypervisor the tests that need no
//! fake behaviour run against that binary and the test guest instead
//! (which needs working hardware virtualisation); the fake-only ones then
//! say they were skipped, as does the real-binary test without it.

mod common;
#[path = "fake/schema.rs"]
mod schema;

use common::*;
use paddock::{EventKind, Rung, VmPhase, VmSpec, WaitFor};
use std::path::PathBuf;
use std::time::Duration;

const BOOT: u64 = 120;

fn real_binary() -> Option<PathBuf> {
    std::env::var_os("CLOUD_HYPERVISOR_BIN").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// A daemon driving CH (the real one if asked, else the fake with
/// `flags`), and the fake's request log.
struct Ch {
    d: Daemon,
    log: PathBuf,
    _logdir: tempfile::TempDir,
    real: bool,
}

impl Ch {
    fn start(flags: &str) -> Ch {
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join("fake-ch.log");
        let d = match real_binary() {
            Some(bin) => Daemon::start_with(&["--cloud-hypervisor-binary", &bin.to_string_lossy()], &[]),
            None => Daemon::start_with(
                &["--cloud-hypervisor-binary", fake_ch(), "--control-timeout-ms", "1000"],
                &[("PADDOCK_FAKE_CH", flags), ("PADDOCK_FAKE_CH_LOG", &log.to_string_lossy())],
            ),
        };
        Ch { d, log, _logdir: logdir, real: real_binary().is_some() }
    }

    /// A fake-only test: None (and a note) when a real binary is in use.
    fn fake_only(test: &str, flags: &str) -> Option<Ch> {
        if real_binary().is_some() {
            println!("{test}: skipped: needs the fake's fault modes, CLOUD_HYPERVISOR_BIN is set");
            return None;
        }
        Some(Ch::start(flags))
    }

    fn spec(&self, name: &str) -> VmSpec {
        let mut s = if self.real { guest_spec(name, "") } else { fake_spec(&self.d, name) };
        // CH boots an uncompressed vmlinux (PVH); a bzImage only in some
        // releases. PADDOCK_CH_KERNEL points at one it can boot.
        if let (true, Some(k)) = (self.real, std::env::var_os("PADDOCK_CH_KERNEL")) {
            s.boot.kernel = Some(PathBuf::from(k));
        }
        s.backend = paddock::spec::BackendKind::CloudHypervisor;
        s.accel = paddock::spec::Accel::Kvm;
        s
    }

    /// The fake's log: one `METHOD endpoint status` line per request.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(String::from).collect()
    }

    /// No request the backend sent broke the API document.
    fn assert_no_violation(&self) {
        let bad: Vec<String> = self.requests().into_iter().filter(|l| l.starts_with("VIOLATION") || l.starts_with("HANG vm")).collect();
        assert!(bad.is_empty(), "requests that break the CH API document: {bad:?}");
    }
}

fn argv0(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    String::from_utf8_lossy(raw.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_up_ready_pause_resume_then_stop_on_the_acpi_rung() {
    let ch = Ch::start("");
    let c = &ch.d.client;
    let info = c.up(&ch.spec("life"), WaitFor::Ready, BOOT).await.expect("up");
    assert!(info.ready, "{info:?}");
    assert_eq!((info.phase.clone(), info.backend.as_str(), info.accel.as_deref()), (VmPhase::Running, "cloud-hypervisor", Some("kvm")));
    let pid = info.pid.expect("pid");
    assert_eq!(argv0(pid), "paddock-life", "the marker is the process name");
    wait_console(c, "life", READY_MARKER, Duration::from_secs(5)).await;

    assert_eq!(c.pause("life").await.expect("pause").phase, VmPhase::Paused);
    assert_eq!(c.resume("life").await.expect("resume").phase, VmPhase::Running);
    let out = c.stop("life", 30).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Acpi), "{out:?}");
    assert!(!process_exists(pid));
    assert!(matches!(c.get("life").await.expect("get").phase, VmPhase::Stopped { .. }));

    if !ch.real {
        let calls: Vec<String> = ch.requests().into_iter().filter(|l| !l.starts_with("VIOLATION")).collect();
        println!("requests: {calls:?}");
        let want = [
            "GET vmm.ping 200",
            "GET vm.info 404",
            "PUT vm.create 204",
            "PUT vm.boot 204",
            "GET vm.info 200",
            "PUT vm.pause 204",
            "PUT vm.resume 204",
            "PUT vm.power-button 204",
        ];
        assert_eq!(calls, want);
        ch.assert_no_violation();
    }
    // Boots again, then `rm` leaves nothing.
    let again = c.start("life", WaitFor::Ready, BOOT).await.expect("start again");
    assert_ne!(again.pid, Some(pid));
    c.remove("life", true).await.expect("rm");
    assert!(ch.d.run_dir_entries().is_empty() && ch.d.db_vm_names().is_empty() && ch.d.hypervisor_pids().is_empty());
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_power_button_ends_on_the_quit_rung() {
    let Some(ch) = Ch::fake_only("ignored_power_button", "ignore-power-button") else { return };
    let pid = ch.d.client.up(&ch.spec("deaf"), WaitFor::Ready, 30).await.expect("up").pid.expect("pid");
    let out = ch.d.client.stop("deaf", 1).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Quit), "{out:?}");
    assert!(!process_exists(pid));
    let calls = ch.requests();
    assert!(calls.iter().any(|l| l == "PUT vm.shutdown 204") && calls.iter().any(|l| l == "PUT vmm.shutdown 204"), "{calls:?}");
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_api_ends_on_the_sigterm_rung() {
    let Some(ch) = Ch::fake_only("hung_api", "hang") else { return };
    let pid = ch.d.client.up(&ch.spec("hung"), WaitFor::Ready, 30).await.expect("up").pid.expect("pid");
    let out = ch.d.client.stop("hung", 1).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Term), "{out:?}");
    assert!(!process_exists(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_api_ignoring_sigterm_ends_on_the_sigkill_rung() {
    let Some(ch) = Ch::fake_only("hung_api_ignoring_sigterm", "hang,ignore-term") else { return };
    let pid = ch.d.client.up(&ch.spec("stubborn"), WaitFor::Ready, 30).await.expect("up").pid.expect("pid");
    let out = ch.d.client.stop("stubborn", 1).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Kill), "{out:?}");
    assert!(!process_exists(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_vm_is_resumed_before_it_is_shut_down() {
    // Shutting down a paused VM hangs released CH (#816/#817); the fake
    // does the same, so a quit that forgot to resume would escalate.
    let Some(ch) = Ch::fake_only("paused_vm_quit", "") else { return };
    ch.d.client.up(&ch.spec("frozen"), WaitFor::Ready, 30).await.expect("up");
    ch.d.client.pause("frozen").await.expect("pause");
    let out = ch.d.client.stop("frozen", 30).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Quit), "a paused VM skips ACPI and must end on quit: {out:?}");
    let calls = ch.requests();
    let resume = calls.iter().rposition(|l| l == "PUT vm.resume 204").expect("resumed");
    let shutdown = calls.iter().position(|l| l == "PUT vm.shutdown 204").expect("shut down");
    assert!(resume < shutdown, "{calls:?}");
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmm_exiting_before_its_reply_is_a_successful_quit() {
    let Some(ch) = Ch::fake_only("vmm_exit_before_reply", "ignore-power-button,no-reply-on-shutdown") else { return };
    ch.d.client.up(&ch.spec("abrupt"), WaitFor::Ready, 30).await.expect("up");
    let out = ch.d.client.stop("abrupt", 1).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Quit), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_kill_9_then_restart_readopts_the_same_process() {
    // (With a real binary the fake's ticker flag is simply not used.)
    let mut ch = Ch::start("ticker");
    let pid = ch.d.client.up(&ch.spec("keep"), WaitFor::Ready, BOOT).await.expect("up").pid.expect("pid");
    ch.d.kill9();
    assert!(process_exists(pid), "the VM died with its supervisor");
    ch.d.spawn();
    let v = ch.d.client.get("keep").await.expect("get");
    assert_eq!((v.phase, v.pid), (VmPhase::Running, Some(pid)), "not re-adopted");
    if !ch.real {
        // Written by CH (the fake) itself while nobody watched: no gap.
        let log = wait_console(&ch.d.client, "keep", "tick 20\n", Duration::from_secs(10)).await;
        let ticks: Vec<u64> = log.lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect();
        assert_eq!(ticks, (1..=ticks.len() as u64).collect::<Vec<_>>(), "console gap across the daemon's downtime");
        let creates = ch.requests().iter().filter(|l| l.starts_with("PUT vm.create")).count();
        assert_eq!(creates, 1, "adoption must not create the VM again");
    }
    // Control is re-connected: ACPI works on the adopted VM.
    let out = ch.d.client.stop("keep", 30).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Acpi), "{out:?}");
    assert!(!process_exists(pid));
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsock_gets_a_per_vm_cid() {
    let Some(ch) = Ch::fake_only("vsock", "") else { return };
    let mut spec = ch.spec("sox");
    spec.vsock = true;
    ch.d.client.up(&spec, WaitFor::Running, 30).await.expect("up");
    // Ask CH itself, through the backend's own typed client.
    let api = paddock_actors::cloud_hypervisor::client::ApiClient::new(ch.d.run_dir().join("sox/control.sock"), Duration::from_secs(5));
    let info = api.info().await.expect("vm.info").expect("created");
    let cid = paddock_actors::cloud_hypervisor::backend::vsock_cid("sox");
    assert_eq!(info.config["vsock"]["cid"], serde_json::json!(cid), "{}", info.config);
    assert!(cid >= 3);
    // The same host-side interface as QEMU's: the API's vsock stream.
    let mut stream = ch.d.client.vsock("sox", 1234).await.expect("vsock stream");
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream.write_all(b"ping over hybrid vsock\n").await.expect("write");
        let mut buf = [0u8; 23];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf)).await.expect("echo in time").expect("read");
        assert_eq!(&buf, b"ping over hybrid vsock\n");
    }
    drop(stream);
    ch.d.client.stop("sox", 30).await.expect("stop");
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_kill_9_is_a_crash() {
    let ch = Ch::start("");
    let since = last_seq(&ch.d.client).await;
    let pid = ch.d.client.up(&ch.spec("victim"), WaitFor::Ready, BOOT).await.expect("up").pid.expect("pid");
    // SAFETY: kill(2) on the hypervisor this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let ev = wait_event(&ch.d.client, since, Duration::from_secs(10), |e| is_phase(e, "victim", |p| matches!(p, VmPhase::Crashed { .. }))).await;
    println!("{:?}", ev.kind);
    assert_eq!(ch.d.client.get("victim").await.expect("get").pid, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_is_restarted_with_backoff_then_failed() {
    let Some(ch) = Ch::fake_only("crash_loop", "crash-after-ms=200") else { return };
    let mut spec = ch.spec("loopy");
    spec.restart.policy = paddock::spec::RestartPolicy::OnFailure;
    spec.restart.max_restarts = 2;
    spec.restart.backoff_base_ms = 50;
    spec.restart.backoff_cap_ms = 200;
    let since = last_seq(&ch.d.client).await;
    ch.d.client.up(&spec, WaitFor::Running, 30).await.expect("up");
    let mut crashes = 0;
    let mut restarts = Vec::new();
    let failed = wait_event(&ch.d.client, since, Duration::from_secs(30), |e| {
        if e.vm != "loopy" {
            return false;
        }
        match &e.kind {
            EventKind::Phase { phase: VmPhase::Crashed { .. } } => crashes += 1,
            EventKind::RestartScheduled { attempt, .. } => restarts.push(*attempt),
            _ => {}
        }
        matches!(&e.kind, EventKind::Phase { phase: VmPhase::Failed { .. } })
    })
    .await;
    assert_eq!(restarts, vec![1, 2]);
    assert_eq!(crashes, 3, "two restarts, then the third crash gives up");
    let EventKind::Phase { phase: VmPhase::Failed { reason } } = failed.kind else { unreachable!() };
    assert!(reason.contains("max_restarts"), "{reason}");
    assert!(ch.d.hypervisor_pids().is_empty());
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecorded_cloud_hypervisor_is_an_orphan_and_is_stopped() {
    let mut ch = Ch::start("");
    let pid = ch.d.client.up(&ch.spec("stray"), WaitFor::Ready, BOOT).await.expect("up").pid.expect("pid");
    ch.d.kill9();
    std::fs::remove_dir_all(ch.d.state_dir()).expect("rm state");
    ch.d.spawn();
    assert!(!process_exists(pid), "orphan still running after READY");
    let body = ch.d.client.events(0, false).await.expect("events");
    let bytes = http_body_util::BodyExt::collect(body).await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("orphan_stopped") && text.contains(&pid.to_string()) && text.contains("\"quit\""), "{text}");
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_api_socket_is_removed_but_a_live_one_is_not() {
    let Some(ch) = Ch::fake_only("stale_socket", "") else { return };
    let c = &ch.d.client;
    c.up(&ch.spec("sock"), WaitFor::Ready, 30).await.expect("up");
    c.stop("sock", 30).await.expect("stop");
    let sock = ch.d.run_dir().join("sock/control.sock");
    // Left by a process that died: a file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    c.start("sock", WaitFor::Ready, 30).await.expect("start over a stale socket");
    c.stop("sock", 30).await.expect("stop");
    // Owned by a live process: never removed from under it.
    let _live = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let e = c.start("sock", WaitFor::Ready, 30).await.expect_err("must refuse");
    assert!(e.to_string().contains("live process"), "{e}");
    assert!(sock.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hardware_virtualisation_auto_is_refused_and_nothing_is_created() {
    if paddock_actors::accel::host().kvm_usable {
        println!("without_hardware_virtualisation: skipped: this host has usable KVM");
        return;
    }
    let ch = Ch::start("");
    let mut spec = ch.spec("nohw");
    spec.accel = paddock::spec::Accel::Auto;
    let e = ch.d.client.up(&spec, WaitFor::Running, 30).await.expect_err("must be refused");
    println!("refusal: {e}");
    assert_eq!(e.kind(), Some("backend_unavailable"), "{e}");
    let text = e.to_string();
    assert!(text.contains("hardware virtualisation") && text.contains("vmx"), "{text}");
    assert!(ch.d.db_vm_names().is_empty(), "a row was created");
    assert!(ch.d.run_dir_entries().is_empty(), "a run dir was created: {:?}", ch.d.run_dir_entries());
    assert!(ch.d.hypervisor_pids().is_empty());
    assert!(!ch.log.exists(), "the hypervisor was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_is_refused_and_nothing_is_created() {
    let d = Daemon::start_with(&["--cloud-hypervisor-binary", "/nonexistent/cloud-hypervisor"], &[]);
    let mut spec = fake_spec(&d, "nobin");
    spec.backend = paddock::spec::BackendKind::CloudHypervisor;
    spec.accel = paddock::spec::Accel::Kvm;
    let e = d.client.up(&spec, WaitFor::Running, 30).await.expect_err("must be refused");
    assert_eq!(e.kind(), Some("backend_unavailable"), "{e}");
    assert!(e.to_string().contains("/nonexistent/cloud-hypervisor"), "{e}");
    assert!(d.db_vm_names().is_empty() && d.run_dir_entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcg_is_an_invalid_spec_for_cloud_hypervisor() {
    let ch = Ch::start("");
    let mut spec = ch.spec("tcg");
    spec.accel = paddock::spec::Accel::Tcg;
    let e = ch.d.client.up(&spec, WaitFor::Running, 30).await.expect_err("must be refused");
    assert_eq!(e.kind(), Some("invalid_spec"), "{e}");
    assert!(ch.d.db_vm_names().is_empty());
}

#[test]
fn golden_vm_create_bodies_match_the_api_document() {
    let api = schema::ApiSpec::load().expect("API document");
    let create = api.request_schema("vm.create", "PUT").expect("vm.create").expect("body schema").clone();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).expect("golden dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".vm-create.json") {
            continue;
        }
        let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(e.path()).expect("read")).expect("json");
        let errs = api.check(&create, &body);
        assert!(errs.is_empty(), "{name}: {errs:?}");
        checked += 1;
    }
    assert!(checked >= 2, "no golden vm.create bodies found");
    // The checker itself catches what it must.
    let bad = serde_json::json!({"cpus": {"boot_vcpus": 0, "max_vcpus": 1}, "payload": {"kernal": "/k"}, "serial": {"mode": "Sockets"}});
    let errs = api.check(&create, &bad);
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cloud_hypervisor_boots_the_test_guest() {
    let Some(bin) = real_binary() else {
        println!("real_cloud_hypervisor: skipped: set CLOUD_HYPERVISOR_BIN=/path/to/cloud-hypervisor (needs hardware virtualisation)");
        return;
    };
    println!("using {bin:?}");
    let ch = Ch::start("");
    let info = ch.d.client.up(&ch.spec("real"), WaitFor::Ready, BOOT).await.expect("up");
    assert!(info.ready);
    let out = ch.d.client.stop("real", 60).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Acpi), "{out:?}");
}

/// The fake hangs where released CH hangs (shutdown of a paused VM), so
/// the test that the backend resumes first can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_hangs_on_shutdown_of_a_paused_vm_like_cloud_hypervisor() {
    use paddock_actors::cloud_hypervisor::client::ApiClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("api.sock");
    let mut fake = std::process::Command::new(fake_ch())
        .arg("--api-socket")
        .arg(format!("path={}", sock.display()))
        .env_remove("PADDOCK_FAKE_CH")
        .env_remove("PADDOCK_FAKE_CH_LOG")
        .spawn()
        .expect("spawn fake");
    let api = ApiClient::new(&sock, Duration::from_millis(500));
    api.wait_for_socket(Duration::from_secs(10)).await.expect("socket");
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ch-kernel.vm-create.json");
    let mut cfg: paddock_actors::cloud_hypervisor::api::VmConfig =
        serde_json::from_str(&std::fs::read_to_string(golden).expect("golden")).expect("typed");
    cfg.serial.file = Some(dir.path().join("console.log"));
    api.create(&cfg).await.expect("vm.create");
    api.put("vm.boot").await.expect("vm.boot");
    api.put("vm.pause").await.expect("vm.pause");
    let e = api.put("vm.shutdown").await.expect_err("must hang");
    assert!(matches!(e, paddock_actors::backend::ControlError::Timeout { .. }), "{e}");
    let _ = fake.kill();
    let _ = fake.wait();
}
