//! What a supervisor restart needs: deciding whether a recorded hypervisor
//! process is still the one we started, and finding the ones we did not
//! record (orphans).
//!
//! A process is adopted only if its pid, its start time (/proc/PID/stat),
//! the host's boot id and its marker all match the record: pids are
//! reused, and a process that merely has the same pid is neither adopted
//! nor touched. The marker is `paddock-NAME` in either backend's form:
//! QEMU's `-name paddock-NAME`, Cloud Hypervisor's argv[0].

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{boot_id, pidfd_open, pidfd_signal, process_start_time};
use crate::store::RunRecord;
use crate::vm::phase::Rung;

/// The environment variable every hypervisor is started with: the
/// instance id of the state directory whose supervisor started it.
pub const INSTANCE_ENV: &str = "PADDOCK_INSTANCE";
/// The file in each VM's run directory naming the instance that made it.
pub const DIR_STAMP: &str = "owner";

/// The instance a live process was started by (`INSTANCE_ENV` in
/// /proc/PID/environ), or None if it carries none or is gone.
pub fn instance_of(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{INSTANCE_ENV}=");
    raw.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Whether a run directory (or a process started by another supervisor)
/// belongs to `instance`. A process or directory with no stamp at all
/// predates stamping and is judged by its path alone.
fn same_instance(found: Option<&str>, instance: &str) -> bool {
    found.is_none_or(|f| f == instance)
}

/// Whether `dir` (a VM's run directory) belongs to another paddock that
/// still uses it: it is another daemon's run dir (it holds that daemon's
/// lock file), or it carries another instance's stamp and a hypervisor of
/// that instance still runs in it. A stamp of a paddock that is gone (its
/// state dir was lost) does not protect a stale directory in our run dir,
/// which we hold the lock of. An unstamped directory (a crash between its
/// mkdir and its stamp) is judged by where it is: in our run dir, so ours.
pub fn dir_is_foreign(dir: &Path, instance: &str) -> bool {
    if dir.join("paddock.lock").exists() {
        return true;
    }
    let stamp = std::fs::read_to_string(dir.join(DIR_STAMP)).unwrap_or_default();
    let stamp = stamp.trim();
    !stamp.is_empty() && stamp != instance && hypervisor_in(dir).is_some_and(|pid| instance_of(pid).as_deref() == Some(stamp))
}

/// A live marked process whose control socket is in `dir`.
fn hypervisor_in(dir: &Path) -> Option<i32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok()).find(|pid| {
        cmdline(*pid).is_some_and(|argv| {
            marker_of(&argv).is_some()
                && matches!(control_of(&argv), OrphanControl::Qmp(p) | OrphanControl::ChApi(p) if p.parent() == Some(dir))
        })
    })
}

/// Stamps `dir` as made by `instance`; written aside and renamed, so a
/// crash never leaves a half-written stamp.
pub fn stamp_dir(dir: &Path, instance: &str) -> std::io::Result<()> {
    let stamp = dir.join(DIR_STAMP);
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == instance) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{DIR_STAMP}.tmp"));
    std::fs::write(&tmp, instance)?;
    std::fs::rename(&tmp, &stamp)
}

