//! Cloud Hypervisor under the same supervision as QEMU: lifecycle, every
//! rung of the shutdown ladder, crash handling, stale files, re-adoption,
//! orphans, guest panics, the refusal on a host without hardware
//! virtualisation, and every request the backend sends checked against
//! CH's API document; plus the fake's own behaviours, each checked against
//! the real binary too.
//!
//! Runs against the fake (`paddock-fake-ch`) by default. With
//! CLOUD_HYPERVISOR_BIN=/path/to/cloud-hypervisor (what `.ci/run` sets when
//! ../shared/bin/cloud-hypervisor exists) the control-plane tests run
//! against that binary: on a host without hardware virtualisation its
//! guests never print anything, so those tests wait for `running` instead
//! of readiness and expect the ACPI button to be ignored; tests that need
//! a printing guest say "skipped: no hardware virtualisation", and the
//! fake-only ones (fault modes) say they were skipped. When the test
//! binary exits it prints a closing count of what ran against which
//! binary and what was skipped, so a skip is never read as a pass.

mod common;
#[path = "fake/schema.rs"]
mod schema;

use common::*;
use paddock::{EventKind, Rung, VmPhase, VmSpec, WaitFor};
use paddock_actors::cloud_hypervisor::api::VmState;
use paddock_actors::cloud_hypervisor::client::ApiClient;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOOT: u64 = 120;

fn real_binary() -> Option<PathBuf> {
    std::env::var_os("CLOUD_HYPERVISOR_BIN").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Whether a guest can make progress here (vmx/svm and /dev/kvm).
fn hardware_virtualisation() -> bool {
    paddock_actors::accel::host().kvm_usable
}

/// The closing count: every test says what it ran against or why it
/// skipped; the list is printed once, when the test binary exits.
mod report {
    use std::sync::{Mutex, Once};

    static LINES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    static AT_EXIT: Once = Once::new();

    extern "C" fn print() {
        let lines = LINES.lock().map(|l| l.clone()).unwrap_or_default();
        let count = |what: &str| lines.iter().filter(|(_, o)| o.starts_with(what)).count();
        eprintln!(
            "\ncloud_hypervisor: {} test(s) ran against the real binary, {} against the fake, {} skipped",
            count("real"),
            count("fake"),
            count("skipped")
        );
        for (test, outcome) in &lines {
            eprintln!("  {test}: {outcome}");
        }
    }

    pub fn record(test: &str, outcome: impl Into<String>) {
        // SAFETY: atexit with a plain extern "C" function that only reads
        // a static; registered once.
        AT_EXIT.call_once(|| unsafe {
            libc::atexit(print);
        });
        if let Ok(mut l) = LINES.lock() {
            l.push((test.to_string(), outcome.into()));
        }
    }

    pub fn skipped(test: &str, why: &str) {
        println!("{test}: skipped: {why}");
        record(test, format!("skipped: {why}"));
    }
}

/// A daemon driving CH (the real one if asked, else the fake with
/// `flags`), and the fake's request log.
struct Ch {
    d: Daemon,
    log: PathBuf,
    _logdir: tempfile::TempDir,
    real: bool,
    /// The guest boots and prints (always with the fake; with the real
    /// binary only where hardware virtualisation works).
    guest_runs: bool,
}

impl Ch {
    fn start(test: &str, flags: &str) -> Ch {
        Self::start_env(test, flags, &[])
    }

    fn start_env(test: &str, flags: &str, envs: &[(&str, &str)]) -> Ch {
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join("fake-ch.log");
        // The fake runs as its VM's unprivileged identity and writes here.
        writable_by_vms(logdir.path());
        let real = real_binary();
        report::record(test, match &real {
            Some(b) => format!("real ({})", b.display()),
            None => "fake".to_string(),
        });
        let d = match &real {
            Some(bin) => Daemon::start_with(&["--cloud-hypervisor-binary", &bin.to_string_lossy(), "--control-timeout-ms", "5000"], envs),
            None => {
                let mut all = vec![("PADDOCK_FAKE_CH", flags), ("PADDOCK_FAKE_CH_LOG", log.to_str().expect("utf-8 path"))];
                all.extend_from_slice(envs);
                Daemon::start_with(&["--cloud-hypervisor-binary", fake_ch(), "--control-timeout-ms", "1000"], &all)
            }
        };
        Ch { d, log, _logdir: logdir, real: real.is_some(), guest_runs: real.is_none() || hardware_virtualisation() }
    }

    /// A fake-only test: None (and a note) when a real binary is in use.
    fn fake_only(test: &str, flags: &str) -> Option<Ch> {
        if real_binary().is_some() {
            report::skipped(test, "needs the fake's fault modes, CLOUD_HYPERVISOR_BIN is set");
            return None;
        }
        Some(Ch::start(test, flags))
    }

    /// A test that needs a guest that prints: None where it cannot run.
    fn with_printing_guest(test: &str, flags: &str) -> Option<Ch> {
        if real_binary().is_some() && !hardware_virtualisation() {
            report::skipped(test, "no hardware virtualisation");
            return None;
        }
        Some(Ch::start(test, flags))
    }

    fn spec(&self, name: &str) -> VmSpec {
        self.spec_with(name, "")
    }

    /// `switches` go on the test guest's kernel command line (real binary).
    fn spec_with(&self, name: &str, switches: &str) -> VmSpec {
        let mut s = if self.real { guest_spec(name, switches) } else { fake_spec(&self.d, name) };
        // CH boots an uncompressed vmlinux (PVH); a bzImage only in some
        // releases. PADDOCK_CH_KERNEL points at one it can boot.
        if let (true, Some(k)) = (self.real, std::env::var_os("PADDOCK_CH_KERNEL")) {
            s.boot.kernel = Some(PathBuf::from(k));
        }
        s.backend = paddock::spec::BackendKind::CloudHypervisor;
        s.accel = paddock::spec::Accel::Kvm;
        s
    }

    /// What `up` can wait for here.
    fn boot_wait(&self) -> WaitFor {
        if self.guest_runs {
            WaitFor::Ready
        } else {
            WaitFor::Running
        }
    }

    /// A stop's ACPI budget and the rung it ends on: a guest that does not
    /// run never sees the button.
    fn graceful_stop(&self) -> (u64, Rung) {
        if self.guest_runs {
            (30, Rung::Acpi)
        } else {
            (1, Rung::Quit)
        }
    }

    /// The fake's log: one `METHOD endpoint status` line per request.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(String::from).collect()
    }

    /// No request the backend sent broke the API document.
    fn assert_no_violation(&self) {
        let bad: Vec<String> = self.requests().into_iter().filter(|l| l.starts_with("VIOLATION")).collect();
        assert!(bad.is_empty(), "requests that break the CH API document: {bad:?}");
    }

    fn api(&self, vm: &str) -> ApiClient {
        ApiClient::new(self.d.run_dir().join(vm).join("control.sock"), Duration::from_secs(5))
    }
}

