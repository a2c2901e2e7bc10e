//! The core with no process, no socket and no real time: a decision table
//! of every phase against every event, the four failures the issue found,
//! and a property test over random event sequences (with simulated daemon
//! restarts) that checks the invariants users rely on.

use super::*;
use crate::spec::RestartPolicy;
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000;
const KILLED: ExitInfo = ExitInfo { code: None, signal: Some(libc::SIGKILL) };
const ABORTED: ExitInfo = ExitInfo { code: None, signal: Some(libc::SIGABRT) };
const CLEAN: ExitInfo = ExitInfo { code: Some(0), signal: None };

fn policy(p: RestartPolicy) -> Policy {
    Policy {
        restart: RestartSpec { policy: p, max_restarts: 2, window_secs: 60, backoff_base_ms: 100, backoff_cap_ms: 1000, stable_secs: 30 },
        on_panic: OnPanic::Restart,
    }
}

fn ending(exit: ExitInfo) -> Ending {
    Ending { exit, panicked: false, shutdown_by_guest: None, fault: None, said: String::new(), jitter: 0.5 }
}

fn run(link: Link) -> Option<Run> {
    Some(Run { link, adopted: false, since_ms: T0, start_failure: None })
}

/// One core per phase, with the run and ladder that phase has.
fn cores() -> Vec<Core> {
    let base = Core::new(VmPhase::Defined, policy(RestartPolicy::OnFailure), true, Streak::default());
    let with = |phase, run: Option<Run>, ladder: Option<Ladder>| Core { phase, run, ladder, ..base.clone() };
    let ladder = Ladder { attempt: 1, rung: Rung::Acpi, started_ms: T0, deadline_ms: T0 + 10_000, remove: false };
    vec![
        with(VmPhase::Defined, None, None),
        with(VmPhase::Starting, run(Link::Connecting { failures: 0 }), None),
        with(VmPhase::Running, run(Link::Up), None),
        with(VmPhase::Paused, run(Link::Up), None),
        with(VmPhase::Stopping { rung: Rung::Acpi }, run(Link::Up), Some(ladder)),
        with(VmPhase::Stopped { rung: None, exit: Some(CLEAN) }, None, None),
        with(VmPhase::Crashed { exit: ABORTED }, None, None),
        with(VmPhase::Failed { reason: "x".into() }, None, None),
    ]
}

fn events() -> Vec<(&'static str, Event)> {
    vec![
        ("start", Event::Start { up: false, reply: true }),
        ("stop", Event::Stop { graceful_ms: 1000, reply: true }),
        ("rm", Event::Remove { force: false }),
        ("rm-force", Event::Remove { force: true }),
        ("pause", Event::Pause),
        ("resume", Event::Resume),
        ("restart-due", Event::RestartDue { token: 0 }),
        ("launching", Event::Launching),
        ("spawned", Event::Spawned),
        ("launch-failed", Event::LaunchFailed { reason: "r".into() }),
        ("control-up", Event::ControlUp { paused: false }),
        ("control-failed", Event::ControlFailed { error: "e".into() }),
        ("reconnect-due", Event::ReconnectDue),
        ("rung-timeout", Event::RungTimeout { attempt: 1, rung: Rung::Acpi, deadline_ms: T0 + 10_000 }),
        ("rung-failed", Event::RungFailed { attempt: 1, rung: Rung::Acpi }),
        ("exited", Event::Exited(ending(ABORTED))),
        ("lost", Event::Lost { jitter: 0.5 }),
        ("adopted", Event::Adopted { desired: Desired::Running }),
        ("pause-observed", Event::PauseObserved),
        ("resume-observed", Event::ResumeObserved),
        ("boot-unrecorded", Event::BootUnrecorded { reason: "r".into() }),
        ("gave-up", Event::GaveUp { reason: "r".into() }),
    ]
}

fn outcome(r: &Step) -> String {
    match r {
        Ok((c, _)) => c.phase.name().to_string(),
        Err(Denied::Phase { .. }) => "-".into(),
        Err(Denied::Busy) => "busy".into(),
        Err(Denied::ControlDown { .. }) => "nolink".into(),
        Err(Denied::Active { .. }) => "active".into(),
        Err(Denied::Stale) => ".".into(),
    }
}

