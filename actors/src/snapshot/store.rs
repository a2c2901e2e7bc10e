//! Snapshots on disk: `STATE_DIR/snapshots/<name>/` holds `meta.json` (the
//! source VM's spec, size, time, hypervisor and CPU), `memory` (the
//! hypervisor's saved state) and `disks/` (copies of the VM's writable
//! disks, taken while it was paused).
//!
//! A snapshot is written under `.partial-<name>`, every file fsynced, then
//! renamed into place and the directory fsynced: a daemon killed midway
//! leaves a partial directory (removed at the next start), never a
//! snapshot that `ls` shows but `restore` cannot use.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::spec::VmSpec;

pub const META: &str = "meta.json";
pub const MEMORY: &str = "memory";
pub const DISKS: &str = "disks";
/// Files a hypervisor writes itself (Cloud Hypervisor's `vm.snapshot`).
pub const HYPERVISOR_DIR: &str = "hypervisor";
const PARTIAL: &str = ".partial-";
/// `.resume-<snapshot>` holds the name of a VM that a snapshot paused and
/// has not resumed yet.
const RESUME: &str = ".resume-";
/// `.suspended-<vm>` holds the name of the snapshot a daemon shutdown
/// (`--suspend-vms`) left of VM `<vm>`; its next start loads it, once.
const SUSPENDED: &str = ".suspended-";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot name {name:?}: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    InvalidName { name: String },
    #[error("no snapshot named {name:?}; see `paddock snapshot ls`")]
    NotFound { name: String },
    #[error("a snapshot named {name:?} already exists (or is being written); pick another name or `paddock snapshot rm {name}` first")]
    Exists { name: String },
    #[error("snapshot {name:?} is in use by VM {vm:?} (boot.snapshot); remove that VM first")]
    InUse { name: String, vm: String },
    #[error("VM {vm:?}: {reason}")]
    Unsupported { vm: String, reason: String },
    #[error("snapshot {name:?}: {context}")]
    Io {
        name: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What `snapshot ls` shows and `restore` starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    pub name: String,
    /// The VM it was taken of.
    pub vm: String,
    pub spec: VmSpec,
    /// Bytes on disk (memory and disks).
    pub bytes: u64,
    pub created_ms: u64,
    /// The guest had said it was ready when the snapshot was taken.
    pub ready: bool,
    /// The hypervisor's version string, which a restore must match.
    pub hypervisor: String,
    /// The host CPU model, which a restore must match (the guest's CPUID
    /// was the host's).
    pub cpu: String,
    /// Files under `disks/`, restored into the new VM's directory.
    pub disks: Vec<String>,
}

/// The snapshot directory of one state dir.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
}

pub fn validate_name(name: &str) -> Result<(), SnapshotError> {
    let ok_first = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.len() > 63 || !ok_first || !ok_rest {
        return Err(SnapshotError::InvalidName { name: name.to_string() });
    }
    Ok(())
}

fn io(name: &str, context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    let context = context.into();
    move |source| SnapshotError::Io { name: name.to_string(), context, source }
}

impl Snapshots {
    pub fn new(state_dir: &Path) -> Self {
        Snapshots { root: state_dir.join("snapshots") }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Removes what a daemon killed while writing a snapshot left.
    pub fn remove_partial(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(PARTIAL) {
                tracing::warn!(path = ?e.path(), "removing a partly written snapshot");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Records that `vm` was paused by snapshot `name` and must run again.
    pub fn mark_resume(&self, name: &str, vm: &str) -> Result<(), SnapshotError> {
        self.write_mark(&format!("{RESUME}{name}"), vm).map_err(io(name, format!("cannot write {RESUME}{name}")))
    }

    /// A small durable file in the snapshot directory.
    fn write_mark(&self, file: &str, content: &str) -> std::io::Result<()> {
        let mut f = File::create(self.root.join(file))?;
        std::io::Write::write_all(&mut f, content.as_bytes())?;
        f.sync_all()?;
        fsync_dir(&self.root)
    }

    pub fn clear_resume(&self, name: &str) {
        let _ = std::fs::remove_file(self.root.join(format!("{RESUME}{name}")));
    }

    /// The VMs that a snapshot interrupted by a crash left paused; the
    /// marks are removed.
    pub fn take_resume_marks(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut vms = Vec::new();
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(RESUME) {
                if let Ok(vm) = std::fs::read_to_string(e.path()) {
                    vms.push(vm);
                }
                let _ = std::fs::remove_file(e.path());
            }
        }
        vms
    }

    /// Records that `vm` was suspended into snapshot `name`.
    pub fn mark_suspended(&self, vm: &str, name: &str) -> Result<(), SnapshotError> {
        self.write_mark(&format!("{SUSPENDED}{vm}"), name).map_err(io(name, format!("cannot write {SUSPENDED}{vm}")))
    }

    /// The VMs suspended by the last daemon shutdown.
    pub fn suspended(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(SUSPENDED)).map(String::from)).collect()
    }

