//! Every decision of a VM, as one pure function:
//! `step(core, event, now) -> (next core, effects)` or a typed `Denied`.
//!
//! The VM actor turns messages into `Event`s, calls `step`, and performs
//! the `Effect`s in order. Effects that are durable writes (`Record`) come
//! first: if one fails the actor keeps the old core and answers the request
//! with the failure, so nothing is acted on that the store does not know.
//!
//! What lives here and nowhere else:
//! - admission: what each phase allows, idempotent repeats, bounded queues
//!   of waiting callers (Busy beyond them);
//! - the shutdown ladder: the first rung, escalation on timeouts and
//!   failures, and a second stop or `rm --force` shortening a running one;
//! - how a run ended (clean power-off, crash, failure, a hypervisor that
//!   exits 0 after an internal fault) and whether the policy restarts it,
//!   with a streak that is persisted;
//! - the control channel: reconnection with backoff after any failure;
//! - after an adoption, carrying out a desired state recorded before.
//!
//! No I/O, no clock, no randomness: `now` and the jitter draw come in.

use super::phase::{ExitInfo, Rung, VmPhase};
use super::restart::{self, Decision, Streak};
use crate::spec::{OnPanic, RestartSpec};
use crate::store::Desired;

/// How long the Quit, SIGTERM and SIGKILL rungs each wait for the exit.
pub const RUNG_WAIT_MS: u64 = 5_000;
/// At most this many callers may wait on one VM for one thing at once.
pub const MAX_WAITERS: usize = 64;
/// Control reconnection backoff: doubles from the base up to the cap.
pub const RECONNECT_BASE_MS: u64 = 100;
pub const RECONNECT_CAP_MS: u64 = 5_000;

/// The control channel of the current run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// After `failures` failed attempts in a row.
    Connecting { failures: u32 },
    Up,
    /// Failed `failures` times in a row; a reconnection is scheduled.
    Down { failures: u32 },
}

/// The hypervisor process of the current run, as far as decisions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub link: Link,
    /// Taken back after a daemon restart (rather than started by us).
    pub adopted: bool,
    /// When the run began, or was adopted (unix ms).
    pub since_ms: u64,
    /// The start was abandoned and the process killed for this reason.
    pub start_failure: Option<String>,
}

/// A shutdown in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    pub attempt: u64,
    pub rung: Rung,
    pub started_ms: u64,
    /// When the current rung gives up waiting.
    pub deadline_ms: u64,
    /// `rm --force` waits for the end, then deletes the VM.
    pub remove: bool,
}

impl Ladder {
    /// The latest the VM can end if every remaining rung runs its full wait
    /// (SIGKILL ends it).
    pub fn latest_end_ms(&self) -> u64 {
        let after = match self.rung {
            Rung::Acpi => 3,
            Rung::Quit => 2,
            Rung::Term => 1,
            Rung::Kill => 0,
        };
        self.deadline_ms + after * RUNG_WAIT_MS
    }
}

/// The restart policy and panic action: configuration, not state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub restart: RestartSpec,
    pub on_panic: OnPanic,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Core {
    pub phase: VmPhase,
    pub policy: Policy,
    /// The VM's creation was acknowledged (the store says not provisional):
    /// from then on only `rm` deletes it.
    pub acknowledged: bool,
    /// The current start is an `up`'s first: its failure deletes the VM.
    pub up: bool,
    pub run: Option<Run>,
    pub ladder: Option<Ladder>,
    pub streak: Streak,
    /// Identifies the pending automatic restart; bumping it cancels it.
    pub restart_token: u64,
    pub start_waiters: usize,
    pub stop_waiters: usize,
    /// Recorded before a daemon restart; carried out once the adopted
    /// run's control channel has answered or failed.
    pub pending_desire: Option<Desired>,
    pub stop_attempts: u64,
}