/// Rows: events; columns: the phase before. A cell is the phase after,
/// `-` refused for the phase, `.` ignored as stale, `active` rm refused.
/// (The cores have no waiters: a launch failure there is an automatic
/// restart's, which fails the VM.)
const TABLE: &str = "
event           defined  starting running  paused   stopping stopped  crashed  failed
start           defined  starting -        -        -        stopped  crashed  failed
stop            defined  stopping stopping stopping stopping stopped  crashed  failed
rm              defined  active   active   active   active   stopped  crashed  failed
rm-force        defined  stopping stopping stopping stopping stopped  crashed  failed
pause           -        -        running  -        -        -        -        -
resume          -        -        -        paused   -        -        -        -
restart-due     defined  .        .        .        .        stopped  crashed  failed
launching       starting -        -        -        -        starting starting starting
spawned         .        starting .        .        .        .        .        .
launch-failed   failed   failed   .        .        .        failed   failed   failed
control-up      .        running  running  paused   stopping .        .        .
control-failed  .        starting running  paused   stopping .        .        .
reconnect-due   .        .        .        .        .        .        .        .
rung-timeout    .        .        .        .        stopping .        .        .
rung-failed     .        .        .        .        stopping .        .        .
exited          .        crashed  crashed  crashed  stopped  .        .        .
lost            .        crashed  crashed  crashed  stopped  .        .        .
adopted         .        starting running  paused   running  .        .        .
pause-observed  .        .        paused   .        .        .        .        .
resume-observed .        .        .        running  .        .        .        .
boot-unrecorded .        starting running  paused   stopping .        .        .
gave-up         .        .        .        .        .        failed   failed   .
";

#[test]
fn every_phase_against_every_event() {
    let mut got = String::from("\nevent           defined  starting running  paused   stopping stopped  crashed  failed\n");
    for (name, ev) in events() {
        got.push_str(&format!("{name:<16}"));
        let cells: Vec<String> = cores().iter().map(|c| format!("{:<9}", outcome(&step(c, &ev, T0)))).collect();
        got.push_str(cells.concat().trim_end());
        got.push('\n');
    }
    assert_eq!(got, TABLE, "decision table changed:\n{got}");
}

#[test]
fn denials_read_as_sentences() {
    let stopped = &cores()[5];
    assert_eq!(step(stopped, &Event::Pause, T0).unwrap_err().to_string(), "cannot pause while the VM is stopped");
    let mut starting_up = cores()[2].clone();
    starting_up.run = run(Link::Down { failures: 1 });
    assert!(step(&starting_up, &Event::Pause, T0).unwrap_err().to_string().contains("control channel"));
}

/// Applies events in order; panics on a denial.
fn drive(mut c: Core, evs: &[Event], now: u64) -> (Core, Vec<Effect>) {
    let mut all = Vec::new();
    for e in evs {
        let (n, fx) = step(&c, e, now).unwrap_or_else(|d| panic!("{e:?} denied in {:?}: {d}", c.phase));
        c = n;
        all.extend(fx);
    }
    (c, all)
}

fn fresh() -> Core {
    Core::new(VmPhase::Defined, policy(RestartPolicy::Never), false, Streak::default())
}

#[test]
fn a_stop_during_up_keeps_the_vm_and_acknowledges_it() {
    let (c, fx) = drive(fresh(), &[Event::Start { up: true, reply: true }, Event::Launching, Event::Spawned], T0);
    assert!(c.up && !c.acknowledged && fx.contains(&Effect::Launch));
    let (c, fx) = drive(c, &[Event::Stop { graceful_ms: 0, reply: true }], T0);
    // Durable writes first: the stop is known to the store before anything acts.
    assert_eq!(fx[..2], [Effect::Record(Record::Desired(Desired::Stopped)), Effect::Record(Record::Confirm)]);
    assert!(fx.contains(&Effect::FailStarts { why: StartFailure::Stopped }));
    assert!(c.acknowledged && !c.up);
    let (c, fx) = drive(c, &[Event::Exited(ending(KILLED))], T0 + 10);
    assert!(matches!(c.phase, VmPhase::Stopped { .. }));
    assert!(!fx.contains(&Effect::RollBack));
    // A later start and a failure of it never roll the VM back.
    let (_, fx) = drive(c, &[Event::Start { up: true, reply: true }, Event::LaunchFailed { reason: "x".into() }], T0 + 20);
    assert!(!fx.contains(&Effect::RollBack), "{fx:?}");
}

