//! Images through the daemon: `image pull` from a loopback HTTP server,
//! a VM booting from its own overlay of the pulled image, and a VM with a
//! cloud-init seed and a data disk made from its spec.

mod common;

use common::*;
use http_body_util::BodyExt as _;
use paddock::WaitFor;
use std::time::Duration;

fn serve(body: Vec<u8>) -> String {
    serve_bytes(body, "base.img")
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(data))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_then_boot_from_an_overlay_and_refuse_removing_a_used_image() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let base = vec![0x5au8; 4 << 20];
    let sha = sha256_hex(&base);
    let url = serve(base);
    let body = d.client.image_pull(&url, &sha).await.expect("pull");
    let text = String::from_utf8_lossy(&body.collect().await.expect("body").to_bytes()).into_owned();
    assert!(text.lines().last().is_some_and(|l| l.contains("\"image\"")), "{text}");
    let list = d.client.image_list().await.expect("ls");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].sha256, sha);

    // A wrong checksum is an error and leaves nothing.
    let body = d.client.image_pull(&url, &"0".repeat(64)).await.expect("pull");
    let text = String::from_utf8_lossy(&body.collect().await.expect("body").to_bytes()).into_owned();
    assert!(text.contains("\"error\"") && text.contains(&sha), "expected vs got: {text}");
    assert_eq!(d.client.image_list().await.expect("ls").len(), 1);

    let mut spec = fake_spec(&d, "fromimage");
    spec.boot.kernel = None;
    spec.boot.image = Some(format!("sha256:{sha}"));
    spec.boot.overlay_gib = Some(1);
    d.client.up(&spec, WaitFor::Running, 30).await.expect("up");
    let overlay = d.state_dir().join("vms/fromimage/root.qcow2");
    let info = std::process::Command::new("qemu-img").args(["info", "--output=json"]).arg(&overlay).output().expect("qemu-img");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["backing-filename"], list[0].path.to_string_lossy().as_ref());
    assert_eq!(info["virtual-size"], 1u64 << 30);
    let e = d.client.image_remove(&sha).await.expect_err("image in use");
    assert_eq!(e.kind(), Some("conflict"), "{e}");
    d.client.remove("fromimage", true).await.expect("rm");
    assert!(!overlay.exists(), "the overlay outlived its VM");
    d.client.image_remove(&sha).await.expect("image rm");
    assert!(d.client.image_list().await.expect("ls").is_empty());

    // A spec naming an image that is not cached says how to get it.
    let e = d.client.up(&spec, WaitFor::Running, 30).await.expect_err("not cached");
    assert!(e.to_string().contains("image pull"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_with_cloud_init_and_a_data_disk_boots_with_both() {
    let d = Daemon::start();
    let mut spec = guest_spec("seeded", "paddock.cat_disk=/dev/vdb");
    spec.data_disk = Some(paddock::spec::DataDiskSpec { size_gib: 1, mount: None, filesystem: None });
    spec.cloud_init = Some(paddock::spec::CloudInitSpec {
        hostname: Some("db: 1 # not a comment".into()),
        runcmd: vec!["echo hi".into()],
        ..Default::default()
    });
    d.client.up(&spec, WaitFor::Ready, 180).await.expect("up");
    let log = wait_console(&d.client, "seeded", "PADDOCK-CAT-END", Duration::from_secs(30)).await;
    assert!(log.contains("==> meta-data <=="), "{log}");
    assert!(log.contains("instance-id: iid-"), "{log}");
    assert!(log.contains("#cloud-config"), "{log}");
    assert!(log.contains("db: 1 # not a comment"), "{log}");
    let data = d.state_dir().join("vms/seeded/data.qcow2");
    use std::os::unix::fs::MetadataExt as _;
    // A re-created disk would be a new file (new inode).
    let before = std::fs::metadata(&data).expect("data disk").ino();
    d.client.stop("seeded", 30).await.expect("stop");
    d.client.start("seeded", WaitFor::Ready, 180).await.expect("start again");
    assert_eq!(std::fs::metadata(&data).expect("data disk").ino(), before, "data disk recreated");
    d.client.remove("seeded", true).await.expect("rm");
    assert!(data.exists(), "rm without --volumes must keep the data disk");
    assert!(!d.state_dir().join("vms/seeded/seed.iso").exists());
}
