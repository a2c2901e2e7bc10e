//! FAT images built from a list of files, with the `fatfs` crate.
//!
//! Owns: sizing a FAT volume from its content, formatting it with a label,
//! and filling it (long file names, nested directories). Used by the vfat
//! cloud-init seed and by service disks. The image is written under a
//! temporary name and renamed into place when complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::tmp::{publish, TempPath};

/// FAT16 with 2 KiB clusters up to this volume size, FAT32 with 4 KiB
/// clusters above. Never FAT12: fatfs 0.3.6 wrote a FAT12 volume of 6528
/// sectors whose subdirectories `fsck.vfat` found corrupt, while FAT16 and
/// FAT32 check clean at every size we tried. The images are sparse, so the
/// minimum sizes below cost no disk space.
const FAT16_MAX: u64 = 120 << 20;
/// At least 4085 clusters make FAT16 (here 8192 of 2 KiB).
const FAT16_MIN: u64 = 16 << 20;
/// At least 65525 clusters make FAT32 (here ~66000 of 4 KiB).
const FAT32_MIN: u64 = 272 << 20;
/// Cluster size used for the size estimate (the larger of the two).
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
fn layout(entries: &[Entry]) -> Result<Layout, FatError> {
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
    // Two FATs, counted at 4 bytes per 2 KiB cluster (covers FAT16 and FAT32).
    let fats = 2 * (data / 2048 + 16) * 4;
    let fixed = 64 * 1024 + ROOT_ENTRIES * 32;
    let size = (data + fats + fixed).next_multiple_of(64 * 1024);
    Ok(if size <= FAT16_MAX {
        Layout { size: size.max(FAT16_MIN), fat_type: fatfs::FatType::Fat16, cluster: 2048 }
    } else {
        // FAT32 also needs room for its larger FAT (4 bytes per cluster).
        let size = (size + size / 1024 * 4).next_multiple_of(1 << 20);
        Layout { size: size.max(FAT32_MIN), fat_type: fatfs::FatType::Fat32, cluster: 4096 }
    })
}

/// How a volume is formatted.
struct Layout {
    size: u64,
    fat_type: fatfs::FatType,
    cluster: u32,
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
    let Layout { size, fat_type, cluster } = layout(entries)?;
    let werr = |source| FatError::Write { path: dest.to_path_buf(), source };
    let tmp = TempPath::beside(dest).map_err(werr)?;
    let mut file = std::fs::File::options().read(true).write(true).create_new(true).open(tmp.path()).map_err(werr)?;
    file.set_len(size).map_err(werr)?;
    let opts = fatfs::FormatVolumeOptions::new().bytes_per_cluster(cluster).fat_type(fat_type).volume_label(label);
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
    fix_dot_entries(&mut file).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    drop(file);
    publish(tmp, dest).map_err(werr)?;
    Ok(size)
}

