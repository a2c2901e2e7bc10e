//! Confinement: every hypervisor (and its vsock device) runs as an
//! unprivileged identity of its own, with no capabilities, `no_new_privs`,
//! a syscall filter (QEMU `-sandbox`, Cloud Hypervisor's seccomp) and a
//! cgroup with the spec's limits. The daemon stays root; what it prepares
//! here (ownership, descriptors, the TAP's owner) is all the hypervisor
//! gets.
//!
//! `Confinement::off()` (`paddock serve --no-confine`) keeps the old root
//! hypervisors for debugging; the daemon logs it at start.

pub mod cgroup;
pub mod child;
pub mod files;
pub mod identity;
pub mod jail;
pub mod limits;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use identity::{Identity, IdentityMode};

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("no free VM identity: all {count} uids from {base} are taken; raise --vm-uid-count")]
    Exhausted { base: u32, count: u32 },
    #[error("cannot allocate a VM identity")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot give {path:?} to uid {uid}")]
    Chown {
        path: PathBuf,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot chmod {path:?}")]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{field}: cannot open {path:?}")]
    Open {
        field: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{field}: {path:?} is not readable by other users (mode {mode:o}); the unprivileged hypervisor reads it: chmod o+r it (or serve with --no-confine)")]
    NotReadable { field: String, path: PathBuf, mode: u32 },
    #[error("cannot give the TAP {tap} to uid {uid}")]
    Tap {
        tap: String,
        uid: u32,
        #[source]
        source: paddock_net::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("{path:?} is not traversable by other users (mode {mode:o}); the unprivileged hypervisors reach their files through it: chmod o+x it (or serve with --no-confine)")]
    Untraversable { path: PathBuf, mode: u32 },
}

/// The daemon's setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// None: hypervisors run as root, unconfined (debugging only).
    pub identity: Option<IdentityMode>,
}

impl Default for Confinement {
    fn default() -> Self {
        Confinement { identity: Some(IdentityMode::default()) }
    }
}

impl Confinement {
    pub fn off() -> Self {
        Confinement { identity: None }
    }

    pub fn enabled(&self) -> bool {
        self.identity.is_some()
    }
}

/// Everything one confined process gets, prepared by the daemon (as root)
/// before the fork; `child::apply` turns it into the process's state.
#[derive(Debug)]
pub struct Jail {
    pub identity: Identity,
    /// Files opened by the daemon and inherited by the child, which names
    /// them `/proc/self/fd/N` (reachable whatever the directories above
    /// them allow).
    pub inherited: Vec<OwnedFd>,
    /// `cgroup.procs` of the VM's cgroup, joined before exec.
    pub cgroup_procs: Vec<OwnedFd>,
}

impl Jail {
    /// The settings the forked child applies (plain numbers, no allocation).
    pub fn child_setup(&self) -> child::ChildSetup {
        child::ChildSetup::new(&self.identity, &self.inherited).join_cgroups(&self.cgroup_procs)
    }
}

/// Directories the hypervisors pass through to their files must let
/// others traverse them (but not list them): `dir` and each of its parents.
pub fn check_traversable(dir: &Path) -> Result<(), ConfineError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if let Ok(meta) = std::fs::metadata(p) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o001 == 0 {
                return Err(ConfineError::Untraversable { path: p.to_path_buf(), mode });
            }
        }
        cur = p.parent();
    }
    Ok(())
}

/// The daemon's own directories: traversable by the VM identities, not
/// listable; what is inside keeps its own (private) modes.
pub fn open_for_traversal(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(TRAVERSE_MODE))
}

pub const TRAVERSE_MODE: u32 = 0o711;

/// Why a VM's hypervisor ended, when confinement knows (its cgroup's OOM
/// killer); None otherwise.
pub fn exit_fault(instance: &str, vm: &str) -> Option<String> {
    cgroup::VmCgroup::on_host(instance, vm).and_then(|cg| cgroup::oom_fault(&cg))
}

/// The VM's cgroup statistics while it runs (None without a cgroup).
pub fn stats(instance: &str, vm: &str) -> Option<cgroup::CgroupStats> {
    cgroup::VmCgroup::on_host(instance, vm).and_then(|cg| cg.stats())
}

/// Removes the VM's (empty) cgroup, and the instance's when it was the last.
pub fn remove_cgroup(instance: &str, vm: &str) {
    if let Some(cg) = cgroup::VmCgroup::on_host(instance, vm) {
        cg.remove();
    }
}
