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

/// The token of the guest's latest boot, which must say `marker`
/// ("created" or "found"). Read from the console log file once the start
/// has returned `ready` (so this boot's token line is in it); the log
/// keeps earlier boots, so only the last token line counts.
fn token(d: &Daemon, vm: &str, marker: &str) -> String {
    let path = d.run_dir().join(vm).join("console.log");
    let log = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let line = log.lines().rev().find(|l| l.contains(TOKEN)).unwrap_or_else(|| panic!("no {TOKEN:?} on the console:\n{log}"));
    let rest = line.split(TOKEN).nth(1).expect("after the marker").trim();
    let (kind, token) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(kind, marker, "this boot's token line: {line:?}");
    assert_eq!(token.len(), 36, "{line:?}");
    token.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_guest_boots_from_its_disk_and_keeps_its_variables() {
    let mut d = Daemon::start();
    let info = d.client.up(&uefi_spec("efi"), WaitFor::Ready, BOOT).await.expect("up");
    assert_eq!(info.spec.firmware, paddock::spec::Firmware::Uefi);
    let first = token(&d, "efi", "created");
    let log = std::fs::read_to_string(d.run_dir().join("efi/console.log")).expect("console log");
    // OVMF's boot manager found the loader on the disk, and the kernel
    // came up on UEFI: nothing was handed to QEMU but the disk.
    assert!(log.contains("BdsDxe: starting Boot"), "the firmware did not boot the disk:\n{log}");
    assert!(log.contains("efi: EFI v"), "the kernel did not start on UEFI:\n{log}");

    let store = d.state_dir().join("vms/efi/efi-vars.fd");
    let template = std::fs::read(OVMF_VARS_TEMPLATE).expect("OVMF's template (apt-get install ovmf)");
    let written = std::fs::read(&store).expect("the VM's variable store");
    assert_eq!(written.len(), template.len());
    // The guest's variable is in the VM's store (its value is plain ASCII
    // there), and the template never saw it.
    let has = |bytes: &[u8]| bytes.windows(first.len()).any(|w| w == first.as_bytes());
    assert!(has(&written), "the guest's variable never reached the VM's store");
    assert!(!has(&template), "the guest wrote into OVMF's template");

    // A second VM of the same disk gets its own store: a new token,
    // booted while the first one restarts.
    let other = tokio::spawn({
        let client = d.client.clone();
        async move { client.up(&uefi_spec("efi2"), WaitFor::Ready, BOOT).await }
    });
    d.client.stop("efi", 60).await.expect("stop");
    d.client.start("efi", WaitFor::Ready, BOOT).await.expect("start");
    assert_eq!(token(&d, "efi", "found"), first, "the variable store was not kept across stop/start");
    other.await.expect("join").expect("up efi2");
    assert_ne!(token(&d, "efi2", "created"), first, "two VMs share a variable store");

    // A daemon killed and restarted re-adopts the VM; the store survives
    // that too, and the next boot still finds the token.
    d.kill9();
    d.spawn();
    d.client.wait_ready(Duration::from_secs(30)).await.expect("daemon back");
    d.client.stop("efi", 60).await.expect("stop after re-adoption");
    d.client.start("efi", WaitFor::Ready, BOOT).await.expect("start after re-adoption");
    assert_eq!(token(&d, "efi", "found"), first, "the token was lost over a daemon restart");

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
    let fresh = token(&d, "efi", "created");
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
    assert!(e.to_string().contains("firmware: Cloud Hypervisor keeps no UEFI variable store"), "{e}");

    let mut own = uefi_spec("efi-own");
    own.boot.firmware = Some("/usr/share/OVMF/OVMF_CODE_4M.fd".into());
    let e = d.client.up(&own, WaitFor::Running, 30).await.expect_err("two firmwares");
    assert!(e.to_string().contains("boot.firmware: firmware = \"uefi\" boots Debian's OVMF"), "{e}");

    // OVMF faults in too little memory: refused before anything boots.
    let mut small = uefi_spec("efi-small");
    small.memory_mib = 128;
    let e = d.client.up(&small, WaitFor::Running, 30).await.expect_err("128 MiB");
    assert!(e.to_string().contains("memory_mib: firmware = \"uefi\" needs at least"), "{e}");

    let bad: Result<paddock::VmSpec, _> = serde_json::from_value(serde_json::json!({"name": "x", "boot": {"kernel": "/k"}, "firmware": "efi"}));
    assert!(bad.is_err(), "an unknown firmware was accepted");
    assert!(d.client.list().await.expect("ls").is_empty(), "a refused VM was left behind");
    for vm in ["efi-ch", "efi-own", "efi-small"] {
        assert!(!d.state_dir().join("vms").join(vm).exists(), "{vm} left a state dir");
    }
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
    token(&d, "efi-kernel", "created");
    assert!(d.state_dir().join("vms/efi-kernel/efi-vars.fd").is_file());
    d.client.remove("efi-kernel", true).await.expect("rm");
    assert!(!d.state_dir().join("vms/efi-kernel").exists(), "the VM's state dir outlived it");
}
