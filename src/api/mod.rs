//! The HTTP/JSON API on a Unix socket. One router; handlers are thin and
//! call `Runtime`; errors become `{"error": {...}}` in `error.rs`.
//!
//! ```text
//! GET    /v1/health
//! GET    /v1/vms?label=k=v               list (every label selector must match)
//! POST   /v1/vms?wait=&timeout_secs=     create and boot (body: spec JSON; Idempotency-Key header)
//! GET    /v1/vms/{name}
//! DELETE /v1/vms/{name}?force=
//! POST   /v1/vms/{name}/start?wait=&timeout_secs=
//! POST   /v1/vms/{name}/stop?timeout_secs=      graceful (ACPI) budget
//! POST   /v1/vms/{name}/pause | /resume
//! GET    /v1/vms/{name}/wait?until=exit&timeout_secs=   how the current run ended
//! GET    /v1/stats?name=                        per-VM figures (CPU, memory, I/O, network) as JSON
//! GET    /metrics                               Prometheus text format
//! GET    /v1/host                               version, backends, virtualisation, CPUs, memory, VMs
//! GET    /v1/vms/{name}/console?follow=|offset=  raw bytes (offset: from byte N of the live file)
//! GET    /v1/vms/{name}/console/attach          HTTP upgrade, raw duplex
//! GET    /v1/vms/{name}/vsock/{port}            HTTP upgrade (paddock-vsock), raw duplex to a guest vsock port
//! GET    /v1/volumes                            data disks (kept after rm, or in use)
//! DELETE /v1/volumes/{name}                     delete a kept data disk
//! GET    /v1/events?since=&follow=              NDJSON
//! POST   /v1/shutdown?stop_vms=&suspend_vms=    exit the daemon (VMs keep running unless stop_vms; suspend_vms snapshots them first)
//! GET    /v1/vms/{name}/ssh                     user, address and key for `paddock ssh`
//! GET    /v1/images                             cached images
//! POST   /v1/images                             pull {url, sha256}: NDJSON progress, then the image
//! POST   /v1/images/import                      copy a host file {path} in by content
//! DELETE /v1/images/{sha256}                    refused while a VM uses it
//! POST   /v1/vms/{name}/snapshot?as=&then=      save state + disks (then: resume | stop)
//! GET    /v1/snapshots                          snapshots
//! DELETE /v1/snapshots/{snapshot}               refused while a VM starts from it
//! POST   /v1/snapshots/{snapshot}/restore?name=&wait=&timeout_secs=   a new VM from it
//! ```

mod console;
mod snapshots;
mod console_offset;
mod openapi;
pub mod metrics;
mod scheduler;
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
use axum::routing::get;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
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
    let (router, _) = documented().split_for_parts();
    router
        .route("/v1/openapi.json", get(openapi_json))
        .layer(axum::middleware::map_response(error::json_errors))
        .route_layer(axum::middleware::from_fn_with_state(runtime.clone(), metrics::timed))
        .with_state(runtime)
}

/// Every route with its handler's OpenAPI description: the router and
/// the document are made from the same list, so neither can lack a route.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(scheduler::list, create))
        .routes(routes!(inspect, remove))
        .routes(routes!(start))
        .routes(routes!(stop))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(scheduler::wait))
        .routes(routes!(scheduler::host))
        .routes(routes!(metrics::stats))
        .routes(routes!(metrics::scrape))
        .routes(routes!(console::follow))
        .routes(routes!(console::attach))
        .routes(routes!(vsock::connect))
        .routes(routes!(vsock::volumes))
        .routes(routes!(vsock::remove_volume))
        .routes(routes!(events::stream))
        .routes(routes!(shutdown))
        .routes(routes!(images::list, images::pull))
        .routes(routes!(images::remove))
        .routes(routes!(images::import))
        .routes(routes!(ssh::target))
        .routes(routes!(snapshots::take))
        .routes(routes!(snapshots::list))
        .routes(routes!(snapshots::remove))
        .routes(routes!(snapshots::restore))
}

/// The API's OpenAPI 3.1 document (served at `/v1/openapi.json`).
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut doc) = documented().split_for_parts();
        doc.paths.paths.insert("/v1/openapi.json".into(), openapi::self_path());
        doc
    })
}

async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(openapi())
}

#[utoipa::path(get, path = "/v1/health", tag = "daemon", responses((status = 200, description = "The daemon answers", body = Object), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") }))
}

#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "The VM's name")), responses((status = 200, body = crate::VmInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
async fn inspect(State(rt): State<AppState>, Path(name): Path<String>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(rt.get(&name)?))
}

