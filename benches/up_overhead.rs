//! Supervisor overhead of `up`, paired in one run, for a kernel boot and
//! for a disk image with a cloud-init seed (user networking both):
//!   (cli) `paddock up FILE` from the CLI binary until it exits, which it
//!         does when QMP reports the guest `running`;
//!   (api) the same through the API client;
//!   (direct) the same QEMU argv spawned directly (its disk files copied
//!         beforehand), until QMP reports `running`.
//! overhead = cli - direct and api - direct, median of PADDOCK_BENCH_PAIRS
//! (default 20) pairs. Then the daemon's RSS with 10 VMs. Prints the
//! machine load (/proc/loadavg) with the numbers: they mean little on a
//! busy host.
//!
//! Run: cargo bench --bench up_overhead   (needs the test guest and the
//! Debian image; see README)

#[path = "../tests/common/mod.rs"]
mod common;

use common::debian::*;
use common::*;
use paddock::spec::VmSpec;
use paddock::WaitFor;
use paddock_actors::qemu::qmp::QmpClient;
use std::path::Path;
use std::time::{Duration, Instant};

async fn direct(argv: &[String], qmp: &Path) -> f64 {
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
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
    took
}

fn cli_up(d: &Daemon, file: &Path) -> f64 {
    let t0 = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("--socket")
        .arg(d.client.socket())
        .arg("up")
        .arg(file)
        .args(["--wait", "running"])
        .output()
        .expect("paddock up");
    let took = t0.elapsed().as_secs_f64() * 1e3;
    assert!(out.status.success(), "paddock up: {}", String::from_utf8_lossy(&out.stderr));
    took
}

/// Copies every file of `from` into `to` (the VM's disks, for the direct
/// run) and returns `argv` with the paths moved there.
fn moved_argv(argv: &[String], from: &Path, run_dir: &Path, to: &Path) -> Vec<String> {
    std::fs::create_dir_all(to.join("run")).expect("dir");
    if let Ok(rd) = std::fs::read_dir(from) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::copy(e.path(), to.join(e.file_name())).expect("copy disk");
            }
        }
    }
    let (from, run_dir, to) = (from.to_string_lossy().into_owned(), run_dir.to_string_lossy().into_owned(), to.to_string_lossy().into_owned());
    argv.iter().map(|a| a.replace(&from, &to).replace(&run_dir, &format!("{to}/run"))).collect()
}

fn argv_of(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

async fn pairs(d: &Daemon, label: &str, n: usize, make: impl Fn(&str) -> VmSpec) {
    let c = &d.client;
    let (mut cli, mut api, mut dir, mut o_cli, mut o_api) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        // CLI run (its argv is the direct run's).
        let name = format!("{label}-cli-{i}");
        let spec = make(&name);
        let file = d.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, toml::to_string(&spec).expect("toml")).expect("spec file");
        let t_cli = cli_up(d, &file);
        let info = c.get(&name).await.expect("inspect");
        let argv = argv_of(info.pid.expect("pid"));
        c.stop(&name, 0).await.expect("stop");
        let vm_dir = d.state_dir().join("vms").join(&name);
        let direct_dir = d.dir.path().join(format!("direct-{label}-{i}"));
        let dargv = moved_argv(&argv, &vm_dir, &d.run_dir().join(&name), &direct_dir);
        c.remove_with(&name, false, true).await.expect("rm");

        let name = format!("{label}-api-{i}");
        let t0 = Instant::now();
        c.up(&make(&name), WaitFor::Running, 120).await.expect("up");
        let t_api = t0.elapsed().as_secs_f64() * 1e3;
        c.remove_with(&name, true, true).await.expect("rm");

        let qmp = dargv.windows(2).find(|w| w[0] == "-qmp").and_then(|w| w[1].strip_prefix("unix:")?.split(',').next().map(String::from)).expect("-qmp in argv");
        let t_dir = direct(&dargv, Path::new(&qmp)).await;
        let _ = std::fs::remove_dir_all(&direct_dir);
        cli.push(t_cli);
        api.push(t_api);
        dir.push(t_dir);
        o_cli.push(t_cli - t_dir);
        o_api.push(t_api - t_dir);
    }
    println!(
        "{label}: {n} pairs (ms, medians): cli {:.1}, api {:.1}, direct {:.1}; overhead cli {:.1}, api {:.1}",
        median(&mut cli),
        median(&mut api),
        median(&mut dir),
        median(&mut o_cli),
        median(&mut o_api)
    );
}

fn main() {
    let n: usize = std::env::var("PADDOCK_BENCH_PAIRS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    block_on(async {
        let d = Daemon::start();
        let c = &d.client;
        println!("load before: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
        pairs(&d, "kernel", n, |name| {
            let mut s = guest_spec(name, "");
            s.network.mode = paddock::spec::NetworkMode::User;
            s
        })
        .await;
        seed_image_cache(&d);
        let (_, public) = ssh_key(d.dir.path());
        pairs(&d, "image-seed", n, |name| {
            let mut s = debian_spec(name, &public);
            s.ready_pattern = None;
            s.ready_probe = None;
            s.network.mode = paddock::spec::NetworkMode::User;
            s
        })
        .await;
        println!("load after: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());

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
