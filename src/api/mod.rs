//! The HTTP/JSON API on a Unix socket. One router; handlers are thin and
//! call `Runtime`; errors become `{"error": {...}}` in `error.rs`.
//!
//! ```text
//! GET    /v1/health
//! GET    /v1/vms                         list
//! POST   /v1/vms?wait=&timeout_secs=     create and boot (body: spec JSON)
//! GET    /v1/vms/{name}
//! DELETE /v1/vms/{name}?force=
//! POST   /v1/vms/{name}/start?wait=&timeout_secs=
//! POST   /v1/vms/{name}/stop?timeout_secs=      graceful (ACPI) budget
//! POST   /v1/vms/{name}/pause | /resume
//! GET    /v1/vms/{name}/console?follow=         raw bytes
//! GET    /v1/vms/{name}/console/attach          HTTP upgrade, raw duplex
//! GET    /v1/vms/{name}/vsock/{port}            HTTP upgrade (paddock-vsock), raw duplex to a guest vsock port
//! GET    /v1/volumes                            data disks (kept after rm, or in use)
//! DELETE /v1/volumes/{name}                     delete a kept data disk
//! GET    /v1/events?since=&follow=              NDJSON
//! POST   /v1/shutdown?stop_vms=                 exit the daemon (VMs keep running unless stop_vms)
//! GET    /v1/vms/{name}/ssh                     user, address and key for `paddock ssh`
//! GET    /v1/images                             cached images
//! POST   /v1/images                             pull {url, sha256}: NDJSON progress, then the image
//! POST   /v1/images/import                      copy a host file {path} in by content
//! DELETE /v1/images/{sha256}                    refused while a VM uses it
//! ```

mod console;
pub mod drain;
mod upgrade;
mod vsock;
pub mod error;
pub mod events;
pub mod images;
pub mod ssh;
pub mod query;
pub mod server;
pub mod types;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;

use crate::{Runtime, VmInfo, VmSpec};
use error::ApiError;
use query::ValidQuery;
use types::{RemoveQuery, ShutdownQuery, StartQuery, StopQuery};

pub type AppState = Arc<Runtime>;

pub fn router(runtime: Arc<Runtime>) -> Router {
    routes(runtime)
}

/// The router with a bounded shutdown: when `drain` begins, waits in
/// flight are answered and followers ended (`drain.rs`).
pub fn router_with_drain(runtime: Arc<Runtime>, drain: drain::Drain) -> Router {
    routes(runtime).layer(axum::middleware::from_fn_with_state(drain, drain::bounded))
}

fn routes(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{name}", get(inspect).delete(remove))
        .route("/v1/vms/{name}/start", post(start))
        .route("/v1/vms/{name}/stop", post(stop))
        .route("/v1/vms/{name}/pause", post(pause))
        .route("/v1/vms/{name}/resume", post(resume))
        .route("/v1/vms/{name}/console", get(console::follow))
        .route("/v1/vms/{name}/console/attach", get(console::attach))
        .route("/v1/vms/{name}/vsock/{port}", get(vsock::connect))
        .route("/v1/vms/{name}/ssh", get(ssh::target))
        .route("/v1/volumes", get(vsock::volumes))
        .route("/v1/volumes/{name}", axum::routing::delete(vsock::remove_volume))
        .route("/v1/events", get(events::stream))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/images", get(images::list).post(images::pull))
        .route("/v1/images/import", axum::routing::post(images::import))
        .route("/v1/images/{sha256}", axum::routing::delete(images::remove))
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(runtime)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") }))
}

async fn list(State(rt): State<AppState>) -> Json<Vec<VmInfo>> {
    Json(rt.list())
}

async fn inspect(State(rt): State<AppState>, Path(name): Path<String>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(rt.get(&name)?))
}

/// The body is parsed here rather than by axum's `Json` extractor so that
/// a bad field is reported with its path (`boot.kernal`), not a byte offset.
/// The query is checked before the body is read, and both before anything
/// is created.
async fn create(
    State(rt): State<AppState>,
    ValidQuery(q): ValidQuery<StartQuery>,
    timeout: Option<axum::Extension<server::BodyReadTimeout>>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<VmInfo>), ApiError> {
    let deadline = timeout.map(|t| t.0 .0).unwrap_or(server::ApiLimits::default().body_read_timeout);
    let body: Bytes = server::read_body(body, deadline).await?;
    let spec: VmSpec = types::parse_spec(&body)?;
    let info = rt.up(spec, q.wait.unwrap_or_default(), q.timeout()).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn start(State(rt): State<AppState>, Path(name): Path<String>, ValidQuery(q): ValidQuery<StartQuery>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(rt.start_vm(&name, q.wait.unwrap_or_default(), q.timeout()).await?))
}

async fn stop(State(rt): State<AppState>, Path(name): Path<String>, ValidQuery(q): ValidQuery<StopQuery>) -> Result<Json<crate::StopOutcome>, ApiError> {
    let graceful = Duration::from_secs(q.timeout_secs.unwrap_or(types::DEFAULT_GRACEFUL_SECS));
    Ok(Json(rt.stop(&name, graceful).await?))
}

async fn pause(State(rt): State<AppState>, Path(name): Path<String>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(rt.pause(&name).await?))
}

async fn resume(State(rt): State<AppState>, Path(name): Path<String>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(rt.resume(&name).await?))
}

/// Exits the daemon. VMs keep running (the next daemon re-adopts them)
/// unless `stop_vms`, which first runs every VM's shutdown ladder.
async fn shutdown(State(rt): State<AppState>, ValidQuery(q): ValidQuery<ShutdownQuery>) -> Json<serde_json::Value> {
    let mut stopped = serde_json::Map::new();
    if q.stop_vms.unwrap_or(false) {
        let graceful = Duration::from_secs(q.timeout_secs.unwrap_or(types::DEFAULT_GRACEFUL_SECS));
        for (name, r) in rt.stop_all(graceful).await {
            let v = match r {
                Ok(o) => serde_json::to_value(o).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            stopped.insert(name, v);
        }
    }
    rt.request_exit();
    Json(serde_json::json!({ "exiting": true, "stopped": stopped }))
}

async fn remove(State(rt): State<AppState>, Path(name): Path<String>, ValidQuery(q): ValidQuery<RemoveQuery>) -> Result<StatusCode, ApiError> {
    rt.remove_with(&name, q.force.unwrap_or(false), q.volumes.unwrap_or(false)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `Upgrade:` protocol name of a vsock stream.
pub fn vsock_protocol() -> &'static str {
    vsock::UPGRADE_PROTOCOL
}

/// The `Upgrade:` protocol name of the interactive console.
pub fn console_protocol() -> &'static str {
    console::UPGRADE_PROTOCOL
}
