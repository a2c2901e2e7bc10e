//! Private by default: a local user created by the test cannot read any
//! file under the run or state directories of a daemon running a real VM
//! (console log, hypervisor log, sockets, database, disks), also after a
//! restart that found them loosened.

mod common;

use common::*;
use paddock::WaitFor;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A system user that exists for one test.
struct TempUser(String);

impl TempUser {
    fn create() -> TempUser {
        let name = format!("pdt{:08x}", rand_u32());
        let ok = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", &name])
            .status()
            .expect("run useradd");
        assert!(ok.success(), "useradd {name} failed");
        TempUser(name)
    }

    /// Runs `argv` as this user, without any supplementary group.
    fn run(&self, argv: &[&Path]) -> std::process::Output {
        Command::new("setpriv")
            .args(["--reuid", &self.0, "--regid", &self.0, "--clear-groups", "--"])
            .args(argv)
            .output()
            .expect("run setpriv")
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

/// Every entry below `dir` (not following symlinks).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().expect("file type").is_dir() {
            walk(&p, out);
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o777
}

/// The user can neither list the directories nor read a single file.
fn assert_unreadable(user: &TempUser, d: &Daemon) {
    let mut all = Vec::new();
    // The roots and the directory of VM disk directories are 0711: the
    // confined hypervisors pass through them; nobody lists them.
    let vms = d.state_dir().join("vms");
    for root in [d.run_dir(), d.state_dir()] {
        assert_eq!(mode(&root), 0o711, "{root:?}");
        walk(&root, &mut all);
    }
    let files: Vec<&Path> = all.iter().filter(|p| p.is_file()).map(PathBuf::as_path).collect();
    for p in all.iter().filter(|p| p.is_dir() || p.is_file()) {
        let open = if *p == vms { 0o006 } else { 0o007 };
        assert_eq!(mode(p) & open, 0, "{p:?} is open to other users ({:o})", mode(p));
    }
    let vm = d.run_dir().join("priv");
    for dir in [&vm, &d.state_dir().join("vms/priv")] {
        assert_eq!(mode(dir), 0o700, "{dir:?}");
    }
    for log in ["console.log", "hypervisor.log"] {
        assert_eq!(mode(&vm.join(log)), 0o640, "{log}");
    }
    assert!(files.len() >= 5, "too few files to prove anything: {files:?}");
    let mut argv: Vec<&Path> = vec![Path::new("cat")];
    argv.extend(&files);
    let out = user.run(&argv);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{} read something", user.0);
    assert_eq!(err.matches("Permission denied").count(), files.len(), "every file must be refused:\n{err}");
    for root in [d.run_dir(), d.state_dir(), vms] {
        let out = user.run(&[Path::new("ls"), &root]);
        assert!(!out.status.success(), "{} listed {root:?}", user.0);
    }
    println!("{} could read none of {} files under the run and state dirs", user.0, files.len());
}

#[test]
fn another_local_user_cannot_read_the_run_or_state_dirs() {
    // SAFETY: geteuid only reads the process credentials.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to create a user");
        return;
    }
    let user = TempUser::create();
    let mut d = Daemon::start();
    // Only the daemon's own modes protect its files: open the test's
    // parent directory to everyone.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut spec = guest_spec("priv", "");
    spec.data_disk = Some(paddock::spec::DataDiskSpec::gib(1));
    block_on(d.client.up(&spec, WaitFor::Ready, 120)).expect("up");
    assert_unreadable(&user, &d);
    // Loosened by hand (or made by an older version) while the daemon was
    // down: tightened again at start, and the VM is still adopted.
    d.kill9();
    let vm = d.run_dir().join("priv");
    for (p, m) in [(d.run_dir(), 0o755), (vm.clone(), 0o755), (vm.join("console.log"), 0o644), (d.state_dir(), 0o755)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("loosen");
    }
    d.spawn();
    assert_unreadable(&user, &d);
    block_on(d.client.remove_with("priv", true, true)).expect("rm");
}
