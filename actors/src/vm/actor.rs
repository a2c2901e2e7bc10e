//! The VM actor: turns requests and child notices into `core::Event`s,
//! asks `core::step` what to do, and performs the effects it returns.
//! Every decision is the core's; this file only does I/O.
//!
//! Nothing here blocks the mailbox for long: control commands and the
//! ladder's waits run as tasks or timers that report back as messages, so
//! a VM stays responsive (and stoppable) while its guest is wedged.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use regex::Regex;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::{self, Core, Denied, Effect, Ending, Event, Policy, Record, StartFailure};
use super::messages::{StopOutcome, VmMessage, VmNotice, VmRequest, WaitFor};
use super::phase::{ExitInfo, Rung, VmPhase};
use crate::backend::{Backend, ControlEvent, GuestStatus, LaunchPlan, RunPaths};
use crate::board::{StatusBoard, VmInfo};
use crate::console::{ConsoleActor, ConsoleArgs, ConsoleFollow, ConsoleMessage, RING_BYTES};
use crate::control::{ControlActor, ControlArgs, ControlCommand, ControlMessage};
use crate::crash_point;
use crate::error::{Error, Result};
use crate::events::{EventBus, EventKind};
use crate::process::{self, ProcessActor, ProcessArgs, ProcessMessage, Watch};
use crate::registry::RegistryMessage;
use crate::spec::{OnPanic, VmSpec};
use crate::store::{Desired, RunRecord, Store};

#[path = "snapshot.rs"]
mod snapshot;

/// How long an exit waits for the control channel's last events.
const EXIT_DRAIN: Duration = Duration::from_millis(500);
/// How long the Quit, SIGTERM and SIGKILL rungs each wait for the exit.
pub const RUNG_WAIT: Duration = Duration::from_millis(core::RUNG_WAIT_MS);
/// A child actor that fails more often than this within a minute is not
/// restarted again (its VM keeps running, without it).
const CHILD_RESTARTS_PER_MINUTE: usize = 5;

/// What every VM actor shares with the rest of the runtime.
pub struct VmDeps {
    pub store: Store,
    pub events: EventBus,
    pub board: StatusBoard,
    pub run_dir: PathBuf,
    pub registry: ActorRef<RegistryMessage>,
    pub control_timeout: Duration,
    pub net: Arc<crate::netmgr::NetManager>,
    pub images: Arc<paddock_images::ImageCache>,
    /// Where VMs' own disks live (`STATE_DIR/vms/<name>`).
    pub state_dir: PathBuf,
    /// Stamped on every hypervisor and run directory this supervisor makes.
    pub instance: String,
    /// The daemon's console log bounds (a spec may override them).
    pub console_log: crate::bounds::ConsoleLogLimits,
    /// How hypervisors are confined (identity, filter, limits).
    pub confine: crate::confine::Confinement,
}

pub struct VmArgs {
    pub spec: VmSpec,
    pub phase: VmPhase,
    pub generation: u64,
    /// The VM's creation is not acknowledged yet (an `up` in progress).
    pub provisional: bool,
    pub backend: Arc<dyn Backend>,
    pub deps: Arc<VmDeps>,
    /// Set when the VM comes from the database after a supervisor restart.
    pub recovery: Option<Recovery>,
}

/// What a supervisor restart found for a recorded VM.
pub enum Recovery {
    /// Nothing was running (the VM was stopped, or never started).
    Idle { provisional: bool },
    /// The recorded process is alive and verified; take it back.
    Adopt { run_id: i64, pid: i32, pidfd: std::os::fd::OwnedFd, provisional: bool, stop: bool, done: tokio::sync::oneshot::Sender<()> },
    /// The recorded process is gone; handle it as a crash.
    Lost { reason: String, run_id: Option<i64>, done: tokio::sync::oneshot::Sender<()> },
}

pub struct VmActor;

/// The I/O side of one life of the hypervisor process (its decisions are
/// in `core::Run`).
struct Run {
    pid: i32,
    run_id: Option<i64>,
    plan: LaunchPlan,
    process: ActorRef<ProcessMessage>,
    control: Option<ActorRef<ControlMessage>>,
    console: Option<ActorRef<ConsoleMessage>>,
    /// Ready: the console pattern (if any) matched and the probe (if any)
    /// answered, both in the current boot.
    ready: bool,
    console_ready: bool,
    probe_ready: bool,
    /// Counts guest reboots within this run; a probe answer names its boot.
    boot: u64,
    /// Where this run's output starts in console.log (see ConsoleArgs).
    ready_from: u64,
    probe_target: Option<crate::probe::ProbeTarget>,
    probe: Option<crate::probe::Probe>,
    /// The guest reported a panic that ends the run (pvpanic).
    panicked: bool,
    /// The last SHUTDOWN event: Some(true) if the guest asked for it.
    shutdown_by_guest: Option<bool>,
    /// The control channel delivered its last event.
    control_closed: bool,
    /// The vhost-user vsock device process, stopped after the hypervisor.
    vsock_device: Option<crate::vsock::Device>,
    early_control: Option<crate::control::EarlyConnect>,
    /// The saved state a start from a snapshot loads (taken by the first
    /// Control actor).
    incoming: Option<crate::backend::SavedState>,
}

pub struct VmState {
    name: String,
    spec: VmSpec,
    generation: u64,
    paths: RunPaths,
    backend: Arc<dyn Backend>,
    deps: Arc<VmDeps>,
    ready_pattern: Option<Regex>,
    /// Every decision's state.
    core: Core,
    run: Option<Run>,
    start_waiters: Vec<(WaitFor, RpcReplyPort<Result<VmInfo>>)>,
    stop_waiters: Vec<RpcReplyPort<Result<StopOutcome>>>,
    remove_waiters: Vec<RpcReplyPort<Result<()>>>,
    /// When the current stop began (for its answer).
    stop_started: Instant,
    /// The error a failed launch is answered with (richer than a reason).
    launch_error: Option<Error>,
    /// The end of a stop could not be written: its answer says so.
    stop_unrecorded: Option<Error>,
    accel: Option<crate::spec::Accel>,
    /// Signalled once recovery of this VM finished (adopted or not).
    recovered: Option<tokio::sync::oneshot::Sender<()>>,
    recovery: Option<Recovery>,
    /// `rm --volumes`: the data disk goes too.
    remove_volumes: bool,
    /// An exit waiting for the control channel to drain.
    pending_exit: Option<(i32, ExitInfo)>,
    /// When children were restarted lately (bounded per minute).
    child_restarts: VecDeque<Instant>,
}

/// Why an event was not acted on.
enum Refused {
    Denied(Denied),
    /// A durable write failed; nothing changed.
    Unrecorded(Error),
}

impl Actor for VmActor {
    type Msg = VmMessage;
    type State = VmState;
    type Arguments = VmArgs;

