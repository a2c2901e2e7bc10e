//! The VM lifecycle's phases (the decisions between them are `core::step`).
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
//! No I/O here: the VM actor turns messages into events, calls
//! `core::step`, and persists and publishes what it returns.

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
