//! What a VM actor understands: requests (`VmRequest`, each with its
//! reply port) and internal notices (`VmNotice`, from the VM's own
//! children and timers), wrapped by one actor message, `VmMessage`.

use ractor::RpcReplyPort;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::phase::{ExitInfo, Rung, VmPhase};
use crate::backend::{ControlEvent, GuestStatus};
use crate::board::VmInfo;
use crate::console::{ConsoleAttach, ConsoleFollow};
use crate::error::{Error, Result};
use crate::snapshot::{AfterSnapshot, SnapshotInfo};

/// When a start request is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WaitFor {
    /// As soon as the hypervisor reports the guest running.
    #[default]
    Running,
    /// When the console readiness pattern matched (or Running without one).
    Ready,
}

/// How a stop ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StopOutcome {
    /// The ladder rung that ended the VM; none if it was not running.
    pub rung: Option<Rung>,
    pub exit: Option<ExitInfo>,
    pub phase: VmPhase,
    pub elapsed_ms: u64,
}

/// What a VM actor is sent: a request (from the Registry, i.e. the API)
/// or a notice (from its own children and timers).
// A message is moved once, into the actor's mailbox: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum VmMessage {
    Request(VmRequest),
    Notice(VmNotice),
}

impl From<VmRequest> for VmMessage {
    fn from(r: VmRequest) -> Self {
        VmMessage::Request(r)
    }
}

impl From<VmNotice> for VmMessage {
    fn from(n: VmNotice) -> Self {
        VmMessage::Notice(n)
    }
}

/// Requests, each with its reply port (valid phases in brackets).
pub enum VmRequest {
    /// [defined, stopped, crashed, failed] Boot the VM. `rollback` deletes
    /// the VM entirely if this first start fails (used by `up`).
    Start { wait: WaitFor, rollback: bool, reply: RpcReplyPort<Result<VmInfo>> },
    /// [any] Run the shutdown ladder; idempotent, joins a stop in progress.
    /// `graceful` bounds the ACPI rung.
    Stop { graceful: Duration, reply: RpcReplyPort<Result<StopOutcome>> },
    /// [running] Freeze the vCPUs.
    Pause { reply: RpcReplyPort<Result<VmInfo>> },
    /// [paused] Thaw the vCPUs.
    Resume { reply: RpcReplyPort<Result<VmInfo>> },
    /// [stopped, crashed, failed, defined; any with `force`] Delete the VM
    /// and everything it owns.
    /// With `volumes`, the data disk is deleted too.
    Remove { force: bool, volumes: bool, reply: RpcReplyPort<Result<()>> },
    /// [running, paused] Console backlog + live output.
    Follow { reply: RpcReplyPort<Result<ConsoleFollow>> },
    /// [running, paused] Interactive console; one writer at a time.
    Attach { reply: RpcReplyPort<Result<ConsoleAttach>> },
    /// [running, paused] Save the VM's state and disks as snapshot
    /// `snapshot`, then resume or stop it.
    Snapshot { snapshot: String, then: AfterSnapshot, reply: RpcReplyPort<Result<SnapshotInfo>> },
}

/// Notices from the VM's children (process, control, console, probe) and
/// its own timers.
#[allow(clippy::large_enum_variant)]
pub enum VmNotice {
    ProcessExited { pid: i32, exit: ExitInfo },
    /// The wait for the control channel after an exit ran out.
    ExitDrained { pid: i32 },
    ControlUp { status: GuestStatus },
    ControlFailed { error: String },
    /// The backoff after a control failure ran out: connect again.
    ReconnectControl,
    Control(ControlEvent),
    ConsoleReady,
    /// The readiness probe answered in guest boot `boot` of the current run.
    ProbeReady { boot: u64 },
    /// The restart policy's timer: start again unless `token` is stale
    /// (an operator's start, stop or remove cancels it).
    RestartNow { token: u64 },
    /// The wait of `rung` (in stop attempt `attempt`, due at
    /// `deadline_ms`) ran out; a shortened wait makes the old one stale.
    LadderTimeout { attempt: u64, rung: Rung, deadline_ms: u64 },
    /// The action of `rung` failed; escalate without waiting.
    LadderActionFailed { attempt: u64, rung: Rung, error: String },
    PauseDone { result: std::result::Result<(), String>, pause: bool, reply: RpcReplyPort<Result<VmInfo>> },
    SnapshotDone { result: Result<SnapshotInfo>, then: AfterSnapshot, reply: RpcReplyPort<Result<SnapshotInfo>> },
}

impl VmMessage {
    /// Answers a request whose VM does not exist (used by the Registry).
    pub fn reply_not_found(self, name: &str) {
        if let VmMessage::Request(r) = self {
            r.reply_not_found(name);
        }
    }
}

impl VmRequest {
    /// Answers this request with "no VM named ...".
    pub fn reply_not_found(self, name: &str) {
        let nf = || Error::NotFound { name: name.to_string() };
        match self {
            VmRequest::Start { reply, .. } | VmRequest::Pause { reply } | VmRequest::Resume { reply } => {
                let _ = reply.send(Err(nf()));
            }
            VmRequest::Stop { reply, .. } => {
                let _ = reply.send(Err(nf()));
            }
            VmRequest::Remove { reply, .. } => {
                let _ = reply.send(Err(nf()));
            }
            VmRequest::Follow { reply } => {
                let _ = reply.send(Err(nf()));
            }
            VmRequest::Attach { reply } => {
                let _ = reply.send(Err(nf()));
            }
            VmRequest::Snapshot { reply, .. } => {
                let _ = reply.send(Err(nf()));
            }
        }
    }
}