    async fn pre_start(&self, _me: ActorRef<VmMessage>, a: VmArgs) -> std::result::Result<VmState, ActorProcessingErr> {
        let paths = RunPaths::new(&a.deps.run_dir, &a.spec.name);
        // Validated when the spec was accepted; a stored spec that no longer
        // compiles just loses readiness detection.
        let ready_pattern = a.spec.ready_pattern.as_deref().and_then(|p| Regex::new(p).ok());
        let streak = match a.deps.store.load_streak(&a.spec.name).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(vm = %a.spec.name, error = %e, "cannot read the restart streak; starting a new one");
                Default::default()
            }
        };
        let policy = Policy { restart: a.spec.restart.clone(), on_panic: a.spec.on_panic };
        let st = VmState {
            name: a.spec.name.clone(),
            core: Core::new(a.phase, policy, !a.provisional, streak),
            spec: a.spec,
            generation: a.generation,
            paths,
            backend: a.backend,
            deps: a.deps,
            ready_pattern,
            run: None,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            remove_waiters: Vec::new(),
            stop_started: Instant::now(),
            launch_error: None,
            stop_unrecorded: None,
            accel: None,
            recovered: None,
            recovery: a.recovery,
            remove_volumes: false,
            pending_exit: None,
            child_restarts: VecDeque::new(),
        };
        st.post_board();
        Ok(st)
    }

    async fn post_start(&self, me: ActorRef<VmMessage>, st: &mut VmState) -> std::result::Result<(), ActorProcessingErr> {
        if let Some(r) = st.recovery.take() {
            st.recover(&me, r).await;
        }
        Ok(())
    }

    async fn handle(&self, me: ActorRef<VmMessage>, msg: VmMessage, st: &mut VmState) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            VmMessage::Request(r) => match r {
                VmRequest::Start { wait, rollback, reply } => st.on_start(&me, wait, rollback, reply).await,
                VmRequest::Stop { graceful, reply } => st.on_stop(&me, graceful, reply).await,
                VmRequest::Pause { reply } => st.on_pause(&me, true, reply).await,
                VmRequest::Resume { reply } => st.on_pause(&me, false, reply).await,
                VmRequest::Remove { force, volumes, reply } => st.on_remove(&me, force, volumes, reply).await,
                VmRequest::Follow { reply } => st.on_follow(reply).await,
                VmRequest::Attach { reply } => st.on_attach(reply),
                VmRequest::Snapshot { snapshot, then, reply } => st.on_snapshot(&me, snapshot, then, reply),
            },
            VmMessage::Notice(n) => match n {
                VmNotice::RestartNow { token } => {
                    let _ = st.apply(&me, Event::RestartDue { token }).await;
                }
                VmNotice::PauseDone { result, pause, reply } => st.on_pause_done(&me, result, pause, reply).await,
                VmNotice::SnapshotDone { result, then, reply } => st.on_snapshot_done(&me, result, then, reply).await,
                VmNotice::ProcessExited { pid, exit } => st.on_exit(&me, pid, exit).await,
                VmNotice::ExitDrained { pid } => {
                    if let Some((p, exit)) = st.pending_exit.filter(|(p, _)| *p == pid) {
                        st.finish_exit(&me, p, exit).await;
                    }
                }
                VmNotice::ControlUp { status } => st.on_control_up(&me, status).await,
                VmNotice::ControlFailed { error } => {
                    tracing::warn!(vm = %st.name, pid = ?st.run.as_ref().map(|r| r.pid), %error, "control channel failed");
                    let _ = st.apply(&me, Event::ControlFailed { error }).await;
                    st.finish_recovery();
                }
                VmNotice::ReconnectControl => {
                    let _ = st.apply(&me, Event::ReconnectDue).await;
                }
                VmNotice::Control(ev) => st.on_control_event(&me, ev).await,
                VmNotice::ConsoleReady => st.on_console_ready().await,
                VmNotice::ProbeReady { boot } => st.on_probe_ready(boot).await,
                VmNotice::LadderTimeout { attempt, rung, deadline_ms } => {
                    if st.apply(&me, Event::RungTimeout { attempt, rung, deadline_ms }).await.is_ok() {
                        tracing::info!(vm = %st.name, rung = rung.as_str(), "rung timed out");
                    }
                }
                VmNotice::LadderActionFailed { attempt, rung, error } => {
                    if st.apply(&me, Event::RungFailed { attempt, rung }).await.is_ok() {
                        tracing::info!(vm = %st.name, rung = rung.as_str(), %error, "rung failed");
                    }
                }
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<VmMessage>,
        evt: SupervisionEvent,
        st: &mut VmState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        // Overrides ractor's default, which would stop this actor (and so
        // forget the VM) whenever any child stops.
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            let Some(run) = st.run.as_mut() else { return Ok(()) };
            let id = cell.get_id();
            let child = if run.console.as_ref().is_some_and(|c| c.get_id() == id) {
                run.console = None;
                "console"
            } else if run.control.as_ref().is_some_and(|c| c.get_id() == id) {
                run.control = None;
                "control"
            } else {
                tracing::error!(vm = %st.name, error = %err, "process watch actor failed");
                return Ok(());
            };
            if !may_restart_child(&mut st.child_restarts, Instant::now()) {
                tracing::error!(vm = %st.name, child, error = %err, "child actor keeps failing; not restarted again");
                return Ok(());
            }
            tracing::warn!(vm = %st.name, child, error = %err, "child actor failed; restarting it alone");
            // One-for-one: the VM keeps running; only the child comes back.
            let restarted = match child {
                "console" => st.spawn_console(&me).await,
                // The core reconnects a channel that failed, with backoff.
                _ => st.apply(&me, Event::ControlFailed { error: err.to_string() }).await.is_ok(),
            };
            if restarted {
                let g = st.generation;
                st.deps.events.publish(&st.name, EventKind::ChildRestarted { child: child.into() }, g, None).await;
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<VmMessage>, st: &mut VmState) -> std::result::Result<(), ActorProcessingErr> {
        // Stopping the actor (supervisor shutdown) leaves the VM running.
        if let Some(run) = st.run.take() {
            run.stop_children();
        }
        for (_, w) in st.start_waiters.drain(..) {
            let _ = w.send(Err(Error::Unavailable("the supervisor is shutting down".into())));
        }
        Ok(())
    }
}

impl Run {
    fn new(pid: i32, run_id: Option<i64>, plan: LaunchPlan, process: ActorRef<ProcessMessage>) -> Self {
        Run {
            pid,
            run_id,
            plan,
            process,
            control: None,
            console: None,
            ready: false,
            console_ready: false,
            probe_ready: false,
            boot: 0,
            ready_from: 0,
            probe_target: None,
            probe: None,
            panicked: false,
            shutdown_by_guest: None,
            control_closed: false,
            vsock_device: None,
            early_control: None,
            incoming: None,
        }
    }

    fn stop_children(&self) {
        self.process.stop(None);
        if let Some(c) = &self.control {
            c.stop(None);
        }
        if let Some(c) = &self.console {
            c.stop(None);
        }
    }
}

impl VmState {
    fn info(&self) -> VmInfo {
        VmInfo {
            name: self.name.clone(),
            backend: self.spec.backend.as_str().to_string(),
            phase: self.core.phase.clone(),
            generation: self.generation,
            ready: self.run.as_ref().is_some_and(|r| r.ready),
            pid: self.run.as_ref().map(|r| r.pid),
            accel: self.accel.map(|a| format!("{a:?}").to_lowercase()),
            addresses: self.run.as_ref().map(|r| r.plan.guest_address.clone()).unwrap_or_default(),
            network: self.run.as_ref().and_then(|r| r.plan.network.clone()),
            vsock: self.run.as_ref().and_then(|r| r.plan.vsock.clone()),
            console_log: self.paths.console_log.clone(),
            stats: None,
            spec: self.spec.clone(),
        }
    }

    fn post_board(&self) {
        self.deps.board.put(self.info());
    }

    // ------------------------------------------------------------ the core

