//! `GET /v1/events`: recorded events after `since`, then (with follow) live
//! ones, as NDJSON.
//!
//! History is read from the database a page at a time as the client takes
//! it, so memory does not grow with the length of the history or the
//! number of readers. Live events are subscribed before the history is
//! read and de-duplicated by sequence number, so nothing falls in between.
//! A follower that falls more than the live buffer behind gets one
//! `{"lagged": {...}}` line naming the gap and is then served the missed
//! events from the database, in order: never a silent hole.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};

use super::error::ApiError;
use super::query::ValidQuery;
use super::types::EventsQuery;
use super::AppState;
use crate::Event;

/// Events per database read (and per body chunk).
const PAGE: u32 = 500;

/// The line a follower gets when it fell behind the live buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lagged {
    /// The last event it was sent; what follows starts right after it.
    pub after_seq: u64,
    /// Live events it missed (they come next, from the database).
    pub missed: u64,
    pub message: String,
}

/// One NDJSON line that is not an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaggedLine {
    pub lagged: Lagged,
}

fn push_line<T: Serialize>(out: &mut Vec<u8>, v: &T) {
    if serde_json::to_writer(&mut *out, v).is_ok() {
        out.push(b'\n');
    }
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery), responses((status = 200, description = "NDJSON: one Event per line", content_type = "application/x-ndjson", body = crate::Event), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn stream(State(rt): State<AppState>, ValidQuery(q): ValidQuery<EventsQuery>) -> Result<Response, ApiError> {
    let live = q.follow.unwrap_or(false).then(|| rt.subscribe());
    let replay = Replay { rt, last: q.since.unwrap_or(0), live, from_history: true };
    let body = futures::stream::unfold(replay, |mut r| async move {
        let chunk = r.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(chunk), r))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap_or_default())
}

/// Where one reader is: the last sequence number sent, and whether the
/// next chunk comes from the database or the live channel.
struct Replay {
    rt: AppState,
    last: u64,
    live: Option<broadcast::Receiver<Event>>,
    from_history: bool,
}

impl Replay {
    /// The next body chunk; None ends the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.from_history {
                let (page, last) = match self.rt.event_lines_since(self.last, PAGE).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the event history");
                        return None;
                    }
                };
                let Some(last) = last else {
                    // Caught up: live from here (or the end of a replay).
                    self.live.as_ref()?;
                    self.from_history = false;
                    continue;
                };
                self.last = last;
                return Some(Bytes::from(page));
            }
            let live = self.live.as_mut()?;
            match live.recv().await {
                // Not persisted (the write failed): only live observers see it.
                Ok(ev) if ev.seq == 0 => return Some(line(&ev)),
                Ok(ev) if ev.seq <= self.last => continue,
                Ok(ev) if ev.seq == self.last + 1 => {
                    self.last = ev.seq;
                    return Some(line(&ev));
                }
                // A gap the channel does not explain: the database has it.
                Ok(_) => self.from_history = true,
                Err(RecvError::Lagged(missed)) => {
                    self.from_history = true;
                    let mut out = Vec::new();
                    let message = format!(
                        "this reader fell {missed} events behind the live stream after seq {}; they follow from the database",
                        self.last
                    );
                    push_line(&mut out, &LaggedLine { lagged: Lagged { after_seq: self.last, missed, message } });
                    return Some(Bytes::from(out));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn line(ev: &Event) -> Bytes {
    let mut v = Vec::new();
    push_line(&mut v, ev);
    Bytes::from(v)
}
