//! The VM actor's snapshot arms: saving a running VM (`Snapshot`), and the
//! start of a VM from a snapshot (`boot.snapshot`, `paddock restore`).
//!
//! A snapshot pauses the guest, saves its state through the control
//! channel, copies the VM's writable disks while it is paused, commits the
//! snapshot (snapshot/store.rs) and resumes or stops the VM. All of it runs
//! in a task: the VM stays stoppable while its memory is written.

use ractor::{ActorRef, RpcReplyPort};
use std::time::Duration;

use super::VmState;
use crate::vm::phase::VmPhase;
use crate::vm::VmMessage;
use crate::backend::SavedState;
use crate::control::{ControlCommand, ControlMessage, STATE_TIMEOUT};
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::snapshot::{host_cpu, AfterSnapshot, SnapshotError, SnapshotInfo, Snapshots};
use crate::spec::VmSpec;

/// The VM's own disks and UEFI variable store a snapshot copies (the seed and service disk are
/// made again from the spec).
const COPIED: &[&str] = &[crate::disks::OVERLAY, crate::disks::DATA_DISK, crate::host::uefi::VARS_FILE];

/// What a start from a snapshot needs once the process runs.
pub(super) struct Incoming {
    pub state: SavedState,
    /// The VM the snapshot was taken of.
    pub source: String,
    /// The snapshot was of a ready guest: the VM is ready once it runs.
    pub ready: bool,
    pub snapshot: String,
}