    /// The one way anything changes: ask the core, write what must be
    /// durable (nothing changes if that fails), take the new state, then
    /// perform the effects in order.
    async fn apply(&mut self, me: &ActorRef<VmMessage>, ev: Event) -> std::result::Result<(), Refused> {
        let (next, effects) = core::step(&self.core, &ev, crate::store::now_ms()).map_err(Refused::Denied)?;
        let exited = matches!(ev, Event::Exited(_) | Event::Lost { .. });
        for f in &effects {
            if let Effect::Record(r) = f {
                let written = match r {
                    Record::Desired(d) => self.deps.store.set_desired(&self.name, *d).await,
                    Record::Confirm => self.deps.store.confirm(&self.name).await,
                };
                if let Err(e) = written {
                    tracing::error!(vm = %self.name, error = %error_chain(&e), record = ?r, "cannot record; nothing done");
                    return Err(Refused::Unrecorded(self.not_recorded(record_words(r), &e)));
                }
            }
        }
        if next.ladder.is_some() && self.core.ladder.is_none() {
            crash_point!("stop.after-intent");
        }
        let phase_changed = next.phase != self.core.phase;
        let durable = effects.iter().any(|f| matches!(f, Effect::Phase { durable: true }));
        let mut written = false;
        let note = effects.iter().find_map(|f| match f {
            Effect::Crashed { note } => note.clone(),
            _ => None,
        });
        if phase_changed && durable {
            // Phase and its event in one transaction: one fsync.
            let change = crate::store::RowChange::Phase { name: self.name.clone(), phase: next.phase.clone(), generation: self.generation + 1, confirm: false };
            let result = match note {
                None => self.deps.events.publish_with(change, EventKind::Phase { phase: next.phase.clone() }, self.generation + 1).await.map(drop),
                Some(_) => self.deps.store.set_phase(&self.name, &next.phase, self.generation + 1).await,
            };
            match result {
                Ok(()) => written = true,
                // An exit happened whether or not it is written: the stop
                // is answered with the failure.
                Err(e) if exited => self.stop_unrecorded = Some(self.not_recorded("it stopped", &e)),
                Err(e) => return Err(Refused::Unrecorded(self.not_recorded(phase_words(&next.phase), &e))),
            }
        }
        self.core = next;
        if phase_changed {
            self.generation += 1;
            if !written {
                if let Err(e) = self.deps.store.set_phase(&self.name, &self.core.phase, self.generation).await {
                    tracing::error!(vm = %self.name, error = %e, "cannot persist phase");
                }
            }
            if written && note.is_none() {
                // Its event went with the write.
                tracing::info!(vm = %self.name, phase = self.core.phase.name(), generation = self.generation, "phase");
                self.post_board();
            } else {
                self.announce_phase(note).await;
            }
        }
        for f in effects {
            self.perform(me, f).await;
        }
        Ok(())
    }

