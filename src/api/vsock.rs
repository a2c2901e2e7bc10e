//! Reaching into guests: a guest's vsock port as an HTTP upgrade to a raw
//! duplex stream, and the volumes (kept data disks).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use hyper_util::rt::TokioIo;

use super::error::ApiError;
use super::AppState;
use crate::VolumeInfo;

pub const UPGRADE_PROTOCOL: &str = "paddock-vsock";

/// Connects to the guest port first, so a VM without vsock, a stopped VM
/// or a port nobody listens on is an ordinary JSON error; then upgrades
/// and copies bytes both ways until either side closes.
#[utoipa::path(get, path = "/v1/vms/{name}/vsock/{port}", tag = "vsock", params(("name" = String, Path, description = "The VM's name"), ("port" = u32, Path, description = "The guest's vsock port")), responses((status = 101, description = "Upgraded (Upgrade: paddock-vsock) to a raw duplex stream"), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn connect(State(rt): State<AppState>, Path((name, port)): Path<(String, u32)>, mut req: Request) -> Result<Response, ApiError> {
    super::upgrade::require(&req, UPGRADE_PROTOCOL)?;
    let mut guest = rt.vsock_connect(&name, port).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(vm = %name, port, error = %e, "vsock upgrade failed");
                return;
            }
        };
        // Either side ending ends the session. A half-close is not passed
        // on: vhost-device-vsock turns any EOF from the host into a full
        // shutdown, which would lose the guest's answer; the client closes
        // when it is done instead (`paddock vsock` lingers for it).
        let (mut crd, mut cwr) = tokio::io::split(TokioIo::new(upgraded));
        let (mut grd, mut gwr) = guest.split();
        tokio::select! {
            r = tokio::io::copy(&mut crd, &mut gwr) => tracing::debug!(vm = %name, port, result = ?r, "vsock client ended"),
            r = tokio::io::copy(&mut grd, &mut cwr) => tracing::debug!(vm = %name, port, result = ?r, "vsock guest ended"),
        }
    });
    Ok(super::upgrade::switching(UPGRADE_PROTOCOL))
}

#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", responses((status = 200, body = [crate::VolumeInfo]), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn volumes(State(rt): State<AppState>) -> Result<Json<Vec<VolumeInfo>>, ApiError> {
    Ok(Json(rt.volumes().await?))
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path, description = "The removed VM's name")), responses((status = 204, description = "Deleted"), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn remove_volume(State(rt): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    rt.remove_volume(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
