//! Files a Cloud Hypervisor process leaves in its run directory when it
//! dies without cleaning up (kill -9, the SIGKILL rung, a crash), removed
//! before the next start, and only when no live process owns them.
//!
//! ```text
//! control.sock        the API socket; CH itself replaces a stale one
//! control.sock.lock   CH's OFD write lock guarding the API socket; left
//!                     behind even by a clean exit
//! vsock.sock          the host side of hybrid vsock; a file here makes the
//!                     next `vm.boot` fail with "Address already in use"
//! ```
//!
//! "Live" is decided the way CH decides it: a process holding the OFD lock
//! on `control.sock.lock` (what CH takes before it binds its API socket),
//! or anything accepting connections on one of the sockets.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::backend::RunPaths;

#[derive(Debug, thiserror::Error)]
pub enum StaleError {
    #[error("{path:?} belongs to a live process; stop it before starting this VM again")]
    InUse { path: PathBuf },
    #[error("cannot check or remove {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The lock file CH keeps next to its API socket.
pub fn lock_path(api_socket: &Path) -> PathBuf {
    let mut p = api_socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// The host side of the VM's hybrid vsock (named in the `vm.create` body).
pub fn vsock_path(paths: &RunPaths) -> PathBuf {
    paths.dir.join("vsock.sock")
}

/// Whether some process holds a lock on `path` that conflicts with a
/// whole-file write lock (F_OFD_GETLK: asks, takes nothing).
fn lock_held(path: &Path) -> Result<bool, StaleError> {
    let io_err = |source| StaleError::Io { path: path.to_path_buf(), source };
    let file = match std::fs::OpenOptions::new().read(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(e)),
    };
    // SAFETY: an all-zero flock is a valid value; type and range are set
    // below (start 0, len 0 = the whole file).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut fl)).map_err(|e| io_err(e.into()))?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Removes the socket at `path` unless something accepts connections on it.
fn remove_socket(path: &Path) -> Result<(), StaleError> {
    match UnixStream::connect(path) {
        Ok(_) => return Err(StaleError::InUse { path: path.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    remove_file(path)
}

fn remove_file(path: &Path) -> Result<(), StaleError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = ?path, "removed a file left by a dead cloud-hypervisor");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StaleError::Io { path: path.to_path_buf(), source }),
    }
}

/// Removes what a dead CH left in `paths.dir`; refuses (InUse), touching
/// nothing, while a live process owns any of it.
pub fn clean(paths: &RunPaths) -> Result<(), StaleError> {
    let lock = lock_path(&paths.control_socket);
    if lock_held(&lock)? {
        return Err(StaleError::InUse { path: lock });
    }
    let vsock = vsock_path(paths);
    for sock in [&paths.control_socket, &vsock] {
        if UnixStream::connect(sock).is_ok() {
            return Err(StaleError::InUse { path: sock.clone() });
        }
    }
    remove_socket(&paths.control_socket)?;
    remove_socket(&vsock)?;
    remove_file(&lock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn take_lock(path: &Path) -> std::fs::File {
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
        // SAFETY: an all-zero flock is a valid value; type and range set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)).unwrap();
        f
    }

    #[test]
    fn dead_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(dir.path(), "vm");
        std::fs::create_dir_all(&paths.dir).unwrap();
        drop(UnixListener::bind(&paths.control_socket).unwrap());
        drop(UnixListener::bind(vsock_path(&paths)).unwrap());
        drop(take_lock(&lock_path(&paths.control_socket)));
        clean(&paths).unwrap();
        assert_eq!(std::fs::read_dir(&paths.dir).unwrap().count(), 0);
        // Nothing there is fine too.
        clean(&paths).unwrap();
    }

    #[test]
    fn a_held_lock_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(dir.path(), "vm");
        std::fs::create_dir_all(&paths.dir).unwrap();
        drop(UnixListener::bind(vsock_path(&paths)).unwrap());
        let lock = lock_path(&paths.control_socket);
        // The OFD lock is held by this open file description; a second
        // open of the file (what `clean` does) sees it as a conflict.
        let held = take_lock(&lock);
        assert!(matches!(clean(&paths), Err(StaleError::InUse { path }) if path == lock));
        assert!(vsock_path(&paths).exists() && lock.exists());
        drop(held);
        clean(&paths).unwrap();
        assert!(!lock.exists());
    }

    #[test]
    fn a_listening_vsock_socket_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(dir.path(), "vm");
        std::fs::create_dir_all(&paths.dir).unwrap();
        let _live = UnixListener::bind(vsock_path(&paths)).unwrap();
        assert!(matches!(clean(&paths), Err(StaleError::InUse { .. })));
        assert!(vsock_path(&paths).exists());
    }
}
