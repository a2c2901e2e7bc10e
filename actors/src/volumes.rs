//! Volumes: the data disks in `STATE_DIR/vms/<name>/data.qcow2`. `rm`
//! keeps a VM's data disk unless asked (`--volumes`); these calls list and
//! delete the ones kept, so they never become invisible leftovers.
//!
//! The Registry serves both (it knows which names have a VM), so deleting
//! a volume cannot race with `up` of a VM of the same name.

use std::path::Path;

use crate::disks::{vm_dir, DATA_DISK};
use crate::error::{Error, Result};

/// One data disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VolumeInfo {
    /// The VM name it belongs (or belonged) to.
    pub name: String,
    #[schema(value_type = String)]
    pub path: std::path::PathBuf,
    /// Bytes the file takes on the host (qcow2 grows as the guest writes).
    pub size: u64,
    /// A VM of this name exists (then `rm --volumes` deletes it).
    pub in_use: bool,
}

/// Every data disk under `state_dir`, by name.
pub fn list(state_dir: &Path, vms: &[String]) -> Result<Vec<VolumeInfo>> {
    let root = state_dir.join("vms");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot read {root:?}"), e)),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if crate::spec::validate_name(&name).is_err() {
            continue;
        }
        let path = e.path().join(DATA_DISK);
        if let Ok(meta) = std::fs::metadata(&path) {
            use std::os::unix::fs::MetadataExt as _;
            out.push(VolumeInfo { in_use: vms.contains(&name), name, path, size: meta.blocks() * 512 });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes the kept data disk of `name` (and its directory).
pub fn remove(state_dir: &Path, name: &str, vm_exists: bool) -> Result<()> {
    crate::spec::validate_name(name).map_err(|_| Error::NoVolume { name: name.to_string() })?;
    if vm_exists {
        return Err(Error::Conflict {
            name: name.to_string(),
            message: format!("its volume belongs to an existing VM; delete both with `paddock rm --volumes {name}`"),
        });
    }
    let dir = vm_dir(state_dir, name);
    let path = dir.join(DATA_DISK);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoVolume { name: name.to_string() });
        }
        Err(e) => return Err(Error::io(format!("cannot remove {path:?}"), e)),
    }
    // What else a VM left there goes too (the directory is the volume's now).
    crate::disks::remove(&dir, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kept_volumes_are_listed_and_removed_but_not_in_use_ones() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["gone", "live"] {
            std::fs::create_dir_all(vm_dir(dir.path(), n)).unwrap();
            paddock_images::ensure_data_disk(&vm_dir(dir.path(), n).join(DATA_DISK), 1 << 30).unwrap();
        }
        let v = list(dir.path(), &["live".to_string()]).unwrap();
        assert_eq!(v.iter().map(|v| (v.name.as_str(), v.in_use)).collect::<Vec<_>>(), [("gone", false), ("live", true)]);
        assert!(matches!(remove(dir.path(), "live", true), Err(Error::Conflict { .. })));
        remove(dir.path(), "gone", false).unwrap();
        assert!(!vm_dir(dir.path(), "gone").exists());
        assert!(matches!(remove(dir.path(), "gone", false), Err(Error::NoVolume { .. })));
        assert!(matches!(remove(dir.path(), "../x", false), Err(Error::NoVolume { .. })));
        assert_eq!(list(dir.path(), &[]).unwrap().len(), 1);
    }
}