fn running() -> Core {
    let (c, _) = drive(
        fresh(),
        &[Event::Start { up: true, reply: true }, Event::Launching, Event::Spawned, Event::ControlUp { paused: false }],
        T0,
    );
    assert_eq!(c.phase, VmPhase::Running);
    c
}

#[test]
fn a_second_shorter_stop_shortens_the_running_acpi_wait() {
    let (c, fx) = drive(running(), &[Event::Stop { graceful_ms: 60_000, reply: true }], T0);
    assert!(fx.contains(&Effect::Rung { attempt: 1, rung: Rung::Acpi, deadline_ms: T0 + 60_000 }));
    let (c, fx) = drive(c, &[Event::Stop { graceful_ms: 1_000, reply: true }], T0 + 5);
    assert_eq!(fx, vec![Effect::Rearm { attempt: 1, rung: Rung::Acpi, deadline_ms: T0 + 1_005 }]);
    // A longer one afterwards changes nothing.
    let (c, fx) = drive(c, &[Event::Stop { graceful_ms: 30_000, reply: true }], T0 + 6);
    assert!(fx.is_empty());
    assert_eq!(c.stop_waiters, 3);
    // The old timer is stale, the new one escalates.
    assert_eq!(step(&c, &Event::RungTimeout { attempt: 1, rung: Rung::Acpi, deadline_ms: T0 + 60_000 }, T0 + 60_000), Err(Denied::Stale));
    let (c, _) = drive(c, &[Event::RungTimeout { attempt: 1, rung: Rung::Acpi, deadline_ms: T0 + 1_005 }], T0 + 1_005);
    assert_eq!(c.phase, VmPhase::Stopping { rung: Rung::Quit });
}

#[test]
fn rm_force_during_a_stop_skips_the_acpi_wait_and_removes_after_the_end() {
    let (c, _) = drive(running(), &[Event::Stop { graceful_ms: 600_000, reply: true }], T0);
    let (c, fx) = drive(c, &[Event::Remove { force: true }], T0 + 1);
    assert_eq!(fx.last(), Some(&Effect::Rung { attempt: 1, rung: Rung::Quit, deadline_ms: T0 + 1 + RUNG_WAIT_MS }));
    let (c, fx) = drive(c, &[Event::Exited(ending(CLEAN))], T0 + 2);
    assert_eq!(c.phase, VmPhase::Stopped { rung: Some(Rung::Quit), exit: Some(CLEAN) });
    assert!(fx.ends_with(&[Effect::AnswerStops, Effect::Remove]), "{fx:?}");
}

#[test]
fn an_adopted_vm_whose_control_fails_reconnects_and_becomes_controllable() {
    let c = Core::new(VmPhase::Running, policy(RestartPolicy::Never), true, Streak::default());
    let (c, _) = drive(c, &[Event::Adopted { desired: Desired::Running }], T0);
    let (c, fx) = drive(c, &[Event::ControlFailed { error: "timed out".into() }], T0);
    assert_eq!(fx, vec![Effect::Connect { delay_ms: RECONNECT_BASE_MS }]);
    assert!(matches!(step(&c, &Event::Pause, T0), Err(Denied::ControlDown { .. })));
    let (c, fx) = drive(c, &[Event::ReconnectDue, Event::ControlFailed { error: "again".into() }], T0);
    assert_eq!(fx, vec![Effect::Connect { delay_ms: 0 }, Effect::Connect { delay_ms: 2 * RECONNECT_BASE_MS }]);
    let (c, _) = drive(c, &[Event::ReconnectDue, Event::ControlUp { paused: false }], T0);
    let (_, fx) = drive(c.clone(), &[Event::Pause], T0);
    assert_eq!(fx, vec![Effect::Control { pause: true }]);
    // A stop now starts with ACPI again.
    let (_, fx) = drive(c, &[Event::Stop { graceful_ms: 1000, reply: true }], T0);
    assert!(fx.iter().any(|f| matches!(f, Effect::Rung { rung: Rung::Acpi, .. })));
    assert_eq!(reconnect_delay_ms(40), RECONNECT_CAP_MS);
}

