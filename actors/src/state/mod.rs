//! What the supervisor knows and tells: the durable store (SQLite), the
//! event log and bus, and the status board every read comes from.

pub mod board;
pub mod events;
pub mod phase;
pub mod run_paths;
pub mod store;
pub mod streak;
pub mod vsock_info;