    /// Boxed: an effect (the launch) applies events in turn.
    fn perform<'a>(&'a mut self, me: &'a ActorRef<VmMessage>, f: Effect) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move { self.perform_now(me, f).await })
    }

    async fn perform_now(&mut self, me: &ActorRef<VmMessage>, f: Effect) {
        match f {
            Effect::Record(_) | Effect::Phase { .. } => {}
            Effect::SaveStreak => {
                if let Err(e) = self.deps.store.save_streak(&self.name, &self.core.streak).await {
                    tracing::error!(vm = %self.name, error = %e, "cannot persist the restart streak");
                }
            }
            Effect::Launch => self.launch(me).await,
            Effect::Connect { delay_ms: 0 } => {
                self.spawn_control(me).await;
            }
            Effect::Connect { delay_ms } => {
                tracing::info!(vm = %self.name, delay_ms, "control channel: reconnecting after a delay");
                me.send_after(Duration::from_millis(delay_ms), || VmNotice::ReconnectControl.into());
            }
            Effect::Kill => {
                if let Some(run) = &self.run {
                    tracing::error!(vm = %self.name, pid = run.pid, "start abandoned; killing the hypervisor");
                    run.process.cast(ProcessMessage::Signal(libc::SIGKILL)).ok();
                }
            }
            Effect::Rung { attempt, rung, deadline_ms } => self.act_rung(me, attempt, rung, deadline_ms).await,
            Effect::Rearm { attempt, rung, deadline_ms } => {
                tracing::info!(vm = %self.name, rung = rung.as_str(), "a later stop shortened the wait");
                arm_rung_timer(me, attempt, rung, deadline_ms);
            }
            Effect::Booted => self.on_booted(),
            Effect::FailStarts { why } => {
                let launch_error = self.launch_error.take();
                let mut first = launch_error;
                for (_, w) in self.start_waiters.drain(..) {
                    let e = match (&why, first.take()) {
                        (_, Some(e)) => e,
                        (StartFailure::Stopped, None) => Error::Conflict { name: self.name.clone(), message: "stopped before it became ready".into() },
                        (StartFailure::Failed(reason), None) => Error::StartFailed { name: self.name.clone(), reason: reason.clone() },
                    };
                    let _ = w.send(Err(e));
                }
            }
            Effect::AnswerStops => self.answer_stops(),
            Effect::Remove => self.remove_now(me).await,
            Effect::RollBack => self.delete_everything(me).await,
            Effect::ScheduleRestart { token, delay_ms, attempt, bound_ms } => {
                tracing::info!(vm = %self.name, attempt, delay_ms, "restart scheduled");
                let kind = EventKind::RestartScheduled { attempt, delay_ms, bound_ms };
                self.deps.events.publish(&self.name, kind, self.generation, None).await;
                me.send_after(Duration::from_millis(delay_ms), move || VmNotice::RestartNow { token }.into());
            }
            Effect::Crashed { note } => {
                let pid = self.run.as_ref().map(|r| r.pid);
                tracing::warn!(vm = %self.name, ?pid, phase = ?self.core.phase, fault = note.as_deref().unwrap_or(""), "hypervisor crashed");
            }
            Effect::GiveUp { reason } => {
                tracing::warn!(vm = %self.name, %reason, "restart policy gives up");
                let _ = self.apply(me, Event::GaveUp { reason }).await;
            }
            Effect::Control { pause } => {
                // Only a request's own task asks (see `on_pause`).
                tracing::debug!(vm = %self.name, pause, "control command requested");
            }
        }
    }

    async fn announce_phase(&mut self, message: Option<String>) {
        tracing::info!(vm = %self.name, phase = self.core.phase.name(), generation = self.generation, "phase");
        self.deps
            .events
            .publish(&self.name, EventKind::Phase { phase: self.core.phase.clone() }, self.generation, message)
            .await;
        self.post_board();
    }

    fn not_recorded(&self, what: &str, e: &dyn std::error::Error) -> Error {
        Error::NotRecorded { name: self.name.clone(), what: what.to_string(), detail: error_chain(e) }
    }

    fn conflict(&self, message: impl Into<String>) -> Error {
        Error::Conflict { name: self.name.clone(), message: message.into() }
    }

    fn refused(&self, r: Refused) -> Error {
        match r {
            Refused::Unrecorded(e) => e,
            Refused::Denied(Denied::Busy) => Error::Busy { name: self.name.clone() },
            Refused::Denied(Denied::Active { phase }) => {
                self.conflict(format!("is {phase}; stop it first (`paddock stop {}`) or remove it with --force", self.name))
            }
            Refused::Denied(d) => self.conflict(d.to_string()),
        }
    }

    // ---------------------------------------------------------------- start

    async fn on_start(&mut self, me: &ActorRef<VmMessage>, wait: WaitFor, up: bool, reply: RpcReplyPort<Result<VmInfo>>) {
        // Queued first: the launch (an effect) may answer it.
        self.start_waiters.push((wait, reply));
        if let Err(r) = self.apply(me, Event::Start { up, reply: true }).await {
            let e = self.refused(r);
            if let Some((_, reply)) = self.start_waiters.pop() {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// The start's I/O. Its outcome goes back to the core as `Launching`,
    /// `Spawned` or `LaunchFailed`.
    async fn launch(&mut self, me: &ActorRef<VmMessage>) {
        if let Err(e) = self.begin_start(me).await {
            let reason = match &e {
                Error::StartFailed { reason, .. } => reason.clone(),
                other => error_chain(other),
            };
            self.launch_error = Some(e);
            let _ = self.apply(me, Event::LaunchFailed { reason }).await;
            self.launch_error = None;
        }
    }

    async fn begin_start(&mut self, me: &ActorRef<VmMessage>) -> Result<()> {
        let mut steps = crate::steps::Steps::new();
        let lease = match self.spec.network.mode {
            crate::spec::NetworkMode::Tap => Some(self.deps.net.acquire(&self.name).await?),
            _ => None,
        };
        steps.lap("lease");
        let incoming = self.snapshot_incoming().await?;
        let spec = self.materialize_disks(lease.as_ref()).await?;
        steps.lap("disks");
        let mut plan = self.backend.prepare(&spec, &self.paths, lease.as_ref())?;
        if let Some(i) = &incoming {
            self.backend.incoming(&spec, &i.source, &mut plan)?;
        }
        self.make_run_dir()?;
        crash_point!("start.after-dir");
        // Our own directory: sockets left by a previous run of this VM are
        // stale once nobody listens on them (a hypervisor refuses to bind
        // over an existing file, Cloud Hypervisor #7784). One that answers
        // belongs to a live process: never pull it from under it.
        for p in [&self.paths.control_socket, &self.paths.serial_socket] {
            remove_stale_socket(p).map_err(|e| Error::StartFailed { name: self.name.clone(), reason: error_chain(&e) })?;
        }
        self.backend.before_spawn(&spec, &self.paths)?;
        let jail = self.confine(&spec, &mut plan).await?;
        if let (Some(j), Some(i)) = (&jail, &incoming) {
            // The snapshot's own hypervisor files (Cloud Hypervisor reads
            // them) go to this VM's identity.
            crate::confine::files::give_tree(&i.state.dir, &j.identity).map_err(|e| Error::StartFailed { name: self.name.clone(), reason: error_chain(&e) })?;
        }
        steps.lap("argv+run_dir");
        self.apply(me, Event::Launching).await.map_err(|r| self.refused(r))?;
        steps.lap("starting_durable");
        // QEMU appends each run to console.log: readiness counts from its
        // current end. Cloud Hypervisor truncates it at boot: from 0.
        let ready_from = match self.spec.backend {
            crate::spec::BackendKind::Qemu => std::fs::metadata(&self.paths.console_log).map(|m| m.len()).unwrap_or(0),
            crate::spec::BackendKind::CloudHypervisor => 0,
        };
        let probe_target = crate::probe::target(&self.spec, lease.as_ref());
        let vsock_device = self.start_vsock_device(&plan, jail.as_ref()).await.map_err(|reason| Error::StartFailed { name: self.name.clone(), reason })?;
        let spawned = match process::spawn(&plan, &self.deps.instance, jail.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                if let Some(d) = vsock_device {
                    d.stop(&self.name).await;
                }
                return Err(Error::StartFailed { name: self.name.clone(), reason: error_chain(&e) });
            }
        };
        let pid = spawned.pid;
        let early_control = crate::control::EarlyConnect::start(self.backend.clone(), plan.clone());
        steps.lap("spawn");
        crash_point!("start.after-spawn");
        tracing::info!(vm = %self.name, pid, accel = ?plan.accel, "hypervisor started");
        self.accel = Some(plan.accel);
        let record = RunRecord {
            vm: self.name.clone(),
            pid,
            start_time: process::process_start_time(pid).unwrap_or(0),
            boot_id: process::boot_id().unwrap_or_default(),
            paths: self.paths.clone(),
        };
        let run_id = match self.deps.store.record_run(&record).await {
            Ok(id) => Some(id),
            Err(e) => {
                // Never a hypervisor without a record: end it before answering.
                tracing::error!(vm = %self.name, pid, error = %e, "cannot record run; killing the hypervisor");
                kill_unrecorded(spawned).await;
                if let Some(d) = vsock_device {
                    d.stop(&self.name).await;
                }
                let reason = format!("cannot record the hypervisor run in the state database: {}", error_chain(&e));
                return Err(Error::StartFailed { name: self.name.clone(), reason });
            }
        };
        steps.lap("run_recorded");
        crash_point!("start.after-run-recorded");
        // Kept to end the hypervisor if nothing can watch it (the actor
        // system is shutting down): a failed start leaves nothing running.
        let pidfd = spawned.pidfd.try_clone().ok();
        let watch = ProcessArgs { vm: me.clone(), watch: Watch::Child(spawned) };
        let process = match Actor::spawn_linked(None, ProcessActor, watch, me.get_cell()).await {
            Ok((p, _)) => p,
            Err(e) => {
                tracing::error!(vm = %self.name, pid, error = %e, "cannot watch the hypervisor; killing it");
                if let Some(fd) = &pidfd {
                    let _ = process::pidfd_signal(fd, libc::SIGKILL);
                }
                if let Some(d) = vsock_device {
                    d.stop(&self.name).await;
                }
                return Err(Error::Unavailable(format!("process actor: {e}")));
            }
        };
        let mut run = Run::new(pid, run_id, plan, process);
        run.vsock_device = vsock_device;
        run.early_control = Some(early_control);
        run.ready_from = ready_from;
        run.probe_target = probe_target;
        let restored = incoming.map(|i| {
            run.incoming = Some(i.state);
            (i.ready, i.snapshot)
        });
        self.run = Some(run);
        // The core asks for the control channel (`Connect`).
        let _ = self.apply(me, Event::Spawned).await;
        if let Some((ready, snapshot)) = restored {
            self.on_restoring(me, ready, snapshot).await;
        }
        self.post_board();
        steps.lap("watchers");
        steps.log(&self.name, "start steps");
        Ok(())
    }

    /// The vhost-user vsock device, started before the hypervisor (which
    /// connects to it). One left by an earlier life of this VM (a daemon
    /// that died between the two) is stopped first.
    async fn start_vsock_device(&self, plan: &LaunchPlan, jail: Option<&crate::confine::Jail>) -> std::result::Result<Option<crate::vsock::Device>, String> {
        let Some(dp) = &plan.vsock_device else { return Ok(None) };
        if let Some(old) = crate::vsock::find_device(&self.deps.run_dir, &self.name).and_then(|pid| crate::vsock::Device::adopt(&self.name, pid)) {
            old.stop(&self.name).await;
        }
        let confined = jail.map(|j| j.child_setup());
        crate::vsock::Device::start(&self.name, dp, self.deps.control_timeout, confined).await.map(Some).map_err(|e| e.to_string())
    }

    /// The cgroup's OOM killer as the reason of an exit (confined VMs).
    fn confined_fault(&self) -> Option<String> {
        self.deps.confine.enabled().then(|| crate::confine::exit_fault(&self.deps.instance, &self.name)).flatten()
    }

    /// The VM's identity, files and filter (`confine`); None when off.
    async fn confine(&self, spec: &VmSpec, plan: &mut LaunchPlan) -> Result<Option<crate::confine::Jail>> {
        let disk_dir = crate::disks::vm_dir(&self.deps.state_dir, &self.name);
        let input = crate::confine::jail::JailInputs {
            store: &self.deps.store,
            spec,
            original: &self.spec,
            disk_dir: &disk_dir,
            images: &self.deps.images,
            instance: &self.deps.instance,
        };
        crate::confine::jail::prepare(&self.deps.confine, input, plan)
            .await
            .map_err(|e| Error::StartFailed { name: self.name.clone(), reason: error_chain(&e) })
    }

    /// The VM's run directory, stamped with our instance. One that another
    /// paddock made (a run dir of its own nested in ours) is refused.
    fn make_run_dir(&self) -> Result<()> {
        let dir = &self.paths.dir;
        let stamp = dir.join(crate::recovery::DIR_STAMP);
        if crate::recovery::dir_is_foreign(dir, &self.deps.instance) {
            let reason = format!("{dir:?} belongs to another paddock; choose another VM name or run dir");
            return Err(Error::StartFailed { name: self.name.clone(), reason });
        }
        crate::private_dir::ensure_private_dir(dir).map_err(|e| Error::io(format!("cannot create {dir:?}"), e))?;
        crate::recovery::stamp_dir(dir, &self.deps.instance).map_err(|e| Error::io(format!("cannot write {stamp:?}"), e))
    }

    /// The overlay, data disk and seed of this VM, made (or found) on the
    /// blocking pool; returns the spec the backend sees.
    async fn materialize_disks(&self, lease: Option<&crate::netmgr::Lease>) -> Result<VmSpec> {
        let network = lease.map(|l| {
            let eth = paddock_images::Ethernet {
                // By MAC, never by name (Debian calls the NIC enp0s*).
                match_: Some(paddock_images::Match { macaddress: Some(l.mac.clone()), name: None }),
                set_name: Some("eth0".into()),
                addresses: vec![format!("{}/{}", l.addrs.guest, l.addrs.prefix)],
                // cloud-init 22.4 rejects netplan's `to: default`.
                routes: vec![paddock_images::Route { to: "0.0.0.0/0".into(), via: l.addrs.gateway.to_string() }],
                ..Default::default()
            };
            let mut cfg = paddock_images::NetworkConfig::default();
            cfg.ethernets.insert("eth0".into(), eth);
            cfg
        });
        let (spec, dir, images) = (self.spec.clone(), crate::disks::vm_dir(&self.deps.state_dir, &self.name), self.deps.images.clone());
        tokio::task::spawn_blocking(move || crate::disks::materialize(&spec, &dir, &images, network))
            .await
            .map_err(|e| Error::Unavailable(format!("disk worker: {e}")))?
    }

    async fn spawn_control(&mut self, me: &ActorRef<VmMessage>) -> bool {
        let Some(run) = self.run.as_mut() else { return false };
        // A channel that failed is replaced, never doubled.
        if let Some(old) = run.control.take() {
            old.stop(None);
        }
        let args = ControlArgs { vm: me.clone(), backend: self.backend.clone(), plan: run.plan.clone(), early: run.early_control.take(), incoming: run.incoming.take() };
        match Actor::spawn_linked(None, ControlActor, args, me.get_cell()).await {
            Ok((c, _)) => {
                run.control = Some(c);
                true
            }
            Err(e) => {
                tracing::error!(vm = %self.name, error = %e, "cannot spawn control actor");
                false
            }
        }
    }

    async fn spawn_console(&mut self, me: &ActorRef<VmMessage>) -> bool {
        let Some(run) = self.run.as_mut() else { return false };
        let args = ConsoleArgs {
            vm: me.clone(),
            paths: self.paths.clone(),
            ready_pattern: self.ready_pattern.clone(),
            limits: self.deps.console_log.with(self.spec.console_log.as_ref()),
            ready_from: run.ready_from,
        };
        match Actor::spawn_linked(None, ConsoleActor, args, me.get_cell()).await {
            Ok((c, _)) => {
                run.console = Some(c);
                true
            }
            Err(e) => {
                tracing::error!(vm = %self.name, error = %e, "cannot spawn console actor");
                false
            }
        }
    }

    /// Asks the hypervisor where its display server listens (a port it
    /// picked) and shows it in `addresses`, replacing the last run's.
    async fn learn_display_address(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let Some(control) = run.control.clone() else { return };
        // QMP's own deadline bounds the query; this covers the mailbox.
        let answer = control.call(ControlMessage::DisplayAddress, Some(Duration::from_secs(5))).await;
        match answer {
            Ok(ractor::rpc::CallResult::Success(Ok(Some(address)))) => {
                run.plan.guest_address.retain(|a| !a.starts_with("vnc "));
                run.plan.guest_address.push(address);
            }
            Ok(ractor::rpc::CallResult::Success(Ok(None))) => tracing::warn!(vm = %self.name, "the hypervisor reports no display server"),
            Ok(ractor::rpc::CallResult::Success(Err(e))) => tracing::warn!(vm = %self.name, error = %e, "cannot ask where the display listens"),
            _ => tracing::warn!(vm = %self.name, "the display address was not answered in time"),
        }
    }

    async fn on_control_up(&mut self, me: &ActorRef<VmMessage>, status: GuestStatus) {
        let Some(run) = self.run.as_ref() else { return };
        let pid = run.pid;
        if run.console.is_none() {
            self.spawn_console(me).await;
        }
        self.start_probe(me);
        if crate::display::reported_by_hypervisor(&self.spec) {
            self.learn_display_address().await;
        }
        if self.core.phase == VmPhase::Starting {
            crash_point!("start.before-running");
        }
        let paused = status == GuestStatus::Paused;
        if let Err(Refused::Unrecorded(e)) = self.apply(me, Event::ControlUp { paused }).await {
            // The answer to up/start says "running": only once that (and,
            // for an up, that the VM exists) is in the database.
            let reason = format!("{e} (it booted, and was killed again)");
            tracing::error!(vm = %self.name, pid, %reason, "start failed; killing the hypervisor");
            let _ = self.apply(me, Event::BootUnrecorded { reason }).await;
        }
        self.post_board();
        self.finish_recovery();
    }

    /// The boot is recorded: answer who waited for Running, and who waited
    /// for readiness if there is nothing to wait for (or it came already).
    fn on_booted(&mut self) {
        crate::disks::data_disk_used(&crate::disks::vm_dir(&self.deps.state_dir, &self.name));
        let no_pattern = self.run.as_ref().is_some_and(|r| r.ready || (self.ready_pattern.is_none() && r.probe_target.is_none()));
        let info = self.info();
        let waiters = std::mem::take(&mut self.start_waiters);
        for (wait, reply) in waiters {
            if wait == WaitFor::Running || no_pattern {
                let _ = reply.send(Ok(info.clone()));
            } else {
                self.start_waiters.push((wait, reply));
            }
        }
    }

    fn finish_recovery(&mut self) {
        if let Some(done) = self.recovered.take() {
            let _ = done.send(());
        }
    }

    /// Probes the guest's port for the current boot, unless it already
    /// answered or is being probed.
    fn start_probe(&mut self, me: &ActorRef<VmMessage>) {
        let Some(run) = self.run.as_mut() else { return };
        let Some(target) = run.probe_target else { return };
        if run.probe.is_none() && !run.probe_ready {
            run.probe = Some(crate::probe::spawn(me.clone(), self.name.clone(), target, run.boot));
        }
    }

    async fn on_console_ready(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        run.console_ready = true;
        self.on_ready().await;
    }

    async fn on_probe_ready(&mut self, boot: u64) {
        let Some(run) = self.run.as_mut().filter(|r| r.boot == boot) else { return };
        run.probe_ready = true;
        run.probe = None;
        self.on_ready().await;
    }

    /// The guest rebooted (QMP RESET, CH `rebooting`): it is not ready
    /// until the new boot's output and probe say so.
    async fn on_guest_reset(&mut self, me: &ActorRef<VmMessage>) {
        let Some(run) = self.run.as_mut() else { return };
        run.boot += 1;
        run.ready = false;
        run.console_ready = false;
        run.probe_ready = false;
        run.probe = None;
        // A console actor restarted later still counts from this boot on.
        run.ready_from = std::fs::metadata(&self.paths.console_log).map(|m| m.len()).unwrap_or(run.ready_from);
        let boot = run.boot;
        if let Some(c) = &run.console {
            let _ = c.cast(ConsoleMessage::Rearm);
        }
        tracing::info!(vm = %self.name, pid = run.pid, boot, "guest rebooted; readiness reset");
        self.deps.events.publish(&self.name, EventKind::GuestReset, self.generation, None).await;
        self.start_probe(me);
        self.post_board();
    }

    async fn on_ready(&mut self) {
        let pattern = self.ready_pattern.is_some();
        let Some(run) = self.run.as_mut() else { return };
        let probe = run.probe_target.is_some();
        if run.ready || (pattern && !run.console_ready) || (probe && !run.probe_ready) {
            return;
        }
        run.ready = true;
        tracing::info!(vm = %self.name, "ready");
        self.deps.events.publish(&self.name, EventKind::Ready, self.generation, None).await;
        self.post_board();
        // A console can match before the boot is recorded; the answer
        // waits for that (`on_control_up` gives it).
        if self.core.phase == VmPhase::Starting {
            return;
        }
        let info = self.info();
        for (_, reply) in self.start_waiters.drain(..) {
            let _ = reply.send(Ok(info.clone()));
        }
    }

    // ----------------------------------------------------------------- exit

    /// The hypervisor exited. Its last events (a guest panic, a guest
    /// shutdown) may still be in the control channel: a backend whose
    /// channel ends with `Closed` after all of them (QMP) is waited for,
    /// briefly, before the core judges how the VM ended.
    async fn on_exit(&mut self, me: &ActorRef<VmMessage>, pid: i32, exit: ExitInfo) {
        let Some(run) = self.run.as_ref().filter(|r| r.pid == pid) else { return };
        if self.backend.drains_events_after_exit() && self.core.is_ready_to_control() && !run.control_closed {
            self.pending_exit = Some((pid, exit));
            me.send_after(EXIT_DRAIN, move || VmNotice::ExitDrained { pid }.into());
            return;
        }
        self.finish_exit(me, pid, exit).await;
    }

    async fn finish_exit(&mut self, me: &ActorRef<VmMessage>, pid: i32, exit: ExitInfo) {
        self.pending_exit = None;
        if self.run.as_ref().map(|r| r.pid) != Some(pid) {
            return; // a notice from an earlier run
        }
        let Some(mut run) = self.run.take() else { return };
        run.stop_children();
        if let Some(d) = run.vsock_device.take() {
            // The hypervisor is gone, so nothing uses the device any more.
            d.stop(&self.name).await;
        }
        if let Some(id) = run.run_id {
            if let Err(e) = self.deps.store.end_run(id, &exit).await {
                tracing::error!(vm = %self.name, error = %e, "cannot record run end");
            }
        }
        self.remove_stale_sockets();
        let ending = Ending {
            exit,
            panicked: run.panicked,
            shutdown_by_guest: run.shutdown_by_guest,
            // The hypervisor's own record can turn a clean-looking exit
            // into a failure (CH exits 0 after a fatal vCPU error).
            fault: self.backend.exit_fault(&self.paths, &exit).or_else(|| self.confined_fault()),
            said: tail_of(&self.paths.stderr_log, 2048),
            jitter: fastrand::f64(),
        };
        tracing::info!(vm = %self.name, pid, %exit, "hypervisor exited");
        let _ = self.apply(me, Event::Exited(ending)).await;
    }

    fn remove_stale_sockets(&self) {
        for p in [&self.paths.control_socket, &self.paths.serial_socket] {
            let _ = std::fs::remove_file(p);
        }
        for p in [crate::vsock::host_socket(&self.paths), crate::vsock::device_socket(&self.paths)] {
            let _ = std::fs::remove_file(p);
        }
    }

    // ------------------------------------------------------------- recovery

    /// Takes a recorded VM back after a supervisor restart.
    async fn recover(&mut self, me: &ActorRef<VmMessage>, r: Recovery) {
        match r {
            Recovery::Idle { .. } => {
                // Nothing runs: sockets of the last run are stale.
                self.remove_stale_sockets();
            }
            Recovery::Adopt { run_id, pid, pidfd, provisional: _, stop, done } => {
                crash_point!("adopt.after-verify");
                self.recovered = Some(done);
                let lease = self.deps.net.lease_of_vm(&self.name).await.ok().flatten();
                // The prepared plan carries what a backend may still need
                // to finish an interrupted boot (CH's vm.create body);
                // if the host or files changed, the bare plan will do.
                // A VM whose desired state is stopped gets the bare plan:
                // nothing may boot it again (CH says `Created` after
                // `vm.shutdown`, so a supervisor that died before
                // `vmm.shutdown` leaves a VM that looks half-started).
                let prepared = if stop { None } else { Some(self.backend.prepare(&self.spec, &self.paths, lease.as_ref())) };
                let plan = match prepared {
                    Some(Ok(p)) => p,
                    Some(Err(e)) => {
                        tracing::debug!(vm = %self.name, error = %e, "adopting with the recorded paths only");
                        crate::backend::adoption_plan(&self.spec, &self.paths, lease.as_ref())
                    }
                    None => crate::backend::adoption_plan(&self.spec, &self.paths, lease.as_ref()),
                };
                self.accel = Some(plan.accel);
                let watch = Watch::Adopted { pid, pidfd };
                let process = match Actor::spawn_linked(None, ProcessActor, ProcessArgs { vm: me.clone(), watch }, me.get_cell()).await {
                    Ok((p, _)) => p,
                    Err(e) => {
                        tracing::error!(vm = %self.name, pid, error = %e, "cannot watch the adopted process");
                        self.finish_recovery();
                        return;
                    }
                };
                tracing::info!(vm = %self.name, pid, "adopted");
                // Where this run's output starts is unknown after a
                // supervisor restart: the console backlog counts (as before).
                let mut run = Run::new(pid, Some(run_id), plan, process);
                run.probe_target = crate::probe::target(&self.spec, lease.as_ref());
                if self.spec.vsock {
                    run.vsock_device = crate::vsock::find_device(&self.deps.run_dir, &self.name).and_then(|p| crate::vsock::Device::adopt(&self.name, p));
                }
                self.run = Some(run);
                        self.deps.events.publish(&self.name, EventKind::Adopted { pid }, self.generation, None).await;
                let desired = if stop { Desired::Stopped } else { Desired::Running };
                if self.apply(me, Event::Adopted { desired }).await.is_err() {
                    self.finish_recovery();
                }
                self.post_board();
            }
            Recovery::Lost { reason, run_id, done } => {
                tracing::warn!(vm = %self.name, %reason, "recorded process is gone");
                self.deps.events.publish(&self.name, EventKind::Lost { reason: reason.clone() }, self.generation, Some(reason)).await;
                if let Some(id) = run_id {
                    let _ = self.deps.store.end_run(id, &ExitInfo { code: None, signal: None }).await;
                }
                self.remove_stale_sockets();
                // It died while we were away: a crash, unless it was being
                // stopped, in which case the stop is complete.
                let _ = self.apply(me, Event::Lost { jitter: fastrand::f64() }).await;
                let _ = done.send(());
            }
        }
    }

    // ----------------------------------------------------------------- stop

    async fn on_stop(&mut self, me: &ActorRef<VmMessage>, graceful: Duration, reply: RpcReplyPort<Result<StopOutcome>>) {
        if self.core.ladder.is_none() {
            self.stop_started = Instant::now();
        }
        self.stop_waiters.push(reply);
        let graceful_ms = graceful.as_millis().min(u64::MAX as u128) as u64;
        if let Err(r) = self.apply(me, Event::Stop { graceful_ms, reply: true }).await {
            let e = self.refused(r);
            if let Some(reply) = self.stop_waiters.pop() {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn answer_stops(&mut self) {
        let (rung, exit) = match &self.core.phase {
            VmPhase::Stopped { rung, exit } => (*rung, *exit),
            _ => (None, None),
        };
        let outcome = StopOutcome { rung, exit, phase: self.core.phase.clone(), elapsed_ms: self.stop_started.elapsed().as_millis() as u64 };
        if let Some(r) = rung {
            tracing::info!(vm = %self.name, rung = r.as_str(), elapsed_ms = outcome.elapsed_ms, "stopped");
        }
        let unrecorded = self.stop_unrecorded.take();
        for w in self.stop_waiters.drain(..) {
            let r = match &unrecorded {
                Some(Error::NotRecorded { name, what, detail }) => {
                    Err(Error::NotRecorded { name: name.clone(), what: what.clone(), detail: detail.clone() })
                }
                Some(other) => Err(Error::Unavailable(other.to_string())),
                None => Ok(outcome.clone()),
            };
            let _ = w.send(r);
        }
        // An `rm --force` waits for the removal, not for this answer.
        if unrecorded.is_some() {
            for w in self.remove_waiters.drain(..) {
                let _ = w.send(Err(Error::Unavailable(format!("VM {:?} stopped but its end is not recorded; retry the removal", self.name))));
            }
        }
    }

    async fn act_rung(&mut self, me: &ActorRef<VmMessage>, attempt: u64, rung: Rung, deadline_ms: u64) {
        let wait_ms = deadline_ms.saturating_sub(crate::store::now_ms());
        tracing::info!(vm = %self.name, rung = rung.as_str(), wait_ms, "shutdown ladder");
        self.deps.events.publish(&self.name, EventKind::Rung { rung }, self.generation, None).await;
        arm_rung_timer(me, attempt, rung, deadline_ms);
        let Some(run) = self.run.as_ref() else { return };
        match rung {
            Rung::Acpi | Rung::Quit => {
                let cmd = if rung == Rung::Acpi { ControlCommand::PowerButton } else { ControlCommand::Quit };
                let control = run.control.clone();
                let me2 = me.clone();
                let timeout = self.deps.control_timeout;
                tokio::spawn(async move {
                    if let Err(error) = control_call(control, cmd, timeout).await {
                        let _ = me2.cast(VmNotice::LadderActionFailed { attempt, rung, error }.into());
                    }
                });
            }
            Rung::Term => {
                run.process.cast(ProcessMessage::Signal(libc::SIGTERM)).ok();
            }
            Rung::Kill => {
                run.process.cast(ProcessMessage::Signal(libc::SIGKILL)).ok();
            }
        }
    }

    // ---------------------------------------------------------- pause/resume

    async fn on_pause(&mut self, me: &ActorRef<VmMessage>, pause: bool, reply: RpcReplyPort<Result<VmInfo>>) {
        if let Err(r) = self.apply(me, if pause { Event::Pause } else { Event::Resume }).await {
            let _ = reply.send(Err(self.refused(r)));
            return;
        }
        let control = self.run.as_ref().and_then(|r| r.control.clone());
        let timeout = self.deps.control_timeout;
        let me = me.clone();
        tokio::spawn(async move {
            let cmd = if pause { ControlCommand::Pause } else { ControlCommand::Resume };
            let result = control_call(control, cmd, timeout).await;
            let _ = me.cast(VmNotice::PauseDone { result, pause, reply }.into());
        });
    }

    async fn on_pause_done(&mut self, me: &ActorRef<VmMessage>, result: std::result::Result<(), String>, pause: bool, reply: RpcReplyPort<Result<VmInfo>>) {
        if let Err(error) = result {
            let _ = reply.send(Err(self.conflict(format!("{} failed: {error}", if pause { "pause" } else { "resume" }))));
            return;
        }
        // The STOP/RESUME event may have applied it already.
        let _ = self.apply(me, if pause { Event::PauseObserved } else { Event::ResumeObserved }).await;
        let _ = reply.send(Ok(self.info()));
    }

    async fn on_control_event(&mut self, me: &ActorRef<VmMessage>, ev: ControlEvent) {
        let pid = self.run.as_ref().map(|r| r.pid);
        tracing::debug!(vm = %self.name, ?pid, event = ?ev, "control event");
        match ev {
            ControlEvent::Stop => {
                let _ = self.apply(me, Event::PauseObserved).await;
            }
            ControlEvent::Resume => {
                let _ = self.apply(me, Event::ResumeObserved).await;
            }
            ControlEvent::GuestPanicked => self.on_guest_panic().await,
            ControlEvent::Shutdown { guest } => {
                if let Some(run) = self.run.as_mut() {
                    run.shutdown_by_guest = Some(guest);
                }
            }
            ControlEvent::Reset => self.on_guest_reset(me).await,
            ControlEvent::Closed => {
                if let Some(run) = self.run.as_mut() {
                    run.control_closed = true;
                }
                if let Some((pid, exit)) = self.pending_exit {
                    self.finish_exit(me, pid, exit).await;
                }
            }
            _ => {}
        }
    }

    /// A guest panic, handled as the spec's `on_panic` says. QEMU already
    /// acted (`-action panic=...`); Cloud Hypervisor only reports it and
    /// keeps running, so for it the action is taken here.
    async fn on_guest_panic(&mut self) {
        let action = self.spec.on_panic;
        let Some(run) = self.run.as_mut() else { return };
        tracing::warn!(vm = %self.name, pid = run.pid, on_panic = action.as_str(), "guest panicked");
        // Its end counts as a failure only when the panic ends it.
        run.panicked = matches!(action, OnPanic::Restart | OnPanic::Stop);
        let (control, process) = (run.control.clone(), run.process.clone());
        let note = Some(format!("on_panic = {}", action.as_str()));
        self.deps.events.publish(&self.name, EventKind::GuestPanicked, self.generation, note).await;
        if self.spec.backend != crate::spec::BackendKind::CloudHypervisor || self.core.ladder.is_some() {
            return;
        }
        let timeout = self.deps.control_timeout;
        match action {
            OnPanic::Restart | OnPanic::Stop => {
                // End the VMM; if it does not answer, the signal does.
                tokio::spawn(async move {
                    if let Err(error) = control_call(control, ControlCommand::Quit, timeout).await {
                        tracing::warn!(%error, "quit after a guest panic failed; killing");
                        let _ = process.cast(ProcessMessage::Signal(libc::SIGKILL));
                    }
                });
            }
            OnPanic::Pause => {
                // The `paused` event moves the phase.
                let name = self.name.clone();
                tokio::spawn(async move {
                    if let Err(error) = control_call(control, ControlCommand::Pause, timeout).await {
                        tracing::warn!(vm = %name, %error, "pause after a guest panic failed");
                    }
                });
            }
            OnPanic::Ignore => {}
        }
    }

    // --------------------------------------------------------------- remove

    async fn on_remove(&mut self, me: &ActorRef<VmMessage>, force: bool, volumes: bool, reply: RpcReplyPort<Result<()>>) {
        self.remove_volumes |= volumes;
        if self.core.ladder.is_none() {
            self.stop_started = Instant::now();
        }
        self.remove_waiters.push(reply);
        if let Err(r) = self.apply(me, Event::Remove { force }).await {
            let e = self.refused(r);
            if let Some(reply) = self.remove_waiters.pop() {
                let _ = reply.send(Err(e));
            }
        }
    }

    async fn remove_now(&mut self, me: &ActorRef<VmMessage>) {
        match self.delete_files_and_rows().await {
            Ok(()) => {
                self.forget(me).await;
                for w in self.remove_waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
            }
            Err(e) => {
                let mut first = Some(e);
                for w in self.remove_waiters.drain(..) {
                    let e = first.take().unwrap_or_else(|| Error::Unavailable(format!("VM {:?}: the removal failed; retry it", self.name)));
                    let _ = w.send(Err(e));
                }
            }
        }
    }

    /// Intent first (desired = deleted), then the files, then the rows: a
    /// crash in between leaves a VM marked deleted that the next start
    /// finishes removing.
    async fn delete_files_and_rows(&mut self) -> Result<()> {
        self.deps.store.set_desired(&self.name, Desired::Deleted).await?;
        crash_point!("rm.after-intent");
        crate::recovery::remove_run_dir(&self.paths.dir, &self.deps.instance)
            .map_err(|e| Error::io(format!("cannot remove {:?}", self.paths.dir), e))?;
        crash_point!("rm.after-dir");
        crate::disks::remove(&crate::disks::vm_dir(&self.deps.state_dir, &self.name), self.remove_volumes)?;
        self.deps.net.release(&self.name).await?;
        self.deps.store.delete_vm(&self.name).await?;
        crash_point!("rm.after-rows");
        Ok(())
    }

    async fn forget(&mut self, me: &ActorRef<VmMessage>) {
        self.deps.events.publish(&self.name, EventKind::Removed, self.generation + 1, None).await;
        // The Registry frees the name and takes the VM off the board in
        // one step, answered before any reply we send next: whoever hears
        // of the removal (or no longer sees the VM) finds the name free,
        // and a new VM of that name is never taken off the board.
        let (name, id) = (self.name.clone(), me.get_id());
        match self.deps.registry.call(|done| RegistryMessage::Forget { name, id, done }, Some(Duration::from_secs(10))).await {
            Ok(ractor::rpc::CallResult::Success(())) => {}
            // Still queued there: it takes effect when the Registry gets to it.
            Ok(ractor::rpc::CallResult::Timeout) => tracing::warn!(vm = %self.name, "the registry did not confirm the removal in time"),
            // No Registry (shutting down): nothing can reuse the name.
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => self.deps.board.remove(&self.name),
        }
        me.stop(Some("removed".into()));
    }

    /// Rolls back a failed `up`: nothing of the VM may remain. Every step
    /// is tried even if an earlier one fails (a full state disk fails the
    /// row writes, not the deletions): the VM was never acknowledged, so
    /// its rows are still provisional and the next start deletes what is
    /// left of them.
    async fn delete_everything(&mut self, me: &ActorRef<VmMessage>) {
        let mut incomplete = Vec::new();
        crate::confine::remove_cgroup(&self.deps.instance, &self.name);
        if let Err(e) = crate::recovery::remove_run_dir(&self.paths.dir, &self.deps.instance) {
            incomplete.push(format!("run directory: {e}"));
        }
        // A data disk this up made goes too (`disks::DATA_DISK_UNUSED`).
        if let Err(e) = crate::disks::remove(&crate::disks::vm_dir(&self.deps.state_dir, &self.name), false) {
            incomplete.push(error_chain(&e));
        }
        if let Err(e) = self.deps.net.release(&self.name).await {
            incomplete.push(error_chain(&e));
        }
        if let Err(e) = self.deps.store.delete_vm(&self.name).await {
            incomplete.push(error_chain(&e));
        }
        if !incomplete.is_empty() {
            tracing::error!(vm = %self.name, errors = ?incomplete, "rollback of a failed up is incomplete; the next start finishes it");
        }
        self.forget(me).await;
    }

    // -------------------------------------------------------------- console

    async fn on_follow(&mut self, reply: RpcReplyPort<Result<ConsoleFollow>>) {
        match self.run.as_ref().and_then(|r| r.console.clone()) {
            Some(console) => {
                let timeout = self.deps.control_timeout;
                tokio::spawn(async move {
                    let r = match console.call(ConsoleMessage::Follow, Some(timeout)).await {
                        Ok(ractor::rpc::CallResult::Success(f)) => Ok(f),
                        _ => Err(Error::Timeout { what: "console".into(), timeout_ms: timeout.as_millis() as u64 }),
                    };
                    let _ = reply.send(r);
                });
            }
            None => {
                // Not running: the log file is all there is.
                let backlog = tail_bytes(&self.paths.console_log, RING_BYTES);
                let (_tx, live) = tokio::sync::broadcast::channel(1);
                let _ = reply.send(Ok(ConsoleFollow { backlog: backlog.into(), live }));
            }
        }
    }

    fn on_attach(&mut self, reply: RpcReplyPort<Result<crate::console::ConsoleAttach>>) {
        let Some(console) = self.run.as_ref().and_then(|r| r.console.clone()) else {
            let _ = reply.send(Err(self.conflict(format!("is {}; the console is live only while it runs", self.core.phase.name()))));
            return;
        };
        let timeout = self.deps.control_timeout;
        let name = self.name.clone();
        tokio::spawn(async move {
            let r = match console.call(ConsoleMessage::Attach, Some(timeout)).await {
                Ok(ractor::rpc::CallResult::Success(Ok(a))) => Ok(a),
                Ok(ractor::rpc::CallResult::Success(Err(message))) => Err(Error::Conflict { name, message }),
                _ => Err(Error::Timeout { what: "console".into(), timeout_ms: timeout.as_millis() as u64 }),
            };
            let _ = reply.send(r);
        });
    }
}

/// Ends a hypervisor we could not record, before the failed start is
/// answered: nothing may run that the database does not know of.
async fn kill_unrecorded(spawned: process::Spawned) {
    let process::Spawned { mut child, pid, pidfd } = spawned;
    if let Err(e) = process::pidfd_signal(&pidfd, libc::SIGKILL) {
        tracing::debug!(pid, error = %e, "SIGKILL not delivered");
    }
    if tokio::time::timeout(RUNG_WAIT, child.wait()).await.is_err() {
        tracing::error!(pid, "unrecorded hypervisor survives SIGKILL");
    }
}

/// Runs one control command with a deadline; `None` control means the
/// channel is down, which is an error the ladder escalates past.
pub(super) async fn control_call(
    control: Option<ActorRef<ControlMessage>>,
    cmd: ControlCommand,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let Some(control) = control else { return Err("control channel is down".into()) };
    // The channel applies `timeout` itself; the margin covers the mailbox.
    match control.call(|p| ControlMessage::Command(cmd, p), Some(timeout + Duration::from_secs(1))).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r.map(drop),
        Ok(ractor::rpc::CallResult::Timeout) => Err(format!("{cmd:?} timed out")),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err("control actor is gone".into()),
    }
}

/// Removes a socket file nobody listens on; refuses (AddrInUse) if a
/// live process still accepts connections on it.
fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{path:?} belongs to a live process; stop it before starting this VM again"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// Whether a failed child may be restarted now: at most
/// `CHILD_RESTARTS_PER_MINUTE` in any minute (a child that fails at once
/// every time would otherwise spin).
fn may_restart_child(history: &mut VecDeque<Instant>, now: Instant) -> bool {
    while history.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
        history.pop_front();
    }
    if history.len() >= CHILD_RESTARTS_PER_MINUTE {
        return false;
    }
    history.push_back(now);
    true
}

/// Arms the timer of a rung: `LadderTimeout` at `deadline_ms` (wall clock).
fn arm_rung_timer(me: &ActorRef<VmMessage>, attempt: u64, rung: Rung, deadline_ms: u64) {
    let wait = Duration::from_millis(deadline_ms.saturating_sub(crate::store::now_ms()));
    me.send_after(wait, move || VmNotice::LadderTimeout { attempt, rung, deadline_ms }.into());
}

fn record_words(r: &Record) -> &'static str {
    match r {
        Record::Desired(Desired::Running) => "not started",
        Record::Desired(Desired::Stopped) => "not stopped",
        Record::Desired(Desired::Deleted) => "not removed",
        Record::Confirm => "not acknowledged",
    }
}

fn phase_words(p: &VmPhase) -> &'static str {
    match p {
        VmPhase::Starting => "not started",
        VmPhase::Running => "it booted",
        _ => "its state changed",
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn tail_bytes(path: &std::path::Path, max: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max as u64);
    let mut out = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.take(len - start).read_to_end(&mut out);
    }
    out
}

fn tail_of(path: &std::path::Path, max: usize) -> String {
    String::from_utf8_lossy(&tail_bytes(path, max)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_restarted_at_most_five_times_a_minute() {
        let mut h = VecDeque::new();
        let t0 = Instant::now();
        let allowed = (0..10).filter(|i| may_restart_child(&mut h, t0 + Duration::from_secs(*i))).count();
        assert_eq!(allowed, CHILD_RESTARTS_PER_MINUTE);
        // A minute after the first ones, there is room again.
        assert!(may_restart_child(&mut h, t0 + Duration::from_secs(61)));
    }
}
