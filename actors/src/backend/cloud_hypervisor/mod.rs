//! The Cloud Hypervisor backend: the same supervision as QEMU (Process,
//! Control and Console actors, the ladder, adoption), a different control
//! channel.
//!
//! ```text
//! argv.rs     cloud-hypervisor --api-socket path=... --event-monitor path=...  (pure)
//! config.rs   spec -> vm.create body (pure; golden-tested)
//! api.rs      typed request/response bodies, checked against the API spec
//! client.rs   HTTP/1 over the API's Unix socket, a deadline on every call
//! events.rs   the event monitor's stream of JSON objects -> ControlEvents
//! stale.rs    sockets and the API lock a dead CH left, removed before a start
//! exit.rs     CH's own record of an exit (an ERROR line on its stderr)
//! backend.rs  Backend + ControlChannel: boot sequence, status, ladder rungs
//! ```
//!
//! Cloud Hypervisor has no emulation fallback: it needs hardware
//! virtualisation, and `prepare` refuses a VM on a host without it (unless
//! the spec says `accel = "kvm"` explicitly).

pub mod api;
pub mod argv;
pub mod backend;
pub mod client;
pub mod config;
pub mod events;
pub mod exit;
pub mod stale;

pub use backend::CloudHypervisorBackend;