impl VmState {
    pub(super) fn on_snapshot(&mut self, me: &ActorRef<VmMessage>, snapshot: String, then: AfterSnapshot, reply: RpcReplyPort<Result<SnapshotInfo>>) {
        match self.begin_snapshot(me, snapshot, then) {
            Ok(task) => {
                let me = me.clone();
                tokio::spawn(async move {
                    let result = task.await;
                    let _ = me.cast(super::VmNotice::SnapshotDone { result, then, reply }.into());
                });
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn begin_snapshot(
        &mut self,
        _me: &ActorRef<VmMessage>,
        snapshot: String,
        then: AfterSnapshot,
    ) -> Result<impl std::future::Future<Output = Result<SnapshotInfo>> + Send + 'static> {
        let unsupported = |reason: String| Error::from(SnapshotError::Unsupported { vm: self.name.clone(), reason });
        if !matches!(self.core.phase, VmPhase::Running | VmPhase::Paused) {
            return Err(self.conflict(format!("a snapshot needs a running or paused VM; it is {:?}", self.core.phase)));
        }
        let link_up = self.core.run.as_ref().is_some_and(|r| r.link == super::core::Link::Up);
        let Some(control) = self.run.as_ref().filter(|_| link_up).and_then(|r| r.control.clone()) else {
            return Err(self.conflict("its control channel is not up; retry shortly"));
        };
        if let Some(i) = self.spec.disks.iter().position(|d| !d.readonly) {
            return Err(unsupported(format!(
                "disks[{i}] is writable and outside the VM's directory, so a snapshot cannot copy it consistently; make it readonly or use data_disk"
            )));
        }
        if self.spec.vsock {
            return Err(unsupported("vsock = true: the vsock device keeps state outside the hypervisor; snapshots need vsock = false".into()));
        }
        let snapshots = Snapshots::new(&self.deps.state_dir);
        let partial = snapshots.begin(&snapshot)?;
        let memory = SavedState { memory: partial.memory_file()?, dir: partial.hypervisor_dir()? };
        // A confined hypervisor writes its own files (Cloud Hypervisor) as
        // the VM's identity: the owner of its run directory.
        give_to_run_dir_owner(&memory.dir, &self.paths.dir).map_err(|e| Error::io(format!("cannot give {:?} to the VM's identity", memory.dir), e))?;
        let was_running = self.core.phase == VmPhase::Running;
        if was_running {
            // A daemon killed before the resume resumes the VM at its next start.
            snapshots.mark_resume(&snapshot, &self.name)?;
        }
        let mut info = SnapshotInfo {
            name: snapshot,
            vm: self.name.clone(),
            spec: self.spec.clone(),
            bytes: 0,
            created_ms: crate::store::now_ms(),
            ready: self.run.as_ref().is_some_and(|r| r.ready),
            hypervisor: self.backend.version(),
            cpu: host_cpu(),
            disks: Vec::new(),
        };
        let vm_dir = crate::disks::vm_dir(&self.deps.state_dir, &self.name);
        let timeout = self.deps.control_timeout;
        let name = self.name.clone();
        let snapshot_name = info.name.clone();
        Ok(async move {
            let saved = match control.call(|p| ControlMessage::SaveState(memory, p), Some(STATE_TIMEOUT + timeout)).await {
                Ok(ractor::rpc::CallResult::Success(r)) => r,
                Ok(ractor::rpc::CallResult::Timeout) => Err("saving the state timed out".into()),
                Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err("control actor is gone".into()),
            };
            let result = match saved {
                Err(reason) => Err(Error::Conflict { name: name.clone(), message: format!("snapshot failed: {reason}") }),
                Ok(()) => {
                    crate::crash_point!("snapshot.after-save");
                    // The guest is paused: its disks match the saved memory.
                    tokio::task::spawn_blocking(move || {
                        for f in COPIED {
                            let src = vm_dir.join(f);
                            if src.exists() {
                                partial.copy_disk(&src, f)?;
                                info.disks.push(f.to_string());
                            }
                        }
                        partial.commit(info)
                    })
                    .await
                    .map_err(|e| Error::Unavailable(format!("snapshot worker: {e}")))
                    .and_then(|r| r.map_err(Error::from))
                }
            };
            // A failed snapshot never leaves a running VM paused.
            if was_running && (then == AfterSnapshot::Resume || result.is_err()) {
                if let Err(e) = super::control_call(Some(control), ControlCommand::Resume, timeout).await {
                    tracing::error!(vm = %name, error = %e, "cannot resume the VM after its snapshot");
                }
            }
            snapshots.clear_resume(&snapshot_name);
            result
        })
    }

    pub(super) async fn on_snapshot_done(
        &mut self,
        me: &ActorRef<VmMessage>,
        result: Result<SnapshotInfo>,
        then: AfterSnapshot,
        reply: RpcReplyPort<Result<SnapshotInfo>>,
    ) {
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        tracing::info!(vm = %self.name, snapshot = %info.name, bytes = info.bytes, "snapshot taken");
        let kind = EventKind::SnapshotTaken { snapshot: info.name.clone(), bytes: info.bytes };
        self.deps.events.publish(&self.name, kind, self.generation, None).await;
        let _ = reply.send(Ok(info));
        if then == AfterSnapshot::Stop {
            // Nobody waits for this stop: the snapshot is the answer.
            let (unheard, _) = ractor::concurrency::oneshot();
            self.on_stop(me, Duration::ZERO, unheard.into()).await;
        }
    }

    /// For a start with `boot.snapshot`: checks the snapshot against this
    /// host and spec, puts its disks in place and opens its memory. None
    /// means a cold boot (no snapshot, or one that does not fit: said in
    /// an event).
    pub(super) async fn snapshot_incoming(&mut self) -> Result<Option<Incoming>> {
        let snapshots = Snapshots::new(&self.deps.state_dir);
        // Once after `shutdown --suspend-vms` (its state is the newest), or
        // `boot.snapshot`.
        let Some(name) = snapshots.take_suspended(&self.name).or_else(|| self.spec.boot.snapshot.clone()) else { return Ok(None) };
        let info = snapshots.get(&name)?;
        if let Some(reason) = mismatch(&info, &self.spec, &self.backend.version(), &host_cpu()) {
            let message = format!("snapshot {name:?} does not fit: {reason}; booting cold");
            tracing::warn!(vm = %self.name, snapshot = %name, %reason, "snapshot does not fit; cold boot");
            self.deps.events.publish(&self.name, EventKind::SnapshotSkipped { snapshot: name }, self.generation, Some(message)).await;
            return Ok(None);
        }
        let dir = snapshots.dir(&name);
        let snapshot = name.clone();
        let vm_dir = crate::disks::vm_dir(&self.deps.state_dir, &self.name);
        let disks = info.disks.clone();
        let hypervisor_dir = dir.join(crate::snapshot::HYPERVISOR_DIR);
        let memory = tokio::task::spawn_blocking(move || -> std::result::Result<std::fs::File, SnapshotError> {
            let io = |context: String| {
                let name = name.clone();
                move |source| SnapshotError::Io { name, context, source }
            };
            crate::private_dir::ensure_private_dir(&vm_dir).map_err(io(format!("cannot create {vm_dir:?}")))?;
            // Every start from a snapshot begins from its disks: memory and
            // disks must agree.
            // Each through a temporary name: a crash mid-copy leaves the
            // old file or none, never a short one.
            for f in &disks {
                let tmp = vm_dir.join(format!("{f}.restoring"));
                std::fs::copy(dir.join(crate::snapshot::DISKS).join(f), &tmp).map_err(io(format!("cannot copy disk {f}")))?;
                std::fs::rename(&tmp, vm_dir.join(f)).map_err(io(format!("cannot put disk {f} in place")))?;
            }
            std::fs::File::open(dir.join(crate::snapshot::MEMORY)).map_err(io("cannot open its memory file".into()))
        })
        .await
        .map_err(|e| Error::Unavailable(format!("restore worker: {e}")))??;
        Ok(Some(Incoming { state: SavedState { memory, dir: hypervisor_dir }, source: info.vm, ready: info.ready, snapshot }))
    }
}

/// Chowns `dir` to the owner of `run_dir` when that is not root (the VM
/// runs confined).
fn give_to_run_dir_owner(dir: &std::path::Path, run_dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(run_dir)?;
    if owner.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid()))
}

