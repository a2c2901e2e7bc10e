//! `GET /v1/vms/{name}/ssh`: where `paddock ssh` connects: the guest's
//! address (its TAP lease, or the user-mode forward of the SSH port), the
//! user and the private key (the one Paddock generated, or the spec's).

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::AppState;
use crate::Error;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SshTarget {
    pub user: String,
    #[schema(value_type = String)]
    pub host: std::net::Ipv4Addr,
    pub port: u16,
    /// None: ssh's own defaults (agent, ~/.ssh).
    #[schema(value_type = Option<String>)]
    pub key: Option<std::path::PathBuf>,
}

#[utoipa::path(get, path = "/v1/vms/{name}/ssh", tag = "vms", params(("name" = String, Path, description = "The VM's name")), responses((status = 200, description = "Where `paddock ssh` connects", body = SshTarget), (status = "4XX", description = "The request cannot be served as sent", body = crate::api::types::ErrorBody), (status = "5XX", description = "The daemon or the VM failed", body = crate::api::types::ErrorBody)))]
pub async fn target(State(rt): State<AppState>, Path(name): Path<String>) -> Result<Json<SshTarget>, ApiError> {
    let info = rt.get(&name)?;
    let conflict = |message: String| ApiError::from(Error::Conflict { name: name.clone(), message });
    let Some(ssh) = &info.spec.ssh else {
        return Err(conflict("its spec has no [ssh] section; add ssh = { user = \"...\", generate_key = true }".into()));
    };
    let Some(net) = &info.network else {
        return Err(conflict(format!("it is {}, not running; `paddock start {name}` first", info.phase.name())));
    };
    let (host, port) = match (net.address, net.forwards.iter().find(|f| f.guest == ssh.port && f.protocol == paddock_net::Protocol::Tcp)) {
        (Some(addr), _) => (addr, ssh.port),
        (None, Some(f)) => (std::net::Ipv4Addr::LOCALHOST, f.host),
        (None, None) => return Err(conflict(format!("guest port {} is not reachable from the host", ssh.port))),
    };
    let key = match (&ssh.key, ssh.generate_key) {
        (Some(k), _) => Some(k.clone()),
        (None, true) => Some(paddock_actors::ssh_key::private_key(&paddock_actors::disks::vm_dir(&rt.config().state_dir, &name))),
        (None, false) => None,
    };
    Ok(Json(SshTarget { user: ssh.user.clone(), host, port, key }))
}
