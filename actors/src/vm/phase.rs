//! The VM lifecycle as a pure function: `(phase, event) -> next phase`.
//!
//! ```text
//!   Defined/Stopped/Crashed/Failed --start--> Starting --booted--> Running <--pause/resume--> Paused
//!                                                |                    |                        |
//!                                                +------ stop --------+--------- stop ---------+
//!                                                                     v
//!                                          Stopping{Acpi -> Quit -> Term -> Kill} --exited--> Stopped{rung}
//!   Starting/Running/Paused --exited: failure (signal, code, panic)--> Crashed{exit}
//!   Starting/Running/Paused --exited: orderly (guest powered off)--> Stopped{rung: none}
//!   Starting --start failed (control never answered)--> Failed{reason}
//!   Crashed/Stopped --restart policy gave up--> Failed{reason}
//!   Crashed/Stopped --restart policy: start--> Starting
//! ```
//!
//! No I/O here: the VM actor turns messages into events, calls `next`, and
//! persists and publishes what it returns.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A rung of the shutdown ladder, in escalation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Rung {
    /// ACPI power button (QMP `system_powerdown`).
    Acpi,
    /// Hypervisor quit (QMP `quit`).
    Quit,
    /// SIGTERM to the hypervisor process.
    Term,
    /// SIGKILL to the hypervisor process.
    Kill,
}

impl Rung {
    pub fn next(self) -> Option<Rung> {
        match self {
            Rung::Acpi => Some(Rung::Quit),
            Rung::Quit => Some(Rung::Term),
            Rung::Term => Some(Rung::Kill),
            Rung::Kill => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Acpi => "acpi",
            Rung::Quit => "quit",
            Rung::Term => "sigterm",
            Rung::Kill => "sigkill",
        }
    }
}

/// How the hypervisor process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExitInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn is_clean(&self) -> bool {
        self.code == Some(0) && self.signal.is_none()
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (_, Some(s)) => write!(f, "killed by signal {s}"),
            (Some(c), None) => write!(f, "exited with code {c}"),
            (None, None) => write!(f, "exited (status unknown)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum VmPhase {
    Defined,
    Starting,
    Running,
    Paused,
    Stopping { rung: Rung },
    /// `rung` is the ladder rung that ended the VM, none when the guest
    /// powered itself off.
    Stopped {
        #[serde(skip_serializing_if = "Option::is_none")]
        rung: Option<Rung>,
        #[serde(skip_serializing_if = "Option::is_none")]
        exit: Option<ExitInfo>,
    },
    Crashed { exit: ExitInfo },
    Failed { reason: String },
}

impl VmPhase {
    pub fn name(&self) -> &'static str {
        match self {
            VmPhase::Defined => "defined",
            VmPhase::Starting => "starting",
            VmPhase::Running => "running",
            VmPhase::Paused => "paused",
            VmPhase::Stopping { .. } => "stopping",
            VmPhase::Stopped { .. } => "stopped",
            VmPhase::Crashed { .. } => "crashed",
            VmPhase::Failed { .. } => "failed",
        }
    }

    /// A hypervisor process exists (or is being created or torn down).
    pub fn is_active(&self) -> bool {
        matches!(self, VmPhase::Starting | VmPhase::Running | VmPhase::Paused | VmPhase::Stopping { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseEvent {
    StartRequested,
    Booted,
    StartFailed { reason: String },
    PauseObserved,
    ResumeObserved,
    StopRequested { first: Rung },
    Escalated { to: Rung },
    /// `failure`: the hypervisor died or the guest panicked, as opposed to
    /// an orderly end (the guest powered itself off).
    Exited { exit: ExitInfo, failure: bool },
    /// The restart policy gave up (too many crashes in the window).
    GaveUp { reason: String },
}

/// A request that the current phase does not allow, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub phase: &'static str,
    pub event: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} while the VM is {}", self.event, self.phase)
    }
}

pub fn next(phase: &VmPhase, event: &PhaseEvent) -> Result<VmPhase, Denied> {
    use PhaseEvent as E;
    use VmPhase as P;
    let deny = || Denied { phase: phase.name(), event: event_words(event) };
    Ok(match (phase, event) {
        (P::Defined | P::Stopped { .. } | P::Crashed { .. } | P::Failed { .. }, E::StartRequested) => P::Starting,
        (P::Starting, E::Booted) => P::Running,
        (P::Starting, E::StartFailed { reason }) => P::Failed { reason: reason.clone() },
        (P::Running, E::PauseObserved) => P::Paused,
        (P::Paused, E::ResumeObserved) => P::Running,
        (P::Starting | P::Running | P::Paused, E::StopRequested { first }) => P::Stopping { rung: *first },
        (P::Stopping { rung }, E::Escalated { to }) if to > rung => P::Stopping { rung: *to },
        (P::Stopping { rung }, E::Exited { exit, .. }) => P::Stopped { rung: Some(*rung), exit: Some(*exit) },
        (P::Starting | P::Running | P::Paused, E::Exited { exit, failure: false }) => P::Stopped { rung: None, exit: Some(*exit) },
        (P::Starting | P::Running | P::Paused, E::Exited { exit, failure: true }) => P::Crashed { exit: *exit },
        (P::Crashed { .. } | P::Stopped { .. }, E::GaveUp { reason }) => P::Failed { reason: reason.clone() },
        _ => return Err(deny()),
    })
}

