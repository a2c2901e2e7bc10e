//! The API's connection loop: hyper's HTTP/1 on the Unix socket, with the
//! bounds a long-running daemon needs against slow or greedy clients.
//!
//! - A client must send a complete request header within
//!   `header_read_timeout` of connecting or of its previous response
//!   (hyper starts this timer whenever it waits for a request head, so it
//!   is the keep-alive idle timeout too); a request body must arrive within
//!   `body_read_timeout` (see `read_body`).
//! - At most `max_connections` connections are served at once; one more
//!   gets `503 {"error": {"kind": "unavailable", ...}}` and is closed, so a
//!   flood of idle clients cannot take the fd table and wedge the API.
//! - Running out of file descriptors at accept is logged as such, and the
//!   loop backs off instead of spinning.
//! - At shutdown, connections get a bounded time to finish.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::types::{ErrorBody, ErrorDetail};

#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Time to send a whole request header (from connecting, or from the
    /// previous response on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// Time to send a whole request body.
    pub body_read_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How long open connections (followers) may keep the daemon at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Refusals being written at once; beyond this a refused connection is
/// just closed (a flood must not cost a task and a buffer each).
const MAX_REFUSALS: usize = 32;
/// Back-off after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` resolves.
pub async fn serve(listener: UnixListener, app: Router, limits: ApiLimits, stop: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    // Flips to true at shutdown; every connection then finishes its
    // current response and closes.
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let app = app.layer(axum::Extension(BodyReadTimeout(limits.body_read_timeout)));
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    accept_failed(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(max = limits.max_connections, "API connection refused: too many connections");
            if let Ok(slot) = refusals.clone().try_acquire_owned() {
                let max = limits.max_connections;
                tokio::spawn(async move {
                    refuse(stream, max).await;
                    drop(slot);
                });
            }
            continue;
        };
        let svc = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(stream), svc).with_upgrades();
        let mut closing = closing.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = closing.wait_for(|c| *c) => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every connection holds a permit until it ends: all permits back
    // means all connections closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(grace_ms = limits.shutdown_grace.as_millis() as u64, "API connections still open at shutdown; leaving them");
    }
}

fn accept_failed(e: &std::io::Error) {
    match e.raw_os_error() {
        Some(libc::EMFILE) => tracing::error!("cannot accept an API connection: the daemon is out of file descriptors (EMFILE); raise its limit (LimitNOFILE=)"),
        Some(libc::ENFILE) => tracing::error!("cannot accept an API connection: the system is out of file descriptors (ENFILE)"),
        _ => tracing::warn!(error = %e, "cannot accept an API connection"),
    }
}

/// Answers one connection over the cap with a 503 in the documented JSON
/// shape. The request head is read first (briefly) so the client is not
/// cut off while it is still writing.
async fn refuse(mut stream: UnixStream, max: usize) {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            kind: "unavailable".into(),
            message: format!("too many connections: the API serves {max} at once (serve --api-max-connections); retry when some have closed"),
            field: None,
        },
    })
    .unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
        body.len()
    )
    .into_bytes();
    head.extend_from_slice(&body);
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&head).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The body-read deadline, handed to handlers as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct BodyReadTimeout(pub Duration);

/// Largest request body (a spec, an image pull request).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Reads a request body within its deadline and size bound: 408 or 413 in
/// the JSON error shape otherwise.
pub async fn read_body(body: axum::body::Body, timeout: Duration) -> Result<axum::body::Bytes, ApiError> {
    let err = |status, kind: &str, message: String| ApiError { status, detail: ErrorDetail { kind: kind.into(), message, field: None } };
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => Err(err(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request body did not arrive within {} s", timeout.as_secs()),
        )),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(err(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                ))
            } else {
                Err(err(axum::http::StatusCode::BAD_REQUEST, "invalid_request", format!("cannot read the request body: {e}")))
            }
        }
        Ok(Ok(b)) => Ok(b),
    }
}
