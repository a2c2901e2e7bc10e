//! Supervision numbers, with the fake hypervisor (a real process per VM):
//!   crash detection: kill -9 of the hypervisor -> Crashed event on the
//!     API's event stream, median of 50;
//!   adoption: 200 hypervisors running, daemon start -> READY=1;
//!   memory: daemon RSS with 500 supervised VMs, per VM over idle.
//!
//! Run: cargo bench --bench supervision

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use paddock::{VmPhase, WaitFor};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};



async fn up_many(d: &Daemon, prefix: &str, n: usize) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = d.client.clone();
        let spec = fake_spec(d, &format!("{prefix}-{i}"));
        set.spawn(async move { c.up(&spec, WaitFor::Ready, 120).await.map(drop) });
        // Keep a bounded number in flight: 2 cores.
        while set.len() >= 16 {
            set.join_next().await.expect("task").expect("join").expect("up");
        }
    }
    while let Some(r) = set.join_next().await {
        r.expect("join").expect("up");
    }
}

fn main() {
    crash_detection();
    adoption_and_memory();
}

fn crash_detection() {
    block_on(async {
        let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
        let c = &d.client;
        c.up(&fake_spec(&d, "crashy"), WaitFor::Running, 30).await.expect("up");
        let mut lat = Vec::new();
        for _ in 0..50 {
            let pid = c.get("crashy").await.expect("get").pid.expect("pid");
            let since = last_seq(c).await;
            // Subscribed once this returns: the kill cannot be missed.
            let mut events = subscribe(c, since).await;
            let t0 = Instant::now();
            // SAFETY: kill(2) on the fake hypervisor we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            events.until(Duration::from_secs(10), |e| is_phase(e, "crashy", |p| matches!(p, VmPhase::Crashed { .. }))).await;
            lat.push(t0.elapsed().as_secs_f64() * 1e3);
            c.start("crashy", WaitFor::Running, 30).await.expect("start again");
        }
        println!("crash detection (kill -9 -> Crashed event), 50 runs: median {:.2} ms, max {:.2} ms", median(&mut lat), lat[lat.len() - 1]);
    });
}

fn adoption_and_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    let notify_env = notify_path.to_string_lossy().into_owned();
    let mut d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[("NOTIFY_SOCKET", notify_env.as_str())]);
    let mut buf = [0u8; 256];
    notify.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let _ = notify.recv(&mut buf); // READY=1 of the first start
    let daemon_pid = d.child.as_ref().expect("daemon").id();
    let idle = rss_kib(daemon_pid);

    block_on(up_many(&d, "adopt", 200));
    d.kill9();
    let t0 = Instant::now();
    // spawn() returns once the API answers; READY=1 may come before that.
    d.spawn();
    let ready_at = loop {
        let n = notify.recv(&mut buf).expect("no READY=1 within 30 s");
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break Instant::now();
        }
    };
    let listed = block_on(d.client.list()).expect("list");
    let adopted = listed.iter().filter(|v| v.phase == VmPhase::Running).count();
    println!("adoption: {adopted} of 200 VMs adopted; daemon start -> READY=1 in {:.0} ms", ready_at.duration_since(t0).as_secs_f64() * 1e3);

    let daemon_pid = d.child.as_ref().expect("daemon").id();
    block_on(up_many(&d, "mem", 300));
    // Every VM is Ready: its control connection and console pump are up.
    let busy = rss_kib(daemon_pid);
    let n = block_on(d.client.list()).expect("list").len() as u64;
    println!("memory: idle daemon {idle} KiB, with {n} VMs {busy} KiB, {} KiB per VM", busy.saturating_sub(idle) / n.max(1));
}
