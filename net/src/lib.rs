//! paddock-net: what a VM's network lease is made of.
//!
//! Owns: the address pool (a /30 per lease), TAP devices (persistent, named
//! from the lease index), link state through rtnetlink, Paddock's one
//! nftables table (isolation, anti-spoofing, NAT, port forwards), MAC
//! addresses, user-mode port forwards, and running host commands.
//! Does not own: actors, the database or VM lifecycles; the NetManager in
//! paddock-actors stores leases and calls into this crate.

mod cmd;
mod error;
mod forward;
pub mod link;
mod localnet;
mod mac;
pub mod names;
pub mod nft;
mod pool;
pub mod tap;

pub use error::{Error, Result};
pub use forward::{check_forwards, PortForward, Protocol};
pub use localnet::enable_route_localnet;
pub use mac::MacAddress;
pub use pool::{LeaseAddrs, Pool, LEASE_PREFIX};

/// True if this process holds CAP_NET_ADMIN (bit 12 of CapEff): TAP
/// devices and nftables need it.
pub fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("CapEff:")).and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok()))
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Turns on IPv4 forwarding if it is off; returns whether it changed.
pub fn ensure_ip_forward() -> std::io::Result<bool> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path)?.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(path, "1")?;
    Ok(true)
}
