//! The image cache: verified downloads into content-addressed files.
//!
//! Owns: the cache directory, downloading (reqwest with rustls, streamed
//! to disk), resuming a dropped connection with an HTTP Range request, the
//! read deadline, the size limit, progress reports, and deduplicating
//! concurrent pulls of one URL in this process.
//!
//! ```text
//! <dir>/sha256/<hex>     verified images, named by their content
//! <dir>/tmp/.<hex>.tmp.<pid>.<n>   downloads in progress
//! ```
//!
//! A download is hashed while it is written; only when the sha256 matches
//! is the temporary file renamed to `sha256/<hex>`, so a file under that
//! name is always complete and verified. A failed download (wrong checksum,
//! 404, stall, too large) removes its temporary file.
//!
//! Deduplication: the first caller for (URL, sha256) spawns the download
//! task; later callers attach to it through a `watch` channel that carries
//! progress and, at the end, the result. The task runs to completion even
//! if every caller goes away, so the work is never wasted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::tmp::TempPath;

/// Limits of an [`ImageCache`].
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Largest image accepted, in bytes (default 64 GiB).
    pub max_bytes: u64,
    /// Longest wait for the response headers or for the next piece of the
    /// body (default 30 s). A server that stalls longer fails the pull.
    pub read_timeout: Duration,
    /// Longest wait for a TCP/TLS connection (default 30 s).
    pub connect_timeout: Duration,
    /// How many times a dropped connection is resumed (default 10).
    pub max_resumes: u32,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            max_bytes: 64 << 30,
            read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            max_resumes: 10,
        }
    }
}

/// Download progress: bytes done and, when the server said, the total.
/// `done` drops back to 0 if a server answers a resume with the whole
/// image (it ignored the Range header) and the download starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
}

/// A verified image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    /// Lower-case hex.
    pub sha256: String,
    /// `<dir>/sha256/<hex>`; absolute if the cache directory is.
    pub path: PathBuf,
    pub size: u64,
}

/// Errors of the image cache. Clone (sources are shared) because one
/// download's result goes to every caller waiting for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("sha256: {given:?} is not 64 hexadecimal digits")]
    BadChecksumArg { given: String },
    #[error("url: {url:?} is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("{url}: not found (HTTP 404); check the URL")]
    NotFound { url: String },
    #[error("{url}: the server answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: request failed")]
    Request {
        url: String,
        #[source]
        source: Arc<reqwest::Error>,
    },
    #[error("{url}: no data for {}s after {done} bytes: the server stalled (read deadline)", after.as_secs_f64())]
    Stalled { url: String, after: Duration, done: u64 },
    #[error("{url}: the connection dropped {drops} times; gave up after {done} bytes")]
    TooManyDrops {
        url: String,
        drops: u32,
        done: u64,
        #[source]
        source: Option<Arc<reqwest::Error>>,
    },
    #[error("{url}: the image is larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: checksum mismatch: expected sha256 {expected}, got {got}; the download was discarded")]
    ChecksumMismatch { url: String, expected: String, got: String },
    #[error("{url}: the server answered a range request with {detail}")]
    BadRange { url: String, detail: String },
    #[error("sha256 {sha256}: not in the cache")]
    NotCached { sha256: String },
    #[error("sha256 {sha256}: {path:?} is in use (an overlay is based on it); remove what uses it first")]
    InUse { sha256: String, path: PathBuf },
    #[error("cache: cannot {what} {path:?}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("cache: cannot build the HTTP client")]
    Client {
        #[source]
        source: Arc<reqwest::Error>,
    },
    #[error("{path:?} is not a regular file; give the path of an image file")]
    NotAFile { path: PathBuf },
    #[error("cannot decompress {path:?} as {format}; is the file complete?")]
    Decompress {
        format: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{url}: the download task ended without a result")]
    Interrupted { url: String },
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io { what, path, source: Arc::new(source) }
}

#[derive(Debug, Clone)]
enum PullState {
    Running(Progress),
    Done(Result<CachedImage, CacheError>),
}

type Key = (String, String);

struct Inner {
    dir: PathBuf,
    client: reqwest::Client,
    opts: CacheOptions,
    /// Downloads in progress. Entries are removed by their task after the
    /// file is in place and before the result is sent, so a caller holding
    /// this lock sees either the final file or the running download.
    inflight: Mutex<HashMap<Key, watch::Receiver<PullState>>>,
}

/// A cache of verified images in one directory. Cheap to clone; clones
/// share downloads in progress.
#[derive(Clone)]
pub struct ImageCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCache").field("dir", &self.inner.dir).finish()
    }
}