/// fatfs 0.3.6 writes a long-name entry before the `.` and `..` entries of
/// every directory it creates, so `.` is not in the directory's first slot
/// (`fsck.vfat`: "Expected a valid '.' entry in this slot"). This pass walks
/// the finished image (FAT16 or FAT32, as formatted above) and rewrites the
/// first four slots of each subdirectory from
/// `[LFN, ".", LFN, ".."]` to `[".", "..", deleted, deleted]`, and
/// points `..` of the root's children at cluster 0 as FAT requires.
fn fix_dot_entries(file: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("FAT fix-up: {what}"));
    let mut boot = [0u8; 512];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut boot)?;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64;
    let bps = u16_at(&boot, 11);
    let cluster_size = bps * boot[13] as u64;
    let reserved = u16_at(&boot, 14);
    let nfats = boot[16] as u64;
    let root_entries = u16_at(&boot, 17);
    let fat16 = u16_at(&boot, 22) != 0;
    let fat_size = if fat16 { u16_at(&boot, 22) } else { u32_at(&boot, 36) };
    if bps == 0 || cluster_size == 0 {
        return Err(bad("no boot sector"));
    }
    let fat_start = reserved * bps;
    let root_start = (reserved + nfats * fat_size) * bps;
    let data_start = root_start + root_entries * 32;
    let mut fat = vec![0u8; (fat_size * bps) as usize];
    file.seek(SeekFrom::Start(fat_start))?;
    file.read_exact(&mut fat)?;
    let next = |cl: u64| -> Option<u64> {
        let n = if fat16 {
            let n = u16_at(fat.get(cl as usize * 2..cl as usize * 2 + 2)?, 0);
            (n < 0xfff8).then_some(n)?
        } else {
            let n = u32_at(fat.get(cl as usize * 4..cl as usize * 4 + 4)?, 0) & 0x0fff_ffff;
            (n < 0x0fff_fff8).then_some(n)?
        };
        (n >= 2).then_some(n)
    };
    let cluster_offset = |cl: u64| data_start + (cl - 2) * cluster_size;
    // Reads a directory: FAT16's fixed root region, or a cluster chain.
    let read_dir = |file: &mut std::fs::File, first: Option<u64>| -> std::io::Result<Vec<u8>> {
        match first {
            None => {
                let mut b = vec![0u8; (root_entries * 32) as usize];
                file.seek(SeekFrom::Start(root_start))?;
                file.read_exact(&mut b)?;
                Ok(b)
            }
            Some(mut cl) => {
                let mut out = Vec::new();
                for _ in 0..fat.len() {
                    let mut b = vec![0u8; cluster_size as usize];
                    file.seek(SeekFrom::Start(cluster_offset(cl)))?;
                    file.read_exact(&mut b)?;
                    out.extend_from_slice(&b);
                    match next(cl) {
                        Some(n) => cl = n,
                        None => return Ok(out),
                    }
                }
                Err(bad("cluster chain loops"))
            }
        }
    };
    let root = if fat16 { None } else { Some(u32_at(&boot, 44)) };
    if root.is_some_and(|cl| cl < 2) {
        return Err(bad("FAT32 root cluster below 2"));
    }
    let mut todo = vec![root];
    while let Some(dir) = todo.pop() {
        let bytes = read_dir(file, dir)?;
        for e in bytes.chunks_exact(32) {
            match e[0] {
                0 => break,
                0xe5 | b'.' => continue,
                _ => {}
            }
            let attr = e[11];
            if attr == 0x0f || attr & 0x08 != 0 || attr & 0x10 == 0 {
                continue; // long name part, volume label, or a file
            }
            let cl = (u16_at(e, 20) << 16) | u16_at(e, 26);
            if cl < 2 {
                return Err(bad("directory without a cluster"));
            }
            todo.push(Some(cl));
            // This subdirectory's first four slots.
            let mut head = [0u8; 128];
            file.seek(SeekFrom::Start(cluster_offset(cl)))?;
            file.read_exact(&mut head)?;
            let is_lfn = |i: usize| head[32 * i + 11] == 0x0f;
            if is_lfn(0) && &head[32..43] == b".          " && is_lfn(2) && &head[96..107] == b"..         " {
                let mut fixed = [0u8; 128];
                fixed[0..32].copy_from_slice(&head[32..64]);
                fixed[32..64].copy_from_slice(&head[96..128]);
                fixed[64..96].copy_from_slice(&head[0..32]);
                fixed[96..128].copy_from_slice(&head[64..96]);
                fixed[64] = 0xe5; // deleted
                fixed[96] = 0xe5;
                if dir == root {
                    // ".." of a child of the root points at cluster 0, also
                    // on FAT32 where the root has a cluster (fatfs writes it).
                    fixed[32 + 20..32 + 22].fill(0);
                    fixed[32 + 26..32 + 28].fill(0);
                }
                file.seek(SeekFrom::Start(cluster_offset(cl)))?;
                file.write_all(&fixed)?;
            }
        }
    }
    Ok(())
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
#[allow(clippy::unwrap_used)]
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
