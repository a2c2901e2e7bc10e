//! Boot of the real Debian cloud guest, through Paddock vs the same QEMU
//! argv run directly, paired in one run (alternating which goes first):
//!   boot to SSH:        request -> `ssh ops@127.0.0.1 true` succeeds;
//!   boot to cloud-init: request -> `cloud-init status --wait` says done.
//! Paddock's side is `up` (user-mode networking, an SSH forward, waiting
//! for `running` only); the direct side runs the argv Paddock used, with a
//! fresh overlay and data disk, the same seed and another forward port.
//! Both poll SSH the same way (once a second).
//!
//! Run: cargo bench --bench real_guest_boot   (needs root and the Debian
//! guest, built by scripts/build-debian-guest.sh; PADDOCK_BENCH_PAIRS=N,
//! default 2: every pair is two first boots of a few minutes each;
//! PADDOCK_BENCH_FIRST=1 starts with a pair whose direct run goes first.)

#[path = "../tests/common/mod.rs"]
mod common;

use common::debian::*;
use common::*;
use paddock::WaitFor;
use std::path::Path;
use std::time::{Duration, Instant};

struct Times {
    ssh: f64,
    cloud_init: f64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// From `t0`: until SSH answers, then until cloud-init is done.
async fn measure(ssh: &Ssh, t0: Instant) -> Times {
    let deadline = t0 + Duration::from_secs(BOOT_SECS);
    loop {
        let (code, _) = ssh.run("true").await;
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no SSH within {BOOT_SECS} s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ssh_s = t0.elapsed().as_secs_f64();
    let out = ssh.ok("cloud-init status --wait").await;
    assert!(out.contains("status: done"), "cloud-init: {out}");
    Times { ssh: ssh_s, cloud_init: t0.elapsed().as_secs_f64() }
}

fn qemu_img(args: &[&str]) {
    let st = std::process::Command::new("qemu-img").args(args).stdout(std::process::Stdio::null()).status().expect("qemu-img");
    assert!(st.success(), "qemu-img {args:?}");
}

/// The argv of Paddock's QEMU with its files swapped for fresh ones in
/// `dir` (overlay, data disk; the seed copied) and its forward on `port`.
fn direct_argv(argv: &[String], vm_dir: &Path, run_dir: &Path, dir: &Path, old_port: u16, port: u16) -> Vec<String> {
    std::fs::create_dir_all(dir.join("run")).expect("dir");
    let base = debian().image.to_string_lossy().into_owned();
    qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base, &dir.join("root.qcow2").to_string_lossy()]);
    qemu_img(&["create", "-q", "-f", "qcow2", &dir.join("data.qcow2").to_string_lossy(), "1G"]);
    std::fs::copy(vm_dir.join("seed.iso"), dir.join("seed.iso")).expect("copy seed");
    let (vm_dir, run_dir) = (vm_dir.to_string_lossy().into_owned(), run_dir.to_string_lossy().into_owned());
    let d = dir.to_string_lossy().into_owned();
    argv.iter()
        .map(|a| {
            a.replace(&vm_dir, &d)
                .replace(&run_dir, &format!("{d}/run"))
                .replace(&format!("127.0.0.1:{old_port}-"), &format!("127.0.0.1:{port}-"))
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    common::median(v)
}

fn main() {
    let pairs: usize = std::env::var("PADDOCK_BENCH_PAIRS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    // PADDOCK_BENCH_FIRST=1 starts with an odd pair (the direct run first).
    let first: usize = std::env::var("PADDOCK_BENCH_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    block_on(async {
        let d = Daemon::start();
        let c = &d.client;
        seed_image_cache(&d);
        let (key, public) = ssh_key(d.dir.path());
        let (mut a_ssh, mut b_ssh, mut a_ci, mut b_ci) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in first..first + pairs {
            let name = format!("bench-deb-{i}");
            let port = free_port();
            let mut spec = debian_spec(&name, &public);
            spec.ready_pattern = None;
            spec.ready_probe = None;
            spec.network.mode = paddock::spec::NetworkMode::User;
            spec.network.forwards = vec![paddock_net::PortForward { host: port, guest: 22, protocol: paddock_net::Protocol::Tcp }];
            let ssh = Ssh { key: key.clone(), host: "127.0.0.1".into(), port, netns: None };
            let direct_first = i % 2 == 1;
            let mut direct_times = None;

            // Paddock's run; its argv is what the direct run uses.
            let t0 = Instant::now();
            let info = c.up(&spec, WaitFor::Running, BOOT_SECS).await.expect("up");
            let pid = info.pid.expect("pid");
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
            let argv: Vec<String> = raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe").to_string_lossy().into_owned();
            let direct_dir = d.dir.path().join(format!("direct-{i}"));
            let dport = free_port();
            let dargv = direct_argv(&argv[1..], &d.state_dir().join("vms").join(&name), &d.run_dir().join(&name), &direct_dir, port, dport);
            let dssh = Ssh { key: key.clone(), host: "127.0.0.1".into(), port: dport, netns: None };
            let run_direct = || async {
                let t0 = Instant::now();
                let mut child = tokio::process::Command::new(&exe)
                    .args(&dargv)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("spawn qemu");
                let t = measure(&dssh, t0).await;
                let _ = child.kill().await;
                t
            };
            if direct_first {
                // Paddock's VM waits, stopped, while the direct one boots.
                c.stop(&name, 0).await.expect("stop");
                direct_times = Some(run_direct().await);
                let t0b = Instant::now();
                c.remove_with(&name, true, true).await.expect("rm");
                let info = c.up(&spec, WaitFor::Running, BOOT_SECS).await.expect("up again");
                let _ = info;
                let t = measure(&ssh, t0b).await;
                a_ssh.push(t.ssh);
                a_ci.push(t.cloud_init);
            } else {
                let t = measure(&ssh, t0).await;
                a_ssh.push(t.ssh);
                a_ci.push(t.cloud_init);
                c.stop(&name, 0).await.expect("stop");
            }
            let b = match direct_times {
                Some(t) => t,
                None => run_direct().await,
            };
            b_ssh.push(b.ssh);
            b_ci.push(b.cloud_init);
            println!(
                "pair {i}: paddock ssh {:.1} s, cloud-init {:.1} s | direct ssh {:.1} s, cloud-init {:.1} s",
                a_ssh[a_ssh.len() - 1], a_ci[a_ci.len() - 1], b.ssh, b.cloud_init
            );
            let _ = c.remove_with(&name, true, true).await;
            let _ = std::fs::remove_dir_all(&direct_dir);
        }
        let (ma, mb) = (median(&mut a_ssh), median(&mut b_ssh));
        let (ca, cb) = (median(&mut a_ci), median(&mut b_ci));
        println!("boot to SSH:        paddock {ma:.1} s, direct {mb:.1} s, overhead {:+.2}% (median of {pairs} pairs)", (ma - mb) / mb * 100.0);
        println!("boot to cloud-init: paddock {ca:.1} s, direct {cb:.1} s, overhead {:+.2}% (median of {pairs} pairs)", (ca - cb) / cb * 100.0);
    });
}
