//! The document's frame: title, version, the Unix socket as its server,
//! and the one route (`/v1/openapi.json`) that serves the document itself.
//! Every other path comes from its handler's `#[utoipa::path]`.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::{ContentBuilder, ResponseBuilder};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Paddock",
        description = "The Paddock daemon's HTTP/JSON API, served on a Unix socket (default /run/paddock/paddock.sock). Every error is `{\"error\": {\"kind\", \"message\", \"field\"?}}`.",
        license(name = "Apache-2.0"),
    ),
    // Types only query parameters name (utoipa-axum collects bodies' types).
    components(schemas(super::types::ErrorBody, crate::WaitFor, super::scheduler::Until, crate::AfterSnapshot)),
)]
pub struct ApiDoc;

/// `GET /v1/openapi.json`, described by hand: it cannot name itself in
/// the list it is generated from.
pub fn self_path() -> PathItem {
    let ok = ResponseBuilder::new()
        .description("This document")
        .content("application/json", ContentBuilder::new().schema(Some(utoipa::openapi::ObjectBuilder::new())).build())
        .build();
    PathItem::new(HttpMethod::Get, OperationBuilder::new().tag("daemon").response("200", ok).build())
}
