//! A QMP client on tokio: greeting, `qmp_capabilities`, commands matched to
//! replies by `id`, events as a stream, and a deadline on every exchange.
//!
//! A socket that accepts and never answers must time out, not hang: the
//! greeting, the capabilities negotiation and every command are bounded by
//! the same deadline.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{ControlError, ControlEvent};

type Reply = Result<Value, ControlError>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// Events beyond this many unread are dropped (with a warning): a slow
/// consumer must not grow memory without bound.
const EVENT_QUEUE: usize = 256;
/// A QMP message larger than this is a protocol error, not a reason to
/// buffer without bound.
const MAX_LINE: usize = 1 << 20;

pub struct QmpClient {
    writer: OwnedWriteHalf,
    pending: Pending,
    next_id: u64,
    timeout: Duration,
    events: Option<mpsc::Receiver<ControlEvent>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn timeout_err(what: &str, timeout: Duration) -> ControlError {
    ControlError::Timeout { what: what.to_string(), timeout_ms: timeout.as_millis() as u64 }
}

impl QmpClient {
    /// Connects, waiting up to `timeout` for the socket to appear, then
    /// reads the greeting and negotiates capabilities within the same
    /// deadline.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, ControlError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                // The hypervisor creates the socket shortly after it starts.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ControlError::Connect { path: path.to_path_buf(), source: e });
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(ControlError::Connect { path: path.to_path_buf(), source: e }),
            }
        };
        let (read, writer) = stream.into_split();
        let mut lines = BufReader::new(read);
        let mut greeting = String::new();
        match tokio::time::timeout_at(deadline, read_line(&mut lines, &mut greeting)).await {
            Err(_) => return Err(timeout_err("QMP greeting", timeout)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
        }
        let g: Value = serde_json::from_str(&greeting).map_err(|e| ControlError::Protocol(format!("greeting is not JSON: {e}")))?;
        if g.get("QMP").is_none() {
            return Err(ControlError::Protocol(format!("unexpected greeting: {}", greeting.trim())));
        }
        let pending: Pending = Arc::default();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let reader = tokio::spawn(read_loop(lines, pending.clone(), tx));
        let mut client = QmpClient { writer, pending, next_id: 1, timeout, events: Some(rx), reader };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        client.execute_within("qmp_capabilities", None, remaining.max(Duration::from_millis(1))).await?;
        Ok(client)
    }

    pub fn take_events(&mut self) -> Option<mpsc::Receiver<ControlEvent>> {
        self.events.take()
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, ControlError> {
        self.execute_within(command, arguments, self.timeout).await
    }

    async fn execute_within(&mut self, command: &str, arguments: Option<Value>, timeout: Duration) -> Result<Value, ControlError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        let exchange = async {
            self.writer.write_all(line.as_bytes()).await?;
            rx.await.map_err(|_| ControlError::Closed)?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r.map_err(|e| match e {
                ControlError::Command { class, desc, .. } => ControlError::Command { command: command.to_string(), class, desc },
                other => other,
            }),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(timeout_err(&format!("QMP command {command}"), timeout))
            }
        }
    }
    /// Runs one command with `fd` attached (SCM_RIGHTS), as `getfd` and
    /// `add-fd` expect: QEMU takes the descriptor that arrives with the
    /// command's bytes.
    pub async fn execute_with_fd(&mut self, command: &str, arguments: Value, fd: std::os::fd::BorrowedFd<'_>) -> Result<Value, ControlError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let id = self.next_id;
        self.next_id += 1;
        let line = format!("{}\n", json!({ "execute": command, "id": id, "arguments": arguments }));
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let fds = [fd.as_raw_fd()];
        let writer = &mut self.writer;
        let exchange = async {
            let stream: &UnixStream = writer.as_ref();
            let sent = loop {
                stream.writable().await?;
                let r = stream.try_io(tokio::io::Interest::WRITABLE, || {
                    let iov = [std::io::IoSlice::new(line.as_bytes())];
                    sendmsg::<()>(stream.as_fd().as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_NOSIGNAL, None)
                        .map_err(std::io::Error::from)
                });
                match r {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(ControlError::Io(e)),
                }
            };
            // The descriptor went with the first byte; the rest is plain.
            writer.write_all(&line.as_bytes()[sent..]).await?;
            rx.await.map_err(|_| ControlError::Closed)?
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r.map_err(|e| match e {
                ControlError::Command { class, desc, .. } => ControlError::Command { command: command.to_string(), class, desc },
                other => other,
            }),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(timeout_err(&format!("QMP command {command}"), self.timeout))
            }
        }
    }
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
    // A poisoned map only means a panicking holder; the map itself is
    // still consistent (insert/remove are single operations).
    p.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_line(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>, buf: &mut String) -> Result<(), ControlError> {
    buf.clear();
    let n = (&mut *r).take(MAX_LINE as u64).read_line(buf).await?;
    if n == 0 {
        return Err(ControlError::Closed);
    }
    if !buf.ends_with('\n') && n >= MAX_LINE {
        return Err(ControlError::Protocol("message longer than 1 MiB".into()));
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

async fn read_loop(mut r: BufReader<tokio::net::unix::OwnedReadHalf>, pending: Pending, events: mpsc::Sender<ControlEvent>) {
    let mut line = String::new();
    loop {
        if let Err(e) = read_line(&mut r, &mut line).await {
            if !matches!(e, ControlError::Closed) {
                tracing::warn!(error = %e, "QMP connection failed");
            }
            break;
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "QMP sent a line that is not JSON");
                continue;
            }
        };
        if let Some(name) = v.get("event").and_then(Value::as_str) {
            if let Some(ev) = map_event(name, &v) {
                if events.try_send(ev).is_err() {
                    tracing::warn!(event = name, "QMP event dropped: consumer is behind");
                }
            }
            continue;
        }
        let Some(id) = v.get("id").and_then(Value::as_u64) else { continue };
        let Some(tx) = lock(&pending).remove(&id) else { continue };
        let reply = if let Some(ret) = v.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = v.get("error") {
            Err(ControlError::Command {
                command: String::new(),
                class: err.get("class").and_then(Value::as_str).unwrap_or("Unknown").to_string(),
                desc: err.get("desc").and_then(Value::as_str).unwrap_or("").to_string(),
            })
        } else {
            Err(ControlError::Protocol(format!("reply without return or error: {}", line.trim())))
        };
        let _ = tx.send(reply);
    }
    // Fail whoever still waits, then say the channel is gone.
    for (_, tx) in lock(&pending).drain() {
        let _ = tx.send(Err(ControlError::Closed));
    }
    let _ = events.try_send(ControlEvent::Closed);
}

