//! qcow2 files written in Rust: copy-on-write overlays on a qcow2 or raw
//! base, and empty data disks. No `qemu-img` process runs at run time.
//!
//! Owns: the on-disk layout of a *new, empty* qcow2 version 3 image. It does
//! not read or write guest data; QEMU does that. The format is specified in
//! QEMU's `docs/interop/qcow2.txt`; the field names below are its names.
//!
//! Why our own writer and not the `qcow2-rs` crate: qcow2-rs is an async
//! reader/writer of guest data built around io_uring; its only image
//! creation (`Qcow2Header::format_qcow2`) is marked "for test purpose",
//! formats an in-memory buffer through `unsafe` memcpy, cannot set a backing
//! file or the backing-format extension, and the crate pulls in clap,
//! env_logger and an older nix. An empty image is five fixed structures, so
//! writing them ourselves is smaller and easier to audit.
//!
//! Layout of every image we create (cluster size 64 KiB, 16-bit refcounts):
//!
//! ```text
//! cluster 0      header (112 bytes), header extensions, backing file name
//! cluster 1      refcount table (one entry: the refcount block below)
//! cluster 2      refcount block (refcount 1 for clusters 0 .. 3+L1)
//! cluster 3..    L1 table, all zero (no cluster allocated: reads go to the
//!                backing file, or are zero without one)
//! ```
//!
//! Every metadata cluster is referenced exactly once, so `qemu-img check`
//! finds neither leaks nor errors.
//!
//! A new file is written under a temporary name next to its destination,
//! synced, then hard-linked to its name: the link fails if the name exists,
//! so nothing is ever overwritten, and a crash leaves no half-written image
//! under the real name.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::format::{detect_format, DiskFormat};