/// How a run ended, as observed by the actor.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub exit: ExitInfo,
    /// The guest reported a panic that the panic action ends the run for.
    pub panicked: bool,
    /// The last shutdown event: Some(true) if the guest asked for it.
    pub shutdown_by_guest: Option<bool>,
    /// The hypervisor's own record of a fatal error (CH exits 0 after one).
    pub fault: Option<String>,
    /// The last words of the hypervisor on stderr.
    pub said: String,
    /// The jitter draw for a restart delay, in [0, 1).
    pub jitter: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    // ---- requests ----
    /// `up`: the first start of a new VM (its failure deletes it).
    Start { up: bool, reply: bool },
    Stop { graceful_ms: u64, reply: bool },
    Remove { force: bool },
    Pause,
    Resume,
    // ---- notices ----
    /// The restart policy's timer.
    RestartDue { token: u64 },
    /// The start's preparations are done; the hypervisor is about to run.
    Launching,
    /// The hypervisor runs and its run is recorded.
    Spawned,
    /// The start failed before or while launching.
    LaunchFailed { reason: String },
    ControlUp { paused: bool },
    ControlFailed { error: String },
    ReconnectDue,
    RungTimeout { attempt: u64, rung: Rung, deadline_ms: u64 },
    RungFailed { attempt: u64, rung: Rung },
    Exited(Ending),
    /// The recorded process is gone after a daemon restart.
    Lost { jitter: f64 },
    /// The recorded process is alive after a daemon restart.
    Adopted { desired: Desired },
    PauseObserved,
    ResumeObserved,
    /// Writing `Booted` failed: the start is abandoned.
    BootUnrecorded { reason: String },
    /// The restart policy gave up after the end was recorded.
    GaveUp { reason: String },
}

/// Durable writes, performed before the new core takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Desired(Desired),
    /// The VM is acknowledged: not provisional any more.
    Confirm,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Record(Record),
    /// Write the (new) phase. `durable`: its failure fails the request.
    Phase { durable: bool },
    /// Write the streak (best effort).
    SaveStreak,
    /// Do the start's I/O (disks, lease, spawn), reporting back with
    /// `Launching`, `Spawned` or `LaunchFailed`.
    Launch,
    /// Spawn the control actor now, or after `delay_ms`.
    Connect { delay_ms: u64 },
    /// SIGKILL the hypervisor: its start is abandoned.
    Kill,
    /// Take a rung's action, and report `RungTimeout` at `deadline_ms`.
    Rung { attempt: u64, rung: Rung, deadline_ms: u64 },
    /// Only re-arm the current rung's timer (a shorter wait).
    Rearm { attempt: u64, rung: Rung, deadline_ms: u64 },
    /// The boot is recorded: answer the start waiters (those waiting for
    /// readiness keep waiting).
    Booted,
    /// Answer every start waiter with this error.
    FailStarts { why: StartFailure },
    /// Answer every stop waiter (also a stop of a VM that was not running).
    AnswerStops,
    /// Delete the VM and everything it owns (rm).
    Remove,
    /// Roll back a failed `up`: nothing of the VM may remain.
    RollBack,
    ScheduleRestart { token: u64, delay_ms: u64, attempt: u32, bound_ms: u64 },
    /// The VM crashed; `note` says why when the exit status does not.
    Crashed { note: Option<String> },
    /// Ask the control channel to pause or resume.
    Control { pause: bool },
    /// The policy gives up: apply `GaveUp` once this end is announced.
    GiveUp { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFailure {
    /// A stop came first.
    Stopped,
    Failed(String),
}

/// Why an event is not acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The phase does not allow it.
    Phase { phase: &'static str, action: &'static str },
    /// Too many callers wait already.
    Busy,
    /// It needs the control channel, which is not (yet) up.
    ControlDown { action: &'static str },
    /// `rm` of an active VM without `--force`.
    Active { phase: &'static str },
    /// A notice about an earlier run, stop or timer: nothing to do.
    Stale,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Phase { phase, action } => write!(f, "cannot {action} while the VM is {phase}"),
            Denied::Busy => write!(f, "too many requests are waiting on this VM; retry later"),
            Denied::ControlDown { action } => {
                write!(f, "cannot {action}: the hypervisor's control channel is not connected yet (it is retried); try again shortly")
            }
            Denied::Active { phase } => write!(f, "is {phase}; stop it first or remove it with --force"),
            Denied::Stale => write!(f, "stale notice"),
        }
    }
}

pub type Step = Result<(Core, Vec<Effect>), Denied>;

impl Core {
    pub fn new(phase: VmPhase, policy: Policy, acknowledged: bool, streak: Streak) -> Core {
        Core {
            phase,
            policy,
            acknowledged,
            up: false,
            run: None,
            ladder: None,
            streak,
            restart_token: 0,
            start_waiters: 0,
            stop_waiters: 0,
            pending_desire: None,
            stop_attempts: 0,
        }
    }

    pub fn is_ready_to_control(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.link == Link::Up)
    }

    /// The total time a ladder that begins with `graceful_ms` may take.
    pub fn ladder_bound_ms(graceful_ms: u64) -> u64 {
        graceful_ms + 3 * RUNG_WAIT_MS
    }
}

