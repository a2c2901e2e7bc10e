//! Console endpoints: a byte stream for followers, an HTTP upgrade to a raw
//! duplex stream for the one interactive writer.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::Response;
use futures::StreamExt as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::BroadcastStream;

use super::error::ApiError;
use super::query::ValidQuery;
use super::types::ConsoleQuery;
use super::AppState;

pub const UPGRADE_PROTOCOL: &str = "paddock-console";

#[utoipa::path(get, path = "/v1/vms/{name}/console", tag = "console", params(("name" = String, Path, description = "The VM's name"), ConsoleQuery), responses((status = 200, description = "The console backlog, then live output with follow; with offset, the live file from that byte (header paddock-console-next: where to read next)", content_type = "application/octet-stream", body = Vec<u8>), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn follow(State(rt): State<AppState>, Path(name): Path<String>, ValidQuery(q): ValidQuery<ConsoleQuery>) -> Result<Response, ApiError> {
    if let Some(offset) = q.offset {
        return super::console_offset::read_from(&rt.get(&name)?.console_log, offset);
    }
    let f = rt.console_follow(&name).await?;
    let backlog = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(f.backlog) });
    let body = if q.follow.unwrap_or(false) {
        // A follower that falls more than the channel behind loses the
        // oldest chunks rather than slowing the console for everyone.
        let live = BroadcastStream::new(f.live).filter_map(|r| async move { r.ok().map(Ok) });
        Body::from_stream(backlog.chain(live))
    } else {
        Body::from_stream(backlog)
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .unwrap_or_default())
}

/// How long input already sent by a detached client may take to arrive.
const INPUT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

#[utoipa::path(get, path = "/v1/vms/{name}/console/attach", tag = "console", params(("name" = String, Path, description = "The VM's name")), responses((status = 101, description = "Upgraded (Upgrade: paddock-console) to a raw duplex stream"), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn attach(State(rt): State<AppState>, Path(name): Path<String>, mut req: Request) -> Result<Response, ApiError> {
    super::upgrade::require(&req, UPGRADE_PROTOCOL)?;
    let attach = rt.console_attach(&name).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(vm = %name, error = %e, "console upgrade failed");
                return;
            }
        };
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        let mut live = attach.follow.live;
        let backlog = attach.follow.backlog;
        let out = async move {
            if wr.write_all(&backlog).await.is_err() {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(b) => {
                        if wr.write_all(&b).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
        };
        let input = attach.input;
        let inp = async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if input.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        // Either side ending ends the session; dropping `input` frees the
        // console for the next writer. A client that types and detaches at
        // once makes the output side fail first (its backlog has nowhere to
        // go), but what it typed is still in the socket: drain that first.
        tokio::pin!(inp);
        tokio::select! {
            _ = out => { let _ = tokio::time::timeout(INPUT_DRAIN, &mut inp).await; }
            _ = &mut inp => {}
        }
    });
    Ok(super::upgrade::switching(UPGRADE_PROTOCOL))
}
