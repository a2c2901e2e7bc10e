//! paddock-images: the files a VM boots from.
//!
//! Owns:
//! - checking that boot files and disks exist and are readable before a
//!   hypervisor is started, and detecting a disk's format from its header
//!   ([`check_file`], [`detect_format`]);
//! - the image cache: verified, resumable, deduplicated downloads into
//!   content-addressed files ([`ImageCache`], `cache.rs`); local files
//!   imported by content and zstd/xz images decompressed (`import.rs`);
//! - qcow2 overlays on a qcow2 or raw base and qcow2 data disks, written in
//!   Rust with no `qemu-img` at run time ([`create_overlay`],
//!   [`ensure_data_disk`], `qcow2.rs`);
//! - cloud-init NoCloud seeds: typed meta-data, user-data and
//!   network-config rendered through a YAML serializer ([`Seed`],
//!   `seed.rs`), written as ISO 9660 or vfat ([`write_seed_image`],
//!   `seed_image.rs`);
//! - FAT service disks with a launcher script whose every value is
//!   shell-quoted ([`ServiceDisk`], `service_disk.rs`, `quote.rs`).
//!
//! Does not own: processes, actors, the VM spec or the CLI. Nothing here
//! starts a process. File-writing calls block; async callers run them on
//! `spawn_blocking`. [`ImageCache::pull`] is async (tokio).

mod cache;
mod error;
mod fat;
mod format;
mod import;
mod multipart;
mod qcow2;
mod quote;
mod seed;
mod seed_image;
mod service_disk;
mod tmp;

pub use cache::{parse_sha256, CacheError, CacheOptions, CachedImage, ImageCache, Progress};
pub use error::{Error, Result};
pub use fat::FatError;
pub use format::{detect_format, DiskFormat};
pub use import::Compression;
pub use multipart::{part_type as multipart_part_type, MultipartError, USER_MERGE_TYPE};
pub use qcow2::{backing_file, create_overlay, ensure_data_disk, DataDisk, Overlay, Qcow2Error, MAX_VIRTUAL_SIZE};
pub use quote::{shell_quote, shell_quote_checked, QuoteError};
pub use seed::{
    CloudConfig, Ethernet, FsSetup, InstanceId, Match, MetaData, Nameservers, NetworkConfig, Route, RunCmd, Seed, SeedError, SeedFiles,
    User, UserData, WriteFile,
};
pub use seed_image::{write_seed_image, SeedFormat, SeedImageError};
pub use service_disk::{Launcher, ServiceDisk, ServiceDiskError, ServiceDiskInfo, LAUNCHER_NAME};

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