pub fn step(core: &Core, event: &Event, now: u64) -> Step {
    let mut c = core.clone();
    let mut fx = Vec::new();
    use Event as E;
    use VmPhase as P;
    let phase = c.phase.name();
    let deny = |action| Err(Denied::Phase { phase, action });
    match event {
        E::Start { up, reply } => match &c.phase {
            P::Starting if *reply => {
                // A repeat joins the start in progress.
                if c.start_waiters >= MAX_WAITERS {
                    return Err(Denied::Busy);
                }
                c.start_waiters += 1;
            }
            P::Starting | P::Running | P::Paused | P::Stopping { .. } => return deny("start"),
            P::Defined | P::Stopped { .. } | P::Crashed { .. } | P::Failed { .. } => {
                // An operator's start ends any crash streak and cancels a
                // pending automatic restart.
                c.streak.reset();
                c.restart_token += 1;
                c.up = *up && !c.acknowledged;
                c.start_waiters = usize::from(*reply);
                fx.push(Effect::Record(Record::Desired(Desired::Running)));
                fx.push(Effect::SaveStreak);
                fx.push(Effect::Launch);
            }
        },
        E::RestartDue { token } => match &c.phase {
            P::Defined | P::Stopped { .. } | P::Crashed { .. } | P::Failed { .. } if *token == c.restart_token => {
                c.up = false;
                c.start_waiters = 0;
                fx.push(Effect::Launch);
            }
            P::Defined | P::Stopped { .. } | P::Crashed { .. } | P::Failed { .. } => return Err(Denied::Stale),
            P::Starting | P::Running | P::Paused | P::Stopping { .. } => return Err(Denied::Stale),
        },
        E::Launching => match &c.phase {
            P::Defined | P::Stopped { .. } | P::Crashed { .. } | P::Failed { .. } => {
                c.phase = P::Starting;
                fx.push(Effect::Phase { durable: true });
            }
            P::Starting | P::Running | P::Paused | P::Stopping { .. } => return deny("start"),
        },
        E::Spawned => match &c.phase {
            P::Starting => {
                c.run = Some(Run { link: Link::Connecting { failures: 0 }, adopted: false, since_ms: now, start_failure: None });
                fx.push(Effect::Connect { delay_ms: 0 });
            }
            _ => return Err(Denied::Stale),
        },
        E::LaunchFailed { reason } => {
            // No caller and no up: an automatic restart that failed.
            let automatic = c.start_waiters == 0 && !c.up;
            let reason_here = if automatic { format!("automatic restart failed: {reason}") } else { reason.clone() };
            match &c.phase {
                // Launching had begun: the attempt is recorded as failed.
                P::Starting => {
                    c.phase = P::Failed { reason: reason_here };
                    fx.push(Effect::Phase { durable: false });
                }
                P::Defined | P::Stopped { .. } | P::Crashed { .. } | P::Failed { .. } if automatic => {
                    c.phase = P::Failed { reason: reason_here };
                    fx.push(Effect::Phase { durable: false });
                }
                P::Defined | P::Stopped { .. } | P::Crashed { .. } | P::Failed { .. } => {}
                P::Running | P::Paused | P::Stopping { .. } => return Err(Denied::Stale),
            }
            c.run = None;
            // Roll back before answering: whoever reads the answer must
            // find nothing of the VM left.
            roll_back_if_up(&mut c, &mut fx);
            fail_starts(&mut c, &mut fx, StartFailure::Failed(reason.clone()));
        }
        E::ControlUp { paused } => {
            let Some(run) = c.run.as_mut() else { return Err(Denied::Stale) };
            run.link = Link::Up;
            if c.phase == P::Starting {
                // The answer says "running": only once that (and, for an
                // up, that the VM exists) is in the store.
                c.phase = P::Running;
                confirm(&mut c, &mut fx);
                fx.push(Effect::Phase { durable: true });
                fx.push(Effect::Booted);
                c.start_waiters = 0;
            }
            if *paused && c.phase == P::Running {
                c.phase = P::Paused;
                fx.push(Effect::Phase { durable: false });
            }
            carry_out_desire(&mut c, &mut fx, now);
        }
        E::ControlFailed { .. } => {
            let Some(run) = c.run.as_mut() else { return Err(Denied::Stale) };
            if c.phase == P::Starting && (!run.adopted || c.up) && run.start_failure.is_none() {
                // It never answered: nothing graceful is possible. Kill
                // it; the exit completes the failed start.
                if let E::ControlFailed { error } = event {
                    run.start_failure = Some(error.clone());
                }
                fx.push(Effect::Kill);
            } else {
                // Any other failure: try again, backing off.
                let failures = match run.link {
                    Link::Down { failures } | Link::Connecting { failures } => failures + 1,
                    Link::Up => 1,
                };
                run.link = Link::Down { failures };
                fx.push(Effect::Connect { delay_ms: reconnect_delay_ms(failures) });
                carry_out_desire(&mut c, &mut fx, now);
            }
        }
        E::ReconnectDue => match c.run.as_mut() {
            Some(run) if matches!(run.link, Link::Down { .. }) => {
                let Link::Down { failures } = run.link else { return Err(Denied::Stale) };
                run.link = Link::Connecting { failures };
                fx.push(Effect::Connect { delay_ms: 0 });
            }
            _ => return Err(Denied::Stale),
        },
        E::Stop { graceful_ms, reply } => stop(&mut c, &mut fx, *graceful_ms, *reply, false, now)?,
        E::Remove { force } => {
            if c.phase.is_active() && !*force {
                return Err(Denied::Active { phase });
            }
            if c.phase.is_active() {
                stop(&mut c, &mut fx, 0, false, true, now)?;
            } else {
                c.restart_token += 1;
                fx.push(Effect::Remove);
            }
        }
        E::Pause | E::Resume => {
            let (want, action) = if *event == E::Pause { (P::Running, "pause") } else { (P::Paused, "resume") };
            if c.phase != want {
                return deny(action);
            }
            if !c.is_ready_to_control() {
                return Err(Denied::ControlDown { action });
            }
            fx.push(Effect::Control { pause: *event == E::Pause });
        }
        E::PauseObserved => match &c.phase {
            P::Running => {
                c.phase = P::Paused;
                fx.push(Effect::Phase { durable: false });
            }
            _ => return Err(Denied::Stale),
        },
        E::ResumeObserved => match &c.phase {
            P::Paused => {
                c.phase = P::Running;
                fx.push(Effect::Phase { durable: false });
            }
            _ => return Err(Denied::Stale),
        },
        E::RungTimeout { attempt, rung, deadline_ms } => {
            let Some(l) = c.ladder.as_ref() else { return Err(Denied::Stale) };
            if l.attempt != *attempt || l.rung != *rung || l.deadline_ms != *deadline_ms {
                return Err(Denied::Stale);
            }
            escalate(&mut c, &mut fx, now);
        }
        E::RungFailed { attempt, rung } => {
            let Some(l) = c.ladder.as_ref() else { return Err(Denied::Stale) };
            if l.attempt != *attempt || l.rung != *rung {
                return Err(Denied::Stale);
            }
            escalate(&mut c, &mut fx, now);
        }
        E::BootUnrecorded { reason } => {
            let Some(run) = c.run.as_mut() else { return Err(Denied::Stale) };
            run.start_failure = Some(reason.clone());
            fx.push(Effect::Kill);
        }
        E::GaveUp { reason } => match &c.phase {
            P::Crashed { .. } | P::Stopped { .. } => {
                c.phase = P::Failed { reason: reason.clone() };
                fx.push(Effect::Phase { durable: false });
            }
            P::Defined | P::Starting | P::Running | P::Paused | P::Stopping { .. } | P::Failed { .. } => return Err(Denied::Stale),
        },
        E::Exited(ending) => {
            let Some(run) = c.run.take() else { return Err(Denied::Stale) };
            ended(&mut c, &mut fx, ending, Some(run), now);
        }
        E::Lost { jitter } => {
            if !c.phase.is_active() {
                return Err(Denied::Stale);
            }
            let exit = ExitInfo { code: None, signal: None };
            let ending = Ending { exit, panicked: false, shutdown_by_guest: None, fault: None, said: String::new(), jitter: *jitter };
            c.run = None;
            ended(&mut c, &mut fx, &ending, None, now);
        }
        E::Adopted { desired } => {
            if !c.phase.is_active() {
                return Err(Denied::Stale);
            }
            // A stop in progress is finished from a fresh ladder: how long
            // the guest already had for ACPI is unknown.
            if matches!(c.phase, P::Stopping { .. }) {
                c.phase = P::Running;
                fx.push(Effect::Phase { durable: false });
            }
            c.up = !c.acknowledged;
            c.run = Some(Run { link: Link::Connecting { failures: 0 }, adopted: true, since_ms: now, start_failure: None });
            c.pending_desire = match desired {
                Desired::Running => None,
                other => Some(*other),
            };
            fx.push(Effect::Connect { delay_ms: 0 });
        }
    }
    Ok((c, fx))
}

