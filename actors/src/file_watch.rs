//! Change notification for one file through inotify (nix), registered
//! with tokio's reactor: wakes on writes, truncation and replacement.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct FileWatch {
    fd: AsyncFd<Fd>,
}

impl FileWatch {
    /// None (logged) when inotify is unavailable, e.g. the user's
    /// `max_user_watches` or `max_user_instances` is exhausted: the caller
    /// then polls.
    pub fn new(path: &Path) -> Option<FileWatch> {
        let r = (|| -> std::io::Result<FileWatch> {
            let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
            let mask = AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF;
            ino.add_watch(path, mask)?;
            // SAFETY: the AsyncFd owns the Inotify, so the descriptor stays
            // open and means the same inotify instance for its whole life.
            let fd = unsafe { AsyncFd::register_with_interest(Fd(ino), tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
            Ok(FileWatch { fd })
        })();
        match r {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(path = ?path, error = %e, "cannot watch the file with inotify; polling it");
                None
            }
        }
    }

    /// Resolves at the next change (events that piled up meanwhile count
    /// as one), or after `at_most`.
    pub async fn changed(&mut self, at_most: Duration) -> std::io::Result<()> {
        let Ok(guard) = tokio::time::timeout(at_most, self.fd.readable()).await else { return Ok(()) };
        let mut guard = guard?;
        loop {
            match guard.get_inner().0.read_events() {
                Ok(_) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        guard.clear_ready();
        Ok(())
    }
}
