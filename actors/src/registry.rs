//! The Registry: knows every VM by name, enforces unique names and host
//! ports, creates VM actors and routes each request to its VM.
//!
//! It never waits on a VM actor: requests are forwarded with `cast`
//! together with the caller's reply port, so one slow VM cannot hold up
//! requests for the others.

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, RunPaths};
use crate::board::{StatusBoard, VmInfo};
use crate::error::{Error, Result, SpecError};
use crate::events::{EventBus, EventKind};
use crate::spec::{BackendKind, VmSpec};
use crate::store::{Desired, Store, VmRecord};
use crate::vm::phase::VmPhase;
use crate::recovery::{self, Orphan};
use crate::vm::{Recovery, VmActor, VmArgs, VmDeps, VmMessage, VmRequest, WaitFor};

/// The hypervisors this runtime can drive.
#[derive(Clone, Default)]
pub struct Backends {
    pub qemu: Option<Arc<dyn Backend>>,
    pub cloud_hypervisor: Option<Arc<dyn Backend>>,
}

impl Backends {
    fn get(&self, kind: BackendKind, vm: &str) -> Result<Arc<dyn Backend>> {
        let b = match kind {
            BackendKind::Qemu => self.qemu.clone(),
            BackendKind::CloudHypervisor => self.cloud_hypervisor.clone(),
        };
        b.ok_or_else(|| Error::BackendUnavailable {
            name: vm.to_string(),
            backend: kind.as_str(),
            reason: "this paddock has no such backend configured".into(),
        })
    }
}

pub enum RegistryMessage {
    /// Define a VM and start it (`up`).
    Create { spec: Box<VmSpec>, wait: WaitFor, reply: RpcReplyPort<Result<VmInfo>> },
    /// Forward a request to the VM called `name`.
    Route { name: String, msg: VmRequest },
    /// Sent by a VM actor that deleted its VM; answered once the name is
    /// free and the VM off the board.
    Forget { name: String, id: ActorId, done: RpcReplyPort<()> },
    /// Answers when the registry's mailbox is being served (watchdog).
    Ping(RpcReplyPort<()>),
    /// Every data disk, kept or in use.
    Volumes { reply: RpcReplyPort<Result<Vec<crate::volumes::VolumeInfo>>> },
    /// Delete a kept data disk; refused while a VM of that name exists.
    RemoveVolume { name: String, reply: RpcReplyPort<Result<()>> },
}

/// What the recovery after a supervisor start found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecoveryReport {
    pub adopted: Vec<String>,
    pub lost: Vec<String>,
    pub rolled_back: Vec<String>,
    pub orphans_stopped: Vec<i32>,
    pub dirs_removed: Vec<String>,
    pub taps_reaped: Vec<String>,
    /// VMs whose recovery did not finish within its deadline.
    pub unfinished: Vec<String>,
}

pub struct RegistryArgs {
    pub store: Store,
    pub events: EventBus,
    pub board: StatusBoard,
    pub run_dir: PathBuf,
    pub backends: Backends,
    pub control_timeout: Duration,
    pub records: Vec<VmRecord>,
    pub net: Arc<crate::netmgr::NetManager>,
    pub images: Arc<paddock_images::ImageCache>,
    pub state_dir: PathBuf,
    /// The state directory's identity (`Store::instance_id`).
    pub instance: String,
    /// The daemon's console log bounds (a spec may override them).
    pub console_log: crate::bounds::ConsoleLogLimits,
    pub confine: crate::confine::Confinement,
    /// Receives the report once every recorded VM is adopted or handled
    /// and orphans are stopped (the daemon sends READY=1 then).
    pub recovered: Option<tokio::sync::oneshot::Sender<RecoveryReport>>,
}

pub struct RegistryActor;

pub struct RegistryState {
    vms: HashMap<String, ActorRef<VmMessage>>,
    backends: Backends,
    deps: Arc<VmDeps>,
}

