//! Time to ready from a booted snapshot vs a cold boot, paired.
//!
//! busybox guest: `up --wait ready` of a cold guest (its console prints the
//! ready marker) vs `up --wait ready` of the same spec with
//! `boot.snapshot` (a snapshot taken after the marker); pairs alternate
//! which goes first.
//! Debian cloud guest (PADDOCK_BENCH_DEBIAN=1; root, the guest built by
//! scripts/build-debian-guest.sh): a cold boot to `ready` (cloud-init's
//! final message and SSH's port) and to `ssh true`, vs a restore of its
//! snapshot under another name and SSH port to the same two points.
//!
//! Run: cargo bench --bench snapshot_restore   (PADDOCK_BENCH_PAIRS=N,
//! default 3 busybox pairs; the Debian side is one pair.)

#[path = "../tests/common/mod.rs"]
mod common;

use common::debian::*;
use common::*;
use paddock::{AfterSnapshot, WaitFor};
use std::time::{Duration, Instant};

async fn timed_up(d: &Daemon, spec: &paddock::VmSpec, timeout: u64) -> f64 {
    let t0 = Instant::now();
    d.client.up(spec, WaitFor::Ready, timeout).await.unwrap_or_else(|e| panic!("up {}: {e}\n{}", spec.name, d.log()));
    t0.elapsed().as_secs_f64()
}

async fn busybox(d: &Daemon, pairs: usize) {
    let c = &d.client;
    c.up(&guest_spec("template", ""), WaitFor::Ready, 300).await.expect("up template");
    c.snapshot("template", Some("booted"), AfterSnapshot::Stop).await.expect("snapshot");
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let cold_spec = guest_spec(&format!("cold-{i}"), "");
        let mut warm_spec = guest_spec(&format!("warm-{i}"), "");
        warm_spec.boot.snapshot = Some("booted".into());
        let (a, b) = if i % 2 == 0 {
            let a = timed_up(d, &cold_spec, 300).await;
            (a, timed_up(d, &warm_spec, 300).await)
        } else {
            let b = timed_up(d, &warm_spec, 300).await;
            (timed_up(d, &cold_spec, 300).await, b)
        };
        println!("busybox pair {i}: cold boot {a:.2} s, from snapshot {b:.3} s ({:.1}%)", b / a * 100.0);
        cold.push(a);
        warm.push(b);
        for vm in [&cold_spec.name, &warm_spec.name] {
            c.remove(vm, true).await.expect("rm");
        }
    }
    let (a, b) = (median(&mut cold), median(&mut warm));
    println!("busybox guest, time to ready: cold {a:.2} s, from snapshot {b:.3} s = {:.1}% of cold (median of {pairs} pairs)", b / a * 100.0);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

async fn until_ssh(ssh: &Ssh, t0: Instant) -> f64 {
    let deadline = t0 + Duration::from_secs(BOOT_SECS);
    // The VM is ready (its probe found port 22 answering): SSH takes a
    // few tries at most, each bounded by ssh's own ConnectTimeout.
    while ssh.run("true").await.0 != 0 {
        assert!(Instant::now() < deadline, "no SSH within {BOOT_SECS} s");
    }
    t0.elapsed().as_secs_f64()
}

async fn debian_pair(d: &Daemon) {
    seed_image_cache(d);
    let (key, public) = ssh_key(d.dir.path());
    let spec = |name: &str, port: u16| {
        let mut s = debian_spec(name, &public);
        s.network.mode = paddock::spec::NetworkMode::User;
        s.network.forwards = vec![paddock_net::PortForward { host: port, guest: 22, protocol: paddock_net::Protocol::Tcp }];
        s
    };
    let (p1, p2) = (free_port(), free_port());
    let t0 = Instant::now();
    let cold_ready = timed_up(d, &spec("deb", p1), BOOT_SECS).await;
    let cold_ssh = until_ssh(&Ssh { key: key.clone(), host: "127.0.0.1".into(), port: p1, netns: None }, t0).await;
    d.client.snapshot("deb", Some("deb-booted"), AfterSnapshot::Stop).await.expect("snapshot deb");
    let mut clone = spec("deb-clone", p2);
    clone.boot.snapshot = Some("deb-booted".into());
    let t0 = Instant::now();
    let warm_ready = timed_up(d, &clone, BOOT_SECS).await;
    let warm_ssh = until_ssh(&Ssh { key, host: "127.0.0.1".into(), port: p2, netns: None }, t0).await;
    let bytes = d.client.snapshots().await.expect("ls").into_iter().find(|s| s.name == "deb-booted").map(|s| s.bytes).unwrap_or(0);
    println!(
        "Debian guest: cold boot ready {cold_ready:.1} s, ssh {cold_ssh:.1} s | from snapshot ({} MiB) ready {warm_ready:.2} s ({:.1}%), ssh {warm_ssh:.2} s ({:.1}%)",
        bytes >> 20,
        warm_ready / cold_ready * 100.0,
        warm_ssh / cold_ssh * 100.0
    );
}

fn main() {
    let pairs: usize = std::env::var("PADDOCK_BENCH_PAIRS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    block_on(async {
        let d = Daemon::start();
        busybox(&d, pairs).await;
        if std::env::var_os("PADDOCK_BENCH_DEBIAN").is_some() {
            debian_pair(&d).await;
        } else {
            println!("Debian guest: skipped (set PADDOCK_BENCH_DEBIAN=1)");
        }
    });
}
