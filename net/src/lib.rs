//! paddock-net: what a VM's network lease is made of.
//!
//! Owns: host->guest port forwards (validation and QEMU `hostfwd` rendering),
//! stable per-VM MAC addresses, and interface-name rules (IFNAMSIZ).
//! Does not own: actors, processes or the VM lifecycle; TAP devices and the
//! nftables table arrive with the networking issue and live here too.

mod error;
mod forward;
mod mac;

pub use error::{Error, Result};
pub use forward::{check_forwards, PortForward, Protocol};
pub use mac::MacAddress;