/// The body is parsed here rather than by axum's `Json` extractor so that
/// a bad field is reported with its path (`boot.kernal`), not a byte offset.
/// The query is checked before the body is read, and both before anything
/// is created.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", params(types::StartQuery, ("idempotency-key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "A repeat with the same key and spec answers the first result; another spec is a 409")), request_body = crate::VmSpec, responses((status = 201, description = "Created and booted (or the first result, replayed, with `idempotent-replayed: true`)", body = crate::VmInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
async fn create(
    State(rt): State<AppState>,
    ValidQuery(q): ValidQuery<StartQuery>,
    timeout: Option<axum::Extension<server::BodyReadTimeout>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, axum::http::HeaderMap, Json<VmInfo>), ApiError> {
    let key = idempotency_key(&headers)?;
    let deadline = timeout.map(|t| t.0 .0).unwrap_or(server::ApiLimits::default().body_read_timeout);
    let body: Bytes = server::read_body(body, deadline).await?;
    let spec: VmSpec = types::parse_spec(&body)?;
    let mut out = axum::http::HeaderMap::new();
    let info = match key {
        None => rt.up(spec, q.wait.unwrap_or_default(), q.timeout()).await?,
        Some(key) => {
            let created = rt.up_idempotent(&key, spec, q.wait.unwrap_or_default(), q.timeout()).await?;
            if created.replayed {
                out.insert(IDEMPOTENT_REPLAYED, axum::http::HeaderValue::from_static("true"));
            }
            created.info
        }
    };
    Ok((StatusCode::CREATED, out, Json(info)))
}

/// The request header carrying a create's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer replayed for a repeated key.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = v.to_str().map_err(|_| ApiError::invalid_request(IDEMPOTENCY_KEY, "the Idempotency-Key header must be printable ASCII"))?;
    crate::idempotency::check_key(key).map_err(|m| ApiError::invalid_request(IDEMPOTENCY_KEY, m))?;
    Ok(Some(key.to_string()))
}

#[utoipa::path(post, path = "/v1/vms/{name}/start", tag = "vms", params(("name" = String, Path, description = "The VM's name"), types::StartQuery), responses((status = 200, body = crate::VmInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
async fn start(State(rt): State<AppState>, Path(name): Path<String>, ValidQuery(q): ValidQuery<StartQuery>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(rt.start_vm(&name, q.wait.unwrap_or_default(), q.timeout()).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/stop", tag = "vms", params(("name" = String, Path, description = "The VM's name"), types::StopQuery), responses((status = 200, body = crate::StopOutcome), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
async fn stop(State(rt): State<AppState>, Path(name): Path<String>, ValidQuery(q): ValidQuery<StopQuery>) -> Result<Json<crate::StopOutcome>, ApiError> {
    let graceful = Duration::from_secs(q.timeout_secs.unwrap_or(types::DEFAULT_GRACEFUL_SECS));
    Ok(Json(rt.stop(&name, graceful).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/pause", tag = "vms", params(("name" = String, Path, description = "The VM's name")), responses((status = 200, body = crate::VmInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
async fn pause(State(rt): State<AppState>, Path(name): Path<String>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(rt.pause(&name).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/resume", tag = "vms", params(("name" = String, Path, description = "The VM's name")), responses((status = 200, body = crate::VmInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
async fn resume(State(rt): State<AppState>, Path(name): Path<String>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(rt.resume(&name).await?))
}

/// Exits the daemon. VMs keep running (the next daemon re-adopts them)
/// unless `stop_vms`, which first runs every VM's shutdown ladder.
#[utoipa::path(post, path = "/v1/shutdown", tag = "daemon", params(types::ShutdownQuery), responses((status = 200, description = "The daemon exits", body = Object), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
async fn shutdown(State(rt): State<AppState>, ValidQuery(q): ValidQuery<ShutdownQuery>) -> Json<serde_json::Value> {
    let mut stopped = serde_json::Map::new();
    let mut suspended = serde_json::Map::new();
    if q.suspend_vms.unwrap_or(false) {
        for (name, r) in rt.suspend_all().await {
            let v = match r {
                Ok(s) => serde_json::json!({ "snapshot": s.name, "bytes": s.bytes }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            suspended.insert(name, v);
        }
    }
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
    Json(serde_json::json!({ "exiting": true, "stopped": stopped, "suspended": suspended }))
}

#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "The VM's name"), types::RemoveQuery), responses((status = 204, description = "Removed"), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
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
