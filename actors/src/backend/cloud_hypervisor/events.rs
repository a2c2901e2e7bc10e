//! The event monitor: CH writes one pretty-printed JSON object per event
//! (`timestamp`, `source`, `event`, `properties`), one after another, to
//! the file given by `--event-monitor path=`. The file is written by CH
//! itself, so it keeps going while the supervisor is down; a (re)connected
//! supervisor tails it from its current end.
//!
//! Objects span several lines and may be cut anywhere by a read, so the
//! bytes are parsed as a stream (`serde_json::StreamDeserializer`) over a
//! buffer that keeps an incomplete tail for the next read.

use serde::Deserialize;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::backend::ControlEvent;

/// An incomplete object larger than this is garbage, not an event.
const MAX_PENDING: usize = 1 << 20;
/// How often the file is checked for new bytes (as often as the console
/// log): events only refine what the API answers and the exit watch say.
const POLL: Duration = Duration::from_millis(100);

/// One event as CH writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChEvent {
    #[serde(default)]
    pub timestamp: serde_json::Value,
    pub source: String,
    pub event: String,
    #[serde(default)]
    pub properties: Option<serde_json::Value>,
}

/// Incremental parser: feed bytes, get complete events.
#[derive(Default)]
pub struct EventParser {
    buf: Vec<u8>,
}

impl EventParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<ChEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        // Bytes before `consumed` are parsed (or skipped) for good.
        let mut consumed = 0;
        'restart: loop {
            let mut stream = serde_json::Deserializer::from_slice(&self.buf[consumed..]).into_iter::<serde_json::Value>();
            let base = consumed;
            loop {
                match stream.next() {
                    Some(Ok(v)) => {
                        consumed = base + stream.byte_offset();
                        match serde_json::from_value::<ChEvent>(v) {
                            Ok(ev) => out.push(ev),
                            Err(e) => tracing::warn!(error = %e, "event monitor object is not an event"),
                        }
                    }
                    // Cut off mid-object: keep the tail for the next read.
                    Some(Err(e)) if e.is_eof() => break 'restart,
                    Some(Err(e)) => {
                        // Garbage: resume at the next object start.
                        tracing::warn!(error = %e, "event monitor wrote something that is not JSON");
                        let from = consumed + 1;
                        match self.buf.get(from..).and_then(|rest| rest.iter().position(|b| *b == b'{')) {
                            Some(i) => {
                                consumed = from + i;
                                continue 'restart;
                            }
                            None => {
                                consumed = self.buf.len();
                                break 'restart;
                            }
                        }
                    }
                    None => {
                        consumed = self.buf.len();
                        break 'restart;
                    }
                }
            }
        }
        self.buf.drain(..consumed.min(self.buf.len()));
        if self.buf.len() > MAX_PENDING {
            tracing::warn!(bytes = self.buf.len(), "event monitor object too large; dropped");
            self.buf.clear();
        }
        out
    }
}

/// What the supervisor makes of a CH event. `quit_sent` tells a shutdown we
/// asked for (the quit rung) from one the guest did (ACPI power-off).
pub fn to_control(ev: &ChEvent, quit_sent: bool) -> Option<ControlEvent> {
    Some(match (ev.source.as_str(), ev.event.as_str()) {
        ("vm", "shutdown") => ControlEvent::Shutdown { guest: !quit_sent },
        ("vm", "paused") => ControlEvent::Stop,
        ("vm", "resumed") => ControlEvent::Resume,
        ("vm", "rebooting") => ControlEvent::Reset,
        ("guest", "panic") => ControlEvent::GuestPanicked,
        _ => return None,
    })
}

/// Tails `path` from its current end (or from the start once it appears)
/// and sends the events on; ends when the receiver is gone.
pub fn spawn_tail(path: PathBuf, quit_sent: Arc<AtomicBool>, tx: mpsc::Sender<ControlEvent>) -> tokio::task::JoinHandle<()> {
    let mut file = std::fs::File::open(&path).ok().map(tokio::fs::File::from_std);
    tokio::spawn(async move {
        let mut offset = match file.as_mut() {
            Some(f) => f.seek(SeekFrom::End(0)).await.unwrap_or(0),
            None => 0,
        };
        let mut parser = EventParser::default();
        let mut chunk = vec![0u8; 4096];
        loop {
            if tx.is_closed() {
                return;
            }
            let Some(f) = file.as_mut() else {
                tokio::time::sleep(POLL).await;
                file = tokio::fs::File::open(&path).await.ok();
                continue;
            };
            // CH truncates the file when a new process opens it; start over.
            if f.metadata().await.map(|m| m.len() < offset).unwrap_or(false) {
                offset = 0;
            }
            if f.seek(SeekFrom::Start(offset)).await.is_err() {
                tokio::time::sleep(POLL).await;
                continue;
            }
            match f.read(&mut chunk).await {
                Ok(0) | Err(_) => tokio::time::sleep(POLL).await,
                Ok(n) => {
                    offset += n as u64;
                    for ev in parser.push(&chunk[..n]) {
                        tracing::debug!(source = %ev.source, event = %ev.event, "cloud-hypervisor event");
                        if let Some(c) = to_control(&ev, quit_sent.load(Ordering::SeqCst)) {
                            if tx.try_send(c).is_err() {
                                tracing::warn!(event = %ev.event, "CH event dropped: consumer is behind");
                            }
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretty(source: &str, event: &str) -> String {
        let v = serde_json::json!({"timestamp": {"secs": 0, "nanos": 5}, "source": source, "event": event, "properties": null});
        serde_json::to_string_pretty(&v).unwrap() + "\n\n"
    }

    #[test]
    fn objects_split_anywhere_are_parsed_once() {
        let text = pretty("vm", "booting") + &pretty("vm", "booted") + &pretty("vm", "paused");
        for cut in 0..text.len() {
            let mut p = EventParser::default();
            let mut got = p.push(&text.as_bytes()[..cut]);
            got.extend(p.push(&text.as_bytes()[cut..]));
            let names: Vec<_> = got.iter().map(|e| e.event.as_str()).collect();
            assert_eq!(names, ["booting", "booted", "paused"], "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_skipped() {
        let mut p = EventParser::default();
        let text = format!("oops{}", pretty("vm", "resumed"));
        let got = p.push(text.as_bytes());
        assert_eq!(got.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["resumed"]);
    }

    #[test]
    fn mapping() {
        let ev = |s: &str, e: &str| ChEvent { timestamp: serde_json::Value::Null, source: s.into(), event: e.into(), properties: None };
        assert_eq!(to_control(&ev("vm", "shutdown"), false), Some(ControlEvent::Shutdown { guest: true }));
        assert_eq!(to_control(&ev("vm", "shutdown"), true), Some(ControlEvent::Shutdown { guest: false }));
        assert_eq!(to_control(&ev("vm", "paused"), false), Some(ControlEvent::Stop));
        assert_eq!(to_control(&ev("guest", "panic"), false), Some(ControlEvent::GuestPanicked));
        assert_eq!(to_control(&ev("vmm", "starting"), false), None);
    }
}
