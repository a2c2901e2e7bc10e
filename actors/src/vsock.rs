//! vsock: a virtio-vsock device per VM, and one host-side way in.
//!
//! ```text
//! host program ── RUN/NAME/vsock.sock ──┬── Cloud Hypervisor (built in)
//!   "CONNECT <port>\n" -> "OK <n>\n"     `── vhost-device-vsock ── vhost-user ── QEMU
//! ```
//!
//! Every backend offers the guest's vsock as a *hybrid* Unix socket,
//! `RUN/NAME/vsock.sock`: connect, write `CONNECT <port>\n`, read
//! `OK <host port>\n`; from then on the stream is the guest's port.
//! Connections the guest opens to host port P arrive at `vsock.sock_P`.
//!
//! - Cloud Hypervisor has it built in (`vm.create`'s `vsock.socket`).
//! - QEMU, where the host has no `/dev/vhost-vsock` (this is the common
//!   case in nested and container hosts): a vhost-user device process,
//!   rust-vmm's `vhost-device-vsock`, which speaks the same hybrid
//!   protocol. QEMU reaches it through a vhost-user socket and must share
//!   the guest's memory with it (`memory-backend-memfd,share=on`; works
//!   under TCG too). The device is a child the VM supervises: started
//!   before QEMU, stopped after it, found again after a daemon restart by
//!   its argv[0] marker `paddock-vsock:NAME` (the orphan scan stops one
//!   nobody owns).
//! - QEMU with `/dev/vhost-vsock`: the kernel's `vhost-vsock-pci`; the
//!   host reaches the guest through AF_VSOCK (CID, port) instead.
//!
//! The guest CID is derived from the VM name, so it is stable across runs.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use crate::backend::RunPaths;

/// The kernel's vhost-vsock device; without it QEMU uses the vhost-user device process.
pub const VHOST_VSOCK_DEV: &str = "/dev/vhost-vsock";

/// The guest CID of VM `name`: stable per name, never 0-2 (reserved).
pub fn guest_cid(name: &str) -> u32 {
    crate::cloud_hypervisor::backend::vsock_cid(name)
}

/// The hybrid socket host programs connect to (the same path on every backend).
pub fn host_socket(paths: &RunPaths) -> PathBuf {
    paths.dir.join("vsock.sock")
}

/// The vhost-user socket between QEMU and the device process.
pub fn device_socket(paths: &RunPaths) -> PathBuf {
    paths.dir.join("vhost-vsock.sock")
}

/// argv[0] of VM `name`'s device process: how a restarted daemon finds it.
pub fn device_marker(name: &str) -> String {
    format!("paddock-vsock:{name}")
}

pub use crate::state::vsock_info::VsockInfo;

/// How QEMU gets its vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuVsock {
    /// `vhost-vsock-pci,guest-cid=N` (host has /dev/vhost-vsock).
    Kernel { cid: u32 },
    /// `vhost-user-vsock-pci` on `socket`, served by a device process.
    User { cid: u32, socket: PathBuf },
}

/// The device process to start before QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    pub program: PathBuf,
    pub arg0: OsString,
    pub args: Vec<OsString>,
    /// The vhost-user socket it listens on; QEMU starts once it exists.
    pub socket: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

/// The device process's argv (separate flags, not `--vm k=v,...`, so a
/// path with ',' stays one value).
pub fn device_plan(binary: &Path, name: &str, paths: &RunPaths) -> DevicePlan {
    let socket = device_socket(paths);
    let args = vec![
        "--guest-cid".into(),
        guest_cid(name).to_string().into(),
        "--socket".into(),
        socket.clone().into_os_string(),
        "--uds-path".into(),
        host_socket(paths).into_os_string(),
    ];
    DevicePlan { program: binary.to_path_buf(), arg0: device_marker(name).into(), args, socket, log: paths.dir.join("vsock-device.log") }
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("VM {name:?} has no vsock; set vsock = true in its spec")]
    NotEnabled { name: String },
    #[error("VM {name:?} is not running; its vsock is reachable only while it runs")]
    NotRunning { name: String },
    #[error("cannot connect to {path:?}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest port {port} did not accept the connection (answer: {answer:?}); is a service listening there?")]
    Refused { vm: String, port: u32, answer: String },
    #[error("guest port {port}: no answer within {timeout_ms} ms")]
    Timeout { port: u32, timeout_ms: u64 },
    #[error("vsock device process for VM {name:?} did not come up: {reason}")]
    Device { name: String, reason: String },
}