#[test]
fn a_stop_recorded_before_the_restart_is_carried_out_even_if_control_never_answers() {
    for desired in [Desired::Stopped, Desired::Deleted] {
        let c = Core::new(VmPhase::Stopping { rung: Rung::Acpi }, policy(RestartPolicy::Never), true, Streak::default());
        let (c, _) = drive(c, &[Event::Adopted { desired }], T0);
        let (c, fx) = drive(c, &[Event::ControlFailed { error: "timed out".into() }], T0);
        assert!(fx.iter().any(|f| matches!(f, Effect::Rung { rung: Rung::Term, .. })), "{fx:?}");
        let (_, fx) = drive(c, &[Event::Exited(ending(ExitInfo { code: None, signal: Some(libc::SIGTERM) }))], T0 + 1);
        assert_eq!(fx.contains(&Effect::Remove), desired == Desired::Deleted);
    }
}

#[test]
fn the_restart_streak_survives_a_daemon_restart() {
    let mut c = running();
    c.policy = policy(RestartPolicy::OnFailure);
    let mut restarts = 0;
    let mut now = T0;
    for _ in 0..6 {
        now += 100;
        let (n, fx) = drive(c, &[Event::Exited(ending(ABORTED))], now);
        let n = match fx.iter().find_map(|f| if let Effect::GiveUp { reason } = f { Some(reason.clone()) } else { None }) {
            Some(reason) => drive(n, &[Event::GaveUp { reason }], now).0,
            None => n,
        };
        if let Some(Effect::ScheduleRestart { token, .. }) = fx.iter().find(|f| matches!(f, Effect::ScheduleRestart { .. })) {
            restarts += 1;
            // A daemon restart in between: only what the store holds survives.
            let reborn = Core::new(n.phase.clone(), n.policy.clone(), true, n.streak.clone());
            let reborn = Core { restart_token: *token, ..reborn };
            let (r, _) = drive(reborn, &[Event::RestartDue { token: *token }, Event::Launching, Event::Spawned], now);
            c = r;
        } else {
            assert!(matches!(n.phase, VmPhase::Failed { .. }), "{:?}", n.phase);
            break;
        }
    }
    assert_eq!(restarts, 2);
}

#[test]
fn a_vm_found_gone_while_it_was_being_stopped_is_stopped_not_crashed() {
    let mut c = Core::new(VmPhase::Stopping { rung: Rung::Term }, policy(RestartPolicy::Always), true, Streak::default());
    c.policy.restart.policy = RestartPolicy::Always;
    let (c, fx) = drive(c, &[Event::Lost { jitter: 0.5 }], T0);
    assert!(matches!(c.phase, VmPhase::Stopped { rung: Some(Rung::Term), .. }), "{:?}", c.phase);
    assert!(!fx.iter().any(|f| matches!(f, Effect::ScheduleRestart { .. })));
}

#[test]
fn a_hypervisor_that_exits_0_after_a_fault_crashed() {
    let mut c = running();
    c.policy = policy(RestartPolicy::OnFailure);
    let e = Ending { fault: Some("vCPU error".into()), ..ending(CLEAN) };
    let (c, fx) = drive(c, &[Event::Exited(e)], T0 + 1);
    assert_eq!(c.phase, VmPhase::Crashed { exit: CLEAN });
    assert!(fx.contains(&Effect::Crashed { note: Some("vCPU error".into()) }));
    let guest_off = Ending { shutdown_by_guest: Some(true), ..ending(CLEAN) };
    assert!(!is_failure(&guest_off));
    assert!(is_failure(&Ending { shutdown_by_guest: Some(false), ..ending(CLEAN) }));
    assert!(is_failure(&Ending { panicked: true, ..guest_off }));
}

#[test]
fn waiters_beyond_the_bound_are_busy() {
    let (mut c, _) = drive(running(), &[Event::Stop { graceful_ms: 10_000, reply: true }], T0);
    for _ in 1..MAX_WAITERS {
        c = step(&c, &Event::Stop { graceful_ms: 10_000, reply: true }, T0).unwrap().0;
    }
    assert_eq!(step(&c, &Event::Stop { graceful_ms: 10_000, reply: true }, T0), Err(Denied::Busy));
}

