//! Local images and compressed images: `image import PATH` and the
//! decompression of `.zst`/`.xz` files after a pull or an import.
//!
//! Owns: copying a host file into the cache while hashing it (the cache
//! name is the sha256 of the file as given, so importing the same file
//! twice finds the first copy), and recognising zstd and xz by their
//! magic bytes (never by the file name, which a URL may not have). The
//! source file is only ever read.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cache::{io_err, to_hex, CacheError, CachedImage, ImageCache};
use crate::tmp::TempPath;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// A compression Paddock undoes before an image is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Xz,
}

impl Compression {
    /// The compression of a file starting with `head`, if any.
    pub fn detect(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&ZSTD_MAGIC) {
            Some(Compression::Zstd)
        } else if head.starts_with(&XZ_MAGIC) {
            Some(Compression::Xz)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        }
    }
}

impl ImageCache {
    /// Copies the host file at `path` into the cache under the sha256 of
    /// its bytes (decompressed if it is zstd or xz) and returns it; an
    /// image already cached under that sha256 is returned as it is.
    /// Blocking: async callers use `spawn_blocking`.
    pub fn import(&self, path: &Path) -> Result<CachedImage, CacheError> {
        let meta = std::fs::metadata(path).map_err(io_err("read", path))?;
        if !meta.is_file() {
            return Err(CacheError::NotAFile { path: path.to_path_buf() });
        }
        let limit = self.options().max_bytes;
        if meta.len() > limit {
            return Err(CacheError::TooLarge { url: path.display().to_string(), limit });
        }
        let mut src = std::fs::File::open(path).map_err(io_err("read", path))?;
        let tmp = TempPath::in_dir(&self.dir().join("tmp"), "import");
        let mut out = std::fs::File::options().write(true).create_new(true).open(tmp.path()).map_err(io_err("create", tmp.path()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(io_err("read", path))?;
            if n == 0 {
                break;
            }
            done += n as u64;
            if done > limit {
                return Err(CacheError::TooLarge { url: path.display().to_string(), limit });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err("write", tmp.path()))?;
        }
        out.sync_all().map_err(io_err("write", tmp.path()))?;
        drop(out);
        let hex = to_hex(&hasher.finalize());
        if let Some(img) = self.get(&hex)? {
            return Ok(img);
        }
        let tmp = decompress(tmp, &self.dir().join("tmp"), &hex, limit)?;
        let dest = self.dir().join("sha256").join(&hex);
        crate::tmp::publish(tmp, &dest).map_err(io_err("store", &dest))?;
        let size = std::fs::metadata(&dest).map_err(io_err("read", &dest))?.len();
        tracing::info!(path = %path.display(), sha256 = hex, bytes = size, "image imported");
        Ok(CachedImage { sha256: hex, path: dest, size })
    }
}

/// If the verified file `tmp` is zstd or xz, decompresses it into a new
/// temporary file in `dir` (the compressed one is removed) and returns
/// that; otherwise returns `tmp` unchanged. At most `limit` bytes are
/// written, so a decompression bomb fails instead of filling the disk.
pub(crate) fn decompress(tmp: TempPath, dir: &Path, stem: &str, limit: u64) -> Result<TempPath, CacheError> {
    let mut head = [0u8; 6];
    let mut f = std::fs::File::open(tmp.path()).map_err(io_err("read", tmp.path()))?;
    let n = read_up_to(&mut f, &mut head).map_err(io_err("read", tmp.path()))?;
    let Some(kind) = Compression::detect(&head[..n]) else { return Ok(tmp) };
    let f = std::fs::File::open(tmp.path()).map_err(io_err("read", tmp.path()))?;
    let reader: Box<dyn Read> = match kind {
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f).map_err(decompress_err(kind, tmp.path()))?),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(std::io::BufReader::new(f))),
    };
    let plain = TempPath::in_dir(dir, stem);
    let mut out = std::fs::File::options().write(true).create_new(true).open(plain.path()).map_err(io_err("create", plain.path()))?;
    let copied = std::io::copy(&mut reader.take(limit.saturating_add(1)), &mut out).map_err(decompress_err(kind, tmp.path()))?;
    if copied > limit {
        return Err(CacheError::TooLarge { url: format!("{} (decompressed)", tmp.path().display()), limit });
    }
    out.sync_all().map_err(io_err("write", plain.path()))?;
    tracing::info!(format = kind.as_str(), bytes = copied, "image decompressed");
    Ok(plain)
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn decompress_err(kind: Compression, path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Decompress { format: kind.as_str(), path, source: Arc::new(source) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::CacheOptions;

    fn cache() -> (tempfile::TempDir, ImageCache) {
        let dir = tempfile::tempdir().unwrap();
        let c = ImageCache::open(dir.path().join("cache"), CacheOptions::default()).unwrap();
        (dir, c)
    }

    fn sha(data: &[u8]) -> String {
        to_hex(&Sha256::digest(data))
    }

    #[test]
    fn import_copies_by_content_and_leaves_the_source_alone() {
        let (dir, c) = cache();
        let src = dir.path().join("base.img");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let before = std::fs::metadata(&src).unwrap().modified().unwrap();
        let img = c.import(&src).unwrap();
        assert_eq!(img.sha256, sha(&data));
        assert_eq!(std::fs::read(&img.path).unwrap(), data);
        assert_eq!(std::fs::metadata(&src).unwrap().modified().unwrap(), before);
        assert_eq!(c.import(&src).unwrap(), img, "a second import finds the first");
        assert_eq!(std::fs::read_dir(c.dir().join("tmp")).unwrap().count(), 0, "temporary files left");
    }

    #[test]
    fn zstd_and_xz_are_decompressed_and_named_by_the_file_given() {
        let (dir, c) = cache();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i / 7 % 256) as u8).collect();
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&data[..], 6).read_to_end(&mut xz).unwrap();
        for (name, packed) in [("a.zst", &zst), ("a.xz", &xz)] {
            let p = dir.path().join(name);
            std::fs::write(&p, packed).unwrap();
            let img = c.import(&p).unwrap();
            assert_eq!(img.sha256, sha(packed), "{name}");
            assert_eq!(std::fs::read(&img.path).unwrap(), data, "{name}");
            assert_eq!(img.size, data.len() as u64);
        }
    }

    #[test]
    fn a_corrupt_archive_or_a_directory_is_an_error_and_leaves_nothing() {
        let (dir, c) = cache();
        let mut bad = ZSTD_MAGIC.to_vec();
        bad.extend_from_slice(b"not really zstd");
        let p = dir.path().join("bad.zst");
        std::fs::write(&p, &bad).unwrap();
        let e = c.import(&p).unwrap_err();
        assert!(matches!(e, CacheError::Decompress { format: "zstd", .. }), "{e}");
        assert!(matches!(c.import(dir.path()).unwrap_err(), CacheError::NotAFile { .. }));
        assert!(c.list().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(c.dir().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let c = ImageCache::open(dir.path().join("cache"), CacheOptions { max_bytes: 1 << 20, ..Default::default() }).unwrap();
        let packed = zstd::encode_all(&vec![0u8; 4 << 20][..], 3).unwrap();
        let p = dir.path().join("bomb.zst");
        std::fs::write(&p, packed).unwrap();
        assert!(matches!(c.import(&p).unwrap_err(), CacheError::TooLarge { .. }));
        assert!(c.list().unwrap().is_empty());
    }
}
