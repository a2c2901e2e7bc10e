//! UEFI (`firmware = "uefi"`): OVMF from Debian's ovmf package boots a
//! disk that has no kernel outside it (scripts/build-uefi-guest.sh: a GPT
//! disk whose ESP holds systemd-boot and the test guest's EFI-stub
//! kernel). The guest keeps a token in a UEFI variable at its first boot;
//! the VM's own variable store keeps it across stop/start and a daemon
//! restart, another VM has its own store, a snapshot's clone gets a copy,
//! and `rm` removes it.

mod common;

use common::*;
use paddock::WaitFor;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const BOOT: u64 = 240;
const TOKEN: &str = "PADDOCK-EFI-TOKEN ";
const OVMF_VARS_TEMPLATE: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The UEFI test disk, built (or found in its cache) once per test binary.
fn uefi_disk() -> &'static PathBuf {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/build-uefi-guest.sh");
        let out = Command::new(script).stderr(Stdio::inherit()).output().expect("run scripts/build-uefi-guest.sh");
        assert!(out.status.success(), "building the UEFI test disk failed");
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(path.is_file(), "{path:?}");
        path
    })
}

fn uefi_spec(name: &str) -> paddock::VmSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "vcpus": 1,
        "memory_mib": 256,
        "firmware": "uefi",
        "ready_pattern": READY_MARKER,
        "boot": { "image": uefi_disk() },
    }))
    .expect("valid spec")
}

/// The token the guest printed after `marker` ("created" or "found").
async fn token(d: &Daemon, vm: &str, marker: &str) -> String {
    let needle = format!("{TOKEN}{marker} ");
    let log = wait_console(&d.client, vm, READY_MARKER, Duration::from_secs(BOOT)).await;
    let line = log.lines().rev().find(|l| l.contains(&needle)).unwrap_or_else(|| panic!("no {needle:?} on the console:\n{log}"));
    let token = line.split(&needle).nth(1).expect("token").trim().to_string();
    assert_eq!(token.len(), 36, "{line:?}");
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_guest_boots_from_its_disk_and_keeps_its_variables() {
    let mut d = Daemon::start();
    let info = d.client.up(&uefi_spec("efi"), WaitFor::Ready, BOOT).await.expect("up");
    assert_eq!(info.spec.firmware, paddock::spec::Firmware::Uefi);
    let first = token(&d, "efi", "created").await;
    let log = wait_console(&d.client, "efi", READY_MARKER, Duration::from_secs(5)).await;
    // OVMF's boot manager found the loader on the disk, and the kernel
    // came up on UEFI: nothing was handed to QEMU but the disk.
    assert!(log.contains("BdsDxe: starting Boot"), "the firmware did not boot the disk:\n{log}");
    assert!(log.contains("efi: EFI v"), "the kernel did not start on UEFI:\n{log}");

    let store = d.state_dir().join("vms/efi/efi-vars.fd");
    let template = std::fs::read(OVMF_VARS_TEMPLATE).expect("OVMF's template (apt-get install ovmf)");
    let written = std::fs::read(&store).expect("the VM's variable store");
    assert_eq!(written.len(), template.len());
    assert_ne!(written, template, "the guest's variable never reached the VM's store");

    // A second VM of the same disk gets its own store: a new token,
    // booted while the first one restarts.
    let other = tokio::spawn({
        let client = d.client.clone();
        async move { client.up(&uefi_spec("efi2"), WaitFor::Ready, BOOT).await }
    });
    d.client.stop("efi", 60).await.expect("stop");
    d.client.start("efi", WaitFor::Ready, BOOT).await.expect("start");
    assert_eq!(token(&d, "efi", "found").await, first, "the variable store was not kept across stop/start");
    other.await.expect("join").expect("up efi2");
    assert_ne!(token(&d, "efi2", "created").await, first, "two VMs share a variable store");

    // A daemon killed and restarted re-adopts the VM; the store survives
    // that too, and the next boot still finds the token.
    d.kill9();
    d.spawn();
    d.client.wait_ready(Duration::from_secs(30)).await.expect("daemon back");
    d.client.stop("efi", 60).await.expect("stop after re-adoption");
    d.client.start("efi", WaitFor::Ready, BOOT).await.expect("start after re-adoption");
    assert_eq!(token(&d, "efi", "found").await, first, "the token was lost over a daemon restart");

    // A snapshot carries the store: a clone restored from it (which runs
    // on from the saved memory) has the source's variables.
    d.client.snapshot("efi", Some("efi-snap"), paddock::AfterSnapshot::Resume).await.expect("snapshot");
    d.client.restore("efi-snap", Some("efi-clone"), WaitFor::Running, BOOT).await.expect("restore as a clone");
    let clone_store = d.state_dir().join("vms/efi-clone/efi-vars.fd");
    assert_eq!(std::fs::read(&clone_store).expect("the clone's store"), std::fs::read(&store).expect("the store"));
    d.client.remove("efi-clone", true).await.expect("rm the clone");
    d.client.snapshot_remove("efi-snap").await.expect("rm the snapshot");

    // rm takes the store with the VM; a new VM of the same name starts
    // from OVMF's empty template again.
    d.client.remove("efi", true).await.expect("rm");
    assert!(!store.exists(), "the variable store outlived its VM");
    d.client.up(&uefi_spec("efi"), WaitFor::Ready, BOOT).await.expect("up again");
    let fresh = token(&d, "efi", "created").await;
    assert_ne!(fresh, first, "a new VM of the old name saw the old variables");
    for vm in ["efi", "efi2"] {
        d.client.remove(vm, true).await.expect("rm");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_mistakes_are_refused_naming_the_field() {
    let d = Daemon::start();
    let mut ch = uefi_spec("efi-ch");
    ch.backend = paddock::spec::BackendKind::CloudHypervisor;
    let e = d.client.up(&ch, WaitFor::Running, 30).await.expect_err("CH has no variable store");
    assert!(e.to_string().contains("firmware"), "{e}");

    let mut own = uefi_spec("efi-own");
    own.boot.firmware = Some("/usr/share/OVMF/OVMF_CODE_4M.fd".into());
    let e = d.client.up(&own, WaitFor::Running, 30).await.expect_err("two firmwares");
    assert!(e.to_string().contains("boot.firmware"), "{e}");

    let bad: Result<paddock::VmSpec, _> = serde_json::from_value(serde_json::json!({"name": "x", "boot": {"kernel": "/k"}, "firmware": "efi"}));
    assert!(bad.is_err(), "an unknown firmware was accepted");
    assert!(d.client.list().await.expect("ls").is_empty(), "a refused VM was left behind");
    assert!(!d.state_dir().join("vms/efi-ch").exists() && !d.state_dir().join("vms/efi-own").exists());
}

/// A kernel given directly also boots through OVMF (QEMU hands it over by
/// fw_cfg) and sees UEFI with the VM's own store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_kernel_boots_under_uefi() {
    let d = Daemon::start();
    let mut spec = guest_spec("efi-kernel", "");
    spec.firmware = paddock::spec::Firmware::Uefi;
    spec.memory_mib = 256;
    d.client.up(&spec, WaitFor::Ready, BOOT).await.expect("up");
    token(&d, "efi-kernel", "created").await;
    assert!(d.state_dir().join("vms/efi-kernel/efi-vars.fd").is_file());
    d.client.remove("efi-kernel", true).await.expect("rm");
    assert!(!d.state_dir().join("vms/efi-kernel").exists(), "the VM's state dir outlived it");
}
