//! `GET /metrics` (Prometheus text format), `GET /v1/stats` (the same
//! per-VM figures as JSON), and the layer that times every API request by
//! its route template.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Instant;

use super::error::ApiError;
use super::query::{QueryRules, ValidQuery};
use super::AppState;
use crate::metrics::figures::VmFigures;

/// prometheus-client writes OpenMetrics text (the Prometheus text format
/// with `# EOF`), which Prometheus scrapes under this type.
pub const TEXT_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[utoipa::path(get, path = "/metrics", tag = "metrics", responses((status = 200, description = "Prometheus (OpenMetrics) text", content_type = "application/openmetrics-text", body = String), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn scrape(State(rt): State<AppState>) -> Result<Response, ApiError> {
    let text = rt
        .metrics_text()
        .map_err(|e| ApiError::from(crate::Error::Unavailable(format!("cannot encode the metrics: {e}"))))?;
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response())
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// One VM only.
    pub name: Option<String>,
}

impl QueryRules for StatsQuery {
    fn check(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

#[utoipa::path(get, path = "/v1/stats", tag = "metrics", params(StatsQuery), responses((status = 200, body = [VmFigures]), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn stats(State(rt): State<AppState>, ValidQuery(q): ValidQuery<StatsQuery>) -> Result<Json<Vec<VmFigures>>, ApiError> {
    Ok(Json(rt.stats(q.name.as_deref())?))
}

/// Times the request; the route label is the matched template so that
/// names in paths do not make new series ("unmatched" otherwise).
pub async fn timed(State(rt): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let began = Instant::now();
    let resp = next.run(req).await;
    rt.metrics().observe_request(&route, &method, resp.status().as_u16(), began.elapsed());
    resp
}
