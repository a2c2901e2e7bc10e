//! What a lease puts into the table: elements of its named sets and maps.
//! The rules never mention a lease; they look packets up in these sets, so
//! a lease change is element additions and deletions, never a rule edit.
//! Each element knows its nft text (for the full render) and its kernel
//! bytes (for netlink batches): both come from here, so they cannot drift.

use std::net::Ipv4Addr;

use super::LeaseRules;
use crate::{MacAddress, Protocol};

/// (TAP name . MAC) a packet from that TAP must carry.
pub const SET_MAC: &str = "lease_mac";
/// (TAP name . address) a packet from that TAP must carry.
pub const SET_ADDR: &str = "lease_addr";
/// (TAP name . TCP port) of the host the guest may reach.
pub const SET_HOST_PORTS: &str = "host_ports";
/// (protocol . host port) -> (guest address . guest port).
pub const MAP_FORWARDS: &str = "forwards";
/// Group sets are named `g_<group>` (group names are a-z, 0-9, '-', '_').
pub const GROUP_SET_PREFIX: &str = "g_";

/// IFNAMSIZ: the kernel's ifname keys are 16 bytes, NUL padded.
const IFNAME_LEN: usize = 16;

pub fn group_set(group: &str) -> String {
    format!("{GROUP_SET_PREFIX}{group}")
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Mac { tap: String, mac: MacAddress },
    Addr { tap: String, guest: Ipv4Addr },
    HostPort { tap: String, port: u16 },
    Forward { protocol: Protocol, host: u16, guest: Ipv4Addr, port: u16 },
    Member { group: String, tap: String },
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

pub fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// A concatenation field: the kernel pads each one to 4 bytes.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn ifname(out: &mut Vec<u8>, name: &str) {
    let mut b = [0u8; IFNAME_LEN];
    let n = name.len().min(IFNAME_LEN - 1);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    field(out, &b);
}

impl Element {
    /// The set or map holding it.
    pub fn set(&self) -> String {
        match self {
            Element::Mac { .. } => SET_MAC.into(),
            Element::Addr { .. } => SET_ADDR.into(),
            Element::HostPort { .. } => SET_HOST_PORTS.into(),
            Element::Forward { .. } => MAP_FORWARDS.into(),
            Element::Member { group, .. } => group_set(group),
        }
    }

    /// The element as nft writes it inside `elements = { ... }`.
    pub fn text(&self) -> String {
        match self {
            Element::Mac { tap, mac } => format!("\"{tap}\" . {mac}"),
            Element::Addr { tap, guest } => format!("\"{tap}\" . {guest}"),
            Element::HostPort { tap, port } => format!("\"{tap}\" . {port}"),
            Element::Forward { protocol, host, guest, port } => format!("{} . {host} : {guest} . {port}", proto_name(*protocol)),
            Element::Member { tap, .. } => format!("\"{tap}\""),
        }
    }

    /// NFTA_SET_ELEM_KEY's value.
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(24);
        match self {
            Element::Mac { tap, mac } => {
                ifname(&mut k, tap);
                field(&mut k, &mac.0);
            }
            Element::Addr { tap, guest } => {
                ifname(&mut k, tap);
                field(&mut k, &guest.octets());
            }
            Element::HostPort { tap, port } => {
                ifname(&mut k, tap);
                field(&mut k, &port.to_be_bytes());
            }
            Element::Forward { protocol, host, .. } => {
                field(&mut k, &[proto_number(*protocol)]);
                field(&mut k, &host.to_be_bytes());
            }
            Element::Member { tap, .. } => ifname(&mut k, tap),
        }
        k
    }

    /// NFTA_SET_ELEM_DATA's value (maps only).
    pub fn data(&self) -> Option<Vec<u8>> {
        match self {
            Element::Forward { guest, port, .. } => {
                let mut d = Vec::with_capacity(8);
                field(&mut d, &guest.octets());
                field(&mut d, &port.to_be_bytes());
                Some(d)
            }
            _ => None,
        }
    }
}

/// The lease's elements, group memberships excepted (a group's set exists
/// only while two leases share it; see `Table`).
pub fn elements_of(l: &LeaseRules) -> Vec<Element> {
    let mut out = vec![Element::Mac { tap: l.tap.clone(), mac: l.mac }, Element::Addr { tap: l.tap.clone(), guest: l.guest }];
    out.extend(l.host_ports.iter().map(|&port| Element::HostPort { tap: l.tap.clone(), port }));
    out.extend(l.forwards.iter().map(|f| Element::Forward { protocol: f.protocol, host: f.host, guest: l.guest, port: f.guest }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_lengths_of_the_set_types() {
        let tap = "pdtap7".to_string();
        // ifname . ether_addr = 16 + 8; ifname . ipv4_addr = 16 + 4.
        assert_eq!(Element::Mac { tap: tap.clone(), mac: MacAddress([2, 0, 0, 0, 0, 1]) }.key().len(), 24);
        assert_eq!(Element::Addr { tap: tap.clone(), guest: Ipv4Addr::new(10, 0, 0, 2) }.key().len(), 20);
        assert_eq!(Element::HostPort { tap: tap.clone(), port: 53 }.key().len(), 20);
        let f = Element::Forward { protocol: Protocol::Udp, host: 8053, guest: Ipv4Addr::new(10, 0, 0, 2), port: 53 };
        assert_eq!(f.key(), vec![17, 0, 0, 0, 0x1f, 0x75, 0, 0]);
        assert_eq!(f.data(), Some(vec![10, 0, 0, 2, 0, 53, 0, 0]));
        assert_eq!(&Element::Member { group: "g".into(), tap }.key()[..7], b"pdtap7\0");
    }
}
