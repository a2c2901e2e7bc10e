//! Temporary files beside their destination, removed on drop unless kept.
//!
//! Owns: the naming of the crate's temporary files (`.NAME.tmp.PID.N`, in
//! the destination's directory so that the final rename or link stays on
//! one filesystem) and the directory fsync after a file is published.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A path that is unlinked when dropped (a missing file is fine).
#[derive(Debug)]
pub(crate) struct TempPath {
    path: PathBuf,
}

impl TempPath {
    /// A fresh name in the directory of `dest`; nothing is created yet.
    pub(crate) fn beside(dest: &Path) -> std::io::Result<TempPath> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = dest
            .file_name()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path has no file name"))?;
        Ok(Self::in_dir(dir, &name.to_string_lossy()))
    }

    /// A fresh name in `dir`, derived from `stem`.
    pub(crate) fn in_dir(dir: &Path, stem: &str) -> TempPath {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        TempPath { path: dir.join(format!(".{stem}.tmp.{}.{n}", std::process::id())) }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// fsync the directory holding `path`, so a rename or link into it is
/// durable.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => std::fs::File::open(d)?.sync_all(),
        _ => std::fs::File::open(".")?.sync_all(),
    }
}

/// Moves `tmp` to `dest` atomically (replacing `dest`), then syncs the
/// directory. The temporary name is gone afterwards either way.
pub(crate) fn publish(tmp: TempPath, dest: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp.path(), dest)?;
    sync_parent(dest)
}