    /// The snapshot VM `vm` was suspended into, if it was; the mark is
    /// removed (it is used once).
    pub fn take_suspended(&self, vm: &str) -> Option<String> {
        let path = self.root.join(format!("{SUSPENDED}{vm}"));
        let name = std::fs::read_to_string(&path).ok()?;
        let _ = std::fs::remove_file(&path);
        Some(name)
    }

    pub fn list(&self) -> Vec<SnapshotInfo> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut out: Vec<SnapshotInfo> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| validate_name(n).is_ok())
            .filter_map(|n| self.get(&n).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn get(&self, name: &str) -> Result<SnapshotInfo, SnapshotError> {
        validate_name(name)?;
        let path = self.dir(name).join(META);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::NotFound { name: name.to_string() }),
            Err(e) => return Err(io(name, format!("cannot read {path:?}"))(e)),
        };
        serde_json::from_str(&text).map_err(|e| io(name, format!("{path:?} is damaged"))(std::io::Error::other(e)))
    }

    /// Deletes a snapshot; `user` is a VM that still starts from it.
    pub fn remove(&self, name: &str, user: Option<&str>) -> Result<SnapshotInfo, SnapshotError> {
        let info = self.get(name)?;
        if let Some(vm) = user {
            return Err(SnapshotError::InUse { name: name.to_string(), vm: vm.to_string() });
        }
        // Renamed away first: a crash midway leaves a partial, not half a snapshot.
        let doomed = self.root.join(format!("{PARTIAL}{name}-rm"));
        std::fs::rename(self.dir(name), &doomed).map_err(io(name, "cannot remove"))?;
        fsync_dir(&self.root).map_err(io(name, "cannot sync the snapshot directory"))?;
        std::fs::remove_dir_all(&doomed).map_err(io(name, "cannot remove"))?;
        Ok(info)
    }

    /// Starts writing snapshot `name`; refused if it exists or is being
    /// written.
    pub fn begin(&self, name: &str) -> Result<Partial, SnapshotError> {
        validate_name(name)?;
        // 0711: a confined hypervisor passes through to the directory it
        // writes (Cloud Hypervisor's own files) but lists nothing here.
        traversable_dir(&self.root).map_err(io(name, format!("cannot create {:?}", self.root)))?;
        if self.dir(name).exists() {
            return Err(SnapshotError::Exists { name: name.to_string() });
        }
        let dir = self.root.join(format!("{PARTIAL}{name}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(SnapshotError::Exists { name: name.to_string() }),
            Err(e) => return Err(io(name, format!("cannot create {dir:?}"))(e)),
        }
        traversable_dir(&dir).map_err(io(name, format!("cannot set the mode of {dir:?}")))?;
        crate::private_dir::ensure_private_dir(&dir.join(DISKS)).map_err(io(name, "cannot create disks/"))?;
        Ok(Partial { name: name.to_string(), dir, root: self.root.clone(), done: false })
    }
}

/// A directory made (if missing) with mode 0711.
fn traversable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}

/// A snapshot being written; dropped before `commit`, it is deleted.
pub struct Partial {
    name: String,
    dir: PathBuf,
    root: PathBuf,
    done: bool,
}

