//! The calls an outside scheduler drives a host with: listing by label,
//! waiting for a run's end, and the host's description.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::Json;
use paddock_actors::labels::Selector;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::error::ApiError;
use super::query::{check_timeout, QueryRules, ValidQuery};
use super::AppState;
use crate::host::HostInfo;
use crate::run_end::RunEnd;
use crate::VmInfo;

/// `GET /v1/vms?label=k=v&label=k2=v2`: every selector must match. Parsed
/// by hand because `label` repeats.
pub struct ListQuery {
    pub selectors: Vec<Selector>,
}

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let mut selectors = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k != "label" {
                return Err(ApiError::invalid_request(&k, format!("query parameter `{k}` is unknown; the only one is `label` (label=key=value)")));
            }
            selectors.push(Selector::parse(&v).map_err(|m| ApiError::invalid_request("label", m))?);
        }
        Ok(ListQuery { selectors })
    }
}

#[utoipa::path(get, path = "/v1/vms", tag = "vms", params(("label" = Option<Vec<String>>, Query, description = "key=value; repeat for more (all must match)", explode)), responses((status = 200, body = [crate::VmInfo]), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn list(State(rt): State<AppState>, q: ListQuery) -> Json<Vec<VmInfo>> {
    Json(rt.list_labeled(&q.selectors))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Until {
    /// The current run ended (power-off, ladder, crash, failure).
    Exit,
}

#[derive(Debug, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    pub until: Until,
    /// Default one day, the most allowed.
    pub timeout_secs: Option<u64>,
}

impl QueryRules for WaitQuery {
    fn check(&self) -> Result<(), ApiError> {
        check_timeout("timeout_secs", self.timeout_secs)
    }
}

#[utoipa::path(get, path = "/v1/vms/{name}/wait", tag = "scheduler", params(("name" = String, Path, description = "The VM's name"), WaitQuery), responses((status = 200, description = "How the current run ended", body = RunEnd), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn wait(State(rt): State<AppState>, Path(name): Path<String>, ValidQuery(q): ValidQuery<WaitQuery>) -> Result<Json<RunEnd>, ApiError> {
    let Until::Exit = q.until;
    let timeout = Duration::from_secs(q.timeout_secs.unwrap_or(super::query::MAX_TIMEOUT_SECS));
    Ok(Json(rt.wait_exit(&name, timeout).await?))
}

#[utoipa::path(get, path = "/v1/host", tag = "scheduler", responses((status = 200, body = HostInfo), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn host(State(rt): State<AppState>) -> Json<HostInfo> {
    Json(rt.host().await)
}