// ------------------------------------------------------------ simulation

#[derive(Debug, Clone)]
enum Op {
    Start,
    Stop(u64),
    Remove { force: bool },
    Pause,
    Resume,
    Crash,
    PowerOff,
    ControlUp,
    ControlFail,
    Advance(u64),
    NextTimer,
    /// The daemon dies and comes back; with `true` the hypervisor died too
    /// while nobody watched.
    DaemonRestart(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Start),
        2 => prop_oneof![Just(0u64), Just(1_000), Just(30_000), Just(120_000)].prop_map(Op::Stop),
        1 => any::<bool>().prop_map(|force| Op::Remove { force }),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        3 => Just(Op::Crash),
        1 => Just(Op::PowerOff),
        3 => Just(Op::ControlUp),
        2 => Just(Op::ControlFail),
        2 => (0u64..40_000).prop_map(Op::Advance),
        4 => Just(Op::NextTimer),
        2 => any::<bool>().prop_map(Op::DaemonRestart),
    ]
}

/// The hypervisor: which rungs it ignores.
#[derive(Debug, Clone, Copy)]
struct Proc {
    since: u64,
    ignores_acpi: bool,
    ignores_quit: bool,
    ignores_term: bool,
}

#[derive(Debug, Default, Clone)]
struct Stored {
    phase: Option<VmPhase>,
    acknowledged: bool,
    desired: Option<Desired>,
    streak: Streak,
}

struct Sim {
    core: Core,
    now: u64,
    stored: Stored,
    process: Option<Proc>,
    timers: Vec<(u64, Event)>,
    /// Someone was told the VM exists.
    told_exists: bool,
    gone: bool,
    /// Restart times since the last reset of the streak the policy allows.
    restarts: Vec<u64>,
    /// The current ladder: when it began and its bound.
    ladder_bound: Option<(u64, u64, u64)>,
    stubborn: [bool; 3],
    spec: RestartSpec,
}

impl Sim {
    fn new(spec: RestartSpec, stubborn: [bool; 3]) -> Sim {
        let pol = Policy { restart: spec.clone(), on_panic: OnPanic::Restart };
        Sim {
            core: Core::new(VmPhase::Defined, pol, false, Streak::default()),
            now: T0,
            stored: Stored::default(),
            process: None,
            timers: Vec::new(),
            told_exists: false,
            gone: false,
            restarts: Vec::new(),
            ladder_bound: None,
            stubborn,
            spec,
        }
    }

    fn apply(&mut self, ev: Event) -> Result<(), TestCaseError> {
        if self.gone {
            return Ok(());
        }
        let before = self.core.ladder.clone();
        let Ok((next, fx)) = step(&self.core, &ev, self.now) else { return Ok(()) };
        if let (Some(b), Some(a), Event::Stop { .. } | Event::Remove { .. }) = (&before, &next.ladder, &ev) {
            // A second stop or a force never lengthens the ladder.
            prop_assert!(a.attempt == b.attempt && a.rung >= b.rung && a.latest_end_ms() <= b.latest_end_ms(), "{b:?} -> {a:?}");
        }
        if let (Some(l), Event::Exited(_)) = (&before, &ev) {
            let (attempt, started, bound) = self.ladder_bound.expect("a ladder has a bound");
            prop_assert_eq!(attempt, l.attempt);
            prop_assert!(self.now <= started + bound, "stop took {} ms, bound {bound}", self.now - started);
            prop_assert!(matches!(next.phase, VmPhase::Stopped { .. }), "{:?}", next.phase);
            self.ladder_bound = None;
        }
        self.core = next;
        for f in fx {
            self.effect(f)?;
            if self.gone {
                break;
            }
        }
        Ok(())
    }

