//! `paddock serve` flags for the daemon's bounds: console log sizes, event
//! retention and the API's connection limits. clap checks every range, so
//! a bad value is a usage error naming the flag before anything starts.

use clap::Args;
use std::time::Duration;

use paddock_actors::bounds::{DEFAULT_CONSOLE_LOG_BYTES, DEFAULT_CONSOLE_LOG_FILES, MAX_CONSOLE_LOG_BYTES, MAX_CONSOLE_LOG_FILES, MIN_CONSOLE_LOG_BYTES};

use crate::api::server::ApiLimits;
use crate::Bounds;

#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest console file of a VM, in bytes (console.log is rotated past
    /// it); a spec's `console_log.max_bytes` overrides it.
    #[arg(long, default_value_t = DEFAULT_CONSOLE_LOG_BYTES,
          value_parser = clap::value_parser!(u64).range(MIN_CONSOLE_LOG_BYTES..=MAX_CONSOLE_LOG_BYTES))]
    pub console_log_max_bytes: u64,
    /// Console files kept per VM: console.log plus rotated ones.
    #[arg(long, default_value_t = DEFAULT_CONSOLE_LOG_FILES,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONSOLE_LOG_FILES as i64))]
    pub console_log_files: u32,
    /// Events kept in the database (the oldest go first).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=i64::MAX as u64))]
    pub events_max_count: u64,
    /// Events older than this many days are deleted.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=36_500))]
    pub events_max_age_days: u64,
    /// API connections served at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub api_max_connections: u64,
    /// A client must send a whole request header within this many
    /// milliseconds (of connecting, or of its previous response).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub api_header_timeout_ms: u64,
    /// A request body must arrive within this many milliseconds.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub api_body_timeout_ms: u64,
}

impl LimitArgs {
    pub fn bounds(&self) -> Bounds {
        Bounds {
            console_log: crate::ConsoleLogLimits { max_bytes: self.console_log_max_bytes, files: self.console_log_files },
            events: crate::EventRetention {
                max_count: self.events_max_count,
                max_age: Duration::from_secs(self.events_max_age_days * 24 * 3600),
            },
        }
    }

    pub fn api(&self) -> ApiLimits {
        ApiLimits {
            header_read_timeout: Duration::from_millis(self.api_header_timeout_ms),
            body_read_timeout: Duration::from_millis(self.api_body_timeout_ms),
            max_connections: self.api_max_connections as usize,
            ..ApiLimits::default()
        }
    }
}
