//! paddock-images with a real guest (TCG here): the guest mounts cloud-init
//! seeds in both formats, writes through a qcow2 overlay made in Rust, and
//! runs a service disk's launcher. The guest's init obeys
//! `paddock.cat_disk`, `paddock.write_disk` and `paddock.run_disk`
//! (scripts/guest/init). With a direct kernel boot there is no boot disk,
//! so the spec's extra disks are /dev/vda, /dev/vdb, ... in spec order.

mod common;

use common::*;
use paddock::WaitFor;
use paddock_images::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BOOT: u64 = 120;
const NASTY_HOSTNAME: &str = "a: b # c\n- d";

/// The test guest's spec with extra disks (path, readonly).
fn spec_with_disks(name: &str, switches: &str, disks: &[(&Path, bool)]) -> paddock::VmSpec {
    let mut v = serde_json::to_value(guest_spec(name, switches)).expect("spec json");
    v["disks"] = disks.iter().map(|(p, ro)| serde_json::json!({ "path": p, "readonly": ro })).collect();
    serde_json::from_value(v).expect("spec with disks")
}

/// The console between `begin` and `end` lines, with the serial line's
/// CRLF turned back into LF.
fn section(log: &str, begin: &str, end: &str) -> String {
    let log = log.replace("\r\n", "\n");
    let start = log.find(begin).unwrap_or_else(|| panic!("no {begin:?} in:\n{log}"));
    let body_start = start + log[start..].find('\n').expect("line end") + 1;
    let stop = body_start + log[body_start..].find(end).unwrap_or_else(|| panic!("no {end:?} in:\n{log}"));
    log[body_start..stop].to_string()
}

/// Files printed by `paddock.cat_disk`: "==> NAME <==" then the content
/// and one extra newline.
fn cat_files(section: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for part in section.split("==> ").skip(1) {
        let (name, rest) = part.split_once(" <==\n").expect("header");
        out.insert(name.to_string(), rest.strip_suffix('\n').unwrap_or(rest).to_string());
    }
    out
}

