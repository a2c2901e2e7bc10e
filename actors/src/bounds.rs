//! The limits that keep a long-running daemon's footprint bounded: how
//! much console output is kept per VM and how much event history.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::spec_error::SpecError;

/// Console files per VM: the live `console.log` plus rotated
/// `console.log.1` .. `console.log.(files-1)`, each at most `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleLogLimits {
    pub max_bytes: u64,
    pub files: u32,
}

pub const DEFAULT_CONSOLE_LOG_BYTES: u64 = 8 << 20;
pub const DEFAULT_CONSOLE_LOG_FILES: u32 = 2;
/// Below this a rotation would happen every few lines.
pub const MIN_CONSOLE_LOG_BYTES: u64 = 64 << 10;
pub const MAX_CONSOLE_LOG_BYTES: u64 = 1 << 30;
pub const MAX_CONSOLE_LOG_FILES: u32 = 10;

impl Default for ConsoleLogLimits {
    fn default() -> Self {
        ConsoleLogLimits { max_bytes: DEFAULT_CONSOLE_LOG_BYTES, files: DEFAULT_CONSOLE_LOG_FILES }
    }
}

impl ConsoleLogLimits {
    /// The daemon's defaults with a spec's overrides applied.
    pub fn with(self, spec: Option<&ConsoleLogSpec>) -> ConsoleLogLimits {
        let Some(s) = spec else { return self };
        ConsoleLogLimits { max_bytes: s.max_bytes.unwrap_or(self.max_bytes), files: s.files.unwrap_or(self.files) }
    }

    /// Checks both values; `prefix` names where they came from
    /// (`console_log` in a spec, `--console-log` on the command line).
    pub fn check(max_bytes: Option<u64>, files: Option<u32>, prefix: &str) -> Result<(), SpecError> {
        if let Some(b) = max_bytes {
            if !(MIN_CONSOLE_LOG_BYTES..=MAX_CONSOLE_LOG_BYTES).contains(&b) {
                return Err(SpecError::new(
                    format!("{prefix}.max_bytes"),
                    format!("must be between {MIN_CONSOLE_LOG_BYTES} (64 KiB) and {MAX_CONSOLE_LOG_BYTES} (1 GiB); got {b}"),
                ));
            }
        }
        if let Some(f) = files {
            if !(1..=MAX_CONSOLE_LOG_FILES).contains(&f) {
                return Err(SpecError::new(
                    format!("{prefix}.files"),
                    format!("must be between 1 (console.log only) and {MAX_CONSOLE_LOG_FILES}; got {f}"),
                ));
            }
        }
        Ok(())
    }
}

/// `[console_log]` in a spec: overrides of the daemon's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleLogSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u32>,
}

/// How much event history the database keeps. Older events are deleted
/// periodically and after every `EVENT_PRUNE_EVERY` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRetention {
    pub max_count: u64,
    pub max_age: Duration,
}

impl Default for EventRetention {
    fn default() -> Self {
        EventRetention { max_count: 100_000, max_age: Duration::from_secs(30 * 24 * 3600) }
    }
}

/// Both bounds, as the daemon configures them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    pub console_log: ConsoleLogLimits,
    pub events: EventRetention,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn out_of_range_console_bounds_name_the_field() {
        let e = ConsoleLogLimits::check(Some(1024), None, "console_log").unwrap_err();
        assert_eq!(e.field, "console_log.max_bytes");
        let e = ConsoleLogLimits::check(None, Some(0), "console_log").unwrap_err();
        assert_eq!(e.field, "console_log.files");
        assert!(ConsoleLogLimits::check(Some(MIN_CONSOLE_LOG_BYTES), Some(MAX_CONSOLE_LOG_FILES), "console_log").is_ok());
    }

    #[test]
    fn a_spec_overrides_only_what_it_sets() {
        let d = ConsoleLogLimits::default();
        assert_eq!(d.with(None), d);
        let s = ConsoleLogSpec { max_bytes: Some(1 << 20), files: None };
        assert_eq!(d.with(Some(&s)), ConsoleLogLimits { max_bytes: 1 << 20, files: DEFAULT_CONSOLE_LOG_FILES });
    }
}
