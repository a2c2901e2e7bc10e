//! The image cache against a loopback HTTP server this test starts itself
//! (127.0.0.1 only): resume after a drop, checksum mismatch, 404, a
//! stalling server, the size limit, deduplication, list and remove.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use paddock_images::{CacheError, CacheOptions, ImageCache, Progress};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with one request.
#[derive(Clone)]
enum Reply {
    /// 200 (or 206 for a Range request) with the body from the requested
    /// offset; closes the connection after `cut_after` body bytes if set.
    Body { cut_after: Option<usize> },
    /// Like `Body`, but answers a Range request with the whole body (200).
    IgnoreRange,
    /// Headers and `after` bytes, then silence with the connection open.
    Stall { after: usize },
    NotFound,
}

struct Server {
    url: String,
    requests: Arc<AtomicUsize>,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

/// Serves `body`; request number i (from 0) gets `replies[min(i, last)]`.
async fn serve(body: Vec<u8>, replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/image.raw", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let (req, rng) = (requests.clone(), ranges.clone());
    let body = Arc::new(body);
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let i = req.fetch_add(1, Ordering::SeqCst);
            let reply = replies[i.min(replies.len() - 1)].clone();
            let (body, rng) = (body.clone(), rng.clone());
            tokio::spawn(handle(sock, body, reply, rng));
        }
    });
    Server { url, requests, ranges }
}

async fn handle(mut sock: TcpStream, body: Arc<Vec<u8>>, reply: Reply, ranges: Arc<Mutex<Vec<Option<String>>>>) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if sock.read(&mut b).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let range = head
        .lines()
        .find_map(|l| l.strip_prefix("range: ").or_else(|| l.strip_prefix("Range: ")))
        .map(str::to_string);
    ranges.lock().unwrap().push(range.clone());
    let ignore_range = matches!(reply, Reply::IgnoreRange);
    let start: usize = if ignore_range { 0 } else { range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()).unwrap_or(0) };
    let rest = &body[start..];
    let status = if start > 0 {
        format!("206 Partial Content\r\nContent-Range: bytes {start}-{}/{}", body.len() - 1, body.len())
    } else {
        "200 OK".to_string()
    };
    match reply {
        Reply::NotFound => {
            let _ = sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        }
        Reply::IgnoreRange => {
            let hdr = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", rest.len());
            let _ = sock.write_all(hdr.as_bytes()).await;
            let _ = sock.write_all(rest).await;
        }
        Reply::Body { cut_after } => {
            let hdr = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", rest.len());
            let n = cut_after.unwrap_or(rest.len()).min(rest.len());
            let _ = sock.write_all(hdr.as_bytes()).await;
            let _ = sock.write_all(&rest[..n]).await;
            let _ = sock.shutdown().await;
        }
        Reply::Stall { after } => {
            let hdr = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", rest.len());
            let _ = sock.write_all(hdr.as_bytes()).await;
            let _ = sock.write_all(&rest[..after]).await;
            // Keep the connection open and silent until the client gives up.
            let _ = sock.read(&mut [0u8; 1]).await;
        }
    }
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn cache(dir: &tempfile::TempDir, opts: CacheOptions) -> ImageCache {
    ImageCache::open(dir.path().join("cache"), opts).unwrap()
}

/// Nothing but the (empty) sha256/ and tmp/ directories.
fn assert_cache_empty(dir: &tempfile::TempDir) {
    for sub in ["sha256", "tmp"] {
        let n = std::fs::read_dir(dir.path().join("cache").join(sub)).unwrap().count();
        assert_eq!(n, 0, "{sub}/ is not empty");
    }
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("timed out")
}

