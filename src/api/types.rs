//! Wire types shared by the server and the client.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::error::ApiError;
use super::query::{check_seq, check_timeout, QueryRules};
use crate::{SpecError, VmSpec, WaitFor};

pub const DEFAULT_GRACEFUL_SECS: u64 = 30;
pub const DEFAULT_START_TIMEOUT_SECS: u64 = 120;

#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StartQuery {
    pub wait: Option<WaitFor>,
    /// How long the start may take (default 120); at least 1.
    #[param(minimum = 1)]
    pub timeout_secs: Option<u64>,
}

impl StartQuery {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(DEFAULT_START_TIMEOUT_SECS))
    }
}

impl QueryRules for StartQuery {
    fn check(&self) -> Result<(), ApiError> {
        // A zero budget would answer 504 before the spec was even read.
        if self.timeout_secs == Some(0) {
            return Err(ApiError::invalid_request("timeout_secs", "query parameter `timeout_secs` is 0; a start needs time: give 1 or more (default 120)"));
        }
        check_timeout("timeout_secs", self.timeout_secs)
    }
}

impl QueryRules for StopQuery {
    fn check(&self) -> Result<(), ApiError> {
        check_timeout("timeout_secs", self.timeout_secs)
    }
}

impl QueryRules for ShutdownQuery {
    fn check(&self) -> Result<(), ApiError> {
        check_timeout("timeout_secs", self.timeout_secs)
    }
}

impl QueryRules for RemoveQuery {
    fn check(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

impl QueryRules for ConsoleQuery {
    fn check(&self) -> Result<(), ApiError> {
        if self.offset.is_some() && self.follow == Some(true) {
            return Err(ApiError::invalid_request("offset", "`offset` reads what is written and returns; drop `follow=true` (or `offset`)"));
        }
        Ok(())
    }
}

impl QueryRules for EventsQuery {
    fn check(&self) -> Result<(), ApiError> {
        check_seq("since", self.since)
    }
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StopQuery {
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    pub force: Option<bool>,
    /// Also delete the data disk.
    pub volumes: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ShutdownQuery {
    pub stop_vms: Option<bool>,
    /// Snapshot every running VM and stop it; the next daemon starts each
    /// from its snapshot.
    pub suspend_vms: Option<bool>,
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsoleQuery {
    pub follow: Option<bool>,
    /// Read the live console file from this byte (not with `follow`); see
    /// `console_offset.rs`.
    pub offset: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub since: Option<u64>,
    pub follow: Option<bool>,
}

/// What every error response carries.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable kind: invalid_spec, invalid_request,
    /// not_found, conflict, busy, start_failed, unavailable, timeout,
    /// too_large, internal.
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// JSON -> spec, with the path of the offending field in the error.
pub fn parse_spec(body: &[u8]) -> Result<VmSpec, SpecError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { "spec".to_string() } else { path };
        let inner = e.into_inner();
        // serde_json appends " at line L column C"; the field path says more.
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        SpecError::new(field, msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_nested_field_is_named_with_its_path() {
        let e = parse_spec(br#"{"name":"a","boot":{"kernal":"/k"}}"#).unwrap_err();
        assert!(e.message.contains("kernal"), "{e}");
        assert!(e.field.starts_with("boot"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse_spec(br#"{"name":"a","memory_mib":"lots","boot":{"kernel":"/k"}}"#).unwrap_err();
        assert_eq!(e.field, "memory_mib");
    }

    #[test]
    fn not_json_is_reported_on_the_spec() {
        assert_eq!(parse_spec(b"name = 'a'").unwrap_err().field, "spec");
    }
}
