//! Snapshot endpoints: take one of a VM, list, remove, restore as a new VM.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::query::{QueryRules, ValidQuery};
use super::types::StartQuery;
use super::AppState;
use crate::{AfterSnapshot, SnapshotInfo, VmInfo};

#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// The snapshot's name; `<vm>-<unix seconds>` by default.
    #[serde(rename = "as")]
    pub as_: Option<String>,
    pub then: Option<AfterSnapshot>,
}

impl QueryRules for SnapshotQuery {
    fn check(&self) -> Result<(), ApiError> {
        match &self.as_ {
            Some(s) => paddock_actors::snapshot::validate_name(s).map_err(|e| ApiError::invalid_request("as", format!("as: {e}"))),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RestoreQuery {
    /// The new VM's name; the snapshotted VM's by default.
    pub name: Option<String>,
    pub wait: Option<crate::WaitFor>,
    /// How long the start may take (default 120); at least 1.
    #[param(minimum = 1)]
    pub timeout_secs: Option<u64>,
}

impl RestoreQuery {
    fn start(&self) -> StartQuery {
        StartQuery { wait: self.wait, timeout_secs: self.timeout_secs }
    }
}

impl QueryRules for RestoreQuery {
    fn check(&self) -> Result<(), ApiError> {
        if let Some(n) = &self.name {
            crate::spec::validate_name(n).map_err(|e| ApiError::invalid_request("name", format!("name: {e}")))?;
        }
        self.start().check()
    }
}

#[utoipa::path(post, path = "/v1/vms/{name}/snapshot", tag = "snapshots", params(("name" = String, Path, description = "The VM's name"), SnapshotQuery), responses((status = 201, description = "The snapshot is written", body = SnapshotInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn take(
    State(rt): State<AppState>,
    Path(name): Path<String>,
    ValidQuery(q): ValidQuery<SnapshotQuery>,
) -> Result<(StatusCode, Json<SnapshotInfo>), ApiError> {
    let snapshot = q.as_.unwrap_or_else(|| format!("{name}-{}", paddock_actors::store::now_ms() / 1000));
    Ok((StatusCode::CREATED, Json(rt.snapshot(&name, &snapshot, q.then.unwrap_or_default()).await?)))
}

#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots", responses((status = 200, description = "Every snapshot", body = Vec<SnapshotInfo>), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn list(State(rt): State<AppState>) -> Json<Vec<SnapshotInfo>> {
    Json(rt.snapshots())
}

#[utoipa::path(delete, path = "/v1/snapshots/{snapshot}", tag = "snapshots", params(("snapshot" = String, Path, description = "The snapshot's name")), responses((status = 204, description = "Removed"), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn remove(State(rt): State<AppState>, Path(snapshot): Path<String>) -> Result<StatusCode, ApiError> {
    rt.remove_snapshot(&snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/snapshots/{snapshot}/restore", tag = "snapshots", params(("snapshot" = String, Path, description = "The snapshot's name"), RestoreQuery), responses((status = 201, description = "The new VM, started from the snapshot", body = VmInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn restore(
    State(rt): State<AppState>,
    Path(snapshot): Path<String>,
    ValidQuery(q): ValidQuery<RestoreQuery>,
) -> Result<(StatusCode, Json<VmInfo>), ApiError> {
    let info = rt.restore(&snapshot, q.name.as_deref(), q.wait.unwrap_or_default(), q.start().timeout()).await?;
    Ok((StatusCode::CREATED, Json(info)))
}