    fn effect(&mut self, f: Effect) -> Result<(), TestCaseError> {
        match f {
            Effect::Record(Record::Desired(d)) => self.stored.desired = Some(d),
            Effect::Record(Record::Confirm) => self.stored.acknowledged = true,
            Effect::Phase { .. } => self.stored.phase = Some(self.core.phase.clone()),
            Effect::SaveStreak => self.stored.streak = self.core.streak.clone(),
            Effect::Launch => {
                self.apply(Event::Launching)?;
                let [a, q, t] = self.stubborn;
                self.process = Some(Proc { since: self.now, ignores_acpi: a, ignores_quit: q, ignores_term: t });
                self.apply(Event::Spawned)?;
            }
            Effect::Connect { delay_ms } => {
                if delay_ms > 0 {
                    self.timers.push((self.now + delay_ms, Event::ReconnectDue));
                }
            }
            Effect::Kill => self.exit(KILLED, None)?,
            Effect::Rung { attempt, rung, deadline_ms } => {
                if self.ladder_bound.is_none_or(|(a, _, _)| a != attempt) {
                    let graceful = if rung == Rung::Acpi { deadline_ms - self.now } else { 0 };
                    self.ladder_bound = Some((attempt, self.now, Core::ladder_bound_ms(graceful)));
                }
                self.timers.push((deadline_ms, Event::RungTimeout { attempt, rung, deadline_ms }));
                let Some(p) = self.process else { return Ok(()) };
                let link = self.core.is_ready_to_control();
                let ends = match rung {
                    Rung::Acpi => link && !p.ignores_acpi,
                    Rung::Quit => link && !p.ignores_quit,
                    Rung::Term => !p.ignores_term,
                    Rung::Kill => true,
                };
                if !link && matches!(rung, Rung::Acpi | Rung::Quit) {
                    self.apply(Event::RungFailed { attempt, rung })?;
                } else if ends {
                    let exit = if rung == Rung::Kill { KILLED } else { CLEAN };
                    self.exit(exit, Some(rung == Rung::Acpi))?;
                }
            }
            Effect::Rearm { attempt, rung, deadline_ms } => self.timers.push((deadline_ms, Event::RungTimeout { attempt, rung, deadline_ms })),
            Effect::Booted => {
                prop_assert!(self.stored.acknowledged, "an up answered before its VM was confirmed");
                self.told_exists = true;
            }
            Effect::AnswerStops => {
                prop_assert!(self.stored.acknowledged, "a stop answered for a provisional VM");
                self.told_exists = true;
            }
            Effect::RollBack => {
                prop_assert!(!self.told_exists, "an acknowledged VM was rolled back");
                self.gone = true;
            }
            Effect::Remove => self.gone = true,
            Effect::ScheduleRestart { token, delay_ms, .. } => {
                self.restarts.push(self.now);
                let window = self.spec.window_secs * 1000;
                let in_window = self.restarts.iter().filter(|t| self.now - **t <= window).count();
                prop_assert!(in_window as u32 <= self.spec.max_restarts, "{in_window} restarts in {window} ms: {:?}", self.restarts);
                self.timers.push((self.now + delay_ms, Event::RestartDue { token }));
            }
            Effect::FailStarts { .. } | Effect::Crashed { .. } => {}
            Effect::Control { pause } => self.apply(if pause { Event::PauseObserved } else { Event::ResumeObserved })?,
            Effect::GiveUp { reason } => self.apply(Event::GaveUp { reason })?,
        }
        Ok(())
    }

    fn exit(&mut self, exit: ExitInfo, by_guest: Option<bool>) -> Result<(), TestCaseError> {
        let Some(p) = self.process.take() else { return Ok(()) };
        if self.now - p.since >= self.spec.stable_secs * 1000 {
            self.restarts.clear();
        }
        let e = Ending { shutdown_by_guest: by_guest, ..ending(exit) };
        self.apply(Event::Exited(e))
    }

