//! The full render: the whole `ip paddock` table as one nft transaction
//! (create-if-missing, delete, recreate), sets filled from the lease rows.
//! It is loaded at the first lease, after the reaper's repair and when the
//! last lease goes; between those, lease changes are netlink element
//! batches (see `Table`), and a test checks that the kernel then holds
//! exactly what this render says.
//!
//! Text because the ruleset is reviewed and golden-tested as text, the
//! form operators read in `nft list table ip paddock`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::element::{elements_of, group_set, Element, MAP_FORWARDS, SET_ADDR, SET_HOST_PORTS, SET_MAC};
use super::{LeaseRules, Masquerade, TableConfig, TABLE};
use crate::names::TAP_PREFIX;

/// Taps of each group that two or more leases share (a group of one opens
/// nothing, so it has no set).
pub fn shared_groups(leases: &[LeaseRules]) -> BTreeMap<String, BTreeSet<String>> {
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in leases {
        for g in &l.groups {
            groups.entry(g.clone()).or_default().insert(l.tap.clone());
        }
    }
    groups.retain(|_, taps| taps.len() > 1);
    groups
}

/// One rule per shared group, in group order (the chain is rewritten
/// whole when a group appears or goes).
pub fn group_rule(group: &str) -> String {
    let set = group_set(group);
    format!("iifname @{set} oifname @{set} accept")
}

fn set_block(s: &mut String, kind: &str, name: &str, ty: &str, elems: &[String]) {
    let _ = writeln!(s, "\t{kind} {name} {{\n\t\ttype {ty}");
    if !elems.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
    }
    let _ = writeln!(s, "\t}}");
}

