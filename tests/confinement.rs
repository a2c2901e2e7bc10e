//! Confinement: a real QEMU (TCG) hypervisor runs as its VM's own
//! unprivileged uid/gid, with no capabilities, no_new_privs and a seccomp
//! filter; as that identity nothing of another VM, nor the daemon's
//! database or API socket, can be opened. `--no-confine` is the logged
//! way back to root hypervisors.

mod common;

use common::*;
use paddock::WaitFor;
use std::path::Path;
use std::process::Command;

/// The named fields of /proc/PID/status.
fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in status of {pid}"))
}

/// (real, effective) uid or gid from a `Uid:`/`Gid:` line.
fn ids(line: &str) -> Vec<u32> {
    line.split_whitespace().map(|v| v.parse().expect("id")).collect()
}

/// Runs `argv` as `uid:gid` with no supplementary group.
fn run_as(uid: u32, gid: u32, argv: &[&Path]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "--"])
        .args(argv)
        .output()
        .expect("run setpriv")
}

fn pid_of(d: &Daemon, vm: &str) -> i32 {
    block_on(d.client.get(vm)).expect("inspect").pid.expect("a running VM has a pid")
}

#[test]
fn each_hypervisor_is_its_own_unprivileged_filtered_identity() {
    let d = Daemon::start();
    let mut a = guest_spec("conf-a", "");
    a.data_disk = Some(paddock::spec::DataDiskSpec::gib(1));
    let mut b = guest_spec("conf-b", "");
    b.data_disk = Some(paddock::spec::DataDiskSpec::gib(1));
    block_on(d.client.up(&a, WaitFor::Running, 120)).expect("up a");
    block_on(d.client.up(&b, WaitFor::Running, 120)).expect("up b");
    let (pa, pb) = (pid_of(&d, "conf-a"), pid_of(&d, "conf-b"));

    let mut seen = Vec::new();
    for pid in [pa, pb] {
        let uid = ids(&status_field(pid, "Uid"));
        let gid = ids(&status_field(pid, "Gid"));
        assert!(uid.iter().all(|&u| u != 0 && u == uid[0]), "pid {pid} runs with uids {uid:?}");
        assert!(gid.iter().all(|&g| g != 0 && g == gid[0]), "pid {pid} runs with gids {gid:?}");
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status_field(pid, cap), "0000000000000000", "{cap} of pid {pid}");
        }
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "pid {pid}");
        assert_eq!(status_field(pid, "Seccomp"), "2", "pid {pid}: QEMU's -sandbox filter");
        seen.push((uid[0], gid[0]));
    }
    assert_ne!(seen[0].0, seen[1].0, "two VMs, two uids");
    println!("hypervisors run as {seen:?}, no capabilities, no_new_privs, seccomp filter");

    // As VM a's identity: its own disk opens (the check can succeed), b's
    // disk, the database and the API socket do not.
    let (uid, gid) = seen[0];
    let own = d.state_dir().join("vms/conf-a/data.qcow2");
    let other = d.state_dir().join("vms/conf-b/data.qcow2");
    let head = |p: &Path| run_as(uid, gid, &[Path::new("head"), Path::new("-c"), Path::new("4"), p]);
    let out = head(&own);
    assert!(out.status.success() && out.stdout == b"QFI\xfb", "VM a cannot read its own disk: {}", String::from_utf8_lossy(&out.stderr));
    for p in [other, d.state_dir().join("paddock.db")] {
        let out = head(&p);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.stdout.is_empty() && err.contains("Permission denied"), "VM a opened {p:?}: {err}");
    }
    let paddock = Path::new(env!("CARGO_BIN_EXE_paddock"));
    let sock = d.client.socket().to_path_buf();
    let out = run_as(uid, gid, &[paddock, Path::new("--socket"), &sock, Path::new("ps")]);
    let err = String::from_utf8_lossy(&out.stderr);
    // The daemon serves (the client above just used it): refused, not absent.
    block_on(d.client.list()).expect("the daemon answers root");
    assert!(!out.status.success() && err.contains("cannot connect"), "VM a reached the API socket: {err}");
    // Not through another VM's run directory either (its console log).
    let out = head(&d.run_dir().join("conf-b/console.log"));
    assert!(!out.status.success(), "VM a read VM b's console log");
    for vm in ["conf-a", "conf-b"] {
        block_on(d.client.remove_with(vm, true, true)).expect("rm");
    }
}

#[test]
fn no_confine_is_logged_and_runs_the_hypervisor_as_root() {
    let d = Daemon::start_with(&["--no-confine"], &[]);
    block_on(d.client.up(&guest_spec("unconf", ""), WaitFor::Running, 120)).expect("up");
    let pid = pid_of(&d, "unconf");
    assert_eq!(ids(&status_field(pid, "Uid"))[0], 0);
    assert_eq!(status_field(pid, "Seccomp"), "0");
    assert!(d.log().contains("confinement is OFF"), "the switch is logged at start");
    block_on(d.client.remove_with("unconf", true, true)).expect("rm");
}