/// Doubling from the base, capped.
pub fn reconnect_delay_ms(failures: u32) -> u64 {
    RECONNECT_BASE_MS.saturating_mul(1u64 << failures.saturating_sub(1).min(16)).min(RECONNECT_CAP_MS)
}

fn fail_starts(c: &mut Core, fx: &mut Vec<Effect>, why: StartFailure) {
    if c.start_waiters > 0 {
        fx.push(Effect::FailStarts { why });
        c.start_waiters = 0;
    }
}

fn roll_back_if_up(c: &mut Core, fx: &mut Vec<Effect>) {
    if c.up && !c.acknowledged {
        c.up = false;
        fx.push(Effect::RollBack);
    }
}

/// After an adoption: a recorded stop (or an interrupted `rm --force`,
/// which records a stop first) is carried out once the control channel
/// has answered or failed, whichever comes first.
fn carry_out_desire(c: &mut Core, fx: &mut Vec<Effect>, now: u64) {
    if let Some(d) = c.pending_desire.take() {
        if c.phase.is_active() && c.ladder.is_none() {
            let remove = d == Desired::Deleted;
            // Errors cannot happen: the phase is active and no ladder runs.
            let _ = stop(c, fx, 0, false, remove, now);
        }
    }
}

/// The first rung: ACPI needs a booted guest with running vCPUs and a
/// control channel; without the channel only signals are left.
fn first_rung(c: &Core, graceful_ms: u64) -> Rung {
    match (&c.phase, c.is_ready_to_control()) {
        (VmPhase::Running, true) if graceful_ms > 0 => Rung::Acpi,
        (_, true) => Rung::Quit,
        (_, false) => Rung::Term,
    }
}