/// Checks and lower-cases a sha256 given in hex.
pub fn parse_sha256(s: &str) -> Result<String, CacheError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(CacheError::BadChecksumArg { given: s.to_string() })
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ImageCache {
    /// Opens (creating it if needed) the cache in `dir`, and removes
    /// partial downloads left by processes that no longer run.
    pub fn open(dir: impl Into<PathBuf>, opts: CacheOptions) -> Result<ImageCache, CacheError> {
        let dir = dir.into();
        for sub in ["sha256", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        sweep_stale_partials(&dir.join("tmp"));
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .build()
            .map_err(|e| CacheError::Client { source: Arc::new(e) })?;
        Ok(ImageCache { inner: Arc::new(Inner { dir, client, opts, inflight: Mutex::new(HashMap::new()) }) })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn options(&self) -> &CacheOptions {
        &self.inner.opts
    }

    /// Where the image with this sha256 lives (whether or not it is there).
    pub fn path_of(&self, sha256: &str) -> Result<PathBuf, CacheError> {
        Ok(self.inner.dir.join("sha256").join(parse_sha256(sha256)?))
    }

    /// The cached image with this sha256, if present.
    pub fn get(&self, sha256: &str) -> Result<Option<CachedImage>, CacheError> {
        let hex = parse_sha256(sha256)?;
        let path = self.inner.dir.join("sha256").join(&hex);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(CachedImage { sha256: hex, path, size: m.len() })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Downloads `url` unless an image with `sha256` is already cached, and
    /// returns the verified image. `on_progress` is called as bytes arrive
    /// (not necessarily for every chunk) and always once more with the
    /// final size on success (for a cached image: only that once). Concurrent pulls of the same
    /// URL and sha256 share one download.
    pub async fn pull(&self, url: &str, sha256: &str, mut on_progress: impl FnMut(Progress)) -> Result<CachedImage, CacheError> {
        let hex = parse_sha256(sha256)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CacheError::BadUrl { url: url.to_string() });
        }
        let mut rx = {
            let mut inflight = self.inner.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(img) = self.get(&hex)? {
                drop(inflight);
                on_progress(Progress { done: img.size, total: Some(img.size) });
                return Ok(img);
            }
            let key = (url.to_string(), hex.clone());
            match inflight.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(PullState::Running(Progress::default()));
                    inflight.insert(key.clone(), rx.clone());
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        let result = download(&inner, &key.0, &key.1, &tx).await;
                        inner.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                        tx.send_replace(PullState::Done(result));
                    });
                    rx
                }
            }
        };
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                PullState::Done(r) => {
                    // `watch` keeps only the newest value: intermediate
                    // reports may be skipped, so always report the end.
                    if let Ok(img) = &r {
                        on_progress(Progress { done: img.size, total: Some(img.size) });
                    }
                    return r;
                }
                PullState::Running(p) => on_progress(p),
            }
            if rx.changed().await.is_err() {
                // The task dropped its sender without a result (it panicked).
                // A final value may still be there.
                if let PullState::Done(r) = rx.borrow().clone() {
                    return r;
                }
                return Err(CacheError::Interrupted { url: url.to_string() });
            }
        }
    }

    /// Every cached image, sorted by sha256.
    pub fn list(&self) -> Result<Vec<CachedImage>, CacheError> {
        let dir = self.inner.dir.join("sha256");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            let Ok(hex) = parse_sha256(&name) else { continue };
            if hex != name {
                continue;
            }
            let meta = entry.metadata().map_err(io_err("read", &entry.path()))?;
            out.push(CachedImage { sha256: hex, path: entry.path(), size: meta.len() });
        }
        out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(out)
    }

    /// Removes a cached image unless `in_use(path)` says something (an
    /// overlay's backing file, a running VM) still uses it. The caller
    /// knows its overlays; [`crate::backing_file`] reads an overlay's base.
    pub fn remove(&self, sha256: &str, in_use: impl FnOnce(&Path) -> bool) -> Result<(), CacheError> {
        let Some(img) = self.get(sha256)? else {
            return Err(CacheError::NotCached { sha256: sha256.to_string() });
        };
        if in_use(&img.path) {
            return Err(CacheError::InUse { sha256: img.sha256, path: img.path });
        }
        std::fs::remove_file(&img.path).map_err(io_err("remove", &img.path))
    }
}

/// Partial downloads are named `.<hex>.tmp.<pid>.<n>`; those of processes
/// that are gone are removed. Best effort: a failure here only costs disk.
fn sweep_stale_partials(tmp: &Path) {
    let Ok(rd) = std::fs::read_dir(tmp) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split(".tmp.").nth(1).and_then(|r| r.split('.').next()).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// How one HTTP request of a download ended.
enum Attempt {
    Complete,
    /// The connection dropped (or the body ended short): resume.
    Dropped(Option<reqwest::Error>),
}

struct Download<'a> {
    inner: &'a Inner,
    url: &'a str,
    file: tokio::fs::File,
    tmp_path: PathBuf,
    hasher: Sha256,
    done: u64,
    total: Option<u64>,
    tx: &'a watch::Sender<PullState>,
}