fn event_words(e: &PhaseEvent) -> String {
    match e {
        PhaseEvent::StartRequested => "start".into(),
        PhaseEvent::Booted => "mark booted".into(),
        PhaseEvent::StartFailed { .. } => "fail the start".into(),
        PhaseEvent::PauseObserved => "pause".into(),
        PhaseEvent::ResumeObserved => "resume".into(),
        PhaseEvent::StopRequested { .. } => "stop".into(),
        PhaseEvent::Escalated { to } => format!("escalate to {}", to.as_str()),
        PhaseEvent::Exited { .. } => "record an exit".into(),
        PhaseEvent::GaveUp { .. } => "give up restarting".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILLED: ExitInfo = ExitInfo { code: None, signal: Some(9) };
    const CLEAN: ExitInfo = ExitInfo { code: Some(0), signal: None };

    fn all_phases() -> Vec<VmPhase> {
        vec![
            VmPhase::Defined,
            VmPhase::Starting,
            VmPhase::Running,
            VmPhase::Paused,
            VmPhase::Stopping { rung: Rung::Acpi },
            VmPhase::Stopped { rung: None, exit: None },
            VmPhase::Crashed { exit: KILLED },
            VmPhase::Failed { reason: "x".into() },
        ]
    }

    #[test]
    fn happy_path_ends_on_acpi() {
        let p = next(&VmPhase::Defined, &PhaseEvent::StartRequested).unwrap();
        let p = next(&p, &PhaseEvent::Booted).unwrap();
        let p = next(&p, &PhaseEvent::StopRequested { first: Rung::Acpi }).unwrap();
        let p = next(&p, &PhaseEvent::Exited { exit: CLEAN, failure: false }).unwrap();
        assert_eq!(p, VmPhase::Stopped { rung: Some(Rung::Acpi), exit: Some(CLEAN) });
    }

    #[test]
    fn ladder_only_escalates_upwards() {
        let p = VmPhase::Stopping { rung: Rung::Quit };
        assert_eq!(next(&p, &PhaseEvent::Escalated { to: Rung::Kill }).unwrap(), VmPhase::Stopping { rung: Rung::Kill });
        assert!(next(&p, &PhaseEvent::Escalated { to: Rung::Acpi }).is_err());
        assert!(next(&p, &PhaseEvent::Escalated { to: Rung::Quit }).is_err());
    }

    #[test]
    fn failure_exit_is_a_crash_and_orderly_exit_is_a_stop() {
        assert_eq!(next(&VmPhase::Running, &PhaseEvent::Exited { exit: KILLED, failure: true }).unwrap(), VmPhase::Crashed { exit: KILLED });
        let code1 = ExitInfo { code: Some(1), signal: None };
        assert_eq!(next(&VmPhase::Starting, &PhaseEvent::Exited { exit: code1, failure: true }).unwrap(), VmPhase::Crashed { exit: code1 });
        assert_eq!(
            next(&VmPhase::Paused, &PhaseEvent::Exited { exit: CLEAN, failure: false }).unwrap(),
            VmPhase::Stopped { rung: None, exit: Some(CLEAN) }
        );
        // A panicked guest whose hypervisor exits 0 is still a crash.
        assert_eq!(next(&VmPhase::Running, &PhaseEvent::Exited { exit: CLEAN, failure: true }).unwrap(), VmPhase::Crashed { exit: CLEAN });
    }

    #[test]
    fn giving_up_is_only_possible_after_an_end() {
        for p in all_phases() {
            let ok = next(&p, &PhaseEvent::GaveUp { reason: "x".into() }).is_ok();
            assert_eq!(ok, matches!(p, VmPhase::Crashed { .. } | VmPhase::Stopped { .. }), "{p:?}");
        }
    }

    #[test]
    fn start_is_allowed_exactly_from_the_inactive_phases() {
        for p in all_phases() {
            let r = next(&p, &PhaseEvent::StartRequested);
            assert_eq!(r.is_ok(), !p.is_active(), "{p:?}");
        }
    }

    #[test]
    fn exits_are_only_recorded_while_a_process_exists() {
        for p in all_phases() {
            let r = next(&p, &PhaseEvent::Exited { exit: KILLED, failure: true });
            assert_eq!(r.is_ok(), p.is_active(), "{p:?}");
        }
    }

    #[test]
    fn pause_and_resume_only_from_the_matching_phase() {
        for p in all_phases() {
            assert_eq!(next(&p, &PhaseEvent::PauseObserved).is_ok(), p == VmPhase::Running, "{p:?}");
            assert_eq!(next(&p, &PhaseEvent::ResumeObserved).is_ok(), p == VmPhase::Paused, "{p:?}");
        }
    }

    #[test]
    fn denial_reads_as_a_sentence() {
        let d = next(&VmPhase::Stopped { rung: None, exit: None }, &PhaseEvent::PauseObserved).unwrap_err();
        assert_eq!(d.to_string(), "cannot pause while the VM is stopped");
    }
}
