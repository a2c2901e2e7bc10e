//! Supervisor overhead of `up`, paired in one run:
//!   (a) API request -> `up` answers, which it does when QMP reports the
//!       guest `running`;
//!   (b) the same QEMU argv spawned directly, until QMP reports `running`.
//! overhead = a - b, median of 20 pairs. Then the daemon's RSS with 10 VMs.
//!
//! Run: cargo bench --bench up_overhead   (needs the test guest; see README)

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use paddock::WaitFor;
use paddock_actors::qemu::qmp::QmpClient;
use std::time::{Duration, Instant};

const PAIRS: usize = 20;



async fn direct(argv: &[String], qmp: &std::path::Path, dir: &std::path::Path) -> f64 {
    std::fs::create_dir_all(dir).expect("dir");
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn qemu");
    let mut c = QmpClient::connect(qmp, Duration::from_secs(30)).await.expect("qmp");
    loop {
        let s = c.execute("query-status", None).await.expect("query-status");
        if s["status"] == "running" {
            break;
        }
    }
    let took = t0.elapsed().as_secs_f64() * 1e3;
    let _ = c.execute("quit", None).await;
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(dir);
    took
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    block_on(async {
        let d = Daemon::start();
        let c = &d.client;
        let (mut a, mut b, mut over) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..PAIRS {
            let name = format!("bench-{i}");
            let spec = guest_spec(&name, "");
            let t0 = Instant::now();
            let info = c.up(&spec, WaitFor::Running, 120).await.expect("up");
            let ta = t0.elapsed().as_secs_f64() * 1e3;
            let pid = info.pid.expect("pid");
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
            let argv: Vec<String> = raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
            c.stop(&name, 0).await.expect("stop");
            c.remove(&name, false).await.expect("rm");
            let vm_dir = d.run_dir().join(&name);
            let tb = direct(&argv, &vm_dir.join("control.sock"), &vm_dir).await;
            a.push(ta);
            b.push(tb);
            over.push(ta - tb);
        }
        println!("up overhead over {PAIRS} pairs (ms): supervised median {:.1}, direct median {:.1}, overhead median {:.1}", median(&mut a), median(&mut b), median(&mut over));

        let daemon_pid = d.child.as_ref().expect("daemon").id();
        let idle = rss_kib(daemon_pid);
        for i in 0..10 {
            c.up(&guest_spec(&format!("rss-{i}"), ""), WaitFor::Running, 300).await.expect("up");
        }
        let busy = rss_kib(daemon_pid);
        println!("daemon RSS: idle {idle} KiB, with 10 VMs {busy} KiB ({} KiB per VM)", busy.saturating_sub(idle) / 10);
        for i in 0..10 {
            c.remove(&format!("rss-{i}"), true).await.expect("rm");
        }
    });
}