/// Removes a VM's run directory unless it belongs to another paddock.
pub fn remove_run_dir(dir: &Path, instance: &str) -> std::io::Result<()> {
    if dir_is_foreign(dir, instance) {
        tracing::warn!(dir = ?dir, "not removing a directory that another paddock made");
        return Ok(());
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Why a recorded run cannot be adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdoptable {
    #[error("process {pid} is gone")]
    Gone { pid: i32 },
    #[error("the host rebooted since the run was recorded")]
    Rebooted,
    #[error("pid {pid} now belongs to another process (start time {found}, recorded {recorded})")]
    PidReused { pid: i32, found: u64, recorded: u64 },
    #[error("pid {pid} does not carry the marker {marker}")]
    NotOurs { pid: i32, marker: String },
    #[error("pid {pid} was started by another paddock (instance {found}, ours {ours})")]
    OtherInstance { pid: i32, found: String, ours: String },
}

/// The argv of a live process, or None if it is gone (or a zombie).
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')) {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

/// The `paddock-NAME` marker a process carries, in either backend's form:
/// QEMU's `-name paddock-NAME[,...]` or Cloud Hypervisor's argv[0].
pub fn marker_of(argv: &[String]) -> Option<String> {
    let is_marker = |m: &str| m.strip_prefix("paddock-").is_some_and(|n| crate::spec::validate_name(n).is_ok());
    if let Some(m) = argv.windows(2).find(|w| w[0] == "-name").map(|w| w[1].split(',').next().unwrap_or_default().to_string()) {
        if is_marker(&m) {
            return Some(m);
        }
    }
    argv.first().filter(|a| is_marker(a)).cloned()
}

pub fn has_marker(argv: &[String], marker: &str) -> bool {
    marker_of(argv).as_deref() == Some(marker) || is_device(argv) && argv.first().map(String::as_str) == Some(marker)
}

/// A VM's helper process (the vsock device), marked `paddock-vsock:NAME`
/// in argv[0].
fn is_device(argv: &[String]) -> bool {
    argv.first().and_then(|a| a.strip_prefix("paddock-vsock:")).is_some_and(|n| crate::spec::validate_name(n).is_ok())
}

/// Checks the recorded run against the live process table and, if it
/// matches, returns a pidfd for it. The identity is checked again after the
/// pidfd is open, so the pidfd cannot refer to a process that replaced the
/// recorded one in between.
pub fn verify(run: &RunRecord, marker: &str, instance: &str) -> Result<OwnedFd, NotAdoptable> {
    let pid = run.pid;
    if boot_id().ok().as_deref() != Some(run.boot_id.as_str()) {
        return Err(NotAdoptable::Rebooted);
    }
    let check = || -> Result<(), NotAdoptable> {
        let found = process_start_time(pid).map_err(|_| NotAdoptable::Gone { pid })?;
        if found != run.start_time {
            return Err(NotAdoptable::PidReused { pid, found, recorded: run.start_time });
        }
        let argv = cmdline(pid).ok_or(NotAdoptable::Gone { pid })?;
        if !has_marker(&argv, marker) {
            return Err(NotAdoptable::NotOurs { pid, marker: marker.to_string() });
        }
        if let Some(found) = instance_of(pid).filter(|f| f != instance) {
            return Err(NotAdoptable::OtherInstance { pid, found, ours: instance.to_string() });
        }
        Ok(())
    };
    check()?;
    let fd = pidfd_open(pid).map_err(|_| NotAdoptable::Gone { pid })?;
    check()?;
    Ok(fd)
}

/// How an orphan's hypervisor can be asked to quit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrphanControl {
    /// QEMU: `-qmp unix:PATH`.
    Qmp(PathBuf),
    /// Cloud Hypervisor: `--api-socket path=PATH`.
    ChApi(PathBuf),
    None,
}

/// A live process that carries the paddock marker, belongs to this run
/// directory, and is not supervised.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub pid: i32,
    pub marker: String,
    pub control: OrphanControl,
}

/// The control socket named on a hypervisor's command line.
fn control_of(argv: &[String]) -> OrphanControl {
    for w in argv.windows(2) {
        if w[0] == "-qmp" {
            if let Some(s) = w[1].strip_prefix("unix:") {
                return OrphanControl::Qmp(PathBuf::from(s.split(',').next().unwrap_or(s)));
            }
        }
        if w[0] == "--api-socket" {
            let path = w[1].split(',').find_map(|kv| kv.strip_prefix("path=")).or_else(|| (!w[1].contains('=')).then_some(w[1].as_str()));
            if let Some(p) = path {
                return OrphanControl::ChApi(PathBuf::from(p));
            }
        }
    }
    OrphanControl::None
}

