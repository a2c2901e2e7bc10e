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
use crate::vm::phase::VmPhase;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// How to reach the guest, e.g. "127.0.0.1:8022->22/tcp".
    #[serde(default)]
    pub addresses: Vec<String>,
    pub console_log: PathBuf,
    pub spec: VmSpec,
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
