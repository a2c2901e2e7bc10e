//! The VM supervisor: one actor per VM, the only place that decides the
//! VM's phase. Children: Process (hypervisor), Control (QMP / CH API) and
//! Console. See `phase` for the lifecycle and `actor` for how messages
//! become phase events and effects.

mod actor;
mod messages;
pub mod core;
pub mod restart;
pub use crate::state::phase;

pub use actor::{Recovery, VmActor, VmArgs, VmDeps, RUNG_WAIT};
pub use messages::{StopOutcome, VmMessage, VmNotice, VmRequest, WaitFor};
