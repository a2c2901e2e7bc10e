//! qcow2 overlays and data disks, seeds and service disks checked by
//! independent tools: `qemu-img check` / `qemu-img info --output=json`,
//! `isoinfo`, `fsck.vfat` and `mtools` (test oracles only; Paddock never
//! runs them). Tests skip with a message when a tool is missing.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use paddock_images::*;
use std::path::Path;
use std::process::Command;

fn tool(name: &str) -> bool {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipping: {name} is not installed (apt-get install qemu-utils genisoimage dosfstools mtools)");
    }
    found
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn info(p: &Path) -> serde_json::Value {
    serde_json::from_str(&run(Command::new("qemu-img").args(["info", "--output=json"]).arg(p))).unwrap()
}

fn check_clean(p: &Path) {
    let out = run(Command::new("qemu-img").args(["check", "--output=json"]).arg(p));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in ["corruptions", "leaks", "check-errors"] {
        assert_eq!(v.get(k).and_then(|x| x.as_u64()).unwrap_or(0), 0, "{k} in {out}");
    }
}

#[test]
fn overlay_on_raw_base_is_clean_and_larger_than_its_base() {
    if !tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0x5a; 3 << 20]).unwrap();
    let before = std::fs::read(&base).unwrap();
    let ov = dir.path().join("vm.qcow2");
    let made = create_overlay(&base, &ov, Some(1 << 30)).unwrap();
    assert_eq!(made.base_format, DiskFormat::Raw);
    check_clean(&ov);
    let i = info(&ov);
    assert_eq!(i["format"], "qcow2");
    assert_eq!(i["backing-filename"], base.to_str().unwrap());
    assert_eq!(i["backing-filename-format"], "raw");
    assert_eq!(i["virtual-size"], 1u64 << 30);
    // Reads fall through to the base: qemu-img compares equal on the base's range.
    let out = Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "qcow2"]).arg(&base).arg(&ov).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Images are identical") || out.status.code() == Some(0) || out.status.code() == Some(1));
    // Writes go to the overlay only.
    run(Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -P 0x11 0 64k"]).arg(&ov));
    check_clean(&ov);
    assert_eq!(std::fs::read(&base).unwrap(), before, "base changed");
    assert_eq!(backing_file(&ov).unwrap().as_deref(), Some(base.as_path()));
}

#[test]
fn overlay_on_qcow2_base_keeps_its_size_and_format() {
    if !tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("2G"));
    let ov = dir.path().join("vm.qcow2");
    create_overlay(&base, &ov, None).unwrap();
    check_clean(&ov);
    let i = info(&ov);
    assert_eq!(i["backing-filename-format"], "qcow2");
    assert_eq!(i["virtual-size"], 2u64 << 30);
    // An existing overlay is never replaced.
    assert!(matches!(create_overlay(&base, &ov, None), Err(Qcow2Error::Exists { .. })));
}

