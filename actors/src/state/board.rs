//! The status board: the latest `VmInfo` of every VM, written by each VM
//! actor on every change and read without asking any actor.
//!
//! Listing VMs therefore never waits on a VM actor: one wedged VM (say, a
//! hung control socket) cannot stall `paddock ps` for all the others.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::spec::VmSpec;
use crate::state::phase::VmPhase;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmInfo {
    pub name: String,
    pub backend: String,
    #[serde(flatten)]
    pub phase: VmPhase,
    pub generation: u64,
    /// The console readiness pattern has matched during this run.
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// How to reach the guest, in words for `paddock ps`, e.g.
    /// "127.0.0.1:8022->22/tcp"; programs read `network` instead.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The guest's network while it runs: address, gateway, MAC, TAP, forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkInfo>,
    /// The guest's vsock while it runs (see `Runtime::vsock_connect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<crate::state::vsock_info::VsockInfo>,
    #[schema(value_type = String)]
    pub console_log: PathBuf,
    /// CPU time and memory (now, peak, cap) from the VM's cgroup while it
    /// runs confined; read live by `inspect` / `GET /vms/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<crate::confine::cgroup::CgroupStats>,
    pub spec: VmSpec,
}

/// A running guest's network, typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkInfo {
    pub mode: crate::spec::NetworkMode,
    /// The guest's address (TAP leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub address: Option<std::net::Ipv4Addr>,
    /// The host side of the TAP, the guest's default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub gateway: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<ForwardInfo>,
}

/// A published port: `host_address:host` on the host -> `guest` in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForwardInfo {
    /// `127.0.0.1` (user networking) or `0.0.0.0` (TAP: every host address, by DNAT).
    #[schema(value_type = String)]
    pub host_address: std::net::Ipv4Addr,
    pub host: u16,
    pub guest: u16,
    pub protocol: paddock_net::Protocol,
}

#[derive(Clone, Default)]
pub struct StatusBoard(Arc<RwLock<BTreeMap<String, VmInfo>>>);

impl StatusBoard {
    pub fn put(&self, info: VmInfo) {
        // A poisoned lock only means a writer panicked between two whole
        // assignments; the map is still valid.
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(info.name.clone(), info);
    }
    pub fn remove(&self, name: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
    pub fn get(&self, name: &str) -> Option<VmInfo> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }
    pub fn list(&self) -> Vec<VmInfo> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}
