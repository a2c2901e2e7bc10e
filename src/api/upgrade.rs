//! HTTP upgrades to raw duplex streams (the console, vsock): the request
//! must ask for our protocol; the answer is 101 with it.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;

use super::error::ApiError;

/// Refuses a request that does not ask to upgrade to `protocol`.
pub fn require(req: &Request, protocol: &str) -> Result<(), ApiError> {
    if req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok()) == Some(protocol) {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::BAD_REQUEST,
        detail: super::types::ErrorDetail {
            kind: "invalid_request".into(),
            message: format!("send `Connection: Upgrade` and `Upgrade: {protocol}`"),
            field: None,
        },
    })
}

/// 101 Switching Protocols to `protocol`.
pub fn switching(protocol: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, protocol)
        .body(Body::empty())
        .unwrap_or_default()
}
