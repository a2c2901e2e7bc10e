//! The Process actor: owns one hypervisor process, watches it exit and
//! delivers signals through a pidfd (no PID-reuse race).
//!
//! The process is started in its own session with stdin closed and output
//! to a file, so it never depends on the supervisor: a supervisor crash or
//! restart leaves it running (re-adoption is the Registry's job).

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;

use crate::backend::LaunchPlan;
use crate::vm::phase::ExitInfo;
use crate::vm::{VmMessage, VmNotice};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create {path:?}")]
    Log {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program:?}; is it installed? (set --qemu-binary or --cloud-hypervisor-binary to its path)")]
    Exec {
        program: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program:?}: {limit}")]
    OutOfFds {
        program: std::path::PathBuf,
        limit: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open a pidfd for pid {pid}")]
    Pidfd {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// A freshly spawned hypervisor, not yet watched.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Spawns `plan` in a new session. The argv is a vector; no shell.
/// `instance` is stamped into its environment (`recovery::INSTANCE_ENV`)
/// so that adoption and the orphan scan recognise whose it is.
/// With `jail`, it runs confined (see `confine`).
pub fn spawn(plan: &LaunchPlan, instance: &str, jail: Option<&crate::confine::Jail>) -> Result<Spawned, SpawnError> {
    // The hypervisor creates the console log itself (mode 0666 less its
    // umask); made here first, it keeps our mode whoever opens it.
    let console = private_log(&plan.paths.console_log, false)?;
    if let Some(j) = jail {
        // A confined hypervisor opens it by path as its own uid.
        std::os::unix::fs::fchown(&console, Some(j.identity.uid), Some(j.identity.gid))
            .map_err(|source| SpawnError::Log { path: plan.paths.console_log.clone(), source })?;
    }
    spawn_in_session(&plan.program, plan.arg0.as_deref(), &plan.args, &plan.paths.stderr_log, Some(instance), jail.map(|j| j.child_setup()))
}

/// Spawns `program` (argv[0] `arg0` if given) in a new session, stdin
/// closed, stdout and stderr to `log` (truncated), stamped with `instance`.
pub fn spawn_in_session(
    program: &std::path::Path,
    arg0: Option<&std::ffi::OsStr>,
    args: &[std::ffi::OsString],
    log_path: &std::path::Path,
    instance: Option<&str>,
    confined: Option<crate::confine::child::ChildSetup>,
) -> Result<Spawned, SpawnError> {
    let log = private_log(log_path, true)?;
    let log2 = log.try_clone().map_err(|source| SpawnError::Log { path: log_path.to_path_buf(), source })?;
    // Confined: the daemon opens the program, the child executes it by
    // descriptor (its directory may be closed to the VM's identity).
    let program_fd = match confined {
        Some(_) => Some(crate::confine::files::open_program(program).map_err(|source| exec_error(program, source))?),
        None => None,
    };
    let confined = match (&program_fd, confined) {
        (Some(fd), Some(setup)) => Some(setup.inherit(fd.as_raw_fd())),
        (_, setup) => setup,
    };
    let mut cmd = match &program_fd {
        Some(fd) => std::process::Command::new(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        None => std::process::Command::new(program),
    };
    cmd.arg0(arg0.unwrap_or(program.as_os_str()));
    if let Some(instance) = instance {
        cmd.env(crate::recovery::INSTANCE_ENV, instance);
    }
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the
    // parent; a new session detaches the hypervisor from our terminal and
    // process group, so signals aimed at the supervisor never reach it.
    // umask is async-signal-safe too: files the hypervisor creates (its
    // event monitor, sockets, a console log made anew) are not
    // world-readable. `ChildSetup::apply` makes only raw syscalls on
    // numbers prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::umask(CHILD_UMASK);
            if let Some(setup) = &confined {
                setup.apply()?;
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| exec_error(program, source))?;
    // The child is not reaped before we call wait(), so the pid cannot have
    // been reused yet.
    let pid = child.id().map(|p| p as i32).ok_or(SpawnError::Pidfd {
        pid: 0,
        source: std::io::Error::other("child exited before its pid was read"),
    })?;
    let pidfd = pidfd_open(pid).map_err(|source| SpawnError::Pidfd { pid, source })?;
    Ok(Spawned { child, pid, pidfd })
}

/// Group may read, others nothing (see `console_log::LOG_MODE`).
const CHILD_UMASK: libc::mode_t = 0o027;

/// Opens (creating, or tightening an existing file to) a 0640 log.
fn private_log(path: &std::path::Path, truncate: bool) -> Result<std::fs::File, SpawnError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let err = |source| SpawnError::Log { path: path.to_path_buf(), source };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!truncate)
        .truncate(truncate)
        .mode(crate::console_log::LOG_MODE)
        .open(path)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(crate::console_log::LOG_MODE)).map_err(err)?;
    Ok(f)
}

