//! FAT images built from a list of files, with the `fatfs` crate.
//!
//! Owns: sizing a FAT volume from its content, formatting it with a label,
//! and filling it (long file names, nested directories). Used by the vfat
//! cloud-init seed and by service disks. The image is written under a
//! temporary name and renamed into place when complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::tmp::{publish, TempPath};

/// Cluster size we format with. Small volumes only: 4 KiB clusters keep
/// the slack per file low and the cluster count within FAT12/FAT16.
const CLUSTER: u64 = 4096;
/// FAT12/16 root directories hold this many 32-byte entries (fatfs's
/// default; an entry per short name plus one per 13 characters of a long
/// name).
const ROOT_ENTRIES: u64 = 512;

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

/// One entry of the volume, at a `/`-separated path relative to its root.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Dir(String),
    File(String, Source),
}

/// Errors building a FAT image.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("label: {label:?} must be 1 to 11 characters of A-Z, 0-9, space, '-' or '_'")]
    BadLabel { label: String },
    #[error("{path:?}: not a valid FAT name component ({why})")]
    BadName { path: String, why: &'static str },
    #[error("{path:?}: the root directory holds at most {ROOT_ENTRIES} directory entries (long names take several); put files in a subdirectory")]
    RootFull { path: String },
    #[error("cannot read {path:?} to copy it onto the disk")]
    ReadSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the FAT image {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks a volume label and pads it to FAT's 11 bytes.
pub(crate) fn label_bytes(label: &str) -> Result<[u8; 11], FatError> {
    let ok = !label.is_empty()
        && label.len() <= 11
        && label.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'-' || b == b'_');
    if !ok {
        return Err(FatError::BadLabel { label: label.to_string() });
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

/// Rejects names FAT cannot store (or that would escape the volume).
pub(crate) fn check_path(path: &str) -> Result<(), FatError> {
    let bad = |why| Err(FatError::BadName { path: path.to_string(), why });
    if path.is_empty() {
        return bad("empty path");
    }
    for comp in path.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return bad("empty, '.' or '..' component");
        }
        if comp.chars().count() > 255 {
            return bad("longer than 255 characters");
        }
        if comp.chars().any(|c| c.is_control() || "\\:*?\"<>|".contains(c)) {
            return bad("control characters and \\ : * ? \" < > | are not allowed");
        }
        if comp.ends_with('.') || comp.ends_with(' ') {
            return bad("ends with '.' or a space");
        }
    }
    Ok(())
}

fn source_len(src: &Source) -> Result<u64, FatError> {
    match src {
        Source::Bytes(b) => Ok(b.len() as u64),
        Source::Host(p) => std::fs::metadata(p).map(|m| m.len()).map_err(|source| FatError::ReadSource { path: p.clone(), source }),
    }
}

/// Directory entries a name takes: the short entry plus one per 13 UTF-16
/// units of the long name (always counted, to be safe).
fn dir_entries_for(name: &str) -> u64 {
    1 + (name.encode_utf16().count() as u64).div_ceil(13)
}

/// A volume size that fits `entries`, with slack: data clusters of every
/// file, directory clusters, the FATs (2 copies, 16-bit entries counted),
/// reserved sectors and the fixed root directory.
fn volume_size(entries: &[Entry]) -> Result<u64, FatError> {
    use std::collections::BTreeMap;
    let mut clusters: u64 = 0;
    // Directory path -> directory entries used in it.
    let mut dir_use: BTreeMap<&str, u64> = BTreeMap::new();
    for e in entries {
        let path = match e {
            Entry::Dir(p) => p.as_str(),
            Entry::File(p, src) => {
                clusters += source_len(src)?.div_ceil(CLUSTER);
                p.as_str()
            }
        };
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        *dir_use.entry(parent).or_insert(0) += dir_entries_for(name);
    }
    for (dir, used) in &dir_use {
        if dir.is_empty() {
            if *used > ROOT_ENTRIES {
                return Err(FatError::RootFull { path: String::from("/") });
            }
        } else {
            clusters += ((used + 2) * 32).div_ceil(CLUSTER); // + "." and ".."
        }
    }
    // Slack for rounding in fatfs's layout, then the fixed parts.
    let data = (clusters + 16) * CLUSTER;
    let fats = 2 * (clusters + 16) * 2;
    let fixed = 64 * 1024 + ROOT_ENTRIES * 32;
    let size = (data + fats + fixed).next_multiple_of(64 * 1024);
    // Below ~1 MiB some tools guess a floppy geometry; stay above it.
    Ok(size.max(1 << 20))
}

/// Builds the FAT image at `dest` (replacing a previous one atomically).
/// Returns the image size in bytes.
pub(crate) fn write_image(dest: &Path, label: &str, entries: &[Entry]) -> Result<u64, FatError> {
    let label = label_bytes(label)?;
    for e in entries {
        match e {
            Entry::Dir(p) | Entry::File(p, _) => check_path(p)?,
        }
    }
    let size = volume_size(entries)?;
    let werr = |source| FatError::Write { path: dest.to_path_buf(), source };
    let tmp = TempPath::beside(dest).map_err(werr)?;
    let mut file = std::fs::File::options().read(true).write(true).create_new(true).open(tmp.path()).map_err(werr)?;
    file.set_len(size).map_err(werr)?;
    let opts = fatfs::FormatVolumeOptions::new().bytes_per_cluster(CLUSTER as u32).volume_label(label);
    fatfs::format_volume(&mut file, opts).map_err(werr)?;
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).map_err(werr)?;
        let root = fs.root_dir();
        for e in entries {
            match e {
                Entry::Dir(p) => {
                    root.create_dir(p).map_err(werr)?;
                }
                Entry::File(p, src) => {
                    let mut out = root.create_file(p).map_err(werr)?;
                    out.truncate().map_err(werr)?;
                    match src {
                        Source::Bytes(b) => out.write_all(b).map_err(werr)?,
                        Source::Host(hp) => {
                            let mut input = std::fs::File::open(hp).map_err(|source| FatError::ReadSource { path: hp.clone(), source })?;
                            copy(&mut input, &mut out, hp).map_err(|e| match e {
                                CopyError::Read(source) => FatError::ReadSource { path: hp.clone(), source },
                                CopyError::Write(source) => werr(source),
                            })?;
                        }
                    }
                    out.flush().map_err(werr)?;
                }
            }
        }
        drop(root);
        fs.unmount().map_err(werr)?;
    }
    file.sync_all().map_err(werr)?;
    drop(file);
    publish(tmp, dest).map_err(werr)?;
    Ok(size)
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// io::copy, telling read errors (the source's fault) from write errors.
fn copy(input: &mut impl Read, out: &mut impl Write, _path: &Path) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_and_padded() {
        assert_eq!(&label_bytes("CIDATA").unwrap(), b"CIDATA     ");
        assert!(label_bytes("cidata").is_err());
        assert!(label_bytes("TWELVE_CHARS").is_err());
        assert!(label_bytes("").is_err());
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(check_path("a/b c/d.txt").is_ok());
        for p in ["", "a//b", "../x", "a/./b", "a:b", "x\n", "dot."] {
            assert!(check_path(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn image_reads_back_with_fatfs() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.img");
        let big = vec![7u8; 300_000];
        let entries = vec![
            Entry::File("meta-data".into(), Source::Bytes(b"hello".to_vec())),
            Entry::Dir("a".into()),
            Entry::Dir("a/b long name".into()),
            Entry::File("a/b long name/big.bin".into(), Source::Bytes(big.clone())),
        ];
        write_image(&img, "CIDATA", &entries).unwrap();
        let f = std::fs::File::open(&img).unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
        let mut s = Vec::new();
        fs.root_dir().open_file("a/b long name/big.bin").unwrap().read_to_end(&mut s).unwrap();
        assert_eq!(s, big);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
