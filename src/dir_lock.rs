//! One daemon per directory: an exclusive `flock` on `DIR/paddock.lock`,
//! held for the life of the `Runtime`. Two supervisors of one state
//! directory would both adopt the same VMs and fight over them; two on
//! one run directory would take each other's VMs for orphans.
//!
//! The lock dies with the process (the kernel drops it on kill -9), so a
//! crashed daemon never leaves a stale lock. The holder writes its pid
//! into the file so that a refused daemon can name it.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "paddock.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{dir:?} is in use by another paddock (pid {holder}, lock {lock:?}); stop that daemon first or choose another directory")]
    Held { dir: PathBuf, lock: PathBuf, holder: String },
    #[error("cannot lock {lock:?}")]
    Io {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive lock on a directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _lock: Flock<File>,
}

impl DirLock {
    /// Takes the lock without waiting; `Held` names the holder's pid.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let lock = dir.join(LOCK_FILE);
        let io = |source| LockError::Io { lock: lock.clone(), source };
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock).map_err(io)?;
        let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "unknown".to_string(),
                    pid => pid.to_string(),
                };
                return Err(LockError::Held { dir: dir.to_path_buf(), lock, holder });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        // Ours now: say who holds it.
        held.set_len(0).map_err(io)?;
        held.rewind().map_err(io)?;
        writeln!(held, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _lock: held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_dir_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        DirLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
