//! Private by default: the run and state directories, and every VM's
//! directory in them, are 0700; files in them lose their "other" bits.
//! Serial consoles carry root shells and typed passwords, so no other
//! local user may read them. Directories made by an older version (0755)
//! are tightened at start; a mode that cannot be fixed (another owner, a
//! read-only mount) is a warning naming the path.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;

pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) 0700, or tightens it if it exists.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    tighten(dir, DIR_MODE);
    Ok(())
}

/// Tightens `root` and what lies up to two levels below it (the VM
/// directories and their files); symlinks are not followed.
pub fn tighten_tree(root: &Path) {
    tighten(root, DIR_MODE);
    visit(root, 2);
}

fn visit(dir: &Path, depth: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            tighten(&path, DIR_MODE);
            if depth > 1 {
                visit(&path, depth - 1);
            }
        } else if ft.is_file() {
            let Ok(meta) = e.metadata() else { continue };
            let mode = meta.permissions().mode() & 0o7777;
            tighten(&path, mode & !0o007);
        }
    }
}

/// Sets `want` if the mode differs and gives more than `want`; warns if
/// it cannot.
fn tighten(path: &Path, want: u32) {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & !want == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(want)) {
        Ok(()) => tracing::info!(path = ?path, from = format!("{mode:o}"), to = format!("{want:o}"), "tightened permissions"),
        Err(e) => tracing::warn!(
            path = ?path,
            mode = format!("{mode:o}"),
            want = format!("{want:o}"),
            error = %e,
            "cannot tighten permissions; other users may read this"
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_and_existing_dirs_end_private() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let vm = run.join("web");
        std::fs::create_dir_all(&vm).unwrap();
        for p in [&run, &vm] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let log = vm.join("console.log");
        std::fs::write(&log, b"secret").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
        tighten_tree(&run);
        assert_eq!((mode(&run), mode(&vm), mode(&log)), (0o700, 0o700, 0o640));
        let fresh = dir.path().join("a/b");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