impl Actor for RegistryActor {
    type Msg = RegistryMessage;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(&self, me: ActorRef<RegistryMessage>, a: RegistryArgs) -> std::result::Result<RegistryState, ActorProcessingErr> {
        let deps = Arc::new(VmDeps {
            store: a.store,
            events: a.events,
            board: a.board,
            run_dir: a.run_dir,
            registry: me.clone(),
            control_timeout: a.control_timeout,
            net: a.net,
            images: a.images,
            state_dir: a.state_dir,
            instance: a.instance,
            console_log: a.console_log,
            confine: a.confine,
        });
        let mut st = RegistryState { vms: HashMap::new(), backends: a.backends, deps };
        let mut pass = RecoveryPass::default();
        for rec in a.records {
            st.load(&me, rec, &mut pass).await;
        }
        st.finish_recovery(pass, a.recovered);
        Ok(st)
    }

    async fn handle(&self, me: ActorRef<RegistryMessage>, msg: RegistryMessage, st: &mut RegistryState) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            RegistryMessage::Create { spec, wait, reply } => match st.create(&me, *spec).await {
                Ok(vm) => {
                    let _ = vm.cast(VmRequest::Start { wait, rollback: true, reply }.into());
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            RegistryMessage::Route { name, msg } => match st.vms.get(&name) {
                Some(vm) => {
                    if let Err(ractor::MessagingErr::SendErr(msg)) = vm.cast(msg.into()) {
                        msg.reply_not_found(&name);
                    }
                }
                None => msg.reply_not_found(&name),
            },
            RegistryMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            // Served here, where names are decided: no `up` of the same
            // name can slip in between the check and the deletion.
            RegistryMessage::Volumes { reply } => {
                let names: Vec<String> = st.vms.keys().cloned().collect();
                let _ = reply.send(crate::volumes::list(&st.deps.state_dir, &names));
            }
            RegistryMessage::RemoveVolume { name, reply } => {
                let exists = st.vms.contains_key(&name);
                let _ = reply.send(crate::volumes::remove(&st.deps.state_dir, &name, exists));
            }
            RegistryMessage::Forget { name, id, done } => {
                match st.vms.get(&name) {
                    Some(vm) if vm.get_id() == id => {
                        st.vms.remove(&name);
                        st.deps.board.remove(&name);
                    }
                    // Already dropped (its actor failed): only its board entry is left.
                    None => st.deps.board.remove(&name),
                    // A new VM of that name: not ours to take off.
                    Some(_) => {}
                }
                let _ = done.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(&self, _me: ActorRef<RegistryMessage>, evt: SupervisionEvent, st: &mut RegistryState) -> std::result::Result<(), ActorProcessingErr> {
        // A VM actor that fails must not take the registry (and every other
        // VM) down; its VM's process keeps running.
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            let id = cell.get_id();
            if let Some(name) = st.vms.iter().find(|(_, v)| v.get_id() == id).map(|(n, _)| n.clone()) {
                tracing::error!(vm = %name, error = %err, "VM actor failed");
                st.vms.remove(&name);
            }
        }
        Ok(())
    }
}

impl RegistryState {
    async fn create(&mut self, me: &ActorRef<RegistryMessage>, spec: VmSpec) -> Result<ActorRef<VmMessage>> {
        let mut steps = crate::steps::Steps::new();
        spec.validate()?;
        if self.vms.contains_key(&spec.name) {
            return Err(Error::AlreadyExists { name: spec.name });
        }
        self.check_host_ports(&spec)?;
        let dir = RunPaths::new(&self.deps.run_dir, &spec.name).dir;
        if recovery::dir_is_foreign(&dir, &self.deps.instance) {
            let message = format!("{dir:?} belongs to another paddock (its run dir is inside ours); choose another name");
            return Err(SpecError::new("name", message).into());
        }
        let backend = self.backends.get(spec.backend, &spec.name)?;
        // Checks every file before anything is written.
        crate::netmgr::NetManager::check_allowed(&spec)?;
        let checked = crate::disks::for_validation(&spec, &self.deps.images)?;
        backend.prepare(&checked, &RunPaths::new(&self.deps.run_dir, &spec.name), None)?;
        steps.lap("validate");
        crate::crash_point!("up.before-insert");
        // The row and its Created event in one transaction: one fsync.
        let row = crate::store::RowChange::VmInserted { spec: spec.clone(), phase: VmPhase::Defined };
        self.deps.events.publish_with(row, EventKind::Created, 0).await.map_err(|e| match self.vms.contains_key(&spec.name) {
            true => Error::AlreadyExists { name: spec.name.clone() },
            false => Error::Store(e),
        })?;
        steps.lap("row+event");
        crate::crash_point!("up.after-insert");
        let name = spec.name.clone();
        let args = VmArgs { spec, phase: VmPhase::Defined, generation: 0, provisional: true, backend, deps: self.deps.clone(), recovery: None };
        let vm = match Actor::spawn_linked(None, VmActor, args, me.get_cell()).await {
            Ok((vm, _)) => vm,
            Err(e) => {
                let _ = self.deps.store.delete_vm(&name).await;
                return Err(Error::Unavailable(format!("cannot start the VM actor: {e}")));
            }
        };
        steps.lap("actor");
        steps.log(&name, "create steps");
        self.vms.insert(name, vm.clone());
        Ok(vm)
    }

    fn check_host_ports(&self, spec: &VmSpec) -> Result<()> {
        for other in self.deps.board.list() {
            for (i, f) in spec.network.forwards.iter().enumerate() {
                if other.spec.network.forwards.iter().any(|o| o.host == f.host && o.protocol == f.protocol) {
                    return Err(SpecError::new(
                        format!("network.forwards[{i}].host"),
                        format!("host port {} is already forwarded to VM {:?}; choose another host port", f.host, other.name),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Brings a VM recorded in the database back under supervision,
    /// deciding from the live process table (never from the record alone)
    /// whether its hypervisor still runs.
    async fn load(&mut self, me: &ActorRef<RegistryMessage>, rec: VmRecord, pass: &mut RecoveryPass) {
        let name = rec.spec.name.clone();
        let open = match self.deps.store.open_run(&name).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(vm = %name, error = %e, "cannot read the VM's runs");
                None
            }
        };
        let marker = crate::backend::marker(&name);
        let verified = open.as_ref().map(|(id, run)| (*id, run.pid, recovery::verify(run, &marker, &self.deps.instance)));
        if let Some((_, pid, Err(e))) = &verified {
            // Not ours any more (or gone): never adopted, never signalled.
            tracing::info!(vm = %name, pid, reason = %e, "recorded process not adopted");
        }
        let alive = matches!(verified, Some((_, _, Ok(_))));
        // An interrupted removal, or an `up` that never saw its VM run and
        // whose process is gone: roll the VM back entirely.
        if rec.desired == Desired::Deleted || (rec.provisional && !alive) {
            self.delete_record(&name).await;
            pass.report.rolled_back.push(name);
            return;
        }
        let backend = match self.backends.get(rec.spec.backend, &name) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(vm = %name, error = %e, "recorded VM has no backend");
                return;
            }
        };
        let (recovery, wait) = match verified {
            Some((run_id, pid, Ok(pidfd))) => {
                pass.known_pids.push(pid);
                // Its vsock device goes with it (not an orphan). Only VMs
                // with vsock look: the scan reads the process table.
                if rec.spec.vsock {
                    pass.known_pids.extend(crate::vsock::find_device(&self.deps.run_dir, &name));
                }
                pass.report.adopted.push(name.clone());
                let (done, wait) = tokio::sync::oneshot::channel();
                let stop = rec.desired == Desired::Stopped;
                (Recovery::Adopt { run_id, pid, pidfd, provisional: rec.provisional, stop, done }, Some(wait))
            }
            Some((run_id, _, Err(e))) => {
                pass.report.lost.push(name.clone());
                let (done, wait) = tokio::sync::oneshot::channel();
                (Recovery::Lost { reason: e.to_string(), run_id: Some(run_id), done }, Some(wait))
            }
            None if rec.phase.is_active() => {
                pass.report.lost.push(name.clone());
                let (done, wait) = tokio::sync::oneshot::channel();
                (Recovery::Lost { reason: "no hypervisor run was recorded".into(), run_id: None, done }, Some(wait))
            }
            None => (Recovery::Idle { provisional: rec.provisional }, None),
        };
        let args = VmArgs {
            spec: rec.spec,
            phase: rec.phase,
            generation: rec.generation,
            provisional: rec.provisional,
            backend,
            deps: self.deps.clone(),
            recovery: Some(recovery),
        };
        match Actor::spawn_linked(None, VmActor, args, me.get_cell()).await {
            Ok((vm, _)) => {
                self.vms.insert(name.clone(), vm);
                if let Some(w) = wait {
                    pass.waits.push((name, w));
                }
            }
            Err(e) => tracing::error!(vm = %name, error = %e, "cannot start the VM actor"),
        }
    }

    async fn delete_record(&self, name: &str) {
        if let Err(e) = recovery::remove_run_dir(&RunPaths::new(&self.deps.run_dir, name).dir, &self.deps.instance) {
            tracing::error!(vm = %name, error = %e, "cannot remove the run directory of a rolled-back VM");
        }
        if let Err(e) = crate::disks::remove(&crate::disks::vm_dir(&self.deps.state_dir, name), false) {
            tracing::error!(vm = %name, error = %e, "cannot remove the disks of a rolled-back VM");
        }
        if let Err(e) = self.deps.net.release(name).await {
            tracing::error!(vm = %name, error = %e, "cannot release the lease of a rolled-back VM");
        }
        if let Err(e) = self.deps.store.delete_vm(name).await {
            tracing::error!(vm = %name, error = %e, "cannot finish rolling back the VM");
        }
        tracing::info!(vm = %name, "rolled back an interrupted up or rm");
    }

    /// In the background, so the registry serves requests meanwhile: stop
    /// orphans, remove run directories nobody owns, wait for every VM's
    /// recovery (each bounded by its own deadline), then report.
    fn finish_recovery(&self, mut pass: RecoveryPass, report_to: Option<tokio::sync::oneshot::Sender<RecoveryReport>>) {
        let deps = self.deps.clone();
        let known: Vec<String> = self.vms.keys().cloned().collect();
        let orphans = recovery::find_orphans(&deps.run_dir, &deps.instance, &pass.known_pids);
        tokio::spawn(async move {
            let stops = orphans.iter().map(|o| stop_orphan(&deps, o));
            pass.report.orphans_stopped = futures::future::join_all(stops).await;
            pass.report.dirs_removed = remove_unowned_dirs(&deps.run_dir, &deps.instance, &known);
            match deps.net.reap().await {
                Ok(r) => pass.report.taps_reaped = r.taps_deleted,
                Err(e) => tracing::error!(error = %e, "network reaper failed"),
            }
            let deadline = deps.control_timeout + Duration::from_secs(5);
            let waits = pass.waits.into_iter().map(|(name, w)| async move {
                match tokio::time::timeout(deadline, w).await {
                    Ok(_) => None,
                    Err(_) => Some(name),
                }
            });
            pass.report.unfinished = futures::future::join_all(waits).await.into_iter().flatten().collect();
            tracing::info!(
                adopted = pass.report.adopted.len(),
                lost = pass.report.lost.len(),
                rolled_back = pass.report.rolled_back.len(),
                orphans = pass.report.orphans_stopped.len(),
                "recovery finished"
            );
            if let Some(tx) = report_to {
                let _ = tx.send(pass.report);
            }
        });
    }
}

#[derive(Default)]
struct RecoveryPass {
    known_pids: Vec<i32>,
    waits: Vec<(String, tokio::sync::oneshot::Receiver<()>)>,
    report: RecoveryReport,
}

async fn stop_orphan(deps: &VmDeps, o: &Orphan) -> i32 {
    let rung = recovery::stop_orphan(o, deps.control_timeout).await;
    tracing::warn!(pid = o.pid, marker = %o.marker, rung, "stopped an orphan hypervisor (no record of it)");
    let vm = o.marker.trim_start_matches("paddock-");
    deps.events.publish(vm, EventKind::OrphanStopped { pid: o.pid, rung: rung.to_string() }, 0, None).await;
    o.pid
}

/// Directories in the run dir that belong to no VM (left by a crash in the
/// middle of a rollback or a removal). Only directories stamped with our
/// instance: anything else (another daemon's run dir nested in ours) is
/// not ours to delete.
fn remove_unowned_dirs(run_dir: &std::path::Path, instance: &str, known: &[String]) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(run_dir) else { return removed };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let candidate = e.file_type().is_ok_and(|t| t.is_dir()) && !known.contains(&name) && crate::spec::validate_name(&name).is_ok();
        if candidate && recovery::dir_is_foreign(&e.path(), instance) {
            tracing::info!(dir = ?e.path(), "leaving a run directory that another paddock made");
            continue;
        }
        if candidate {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => removed.push(name),
                Err(err) => tracing::warn!(dir = ?e.path(), error = %err, "cannot remove an unowned run directory"),
            }
        }
    }
    removed
}