/// Running out of descriptors is not a missing binary: say which limit.
fn exec_error(program: &std::path::Path, source: std::io::Error) -> SpawnError {
    let limit = match source.raw_os_error() {
        Some(libc::EMFILE) => "the daemon is out of file descriptors (EMFILE); raise its limit (LimitNOFILE= in the unit, or ulimit -n)",
        Some(libc::ENFILE) => "the system is out of file descriptors (ENFILE); raise fs.file-max or close files",
        _ => return SpawnError::Exec { program: program.to_path_buf(), source },
    };
    SpawnError::OutOfFds { program: program.to_path_buf(), limit, source }
}

pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A pidfd registered with the reactor: readable once the process exits.
pub fn watch_pidfd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and
    // refers to the same pidfd for the AsyncFd's whole lifetime.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

pub fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid fd, a signal number, no
    // siginfo and no flags.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub enum ProcessMessage {
    /// Send a signal (SIGTERM, SIGKILL) to the hypervisor.
    Signal(i32),
}

pub struct ProcessActor;

/// How the exit is watched: our own child (exit status known) or an
/// adopted process that a previous supervisor started (pidfd only; the
/// kernel gives its exit status to its new parent, not to us).
pub enum Watch {
    Child(Spawned),
    Adopted { pid: i32, pidfd: OwnedFd },
}

pub struct ProcessArgs {
    pub vm: ActorRef<VmMessage>,
    pub watch: Watch,
}

pub struct ProcessState {
    pid: i32,
    pidfd: OwnedFd,
    waiter: tokio::task::JoinHandle<()>,
}

impl Actor for ProcessActor {
    type Msg = ProcessMessage;
    type State = ProcessState;
    type Arguments = ProcessArgs;

    async fn pre_start(&self, _me: ActorRef<Self::Msg>, args: ProcessArgs) -> Result<ProcessState, ActorProcessingErr> {
        let vm = args.vm;
        let (pid, pidfd, waiter) = match args.watch {
            Watch::Child(Spawned { mut child, pid, pidfd }) => {
                let waiter = tokio::spawn(async move {
                    let exit = match child.wait().await {
                        Ok(status) => {
                            use std::os::unix::process::ExitStatusExt as _;
                            ExitInfo { code: status.code(), signal: status.signal() }
                        }
                        Err(e) => {
                            tracing::error!(pid, error = %e, "waiting for the hypervisor failed");
                            ExitInfo { code: None, signal: None }
                        }
                    };
                    tracing::info!(pid, %exit, "hypervisor exited");
                    let _ = vm.cast(VmNotice::ProcessExited { pid, exit }.into());
                });
                (pid, pidfd, waiter)
            }
            Watch::Adopted { pid, pidfd } => {
                // A pidfd becomes readable when the process exits.
                let watched = watch_pidfd(pidfd.try_clone()?)?;
                let waiter = tokio::spawn(async move {
                    let _ = watched.readable().await;
                    tracing::info!(pid, "adopted hypervisor exited");
                    let _ = vm.cast(VmNotice::ProcessExited { pid, exit: ExitInfo { code: None, signal: None } }.into());
                });
                (pid, pidfd, waiter)
            }
        };
        Ok(ProcessState { pid, pidfd, waiter })
    }

    async fn handle(&self, _me: ActorRef<Self::Msg>, msg: ProcessMessage, st: &mut ProcessState) -> Result<(), ActorProcessingErr> {
        match msg {
            ProcessMessage::Signal(sig) => {
                if let Err(e) = pidfd_signal(&st.pidfd, sig) {
                    // ESRCH: already gone; the exit notice is on its way.
                    tracing::debug!(pid = st.pid, sig, error = %e, "signal not delivered");
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<Self::Msg>, st: &mut ProcessState) -> Result<(), ActorProcessingErr> {
        // Stopping the actor must not stop the VM: only the exit watch ends.
        st.waiter.abort();
        Ok(())
    }
}

/// Field 22 (starttime) of /proc/PID/stat: with the boot id it identifies a
/// process across PID reuse.
pub fn process_start_time(pid: i32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // comm (field 2) may contain spaces and parentheses: parse after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| std::io::Error::other("malformed stat"))?;
    after
        .split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed stat"))
}

pub fn boot_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_exhaustion_is_named_not_blamed_on_the_binary() {
        let e = exec_error(std::path::Path::new("qemu"), std::io::Error::from_raw_os_error(libc::EMFILE)).to_string();
        assert!(e.contains("EMFILE") && !e.contains("installed"), "{e}");
        let e = exec_error(std::path::Path::new("qemu"), std::io::Error::from_raw_os_error(libc::ENFILE)).to_string();
        assert!(e.contains("ENFILE"), "{e}");
        let e = exec_error(std::path::Path::new("qemu"), std::io::Error::from_raw_os_error(libc::ENOENT)).to_string();
        assert!(e.contains("installed"), "{e}");
    }

    #[test]
    fn logs_are_made_private_even_if_they_existed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_log(&p, false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read(&p).unwrap(), b"old", "the console log is kept");
    }

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id() as i32;
        let a = process_start_time(me).unwrap();
        assert!(a > 0);
        assert_eq!(a, process_start_time(me).unwrap());
        assert_eq!(boot_id().unwrap().len(), 36);
    }
}