/// The run directory a hypervisor's control socket lives in
/// (`RUN_DIR/NAME/control.sock` -> `RUN_DIR`).
fn run_dir_of(control: &OrphanControl) -> Option<&Path> {
    match control {
        OrphanControl::Qmp(p) | OrphanControl::ChApi(p) => p.parent()?.parent(),
        OrphanControl::None => None,
    }
}

/// The run directory of a vsock device (`--uds-path RUN_DIR/NAME/vsock.sock`).
fn device_run_dir(argv: &[String]) -> Option<PathBuf> {
    if !is_device(argv) {
        return None;
    }
    let uds = argv.windows(2).find(|w| w[0] == "--uds-path")?;
    Path::new(&uds[1]).parent()?.parent().map(Path::to_path_buf)
}

/// Processes marked `paddock-*` whose control socket is exactly in
/// `run_dir` (whole path components: a run dir nested inside ours, or
/// ours inside another, is another daemon's), minus `known` (the adopted
/// ones). Other daemons' VMs are not ours to judge. One stamped with
/// another instance (a state dir that was lost or replaced) is still an
/// orphan here: we hold this run dir's lock, so no live daemon owns it;
/// the log says whose it was.
pub fn find_orphans(run_dir: &Path, instance: &str, known: &[i32]) -> Vec<Orphan> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if known.contains(&pid) {
            continue;
        }
        let Some(argv) = cmdline(pid) else { continue };
        let marker = match marker_of(&argv) {
            Some(m) => m,
            None if is_device(&argv) => argv[0].clone(),
            None => continue,
        };
        let control = control_of(&argv);
        let dir = run_dir_of(&control).map(Path::to_path_buf).or_else(|| device_run_dir(&argv));
        if dir.as_deref() != Some(run_dir) {
            continue;
        }
        if let Some(other) = instance_of(pid).filter(|i| !same_instance(Some(i), instance)) {
            tracing::warn!(pid, %marker, instance = %other, "orphan started by another state directory's paddock in our run dir");
        }
        out.push(Orphan { pid, marker, control });
    }
    out
}

/// Stops an orphan with the VM ladder's non-guest rungs (quit, SIGTERM,
/// SIGKILL), each waiting `RUNG_WAIT_MS` as in a stop: the guest is not
/// ours to ask, so there is no ACPI. Returns the rung that ended it.
pub async fn stop_orphan(o: &Orphan, control_timeout: Duration) -> &'static str {
    let Ok(fd) = pidfd_open(o.pid) else { return "gone" };
    // Same identity check as adoption: the pidfd must be the process we saw.
    if !cmdline(o.pid).is_some_and(|a| has_marker(&a, &o.marker)) {
        return "gone";
    }
    let fd = match crate::process::watch_pidfd(fd) {
        Ok(fd) => fd,
        Err(_) => return "gone",
    };
    let wait = Duration::from_millis(crate::vm::core::RUNG_WAIT_MS);
    let mut rung = Some(Rung::Quit);
    while let Some(r) = rung {
        let acted = match r {
            Rung::Acpi => false,
            Rung::Quit => quit_orphan(&o.control, control_timeout).await,
            Rung::Term => pidfd_signal(fd.get_ref(), libc::SIGTERM).is_ok(),
            Rung::Kill => pidfd_signal(fd.get_ref(), libc::SIGKILL).is_ok(),
        };
        if acted && tokio::time::timeout(wait, fd.readable()).await.is_ok() {
            return r.as_str();
        }
        rung = r.next();
    }
    Rung::Kill.as_str()
}

