//! Shared pieces of the integration tests: the test guest, a daemon per
//! test in its own directories, event waits with deadlines, leak checks.
#![allow(dead_code)]

pub mod debian;
pub mod service;

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
    /// Run the daemon (and so its VMs' TAPs and rules) in this netns.
    pub netns: Option<String>,
    /// A run dir other than `DIR/run` (e.g. inside another daemon's).
    pub run_dir_at: Option<PathBuf>,
    /// A state dir other than `DIR/state` (e.g. another daemon's).
    pub state_dir_at: Option<PathBuf>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[], &[])
    }

    /// A daemon in fresh directories with extra `serve` flags and env.
    pub fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        Self::launch(None, args, envs)
    }

    /// A daemon inside network namespace `ns`.
    pub fn start_in(ns: &str, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        Self::launch(Some(ns), args, envs)
    }

    fn launch(netns: Option<&str>, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let mut d = Self::unstarted(args, envs);
        d.netns = netns.map(String::from);
        d.spawn();
        d
    }

    /// A daemon in fresh directories, not started yet (`spawn` starts it):
    /// for tests that prepare its directories first.
    pub fn unstarted(args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        // Short path: unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new().prefix("pd").tempdir_in("/tmp").expect("tempdir");
        // The confined hypervisors pass through it to their own 0700
        // directories (like /var/lib and /run in production).
        traversable(dir.path());
        let socket = dir.path().join("run/paddock.sock");
        Daemon {
            client: Client::new(&socket),
            dir,
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            netns: None,
            run_dir_at: None,
            state_dir_at: None,
        }
    }

    /// `paddock serve` in this daemon's directories, behind `wrapper` (e.g.
    /// `ip netns exec NS`), with this daemon's extra args and env.
    fn serve_command(&self, wrapper: &[&str]) -> Command {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_paddock"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_paddock")),
        };
        cmd.arg("--socket")
            .arg(self.client.socket())
            .arg("serve")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(&self.args)
            .env("PADDOCK_LOG", "info,paddock_actors=debug")
            .stdin(Stdio::null());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    fn netns_wrapper(&self) -> Vec<&str> {
        match &self.netns {
            Some(ns) => vec!["ip", "netns", "exec", ns.as_str()],
            None => vec![],
        }
    }

    /// Runs `paddock serve` expecting it to refuse to start (or to die
    /// before serving); returns its exit code and stderr.
    pub fn serve_expecting_failure(&self) -> (i32, String) {
        let out = self.serve_command(&self.netns_wrapper()).output().expect("run paddock serve");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir_at.clone().unwrap_or_else(|| self.dir.path().join("state"))
    }
    pub fn run_dir(&self) -> PathBuf {
        self.run_dir_at.clone().unwrap_or_else(|| self.dir.path().join("run"))
    }

    /// Spawns the daemon behind a wrapper argv (e.g. setpriv).
    pub fn spawn_wrapped(&mut self, wrapper: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("daemon.log")).expect("log");
        let mut cmd = self.serve_command(wrapper);
        cmd.stdout(log.try_clone().expect("log")).stderr(log);
        self.child = Some(cmd.spawn().expect("spawn paddock serve"));
        // Called from async tests too: wait on a runtime of its own thread.
        let client = self.client.clone();
        std::thread::spawn(move || block_on(client.wait_ready(Duration::from_secs(20))))
            .join()
            .expect("wait thread")
            .unwrap_or_else(|e| panic!("daemon did not come up: {e}\n{}", self.log()));
    }

    pub fn spawn(&mut self) {
        let wrapper: Vec<String> = self.netns_wrapper().into_iter().map(String::from).collect();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        self.spawn_wrapped(&wrapper);
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
        v.retain(|n| n != "paddock.sock" && n != paddock::dir_lock::LOCK_FILE);
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

/// Runs `cmd` in the guest's shell over the interactive console and
/// returns its output and exit code.
pub async fn guest_run(client: &Client, vm: &str, cmd: &str, timeout: Duration) -> (String, i32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + timeout;
    let mut io = loop {
        match client.attach(vm).await {
            Ok(io) => break io,
            // The previous session's writer is still being released.
            Err(e) if e.kind() == Some("conflict") && Instant::now() < deadline => tokio::task::yield_now().await,
            Err(e) => panic!("attach {vm}: {e}"),
        }
    };
    let nonce = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    let end = format!("__END_{nonce} ");
    io.write_all(format!("\n{cmd}; echo {end}$?\n").as_bytes()).await.expect("type");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        // The terminal echoes our line too ("$?" there, digits in the answer).
        if let Some(pos) = text.find(&end).and_then(|_| {
            text.match_indices(&end).find(|(i, _)| text[i + end.len()..].starts_with(|c: char| c.is_ascii_digit())).map(|(i, _)| i)
        }) {
            let rest = &text[pos + end.len()..];
            let code: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if rest.len() > code.len() {
                let start = text.find(&format!("echo {end}")).map(|i| i + 5 + end.len()).unwrap_or(0);
                return (text[start.min(pos)..pos].to_string(), code.parse().unwrap_or(-1));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, io.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{vm}: `{cmd}` did not finish within {timeout:?}; saw:\n{text}"))
            .expect("read console");
        assert!(n > 0, "{vm}: console closed; saw:\n{text}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Two network namespaces made for one test: `host` (where the daemon, its
/// TAPs and its nftables table live) and `outside` (a stand-in for the rest
/// of the world), joined by a veth pair: host 10.99.0.1 <-> outside 10.99.0.2.
/// Traffic never leaves them.
pub struct NetLab {
    pub host: String,
    pub outside: String,
}

pub const LAB_HOST_IP: &str = "10.99.0.1";
pub const LAB_OUTSIDE_IP: &str = "10.99.0.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl NetLab {
    pub fn new() -> NetLab {
        let tag = format!("{:x}", std::process::id() ^ (Instant::now().elapsed().subsec_nanos() ^ rand_u32()));
        let lab = NetLab { host: format!("pdh{tag}"), outside: format!("pdo{tag}") };
        ip(&["netns", "add", &lab.host]);
        ip(&["netns", "add", &lab.outside]);
        ip(&["-n", &lab.host, "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", &lab.outside]);
        ip(&["-n", &lab.host, "addr", "add", "10.99.0.1/24", "dev", "up0"]);
        ip(&["-n", &lab.outside, "addr", "add", "10.99.0.2/24", "dev", "out0"]);
        for (ns, dev) in [(&lab.host, "up0"), (&lab.outside, "out0")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &lab.host, "route", "add", "default", "via", LAB_OUTSIDE_IP]);
        lab
    }

    /// Runs argv inside `ns`; returns (success, stdout + stderr).
    pub fn exec(&self, ns: &str, argv: &[&str]) -> (bool, String) {
        let out = Command::new("ip").args(["netns", "exec", ns]).args(argv).output().expect("ip netns exec");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// Our TAP devices in the host namespace.
    pub fn taps(&self) -> Vec<String> {
        let (_, out) = self.exec(&self.host, &["ip", "-o", "link", "show"]);
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
            .filter(|n| n.starts_with("pdtap"))
            .collect();
        v.sort();
        v
    }

    /// `nft list table ip paddock` in the host namespace ("" if absent).
    pub fn table(&self) -> String {
        let (ok, out) = self.exec(&self.host, &["nft", "list", "table", "ip", "paddock"]);
        if ok { out } else { String::new() }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in [&self.host, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns.as_str()]).output();
        }
    }
}

pub fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u32::from_ne_bytes(b)
}

/// A TAP-networked spec for the test guest.
pub fn tap_guest_spec(name: &str, switches: &str, groups: &[&str], forwards: &[(u16, u16)]) -> VmSpec {
    let mut spec = guest_spec(name, switches);
    spec.network.mode = paddock::spec::NetworkMode::Tap;
    spec.network.groups = groups.iter().map(|g| g.to_string()).collect();
    spec.network.forwards = forwards.iter().map(|(h, g)| paddock_net::PortForward { host: *h, guest: *g, protocol: paddock_net::Protocol::Tcp }).collect();
    spec
}

/// The guest address of a leased VM, from `paddock ps`'s reach column.
pub fn lease_ip(info: &paddock::VmInfo) -> String {
    info.addresses.iter().find(|a| a.contains("(pdtap")).and_then(|a| a.split(' ').next()).expect("leased address").to_string()
}

/// The gateway of a /30 lease: guest address minus one.
pub fn lease_gateway(guest: &str) -> String {
    let ip: std::net::Ipv4Addr = guest.parse().expect("ipv4");
    std::net::Ipv4Addr::from(u32::from(ip) - 1).to_string()
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

/// Opens the live event stream after `since`. When this returns, the daemon
/// has subscribed (it subscribes before answering), so nothing that
/// happens afterwards can be missed.
pub async fn subscribe(client: &Client, since: u64) -> EventStream {
    EventStream { body: client.events(since, true).await.expect("events stream"), buf: Vec::new() }
}

pub struct EventStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    /// The rest of the stream, for reading it to its end.
    pub fn into_body(self) -> hyper::body::Incoming {
        self.body
    }

    /// The next event matching `pred`; panics at the deadline.
    pub async fn until(&mut self, timeout: Duration, mut pred: impl FnMut(&Event) -> bool) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if let Ok(ev) = serde_json::from_slice::<Event>(&line) {
                    if pred(&ev) {
                        return ev;
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no matching event within {timeout:?}"));
            let Some(Ok(frame)) = frame else { panic!("event stream ended") };
            if let Some(d) = frame.data_ref() {
                self.buf.extend_from_slice(d);
            }
        }
    }
}

/// Follows the event stream after `since` until `pred` matches; panics at
/// the deadline. Returns the matching event.
pub async fn wait_event(client: &Client, since: u64, timeout: Duration, pred: impl FnMut(&Event) -> bool) -> Event {
    subscribe(client, since).await.until(timeout, pred).await
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

/// The median (sorts `v`); for benchmarks.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A process's resident set in KiB; for benchmarks.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// o+x on `dir`: traversable by the VM identities, not listable.
pub fn traversable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).expect("chmod o+x");
}

/// A directory every VM identity may write (sticky, like /tmp): where a
/// fake hypervisor, confined like a real one, leaves its request log.
pub fn writable_by_vms(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
}

/// Serves `body` to every GET on 127.0.0.1; returns the URL, ending in
/// `/name`.
pub fn serve_bytes(body: Vec<u8>, name: &str) -> String {
    use std::io::{Read as _, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/{name}")
}