#[test]
fn data_disk_is_clean_and_survives_being_ensured_again() {
    if !tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("data.qcow2");
    assert_eq!(ensure_data_disk(&p, 10 << 30).unwrap(), DataDisk::Created { virtual_size: 10 << 30 });
    check_clean(&p);
    assert_eq!(info(&p)["virtual-size"], 10u64 << 30);
    assert!(info(&p).get("backing-filename").is_none());
    run(Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -P 0x42 1M 64k"]).arg(&p));
    assert_eq!(ensure_data_disk(&p, 10 << 30).unwrap(), DataDisk::Existing { virtual_size: 10 << 30 });
    let out = run(Command::new("qemu-io").args(["-f", "qcow2", "-c", "read -P 0x42 1M 64k"]).arg(&p));
    assert!(!out.contains("Pattern verification failed"), "data lost: {out}");
    check_clean(&p);
}

fn seed_files() -> SeedFiles {
    Seed {
        meta_data: MetaData { instance_id: InstanceId::derive("web", "n"), local_hostname: "a: b # c\n- d".into() },
        user_data: UserData::CloudConfig(CloudConfig { hostname: Some("web".into()), ..Default::default() }),
        network_config: Some(NetworkConfig::default()),
    }
    .render()
    .unwrap()
}

#[test]
fn seed_iso_has_volume_id_cidata_and_exact_names() {
    if !tool("isoinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("seed.iso");
    let files = seed_files();
    write_seed_image(&files, SeedFormat::Iso, &iso).unwrap();
    let d = run(Command::new("isoinfo").arg("-d").arg("-i").arg(&iso));
    assert!(d.contains("Volume id: cidata"), "{d}");
    for (name, content) in files.entries() {
        let got = run(Command::new("isoinfo").args(["-R", "-x", &format!("/{name}"), "-i"]).arg(&iso));
        assert_eq!(got, content, "{name}");
        let joliet = run(Command::new("isoinfo").args(["-J", "-x", &format!("/{name}"), "-i"]).arg(&iso));
        assert_eq!(joliet, content, "{name} (Joliet)");
    }
}

#[test]
fn seed_vfat_is_labelled_cidata_and_passes_fsck() {
    if !tool("fsck.vfat") || !tool("mtype") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("seed.img");
    let files = seed_files();
    write_seed_image(&files, SeedFormat::Vfat, &img).unwrap();
    run(Command::new("fsck.vfat").arg("-n").arg(&img));
    let label = run(Command::new("mlabel").arg("-s").arg("-i").arg(&img).arg("::"));
    assert!(label.contains("CIDATA"), "{label}");
    for (name, content) in files.entries() {
        let got = run(Command::new("mtype").arg("-i").arg(&img).arg(format!("::/{name}")));
        assert_eq!(got, content, "{name}");
    }
}

#[test]
fn service_disk_copies_trees_and_sizes_itself_from_content() {
    if !tool("fsck.vfat") || !tool("mtype") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    std::fs::create_dir_all(src.join("lib/deep er")).unwrap();
    std::fs::write(src.join("lib/deep er/blob.bin"), vec![9u8; 20 << 20]).unwrap();
    std::fs::write(src.join("README long name.txt"), b"hello").unwrap();
    let disk = ServiceDisk {
        label: "SVC".into(),
        files: vec![("etc/config.toml".into(), b"x = 1\n".to_vec())],
        trees: vec![(src.clone(), "opt/app".into())],
        launcher: Some(Launcher { program: "echo".into(), args: vec!["it's".into()], ..Default::default() }),
    };
    let out = dir.path().join("svc.img");
    let info = disk.write(&out).unwrap();
    assert_eq!(info.files, 4);
    assert!(info.size >= 20 << 20 && info.size < 24 << 20, "size {} not derived from content", info.size);
    run(Command::new("fsck.vfat").arg("-n").arg(&out));
    let blob = Command::new("mtype").arg("-i").arg(&out).arg("::/opt/app/lib/deep er/blob.bin").output().unwrap();
    assert_eq!(blob.stdout.len(), 20 << 20);
    let launcher = run(Command::new("mtype").arg("-i").arg(&out).arg(format!("::/{LAUNCHER_NAME}")));
    assert!(launcher.contains(r"exec 'echo' 'it'\''s'"), "{launcher}");
}

#[test]
fn large_service_disk_is_fat32_and_checks_clean() {
    if !tool("fsck.vfat") || !tool("mtype") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    std::fs::create_dir_all(src.join("sub/dir")).unwrap();
    // Sparse on the host; 130 MiB of zeros on the FAT volume.
    std::fs::File::create(src.join("sub/dir/zeros.bin")).unwrap().set_len(130 << 20).unwrap();
    std::fs::write(src.join("sub/small.txt"), b"small").unwrap();
    let disk = ServiceDisk { label: "BIG".into(), trees: vec![(src, "".into())], ..Default::default() };
    let out = dir.path().join("big.img");
    let info = disk.write(&out).unwrap();
    assert!(info.size >= 130 << 20, "{}", info.size);
    let fsck = run(Command::new("fsck.vfat").args(["-n", "-v"]).arg(&out));
    assert!(fsck.contains("32 bit entries"), "expected FAT32: {fsck}");
    assert_eq!(run(Command::new("mtype").arg("-i").arg(&out).arg("::/sub/small.txt")), "small");
}
