//! Shared pieces of the integration tests: the test guest, a daemon per
//! test in its own directories, event waits with deadlines, leak checks.
#![allow(dead_code)]

use http_body_util::BodyExt as _;
use paddock::client::Client;
use paddock::{Event, EventKind, VmPhase, VmSpec};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const READY_MARKER: &str = "PADDOCK-GUEST-READY";

/// The test guest (kernel + initramfs) built by the project's own script
/// from Debian packages; cached between runs.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub fn guest() -> &'static Guest {
    static G: OnceLock<Guest> = OnceLock::new();
    G.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("scripts/build-test-guest.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-test-guest.sh");
        assert!(out.status.success(), "building the test guest failed");
        let dir = guest_dir();
        let g = Guest { kernel: dir.join("vmlinuz"), initrd: dir.join("initramfs.cpio.gz") };
        assert!(g.kernel.exists() && g.initrd.exists(), "test guest missing in {dir:?}");
        g
    })
}

pub fn guest_dir() -> PathBuf {
    match std::env::var_os("PADDOCK_GUEST_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/paddock/test-guest"),
    }
}

/// A spec for the test guest; `switches` go on the kernel command line
/// (e.g. `paddock.ignore_acpi=1`).
pub fn guest_spec(name: &str, switches: &str) -> VmSpec {
    let g = guest();
    serde_json::from_value(serde_json::json!({
        "name": name,
        "vcpus": 1,
        "memory_mib": 128,
        "accel": "auto",
        "ready_pattern": READY_MARKER,
        "boot": {
            "kernel": g.kernel,
            "initrd": g.initrd,
            "cmdline": format!("console=ttyS0 panic=-1 quiet {switches}"),
        },
    }))
    .expect("valid spec")
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub client: Client,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[], &[])
    }

    /// A daemon in fresh directories with extra `serve` flags and env.
    pub fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        // Short path: unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new().prefix("pd").tempdir_in("/tmp").expect("tempdir");
        let socket = dir.path().join("run/paddock.sock");
        let mut d = Daemon {
            client: Client::new(&socket),
            dir,
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        d.spawn();
        d
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("daemon.log")).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paddock"));
        cmd.arg("--socket")
            .arg(self.client.socket())
            .arg("serve")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(&self.args)
            .env("PADDOCK_LOG", "info,paddock_actors=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn paddock serve"));
        // Called from async tests too: wait on a runtime of its own thread.
        let client = self.client.clone();
        std::thread::spawn(move || block_on(client.wait_ready(Duration::from_secs(20))))
            .join()
            .expect("wait thread")
            .unwrap_or_else(|e| panic!("daemon did not come up: {e}\n{}", self.log()));
    }

    /// Runs `paddock serve` in this daemon's directories expecting it to
    /// refuse to start; returns its exit code and output.
    pub fn serve_expecting_failure(&self) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
            .arg("--socket")
            .arg(self.client.socket())
            .arg("serve")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(&self.args)
            .stdin(Stdio::null())
            .output()
            .expect("run paddock serve");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Like `serve_expecting_failure`, with this daemon's extra env.
    pub fn serve_expecting_failure_with_env(&self) -> (i32, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paddock"));
        cmd.arg("--socket")
            .arg(self.client.socket())
            .arg("serve")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(&self.args)
            .stdin(Stdio::null());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run paddock serve");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Waits for the daemon process to exit by itself (e.g. at a failpoint).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        c.wait().expect("wait daemon")
    }

    /// SIGKILL the daemon (VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Names of VM directories left in the run dir.
    pub fn run_dir_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.run_dir())
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.retain(|n| n != "paddock.sock");
        v.sort();
        v
    }

    /// Rows in the vms table, read straight from the database file.
    pub fn db_vm_names(&self) -> Vec<String> {
        let c = rusqlite::Connection::open_with_flags(self.state_dir().join("paddock.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db");
        let mut s = c.prepare("SELECT name FROM vms ORDER BY name").expect("query");
        s.query_map([], |r| r.get::<_, String>(0)).expect("rows").map(|r| r.expect("row")).collect()
    }

    /// Hypervisor processes whose command line mentions this daemon's run dir.
    pub fn hypervisor_pids(&self) -> Vec<i32> {
        pids_mentioning(&self.run_dir().to_string_lossy())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Whatever a failed test left behind must not outlive it.
        for pid in self.hypervisor_pids() {
            // SAFETY: kill(2) with a pid we found and SIGKILL.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}", self.log());
        }
    }
}

/// Fake hypervisor flags for `Daemon::start_with`.
pub fn fake_qemu() -> &'static str {
    env!("CARGO_BIN_EXE_paddock-fake-qemu")
}

/// The fake Cloud Hypervisor, for `--cloud-hypervisor-binary`.
pub fn fake_ch() -> &'static str {
    env!("CARGO_BIN_EXE_paddock-fake-ch")
}

/// A spec for the fake hypervisor (it ignores the kernel's contents).
pub fn fake_spec(d: &Daemon, name: &str) -> VmSpec {
    let kernel = d.dir.path().join("kernel");
    if !kernel.exists() {
        std::fs::write(&kernel, b"fake").expect("kernel");
    }
    serde_json::from_value(serde_json::json!({
        "name": name,
        "memory_mib": 64,
        "ready_pattern": READY_MARKER,
        "boot": { "kernel": kernel },
    }))
    .expect("spec")
}

pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && !cmd.contains(" serve ") {
            out.push(pid);
        }
    }
    out
}

pub fn process_exists(pid: i32) -> bool {
    // A zombie still has /proc/PID; it has exited for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(f)
}

/// The newest event sequence number (to wait for events after it).
pub async fn last_seq(client: &Client) -> u64 {
    let body = client.events(0, false).await.expect("events");
    let bytes = body.collect().await.expect("body").to_bytes();
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<Event>(l).ok())
        .map(|e| e.seq)
        .max()
        .unwrap_or(0)
}

/// Follows the event stream after `since` until `pred` matches; panics at
/// the deadline. Returns the matching event.
pub async fn wait_event(client: &Client, since: u64, timeout: Duration, mut pred: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + timeout;
    let mut body = client.events(since, true).await.expect("events stream");
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no matching event within {timeout:?}"));
        let Some(Ok(frame)) = frame else { panic!("event stream ended") };
        if let Some(d) = frame.data_ref() {
            buf.extend_from_slice(d);
        }
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if let Ok(ev) = serde_json::from_slice::<Event>(&line) {
                if pred(&ev) {
                    return ev;
                }
            }
        }
    }
}

pub fn is_phase(ev: &Event, vm: &str, f: impl Fn(&VmPhase) -> bool) -> bool {
    ev.vm == vm && matches!(&ev.kind, EventKind::Phase { phase } if f(phase))
}

/// Reads the console stream until `needle` appears; panics at the deadline.
pub async fn wait_console(client: &Client, vm: &str, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut body = client.console(vm, true).await.expect("console");
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame()).await.unwrap_or_else(|_| {
            panic!("{needle:?} not on the console within {timeout:?}; saw:\n{}", String::from_utf8_lossy(&seen))
        });
        let Some(Ok(frame)) = frame else { panic!("console stream ended; saw:\n{}", String::from_utf8_lossy(&seen)) };
        if let Some(d) = frame.data_ref() {
            seen.extend_from_slice(d);
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains(needle) {
            return text.into_owned();
        }
    }
}