/// The quit rung for an orphan, through its backend. A socket that is
/// gone (a rollback removed the directory) or refuses connections cannot
/// carry a quit: straight to signals instead of waiting the control
/// timeout on it.
async fn quit_orphan(control: &OrphanControl, timeout: Duration) -> bool {
    let reachable = |p: &Path| std::os::unix::net::UnixStream::connect(p).is_ok();
    match control {
        OrphanControl::Qmp(p) | OrphanControl::ChApi(p) if !reachable(p) => false,
        OrphanControl::Qmp(qmp) => crate::qemu::quit_orphan(qmp, timeout).await,
        OrphanControl::ChApi(api) => crate::cloud_hypervisor::backend::quit_orphan(api, timeout).await,
        OrphanControl::None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: i32, start_time: u64) -> RunRecord {
        RunRecord {
            vm: "x".into(),
            pid,
            start_time,
            boot_id: boot_id().unwrap(),
            paths: crate::backend::RunPaths::new(Path::new("/run/x"), "x"),
        }
    }

    #[test]
    fn a_process_without_the_marker_is_not_adopted() {
        let me = std::process::id() as i32;
        let st = process_start_time(me).unwrap();
        assert!(matches!(verify(&record(me, st), "paddock-x", "i"), Err(NotAdoptable::NotOurs { .. })));
    }

    #[test]
    fn a_different_start_time_is_pid_reuse() {
        let me = std::process::id() as i32;
        let st = process_start_time(me).unwrap();
        assert!(matches!(verify(&record(me, st + 1), "paddock-x", "i"), Err(NotAdoptable::PidReused { .. })));
    }

    #[test]
    fn another_boot_is_never_adopted() {
        let mut r = record(1, 1);
        r.boot_id = "00000000-0000-0000-0000-000000000000".into();
        assert_eq!(verify(&r, "paddock-x", "i").unwrap_err(), NotAdoptable::Rebooted);
    }

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn marker_must_be_an_exact_name_argument() {
        assert!(has_marker(&argv("qemu -name paddock-web -m 1"), "paddock-web"));
        assert!(has_marker(&argv("qemu -name paddock-web,debug-threads=on"), "paddock-web"));
        assert!(!has_marker(&argv("qemu -name paddock-web2 -m 1"), "paddock-web"));
        assert!(!has_marker(&argv("qemu paddock-web"), "paddock-web"));
    }

    #[test]
    fn cloud_hypervisor_marker_is_argv0() {
        let a = argv("paddock-web --api-socket path=/run/p/web/control.sock --event-monitor path=/run/p/web/events.json");
        assert!(has_marker(&a, "paddock-web"));
        assert_eq!(control_of(&a), OrphanControl::ChApi("/run/p/web/control.sock".into()));
        assert!(!has_marker(&argv("/usr/bin/cloud-hypervisor --api-socket path=/x"), "paddock-web"));
        // The daemon itself is not a VM.
        assert_eq!(marker_of(&argv("/usr/bin/paddock serve --run-dir /run/p")), None);
    }

    #[test]
    fn a_nested_run_dir_is_not_ours() {
        let a = argv("qemu -name paddock-web -qmp unix:/run/p/inner/web/control.sock,server=on,wait=off");
        let c = control_of(&a);
        assert_eq!(run_dir_of(&c), Some(Path::new("/run/p/inner")));
        assert_ne!(run_dir_of(&c), Some(Path::new("/run/p")));
        // String prefixes are not path prefixes.
        let b = control_of(&argv("qemu -name paddock-web -qmp unix:/run/p2/web/control.sock"));
        assert_ne!(run_dir_of(&b), Some(Path::new("/run/p")));
        assert!(same_instance(None, "i") && same_instance(Some("i"), "i") && !same_instance(Some("j"), "i"));
    }

    #[test]
    fn qemu_control_is_the_qmp_socket() {
        let a = argv("qemu -name paddock-web -qmp unix:/run/p/web/control.sock,server=on,wait=off");
        assert_eq!(control_of(&a), OrphanControl::Qmp("/run/p/web/control.sock".into()));
    }
}
