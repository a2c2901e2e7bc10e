//! The Control actor: owns the hypervisor's control connection (QMP or the
//! CH API), forwards its events to the VM actor, and runs commands, each
//! under the backend's deadline.
//!
//! Connecting happens in a task so the VM actor is never blocked by a
//! socket that accepts and stays silent; the outcome arrives as a message.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;

use crate::backend::{Backend, ControlChannel, ControlError, GuestStatus, LaunchPlan, SavedState};
use crate::vm::{VmMessage, VmNotice};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlCommand {
    PowerButton,
    Quit,
    Pause,
    Resume,
    Status,
}

pub enum ControlMessage {
    Connected(Result<Box<dyn ControlChannel>, ControlError>),
    /// Valid once the VM actor has received `ControlUp`.
    Command(ControlCommand, RpcReplyPort<Result<Option<GuestStatus>, String>>),
    /// Pause the guest and save its whole state into the file (a
    /// snapshot); the guest stays paused.
    SaveState(SavedState, RpcReplyPort<Result<(), String>>),
    /// Where the hypervisor's display server listens, if it reports one
    /// (a TCP VNC port it picked itself).
    DisplayAddress(RpcReplyPort<Result<Option<String>, String>>),
}

/// The longest a save or load of a VM's state may take.
pub const STATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

pub struct ControlActor;

pub struct ControlArgs {
    pub vm: ActorRef<VmMessage>,
    pub backend: Arc<dyn Backend>,
    pub plan: LaunchPlan,
    /// A connection already under way (see `EarlyConnect`).
    pub early: Option<EarlyConnect>,
    /// A saved state to load (a start from a snapshot) before the channel
    /// reports itself up.
    pub incoming: Option<SavedState>,
}

type Connecting = tokio::task::JoinHandle<Result<Box<dyn ControlChannel>, ControlError>>;

/// A control connection begun right after the spawn, while the VM actor
/// still records the run: the hypervisor's own start, not our fsync,
/// bounds the time to `running`. Dropped unused (a start that fails after
/// the spawn), it is aborted.
pub struct EarlyConnect(Option<Connecting>);

impl EarlyConnect {
    pub fn start(backend: Arc<dyn Backend>, plan: LaunchPlan) -> EarlyConnect {
        EarlyConnect(Some(tokio::spawn(async move { backend.connect(&plan).await })))
    }
}

impl Drop for EarlyConnect {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

pub struct ControlState {
    vm: ActorRef<VmMessage>,
    channel: Option<Box<dyn ControlChannel>>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for ControlActor {
    type Msg = ControlMessage;
    type State = ControlState;
    type Arguments = ControlArgs;

    async fn pre_start(&self, me: ActorRef<Self::Msg>, args: ControlArgs) -> Result<ControlState, ActorProcessingErr> {
        let ControlArgs { vm, backend, plan, early, incoming } = args;
        let early = early.and_then(|mut e| e.0.take());
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let mut r = match early {
                Some(task) => task.await.unwrap_or_else(|e| Err(ControlError::Protocol(format!("control connection task: {e}")))),
                None => backend.connect(&plan).await,
            };
            // From this actor's start to greeting + capabilities answered.
            tracing::debug!(connect_ms = format!("{:.2}", t0.elapsed().as_secs_f64() * 1e3), ok = r.is_ok(), "control channel connected");
            if let (Ok(ch), Some(state)) = (r.as_mut(), incoming) {
                crate::crash_point!("restore.before-load");
                if let Err(e) = ch.load_state(&state, STATE_TIMEOUT).await {
                    r = Err(e);
                }
            }
            let _ = me.cast(ControlMessage::Connected(r));
        });
        Ok(ControlState { vm, channel: None, forwarder: None })
    }

    async fn handle(&self, _me: ActorRef<Self::Msg>, msg: ControlMessage, st: &mut ControlState) -> Result<(), ActorProcessingErr> {
        match msg {
            ControlMessage::Connected(Err(e)) => {
                let _ = st.vm.cast(VmNotice::ControlFailed { error: e.to_string() }.into());
            }
            ControlMessage::Connected(Ok(mut ch)) => {
                if let Some(mut events) = ch.take_events() {
                    let vm = st.vm.clone();
                    st.forwarder = Some(tokio::spawn(async move {
                        while let Some(ev) = events.recv().await {
                            if vm.cast(VmNotice::Control(ev).into()).is_err() {
                                break;
                            }
                        }
                    }));
                }
                match ch.status().await {
                    Ok(status) => {
                        st.channel = Some(ch);
                        let _ = st.vm.cast(VmNotice::ControlUp { status }.into());
                    }
                    Err(e) => {
                        let _ = st.vm.cast(VmNotice::ControlFailed { error: e.to_string() }.into());
                    }
                }
            }
            ControlMessage::Command(cmd, reply) => {
                let r = match st.channel.as_mut() {
                    None => Err("control channel is not connected".to_string()),
                    Some(ch) => match cmd {
                        ControlCommand::PowerButton => ch.power_button().await.map(|_| None),
                        ControlCommand::Quit => ch.quit().await.map(|_| None),
                        ControlCommand::Pause => ch.pause().await.map(|_| None),
                        ControlCommand::Resume => ch.resume().await.map(|_| None),
                        ControlCommand::Status => ch.status().await.map(Some),
                    }
                    .map_err(|e| e.to_string()),
                };
                let _ = reply.send(r);
            }
            ControlMessage::DisplayAddress(reply) => {
                let r = match st.channel.as_mut() {
                    None => Err("control channel is not connected".to_string()),
                    Some(ch) => ch.display_address().await.map_err(|e| e.to_string()),
                };
                let _ = reply.send(r);
            }
            ControlMessage::SaveState(state, reply) => {
                let r = match st.channel.as_mut() {
                    None => Err("control channel is not connected".to_string()),
                    Some(ch) => ch.save_state(&state, STATE_TIMEOUT).await.map_err(|e| e.to_string()),
                };
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<Self::Msg>, st: &mut ControlState) -> Result<(), ActorProcessingErr> {
        if let Some(f) = st.forwarder.take() {
            f.abort();
        }
        Ok(())
    }
}
