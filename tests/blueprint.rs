//! The Blueprint example (examples/blueprint.rs) runs in the suite, on real
//! QEMU, in a network namespace of its own (its TAP lease and nftables
//! table stay there): the launcher's args and env arrive exactly, the
//! keystore tree is there, vsock works host -> guest, ACPI stops it, and
//! `rm` leaves nothing but the data disk, which `volume rm` then deletes.
//! Twice: on the busybox test guest and on the real Debian cloud guest
//! (`BLUEPRINT_GUEST=debian`: cloud-init runs the launcher).
//!
//! The example runs in a child process (this test binary again, one
//! test selected by name) started with `ip netns exec`: network
//! namespaces belong to threads, and the runtime has many.

mod common;

#[path = "../examples/blueprint.rs"]
mod blueprint;

use common::*;
use std::path::Path;
use std::process::Command;

/// Files under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn blueprint_example_runs_exactly_and_leaves_only_its_volume() {
    guest();
    run_example_in_a_netns(None);
}

/// The same flow on the Debian guest (built by scripts/test.sh).
#[test]
fn blueprint_example_on_the_debian_guest() {
    let dir = std::env::var_os("PADDOCK_DEBIAN_GUEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/paddock/debian-guest"));
    for f in ["root.qcow2", "root.qcow2.sha256", "vmlinuz", "initrd.img", "cmdline"] {
        assert!(dir.join(f).exists(), "the Debian guest is not built ({:?} missing): run scripts/build-debian-guest.sh (scripts/test.sh does)", dir.join(f));
    }
    let t = std::time::Instant::now();
    run_example_in_a_netns(Some("debian"));
    println!("the Blueprint flow on the Debian guest took {:.1} s", t.elapsed().as_secs_f64());
}

/// Runs the example (`BLUEPRINT_GUEST=guest`, if any) in a child process
/// inside a fresh network namespace, then checks the host is clean.
fn run_example_in_a_netns(guest: Option<&str>) {
    let service = service::guest_service();
    let lab = NetLab::new();
    let dir = tempfile::Builder::new().prefix("bp").tempdir_in("/tmp").expect("tempdir");
    // The confined hypervisors pass through it to their own directories.
    traversable(dir.path());
    let me = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.host])
        .arg(&me)
        .args(["--exact", "blueprint_in_this_netns", "--nocapture"])
        .env("BLUEPRINT_DIR", dir.path())
        .env("BLUEPRINT_SERVICE_BIN", service)
        .env_remove("BLUEPRINT_IMAGE");
    match guest {
        Some(g) => cmd.env("BLUEPRINT_GUEST", g),
        None => cmd.env_remove("BLUEPRINT_GUEST"),
    };
    let out = cmd.output().expect("run the example");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the example failed (see its output above)");
    assert!(text.contains("1 passed"), "the example did not run: {text}");
    // Nothing of the VM is left on the host.
    assert!(lab.taps().is_empty(), "TAPs left: {:?}", lab.taps());
    assert!(!lab.table().contains("chain"), "rules left:\n{}", lab.table());
    assert_eq!(pids_mentioning(&dir.path().to_string_lossy()), Vec::<i32>::new(), "processes left");
    let run_left: Vec<String> = files(&dir.path().join("run")).into_iter().filter(|f| f != "paddock.sock" && f != "paddock.lock").collect();
    assert!(run_left.is_empty(), "run files left: {run_left:?}");
}

/// The example itself, inside the namespace; then the kept volume is
/// listed and deleted through the Runtime.
#[test]
fn blueprint_in_this_netns() {
    // Only the netns the tests above make sets BLUEPRINT_DIR; anywhere else
    // this would touch the host's own network.
    let Some(dir) = std::env::var_os("BLUEPRINT_DIR").map(std::path::PathBuf::from) else {
        println!("blueprint_in_this_netns: skipped: runs only inside the network namespace the blueprint_example_* tests make");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (want, address, answers, rung) = rt.block_on(blueprint::run(&dir)).expect("the Blueprint flow");
    println!("address {address:?}, answers {answers:#?}, stopped by {rung}");
    let text = |v: &serde_json::Value| v.as_str().map(String::from);
    let list = |v: &serde_json::Value| v.as_array().map(|a| a.iter().filter_map(text).collect::<Vec<_>>());
    assert_eq!(list(&answers[0]), Some(want.args.clone()), "launcher args changed on the way");
    assert!(text(&answers[1]).is_some_and(|cwd| cwd.ends_with("/keystore")), "workdir: {}", answers[1]);
    let keystore: Vec<String> = files(&want.keystore).iter().map(|f| format!("{f} {}", std::fs::metadata(want.keystore.join(f)).map(|m| m.len()).unwrap_or(0))).collect();
    assert_eq!(list(&answers[2]), Some(keystore), "the keystore tree on the service disk differs");
    for ((k, v), got) in want.env.iter().zip(&answers[3..]) {
        assert_eq!(text(got).as_deref(), Some(v.as_str()), "env {k} changed on the way");
    }
    assert_eq!(answers.len(), 3 + want.env.len());
    assert!(address.is_some(), "no typed lease address");
    assert_eq!(rung, "acpi");

    // `rm` kept the data disk and nothing else (the image cache is shared).
    let state: Vec<String> =
        files(&dir.join("state")).into_iter().filter(|f| !f.starts_with("paddock.db") && f != "paddock.lock" && !f.starts_with("images/")).collect();
    assert_eq!(state, ["vms/blueprint-svc/data.qcow2"], "state left besides the volume");
    rt.block_on(async {
        let rt = paddock::Runtime::start(paddock::RuntimeConfig::new(dir.join("state"), dir.join("run"))).await.expect("runtime");
        let vols = rt.volumes().await.expect("volumes");
        assert_eq!(vols.iter().map(|v| (v.name.as_str(), v.in_use)).collect::<Vec<_>>(), [("blueprint-svc", false)]);
        rt.remove_volume("blueprint-svc").await.expect("volume rm");
        assert!(rt.volumes().await.expect("volumes").is_empty());
        let again = rt.remove_volume("blueprint-svc").await.expect_err("a second rm");
        assert!(matches!(again, paddock::Error::NoVolume { .. }), "{again}");
        rt.shutdown().await;
    });
    assert!(!dir.join("state/vms/blueprint-svc").exists());
}