    fn op(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Start => {
                // The first start is the up's.
                let up = self.stored.phase.is_none();
                if matches!(self.core.phase, VmPhase::Defined | VmPhase::Stopped { .. } | VmPhase::Crashed { .. } | VmPhase::Failed { .. }) {
                    self.restarts.clear();
                }
                self.apply(Event::Start { up, reply: true })
            }
            Op::Stop(g) => {
                if self.core.ladder.is_none() {
                    self.restarts.clear();
                }
                self.apply(Event::Stop { graceful_ms: g, reply: true })
            }
            Op::Remove { force } => self.apply(Event::Remove { force }),
            Op::Pause => self.apply(Event::Pause),
            Op::Resume => self.apply(Event::Resume),
            Op::Crash => self.exit(ABORTED, None),
            Op::PowerOff => self.exit(CLEAN, Some(true)),
            Op::ControlUp => {
                if self.process.is_some() && self.core.run.as_ref().is_some_and(|r| r.link == Link::Connecting { failures: 0 }) {
                    self.apply(Event::ControlUp { paused: false })?;
                }
                Ok(())
            }
            Op::ControlFail => {
                if self.process.is_some() && self.core.run.is_some() {
                    self.apply(Event::ControlFailed { error: "e".into() })?;
                }
                Ok(())
            }
            Op::Advance(ms) => {
                let until = self.now + ms;
                while self.fire_before(until)? {}
                self.now = until;
                Ok(())
            }
            Op::NextTimer => {
                self.fire_before(u64::MAX)?;
                Ok(())
            }
            Op::DaemonRestart(died) => {
                if died {
                    if let Some(p) = self.process.take() {
                        if self.now - p.since >= self.spec.stable_secs * 1000 {
                            self.restarts.clear();
                        }
                    }
                }
                self.daemon_restart()
            }
        }
    }

    /// Fires the earliest timer due before `until`; false if none.
    fn fire_before(&mut self, until: u64) -> Result<bool, TestCaseError> {
        let Some(i) = (0..self.timers.len()).filter(|i| self.timers[*i].0 <= until).min_by_key(|i| self.timers[*i].0) else {
            return Ok(false);
        };
        let (at, ev) = self.timers.remove(i);
        self.now = self.now.max(at);
        self.apply(ev)?;
        Ok(true)
    }

    /// Only what the store holds (and the process) survives; the registry's
    /// rules decide what happens to the VM.
    fn daemon_restart(&mut self) -> Result<(), TestCaseError> {
        self.timers.clear();
        self.ladder_bound = None;
        let Some(phase) = self.stored.phase.clone() else {
            // Never written: the up had not begun; nothing to keep.
            return Ok(());
        };
        let alive = self.process.is_some();
        if self.stored.desired == Some(Desired::Deleted) || (!self.stored.acknowledged && !alive) {
            prop_assert!(!self.told_exists, "an acknowledged VM was deleted by a daemon restart");
            self.gone = true;
            return Ok(());
        }
        let policy = self.core.policy.clone();
        self.core = Core::new(phase.clone(), policy, self.stored.acknowledged, self.stored.streak.clone());
        if alive {
            self.apply(Event::Adopted { desired: self.stored.desired.unwrap_or(Desired::Running) })
        } else if phase.is_active() {
            let stopping = matches!(phase, VmPhase::Stopping { .. });
            self.apply(Event::Lost { jitter: 0.5 })?;
            prop_assert!(!stopping || matches!(self.core.phase, VmPhase::Stopped { .. }), "a stop found done became {:?}", self.core.phase);
            Ok(())
        } else {
            Ok(())
        }
    }

    /// Every stop in progress ends in Stopped within its bound.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..20 {
            if self.gone || self.core.ladder.is_none() {
                return Ok(());
            }
            prop_assert!(self.fire_before(u64::MAX)?, "a stop with no timer left: {:?}", self.core.ladder);
        }
        prop_assert!(self.gone || self.core.ladder.is_none(), "the stop never ended");
        Ok(())
    }
}

fn restart_spec() -> impl Strategy<Value = RestartSpec> {
    (prop_oneof![Just(RestartPolicy::OnFailure), Just(RestartPolicy::Always)], 1u32..4, 5u64..120, 1u64..60).prop_map(
        |(policy, max_restarts, window_secs, stable_secs)| RestartSpec {
            policy,
            max_restarts,
            window_secs,
            backoff_base_ms: 50,
            backoff_cap_ms: 2_000,
            stable_secs,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_keep_the_invariants(
        spec in restart_spec(),
        stubborn in any::<[bool; 3]>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut sim = Sim::new(spec, stubborn);
        for o in ops {
            sim.op(o)?;
            if sim.gone {
                break;
            }
        }
        sim.finish()?;
    }
}