fn rung_wait_ms(rung: Rung, graceful_ms: u64) -> u64 {
    if rung == Rung::Acpi {
        graceful_ms
    } else {
        RUNG_WAIT_MS
    }
}

fn stop(c: &mut Core, fx: &mut Vec<Effect>, graceful_ms: u64, reply: bool, remove: bool, now: u64) -> Result<(), Denied> {
    if let Some(l) = c.ladder.as_mut() {
        if reply {
            if c.stop_waiters >= MAX_WAITERS {
                return Err(Denied::Busy);
            }
            c.stop_waiters += 1;
        }
        l.remove |= remove;
        // A shorter wait or a force shortens the ladder, never lengthens it.
        if l.rung == Rung::Acpi {
            if graceful_ms == 0 {
                escalate(c, fx, now);
            } else if now + graceful_ms < l.deadline_ms {
                l.deadline_ms = now + graceful_ms;
                fx.push(Effect::Rearm { attempt: l.attempt, rung: l.rung, deadline_ms: l.deadline_ms });
            }
        }
        return Ok(());
    }
    if !c.phase.is_active() {
        // Also cancels an automatic restart that is pending.
        fx.push(Effect::Record(Record::Desired(Desired::Stopped)));
        confirm(c, fx);
        c.restart_token += 1;
        c.streak.reset();
        fx.push(Effect::SaveStreak);
        if reply {
            fx.push(Effect::AnswerStops);
        }
        if remove {
            fx.push(Effect::Remove);
        }
        return Ok(());
    }
    fx.push(Effect::Record(Record::Desired(Desired::Stopped)));
    confirm(c, fx);
    c.restart_token += 1;
    c.streak.reset();
    fx.push(Effect::SaveStreak);
    fail_starts(c, fx, StartFailure::Stopped);
    let rung = first_rung(c, graceful_ms);
    c.stop_attempts += 1;
    let deadline_ms = now + rung_wait_ms(rung, graceful_ms);
    c.ladder = Some(Ladder { attempt: c.stop_attempts, rung, started_ms: now, deadline_ms, remove });
    c.stop_waiters = usize::from(reply);
    c.phase = VmPhase::Stopping { rung };
    fx.push(Effect::Phase { durable: false });
    fx.push(Effect::Rung { attempt: c.stop_attempts, rung, deadline_ms });
    Ok(())
}

/// A stop's answer (also one during `up`) tells its caller that the VM
/// exists, stopped: from then on it is not the up's to roll back.
fn confirm(c: &mut Core, fx: &mut Vec<Effect>) {
    if !c.acknowledged {
        fx.push(Effect::Record(Record::Confirm));
        c.acknowledged = true;
    }
    c.up = false;
}