impl Partial {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file the hypervisor writes its state into.
    pub fn memory_file(&self) -> Result<File, SnapshotError> {
        let path = self.dir.join(MEMORY);
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path).map_err(io(&self.name, format!("cannot create {path:?}")))
    }

    /// The directory a hypervisor writes its own snapshot files into.
    pub fn hypervisor_dir(&self) -> Result<PathBuf, SnapshotError> {
        let dir = self.dir.join(HYPERVISOR_DIR);
        std::fs::create_dir(&dir).map_err(io(&self.name, format!("cannot create {dir:?}")))?;
        Ok(dir)
    }

    /// Copies one of the paused VM's disks in.
    pub fn copy_disk(&self, src: &Path, file: &str) -> Result<(), SnapshotError> {
        let dst = self.dir.join(DISKS).join(file);
        std::fs::copy(src, &dst).map_err(io(&self.name, format!("cannot copy {src:?}")))?;
        Ok(())
    }

    /// Writes the metadata, syncs every file and renames the snapshot into
    /// place.
    pub fn commit(mut self, mut info: SnapshotInfo) -> Result<SnapshotInfo, SnapshotError> {
        let name = self.name.clone();
        info.bytes = dir_bytes(&self.dir);
        let meta = serde_json::to_vec_pretty(&info).map_err(|e| io(&name, "cannot encode meta.json")(std::io::Error::other(e)))?;
        std::fs::write(self.dir.join(META), meta).map_err(io(&name, "cannot write meta.json"))?;
        for f in [self.dir.join(MEMORY), self.dir.join(META)].into_iter().chain(info.disks.iter().map(|d| self.dir.join(DISKS).join(d))) {
            File::open(&f).and_then(|f| f.sync_all()).map_err(io(&name, format!("cannot sync {f:?}")))?;
        }
        fsync_dir(&self.dir.join(DISKS)).map_err(io(&name, "cannot sync disks/"))?;
        sync_tree(&self.dir.join(HYPERVISOR_DIR)).map_err(io(&name, "cannot sync the hypervisor's files"))?;
        fsync_dir(&self.dir).map_err(io(&name, "cannot sync its directory"))?;
        crate::crash_point!("snapshot.before-rename");
        std::fs::rename(&self.dir, self.root.join(&name)).map_err(io(&name, "cannot rename into place"))?;
        self.done = true;
        fsync_dir(&self.root).map_err(io(&name, "cannot sync the snapshot directory"))?;
        Ok(info)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsync of every file under `dir` (if it exists), then of `dir`.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        } else {
            File::open(e.path())?.sync_all()?;
        }
    }
    fsync_dir(dir)
}

fn dir_bytes(dir: &Path) -> u64 {
    walk_bytes(dir).unwrap_or(0)
}

fn walk_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() { walk_bytes(&e.path())? } else { std::os::unix::fs::MetadataExt::blocks(&m) * 512 };
    }
    Ok(n)
}

/// The host's CPU model (the first `model name` of /proc/cpuinfo).
pub fn host_cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn info(name: &str) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            vm: "web".into(),
            spec: serde_json::from_value(serde_json::json!({"name": "web", "boot": {"kernel": "/k"}})).unwrap(),
            bytes: 0,
            created_ms: 1,
            ready: true,
            hypervisor: "QEMU 7.2".into(),
            cpu: host_cpu(),
            disks: vec!["root.qcow2".into()],
        }
    }

    #[test]
    fn names_are_checked_before_they_touch_paths() {
        for bad in ["", "../x", "a/b", "A", "-a", ".partial-x", &"a".repeat(64)] {
            assert!(matches!(validate_name(bad), Err(SnapshotError::InvalidName { .. })), "{bad:?}");
        }
        validate_name("web-1").unwrap();
    }

    #[test]
    fn only_a_committed_snapshot_is_listed_and_a_dropped_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshots::new(dir.path());
        let p = s.begin("a").unwrap();
        assert!(matches!(s.begin("a"), Err(SnapshotError::Exists { .. })), "a snapshot being written is not written twice");
        std::io::Write::write_all(&mut p.memory_file().unwrap(), b"state").unwrap();
        assert!(s.list().is_empty());
        drop(p);
        assert_eq!(std::fs::read_dir(dir.path().join("snapshots")).unwrap().count(), 0);

        let p = s.begin("a").unwrap();
        std::io::Write::write_all(&mut p.memory_file().unwrap(), b"state").unwrap();
        let disk = dir.path().join("root.qcow2");
        std::fs::write(&disk, b"disk").unwrap();
        p.copy_disk(&disk, "root.qcow2").unwrap();
        let got = p.commit(info("a")).unwrap();
        assert!(got.bytes > 0);
        assert_eq!(s.list(), vec![got.clone()]);
        assert_eq!(std::fs::read(s.dir("a").join(DISKS).join("root.qcow2")).unwrap(), b"disk");
        assert!(matches!(s.begin("a"), Err(SnapshotError::Exists { .. })));
        assert!(matches!(s.remove("a", Some("clone")), Err(SnapshotError::InUse { .. })));
        s.remove("a", None).unwrap();
        assert!(matches!(s.get("a"), Err(SnapshotError::NotFound { .. })));
    }

    #[test]
    fn a_partial_left_by_a_crash_is_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshots::new(dir.path());
        let p = s.begin("b").unwrap();
        s.mark_resume("b", "web").unwrap();
        std::mem::forget(p); // as if the daemon died here
        assert!(dir.path().join("snapshots/.partial-b").exists());
        s.remove_partial();
        assert!(!dir.path().join("snapshots/.partial-b").exists());
        assert_eq!(s.take_resume_marks(), vec!["web".to_string()]);
        assert!(s.take_resume_marks().is_empty());
        s.begin("b").unwrap();
    }
}