fn argv0(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    String::from_utf8_lossy(raw.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_up_pause_resume_then_stop() {
    let ch = Ch::start("lifecycle", "");
    let c = &ch.d.client;
    let info = c.up(&ch.spec("life"), ch.boot_wait(), BOOT).await.expect("up");
    assert_eq!(info.ready, ch.guest_runs, "{info:?}");
    assert_eq!((info.phase.clone(), info.backend.as_str(), info.accel.as_deref()), (VmPhase::Running, "cloud-hypervisor", Some("kvm")));
    let pid = info.pid.expect("pid");
    assert_eq!(argv0(pid), "paddock-life", "the marker is the process name");
    if !hardware_virtualisation() {
        let warnings = ch.d.log().matches("accel = kvm overrides the hardware check").count();
        assert_eq!(warnings, 1, "the kvm override is warned once per start:\n{}", ch.d.log());
    }
    if ch.guest_runs {
        wait_console(c, "life", READY_MARKER, Duration::from_secs(5)).await;
    }

    assert_eq!(c.pause("life").await.expect("pause").phase, VmPhase::Paused);
    assert_eq!(ch.api("life").info().await.expect("vm.info").expect("created").state, VmState::Paused, "CH itself is paused");
    assert_eq!(c.resume("life").await.expect("resume").phase, VmPhase::Running);
    let (graceful, rung) = ch.graceful_stop();
    let out = c.stop("life", graceful).await.expect("stop");
    assert_eq!(out.rung, Some(rung), "{out:?}");
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
            "GET vm.info 200",
            "PUT vm.resume 204",
            "PUT vm.power-button 204",
        ];
        assert_eq!(calls, want);
        ch.assert_no_violation();
    }
    // Boots again, then `rm` leaves nothing.
    let again = c.start("life", ch.boot_wait(), BOOT).await.expect("start again");
    assert_ne!(again.pid, Some(pid));
    c.remove("life", true).await.expect("rm");
    assert!(ch.d.run_dir_entries().is_empty() && ch.d.db_vm_names().is_empty() && ch.d.hypervisor_pids().is_empty());
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_ignores_the_power_button_ends_on_the_quit_rung() {
    // The fake ignores the button when told; a real guest that cannot run
    // never sees it; a real guest that runs is told to ignore it.
    let ch = Ch::start("quit_rung", "ignore-power-button");
    let spec = ch.spec_with("deaf", "paddock.ignore_acpi=1");
    let pid = ch.d.client.up(&spec, ch.boot_wait(), BOOT).await.expect("up").pid.expect("pid");
    let out = ch.d.client.stop("deaf", 1).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Quit), "{out:?}");
    assert!(!process_exists(pid));
    if !ch.real {
        let calls = ch.requests();
        assert!(calls.iter().any(|l| l == "PUT vm.shutdown 204") && calls.iter().any(|l| l == "PUT vmm.shutdown 204"), "{calls:?}");
    }
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_ends_on_the_sigterm_rung() {
    // The fake stops answering; with the real binary the API socket is
    // moved away, so no request reaches it and only the signal can end it.
    let ch = Ch::start("sigterm_rung", "hang");
    let pid = ch.d.client.up(&ch.spec("hung"), ch.boot_wait(), BOOT).await.expect("up").pid.expect("pid");
    if ch.real {
        let sock = ch.d.run_dir().join("hung/control.sock");
        std::fs::rename(&sock, sock.with_extension("moved")).expect("move the API socket");
    }
    let out = ch.d.client.stop("hung", 1).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Term), "{out:?}");
    assert!(!process_exists(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_vmm_that_ignores_sigterm_ends_on_the_sigkill_rung() {
    // The fake hangs and ignores SIGTERM; the real binary is stopped
    // (SIGSTOP): no answer, and SIGTERM stays pending.
    let ch = Ch::start("sigkill_rung", "hang,ignore-term");
    let pid = ch.d.client.up(&ch.spec("stubborn"), ch.boot_wait(), BOOT).await.expect("up").pid.expect("pid");
    if ch.real {
        // SAFETY: kill(2) on the hypervisor this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    let out = ch.d.client.stop("stubborn", 1).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Kill), "{out:?}");
    assert!(!process_exists(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_vm_ends_on_the_quit_rung_at_once() {
    // A paused guest never sees ACPI: the ladder starts at quit. Older
    // CH releases hung on shutdown of a paused VM (#816/#817), so the
    // backend resumes first; this release answers at once either way.
    let ch = Ch::start("paused_quit", "");
    ch.d.client.up(&ch.spec("frozen"), ch.boot_wait(), BOOT).await.expect("up");
    ch.d.client.pause("frozen").await.expect("pause");
    let out = ch.d.client.stop("frozen", 30).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Quit), "a paused VM skips ACPI and must end on quit: {out:?}");
    // Well within the quit rung's 5 s wait: nothing hung on the way.
    assert!(out.elapsed_ms < 5_000, "{out:?}");
    if !ch.real {
        let calls = ch.requests();
        let resume = calls.iter().rposition(|l| l == "PUT vm.resume 204").expect("resumed");
        let shutdown = calls.iter().position(|l| l == "PUT vm.shutdown 204").expect("shut down");
        assert!(resume < shutdown, "{calls:?}");
    }
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_wait_ready_answers_504_at_its_timeout() {
    let ch = Ch::start("wait_ready_timeout", "");
    let mut spec = ch.spec("slow");
    spec.ready_pattern = Some("this line is never printed".into());
    let asked = std::time::Instant::now();
    let e = ch.d.client.up(&spec, WaitFor::Ready, 2).await.expect_err("never ready");
    let took = asked.elapsed();
    println!("504 after {took:?}: {e}");
    assert_eq!(e.kind(), Some("timeout"), "{e}");
    // At the timeout, not at the timeout plus the request margin (10 s).
    assert!(took < Duration::from_secs(7), "answered after {took:?}");
    // The VM itself was not given up: it runs, not ready.
    let v = ch.d.client.get("slow").await.expect("get");
    assert_eq!((v.phase, v.ready), (VmPhase::Running, false));
    ch.d.client.stop("slow", ch.graceful_stop().0).await.expect("stop");
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
    let mut ch = Ch::start("readoption", "ticker");
    let pid = ch.d.client.up(&ch.spec("keep"), ch.boot_wait(), BOOT).await.expect("up").pid.expect("pid");
    ch.d.kill9();
    assert!(process_exists(pid), "the VM died with its supervisor");
    ch.d.spawn();
    let v = ch.d.client.get("keep").await.expect("get");
    assert_eq!((v.phase, v.pid), (VmPhase::Running, Some(pid)), "not re-adopted");
    assert_eq!(v.accel.as_deref(), Some("kvm"), "ACCEL after re-adoption");
    if !ch.real {
        // Written by CH (the fake) itself while nobody watched: no gap.
        let log = wait_console(&ch.d.client, "keep", "tick 20\n", Duration::from_secs(10)).await;
        let ticks: Vec<u64> = log.lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect();
        assert_eq!(ticks, (1..=ticks.len() as u64).collect::<Vec<_>>(), "console gap across the daemon's downtime");
        let creates = ch.requests().iter().filter(|l| l.starts_with("PUT vm.create")).count();
        assert_eq!(creates, 1, "adoption must not create the VM again");
    }
    // Control is re-connected: the ladder works on the adopted VM.
    let (graceful, rung) = ch.graceful_stop();
    let out = ch.d.client.stop("keep", graceful).await.expect("stop");
    assert_eq!(out.rung, Some(rung), "{out:?}");
    assert!(!process_exists(pid));
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_never_boots_a_vm_that_was_being_stopped() {
    // The daemon dies between `vm.shutdown` and `vmm.shutdown`: CH then
    // says `Created`, which must not read as "finish the boot".
    let mut ch = Ch::start_env("adoption_of_a_stopping_vm", "ignore-power-button", &[("FAILPOINTS", "ch.quit.after-vm-shutdown=return")]);
    let spec = ch.spec_with("halting", "paddock.ignore_acpi=1");
    let pid = ch.d.client.up(&spec, ch.boot_wait(), BOOT).await.expect("up").pid.expect("pid");
    let since = last_seq(&ch.d.client).await;
    let _ = ch.d.client.stop("halting", 1).await.expect_err("the daemon dies at the failpoint");
    assert!(!ch.d.wait_exit().success());
    let api = ch.api("halting");
    assert_eq!(api.info().await.expect("vm.info").expect("created").state, VmState::Created, "CH after vm.shutdown");
    ch.d.envs.retain(|(k, _)| k != "FAILPOINTS");
    ch.d.spawn();
    let stopped = wait_event(&ch.d.client, since, Duration::from_secs(30), |e| is_phase(e, "halting", |p| matches!(p, VmPhase::Stopped { .. }))).await;
    println!("{:?}", stopped.kind);
    assert!(!process_exists(pid), "the stop was not finished");
    let info = ch.d.client.get("halting").await.expect("get");
    assert!(matches!(info.phase, VmPhase::Stopped { .. }) && info.pid.is_none(), "{info:?}");
    if !ch.real {
        let boots = ch.requests().iter().filter(|l| l.starts_with("PUT vm.boot")).count();
        assert_eq!(boots, 1, "adoption booted the VM again: {:?}", ch.requests());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsock_gets_a_per_vm_cid() {
    let ch = Ch::start("vsock_cid", "");
    let mut spec = ch.spec("sox");
    spec.vsock = true;
    ch.d.client.up(&spec, WaitFor::Running, BOOT).await.expect("up");
    // Ask CH itself, through the backend's own typed client.
    let info = ch.api("sox").info().await.expect("vm.info").expect("created");
    let cid = paddock_actors::cloud_hypervisor::backend::vsock_cid("sox");
    assert_eq!(info.config["vsock"]["cid"], serde_json::json!(cid), "{}", info.config);
    assert!(cid >= 3);
    // The same host-side interface as QEMU's: the API's vsock stream. Only
    // the fake has a guest that answers (real guests do not run here).
    if !ch.real {
        let mut stream = ch.d.client.vsock("sox", 1234).await.expect("vsock stream");
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream.write_all(b"ping over hybrid vsock\n").await.expect("write");
        let mut buf = [0u8; 23];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf)).await.expect("echo in time").expect("read");
        assert_eq!(&buf, b"ping over hybrid vsock\n");
    }
    ch.d.client.stop("sox", ch.graceful_stop().0).await.expect("stop");
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_kill_9_is_a_crash() {
    let ch = Ch::start("kill9_is_a_crash", "");
    let since = last_seq(&ch.d.client).await;
    let pid = ch.d.client.up(&ch.spec("victim"), ch.boot_wait(), BOOT).await.expect("up").pid.expect("pid");
    // SAFETY: kill(2) on the hypervisor this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let ev = wait_event(&ch.d.client, since, Duration::from_secs(10), |e| is_phase(e, "victim", |p| matches!(p, VmPhase::Crashed { .. }))).await;
    println!("{:?}", ev.kind);
    assert_eq!(ch.d.client.get("victim").await.expect("get").pid, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_kill_9_with_vsock_succeeds() {
    // A killed CH leaves vsock.sock (the next vm.boot would fail with
    // "Address already in use") and control.sock.lock behind.
    let ch = Ch::start("start_after_kill9_with_vsock", "");
    let mut spec = ch.spec("sox9");
    spec.vsock = true;
    let since = last_seq(&ch.d.client).await;
    let pid = ch.d.client.up(&spec, WaitFor::Running, BOOT).await.expect("up").pid.expect("pid");
    // SAFETY: kill(2) on the hypervisor this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_event(&ch.d.client, since, Duration::from_secs(10), |e| is_phase(e, "sox9", |p| matches!(p, VmPhase::Crashed { .. }))).await;
    let dir = ch.d.run_dir().join("sox9");
    // The daemon removes the sockets of a run whose exit it saw; a CH that
    // died while no daemon ran leaves them for the next start. Put back
    // what a dead CH leaves: a vsock socket nobody listens on.
    if !dir.join("vsock.sock").exists() {
        drop(std::os::unix::net::UnixListener::bind(dir.join("vsock.sock")).expect("stale vsock socket"));
    }
    assert!(dir.join("vsock.sock").exists(), "no stale vsock socket; the test proves nothing");
    assert!(dir.join("control.sock.lock").exists(), "the dead CH left no lock file");
    let again = ch.d.client.start("sox9", WaitFor::Running, BOOT).await.expect("start after kill -9");
    assert_eq!(again.phase, VmPhase::Running);
    assert_ne!(again.pid, Some(pid));
    ch.d.client.stop("sox9", ch.graceful_stop().0).await.expect("stop");
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_failure_is_a_start_failure_with_chs_own_words() {
    // vm.create accepts the VM, vm.boot answers 500: the fake when told
    // to, the real binary for a kernel that is not one.
    let ch = Ch::start("boot_failure", "fail-boot");
    let mut spec = ch.spec("bootfail");
    let garbage = ch.d.dir.path().join("not-a-kernel");
    std::fs::write(&garbage, vec![0x5au8; 64 << 10]).expect("write");
    if ch.real {
        spec.boot.kernel = Some(garbage);
        spec.boot.initrd = None;
    }
    let since = last_seq(&ch.d.client).await;
    let e = ch.d.client.up(&spec, WaitFor::Running, BOOT).await.expect_err("must fail");
    println!("{e}");
    assert_eq!(e.kind(), Some("start_failed"), "{e}");
    assert!(e.to_string().contains("The VM could not boot"), "CH's own words are missing: {e}");
    let events = events_since(&ch.d.client, since).await;
    let phases: Vec<&VmPhase> = events.iter().filter(|e| e.vm == "bootfail").filter_map(|e| match &e.kind {
        EventKind::Phase { phase } => Some(phase),
        _ => None,
    }).collect();
    assert!(!phases.iter().any(|p| matches!(p, VmPhase::Crashed { .. })), "recorded as a crash: {phases:?}");
    assert!(phases.iter().any(|p| matches!(p, VmPhase::Failed { reason } if reason.contains("could not boot"))), "{phases:?}");
    // `up` rolled back: nothing is left.
    assert!(ch.d.db_vm_names().is_empty() && ch.d.run_dir_entries().is_empty() && ch.d.hypervisor_pids().is_empty());
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
async fn an_exit_0_after_an_internal_error_is_a_failure_and_restarted() {
    // CH's answer to a fatal vCPU error: an ERROR line on stderr, the
    // shutdown events, exit code 0 (what a guest power-off looks like).
    let Some(ch) = Ch::fake_only("exit_0_after_internal_error", "vcpu-error-after-ms=300") else { return };
    let mut spec = ch.spec("vcpu");
    spec.restart.policy = paddock::spec::RestartPolicy::OnFailure;
    spec.restart.backoff_base_ms = 10;
    let since = last_seq(&ch.d.client).await;
    ch.d.client.up(&spec, WaitFor::Running, 30).await.expect("up");
    let mut crashed = None;
    wait_event(&ch.d.client, since, Duration::from_secs(30), |e| {
        if is_phase(e, "vcpu", |p| matches!(p, VmPhase::Crashed { .. })) {
            crashed = Some(e.clone());
        }
        crashed.is_some() && e.vm == "vcpu" && matches!(e.kind, EventKind::RestartScheduled { .. })
    })
    .await;
    let crashed = crashed.expect("crashed");
    let EventKind::Phase { phase: VmPhase::Crashed { exit } } = crashed.kind else { unreachable!() };
    assert_eq!(exit.code, Some(0), "{exit:?}");
    let message = crashed.message.unwrap_or_default();
    assert!(message.contains("VCPU generated error"), "the event must carry CH's message: {message:?}");
    ch.d.client.stop("vcpu", 1).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_panic_restart_stop_pause_and_ignore() {
    // CH only reports a guest panic (pvpanic) and keeps running: each
    // `on_panic` action is Paddock's to take.
    let Some(ch) = Ch::fake_only("on_panic", "panic-after-ms=300") else { return };
    let c = &ch.d.client;
    let since = last_seq(c).await;
    for action in ["restart", "stop", "pause", "ignore"] {
        let mut spec = ch.spec(&format!("p-{action}"));
        spec.on_panic = serde_json::from_value(serde_json::json!(action)).expect("on_panic");
        spec.restart.policy = paddock::spec::RestartPolicy::OnFailure;
        spec.restart.backoff_base_ms = 60_000;
        c.up(&spec, WaitFor::Running, 30).await.expect("up");
    }
    let mut events: Vec<paddock::Event> = Vec::new();
    let done = |ev: &[paddock::Event], vm: &str, f: &dyn Fn(&paddock::Event) -> bool| ev.iter().any(|e| e.vm == vm && f(e));
    wait_event(c, since, Duration::from_secs(30), |e| {
        events.push(e.clone());
        let restarted = done(&events, "p-restart", &|e| matches!(e.kind, EventKind::RestartScheduled { .. }));
        let stopped = done(&events, "p-stop", &|e| matches!(e.kind, EventKind::Phase { phase: VmPhase::Crashed { .. } }));
        let paused = done(&events, "p-pause", &|e| matches!(e.kind, EventKind::Phase { phase: VmPhase::Paused }));
        let ignored = done(&events, "p-ignore", &|e| matches!(e.kind, EventKind::GuestPanicked));
        restarted && stopped && paused && ignored
    })
    .await;
    for action in ["restart", "stop", "pause", "ignore"] {
        let vm = format!("p-{action}");
        let panic = events.iter().find(|e| e.vm == vm && matches!(e.kind, EventKind::GuestPanicked)).expect("guest_panicked");
        assert_eq!(panic.message.as_deref(), Some(format!("on_panic = {action}").as_str()));
    }
    // stop: the policy (on-failure) is not applied. The stop request
    // queues behind the exit's handling, so a restart would be recorded
    // by the time it answers.
    c.stop("p-stop", 1).await.expect("stop");
    let all = events_since(c, since).await;
    assert!(!all.iter().any(|e| e.vm == "p-stop" && matches!(e.kind, EventKind::RestartScheduled { .. })), "on_panic = stop restarted");
    // pause: CH itself is paused, the process alive.
    let paused = c.get("p-pause").await.expect("get");
    assert!(paused.pid.is_some_and(process_exists));
    assert_eq!(ch.api("p-pause").info().await.expect("info").expect("vm").state, VmState::Paused);
    // ignore: still running; ACPI still ends it.
    let ignored = c.get("p-ignore").await.expect("get");
    assert_eq!(ignored.phase, VmPhase::Running);
    assert_eq!(c.stop("p-ignore", 30).await.expect("stop").rung, Some(Rung::Acpi));
    for vm in ["p-restart", "p-pause"] {
        c.stop(vm, 1).await.expect("stop");
    }
    ch.assert_no_violation();
}

async fn events_since(c: &paddock::client::Client, since: u64) -> Vec<paddock::Event> {
    let body = c.events(since, false).await.expect("events");
    let bytes = http_body_util::BodyExt::collect(body).await.expect("body").to_bytes();
    bytes.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice(l).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_reboot_keeps_the_run() {
    let ch = Ch::start("vm_reboot", "");
    let c = &ch.d.client;
    let pid = c.up(&ch.spec("rb"), ch.boot_wait(), BOOT).await.expect("up").pid.expect("pid");
    ch.api("rb").put("vm.reboot").await.expect("vm.reboot");
    let v = c.get("rb").await.expect("get");
    assert_eq!((v.phase, v.pid), (VmPhase::Running, Some(pid)), "a reboot is not a new run");
    // The ladder still works on the rebooted VM.
    let (graceful, rung) = ch.graceful_stop();
    assert_eq!(c.stop("rb", graceful).await.expect("stop").rung, Some(rung));
    ch.assert_no_violation();
}

/// CH truncates its serial file at a reboot; the console reader must
/// follow it (issue 12's reader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_vm_reboot_logs_show_the_new_boot() {
    let Some(ch) = Ch::with_printing_guest("vm_reboot_log", "") else { return };
    let c = &ch.d.client;
    c.up(&ch.spec("rbl"), WaitFor::Ready, BOOT).await.expect("up");
    ch.api("rbl").put("vm.reboot").await.expect("vm.reboot");
    let needle = if ch.real { "Linux version" } else { "fake-ch: rebooted" };
    wait_console(c, "rbl", needle, Duration::from_secs(60)).await;
    c.stop("rbl", ch.graceful_stop().0).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecorded_cloud_hypervisor_is_an_orphan_and_is_stopped() {
    let mut ch = Ch::start("orphan", "");
    let pid = ch.d.client.up(&ch.spec("stray"), ch.boot_wait(), BOOT).await.expect("up").pid.expect("pid");
    ch.d.kill9();
    std::fs::remove_dir_all(ch.d.state_dir()).expect("rm state");
    ch.d.spawn();
    assert!(!process_exists(pid), "orphan still running after READY");
    let text = events_since(&ch.d.client, 0).await.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect::<String>();
    assert!(text.contains("orphan_stopped") && text.contains(&pid.to_string()) && text.contains("\"quit\""), "{text}");
    ch.assert_no_violation();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_sockets_and_locks_are_removed_but_live_ones_are_not() {
    let ch = Ch::start("stale_files", "");
    let c = &ch.d.client;
    c.up(&ch.spec("sock"), WaitFor::Running, BOOT).await.expect("up");
    c.stop("sock", ch.graceful_stop().0).await.expect("stop");
    let dir = ch.d.run_dir().join("sock");
    let sock = dir.join("control.sock");
    // Left by a process that died: files nobody listens on or locks.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    std::fs::write(dir.join("control.sock.lock"), b"").expect("lock file");
    c.start("sock", WaitFor::Running, BOOT).await.expect("start over stale files");
    c.stop("sock", ch.graceful_stop().0).await.expect("stop");
    // Owned by a live process: never removed from under it.
    let live = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let e = c.start("sock", WaitFor::Running, BOOT).await.expect_err("must refuse");
    assert!(e.to_string().contains("live process"), "{e}");
    assert!(sock.exists());
    drop(live);
    std::fs::remove_file(&sock).expect("rm");
    // A lock held by a live process (a CH we did not start, say).
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("control.sock.lock")).expect("open");
    // SAFETY: an all-zero flock is valid; type and range set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    nix::fcntl::fcntl(&lock, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)).expect("lock");
    let e = c.start("sock", WaitFor::Running, BOOT).await.expect_err("must refuse");
    assert!(e.to_string().contains("control.sock.lock") && e.to_string().contains("live process"), "{e}");
    drop(lock);
    c.start("sock", WaitFor::Running, BOOT).await.expect("start once the lock is free");
    c.stop("sock", ch.graceful_stop().0).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hardware_virtualisation_auto_is_refused_and_nothing_is_created() {
    if hardware_virtualisation() {
        report::skipped("auto_without_hardware_virtualisation", "this host has usable KVM");
        return;
    }
    let ch = Ch::start("auto_without_hardware_virtualisation", "");
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
    report::record("missing_binary", "fake (no binary at all)");
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
    let ch = Ch::start("tcg_is_invalid", "");
    let mut spec = ch.spec("tcg");
    spec.accel = paddock::spec::Accel::Tcg;
    let e = ch.d.client.up(&spec, WaitFor::Running, 30).await.expect_err("must be refused");
    assert_eq!(e.kind(), Some("invalid_spec"), "{e}");
    assert!(ch.d.db_vm_names().is_empty());
}

#[test]
fn golden_vm_create_bodies_match_the_api_document() {
    report::record("golden_vm_create_bodies", "API document");
    let api = schema::ApiSpec::load().expect("API document");
    let create = api.request_schema("vm.create", "PUT").expect("vm.create").expect("body schema").clone();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
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
    let test = "real_binary_boots_the_test_guest";
    if real_binary().is_none() {
        report::skipped(test, "set CLOUD_HYPERVISOR_BIN=/path/to/cloud-hypervisor");
        return;
    }
    let Some(ch) = Ch::with_printing_guest(test, "") else { return };
    let info = ch.d.client.up(&ch.spec("real"), WaitFor::Ready, BOOT).await.expect("up");
    assert!(info.ready);
    let out = ch.d.client.stop("real", 60).await.expect("stop");
    assert_eq!(out.rung, Some(Rung::Acpi), "{out:?}");
}

// ---- The fake against the real release: each behaviour below is driven
// ---- on the fake and, with CLOUD_HYPERVISOR_BIN set, on the real binary.

/// The binaries to hold to the same behaviour.
fn binaries(test: &str) -> Vec<(&'static str, PathBuf)> {
    let mut v = Vec::new();
    if let Some(b) = real_binary() {
        v.push(("real", b));
    }
    v.push(("fake", PathBuf::from(fake_ch())));
    report::record(test, v.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(" + "));
    v
}

/// A VMM process on its own API socket in a fresh directory.
struct Vmm {
    child: std::process::Child,
    api: ApiClient,
    dir: tempfile::TempDir,
}

impl Vmm {
    async fn spawn(which: &'static str, bin: &Path) -> Vmm {
        let dir = tempfile::Builder::new().prefix("chv").tempdir_in("/tmp").expect("tempdir");
        Self::spawn_in(which, bin, dir).await
    }

    async fn spawn_in(which: &'static str, bin: &Path, dir: tempfile::TempDir) -> Vmm {
        let child = Self::command(bin, dir.path()).spawn().expect("spawn the VMM");
        let api = ApiClient::new(dir.path().join("api.sock"), Duration::from_secs(5));
        api.wait_for_socket(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{which}: no API socket: {e}"));
        // The socket file may be a stale one: wait until this process answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while api.ping().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "{which}: the API never answered");
            tokio::task::yield_now().await;
        }
        Vmm { child, api, dir }
    }

    fn command(bin: &Path, dir: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(bin);
        c.arg("--api-socket")
            .arg(format!("path={}", dir.join("api.sock").display()))
            .arg("--event-monitor")
            .arg(format!("path={}", dir.join("events.json").display()))
            .env_remove("PADDOCK_FAKE_CH")
            .env_remove("PADDOCK_FAKE_CH_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    /// The test guest's vm.create body (the golden one, with real paths).
    fn config(&self) -> paddock_actors::cloud_hypervisor::api::VmConfig {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ch-kernel.vm-create.json");
        let mut cfg: paddock_actors::cloud_hypervisor::api::VmConfig =
            serde_json::from_str(&std::fs::read_to_string(golden).expect("golden")).expect("typed");
        let g = guest();
        cfg.payload.kernel = Some(g.kernel.clone());
        cfg.payload.initramfs = Some(g.initrd.clone());
        cfg.serial.file = Some(self.dir.path().join("console.log"));
        cfg
    }

    /// Waits (bounded) for the process to exit, through a pidfd.
    async fn exited_within(&mut self, timeout: Duration) -> bool {
        let Ok(fd) = paddock_actors::process::pidfd_open(self.child.id() as i32) else { return true };
        let watched = paddock_actors::process::watch_pidfd(fd).expect("watch pidfd");
        let gone = tokio::time::timeout(timeout, watched.readable()).await.is_ok();
        if gone {
            let _ = self.child.wait();
        }
        gone
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn messages(which: &str, body: &[u8]) -> Vec<String> {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{which}: error body is not a JSON array of messages ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_arrays_of_messages_with_chs_status_codes() {
    use hyper::Method;
    for (which, bin) in binaries("fake_matches_real: error answers") {
        let v = Vmm::spawn(which, &bin).await;
        let (status, body) = v.api.request(Method::GET, "vm.info", None).await.expect("vm.info");
        assert_eq!(status.as_u16(), 404, "{which}");
        assert!(messages(which, &body).iter().any(|m| m == "VM is not created"), "{which}: {body:?}");
        let (status, body) = v.api.request(Method::PUT, "vm.boot", None).await.expect("vm.boot");
        assert_eq!(status.as_u16(), 404, "{which}: boot without a VM");
        assert_eq!(messages(which, &body).first().map(String::as_str), Some("Error from API"), "{which}");
        let (status, body) = v.api.request(Method::PUT, "vm.pause", None).await.expect("vm.pause");
        assert_eq!(status.as_u16(), 500, "{which}: pause without a VM");
        assert!(messages(which, &body).iter().any(|m| m == "VM is not running"), "{which}: {body:?}");
        let (status, body) = v.api.request(Method::GET, "vm.no-such-thing", None).await.expect("unknown");
        assert_eq!(status.as_u16(), 404, "{which}");
        assert_eq!(messages(which, &body), ["Not Found"], "{which}");
        println!("{which}: error answers as the release gives them");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_create_ignores_unknown_fields() {
    use hyper::Method;
    for (which, bin) in binaries("fake_matches_real: lenient vm.create") {
        let v = Vmm::spawn(which, &bin).await;
        let mut body = serde_json::to_value(v.config()).expect("json");
        body["no_such_field"] = serde_json::json!(1);
        let (status, answer) = v.api.request(Method::PUT, "vm.create", Some(body.to_string().into_bytes())).await.expect("vm.create");
        assert_eq!(status.as_u16(), 204, "{which}: {}", String::from_utf8_lossy(&answer));
        assert_eq!(v.api.info().await.expect("info").expect("vm").state, VmState::Created, "{which}");
        v.api.put("vm.boot").await.unwrap_or_else(|e| panic!("{which}: boot: {e}"));
        assert_eq!(v.api.info().await.expect("info").expect("vm").state, VmState::Running, "{which}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_a_paused_vm_answers_at_once_and_leaves_it_created() {
    for (which, bin) in binaries("fake_matches_real: paused shutdown") {
        let mut v = Vmm::spawn(which, &bin).await;
        let quick = ApiClient::new(v.api.socket(), Duration::from_secs(2));
        v.api.create(&v.config()).await.expect("vm.create");
        v.api.put("vm.boot").await.expect("vm.boot");
        v.api.put("vm.pause").await.expect("vm.pause");
        quick.put("vm.shutdown").await.unwrap_or_else(|e| panic!("{which}: vm.shutdown of a paused VM: {e}"));
        // What adoption sees if the supervisor dies right here.
        assert_eq!(quick.info().await.expect("info").expect("vm").state, VmState::Created, "{which}");
        match quick.put("vmm.shutdown").await {
            Ok(()) | Err(paddock_actors::backend::ControlError::Closed) => {}
            Err(e) => panic!("{which}: vmm.shutdown: {e}"),
        }
        assert!(v.exited_within(Duration::from_secs(10)).await, "{which}: still running after vmm.shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_before_boot_ends_the_vmm() {
    for (which, bin) in binaries("fake_matches_real: SIGTERM before boot") {
        let mut v = Vmm::spawn(which, &bin).await;
        v.api.create(&v.config()).await.expect("vm.create");
        // SAFETY: kill(2) on the child this test spawned.
        unsafe { libc::kill(v.child.id() as i32, libc::SIGTERM) };
        assert!(v.exited_within(Duration::from_secs(10)).await, "{which}: SIGTERM before boot ignored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_api_socket_is_replaced_and_a_live_one_refused() {
    for (which, bin) in binaries("fake_matches_real: API socket and lock") {
        let dir = tempfile::Builder::new().prefix("chv").tempdir_in("/tmp").expect("tempdir");
        let sock = dir.path().join("api.sock");
        let lock = dir.path().join("api.sock.lock");
        // What a killed CH leaves: a socket nobody listens on, the lock file.
        drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
        std::fs::write(&lock, b"").expect("lock file");
        let mut v = Vmm::spawn_in(which, &bin, dir).await;
        // A second instance on the same path is refused; the first goes on.
        let second = Vmm::command(&bin, v.dir.path()).output().expect("second instance");
        assert!(!second.status.success(), "{which}: a second instance took a live socket");
        v.api.ping().await.unwrap_or_else(|e| panic!("{which}: the first instance lost its socket: {e}"));
        match v.api.put("vmm.shutdown").await {
            Ok(()) | Err(paddock_actors::backend::ControlError::Closed) => {}
            Err(e) => panic!("{which}: vmm.shutdown: {e}"),
        }
        assert!(v.exited_within(Duration::from_secs(10)).await, "{which}");
        assert!(lock.exists(), "{which}: CH leaves its lock file behind");
        assert!(!sock.exists(), "{which}: a clean exit removes the socket");
    }
}

/// `vm.snapshot` of a paused VM into the snapshot's directory and
/// `vm.restore` into a VMM started without a VM, then `vm.resume`; a
/// restore under another name is refused (CH's saved config names the
/// source's files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_restore_through_the_ch_api() {
    let ch = Ch::start("snapshot_and_restore", "");
    let c = &ch.d.client;
    let since = last_seq(c).await;
    let first = c.up(&ch.spec("snap"), ch.boot_wait(), BOOT).await.expect("up").pid;
    if ch.real && !hardware_virtualisation() {
        return real_ch_without_kvm_answers_snapshot_and_restore(&ch).await;
    }
    let snap = c.snapshot("snap", Some("ch-snap"), paddock::AfterSnapshot::Stop).await.unwrap_or_else(|e| panic!("snapshot: {e}\n{}", ch.d.log()));
    assert_eq!(snap.spec.backend, paddock::spec::BackendKind::CloudHypervisor);
    let files = ch.d.state_dir().join("snapshots/ch-snap/hypervisor");
    assert!(files.join("config.json").exists(), "CH wrote no config.json into {files:?}");
    let stopped = wait_event(c, since, Duration::from_secs(30), |e| is_phase(e, "snap", |p| matches!(p, VmPhase::Stopped { .. }))).await;
    println!("after the snapshot: {stopped:?}");

    let err = c.restore("ch-snap", Some("other"), WaitFor::Running, BOOT).await.expect_err("restore under another name");
    assert!(err.to_string().contains("only under the name"), "{err}");
    assert!(c.get("other").await.is_err(), "a refused restore left a VM");

    c.remove("snap", true).await.expect("rm");
    let info = c.restore("ch-snap", None, WaitFor::Running, BOOT).await.unwrap_or_else(|e| panic!("restore: {e}\n{}", ch.d.log()));
    assert_eq!(info.phase, VmPhase::Running);
    assert_ne!(info.pid, first);
    assert_eq!(ch.api("snap").info().await.expect("vm.info").expect("restored").state, VmState::Running, "CH runs the restored VM");
    wait_event(c, since, Duration::from_secs(10), |e| e.vm == "snap" && matches!(&e.kind, EventKind::Restored { snapshot } if snapshot == "ch-snap")).await;
    if !ch.real {
        let calls: Vec<String> = ch.requests().into_iter().filter(|l| l.contains("snapshot") || l.contains("restore")).collect();
        assert_eq!(calls, ["PUT vm.snapshot 204", "PUT vm.restore 204"]);
    }
    ch.assert_no_violation();
    c.remove("snap", true).await.expect("rm restored");
    c.snapshot_remove("ch-snap").await.expect("snapshot rm");
}

/// Without hardware virtualisation the real CH cannot read its vCPUs'
/// state: its `vm.snapshot` answer is CH's own error (the body was
/// accepted), the VM runs on, no snapshot is left; `vm.restore` of a
/// snapshot directory holding only CH's config reaches CH too, and the
/// failed start leaves nothing.
async fn real_ch_without_kvm_answers_snapshot_and_restore(ch: &Ch) {
    let c = &ch.d.client;
    let err = c.snapshot("snap", Some("ch-snap"), paddock::AfterSnapshot::Stop).await.expect_err("CH cannot snapshot here");
    assert!(err.to_string().contains("vm.snapshot failed: 500") && err.to_string().contains("Cannot snapshot VM"), "{err}");
    assert_eq!(ch.api("snap").info().await.expect("vm.info").expect("created").state, VmState::Running, "a failed snapshot resumes the VM");
    assert!(c.snapshots().await.expect("ls").is_empty());
    assert!(std::fs::read_dir(ch.d.state_dir().join("snapshots")).expect("dir").next().is_none(), "a failed snapshot left files");

    // A snapshot directory by hand: the VM's spec and CH's config.
    let info = c.get("snap").await.expect("get");
    let config = ch.api("snap").info().await.expect("vm.info").expect("created").config;
    let dir = ch.d.state_dir().join("snapshots/ch-snap");
    std::fs::create_dir_all(dir.join("hypervisor")).expect("mkdir");
    std::fs::write(dir.join("hypervisor/config.json"), serde_json::to_vec(&config).expect("config")).expect("config.json");
    std::fs::write(dir.join("memory"), b"").expect("memory");
    let meta = paddock::SnapshotInfo {
        name: "ch-snap".into(),
        vm: "snap".into(),
        spec: info.spec,
        bytes: 0,
        created_ms: 0,
        ready: false,
        hypervisor: String::new(),
        cpu: paddock_actors::snapshot::host_cpu(),
        disks: vec![],
    };
    std::fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).expect("meta")).expect("meta.json");
    c.remove("snap", true).await.expect("rm");
    let err = c.restore("ch-snap", None, WaitFor::Running, BOOT).await.expect_err("no vCPU state to restore");
    assert!(err.to_string().contains("vm.restore failed"), "{err}");
    assert!(c.get("snap").await.is_err(), "a failed restore left its VM");
    assert!(ch.d.hypervisor_pids().is_empty(), "a failed restore left CH running");
}
