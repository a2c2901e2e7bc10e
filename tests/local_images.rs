//! Local images: a qcow2 file named by path as `boot.image` is imported
//! into the cache by content and the guest boots through its own overlay,
//! never writing the file; `image import` and `image pull` decompress
//! zstd and xz images.

mod common;

use common::*;
use http_body_util::BodyExt as _;
use paddock::WaitFor;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BOOT: u64 = 120;

fn sha256_file(p: &Path) -> String {
    Sha256::digest(std::fs::read(p).expect("read")).iter().map(|b| format!("{b:02x}")).collect()
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("run qemu-img (apt-get install qemu-utils)");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A 16 MiB qcow2 whose raw content is a byte pattern.
fn pattern_qcow2(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let raw = dir.join("pattern.raw");
    let pattern: Vec<u8> = (0..16u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&raw, &pattern).expect("raw");
    let qcow2 = dir.join("base.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw.to_str().expect("utf-8"), qcow2.to_str().expect("utf-8")]);
    (qcow2, pattern)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_qcow2_boots_through_its_overlay_and_is_never_written() {
    let d = Daemon::start();
    let (base, pattern) = pattern_qcow2(d.dir.path());
    let base_sha = sha256_file(&base);
    let base_mtime = std::fs::metadata(&base).expect("meta").modified().expect("mtime");

    let mut spec = guest_spec("local", "paddock.write_disk=/dev/vda");
    spec.boot.image = Some(base.to_string_lossy().into_owned());
    let info = d.client.up(&spec, WaitFor::Running, BOOT).await.expect("up");
    assert_eq!(info.spec.boot.image.as_deref(), Some(format!("sha256:{base_sha}").as_str()), "the spec names the image by content");
    let log = wait_console(&d.client, "local", READY_MARKER, Duration::from_secs(BOOT)).await;
    assert!(log.contains("PADDOCK-WRITE-DONE /dev/vda"), "{log}");
    d.client.stop("local", 30).await.expect("stop");

    assert_eq!(sha256_file(&base), base_sha, "the local image was written");
    assert_eq!(std::fs::metadata(&base).expect("meta").modified().expect("mtime"), base_mtime);
    let list = d.client.image_list().await.expect("ls");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((list[0].sha256.as_str(), list[0].used_by.clone()), (base_sha.as_str(), vec!["local".to_string()]));
    let overlay = d.state_dir().join("vms/local/root.qcow2");
    let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&overlay).output().expect("qemu-img");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["backing-filename"], list[0].path.to_string_lossy().as_ref(), "the overlay is on the cached copy");

    // The guest's write is in the overlay; the rest reads as the base.
    let flat = d.dir.path().join("flat.raw");
    qemu_img(&["convert", "-O", "raw", overlay.to_str().expect("utf-8"), flat.to_str().expect("utf-8")]);
    let flat = std::fs::read(&flat).expect("flat");
    let marker = b"PADDOCK-WRITTEN-BY-GUEST";
    assert_eq!(&flat[1 << 20..(1 << 20) + marker.len()], marker);
    assert_eq!(&flat[..1 << 20], &pattern[..1 << 20]);

    // A second VM from the same file reuses the cached copy.
    let mut again = spec.clone();
    again.name = "local2".into();
    d.client.up(&again, WaitFor::Running, BOOT).await.expect("up again");
    assert_eq!(d.client.image_list().await.expect("ls").len(), 1);
    d.client.remove("local2", true).await.expect("rm");
    d.client.remove("local", true).await.expect("rm");
    assert!(!overlay.exists());

    // A missing file is refused naming the field, and nothing is created.
    spec.boot.image = Some("/nonexistent/base.qcow2".into());
    let e = d.client.up(&spec, WaitFor::Running, BOOT).await.expect_err("missing image");
    assert!(e.to_string().contains("boot.image") && e.to_string().contains("/nonexistent/base.qcow2"), "{e}");
    assert!(d.db_vm_names().is_empty());
    spec.boot.image = Some("base.qcow2".into());
    let e = d.client.up(&spec, WaitFor::Running, BOOT).await.expect_err("relative image");
    assert!(e.to_string().contains("boot.image"), "{e}");
}

fn serve(body: Vec<u8>) -> String {
    serve_bytes(body, "base.qcow2.xz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_images_are_decompressed_on_import_and_pull() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let (base, _) = pattern_qcow2(d.dir.path());
    let plain = std::fs::read(&base).expect("read");
    let zst_path = d.dir.path().join("base.qcow2.zst");
    std::fs::write(&zst_path, zstd::encode_all(&plain[..], 3).expect("zstd")).expect("write");

    // Through the CLI, with a relative path.
    let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["--socket", d.client.socket().to_str().expect("utf-8"), "--json", "image", "import", "base.qcow2.zst"])
        .current_dir(d.dir.path())
        .output()
        .expect("paddock image import");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(img["sha256"], sha256_file(&zst_path), "named by the file given");
    let cached = std::fs::read(img["path"].as_str().expect("path")).expect("cached");
    assert!(cached == plain, "the cached image is the decompressed qcow2");

    let mut xz = Vec::new();
    xz2::read::XzEncoder::new(&plain[..], 3).read_to_end(&mut xz).expect("xz");
    let xz_sha: String = Sha256::digest(&xz).iter().map(|b| format!("{b:02x}")).collect();
    let body = d.client.image_pull(&serve(xz), &xz_sha).await.expect("pull");
    let text = String::from_utf8_lossy(&body.collect().await.expect("body").to_bytes()).into_owned();
    assert!(text.lines().last().is_some_and(|l| l.contains("\"image\"")), "{text}");
    let list = d.client.image_list().await.expect("ls");
    let pulled = list.iter().find(|i| i.sha256 == xz_sha).expect("pulled image listed");
    assert!(std::fs::read(&pulled.path).expect("read") == plain, "the pulled xz is decompressed");
    assert_eq!(pulled.size, plain.len() as u64);

    // Not a file: the error names the field; the daemon keeps serving.
    let e = d.client.image_import(d.dir.path()).await.expect_err("a directory");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let e = d.client.image_import(Path::new("relative.img")).await.expect_err("relative");
    assert!(e.to_string().contains("path"), "{e}");
    assert_eq!(d.client.image_list().await.expect("ls").len(), 2);
}