/// The current rung did not end the VM: the next one, now. SIGKILL is
/// repeated (a process stuck in the kernel) and keeps waiting.
fn escalate(c: &mut Core, fx: &mut Vec<Effect>, now: u64) {
    let Some(l) = c.ladder.as_mut() else { return };
    let next = l.rung.next().unwrap_or(Rung::Kill);
    // ACPI and Quit need the channel; without it SIGTERM is next.
    let next = match (next, c.run.as_ref().is_some_and(|r| r.link == Link::Up)) {
        (Rung::Quit, false) => Rung::Term,
        (r, _) => r,
    };
    l.rung = next;
    l.deadline_ms = now + RUNG_WAIT_MS;
    c.phase = VmPhase::Stopping { rung: next };
    fx.push(Effect::Phase { durable: false });
    fx.push(Effect::Rung { attempt: l.attempt, rung: next, deadline_ms: l.deadline_ms });
}

/// Whether the end of a run counts against the restart policy: a panic
/// always does; a shutdown the guest asked for never does; a shutdown from
/// the host outside our ladder (someone's SIGTERM) does; a hypervisor
/// fault does; otherwise the exit status decides.
pub fn is_failure(e: &Ending) -> bool {
    if e.panicked || e.fault.is_some() {
        return true;
    }
    match e.shutdown_by_guest {
        Some(guest) => !guest,
        None => !e.exit.is_clean(),
    }
}

fn ended(c: &mut Core, fx: &mut Vec<Effect>, e: &Ending, run: Option<Run>, now: u64) {
    let failure = is_failure(e);
    if let Some(l) = c.ladder.take() {
        c.phase = VmPhase::Stopped { rung: Some(l.rung), exit: Some(e.exit) };
        // The stop is answered as done only once it is recorded.
        fx.push(Effect::Phase { durable: true });
        if c.stop_waiters > 0 || l.remove {
            fx.push(Effect::AnswerStops);
        }
        c.stop_waiters = 0;
        if l.remove {
            fx.push(Effect::Remove);
        }
        return;
    }
    if let VmPhase::Stopping { rung } = c.phase {
        // Found gone after a daemon restart while it was being stopped:
        // the stop is complete.
        c.phase = VmPhase::Stopped { rung: Some(rung), exit: Some(e.exit) };
        fx.push(Effect::Phase { durable: false });
        return;
    }
    let start_failure = run.as_ref().and_then(|r| r.start_failure.clone());
    if c.phase == VmPhase::Starting && (c.up || c.start_waiters > 0 || start_failure.is_some()) {
        // Killed by us because control never answered, or ended by itself
        // (then its own words on stderr say why).
        let reason = match start_failure {
            Some(r) if e.exit.signal == Some(libc::SIGKILL) => {
                c.phase = VmPhase::Failed { reason: r.clone() };
                r
            }
            _ => {
                c.phase = VmPhase::Crashed { exit: e.exit };
                format!("hypervisor {} before it booted; it said: {}", e.exit, e.said.trim())
            }
        };
        fx.push(Effect::Phase { durable: false });
        roll_back_if_up(c, fx);
        fail_starts(c, fx, StartFailure::Failed(reason));
        return;
    }
    c.phase = if failure { VmPhase::Crashed { exit: e.exit } } else { VmPhase::Stopped { rung: None, exit: Some(e.exit) } };
    fx.push(Effect::Phase { durable: false });
    if failure {
        fx.push(Effect::Crashed { note: e.fault.clone() });
    }
    fail_starts(c, fx, StartFailure::Failed(format!("the VM ended ({}) before it was ready", e.exit)));
    if e.panicked && c.policy.on_panic == OnPanic::Stop {
        return;
    }
    let uptime_ms = run.map(|r| now.saturating_sub(r.since_ms)).unwrap_or(0);
    match restart::decide(&c.policy.restart, &mut c.streak, failure, uptime_ms, now, e.jitter) {
        Decision::Stay => {}
        Decision::Restart { delay_ms, attempt, bound_ms } => {
            c.restart_token += 1;
            fx.push(Effect::SaveStreak);
            fx.push(Effect::ScheduleRestart { token: c.restart_token, delay_ms, attempt, bound_ms });
        }
        Decision::GiveUp { reason } => {
            fx.push(Effect::SaveStreak);
            fx.push(Effect::GiveUp { reason });
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
