//! paddock-actors: the supervision tree.
//!
//! ```text
//! Registry                 name -> VM actor; unique names; routes requests
//! `- VmActor "vm/<name>"   the VM's phase machine, restart policy, ladder
//!    |- Process            spawns the hypervisor; exit watch; signals by pidfd
//!    |- Control            QMP (or CH API) client; events; deadlines
//!    `- Console            console.log tail -> ring buffer, followers, writer
//! ```
//!
//! Owns: VM specs and their validation, hypervisor backends (QEMU, Cloud Hypervisor), the
//! durable store (SQLite), the event log and the status board. Does not
//! own: the HTTP API, the CLI or configuration files (root package).

pub mod backend;
pub mod bounds;
pub mod confine;
pub mod console;
pub mod console_log;
pub mod control;
pub mod display;
pub mod error;
pub mod private_dir;
pub mod probe;
pub mod failpoint;
pub mod host;
pub mod file_watch;
pub mod labels;
pub mod recovery;
pub mod registry;
mod ring;
pub mod snapshot;
pub mod spec;
pub mod steps;
pub mod ssh_key;
pub mod spec_error;
pub mod state;
pub mod vm;
pub mod volumes;
pub mod vsock;

// Grouped by concern (backend/, state/, host/); the flat paths stay valid.
pub use backend::{cloud_hypervisor, qemu};
pub use host::{accel, disks, netmgr, process};
pub use state::{board, events, store};

pub use backend::{Backend, RunPaths};
pub use board::{StatusBoard, VmInfo};
pub use bounds::{Bounds, ConsoleLogLimits, ConsoleLogSpec, EventRetention};
pub use console::{ConsoleAttach, ConsoleFollow};
pub use error::{Error, Result, SpecError};
pub use events::{Event, EventBus, EventKind};
pub use registry::{Backends, RecoveryReport, RegistryActor, RegistryArgs, RegistryMessage};
pub use spec::VmSpec;
pub use store::Store;
pub use vm::phase::{ExitInfo, Rung, VmPhase};
pub use vm::{StopOutcome, VmMessage, VmNotice, VmRequest, WaitFor};
