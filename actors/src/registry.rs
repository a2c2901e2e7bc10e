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
use crate::vm::{VmActor, VmArgs, VmDeps, VmMessage, WaitFor};

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
    Route { name: String, msg: VmMessage },
    /// Sent by a VM actor that deleted its VM.
    Forget { name: String, id: ActorId },
}

pub struct RegistryArgs {
    pub store: Store,
    pub events: EventBus,
    pub board: StatusBoard,
    pub run_dir: PathBuf,
    pub backends: Backends,
    pub control_timeout: Duration,
    pub records: Vec<VmRecord>,
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
        });
        let mut st = RegistryState { vms: HashMap::new(), backends: a.backends, deps };
        for rec in a.records {
            st.load(&me, rec).await;
        }
        Ok(st)
    }

    async fn handle(&self, me: ActorRef<RegistryMessage>, msg: RegistryMessage, st: &mut RegistryState) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            RegistryMessage::Create { spec, wait, reply } => match st.create(&me, *spec).await {
                Ok(vm) => {
                    let _ = vm.cast(VmMessage::Start { wait, rollback: true, reply });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            RegistryMessage::Route { name, msg } => match st.vms.get(&name) {
                Some(vm) => {
                    if let Err(ractor::MessagingErr::SendErr(msg)) = vm.cast(msg) {
                        msg.reply_not_found(&name);
                    }
                }
                None => msg.reply_not_found(&name),
            },
            RegistryMessage::Forget { name, id } => {
                if st.vms.get(&name).is_some_and(|v| v.get_id() == id) {
                    st.vms.remove(&name);
                }
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
        spec.validate()?;
        if self.vms.contains_key(&spec.name) {
            return Err(Error::AlreadyExists { name: spec.name });
        }
        self.check_host_ports(&spec)?;
        let backend = self.backends.get(spec.backend, &spec.name)?;
        // Checks every file before anything is written.
        backend.prepare(&spec, &RunPaths::new(&self.deps.run_dir, &spec.name))?;
        self.deps.store.insert_vm(&spec, &VmPhase::Defined).await.map_err(|e| match self.vms.contains_key(&spec.name) {
            true => Error::AlreadyExists { name: spec.name.clone() },
            false => Error::Store(e),
        })?;
        self.deps.events.publish(&spec.name, EventKind::Created, 0, None).await;
        let name = spec.name.clone();
        let args = VmArgs { spec, phase: VmPhase::Defined, generation: 0, backend, deps: self.deps.clone() };
        let vm = match Actor::spawn_linked(None, VmActor, args, me.get_cell()).await {
            Ok((vm, _)) => vm,
            Err(e) => {
                let _ = self.deps.store.delete_vm(&name).await;
                return Err(Error::Unavailable(format!("cannot start the VM actor: {e}")));
            }
        };
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

    /// Brings a VM recorded in the database back under supervision.
    async fn load(&mut self, me: &ActorRef<RegistryMessage>, rec: VmRecord) {
        let name = rec.spec.name.clone();
        if rec.desired == Desired::Deleted {
            // A removal was interrupted: finish it.
            let _ = std::fs::remove_dir_all(RunPaths::new(&self.deps.run_dir, &name).dir);
            if let Err(e) = self.deps.store.delete_vm(&name).await {
                tracing::error!(vm = %name, error = %e, "cannot finish an interrupted removal");
            }
            return;
        }
        let backend = match self.backends.get(rec.spec.backend, &name) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(vm = %name, error = %e, "recorded VM has no backend");
                return;
            }
        };
        let phase = if rec.phase.is_active() {
            VmPhase::Failed { reason: format!("the supervisor restarted while the VM was {}", rec.phase.name()) }
        } else {
            rec.phase
        };
        let args = VmArgs { spec: rec.spec, phase, generation: rec.generation, backend, deps: self.deps.clone() };
        match Actor::spawn_linked(None, VmActor, args, me.get_cell()).await {
            Ok((vm, _)) => {
                self.vms.insert(name, vm);
            }
            Err(e) => tracing::error!(vm = %name, error = %e, "cannot start the VM actor"),
        }
    }
}
