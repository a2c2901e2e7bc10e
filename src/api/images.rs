//! Image endpoints. `POST /v1/images` streams NDJSON: progress lines
//! `{"progress":{"done":N,"total":N}}` while downloading, then one
//! `{"image":{...}}` or `{"error":{...}}`. Progress also goes to the event
//! stream (at most a few times a second).

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use super::error::ApiError;
use super::AppState;
use crate::Error;

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub url: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageInfo {
    pub sha256: String,
    #[schema(value_type = String)]
    pub path: std::path::PathBuf,
    pub size: u64,
    /// VMs whose spec names this image.
    pub used_by: Vec<String>,
}

fn used_by(rt: &crate::Runtime, sha: &str) -> Vec<String> {
    let wanted = format!("sha256:{sha}");
    rt.list().into_iter().filter(|v| v.spec.boot.image.as_deref().map(str::to_ascii_lowercase) == Some(wanted.clone())).map(|v| v.name).collect()
}

fn spec_err(field: &str, e: impl std::fmt::Display) -> ApiError {
    Error::InvalidSpec(crate::SpecError::new(field, e.to_string())).into()
}

#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = [ImageInfo]), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn list(State(rt): State<AppState>) -> Result<Json<Vec<ImageInfo>>, ApiError> {
    let imgs = rt.images().list().map_err(|e| spec_err("images", e))?;
    Ok(Json(imgs.into_iter().map(|i| ImageInfo { used_by: used_by(&rt, &i.sha256), sha256: i.sha256, path: i.path, size: i.size }).collect()))
}

#[utoipa::path(delete, path = "/v1/images/{sha256}", tag = "images", params(("sha256" = String, Path, description = "The image's digest")), responses((status = 204, description = "Deleted"), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn remove(State(rt): State<AppState>, Path(sha): Path<String>) -> Result<StatusCode, ApiError> {
    let users = used_by(&rt, &sha.to_ascii_lowercase());
    if !users.is_empty() {
        return Err(Error::Conflict { name: users.join(", "), message: format!("image {sha} is in use; remove those VMs first") }.into());
    }
    rt.images().remove(&sha, |_| false).map_err(|e| match e {
        paddock_images::CacheError::NotCached { .. } => ApiError::from(Error::NotFound { name: format!("image {sha}") }),
        other => spec_err("sha256", other),
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// An absolute path the daemon can read.
    #[schema(value_type = String)]
    pub path: std::path::PathBuf,
}

/// `POST /v1/images/import`: the file is copied by content (zstd and xz
/// decompressed); it is only read.
#[utoipa::path(post, path = "/v1/images/import", tag = "images", request_body = ImportRequest, responses((status = 200, description = "The imported image", body = ImageInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn import(State(rt): State<AppState>, Json(req): Json<ImportRequest>) -> Result<Json<ImageInfo>, ApiError> {
    if !req.path.is_absolute() {
        return Err(spec_err("path", format!("{:?} must be an absolute path", req.path)));
    }
    let img = rt.import_image(req.path.clone(), "path").await?;
    rt.publish_note("image", format!("imported {} as sha256:{}", req.path.display(), img.sha256)).await;
    Ok(Json(ImageInfo { used_by: used_by(&rt, &img.sha256), sha256: img.sha256, path: img.path, size: img.size }))
}

fn line(v: serde_json::Value) -> Bytes {
    let mut b = serde_json::to_vec(&v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = PullRequest, responses((status = 200, description = "NDJSON progress lines, then the image or an error", content_type = "application/x-ndjson", body = ImageInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn pull(State(rt): State<AppState>, Json(req): Json<PullRequest>) -> Result<Response, ApiError> {
    let sha = paddock_images::parse_sha256(&req.sha256).map_err(|e| spec_err("sha256", e))?;
    if !(req.url.starts_with("http://") || req.url.starts_with("https://")) {
        return Err(spec_err("url", "must be an http:// or https:// URL"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut last = Instant::now() - Duration::from_secs(1);
        let mut last_event = Instant::now() - Duration::from_secs(1);
        let progress_tx = tx.clone();
        let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Option<u64>)>();
        let events = rt.clone();
        let url = req.url.clone();
        let publisher = tokio::spawn(async move {
            while let Some((done, total)) = ev_rx.recv().await {
                let msg = format!("pull {url}: {done} of {} bytes", total.map(|t| t.to_string()).unwrap_or_else(|| "?".into()));
                events.publish_note("image", msg).await;
            }
        });
        let result = rt
            .images()
            .pull(&req.url, &sha, |p| {
                if last.elapsed() >= Duration::from_millis(100) {
                    last = Instant::now();
                    let _ = progress_tx.try_send(line(serde_json::json!({ "progress": { "done": p.done, "total": p.total } })));
                }
                if last_event.elapsed() >= Duration::from_millis(500) {
                    last_event = Instant::now();
                    let _ = ev_tx.send((p.done, p.total));
                }
            })
            .await;
        drop(ev_tx);
        let _ = publisher.await;
        let last_line = match result {
            Ok(img) => {
                rt.publish_note("image", format!("pulled {} as sha256:{}", req.url, img.sha256)).await;
                serde_json::json!({ "image": { "sha256": img.sha256, "path": img.path, "size": img.size, "used_by": [] } })
            }
            Err(e) => serde_json::json!({ "error": { "kind": "pull_failed", "message": super::error::chain(&e) } }),
        };
        let _ = tx.send(line(last_line)).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx)) });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_default())
}
