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
            Error::ImageFile(f) => (StatusCode::BAD_REQUEST, "invalid_spec", Some(f.field().to_string())),
            Error::NotFound { .. } | Error::NoVolume { .. } => (StatusCode::NOT_FOUND, "not_found", None),
            Error::AlreadyExists { .. } => (StatusCode::CONFLICT, "conflict", Some("name".to_string())),
            Error::Conflict { .. } | Error::Network { source: paddock_net::Error::Foreign { .. }, .. } => (StatusCode::CONFLICT, "conflict", None),
            Error::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "busy", None),
            Error::StartFailed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "start_failed", None),
            Error::BackendUnavailable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "backend_unavailable", Some("backend".to_string())),
            Error::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout", None),
            Error::Unavailable(_) | Error::NotRecorded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            Error::Control { .. } | Error::Store(_) | Error::Io { .. } | Error::Disk(_) | Error::Network { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
            Error::Snapshot(s) => snapshot_status(s),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %chain(&e), "request failed");
        }
        ApiError { status, detail: ErrorDetail { kind: kind.into(), message: chain(&e), field } }
    }
}

fn snapshot_status(e: &crate::SnapshotError) -> (StatusCode, &'static str, Option<String>) {
    use crate::SnapshotError as S;
    match e {
        S::InvalidName { .. } => (StatusCode::BAD_REQUEST, "invalid_request", Some("snapshot".into())),
        S::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", None),
        S::Exists { .. } => (StatusCode::CONFLICT, "conflict", Some("snapshot".into())),
        S::InUse { .. } | S::Unsupported { .. } => (StatusCode::CONFLICT, "conflict", None),
        S::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        Error::InvalidSpec(e).into()
    }
}

impl ApiError {
    /// A request the API cannot take as sent (query string, headers):
    /// 400 `invalid_request`, naming the parameter.
    pub fn invalid_request(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            detail: ErrorDetail { kind: "invalid_request".into(), message: message.into(), field: Some(field.to_string()) },
        }
    }
}

/// Any error response not produced by `ApiError` (axum's own rejections:
/// 413 body too large, 405, an unknown route, a bad path segment) is
/// rewritten into the documented JSON shape, keeping its status and text.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    // Rejection bodies are one short line; cap what is read anyway.
    let text = match axum::body::to_bytes(resp.into_body(), 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    (status, Json(ErrorBody { error: ErrorDetail { kind: kind.into(), message, field: None } })).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_image_and_network_errors_keep_their_kind_field_and_message() {
        let image = paddock_images::Error::NotAbsolute { field: "disks[0].path".into(), path: "rel.img".into() };
        let e = ApiError::from(Error::from(image));
        assert_eq!((e.status, e.detail.kind.as_str(), e.detail.field.as_deref()), (StatusCode::BAD_REQUEST, "invalid_spec", Some("disks[0].path")));
        assert_eq!(e.detail.message, "invalid spec: disks[0].path: path \"rel.img\" must be absolute");

        let foreign = paddock_net::Error::Foreign { name: "pdtap0".into(), detail: "it has no Paddock owner alias".into() };
        let e = ApiError::from(Error::Network { name: "web".into(), source: foreign });
        assert_eq!((e.status, e.detail.kind.as_str()), (StatusCode::CONFLICT, "conflict"));
        assert!(e.detail.message.starts_with("VM \"web\": network lease: interface pdtap0 exists and is not Paddock's"), "{}", e.detail.message);
    }
}
