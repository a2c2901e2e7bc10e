//! How a running VM's vsock is reached, as the status board shows it.

use std::path::PathBuf;

/// How a running VM's vsock is reached from the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VsockInfo {
    /// The guest's context id.
    pub cid: u32,
    /// The hybrid Unix socket (`CONNECT <port>`); absent when the kernel's
    /// vhost-vsock serves the VM (then connect to `cid` by AF_VSOCK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub socket: Option<PathBuf>,
}