/// The whole transaction. No leases: an empty table (no rules at all).
pub fn render(cfg: &TableConfig, leases: &[LeaseRules]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table ip {TABLE} {{}}\ndelete table ip {TABLE}");
    if leases.is_empty() {
        let _ = writeln!(s, "table ip {TABLE} {{}}");
        return s;
    }
    let all_taps = format!("\"{TAP_PREFIX}*\"");
    // A forward's host port belongs to one VM (the registry refuses a
    // second); should two rows claim it anyway, the first lease keeps it.
    let mut forwards = BTreeMap::new();
    let mut elems: BTreeMap<String, BTreeSet<Element>> = BTreeMap::new();
    for e in leases.iter().flat_map(elements_of) {
        if let Element::Forward { protocol, host, .. } = &e {
            if forwards.insert((*protocol, *host), ()).is_some() {
                continue;
            }
        }
        elems.entry(e.set()).or_default().insert(e);
    }
    let text = |set: &str| -> Vec<String> { elems.get(set).map(|v| v.iter().map(Element::text).collect()).unwrap_or_default() };

    let _ = writeln!(s, "table ip {TABLE} {{");
    set_block(&mut s, "set", SET_MAC, "ifname . ether_addr", &text(SET_MAC));
    set_block(&mut s, "set", SET_ADDR, "ifname . ipv4_addr", &text(SET_ADDR));
    set_block(&mut s, "set", SET_HOST_PORTS, "ifname . inet_service", &text(SET_HOST_PORTS));
    set_block(&mut s, "map", MAP_FORWARDS, "inet_proto . inet_service : ipv4_addr . inet_service", &text(MAP_FORWARDS));
    let groups = shared_groups(leases);
    for (g, taps) in &groups {
        let members: Vec<String> = taps.iter().map(|t| Element::Member { group: g.clone(), tap: t.clone() }.text()).collect();
        set_block(&mut s, "set", &group_set(g), "ifname", &members);
    }

    // A packet from a TAP must carry its lease's MAC and address (a TAP
    // without a lease matches neither set, so all its packets drop).
    let _ = writeln!(s, "\tchain pd_antispoof {{\n\t\ttype filter hook prerouting priority raw; policy accept;");
    let _ = writeln!(s, "\t\tiifname {all_taps} iifname . ether saddr != @{SET_MAC} counter drop comment \"spoofed MAC\"");
    let _ = writeln!(s, "\t\tiifname {all_taps} iifname . ip saddr != @{SET_ADDR} counter drop comment \"spoofed address\"");
    // TAPs have route_localnet (for forwards from the host's loopback):
    // a guest must never reach the host's 127.0.0.0/8 through it.
    let _ = writeln!(s, "\t\tiifname {all_taps} ip daddr 127.0.0.0/8 counter drop comment \"no loopback from guests\"");
    let _ = writeln!(s, "\t}}");

    // Port forwards: traffic to any local address of the host.
    for (chain, hook, prio) in [("pd_dnat", "prerouting", "dstnat"), ("pd_dnat_local", "output", "-100")] {
        let _ = writeln!(s, "\tchain {chain} {{\n\t\ttype nat hook {hook} priority {prio}; policy accept;");
        let _ = writeln!(s, "\t\tfib daddr type local dnat ip to meta l4proto . th dport map @{MAP_FORWARDS} comment \"port forwards\"");
        let _ = writeln!(s, "\t}}");
    }

    // VM -> VM only within a shared group; into a VM only as a reply or
    // through a published port.
    let _ = writeln!(s, "\tchain pd_groups {{");
    for g in groups.keys() {
        let _ = writeln!(s, "\t\t{}", group_rule(g));
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "\tchain pd_forward {{\n\t\ttype filter hook forward priority filter; policy accept;");
    let _ = writeln!(s, "\t\tct state established,related accept");
    let _ = writeln!(s, "\t\tjump pd_groups");
    let _ = writeln!(s, "\t\toifname {all_taps} ct status dnat accept");
    let _ = writeln!(s, "\t\toifname {all_taps} counter drop");
    let _ = writeln!(s, "\t}}");

    // Guest -> host: ping the gateway, the allowed ports, nothing else.
    let _ = writeln!(s, "\tchain pd_input {{\n\t\ttype filter hook input priority filter; policy accept;");
    let _ = writeln!(s, "\t\tiifname {all_taps} ct state established,related accept");
    let _ = writeln!(s, "\t\tiifname {all_taps} icmp type echo-request accept");
    let _ = writeln!(s, "\t\tiifname {all_taps} iifname . tcp dport @{SET_HOST_PORTS} accept");
    let _ = writeln!(s, "\t\tiifname {all_taps} counter drop");
    let _ = writeln!(s, "\t}}");

    let _ = writeln!(s, "\tchain pd_postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;");
    // A forward used from the host itself (127.0.0.1:PORT): give the packet
    // the TAP's address as source, so the guest's reply routes back.
    let _ = writeln!(s, "\t\toifname {all_taps} ip saddr 127.0.0.0/8 ct status dnat masquerade comment \"forwards from the host's loopback\"");
    match &cfg.masquerade {
        Masquerade::Off => {}
        Masquerade::AnyUplink => {
            let _ = writeln!(s, "\t\tip saddr {} oifname != {all_taps} masquerade", cfg.pool_cidr);
        }
        Masquerade::Uplink(dev) => {
            let _ = writeln!(s, "\t\tip saddr {} oifname \"{dev}\" masquerade", cfg.pool_cidr);
        }
    }
    let _ = writeln!(s, "\t}}\n}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PortForward, Protocol};
    use std::net::Ipv4Addr;

    pub(crate) fn lease(vm: &str, i: u32, groups: &[&str]) -> LeaseRules {
        LeaseRules {
            vm: vm.into(),
            tap: crate::names::tap_name(i),
            mac: crate::names::lease_mac(i),
            guest: Ipv4Addr::new(10, 88, 0, (i * 4 + 2) as u8),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            host_ports: vec![],
            forwards: vec![],
        }
    }

    fn cfg() -> TableConfig {
        TableConfig { pool_cidr: "10.88.0.0/16".into(), masquerade: Masquerade::AnyUplink }
    }

    #[test]
    fn golden_ruleset() {
        let mut a = lease("web", 0, &["front"]);
        a.forwards = vec![PortForward { host: 8022, guest: 22, protocol: Protocol::Tcp }];
        a.host_ports = vec![53, 8080];
        let b = lease("db", 1, &["front"]);
        let c = lease("lonely", 2, &[]);
        let text = render(&cfg(), &[a, b, c]);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/nft-three-leases.nft");
        if std::env::var_os("PADDOCK_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        assert_eq!(text, std::fs::read_to_string(&path).unwrap(), "refresh with PADDOCK_UPDATE_GOLDEN=1 if intended");
    }

    #[test]
    fn only_shared_groups_open_vm_to_vm() {
        let text = render(&cfg(), &[lease("a", 0, &["g"]), lease("b", 1, &["g"]), lease("c", 2, &["h"])]);
        assert!(text.contains("set g_g {\n\t\ttype ifname\n\t\telements = { \"pdtap0\", \"pdtap1\" }"), "{text}");
        assert!(text.contains("iifname @g_g oifname @g_g accept"));
        // A group of one opens nothing.
        assert!(!text.contains("g_h"), "{text}");
    }

    #[test]
    fn no_leases_is_an_empty_table() {
        let text = render(&cfg(), &[]);
        assert_eq!(text, "table ip paddock {}\ndelete table ip paddock\ntable ip paddock {}\n");
    }

    #[test]
    fn a_host_port_claimed_twice_goes_to_the_first_lease() {
        let mut a = lease("a", 0, &[]);
        let mut b = lease("b", 1, &[]);
        a.forwards = vec![PortForward { host: 9000, guest: 80, protocol: Protocol::Tcp }];
        b.forwards = vec![PortForward { host: 9000, guest: 81, protocol: Protocol::Tcp }];
        let text = render(&cfg(), &[a, b]);
        assert!(text.contains("elements = { tcp . 9000 : 10.88.0.2 . 80 }"), "{text}");
    }
}
