//! The `paddock` command line: exit codes and human output.

mod common;

use common::*;
use std::process::Command;

fn paddock(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("--socket")
        .arg(d.client.socket())
        .args(args)
        .output()
        .expect("run paddock");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_tell_failures_apart() {
    let fake = env!("CARGO_BIN_EXE_paddock-fake-qemu");
    let mut d = Daemon::start_with(&["--qemu-binary", fake], &[]);
    let dir = d.dir.path().to_path_buf();
    std::fs::write(dir.join("kernel"), b"fake").expect("kernel");
    std::fs::write(dir.join("vm.toml"), "name = \"cli\"\nready_pattern = \"READY\"\n[boot]\nkernel = \"kernel\"\n").expect("spec");
    std::fs::write(dir.join("bad.toml"), "name = \"cli\"\nmemory_mib = 0\n[boot]\nkernel = \"kernel\"\n").expect("spec");
    std::fs::write(dir.join("typo.toml"), "name = \"cli\"\nmemroy_mib = 1\n[boot]\nkernel = \"kernel\"\n").expect("spec");
    let spec = dir.join("vm.toml").to_string_lossy().into_owned();

    let (code, out, err) = paddock(&d, &["up", &spec, "--wait", "ready"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cli") && out.contains("running") && out.contains("yes"), "{out}");
    let (code, out, _) = paddock(&d, &["ps"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME"), "{out}");
    let (code, out, _) = paddock(&d, &["--json", "ps"]);
    assert_eq!(code, 0);
    let vms: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(vms[0]["name"], "cli");

    assert_eq!(paddock(&d, &["up", &spec]).0, 6, "duplicate name is a conflict");
    let (code, _, err) = paddock(&d, &["up", &dir.join("bad.toml").to_string_lossy()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("memory_mib"), "{err}");
    let (code, _, err) = paddock(&d, &["up", &dir.join("typo.toml").to_string_lossy()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("memroy_mib"), "{err}");
    assert_eq!(paddock(&d, &["stop", "ghost"]).0, 3);
    assert_eq!(paddock(&d, &["resume", "cli"]).0, 6, "resume of a running VM is a conflict");
    let (code, out, _) = paddock(&d, &["stop", "cli"]);
    assert_eq!(code, 0);
    assert!(out.contains("acpi"), "{out}");
    assert_eq!(paddock(&d, &["rm", "cli"]).0, 0);

    d.kill9();
    let (code, _, err) = paddock(&d, &["ps"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("paddock serve"), "{err}");
}