/// log2 of the cluster size; QEMU's default (64 KiB).
const CLUSTER_BITS: u32 = 16;
const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// refcount_order 4 = 16-bit refcounts, QEMU's default.
const REFCOUNT_ORDER: u32 = 4;
const MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"
/// Header length for version 3 including the compression type byte and
/// its padding to a multiple of 8 (what current QEMU writes).
const HEADER_LENGTH: u32 = 112;
/// Header extension "backing file format name".
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// QEMU refuses backing file names of 1024 bytes and more.
const MAX_BACKING_NAME: usize = 1023;
/// Largest virtual size we create: the L1 table then fits our one refcount
/// block with room to spare (64 TiB needs 16 L1 clusters).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Errors creating qcow2 files; each names the argument (`base`,
/// `overlay`, `path`, `size`) it is about.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{field}: path {path:?} must be absolute (the backing path is stored in the overlay and must not depend on the working directory)")]
    NotAbsolute { field: &'static str, path: PathBuf },
    #[error("{field}: cannot read {path:?}; check that the file exists and is readable")]
    Unreadable {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("base: {path:?} is not a usable {format} image: {reason}")]
    BadBase { path: PathBuf, format: &'static str, reason: String },
    #[error("base: the path {path:?} is {len} bytes long; qcow2 allows at most {MAX_BACKING_NAME}")]
    BackingNameTooLong { path: PathBuf, len: usize },
    #[error("size: {size} bytes is smaller than the base's virtual size of {base_size} bytes; an overlay can grow a disk, never shrink it")]
    SmallerThanBase { size: u64, base_size: u64 },
    #[error("size: {size} bytes is out of range (1 byte .. {MAX_VIRTUAL_SIZE} bytes)")]
    BadSize { size: u64 },
    #[error("{field}: {path:?} already exists; remove it first or choose another path")]
    Exists { field: &'static str, path: PathBuf },
    #[error("path: {path:?} exists but is not a qcow2 image; refusing to touch it")]
    NotQcow2 { path: PathBuf },
    #[error("{field}: cannot write {path:?}")]
    Write {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`create_overlay`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub path: PathBuf,
    pub base: PathBuf,
    pub base_format: DiskFormat,
    /// The guest-visible size in bytes.
    pub virtual_size: u64,
}

/// What [`ensure_data_disk`] found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDisk {
    /// A new empty disk of this virtual size.
    Created { virtual_size: u64 },
    /// The disk was already there; it was left untouched. Its virtual size
    /// may differ from the one asked for (disks are never resized here).
    Existing { virtual_size: u64 },
}

/// Creates a qcow2 overlay at `overlay` whose reads fall through to `base`
/// (qcow2 or raw, detected from its header) and whose writes stay in the
/// overlay. `base` must be an absolute path; it is stored as given, with
/// its format, in the overlay. `virtual_size` defaults to the base's size
/// and may be larger (never smaller). It is rounded up to 512 bytes.
///
/// Everything is checked before anything is created; an existing `overlay`
/// is an error and is left alone.
pub fn create_overlay(base: &Path, overlay: &Path, virtual_size: Option<u64>) -> Result<Overlay, Qcow2Error> {
    if !base.is_absolute() {
        return Err(Qcow2Error::NotAbsolute { field: "base", path: base.to_path_buf() });
    }
    let name_len = base.as_os_str().as_bytes().len();
    if name_len > MAX_BACKING_NAME {
        return Err(Qcow2Error::BackingNameTooLong { path: base.to_path_buf(), len: name_len });
    }
    let unreadable = |source| Qcow2Error::Unreadable { field: "base", path: base.to_path_buf(), source };
    let meta = std::fs::metadata(base).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(Qcow2Error::BadBase { path: base.to_path_buf(), format: "disk", reason: "not a regular file".into() });
    }
    let base_format = detect_format("base", base).map_err(|e| unreadable(io_source(e)))?;
    let base_size = match base_format {
        DiskFormat::Raw => meta.len(),
        DiskFormat::Qcow2 => qcow2_virtual_size(base)?,
    };
    let size = round_up_512(virtual_size.unwrap_or(base_size));
    if size < base_size {
        return Err(Qcow2Error::SmallerThanBase { size, base_size });
    }
    check_size(size)?;
    let bytes = image_bytes(size, Some((base.as_os_str().as_bytes(), base_format.as_str())));
    write_new("overlay", overlay, &bytes)?;
    Ok(Overlay { path: overlay.to_path_buf(), base: base.to_path_buf(), base_format, virtual_size: size })
}

/// Makes sure an empty-at-birth qcow2 data disk exists at `path`.
/// Idempotent: an existing qcow2 image is left exactly as it is (its data
/// persists across VM restarts and re-creations); an existing file that is
/// not qcow2 is an error, never overwritten. `size` is rounded up to 512.
pub fn ensure_data_disk(path: &Path, size: u64) -> Result<DataDisk, Qcow2Error> {
    let size = round_up_512(size);
    check_size(size)?;
    if let Some(d) = existing_data_disk(path)? {
        return Ok(d);
    }
    match write_new("path", path, &image_bytes(size, None)) {
        Ok(()) => Ok(DataDisk::Created { virtual_size: size }),
        // Someone created it between our check and our link: theirs wins.
        Err(Qcow2Error::Exists { .. }) => existing_data_disk(path)?.ok_or(Qcow2Error::NotQcow2 { path: path.to_path_buf() }),
        Err(e) => Err(e),
    }
}

fn existing_data_disk(path: &Path) -> Result<Option<DataDisk>, Qcow2Error> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Qcow2Error::Unreadable { field: "path", path: path.to_path_buf(), source }),
    }
    match detect_format("path", path) {
        Ok(DiskFormat::Qcow2) => {}
        Ok(DiskFormat::Raw) => return Err(Qcow2Error::NotQcow2 { path: path.to_path_buf() }),
        Err(e) => return Err(Qcow2Error::Unreadable { field: "path", path: path.to_path_buf(), source: io_source(e) }),
    }
    let virtual_size = qcow2_virtual_size(path).map_err(|_| Qcow2Error::NotQcow2 { path: path.to_path_buf() })?;
    Ok(Some(DataDisk::Existing { virtual_size }))
}

