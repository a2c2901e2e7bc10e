//! A `/metrics` scrape with 500 VMs on the fake hypervisor (a real process
//! per VM, so every scrape reads 500 processes' /proc files): time per
//! scrape over the daemon's socket (median and max of 20) and the size of
//! the exposition. Targets: under 50 ms and under 2 MiB.
//!
//! Run: cargo bench --bench metrics_scrape

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use paddock::WaitFor;
use std::time::Instant;

const VMS: usize = 500;
const SCRAPES: usize = 20;

fn main() {
    block_on(async {
        let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..VMS {
            let c = d.client.clone();
            let spec = fake_spec(&d, &format!("m-{i}"));
            set.spawn(async move { c.up(&spec, WaitFor::Running, 120).await.map(drop) });
            // A bounded number in flight: 2 cores.
            while set.len() >= 16 {
                set.join_next().await.expect("task").expect("join").expect("up");
            }
        }
        while let Some(r) = set.join_next().await {
            r.expect("join").expect("up");
        }
        println!("{VMS} fake VMs up in {:.1} s", t0.elapsed().as_secs_f64());
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..SCRAPES {
            let t = Instant::now();
            let text = d.client.metrics().await.expect("scrape");
            times.push(t.elapsed().as_secs_f64() * 1e3);
            size = text.len();
            assert!(text.contains(&format!("vm=\"m-{}\"", VMS - 1)), "the scrape lacks a VM");
        }
        let max = times.iter().cloned().fold(0.0, f64::max);
        println!(
            "/metrics with {VMS} VMs, {SCRAPES} scrapes: median {:.1} ms, max {max:.1} ms (target < 50 ms); {:.0} KiB, {} lines (target < 2048 KiB)",
            median(&mut times),
            size as f64 / 1024.0,
            d.client.metrics().await.expect("scrape").lines().count()
        );
    });
}
