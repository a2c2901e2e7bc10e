//! Query strings, checked before a handler runs: an unknown parameter, a
//! value of the wrong type, an overflowing number or a duration beyond its
//! bound is a 400 in the documented JSON shape naming the parameter, and
//! the handler (which may create things) never starts.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Durations in query strings (`timeout_secs`) above this are refused: a
/// day is longer than any wait worth holding a connection for, and the
/// bound keeps deadline arithmetic far from overflow.
pub const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;

/// Checks that hold across parameters (bounds), run after parsing.
pub trait QueryRules {
    fn check(&self) -> Result<(), ApiError>;
}

/// Like axum's `Query`, with errors naming the parameter.
pub struct ValidQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ValidQuery<T>
where
    T: DeserializeOwned + QueryRules,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let q = parse::<T>(parts.uri.query().unwrap_or(""))?;
        q.check()?;
        Ok(ValidQuery(q))
    }
}

/// Parses a query string, naming the offending parameter on failure.
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // An unknown parameter is reported at the root; its name is in the message.
        let field = if path == "." || path.is_empty() { unknown_field(&inner).unwrap_or_else(|| "query".into()) } else { path };
        ApiError::invalid_request(&field, format!("query parameter `{field}`: {inner}"))
    })
}

/// serde says "unknown field `x`, expected one of ..."; take `x`.
fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// A duration parameter within `[0, MAX_TIMEOUT_SECS]`.
pub fn check_timeout(field: &str, secs: Option<u64>) -> Result<(), ApiError> {
    match secs {
        Some(s) if s > MAX_TIMEOUT_SECS => Err(ApiError::invalid_request(
            field,
            format!("query parameter `{field}` is {s}; the largest allowed is {MAX_TIMEOUT_SECS} (one day)"),
        )),
        _ => Ok(()),
    }
}

/// A sequence number: SQLite keeps them as signed 64-bit integers, so one
/// above i64::MAX would wrap around and replay everything.
pub fn check_seq(field: &str, seq: Option<u64>) -> Result<(), ApiError> {
    match seq {
        Some(s) if s > i64::MAX as u64 => Err(ApiError::invalid_request(
            field,
            format!("query parameter `{field}` is {s}; sequence numbers are at most {}", i64::MAX),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::super::types::{EventsQuery, StartQuery};
    use super::*;

    fn field<T: DeserializeOwned + QueryRules>(q: &str) -> String {
        let r = parse::<T>(q).and_then(|v| v.check());
        r.expect_err(q).detail.field.unwrap_or_default()
    }

    #[test]
    fn overflowing_and_malformed_numbers_name_the_parameter() {
        assert_eq!(field::<StartQuery>("timeout_secs=18446744073709551616"), "timeout_secs");
        assert_eq!(field::<StartQuery>("timeout_secs=18446744073709551615"), "timeout_secs");
        assert_eq!(field::<StartQuery>("timeout_secs=-1"), "timeout_secs");
        assert_eq!(field::<StartQuery>("timeout_secs=soon"), "timeout_secs");
        // A start with no time at all would 504 before reading the spec.
        assert_eq!(field::<StartQuery>("timeout_secs=0&wait=ready"), "timeout_secs");
        assert_eq!(field::<StartQuery>("wait=later"), "wait");
        assert_eq!(field::<StartQuery>("timout_secs=3"), "timout_secs");
        assert_eq!(field::<EventsQuery>("since=9223372036854775808"), "since");
        assert_eq!(field::<EventsQuery>("follow=maybe"), "follow");
    }

    #[test]
    fn bounds_are_inclusive() {
        let q: StartQuery = parse(&format!("timeout_secs={MAX_TIMEOUT_SECS}&wait=ready")).unwrap();
        q.check().unwrap();
        let q: EventsQuery = parse(&format!("since={}", i64::MAX)).unwrap();
        q.check().unwrap();
        let q: EventsQuery = parse("").unwrap();
        q.check().unwrap();
    }
}
