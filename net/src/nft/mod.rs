//! Paddock's one nftables table (`ip paddock`). Its rules are fixed; what
//! differs per lease lives in named sets and maps (MAC, address, host
//! ports, forwards, one set per shared group). No other table is touched.
//!
//! `Table` loads the full render (`nft -f`, one transaction) at the first
//! lease, on repair and when the last lease goes, and turns every other
//! lease change into element additions and deletions in one atomic netlink
//! batch: no process, and a cost that does not grow with the number of
//! leases. It remembers what it applied; after a failed batch it forgets,
//! and the next change loads the full render again.

mod element;
mod netlink;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub use element::{group_set, Element};
pub use render::render;

use crate::{Error, MacAddress, PortForward};

pub const TABLE: &str = "paddock";
/// The chain holding one `iifname @g oifname @g accept` per shared group.
pub const GROUPS_CHAIN: &str = "pd_groups";

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

/// How a change reached the kernel (for logs and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    /// Element (and group set) changes in one netlink batch.
    Batch,
    /// The whole table through `nft -f`.
    FullRender,
}

/// The table as this process last applied it.
struct Loaded {
    /// By VM name, in the order the full render lists them.
    leases: BTreeMap<String, LeaseRules>,
    /// Members (TAP names) of every group, shared or not.
    members: BTreeMap<String, BTreeSet<String>>,
}

pub struct Table {
    cfg: TableConfig,
    loaded: Option<Loaded>,
    socket: Option<netlink::NfSocket>,
}

/// Applies a rendered transaction.
pub fn apply(ruleset: &str) -> Result<(), Error> {
    crate::cmd::run(&["nft", "-f", "-"], Some(ruleset)).map(drop)
}

/// The table as nft lists it (for tests and `paddock` diagnostics).
pub fn list() -> Result<String, Error> {
    crate::cmd::run(&["nft", "list", "table", "ip", TABLE], None)
}

fn members_of(leases: &BTreeMap<String, LeaseRules>) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in leases.values() {
        for g in &l.groups {
            m.entry(g.clone()).or_default().insert(l.tap.clone());
        }
    }
    m
}

impl Table {
    pub fn new(cfg: TableConfig) -> Table {
        Table { cfg, loaded: None, socket: None }
    }

    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// True once a full render is in the kernel and every change since
    /// went through.
    pub fn is_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    /// Forget what was applied: the next change loads the full render.
    pub fn invalidate(&mut self) {
        self.loaded = None;
    }

    /// False when the table is not loaded, or has leases but the kernel
    /// lacks its sets (someone deleted the table or flushed the ruleset):
    /// then the reaper loads it again. With no lease the table is empty,
    /// and a missing one does no harm.
    pub fn intact(&mut self) -> Result<bool, Error> {
        match &self.loaded {
            None => Ok(false),
            Some(l) if l.leases.is_empty() => Ok(true),
            Some(_) => self.socket_mut()?.has_set(element::SET_MAC),
        }
    }

    /// The leases as applied, in render order.
    pub fn leases(&self) -> Vec<LeaseRules> {
        self.loaded.as_ref().map(|l| l.leases.values().cloned().collect()).unwrap_or_default()
    }

    /// Replaces the whole table with the full render of `leases`.
    pub fn load(&mut self, leases: &[LeaseRules]) -> Result<(), Error> {
        self.loaded = None;
        let map: BTreeMap<String, LeaseRules> = leases.iter().map(|l| (l.vm.clone(), l.clone())).collect();
        let ordered: Vec<LeaseRules> = map.values().cloned().collect();
        apply(&render(&self.cfg, &ordered))?;
        self.loaded = Some(Loaded { members: members_of(&map), leases: map });
        Ok(())
    }

    /// Sets the VM's lease rules (new or changed); `None` removes them.
    /// Needs a loaded table (see `load`); on error nothing was applied
    /// and the table is marked for a full reload. Costs the same whatever
    /// the number of leases: nothing here walks them all.
    pub fn update(&mut self, vm: &str, new: Option<LeaseRules>) -> Result<Applied, Error> {
        let Some(loaded) = self.loaded.as_ref() else {
            return Err(Error::Netlink { what: "nftables update".into(), message: "the table is not loaded yet".into() });
        };
        let old = loaded.leases.get(vm);
        if old == new.as_ref() {
            return Ok(Applied::Nothing);
        }
        // The first lease builds the table, the last one empties it: both
        // are full renders (the table has no rules while no lease exists).
        let becomes_empty = new.is_none() && loaded.leases.len() == usize::from(old.is_some());
        if loaded.leases.is_empty() || becomes_empty {
            let all: Vec<LeaseRules> = loaded.leases.values().filter(|l| l.vm != vm).cloned().chain(new).collect();
            self.load(&all)?;
            return Ok(Applied::FullRender);
        }
        let changes = delta(loaded, old, new.as_ref());
        let mut batch = self.socket_mut()?.batch();
        changes.fill(&mut batch);
        if let Err(e) = self.socket_mut()?.commit(batch) {
            self.loaded = None;
            return Err(e);
        }
        if let Some(loaded) = self.loaded.as_mut() {
            if let Some(o) = loaded.leases.remove(vm) {
                for g in &o.groups {
                    if let Some(t) = loaded.members.get_mut(g) {
                        t.remove(&o.tap);
                        if t.is_empty() {
                            loaded.members.remove(g);
                        }
                    }
                }
            }
            if let Some(n) = new {
                for g in &n.groups {
                    loaded.members.entry(g.clone()).or_default().insert(n.tap.clone());
                }
                loaded.leases.insert(vm.to_string(), n);
            }
        }
        Ok(Applied::Batch)
    }