fn map_event(name: &str, v: &Value) -> Option<ControlEvent> {
    Some(match name {
        "SHUTDOWN" => ControlEvent::Shutdown {
            guest: v.pointer("/data/guest").and_then(Value::as_bool).unwrap_or(false),
        },
        "POWERDOWN" => ControlEvent::Powerdown,
        "STOP" => ControlEvent::Stop,
        "RESUME" => ControlEvent::Resume,
        "RESET" => ControlEvent::Reset,
        "GUEST_PANICKED" => ControlEvent::GuestPanicked,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    const GREETING: &str = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";

    /// A scripted QMP peer: answers every command with `{"return":{}}` and
    /// the same id, after sending the given events.
    async fn fake_server(listener: UnixListener, events: Vec<&'static str>) {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(GREETING.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&l).unwrap();
            for e in &events {
                w.write_all(format!("{e}\n").as_bytes()).await.unwrap();
            }
            let reply = if v["execute"] == "query-status" {
                json!({"return": {"status": "running", "running": true}, "id": v["id"]})
            } else if v["execute"] == "bogus" {
                json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": v["id"]})
            } else {
                json!({"return": {}, "id": v["id"]})
            };
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn commands_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_server(l, vec![r#"{"event":"STOP","data":{},"timestamp":{"seconds":1,"microseconds":2}}"#]));
        let mut c = QmpClient::connect(&path, Duration::from_secs(5)).await.unwrap();
        let mut ev = c.take_events().unwrap();
        let r = c.execute("query-status", None).await.unwrap();
        assert_eq!(r["status"], "running");
        let e = c.execute("bogus", None).await.unwrap_err();
        assert!(matches!(&e, ControlError::Command { command, class, .. } if command == "bogus" && class == "CommandNotFound"), "{e}");
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), ev.recv()).await.unwrap(), Some(ControlEvent::Stop));
    }

    #[tokio::test]
    async fn silent_socket_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        // Accept and hold the connection open without a word.
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(s);
        });
        let t0 = std::time::Instant::now();
        let err = QmpClient::connect(&path, Duration::from_millis(300)).await.err().unwrap();
        assert!(matches!(err, ControlError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(3));
        hold.abort();
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let err = QmpClient::connect(&dir.path().join("none.sock"), Duration::from_millis(100)).await.err().unwrap();
        assert!(matches!(err, ControlError::Connect { .. }), "{err}");
    }

    #[tokio::test]
    async fn peer_closing_fails_pending_commands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(GREETING.as_bytes()).await.unwrap();
            let mut lines = BufReader::new(r).lines();
            let l = lines.next_line().await.unwrap().unwrap();
            let v: Value = serde_json::from_str(&l).unwrap();
            w.write_all(format!("{}\n", json!({"return": {}, "id": v["id"]})).as_bytes()).await.unwrap();
            // Read the next command and hang up without answering.
            let _ = lines.next_line().await;
        });
        let mut c = QmpClient::connect(&path, Duration::from_secs(5)).await.unwrap();
        let mut ev = c.take_events().unwrap();
        let err = c.execute("quit", None).await.unwrap_err();
        assert!(matches!(err, ControlError::Closed), "{err}");
        assert_eq!(ev.recv().await, Some(ControlEvent::Closed));
    }
}
