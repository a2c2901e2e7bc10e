//! `GET /v1/events`: recorded events after `since`, then (with follow) live
//! ones, as NDJSON. Live events are subscribed before the history is read
//! and de-duplicated by sequence number, so nothing falls in between.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::Response;
use futures::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;

use super::error::ApiError;
use super::types::EventsQuery;
use super::AppState;
use crate::Event;

fn line(ev: &Event) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

pub async fn stream(State(rt): State<AppState>, Query(q): Query<EventsQuery>) -> Result<Response, ApiError> {
    let live = rt.subscribe();
    let since = q.since.unwrap_or(0);
    let mut history = Vec::new();
    let mut last = since;
    loop {
        let batch = rt.events_since(last, 1000).await?;
        let Some(end) = batch.last().map(|e| e.seq) else { break };
        last = end;
        history.extend(batch);
    }
    let head = futures::stream::iter(history.iter().map(line).map(Ok::<_, std::io::Error>).collect::<Vec<_>>());
    let body = if q.follow.unwrap_or(false) {
        let tail = BroadcastStream::new(live)
            .filter_map(move |r| async move { r.ok().filter(|e| e.seq > last).map(|e| Ok(line(&e))) });
        Body::from_stream(head.chain(tail))
    } else {
        Body::from_stream(head)
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .unwrap_or_default())
}
