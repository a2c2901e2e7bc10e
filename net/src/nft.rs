//! Paddock's one nftables table (`ip paddock`), rendered as text from the
//! lease rows and applied atomically with `nft -f -`: the file deletes and
//! recreates the table in a single transaction, so the rules are never
//! half-updated, duplicated, or left over from a VM that is gone. No other
//! table is touched.
//!
//! Text (not the JSON schema of the nftables crate) because the ruleset is
//! reviewed and golden-tested as text, the form operators read in
//! `nft list table ip paddock`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::names::TAP_PREFIX;
use crate::{Error, MacAddress, PortForward, Protocol};

pub const TABLE: &str = "paddock";

/// Everything the rules need to know about one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRules {
    pub vm: String,
    pub tap: String,
    pub mac: MacAddress,
    pub guest: Ipv4Addr,
    /// VMs sharing a group may reach each other.
    pub groups: Vec<String>,
    /// Host TCP ports the guest may reach (input); all else is dropped.
    pub host_ports: Vec<u16>,
    pub forwards: Vec<PortForward>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masquerade {
    Off,
    /// Out of any interface that is not one of our TAPs.
    AnyUplink,
    Uplink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    pub pool_cidr: String,
    pub masquerade: Masquerade,
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The whole transaction: create-if-missing, delete, recreate.
pub fn render(cfg: &TableConfig, leases: &[LeaseRules]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table ip {TABLE} {{}}\ndelete table ip {TABLE}");
    if leases.is_empty() {
        let _ = writeln!(s, "table ip {TABLE} {{}}");
        return s;
    }
    let all_taps = format!("\"{TAP_PREFIX}*\"");
    let _ = writeln!(s, "table ip {TABLE} {{");

    // A packet from a TAP must carry its lease's MAC and address.
    let _ = writeln!(s, "\tchain pd_antispoof {{\n\t\ttype filter hook prerouting priority raw; policy accept;");
    for l in leases {
        let _ = writeln!(s, "\t\tiifname \"{}\" ether saddr != {} counter drop comment \"spoof {}\"", l.tap, l.mac, l.vm);
        let _ = writeln!(s, "\t\tiifname \"{}\" ip saddr != {} counter drop comment \"spoof {}\"", l.tap, l.guest, l.vm);
    }
    // TAPs have route_localnet (for forwards from the host's loopback):
    // a guest must never reach the host's 127.0.0.0/8 through it.
    let _ = writeln!(s, "\t\tiifname {all_taps} ip daddr 127.0.0.0/8 counter drop comment \"no loopback from guests\"");
    let _ = writeln!(s, "\t}}");

    // Port forwards: traffic to any local address of the host.
    let forwards: Vec<String> = leases
        .iter()
        .flat_map(|l| {
            l.forwards.iter().map(move |f| {
                format!("fib daddr type local {} dport {} dnat to {}:{} comment \"forward {}\"", proto(f.protocol), f.host, l.guest, f.guest, l.vm)
            })
        })
        .collect();
    for (chain, hook, prio) in [("pd_dnat", "prerouting", "dstnat"), ("pd_dnat_local", "output", "-100")] {
        let _ = writeln!(s, "\tchain {chain} {{\n\t\ttype nat hook {hook} priority {prio}; policy accept;");
        for f in &forwards {
            let _ = writeln!(s, "\t\t{f}");
        }
        let _ = writeln!(s, "\t}}");
    }

    // VM -> VM only within a shared group; into a VM only as a reply or
    // through a published port.
    // One set of TAP names per group: linear in leases, not quadratic.
    let mut groups: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for l in leases {
        for g in &l.groups {
            groups.entry(g.as_str()).or_default().push(l.tap.as_str());
        }
    }
    let groups: Vec<(usize, &str, Vec<&str>)> =
        groups.into_iter().filter(|(_, t)| t.len() > 1).enumerate().map(|(i, (g, t))| (i, g, t)).collect();
    for (i, g, taps) in &groups {
        let elems: Vec<String> = taps.iter().map(|t| format!("\"{t}\"")).collect();
        let _ = writeln!(s, "\tset group{i} {{\n\t\ttype ifname\n\t\tcomment \"group {g}\"\n\t\telements = {{ {} }}\n\t}}", elems.join(", "));
    }
    let _ = writeln!(s, "\tchain pd_forward {{\n\t\ttype filter hook forward priority filter; policy accept;");
    let _ = writeln!(s, "\t\tct state established,related accept");
    for (i, _, _) in &groups {
        let _ = writeln!(s, "\t\tiifname @group{i} oifname @group{i} accept");
    }
    let _ = writeln!(s, "\t\toifname {all_taps} ct status dnat accept");
    let _ = writeln!(s, "\t\toifname {all_taps} counter drop");
    let _ = writeln!(s, "\t}}");

    // Guest -> host: ping the gateway, the allowed ports, nothing else.
    let _ = writeln!(s, "\tchain pd_input {{\n\t\ttype filter hook input priority filter; policy accept;");
    let _ = writeln!(s, "\t\tiifname {all_taps} ct state established,related accept");
    let _ = writeln!(s, "\t\tiifname {all_taps} icmp type echo-request accept");
    for l in leases.iter().filter(|l| !l.host_ports.is_empty()) {
        let ports: Vec<String> = l.host_ports.iter().map(u16::to_string).collect();
        let _ = writeln!(s, "\t\tiifname \"{}\" tcp dport {{ {} }} accept", l.tap, ports.join(", "));
    }
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

/// Applies a rendered transaction.
pub fn apply(ruleset: &str) -> Result<(), Error> {
    crate::cmd::run(&["nft", "-f", "-"], Some(ruleset)).map(drop)
}

/// The table as nft lists it (for tests and `paddock` diagnostics).
pub fn list() -> Result<String, Error> {
    crate::cmd::run(&["nft", "list", "table", "ip", TABLE], None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(vm: &str, i: u32, groups: &[&str]) -> LeaseRules {
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
        assert!(text.contains("elements = { \"pdtap0\", \"pdtap1\" }"), "{text}");
        assert!(text.contains("iifname @group0 oifname @group0 accept"));
        // A group of one opens nothing.
        assert!(!text.contains("pdtap2\" }") && !text.contains("@group1"), "{text}");
    }

    #[test]
    fn no_leases_is_an_empty_table() {
        let text = render(&cfg(), &[]);
        assert_eq!(text, "table ip paddock {}\ndelete table ip paddock\ntable ip paddock {}\n");
    }
}
