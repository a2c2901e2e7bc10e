//! The incremental table equals the full render: random, seeded sequences
//! of lease changes applied as netlink batches, and after each one the
//! kernel's table (`nft -j list table ip paddock`, read back) must equal
//! what the full render of the same leases loads into a fresh namespace.
//! Plus: a batch the kernel refuses changes nothing.
//!
//! Needs root; each side runs in a network namespace of its own
//! (unshare(CLONE_NEWNET) on its thread), so the host is never touched.
//! Seed: PADDOCK_NFT_SEED (else random, printed).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use paddock_net::names::{lease_mac, tap_name};
use paddock_net::nft::{render, Applied, LeaseRules, Masquerade, Table, TableConfig};
use paddock_net::{PortForward, Protocol};

const GROUPS: [&str; 4] = ["front", "back", "db-net", "x_1"];
const STEPS: usize = 120;

fn cfg() -> TableConfig {
    TableConfig { pool_cidr: "10.88.0.0/16".into(), masquerade: Masquerade::AnyUplink }
}

/// Moves the calling thread into a new, empty network namespace.
fn own_netns() {
    // SAFETY: unshare affects only the calling thread's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET) failed (this test needs root): {}", std::io::Error::last_os_error());
}

fn nft(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft runs (scripts/install-deps.sh installs it)");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::io::Write::write_all(&mut pipe, text.as_bytes()).expect("nft stdin");
    }
    let out = child.wait_with_output().expect("nft");
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The table as the kernel holds it, in a form where only meaning counts:
/// no handles, set elements sorted, sets and chains sorted (the kernel
/// lists them in creation order); rules keep their order.
fn kernel_table() -> Vec<String> {
    let text = nft(&["-j", "list", "table", "ip", "paddock"], None);
    let json: serde_json::Value = serde_json::from_str(&text).expect("nft -j output is JSON");
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("handle");
                if let Some(serde_json::Value::Array(elems)) = m.get_mut("elem") {
                    elems.sort_by_key(|e| e.to_string());
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut objects = Vec::new();
    let mut rules = Vec::new();
    for mut obj in json["nftables"].as_array().cloned().unwrap_or_default() {
        if obj.get("metainfo").is_some() {
            continue;
        }
        strip(&mut obj);
        if obj.get("rule").is_some() {
            rules.push(obj.to_string());
        } else {
            objects.push(obj.to_string());
        }
    }
    objects.sort();
    objects.extend(rules);
    objects
}

/// A thread in a namespace of its own that loads full renders and answers
/// with the kernel's table.
fn reference() -> (mpsc::Sender<String>, mpsc::Receiver<Vec<String>>) {
    let (tx_text, rx_text) = mpsc::channel::<String>();
    let (tx_table, rx_table) = mpsc::channel();
    std::thread::spawn(move || {
        own_netns();
        for text in rx_text {
            nft(&["-f", "-"], Some(&text));
            if tx_table.send(kernel_table()).is_err() {
                return;
            }
        }
    });
    (tx_text, rx_table)
}

struct World {
    rng: fastrand::Rng,
    leases: Vec<LeaseRules>,
    next_vm: u32,
}

impl World {
    fn free_index(&mut self) -> u32 {
        loop {
            let i = self.rng.u32(0..64);
            if !self.leases.iter().any(|l| l.tap == tap_name(i)) {
                return i;
            }
        }
    }

    /// Random groups, host ports and forwards; host ports of forwards are
    /// unique across leases, as the registry guarantees.
    fn dress(&mut self, l: &mut LeaseRules) {
        l.groups = GROUPS.iter().filter(|_| self.rng.u8(0..3) == 0).map(|g| g.to_string()).collect();
        l.host_ports = (0..self.rng.usize(0..3)).map(|_| self.rng.u16(1..100)).collect();
        l.host_ports.sort();
        l.host_ports.dedup();
        let mut forwards: Vec<PortForward> = Vec::new();
        for _ in 0..self.rng.usize(0..3) {
            let protocol = if self.rng.bool() { Protocol::Tcp } else { Protocol::Udp };
            let host = self.rng.u16(20000..20100);
            let taken = self.leases.iter().filter(|o| o.vm != l.vm).flat_map(|o| o.forwards.iter()).chain(forwards.iter()).any(|f| f.host == host && f.protocol == protocol);
            if !taken {
                forwards.push(PortForward { host, guest: self.rng.u16(1..1024), protocol });
            }
        }
        l.forwards = forwards;
    }

    fn new_lease(&mut self) -> LeaseRules {
        let i = self.free_index();
        self.next_vm += 1;
        let mut l = LeaseRules {
            vm: format!("vm{}", self.next_vm),
            tap: tap_name(i),
            mac: lease_mac(i),
            guest: Ipv4Addr::new(10, 88, 0, (i * 4 + 2) as u8),
            groups: vec![],
            host_ports: vec![],
            forwards: vec![],
        };
        self.dress(&mut l);
        l
    }

    /// One random change: (vm, its new rules or None).
    fn step(&mut self) -> (String, Option<LeaseRules>) {
        let roll = self.rng.u8(0..10);
        if self.leases.is_empty() || roll < 5 {
            let l = self.new_lease();
            self.leases.push(l.clone());
            return (l.vm.clone(), Some(l));
        }
        let k = self.rng.usize(0..self.leases.len());
        if roll < 8 {
            let l = self.leases.remove(k);
            return (l.vm, None);
        }
        let mut l = self.leases[k].clone();
        self.dress(&mut l);
        self.leases[k] = l.clone();
        (l.vm.clone(), Some(l))
    }
}

#[test]
fn every_sequence_of_batches_leaves_the_full_render_in_the_kernel() {
    let seed = std::env::var("PADDOCK_NFT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("PADDOCK_NFT_SEED={seed}");
    own_netns();
    let (to_ref, from_ref) = reference();
    let mut table = Table::new(cfg());
    table.load(&[]).expect("empty table");
    let mut world = World { rng: fastrand::Rng::with_seed(seed), leases: vec![], next_vm: 0 };
    let mut batches = 0;
    for step in 0..STEPS {
        let (vm, rules) = world.step();
        let what = format!("{vm} -> {rules:?}");
        if table.update(&vm, rules).unwrap_or_else(|e| panic!("step {step} (seed {seed}) {what}: {e}")) == Applied::Batch {
            batches += 1;
        }
        let mut rows = world.leases.clone();
        rows.sort_by(|a, b| a.vm.cmp(&b.vm));
        assert_eq!(table.leases(), rows, "the table's model drifted from the rows");
        to_ref.send(render(&cfg(), &rows)).expect("reference thread");
        let want = from_ref.recv().expect("reference table");
        assert_eq!(kernel_table(), want, "step {step} (seed {seed}): {what}: the incremental table differs from the full render");
    }
    println!("{STEPS} changes, {batches} as netlink batches");
    assert!(batches > STEPS / 2, "most changes must go as batches, not full renders ({batches} of {STEPS})");
}

#[test]
fn a_batch_the_kernel_refuses_changes_nothing() {
    own_netns();
    let lease = |vm: &str, i: u32, host: u16, guest: u16| LeaseRules {
        vm: vm.into(),
        tap: tap_name(i),
        mac: lease_mac(i),
        guest: Ipv4Addr::new(10, 88, 0, (i * 4 + 2) as u8),
        groups: vec!["g".into()],
        host_ports: vec![22],
        forwards: vec![PortForward { host, guest, protocol: Protocol::Tcp }],
    };
    let mut table = Table::new(cfg());
    table.load(&[lease("a", 0, 9000, 80), lease("b", 1, 9001, 80)]).expect("load");
    let before = kernel_table();
    // Same host port as "a", other guest: the map refuses the element, and
    // the MAC, address and group elements of the same batch must not stay.
    let err = table.update("c", Some(lease("c", 2, 9000, 81))).expect_err("a clashing forward must be refused");
    assert!(err.to_string().contains("forwards"), "the error names the map: {err}");
    assert_eq!(kernel_table(), before, "a refused batch left part of itself in the table");
    assert!(!table.is_loaded(), "after a refused batch the next change must reload the full table");
}

#[test]
fn a_flushed_ruleset_is_seen_as_not_intact() {
    own_netns();
    let l = LeaseRules {
        vm: "a".into(),
        tap: tap_name(0),
        mac: lease_mac(0),
        guest: Ipv4Addr::new(10, 88, 0, 2),
        groups: vec![],
        host_ports: vec![],
        forwards: vec![],
    };
    let mut table = Table::new(cfg());
    assert!(!table.intact().expect("check"), "a table never loaded is not intact");
    table.load(std::slice::from_ref(&l)).expect("load");
    assert!(table.intact().expect("check"));
    nft(&["flush", "ruleset"], None);
    assert!(!table.intact().expect("check"), "the reaper must see that the table is gone");
}