fn qemu_img(args: &[&str], path: &Path) -> String {
    let out = Command::new("qemu-img").args(args).arg(path).output().expect("run qemu-img (apt-get install qemu-utils)");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn sha256_file(p: &Path) -> String {
    Sha256::digest(std::fs::read(p).expect("read")).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_mounts_the_seed_as_iso_and_as_vfat() {
    let d = Daemon::start();
    let files = Seed {
        meta_data: MetaData { instance_id: InstanceId::derive("seed", "creation-1"), local_hostname: NASTY_HOSTNAME.into() },
        user_data: UserData::CloudConfig(CloudConfig {
            hostname: Some(NASTY_HOSTNAME.into()),
            users: vec![User { name: "ops".into(), ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3 ops@host".into()], ..Default::default() }],
            runcmd: vec![RunCmd::Argv(vec!["echo".into(), "it's \"quoted\"".into()])],
            ..Default::default()
        }),
        network_config: Some(NetworkConfig::default()),
    }
    .render()
    .expect("render");
    let iso = d.dir.path().join("seed.iso");
    let vfat = d.dir.path().join("seed.img");
    write_seed_image(&files, SeedFormat::Iso, &iso).expect("iso");
    write_seed_image(&files, SeedFormat::Vfat, &vfat).expect("vfat");

    let spec = spec_with_disks("seed", "paddock.cat_disk=/dev/vda,/dev/vdb", &[(&iso, true), (&vfat, true)]);
    d.client.up(&spec, WaitFor::Running, BOOT).await.expect("up");
    // The disk switches run before the ready marker: once it is there, their
    // output is complete (a needle can match a half-received line).
    let log = wait_console(&d.client, "seed", READY_MARKER, Duration::from_secs(BOOT)).await;

    for (dev, fs) in [("/dev/vda", "iso9660"), ("/dev/vdb", "vfat")] {
        assert!(log.contains(&format!("PADDOCK-CAT-BEGIN {dev} {fs}")), "{dev} not mounted as {fs}:\n{log}");
        let seen = cat_files(&section(&log, &format!("PADDOCK-CAT-BEGIN {dev}"), &format!("PADDOCK-CAT-END {dev}")));
        let want: BTreeMap<String, String> = files.entries().into_iter().map(|(n, c)| (n.to_string(), c.to_string())).collect();
        assert_eq!(seen, want, "{fs}: the guest read other files or other bytes");
        // Parsed back, the hostname is exactly what went in: no key injected.
        let md: BTreeMap<String, String> = serde_norway::from_str(&seen["meta-data"]).expect("meta-data yaml");
        assert_eq!(md.len(), 2, "{md:?}");
        assert_eq!(md["local-hostname"], NASTY_HOSTNAME);
        let ud: serde_norway::Value = serde_norway::from_str(&seen["user-data"]).expect("user-data yaml");
        assert_eq!(ud["hostname"].as_str(), Some(NASTY_HOSTNAME));
    }
    d.client.remove("seed", true).await.expect("rm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_writes_through_a_rust_overlay_and_the_base_is_untouched() {
    let d = Daemon::start();
    let base = d.dir.path().join("base.raw");
    let pattern: Vec<u8> = (0..16u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&base, &pattern).expect("base");
    let base_sha = sha256_file(&base);
    let overlay = d.dir.path().join("vm.qcow2");
    create_overlay(&base, &overlay, Some(64 << 20)).expect("overlay");

    let spec = spec_with_disks("ovl", "paddock.write_disk=/dev/vda", &[(&overlay, false)]);
    d.client.up(&spec, WaitFor::Running, BOOT).await.expect("up");
    let log = wait_console(&d.client, "ovl", READY_MARKER, Duration::from_secs(BOOT)).await;
    assert!(log.contains("PADDOCK-WRITE-DONE /dev/vda"), "{log}");
    d.client.stop("ovl", 30).await.expect("stop");

    let check = qemu_img(&["check", "--output=json"], &overlay);
    let v: serde_json::Value = serde_json::from_str(&check).expect("check json");
    for k in ["corruptions", "leaks", "check-errors"] {
        assert_eq!(v.get(k).and_then(|x| x.as_u64()).unwrap_or(0), 0, "{k}: {check}");
    }
    let info: serde_json::Value = serde_json::from_str(&qemu_img(&["info", "--output=json"], &overlay)).expect("info");
    assert_eq!(info["backing-filename"], base.to_str().expect("utf-8 path"));
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(info["virtual-size"], 64u64 << 20);
    assert_eq!(sha256_file(&base), base_sha, "the base image changed");

    // The guest's write is in the overlay; everything else reads as the base.
    let flat = d.dir.path().join("flat.raw");
    let out = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&overlay).arg(&flat).output().expect("convert");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let flat = std::fs::read(&flat).expect("flat");
    let marker = b"PADDOCK-WRITTEN-BY-GUEST";
    assert_eq!(&flat[1 << 20..(1 << 20) + marker.len()], marker);
    assert_eq!(&flat[..1 << 20], &pattern[..1 << 20]);
    assert_eq!(&flat[(1 << 20) + 512..16 << 20], &pattern[(1 << 20) + 512..]);
    assert!(flat[16 << 20..].iter().all(|b| *b == 0), "the grown part reads as zeros");
    d.client.remove("ovl", true).await.expect("rm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_runs_the_service_disk_launcher_with_exact_arguments() {
    let d = Daemon::start();
    let tree = d.dir.path().join("app");
    std::fs::create_dir_all(tree.join("deep dir/nested")).expect("tree");
    std::fs::write(tree.join("deep dir/nested/hello.txt"), "hello from a nested file\n").expect("file");
    let values = ["plain", "two  spaces", "it's", "\"double\"", "$(id) `id` $HOME", "a'b\"c d", "", "new\nline"];
    let mut args = vec![
        "-c".to_string(),
        "printf '[%s]\\n' \"$@\"; printf '<%s>\\n' \"$GREETING\"; cat 'opt/app/deep dir/nested/hello.txt'; cat etc/conf".to_string(),
        "launcher".to_string(),
    ];
    args.extend(values.iter().map(|s| s.to_string()));
    let disk = ServiceDisk {
        label: "SERVICE".into(),
        files: vec![("etc/conf".into(), b"key = 'value'\n".to_vec())],
        trees: vec![(tree, "opt/app".into())],
        launcher: Some(Launcher {
            program: "sh".into(),
            args,
            env: vec![("GREETING".into(), "it's \"quoted\" $HOME".into())],
            workdir: None,
        }),
    };
    let img = d.dir.path().join("svc.img");
    disk.write(&img).expect("service disk");

    let spec = spec_with_disks("svc", "paddock.run_disk=/dev/vda", &[(&img, true)]);
    d.client.up(&spec, WaitFor::Running, BOOT).await.expect("up");
    let log = wait_console(&d.client, "svc", READY_MARKER, Duration::from_secs(BOOT)).await;
    let got = section(&log, "PADDOCK-RUN-BEGIN", "PADDOCK-RUN-END");
    let mut want: String = values.iter().map(|v| format!("[{v}]\n")).collect();
    want.push_str("<it's \"quoted\" $HOME>\nhello from a nested file\nkey = 'value'\n");
    assert_eq!(got, want);
    assert!(log.replace("\r\n", "\n").contains("PADDOCK-RUN-END rc=0"), "{log}");
    d.client.remove("svc", true).await.expect("rm");
}
