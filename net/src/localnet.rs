//! Port forwards of TAP VMs reached from the host's own loopback.
//!
//! `ssh -p 8022 127.0.0.1` is DNATed to the guest in the nat output chain,
//! but the packet keeps its source 127.0.0.1, which the kernel refuses to
//! route out of a non-loopback interface unless that interface has
//! `route_localnet` set. With it set on our TAP, the table's postrouting
//! chain then masquerades such packets to the TAP's own address, so the
//! guest's reply comes back to the host (and conntrack undoes both NATs).
//! A guest cannot use this to reach the host's loopback: the table drops
//! every packet from a TAP to 127.0.0.0/8.

use crate::names::TAP_PREFIX;
use crate::Error;

/// Sets `net.ipv4.conf.<tap>.route_localnet = 1` on one of our TAPs.
pub fn enable_route_localnet(tap: &str) -> Result<(), Error> {
    // The name becomes a path: only our own `pdtap<digits>` names.
    let digits = tap.strip_prefix(TAP_PREFIX).unwrap_or("");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || tap.len() > 15 {
        return Err(Error::Tap { name: tap.into(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a Paddock TAP name") });
    }
    let path = format!("/proc/sys/net/ipv4/conf/{tap}/route_localnet");
    std::fs::write(&path, "1").map_err(|source| Error::Tap { name: tap.into(), source: std::io::Error::new(source.kind(), format!("cannot set {path}: {source}")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_tap_names_become_paths() {
        for bad in ["../../../etc/x", "pdtap", "pdtap1/../lo", "eth0", "pdtap12345678901"] {
            assert!(enable_route_localnet(bad).is_err(), "{bad}");
        }
    }
}