/// The I/O error inside a format-detection error (which only fails to open
/// or read the file).
fn io_source(e: crate::Error) -> std::io::Error {
    match e {
        crate::Error::Unreadable { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

/// The virtual size field of a qcow2 header (offset 24, big-endian).
fn qcow2_virtual_size(path: &Path) -> Result<u64, Qcow2Error> {
    let mut header = [0u8; 32];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|source| Qcow2Error::Unreadable { field: "base", path: path.to_path_buf(), source })?;
    let version = be_u32(&header[4..8]);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::BadBase { path: path.to_path_buf(), format: "qcow2", reason: format!("unknown version {version}") });
    }
    Ok(be_u64(&header[24..32]))
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn round_up_512(n: u64) -> u64 {
    n.saturating_add(511) & !511
}

fn check_size(size: u64) -> Result<(), Qcow2Error> {
    if size == 0 || size > MAX_VIRTUAL_SIZE {
        return Err(Qcow2Error::BadSize { size });
    }
    Ok(())
}

/// Number of L1 entries for `size`: one L2 table (8192 entries of 64 KiB)
/// maps 512 MiB.
fn l1_entries(size: u64) -> u64 {
    let per_l2 = (CLUSTER_SIZE / 8) * CLUSTER_SIZE;
    size.div_ceil(per_l2)
}

/// The complete bytes of a new empty image. `backing` is (absolute path,
/// format name). Pure, so the layout is unit-tested without files.
fn image_bytes(size: u64, backing: Option<(&[u8], &str)>) -> Vec<u8> {
    let l1_size = l1_entries(size);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER_SIZE).max(1);
    let reftable_offset = CLUSTER_SIZE;
    let refblock_offset = 2 * CLUSTER_SIZE;
    let l1_offset = 3 * CLUSTER_SIZE;
    let total_clusters = 3 + l1_clusters;
    // total_clusters <= 3 + 16 by MAX_VIRTUAL_SIZE, far below the 32768
    // clusters one 16-bit refcount block describes.
    let mut img = vec![0u8; (total_clusters * CLUSTER_SIZE) as usize];

    // --- header extensions and backing file name, after the header ---
    let mut ext = Vec::new();
    if let Some((_, format)) = backing {
        // Each extension: type (u32), length (u32), data padded to 8 bytes.
        ext.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        ext.extend_from_slice(&(format.len() as u32).to_be_bytes());
        ext.extend_from_slice(format.as_bytes());
        ext.resize(ext.len().next_multiple_of(8), 0);
    }
    ext.extend_from_slice(&[0u8; 8]); // end of extensions: type 0, length 0
    let backing_offset = HEADER_LENGTH as u64 + ext.len() as u64;
    let (backing_off, backing_len) = match backing {
        // The name is not NUL-terminated; its length is in the header.
        Some((name, _)) => (backing_offset, name.len() as u32),
        None => (0, 0),
    };

    // --- header (big-endian); offsets as in qcow2.txt ---
    let h = &mut img[..HEADER_LENGTH as usize];
    h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&3u32.to_be_bytes()); // version
    h[8..16].copy_from_slice(&backing_off.to_be_bytes()); // backing_file_offset
    h[16..20].copy_from_slice(&backing_len.to_be_bytes()); // backing_file_size
    h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes()); // cluster_bits
    h[24..32].copy_from_slice(&size.to_be_bytes()); // size (virtual)
    // 32..36 crypt_method = 0 (none)
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes()); // l1_size
    h[40..48].copy_from_slice(&l1_offset.to_be_bytes()); // l1_table_offset
    h[48..56].copy_from_slice(&reftable_offset.to_be_bytes()); // refcount_table_offset
    h[56..60].copy_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
    // 60..64 nb_snapshots = 0, 64..72 snapshots_offset = 0
    // 72..80 incompatible, 80..88 compatible, 88..96 autoclear features = 0
    h[96..100].copy_from_slice(&REFCOUNT_ORDER.to_be_bytes()); // refcount_order
    h[100..104].copy_from_slice(&HEADER_LENGTH.to_be_bytes()); // header_length
    // 104 compression_type = 0 (zlib), 105..112 padding

    let e = HEADER_LENGTH as usize;
    img[e..e + ext.len()].copy_from_slice(&ext);
    if let Some((name, _)) = backing {
        let b = backing_offset as usize;
        img[b..b + name.len()].copy_from_slice(name);
    }

    // --- refcount table: entry 0 points at the one refcount block ---
    let rt = reftable_offset as usize;
    img[rt..rt + 8].copy_from_slice(&refblock_offset.to_be_bytes());

    // --- refcount block: every cluster of the file is used once ---
    let rb = refblock_offset as usize;
    for i in 0..total_clusters as usize {
        img[rb + 2 * i..rb + 2 * i + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    // The L1 table stays zero: no L2 tables, nothing allocated.
    img
}

/// Writes `bytes` as a new file at `path` without ever replacing one:
/// temporary file in the same directory, fsync, hard link (fails if `path`
/// exists), unlink the temporary name, fsync the directory.
pub(crate) fn write_new(field: &'static str, path: &Path, bytes: &[u8]) -> Result<(), Qcow2Error> {
    let werr = |source| Qcow2Error::Write { field, path: path.to_path_buf(), source };
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(Qcow2Error::Exists { field, path: path.to_path_buf() });
    }
    let tmp = crate::tmp::TempPath::beside(path).map_err(werr)?;
    let mut f = File::options().write(true).create_new(true).open(tmp.path()).map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    drop(f);
    match std::fs::hard_link(tmp.path(), path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Qcow2Error::Exists { field, path: path.to_path_buf() })
        }
        Err(e) => return Err(werr(e)),
    }
    drop(tmp); // unlinks the temporary name
    crate::tmp::sync_parent(path).map_err(werr)?;
    Ok(())
}