async fn download(inner: &Inner, url: &str, hex: &str, tx: &watch::Sender<PullState>) -> Result<CachedImage, CacheError> {
    let tmp = TempPath::in_dir(&inner.dir.join("tmp"), hex);
    let file = tokio::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp.path())
        .await
        .map_err(io_err("create", tmp.path()))?;
    let mut d = Download { inner, url, file, tmp_path: tmp.path().to_path_buf(), hasher: Sha256::new(), done: 0, total: None, tx };
    let mut drops = 0u32;
    loop {
        match d.attempt().await? {
            Attempt::Complete => break,
            Attempt::Dropped(e) => {
                drops += 1;
                tracing::info!(url, done = d.done, drops, "download connection dropped; resuming");
                if drops > inner.opts.max_resumes {
                    return Err(CacheError::TooManyDrops { url: url.to_string(), drops, done: d.done, source: e.map(Arc::new) });
                }
            }
        }
    }
    d.file.flush().await.map_err(io_err("write", tmp.path()))?;
    d.file.sync_all().await.map_err(io_err("write", tmp.path()))?;
    drop(d.file);
    let got = to_hex(&d.hasher.finalize());
    if got != hex {
        // `tmp` is dropped on return: the partial file goes with it.
        return Err(CacheError::ChecksumMismatch { url: url.to_string(), expected: hex.to_string(), got });
    }
    // Verified as downloaded, then decompressed (zstd, xz): the cache
    // name stays the sha256 the user gave, that of the download.
    let (dir, stem, limit) = (inner.dir.join("tmp"), hex.to_string(), inner.opts.max_bytes);
    let tmp = tokio::task::spawn_blocking(move || crate::import::decompress(tmp, &dir, &stem, limit))
        .await
        .map_err(|_| CacheError::Interrupted { url: url.to_string() })??;
    let dest = inner.dir.join("sha256").join(hex);
    crate::tmp::publish(tmp, &dest).map_err(io_err("store", &dest))?;
    let size = std::fs::metadata(&dest).map_err(io_err("read", &dest))?.len();
    tracing::info!(url, sha256 = hex, bytes = d.done, size, "image cached");
    Ok(CachedImage { sha256: hex.to_string(), path: dest, size })
}

impl Download<'_> {
    fn url(&self) -> String {
        self.url.to_string()
    }

    async fn attempt(&mut self) -> Result<Attempt, CacheError> {
        let read_timeout = self.inner.opts.read_timeout;
        let mut req = self.inner.client.get(self.url);
        if self.done > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={}-", self.done));
        }
        let resp = match tokio::time::timeout(read_timeout, req.send()).await {
            Err(_) => return Err(CacheError::Stalled { url: self.url(), after: read_timeout, done: self.done }),
            // A resume that cannot reconnect counts as another drop.
            Ok(Err(e)) if self.done > 0 && (e.is_connect() || e.is_request()) => return Ok(Attempt::Dropped(Some(e))),
            Ok(Err(e)) => return Err(CacheError::Request { url: self.url(), source: Arc::new(e) }),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(CacheError::NotFound { url: self.url() });
        }
        if !status.is_success() {
            return Err(CacheError::HttpStatus { url: self.url(), status: status.as_u16() });
        }
        if status == reqwest::StatusCode::PARTIAL_CONTENT {
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or_default();
            let (start, total) = parse_content_range(&range)
                .ok_or_else(|| CacheError::BadRange { url: self.url(), detail: format!("Content-Range {range:?}") })?;
            if self.done == 0 || start != self.done {
                return Err(CacheError::BadRange { url: self.url(), detail: format!("{range:?} while resuming at byte {}", self.done) });
            }
            self.total = total.or(self.total);
        } else {
            if self.done > 0 {
                // The server ignored the Range header: start over.
                tracing::info!(url = self.url, "server ignored the range request; restarting the download");
                use tokio::io::AsyncSeekExt;
                self.file.set_len(0).await.map_err(io_err("truncate", &self.tmp_path))?;
                self.file.rewind().await.map_err(io_err("rewind", &self.tmp_path))?;
                self.hasher = Sha256::new();
                self.done = 0;
            }
            self.total = resp.content_length();
        }
        let limit = self.inner.opts.max_bytes;
        if self.total.is_some_and(|t| t > limit) {
            return Err(CacheError::TooLarge { url: self.url(), limit });
        }
        self.report();
        let mut resp = resp;
        loop {
            let chunk = match tokio::time::timeout(read_timeout, resp.chunk()).await {
                Err(_) => return Err(CacheError::Stalled { url: self.url(), after: read_timeout, done: self.done }),
                Ok(Err(e)) => return Ok(Attempt::Dropped(Some(e))),
                Ok(Ok(None)) => {
                    return Ok(match self.total {
                        Some(t) if self.done < t => Attempt::Dropped(None),
                        _ => Attempt::Complete,
                    })
                }
                Ok(Ok(Some(c))) => c,
            };
            if self.done + chunk.len() as u64 > limit {
                return Err(CacheError::TooLarge { url: self.url(), limit });
            }
            self.file.write_all(&chunk).await.map_err(io_err("write", &self.tmp_path))?;
            self.hasher.update(&chunk);
            self.done += chunk.len() as u64;
            self.report();
        }
    }

    fn report(&self) {
        self.tx.send_replace(PullState::Running(Progress { done: self.done, total: self.total }));
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) -> (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((start.parse().ok()?, total))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_parsed() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn sha256_argument_is_checked() {
        assert!(parse_sha256("abc").is_err());
        assert_eq!(parse_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
    }
}
