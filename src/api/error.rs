//! Runtime errors -> HTTP status + error kind, in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::types::{ErrorBody, ErrorDetail};
use crate::{Error, SpecError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, kind, field) = match &e {
            Error::InvalidSpec(s) => (StatusCode::BAD_REQUEST, "invalid_spec", Some(s.field.clone())),
            Error::NotFound { .. } | Error::NoVolume { .. } => (StatusCode::NOT_FOUND, "not_found", None),
            Error::AlreadyExists { .. } => (StatusCode::CONFLICT, "conflict", Some("name".to_string())),
            Error::Conflict { .. } => (StatusCode::CONFLICT, "conflict", None),
            Error::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "busy", None),
            Error::StartFailed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "start_failed", None),
            Error::BackendUnavailable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "backend_unavailable", Some("backend".to_string())),
            Error::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout", None),
            Error::Unavailable(_) | Error::NotRecorded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            Error::Control { .. } | Error::Store(_) | Error::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %chain(&e), "request failed");
        }
        ApiError { status, detail: ErrorDetail { kind: kind.into(), message: chain(&e), field } }
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        Error::InvalidSpec(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.detail })).into_response()
    }
}

/// The error with its sources, once each.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
