//! paddock-images: the files a VM boots from.
//!
//! Owns: checking that boot files and disks exist and are readable before a
//! hypervisor is started, and detecting a disk's format from its header.
//! Does not own: processes or actors. Downloads, qcow2 overlays, cloud-init
//! seeds and FAT service disks arrive with the images issue and live here.

mod error;
mod format;

pub use error::{Error, Result};
pub use format::{detect_format, DiskFormat};

use std::path::Path;

/// Checks that `path` (named `field` in the spec) is an absolute path to a
/// readable regular file. Errors say which field and how to fix it.
pub fn check_file(field: &str, path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::NotAbsolute { field: field.to_string(), path: path.to_path_buf() });
    }
    let meta = std::fs::metadata(path).map_err(|source| Error::Unreadable {
        field: field.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(Error::NotAFile { field: field.to_string(), path: path.to_path_buf() });
    }
    std::fs::File::open(path).map_err(|source| Error::Unreadable {
        field: field.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_field_and_path() {
        let err = check_file("boot.kernel", Path::new("/nonexistent/vmlinuz")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boot.kernel") && msg.contains("/nonexistent/vmlinuz"), "{msg}");
    }

    #[test]
    fn relative_path_is_rejected() {
        assert!(matches!(check_file("boot.kernel", Path::new("vmlinuz")), Err(Error::NotAbsolute { .. })));
    }

    #[test]
    fn directory_is_not_a_file() {
        assert!(matches!(check_file("boot.kernel", Path::new("/tmp")), Err(Error::NotAFile { .. })));
    }
}