    fn socket_mut(&mut self) -> Result<&mut netlink::NfSocket, Error> {
        if self.socket.is_none() {
            self.socket = Some(netlink::NfSocket::open()?);
        }
        self.socket.as_mut().ok_or_else(|| Error::Netlink { what: "nftables socket".into(), message: "not open".into() })
    }

}

/// What one lease change does to the kernel's table.
#[derive(Default)]
struct Delta {
    created: Vec<String>,
    dropped: Vec<String>,
    dels: Vec<Element>,
    adds: Vec<Element>,
    /// Every shared group once the change is applied (only read when a
    /// group set appears or goes: the group rules are rewritten then).
    shared_after: Vec<String>,
}

/// The change turning `old` into `new`. Group sets are looked at only for
/// the groups the lease is in: the cost is independent of other leases.
fn delta(loaded: &Loaded, old: Option<&LeaseRules>, new: Option<&LeaseRules>) -> Delta {
    let old_e: BTreeSet<Element> = old.map(element::elements_of).unwrap_or_default().into_iter().collect();
    let new_e: BTreeSet<Element> = new.map(element::elements_of).unwrap_or_default().into_iter().collect();
    let mut d = Delta {
        dels: old_e.difference(&new_e).cloned().collect(),
        adds: new_e.difference(&old_e).cloned().collect(),
        ..Delta::default()
    };
    let touched: BTreeSet<&String> = old.iter().chain(new.iter()).flat_map(|l| l.groups.iter()).collect();
    let empty = BTreeSet::new();
    for g in &touched {
        let before = loaded.members.get(*g).unwrap_or(&empty);
        let removed = old.filter(|o| o.groups.contains(g)).map(|o| o.tap.as_str());
        let added = new.filter(|n| n.groups.contains(g)).map(|n| n.tap.as_str());
        if removed == added {
            continue;
        }
        let after_len = before.len() - usize::from(removed.is_some_and(|t| before.contains(t))) + usize::from(added.is_some_and(|t| !before.contains(t) || removed == Some(t)));
        let member = |tap: &str| Element::Member { group: (*g).clone(), tap: tap.to_string() };
        match (before.len() > 1, after_len > 1) {
            (false, true) => {
                d.created.push((*g).clone());
                // A group becomes shared with its second member: `before`
                // holds at most one TAP here.
                d.adds.extend(before.iter().map(String::as_str).filter(|t| Some(*t) != removed).chain(added).map(member));
            }
            (true, false) => d.dropped.push((*g).clone()),
            (true, true) => {
                d.dels.extend(removed.map(member));
                d.adds.extend(added.map(member));
            }
            (false, false) => {}
        }
    }
    if !d.created.is_empty() || !d.dropped.is_empty() {
        let mut shared: BTreeSet<String> = loaded.members.iter().filter(|(_, t)| t.len() > 1).map(|(g, _)| g.clone()).collect();
        shared.extend(d.created.iter().cloned());
        for g in &d.dropped {
            shared.remove(g);
        }
        d.shared_after = shared.into_iter().collect();
    }
    d
}

impl Delta {
    /// Sets that appear come first, then element deletions and additions,
    /// then the group rules (rewritten when a group set appears or goes),
    /// then sets that go.
    fn fill(&self, batch: &mut netlink::Batch) {
        for g in &self.created {
            batch.new_ifname_set(&group_set(g));
        }
        for (add, elems) in [(false, &self.dels), (true, &self.adds)] {
            let mut by_set: BTreeMap<String, Vec<&Element>> = BTreeMap::new();
            for e in elems.iter() {
                by_set.entry(e.set()).or_default().push(e);
            }
            for (set, elems) in &by_set {
                batch.elements(add, set, elems);
            }
        }
        if !self.created.is_empty() || !self.dropped.is_empty() {
            batch.flush_chain(GROUPS_CHAIN);
            for g in &self.shared_after {
                batch.same_set_accept_rule(GROUPS_CHAIN, &group_set(g));
            }
        }
        for g in &self.dropped {
            batch.delete_set(&group_set(g));
        }
    }
}
