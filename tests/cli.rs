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

#[test]
fn a_reader_that_goes_away_ends_the_client_quietly() {
    let d = Daemon::start();
    for args in [&["--json", "ps"][..], &["ps"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paddock"))
            .arg("--socket")
            .arg(d.client.socket())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run paddock");
        // `| head` that has already exited: the read end is closed before
        // the client writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        use std::os::unix::process::ExitStatusExt as _;
        assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{args:?}: {:?}", out.status);
    }
}

#[test]
fn serve_puts_its_socket_in_the_run_dir_unless_told_otherwise() {
    let dir = tempfile::Builder::new().prefix("pd").tempdir_in("/tmp").expect("tempdir");
    let run = dir.path().join("run");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["serve", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(&run)
        .env_remove("PADDOCK_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("paddock serve");
    let client = paddock::client::Client::new(run.join("paddock.sock"));
    let up = block_on(client.wait_ready(std::time::Duration::from_secs(20)));
    if up.is_err() {
        let _ = serve.kill();
    }
    up.expect("the daemon answers on RUN_DIR/paddock.sock");
    block_on(client.shutdown(false, 0)).expect("shutdown");
    let status = serve.wait().expect("wait serve");
    assert!(status.success(), "{status:?}");
}

#[test]
fn kept_volumes_are_listed_and_deleted_by_name() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let mut spec = fake_spec(&d, "vol");
    spec.data_disk = Some(paddock::DataDiskSpec::gib(1));
    block_on(d.client.up(&spec, paddock::WaitFor::Running, 30)).expect("up");
    let (code, _, err) = paddock(&d, &["volume", "rm", "vol"]);
    assert_eq!(code, 6, "a volume of an existing VM is refused: {err}");
    assert!(err.contains("rm --volumes vol"), "{err}");
    assert_eq!(paddock(&d, &["rm", "--force", "vol"]).0, 0);
    let (code, out, _) = paddock(&d, &["--json", "volume", "ls"]);
    assert_eq!(code, 0);
    let vols: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!((vols[0]["name"].as_str(), vols[0]["in_use"].as_bool()), (Some("vol"), Some(false)), "{out}");
    let (code, out, _) = paddock(&d, &["volume", "ls"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME") && out.contains("vol"), "{out}");
    assert_eq!(paddock(&d, &["volume", "rm", "vol"]).0, 0);
    assert!(!d.state_dir().join("vms/vol").exists(), "the volume's directory is left");
    let (code, _, err) = paddock(&d, &["volume", "rm", "vol"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no kept volume named \"vol\""), "{err}");
    let (code, out, _) = paddock(&d, &["--json", "volume", "ls"]);
    assert_eq!((code, out.trim()), (0, "[]"));
}