impl From<VsockError> for crate::error::Error {
    fn from(e: VsockError) -> Self {
        use crate::error::Error;
        match e {
            VsockError::NotEnabled { ref name } | VsockError::NotRunning { ref name } => Error::Conflict { name: name.clone(), message: e.to_string() },
            VsockError::Refused { ref vm, .. } => Error::Conflict { name: vm.clone(), message: e.to_string() },
            VsockError::Timeout { port, timeout_ms } => Error::Timeout { what: format!("vsock port {port}"), timeout_ms },
            VsockError::Connect { ref path, .. } => {
                let context = format!("vsock: cannot connect to {path:?}");
                match e {
                    VsockError::Connect { source, .. } => Error::Io { context, source },
                    _ => unreachable!("matched above"),
                }
            }
            VsockError::Device { name, reason } => Error::StartFailed { name, reason },
        }
    }
}

/// A connected stream to a guest port.
pub type VsockStream = tokio::net::UnixStream;

/// Connects to guest `port` through `info`, with a deadline on the whole
/// handshake.
pub async fn connect(vm: &str, info: &VsockInfo, port: u32, timeout: Duration) -> Result<VsockStream, VsockError> {
    let work = async {
        match &info.socket {
            Some(path) => connect_hybrid(vm, path, port).await,
            None => connect_kernel(info.cid, port).await,
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| VsockError::Timeout { port, timeout_ms: timeout.as_millis() as u64 })?
}

/// The hybrid handshake: `CONNECT <port>\n`, then `OK <host port>\n`.
async fn connect_hybrid(vm: &str, path: &Path, port: u32) -> Result<VsockStream, VsockError> {
    let cerr = |source| VsockError::Connect { path: path.to_path_buf(), source };
    let mut stream = tokio::net::UnixStream::connect(path).await.map_err(cerr)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await.map_err(cerr)?;
    // Read the answer byte by byte: anything after its newline is already
    // the guest's data and must stay in the stream.
    let mut answer = Vec::new();
    let mut reader = tokio::io::BufReader::with_capacity(1, &mut stream);
    reader.read_until(b'\n', &mut answer).await.map_err(cerr)?;
    let answer = String::from_utf8_lossy(&answer).trim().to_string();
    if !answer.starts_with("OK ") {
        return Err(VsockError::Refused { vm: vm.to_string(), port, answer });
    }
    Ok(stream)
}

/// AF_VSOCK to (cid, port) for the kernel's vhost-vsock. The socket is
/// handed out as a `UnixStream`: only read, write and shutdown are used
/// on it, which are the same system calls for any stream socket.
async fn connect_kernel(cid: u32, port: u32) -> Result<VsockStream, VsockError> {
    let path = PathBuf::from(format!("vsock:{cid}:{port}"));
    let cerr = |source| VsockError::Connect { path: path.clone(), source };
    let fd = tokio::task::spawn_blocking(move || vsock_socket_connect(cid, port))
        .await
        .map_err(|e| cerr(std::io::Error::other(e.to_string())))?
        .map_err(cerr)?;
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true).map_err(cerr)?;
    tokio::net::UnixStream::from_std(std_stream).map_err(cerr)
}

fn vsock_socket_connect(cid: u32, port: u32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: socket() takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    use std::os::fd::AsRawFd as _;
    // SAFETY: addr is a valid sockaddr_vm of the size passed.
    let r = unsafe {
        libc::connect(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t)
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// The live device process of VM `name` under `run_dir`, if any: argv[0]
/// is its marker and its argv names this run directory.
pub fn find_device(run_dir: &Path, name: &str) -> Option<i32> {
    let marker = device_marker(name);
    let needle = format!("{}/", run_dir.display());
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
        let argv = crate::recovery::cmdline(pid)?;
        (argv.first() == Some(&marker) && argv.iter().any(|a| a.contains(&needle))).then_some(pid)
    })
}

/// A running device process, watched through its pidfd.
pub struct Device {
    pub pid: i32,
    pidfd: OwnedFd,
    watch: tokio::task::JoinHandle<()>,
}

