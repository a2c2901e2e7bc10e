//! Bounded shutdown of the API: once the daemon decides to exit, every
//! request still waiting (an `up --wait ready`, a stop with a long
//! timeout) is answered `unavailable` at once, and every streaming body
//! (`events?follow`, `console?follow`, image pulls) ends with a final line
//! saying why. Without this, axum's graceful shutdown waits for the last
//! follower to hang up, which may be never.
//!
//! The operations themselves are not cancelled: they belong to the VM
//! actors, and the next daemon finishes or rolls them back from the
//! database.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use futures::{Stream, StreamExt as _};
use std::sync::Arc;
use tokio::sync::watch;

use super::error::ApiError;
use super::types::ErrorDetail;

const WHY: &str = "the daemon is shutting down; the operation itself goes on and the next daemon picks it up";

/// Tells every request in flight that the daemon is exiting.
#[derive(Clone)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { tx: Arc::new(watch::channel(false).0) }
    }
}

impl Drain {
    /// Ends followers and waits in flight; new requests are refused.
    pub fn begin(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once `begin` was called.
    pub async fn begun(&self) {
        wait(self.tx.subscribe()).await
    }
}

async fn wait(mut rx: watch::Receiver<bool>) {
    // The sender lives in `Drain`, which outlives every request.
    if rx.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn unavailable() -> Response {
    ApiError { status: StatusCode::SERVICE_UNAVAILABLE, detail: ErrorDetail { kind: "unavailable".into(), message: WHY.into(), field: None } }
        .into_response()
}

/// The middleware: races each request against the drain and cuts its
/// streaming body off with a last line when the drain begins.
pub async fn bounded(State(drain): State<Drain>, req: Request, next: Next) -> Response {
    // The shutdown request itself starts the drain; it must be answered.
    if req.uri().path() == "/v1/shutdown" {
        return next.run(req).await;
    }
    if *drain.tx.borrow() {
        return unavailable();
    }
    let resp = tokio::select! {
        r = next.run(req) => r,
        _ = drain.begun() => return unavailable(),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let last = if content_type.starts_with("application/x-ndjson") {
        let body = serde_json::json!({ "error": { "kind": "unavailable", "message": WHY } });
        Bytes::from(format!("{body}\n"))
    } else if content_type.starts_with("application/octet-stream") {
        Bytes::from(format!("\r\n[paddock: {WHY}]\r\n"))
    } else {
        return resp;
    };
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::from_stream(until_drain(body, drain, last)))
}

/// `body`, ended with `last` when the drain begins.
fn until_drain(body: Body, drain: Drain, last: Bytes) -> impl Stream<Item = Result<Bytes, axum::Error>> {
    let stop = Box::pin(wait(drain.tx.subscribe()));
    futures::stream::unfold(Some((body.into_data_stream(), stop)), move |st| {
        let last = last.clone();
        async move {
            let (mut data, mut stop) = st?;
            tokio::select! {
                biased;
                _ = &mut stop => Some((Ok(last), None)),
                item = data.next() => item.map(|i| (i, Some((data, stop)))),
            }
        }
    })
}
