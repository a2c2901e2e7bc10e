//! `on_panic` with QEMU and the real test guest (TCG): the guest panics
//! (`paddock.panic_after=2`, sysrq 'c') and QEMU's own `-action panic=`
//! puts the VM where the spec says; the Cloud Hypervisor side is in
//! tests/cloud_hypervisor.rs (CH only reports the panic; Paddock acts).

mod common;

use common::*;
use http_body_util::BodyExt as _;
use paddock::spec::{OnPanic, RestartPolicy};
use paddock::{Event, EventKind, Rung, VmPhase, WaitFor};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);

fn panicking(name: &str, on_panic: OnPanic) -> paddock::VmSpec {
    let mut spec = guest_spec(name, "paddock.panic_after=2");
    spec.on_panic = on_panic;
    spec.restart.policy = RestartPolicy::OnFailure;
    spec.restart.backoff_base_ms = 10;
    spec
}

async fn events_since(c: &paddock::client::Client, since: u64) -> Vec<Event> {
    let body = c.events(since, false).await.expect("events");
    let bytes = body.collect().await.expect("body").to_bytes();
    bytes.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice(l).ok()).collect()
}

/// Follows the console until the guest booted again after a panic.
async fn wait_reboot_after_panic(c: &paddock::client::Client, vm: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut body = c.console(vm, true).await.expect("console");
    let mut seen = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&seen);
        if text.find("Kernel panic").and_then(|i| text[i..].find(READY_MARKER)).is_some() {
            return;
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("{vm}: no boot after the panic within {timeout:?}; saw:\n{text}"));
        let Some(Ok(frame)) = frame else { panic!("{vm}: console stream ended; saw:\n{text}") };
        if let Some(d) = frame.data_ref() {
            seen.extend_from_slice(d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_on_panic_stop_pause_and_ignore() {
    let d = Daemon::start();
    let c = &d.client;
    let since = last_seq(c).await;
    let mut pids = std::collections::HashMap::new();
    for (vm, action) in [("qstop", OnPanic::Stop), ("qpause", OnPanic::Pause), ("qignore", OnPanic::Ignore)] {
        let info = c.up(&panicking(vm, action), WaitFor::Running, BOOT.as_secs()).await.expect("up");
        pids.insert(vm, info.pid.expect("pid"));
    }
    let mut seen: Vec<Event> = Vec::new();
    wait_event(c, since, BOOT, |e| {
        seen.push(e.clone());
        let has = |vm: &str, f: &dyn Fn(&EventKind) -> bool| seen.iter().any(|e| e.vm == vm && f(&e.kind));
        has("qstop", &|k| matches!(k, EventKind::Phase { phase: VmPhase::Crashed { .. } }))
            && has("qpause", &|k| matches!(k, EventKind::Phase { phase: VmPhase::Paused }))
            && has("qignore", &|k| matches!(k, EventKind::GuestPanicked))
    })
    .await;
    for vm in ["qstop", "qpause", "qignore"] {
        assert!(seen.iter().any(|e| e.vm == vm && matches!(e.kind, EventKind::GuestPanicked)), "{vm}: no guest_panicked");
    }

    // stop: QEMU shut down (exit 0), the VM is crashed and, although its
    // policy is on-failure, not restarted. The stop request is handled
    // after the exit, so a restart would already be recorded.
    let crashed = seen.iter().find_map(|e| match &e.kind {
        EventKind::Phase { phase: VmPhase::Crashed { exit } } if e.vm == "qstop" => Some(*exit),
        _ => None,
    });
    assert_eq!(crashed.and_then(|x| x.code), Some(0), "panic=shutdown exits 0: {crashed:?}");
    c.stop("qstop", 1).await.expect("stop");
    let all = events_since(c, since).await;
    assert!(!all.iter().any(|e| e.vm == "qstop" && matches!(e.kind, EventKind::RestartScheduled { .. })), "on_panic = stop restarted");
    assert!(!process_exists(pids["qstop"]));

    // pause: the same process, frozen; a paused VM ends on the quit rung.
    assert!(process_exists(pids["qpause"]));
    assert_eq!(c.get("qpause").await.expect("get").phase, VmPhase::Paused);
    assert_eq!(c.stop("qpause", 30).await.expect("stop").rung, Some(Rung::Quit));

    // ignore: the guest kernel (panic=-1) reboots inside the same QEMU.
    wait_reboot_after_panic(c, "qignore", BOOT).await;
    let v = c.get("qignore").await.expect("get");
    assert_eq!((v.phase, v.pid), (VmPhase::Running, Some(pids["qignore"])), "ignore must leave the run alone");
    c.stop("qignore", 1).await.expect("stop");
    assert!(d.hypervisor_pids().is_empty());
}