/// Why a snapshot cannot restore into `spec` on this host, if it cannot:
/// the machine the guest saw must be the same.
pub fn mismatch(info: &SnapshotInfo, spec: &VmSpec, hypervisor: &str, cpu: &str) -> Option<String> {
    let s = &info.spec;
    if s.backend != spec.backend {
        return Some(format!("it was taken with backend {}", s.backend.as_str()));
    }
    if info.hypervisor != hypervisor {
        return Some(format!("it was taken with {:?}, this host runs {hypervisor:?}", info.hypervisor));
    }
    if info.cpu != cpu {
        return Some(format!("it was taken on CPU {:?}, this host has {cpu:?}", info.cpu));
    }
    let mut boot = spec.boot.clone();
    boot.snapshot = None;
    let differs = [
        ("vcpus", s.vcpus != spec.vcpus),
        ("memory_mib", s.memory_mib != spec.memory_mib),
        ("boot", s.boot != boot),
        ("disks", s.disks != spec.disks),
        ("network.mode", s.network.mode != spec.network.mode),
        ("vsock", s.vsock != spec.vsock),
        ("data_disk", s.data_disk.is_some() != spec.data_disk.is_some()),
        ("cloud_init", s.cloud_init.is_some() != spec.cloud_init.is_some()),
        ("service_disk", s.service_disk.is_some() != spec.service_disk.is_some()),
        ("on_panic", s.on_panic != spec.on_panic),
        // Another device set: QEMU would refuse the saved state.
        ("firmware", s.firmware != spec.firmware),
        ("display", s.display != spec.display),
    ];
    differs.iter().find(|(_, d)| *d).map(|(field, _)| format!("{field} differs from the snapshotted VM's"))
}

impl VmState {
    /// The process of a start from a snapshot is up; its state loads as
    /// the control channel connects. A snapshot of a ready guest is ready
    /// as soon as it runs: its console will not print its boot again.
    pub(super) async fn on_restoring(&mut self, me: &ActorRef<VmMessage>, ready: bool, snapshot: String) {
        self.deps.events.publish(&self.name, EventKind::Restored { snapshot }, self.generation, None).await;
        if ready {
            let _ = me.cast(super::VmNotice::ConsoleReady.into());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> VmSpec {
        let mut base = serde_json::json!({"name": "web", "boot": {"kernel": "/k"}, "memory_mib": 128});
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            b.extend(o.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_snapshot_fits_only_the_same_hypervisor_cpu_and_machine() {
        let info = SnapshotInfo {
            name: "s".into(),
            vm: "web".into(),
            spec: spec(serde_json::json!({})),
            bytes: 1,
            created_ms: 1,
            ready: true,
            hypervisor: "QEMU 7.2".into(),
            cpu: "EPYC".into(),
            disks: vec![],
        };
        let mut clone = spec(serde_json::json!({"name": "other", "restart": {"policy": "always"}}));
        clone.boot.snapshot = Some("s".into());
        assert_eq!(mismatch(&info, &clone, "QEMU 7.2", "EPYC"), None, "a new name, restart policy and boot.snapshot still fit");
        assert!(mismatch(&info, &clone, "QEMU 8.0", "EPYC").unwrap().contains("QEMU 8.0"));
        assert!(mismatch(&info, &clone, "QEMU 7.2", "Xeon").unwrap().contains("Xeon"));
        clone.memory_mib = 256;
        assert!(mismatch(&info, &clone, "QEMU 7.2", "EPYC").unwrap().contains("memory_mib"));
        let mut other_kernel = spec(serde_json::json!({"boot": {"kernel": "/k2"}}));
        other_kernel.boot.snapshot = Some("s".into());
        assert!(mismatch(&info, &other_kernel, "QEMU 7.2", "EPYC").unwrap().contains("boot"));
    }
}
