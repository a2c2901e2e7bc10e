//! Preparing one VM's disks: a qcow2 overlay on a base image, a 10 GiB
//! qcow2 data disk and a cloud-init seed ISO.
//!   Rust:      paddock-images (create_overlay, ensure_data_disk,
//!              Seed::render + write_seed_image)
//!   processes: qemu-img create x2 + genisoimage, as a shell-less
//!              supervisor would spawn them
//! Paired in one run (Rust then processes, 20 pairs, fresh files each
//! time); prints the medians and the ratio.
//!
//! Run: cargo bench --bench disk_prep   (needs qemu-utils and genisoimage)

use paddock_images::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PAIRS: usize = 20;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn seed_files(i: usize) -> SeedFiles {
    Seed {
        meta_data: MetaData { instance_id: InstanceId::derive("bench", &i.to_string()), local_hostname: "bench".into() },
        user_data: UserData::CloudConfig(CloudConfig {
            hostname: Some("bench".into()),
            users: vec![User { name: "ops".into(), ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3 ops@host".into()], ..Default::default() }],
            ..Default::default()
        }),
        network_config: Some(NetworkConfig::default()),
    }
    .render()
    .expect("render")
}

fn rust(dir: &Path, base: &Path, i: usize) {
    create_overlay(base, &dir.join("root.qcow2"), Some(20 << 30)).expect("overlay");
    ensure_data_disk(&dir.join("data.qcow2"), 10 << 30).expect("data disk");
    write_seed_image(&seed_files(i), SeedFormat::Iso, &dir.join("seed.iso")).expect("seed");
}

fn run(cmd: &mut Command) {
    let st = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().expect("spawn");
    assert!(st.success(), "{cmd:?} failed");
}

fn processes(dir: &Path, base: &Path, i: usize) {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(dir.join("root.qcow2"))
        .arg("20G"));
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(dir.join("data.qcow2")).arg("10G"));
    // The same seed content, written to files first as a process needs.
    let files = seed_files(i);
    let src = dir.join("seed-src");
    std::fs::create_dir_all(&src).expect("seed dir");
    for (name, content) in files.entries() {
        std::fs::write(src.join(name), content).expect("seed file");
    }
    run(Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(dir.join("seed.iso"))
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(&src));
}

fn main() {
    for tool in ["qemu-img", "genisoimage"] {
        if Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            eprintln!("disk_prep: {tool} is missing (apt-get install qemu-utils genisoimage); skipping");
            return;
        }
    }
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base.raw");
    std::fs::File::create(&base).and_then(|f| f.set_len(2 << 30)).expect("base");
    let (mut r, mut p) = (Vec::new(), Vec::new());
    for i in 0..PAIRS + 2 {
        let a = work.path().join(format!("rust-{i}"));
        let b = work.path().join(format!("proc-{i}"));
        std::fs::create_dir_all(&a).expect("dir");
        std::fs::create_dir_all(&b).expect("dir");
        let t = Instant::now();
        rust(&a, &base, i);
        let tr = t.elapsed();
        let t = Instant::now();
        processes(&b, &base, i);
        let tp = t.elapsed();
        if i >= 2 {
            // The first two pairs warm the page cache and the binaries.
            r.push(tr);
            p.push(tp);
        }
    }
    let (mr, mp) = (median(&mut r), median(&mut p));
    println!("disk preparation (overlay + 10 GiB data disk + seed ISO), median of {PAIRS} pairs:");
    println!("  rust (paddock-images):           {:>8.2} ms", mr.as_secs_f64() * 1e3);
    println!("  qemu-img x2 + genisoimage:       {:>8.2} ms", mp.as_secs_f64() * 1e3);
    println!("  ratio:                           {:>8.1}x faster in Rust", mp.as_secs_f64() / mr.as_secs_f64());
}
