//! The event log stays bounded and every reader gets every event: a
//! million stored events replayed by four readers at once in bounded
//! daemon memory, retention by count and age, and a follower that stops
//! reading gets an explicit `lagged` record and then every event, in
//! order, from the database.

mod common;

use common::*;
use http_body_util::BodyExt as _;
use paddock::api::events::LaggedLine;
use paddock::{Event, EventKind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DAY_MS: u64 = 24 * 3600 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// Appends `n` events straight into the database (the daemon is not
/// running); the first `old` are 40 days old. One SQL statement, so a
/// million rows take seconds; the body is what the daemon itself stores.
fn prefill(db: &Path, n: u64, old: u64) {
    let c = rusqlite::Connection::open(db).expect("open db");
    let sample = Event { seq: 0, ts_ms: 0, vm: "bulk".into(), kind: EventKind::Note, generation: 0, message: Some("bulk".into()) };
    let sample = serde_json::to_string(&sample).expect("json");
    let (head, tail) = sample.split_once(r#""ts_ms":0"#).expect("ts_ms in the body");
    let now = now_ms() as i64;
    c.execute(
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?1)
         INSERT INTO events (ts_ms, vm, body)
         SELECT t, 'bulk', ?3 || '\"ts_ms\":' || t || ?4
         FROM (SELECT i, CASE WHEN i < ?2 THEN ?5 ELSE ?6 END AS t FROM c)",
        rusqlite::params![n as i64, old as i64, head, tail, now - 40 * DAY_MS as i64, now],
    )
    .expect("insert");
}

/// The seq at the start of an event line, without decoding the rest.
fn seq_of(line: &[u8]) -> u64 {
    let rest = line.strip_prefix(br#"{"seq":"#).unwrap_or_else(|| panic!("not an event: {}", String::from_utf8_lossy(line)));
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok().and_then(|s| s.parse().ok()).expect("seq")
}

fn db_count(d: &Daemon) -> (u64, u64) {
    let c = rusqlite::Connection::open_with_flags(d.state_dir().join("paddock.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("db");
    c.query_row("SELECT COUNT(*), COALESCE(MIN(seq), 0) FROM events", [], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))
        .expect("count")
}

/// A daemon whose database holds `n` bulk events, started with `args`.
fn daemon_with_events(n: u64, old: u64, args: &[&str]) -> Daemon {
    let mut d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    d.kill9();
    prefill(&d.state_dir().join("paddock.db"), n, old);
    d.args.extend(args.iter().map(|s| s.to_string()));
    d.spawn();
    d
}

#[test]
fn four_replays_of_a_million_events_keep_the_daemon_small() {
    const N: u64 = 1_000_000;
    let t = Instant::now();
    let d = daemon_with_events(N, 0, &["--events-max-count", "2000000"]);
    println!("a million events written in {:?}", t.elapsed());
    let pid = d.child.as_ref().expect("daemon").id();
    let before = rss_kib(pid);
    // Each reader says when it is done (also when it fails: the sender drops).
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let client = d.client.clone();
            let done = done_tx.clone();
            std::thread::spawn(move || {
                let _done = done;
                block_on(async move {
                    let mut body = client.events(0, false).await.expect("events");
                    let (mut lines, mut last, mut partial) = (0u64, 0u64, Vec::new());
                    while let Some(frame) = body.frame().await {
                        let frame = frame.expect("frame");
                        let Some(data) = frame.data_ref() else { continue };
                        partial.extend_from_slice(data);
                        let end = partial.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                        for line in partial[..end].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            let seq = seq_of(line);
                            assert_eq!(seq, last + 1, "replay out of order or with a gap");
                            last = seq;
                            lines += 1;
                        }
                        partial.drain(..end);
                    }
                    lines
                })
            })
        })
        .collect();
    // Sample the daemon's resident set while the readers run.
    let t = Instant::now();
    let mut peak = before;
    drop(done_tx);
    // One sample every 10 ms until every reader is done (all senders gone).
    loop {
        peak = peak.max(rss_kib(pid));
        match done_rx.recv_timeout(Duration::from_millis(10)) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let took = t.elapsed();
    for r in readers {
        assert!(r.join().expect("reader") >= N, "a reader got less than the whole history");
    }
    let after = rss_kib(pid);
    println!(
        "four concurrent replays of {N} events: {:?}; daemon RSS {} KiB before, {} KiB peak, {} KiB after",
        took, before, peak, after
    );
    assert!(peak < 64 * 1024, "daemon RSS peaked at {peak} KiB (limit 64 MiB)");
}

#[test]
fn retention_trims_by_age_then_by_count() {
    let d = daemon_with_events(50_000, 100, &[]);
    // Applied at start, before the daemon answers: 100 events were 40 days old.
    assert_eq!(db_count(&d), (49_900, 101));
    let mut d = d;
    d.kill9();
    d.args.extend(["--events-max-count".to_string(), "1000".to_string()]);
    d.spawn();
    assert_eq!(db_count(&d), (1000, 49_001), "the newest 1000 are kept");
    // A replay starting before the retained history begins at its start.
    let body = block_on(async { d.client.events(0, false).await.expect("events").collect().await.expect("body").to_bytes() });
    let first: Event = serde_json::from_slice(body.split(|b| *b == b'\n').next().expect("a line")).expect("event");
    assert_eq!(first.seq, 49_001);
    assert_eq!(first.message.as_deref(), Some("bulk"), "stored bodies decode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_gets_lagged_then_every_event_in_order() {
    // tmpfs: thousands of fsyncs would make this a disk benchmark.
    let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir");
    let rt = Arc::new(paddock::Runtime::start(paddock::RuntimeConfig::new(dir.path().join("state"), dir.path().join("run"))).await.expect("runtime"));
    let sock = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(paddock::api::server::serve(
        listener,
        paddock::api::router(rt.clone()),
        paddock::api::server::ApiLimits::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    rt.publish_note("t", "first".into()).await;
    let client = paddock::client::Client::new(&sock);
    let mut body = client.events(0, true).await.expect("follow");
    let mut buf = Vec::new();
    // Read the first event so the stream is surely running, then stop reading.
    while !buf.contains(&b'\n') {
        let f = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("first event").expect("frame").expect("ok");
        buf.extend_from_slice(f.data_ref().map(|b| b.as_ref()).unwrap_or_default());
    }
    const PRODUCED: u64 = 20_000;
    for i in 0..PRODUCED {
        rt.publish_note("t", format!("burst {i}")).await;
    }
    let last_seq = PRODUCED + 1;
    let (mut seqs, mut lagged) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while seqs.last() != Some(&last_seq) {
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if let Ok(ev) = serde_json::from_slice::<Event>(&line) {
                seqs.push(ev.seq);
            } else {
                let l: LaggedLine = serde_json::from_slice(&line).unwrap_or_else(|e| panic!("unknown line {:?}: {e}", String::from_utf8_lossy(&line)));
                assert_eq!(Some(&l.lagged.after_seq), seqs.last(), "the lagged record names where the gap starts");
                lagged.push(l.lagged);
            }
        }
        if seqs.last() == Some(&last_seq) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let f = tokio::time::timeout(left, body.frame()).await.expect("all events within 60 s").expect("stream ended").expect("frame");
        buf.extend_from_slice(f.data_ref().map(|b| b.as_ref()).unwrap_or_default());
    }
    println!("stalled follower: {} lagged record(s) {:?}", lagged.len(), lagged.iter().map(|l| (l.after_seq, l.missed)).collect::<Vec<_>>());
    assert!(!lagged.is_empty(), "the follower fell behind without being told");
    let want: Vec<u64> = (1..=last_seq).collect();
    assert!(seqs == want, "events missing, repeated or out of order (got {} events)", seqs.len());
    let _ = stop_tx.send(());
    let _ = server.await;
}
