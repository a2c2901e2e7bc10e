//! Snapshots: a VM's saved state and disks, durable in the state dir
//! (store.rs); the VM actor takes and restores them (vm/snapshot.rs).

mod store;

pub use store::{host_cpu, validate_name, Partial, SnapshotError, SnapshotInfo, Snapshots, DISKS, HYPERVISOR_DIR, MEMORY, META};

/// What a VM does once its snapshot is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AfterSnapshot {
    /// Run on (it was paused only while its state was saved).
    #[default]
    Resume,
    /// Stop it (its state lives on in the snapshot).
    Stop,
}
