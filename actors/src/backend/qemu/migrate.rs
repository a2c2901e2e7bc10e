//! Saving and loading a VM's whole state through QMP migration to a file.
//!
//! QEMU 7.2 has no `file:` URI, and `exec:` would run a shell string: the
//! file goes over the QMP socket as a descriptor (`getfd`, SCM_RIGHTS) and
//! migration uses it by name (`fd:NAME`), both ways.

use serde_json::{json, Value};
use std::os::fd::AsFd as _;
use std::time::Duration;

use super::qmp::QmpClient;
use crate::backend::ControlError;

const FD_NAME: &str = "paddock-state";
/// How often `query-migrate` is asked while a migration runs.
const POLL: Duration = Duration::from_millis(20);

/// Pauses the guest and writes its state into `file`; the guest stays
/// paused (its disks are then consistent with the saved memory).
pub async fn save(client: &mut QmpClient, file: &std::fs::File, timeout: Duration) -> Result<(), ControlError> {
    client.execute("stop", None).await?;
    // The default bandwidth cap (32 MiB/s) would make a paused save slow.
    client.execute("migrate-set-parameters", Some(json!({ "max-bandwidth": 1u64 << 40 }))).await?;
    client.execute_with_fd("getfd", json!({ "fdname": FD_NAME }), file.as_fd()).await?;
    client.execute("migrate", Some(json!({ "uri": format!("fd:{FD_NAME}") }))).await?;
    wait_completed(client, timeout, "saving the VM state").await
}

/// Loads a state written by `save` into a QEMU started with
/// `-incoming defer`, then runs the guest.
pub async fn load(client: &mut QmpClient, file: &std::fs::File, timeout: Duration) -> Result<(), ControlError> {
    client.execute_with_fd("getfd", json!({ "fdname": FD_NAME }), file.as_fd()).await?;
    client.execute("migrate-incoming", Some(json!({ "uri": format!("fd:{FD_NAME}") }))).await?;
    wait_completed(client, timeout, "loading the VM state").await?;
    client.execute("cont", Some(json!({}))).await.map(drop)
}

async fn wait_completed(client: &mut QmpClient, timeout: Duration, what: &str) -> Result<(), ControlError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let v = client.execute("query-migrate", None).await?;
        match v.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(()),
            Some(s @ ("failed" | "cancelled")) => {
                let desc = v.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                return Err(ControlError::Command { command: what.to_string(), class: s.to_string(), desc: desc.to_string() });
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(ControlError::Timeout { what: what.to_string(), timeout_ms: timeout.as_millis() as u64 });
            }
            _ => {}
        }
    }
}
