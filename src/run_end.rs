//! `wait?until=exit`: how a VM's run ended, for a scheduler that waits on
//! it. The answer names the cause in one word and carries the details
//! (exit code or signal, the ladder rung that ended it, the failure
//! reason) and the VM's generation at that point.

use serde::{Deserialize, Serialize};

use crate::{ExitInfo, Rung, VmPhase};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// The guest powered itself off.
    PowerOff,
    /// The shutdown ladder ended it (`rung` says which rung).
    Stopped,
    /// The hypervisor died or the guest panicked (`exit` says how).
    Crashed,
    /// It could not start, or the restart policy gave up (`reason`).
    Failed,
    /// It was never started.
    NeverStarted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunEnd {
    pub name: String,
    pub cause: EndCause,
    /// The VM's generation when the run ended.
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rung: Option<Rung>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RunEnd {
    /// The end a phase means; None while a hypervisor process exists.
    pub fn from_phase(name: &str, phase: &VmPhase, generation: u64) -> Option<RunEnd> {
        let end = |cause, rung, exit, reason| Some(RunEnd { name: name.to_string(), cause, generation, rung, exit, reason });
        match phase {
            VmPhase::Stopped { rung: None, exit } => end(EndCause::PowerOff, None, *exit, None),
            VmPhase::Stopped { rung: Some(r), exit } => end(EndCause::Stopped, Some(*r), *exit, None),
            VmPhase::Crashed { exit } => end(EndCause::Crashed, None, Some(*exit), None),
            VmPhase::Failed { reason } => end(EndCause::Failed, None, None, Some(reason.clone())),
            VmPhase::Defined => end(EndCause::NeverStarted, None, None, None),
            VmPhase::Starting | VmPhase::Running | VmPhase::Paused | VmPhase::Stopping { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_phase_has_its_cause() {
        let kill = ExitInfo { code: None, signal: Some(9) };
        let cause = |p: VmPhase| RunEnd::from_phase("a", &p, 1).map(|e| e.cause);
        assert_eq!(cause(VmPhase::Stopped { rung: None, exit: None }), Some(EndCause::PowerOff));
        assert_eq!(cause(VmPhase::Stopped { rung: Some(Rung::Term), exit: None }), Some(EndCause::Stopped));
        assert_eq!(cause(VmPhase::Crashed { exit: kill }), Some(EndCause::Crashed));
        assert_eq!(cause(VmPhase::Failed { reason: "x".into() }), Some(EndCause::Failed));
        assert_eq!(cause(VmPhase::Running), None);
        assert_eq!(cause(VmPhase::Stopping { rung: Rung::Acpi }), None);
    }
}