#[tokio::test]
async fn dropped_connection_is_resumed_with_a_range_request() {
    let data = body(1 << 20);
    let srv = serve(data.clone(), vec![Reply::Body { cut_after: Some(300_000) }, Reply::Body { cut_after: None }]).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir, CacheOptions::default());
    let mut last = Progress::default();
    let img = within(c.pull(&srv.url, &sha(&data), |p| last = p)).await.unwrap();
    assert_eq!(std::fs::read(&img.path).unwrap(), data);
    assert_eq!(img.path, dir.path().join("cache/sha256").join(sha(&data)));
    assert_eq!(srv.requests.load(Ordering::SeqCst), 2);
    let ranges = srv.ranges.lock().unwrap().clone();
    assert_eq!(ranges[0], None);
    let resumed_at: usize = ranges[1].as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()).unwrap();
    assert!(resumed_at > 0 && resumed_at <= 300_000, "resumed at {resumed_at}");
    assert_eq!(last, Progress { done: 1 << 20, total: Some(1 << 20) });
    assert_eq!(std::fs::read_dir(dir.path().join("cache/tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn server_ignoring_the_range_request_is_downloaded_again_from_the_start() {
    let data = body(400_000);
    let srv = serve(data.clone(), vec![Reply::Body { cut_after: Some(100_000) }, Reply::IgnoreRange]).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir, CacheOptions::default());
    let mut seen = Vec::new();
    let img = within(c.pull(&srv.url, &sha(&data), |p| seen.push(p.done))).await.unwrap();
    assert_eq!(std::fs::read(&img.path).unwrap(), data);
    assert_eq!(srv.requests.load(Ordering::SeqCst), 2);
    assert!(srv.ranges.lock().unwrap()[1].is_some(), "the second request asked for a range");
    assert_eq!(seen.last(), Some(&400_000));
}

#[tokio::test]
async fn wrong_checksum_leaves_nothing_and_names_expected_and_got() {
    let data = body(100_000);
    let srv = serve(data.clone(), vec![Reply::Body { cut_after: None }]).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir, CacheOptions::default());
    let wrong = "0".repeat(64);
    let err = within(c.pull(&srv.url, &wrong, |_| {})).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CacheError::ChecksumMismatch { .. }), "{msg}");
    assert!(msg.contains(&wrong) && msg.contains(&sha(&data)), "{msg}");
    assert_cache_empty(&dir);
}

#[tokio::test]
async fn not_found_is_a_clear_error() {
    let srv = serve(Vec::new(), vec![Reply::NotFound]).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir, CacheOptions::default());
    let err = within(c.pull(&srv.url, &"a".repeat(64), |_| {})).await.unwrap_err();
    assert!(matches!(err, CacheError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("404") && err.to_string().contains(&srv.url), "{err}");
    assert_cache_empty(&dir);
}

#[tokio::test]
async fn stalling_server_hits_the_read_deadline() {
    let data = body(200_000);
    let srv = serve(data.clone(), vec![Reply::Stall { after: 50_000 }]).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = CacheOptions { read_timeout: Duration::from_millis(500), ..Default::default() };
    let c = cache(&dir, opts);
    let err = within(c.pull(&srv.url, &sha(&data), |_| {})).await.unwrap_err();
    assert!(matches!(err, CacheError::Stalled { done: 50_000, .. }), "{err}");
    assert!(err.to_string().contains("stalled"), "{err}");
    assert_cache_empty(&dir);
}

#[tokio::test]
async fn image_over_the_size_limit_is_refused() {
    let data = body(100_000);
    let srv = serve(data.clone(), vec![Reply::Body { cut_after: None }]).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir, CacheOptions { max_bytes: 10_000, ..Default::default() });
    let err = within(c.pull(&srv.url, &sha(&data), |_| {})).await.unwrap_err();
    assert!(matches!(err, CacheError::TooLarge { limit: 10_000, .. }), "{err}");
    assert_cache_empty(&dir);
}

/// A current-thread runtime makes the interleaving certain: the first pull
/// registers its download before the second is first polled.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_pulls_of_one_url_download_once() {
    let data = body(500_000);
    let srv = serve(data.clone(), vec![Reply::Body { cut_after: None }]).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir, CacheOptions::default());
    let (c2, sum) = (c.clone(), sha(&data));
    let (a, b) = within(async { tokio::join!(c.pull(&srv.url, &sum, |_| {}), c2.pull(&srv.url, &sum, |_| {})) }).await;
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(srv.requests.load(Ordering::SeqCst), 1, "one download for both callers");
    // Cached now: a third pull does not touch the network.
    within(c.pull(&srv.url, &sum, |_| {})).await.unwrap();
    assert_eq!(srv.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn list_and_remove_respect_images_in_use() {
    let data = body(10_000);
    let srv = serve(data.clone(), vec![Reply::Body { cut_after: None }]).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir, CacheOptions::default());
    let img = within(c.pull(&srv.url, &sha(&data), |_| {})).await.unwrap();
    assert_eq!(c.list().unwrap(), vec![img.clone()]);
    let err = c.remove(&img.sha256, |p| p == img.path).unwrap_err();
    assert!(matches!(err, CacheError::InUse { .. }), "{err}");
    assert!(img.path.exists());
    c.remove(&img.sha256, |_| false).unwrap();
    assert!(c.list().unwrap().is_empty());
    assert!(matches!(c.remove(&img.sha256, |_| false), Err(CacheError::NotCached { .. })));
}
