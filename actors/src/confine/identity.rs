//! Which uid/gid a VM's hypervisor runs as: one per VM from a range (the
//! default; a VM keeps its index in the state database for life, so its
//! files stay its own across restarts and re-adoption), or one shared
//! system user. Never root.

use super::ConfineError;

/// The first uid of the default per-VM range: far above regular users and
/// systemd's dynamic users (61184-65519).
pub const DEFAULT_UID_BASE: u32 = 900_000;
pub const DEFAULT_UID_COUNT: u32 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMode {
    /// uid = gid = base + the VM's index.
    PerVm { base: u32, count: u32 },
    /// Every VM as this user (e.g. a `paddock-vm` system user).
    Shared { uid: u32, gid: u32 },
}

impl Default for IdentityMode {
    fn default() -> Self {
        IdentityMode::PerVm { base: DEFAULT_UID_BASE, count: DEFAULT_UID_COUNT }
    }
}

/// The credentials one hypervisor process gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: only the owner group of /dev/kvm, where it
    /// exists.
    pub groups: Vec<u32>,
}

/// The identity of VM `vm`, allocating its index on first use.
pub async fn for_vm(mode: &IdentityMode, store: &crate::store::Store, vm: &str) -> Result<Identity, ConfineError> {
    let (uid, gid) = match *mode {
        IdentityMode::PerVm { base, count } => {
            let idx = store.allocate_identity(vm, count).await?.ok_or(ConfineError::Exhausted { base, count })?;
            (base + idx, base + idx)
        }
        IdentityMode::Shared { uid, gid } => (uid, gid),
    };
    Ok(Identity { uid, gid, groups: kvm_group().into_iter().collect() })
}

/// The group owning /dev/kvm when it grants that group read and write.
pub fn kvm_group() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata("/dev/kvm").ok()?;
    (meta.mode() & 0o060 == 0o060 && meta.gid() != 0).then_some(meta.gid())
}

/// Validates a configured range or user: root (0) is refused.
pub fn validate(mode: &IdentityMode) -> Result<(), String> {
    match *mode {
        IdentityMode::PerVm { base, count } => {
            if base == 0 || count == 0 || base.checked_add(count).is_none() {
                return Err(format!("--vm-uid-base {base} with --vm-uid-count {count}: the range must be non-empty, above 0 and below 2^32"));
            }
        }
        IdentityMode::Shared { uid, gid } => {
            if uid == 0 || gid == 0 {
                return Err("--vm-user: a hypervisor never runs as root (uid or gid 0); name an unprivileged user".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn root_is_never_an_identity() {
        assert!(validate(&IdentityMode::Shared { uid: 0, gid: 5 }).is_err());
        assert!(validate(&IdentityMode::Shared { uid: 5, gid: 0 }).is_err());
        assert!(validate(&IdentityMode::PerVm { base: 0, count: 10 }).is_err());
        assert!(validate(&IdentityMode::PerVm { base: u32::MAX - 1, count: 10 }).is_err());
        assert!(validate(&IdentityMode::default()).is_ok());
    }

    #[tokio::test]
    async fn each_vm_keeps_its_own_uid() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.db")).unwrap();
        let mode = IdentityMode::PerVm { base: 5000, count: 2 };
        let a = for_vm(&mode, &store, "a").await.unwrap();
        let b = for_vm(&mode, &store, "b").await.unwrap();
        assert_eq!((a.uid, a.gid, b.uid), (5000, 5000, 5001));
        assert_eq!(for_vm(&mode, &store, "a").await.unwrap().uid, 5000, "stable");
        let e = for_vm(&mode, &store, "c").await.unwrap_err().to_string();
        assert!(e.contains("--vm-uid-count"), "{e}");
        store.delete_vm("a").await.unwrap();
        assert_eq!(for_vm(&mode, &store, "c").await.unwrap().uid, 5000, "a deleted VM's uid is free again");
    }
}
