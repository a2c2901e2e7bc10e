//! Paddock: a supervisor runtime for virtual machines.
//!
//! Embed it with [`Runtime`] (typed async methods and an event stream, no
//! global state), or run `paddock serve` and drive it over its Unix-socket
//! HTTP API with the `paddock` CLI ([`client::Client`]).
//!
//! ```text
//! systemd -> paddock serve (daemon.rs) -> HTTP API on a Unix socket (api/)
//!         -> Runtime (runtime.rs) -> Registry actor -> VM actor per VM
//!         -> Process / Control / Console children -> the hypervisor process
//! ```

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dir_lock;
pub mod host;
pub mod idempotency;
pub mod metrics;
pub mod run_end;
pub mod project;
pub mod project_kdl;
mod runtime;

pub use paddock_actors::spec;
pub use paddock_actors::{
    Bounds, ConsoleAttach, ConsoleFollow, ConsoleLogLimits, ConsoleLogSpec, Error, Event, EventKind, EventRetention, ExitInfo, Result, Rung, SpecError,
    StopOutcome, VmInfo, VmPhase,
    VmSpec, WaitFor,
};
pub use runtime::{Runtime, RuntimeConfig};

// What an embedder needs to write specs and read answers, without
// depending on the inner crates.
pub use paddock_actors::board::{ForwardInfo, NetworkInfo};
pub use paddock_actors::netmgr::NetConfig;
pub use paddock_actors::spec::{
    Accel, BackendKind, Boot, CloudInitFile, CloudInitSpec, CloudInitUser, DataDiskSpec, Disk, LauncherSpec, Network, NetworkMode,
    RestartPolicy, RestartSpec, ServiceDiskSpec, ServiceFile, ServiceTree,
};
pub use paddock_actors::volumes::VolumeInfo;
pub use paddock_actors::snapshot::{AfterSnapshot, SnapshotError, SnapshotInfo};
pub use paddock_actors::vsock::{VsockError, VsockInfo, VsockStream};
pub use paddock_images::{DiskFormat, SeedFormat};
pub use paddock_net::{PortForward, Protocol};