/// Reads the backing file name of a qcow2 image (None without one). Used
/// by tests and by callers that need to know which cached image an overlay
/// depends on.
pub fn backing_file(path: &Path) -> Result<Option<PathBuf>, Qcow2Error> {
    let unreadable = |source| Qcow2Error::Unreadable { field: "path", path: path.to_path_buf(), source };
    let mut f = File::open(path).map_err(unreadable)?;
    let mut header = [0u8; 20];
    f.read_exact(&mut header).map_err(unreadable)?;
    if be_u32(&header[0..4]) != MAGIC {
        return Err(Qcow2Error::NotQcow2 { path: path.to_path_buf() });
    }
    let off = be_u64(&header[8..16]);
    let len = be_u32(&header[16..20]) as usize;
    if off == 0 || len == 0 {
        return Ok(None);
    }
    if len > MAX_BACKING_NAME {
        return Err(Qcow2Error::NotQcow2 { path: path.to_path_buf() });
    }
    let mut name = vec![0u8; len];
    f.seek(SeekFrom::Start(off)).and_then(|_| f.read_exact(&mut name)).map_err(unreadable)?;
    Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(&name))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_image_layout_has_consistent_refcounts() {
        let img = image_bytes(1 << 30, None);
        assert_eq!(img.len() as u64, 4 * CLUSTER_SIZE, "header, reftable, refblock, one L1 cluster");
        assert_eq!(&img[0..4], b"QFI\xfb");
        assert_eq!(be_u64(&img[24..32]), 1 << 30);
        assert_eq!(be_u32(&img[36..40]), 2, "1 GiB needs two L1 entries");
        assert_eq!(be_u64(&img[CLUSTER_SIZE as usize..]), 2 * CLUSTER_SIZE);
        let rb = 2 * CLUSTER_SIZE as usize;
        let counts: Vec<u16> = (0..6).map(|i| u16::from_be_bytes([img[rb + 2 * i], img[rb + 2 * i + 1]])).collect();
        assert_eq!(counts, [1, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn backing_name_and_format_extension_are_written() {
        let img = image_bytes(1 << 20, Some((b"/srv/base.img", "raw")));
        let off = be_u64(&img[8..16]) as usize;
        let len = be_u32(&img[16..20]) as usize;
        assert_eq!(&img[off..off + len], b"/srv/base.img");
        assert_eq!(be_u32(&img[112..116]), EXT_BACKING_FORMAT);
        assert_eq!(be_u32(&img[116..120]), 3);
        assert_eq!(&img[120..123], b"raw");
    }

    #[test]
    fn relative_base_is_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let ov = dir.path().join("ov.qcow2");
        let err = create_overlay(Path::new("base.img"), &ov, None).unwrap_err();
        assert!(matches!(err, Qcow2Error::NotAbsolute { field: "base", .. }), "{err}");
        assert!(!ov.exists());
    }

    #[test]
    fn missing_base_names_the_field_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ov = dir.path().join("ov.qcow2");
        let err = create_overlay(&dir.path().join("nope.img"), &ov, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("base:") && msg.contains("nope.img"), "{msg}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing created");
    }

    #[test]
    fn overlay_smaller_than_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let err = create_overlay(&base, &dir.path().join("ov"), Some(4096)).unwrap_err();
        assert!(matches!(err, Qcow2Error::SmallerThanBase { .. }), "{err}");
    }

    #[test]
    fn data_disk_is_not_wiped_when_ensured_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.qcow2");
        assert_eq!(ensure_data_disk(&p, 1 << 30).unwrap(), DataDisk::Created { virtual_size: 1 << 30 });
        // Simulate guest data written past the metadata.
        let mut f = File::options().append(true).open(&p).unwrap();
        f.write_all(b"guest data").unwrap();
        let before = std::fs::read(&p).unwrap();
        assert_eq!(ensure_data_disk(&p, 2 << 30).unwrap(), DataDisk::Existing { virtual_size: 1 << 30 });
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn data_disk_refuses_to_touch_a_non_qcow2_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.raw");
        std::fs::write(&p, b"precious").unwrap();
        assert!(matches!(ensure_data_disk(&p, 1 << 20), Err(Qcow2Error::NotQcow2 { .. })));
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    }
}