impl Device {
    /// Starts the device in its own session (it outlives a daemon restart,
    /// like the hypervisor) and waits, up to `timeout`, for its socket.
    /// `confined`: run as the VM's own identity (it shares the VM's run
    /// directory and sockets).
    pub async fn start(vm: &str, plan: &DevicePlan, timeout: Duration, confined: Option<crate::confine::child::ChildSetup>) -> Result<Device, VsockError> {
        let fail = |reason: String| VsockError::Device { name: vm.to_string(), reason };
        let _ = std::fs::remove_file(&plan.socket);
        let spawned = crate::process::spawn_in_session(&plan.program, Some(&plan.arg0), &plan.args, &plan.log, None, confined)
            .map_err(|e| fail(format!("{e} (install it with `cargo install vhost-device-vsock`, or point --vsock-device-binary at it)")))?;
        let pid = spawned.pid;
        let watched = crate::process::watch_pidfd(spawned.pidfd.try_clone().map_err(|e| fail(e.to_string()))?).map_err(|e| fail(e.to_string()))?;
        let mut child = spawned.child;
        let deadline = tokio::time::Instant::now() + timeout;
        // The socket appears once the device listens; QEMU (the vhost-user
        // client) must not start before that.
        loop {
            if plan.socket.exists() {
                break;
            }
            let tick = tokio::time::sleep(Duration::from_millis(10));
            tokio::select! {
                _ = watched.readable() => {
                    let said = std::fs::read_to_string(&plan.log).unwrap_or_default();
                    return Err(fail(format!("it exited: {}", said.trim())));
                }
                _ = tick => {}
            }
            if tokio::time::Instant::now() > deadline {
                let _ = crate::process::pidfd_signal(&spawned.pidfd, libc::SIGKILL);
                let _ = child.wait().await;
                return Err(fail(format!("no socket at {:?} within {} ms", plan.socket, timeout.as_millis())));
            }
        }
        let name = vm.to_string();
        let watch = tokio::spawn(async move {
            let _ = child.wait().await;
            tracing::warn!(vm = %name, pid, "vsock device process exited");
        });
        tracing::info!(vm, pid, "vsock device started");
        Ok(Device { pid, pidfd: spawned.pidfd, watch })
    }

    /// Takes back the device of an adopted VM.
    pub fn adopt(vm: &str, pid: i32) -> Option<Device> {
        let pidfd = crate::process::pidfd_open(pid).ok()?;
        // The identity again, now that the pidfd pins the process.
        let argv = crate::recovery::cmdline(pid)?;
        if argv.first() != Some(&device_marker(vm)) {
            return None;
        }
        let watched = crate::process::watch_pidfd(pidfd.try_clone().ok()?).ok()?;
        let name = vm.to_string();
        let watch = tokio::spawn(async move {
            let _ = watched.readable().await;
            tracing::warn!(vm = %name, pid, "vsock device process exited");
        });
        Some(Device { pid, pidfd, watch })
    }

    /// SIGTERM, then SIGKILL if it is still there after a bounded wait.
    pub async fn stop(self, vm: &str) {
        self.watch.abort();
        let Ok(watched) = crate::process::watch_pidfd(self.pidfd) else { return };
        let _ = crate::process::pidfd_signal(watched.get_ref(), libc::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(2), watched.readable()).await.is_err() {
            let _ = crate::process::pidfd_signal(watched.get_ref(), libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(2), watched.readable()).await;
        }
        // Our own child's handle was dropped with the aborted watch task:
        // tokio reaps such orphans itself, so no zombie stays.
        tracing::info!(vm, pid = self.pid, "vsock device stopped");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn device_argv_keeps_paths_whole_and_carries_the_marker() {
        let paths = RunPaths::new(Path::new("/run/p,1"), "web");
        let plan = device_plan(Path::new("vhost-device-vsock"), "web", &paths);
        assert_eq!(plan.arg0, "paddock-vsock:web");
        let args: Vec<String> = plan.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[1], guest_cid("web").to_string());
        assert_eq!(args[3], "/run/p,1/web/vhost-vsock.sock");
        assert_eq!(args[5], "/run/p,1/web/vsock.sock");
    }

    #[tokio::test]
    async fn hybrid_handshake_refusal_names_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            // What vhost-device-vsock does when nothing listens: close.
            drop(s);
        });
        let info = VsockInfo { cid: 3, socket: Some(path) };
        match connect("t", &info, 5000, Duration::from_secs(5)).await {
            Err(VsockError::Refused { port: 5000, .. }) => {}
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn data_after_the_ok_line_stays_in_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = Vec::new();
            let mut r = tokio::io::BufReader::new(&mut s);
            r.read_until(b'\n', &mut line).await.unwrap();
            assert_eq!(line, b"CONNECT 7\n");
            s.write_all(b"OK 1024\nhello").await.unwrap();
        });
        let info = VsockInfo { cid: 3, socket: Some(path) };
        let mut s = connect("t", &info, 7, Duration::from_secs(5)).await.unwrap();
        let mut rest = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut rest).await.unwrap();
        assert_eq!(rest, "hello");
    }
}
