//! The NetManager: grants and releases network leases and keeps the host in
//! line with the lease rows.
//!
//! A lease is a row first (allocated before the TAP exists), then a TAP
//! device marked with our owner alias, then elements of the one nftables
//! table's sets, added in one netlink batch (the full table is loaded from
//! all rows only at the first lease, by the reaper, and when a batch
//! fails). Release goes the other way and deletes the row exactly once,
//! after the device is gone. The reaper (at start and every minute)
//! deletes our TAPs without a lease, frees leases of VMs that no longer
//! exist, and reloads the table from the rows (its repair) when it changed
//! something or the kernel lost the table.

use paddock_net::link::Links;
use paddock_net::names::{lease_mac, owner_alias, tap_name, OWNER_ALIAS_PREFIX, TAP_PREFIX};
use paddock_net::nft::{LeaseRules, Masquerade, Table, TableConfig};
use paddock_net::{LeaseAddrs, MacAddress, Pool};
use tokio::sync::{Mutex, OnceCell};

use crate::error::{Error, Result, SpecError};
use crate::spec::{NetworkMode, VmSpec};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub pool: Pool,
    pub masquerade: Masquerade,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            // Valid CIDR literal: a /16 from the private range.
            pool: Pool::new(std::net::Ipv4Addr::new(10, 88, 0, 0), 16).unwrap_or_else(|_| unreachable!("10.88.0.0/16 is a valid pool")),
            masquerade: Masquerade::AnyUplink,
        }
    }
}

/// What a VM gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    pub vm: String,
    pub index: u32,
    pub tap: String,
    pub mac: String,
    pub addrs: LeaseAddrs,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReapReport {
    pub taps_deleted: Vec<String>,
    pub leases_freed: Vec<String>,
}

pub struct NetManager {
    cfg: NetConfig,
    store: Store,
    links: OnceCell<Links>,
    /// Serialises lease changes and table loads; the table as applied.
    lock: Mutex<Table>,
}

fn net_err(vm: &str, e: paddock_net::Error) -> Error {
    Error::Network { name: vm.to_string(), source: e }
}

impl NetManager {
    pub fn new(cfg: NetConfig, store: Store) -> Self {
        let table = Table::new(TableConfig { pool_cidr: cfg.pool.cidr(), masquerade: cfg.masquerade.clone() });
        NetManager { cfg, store, links: OnceCell::new(), lock: Mutex::new(table) }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    async fn links(&self) -> std::result::Result<&Links, paddock_net::Error> {
        self.links.get_or_try_init(|| async { Links::open() }).await
    }

    /// Refuses a TAP VM where TAPs cannot be made.
    pub fn check_allowed(spec: &VmSpec) -> Result<()> {
        if spec.network.mode == NetworkMode::Tap && !paddock_net::has_net_admin() {
            return Err(SpecError::new(
                "network.mode",
                "\"tap\" needs CAP_NET_ADMIN, which paddock serve does not have; run it as root (or grant the capability), or use mode = \"user\"",
            )
            .into());
        }
        Ok(())
    }

    fn lease_of(&self, vm: &str, index: u32) -> Option<Lease> {
        let addrs = self.cfg.pool.addrs(index)?;
        Some(Lease { vm: vm.to_string(), index, tap: tap_name(index), mac: lease_mac(index).to_string(), addrs })
    }

    /// The VM's lease, creating row, TAP and rules as needed (idempotent:
    /// a VM that has its lease gets the same one back, its TAP re-created
    /// if it vanished, e.g. after a host reboot).
    pub async fn acquire(&self, vm: &str) -> Result<Lease> {
        let mut table = self.lock.lock().await;
        let t0 = std::time::Instant::now();
        let index = self.store.allocate_lease(vm, self.cfg.pool.capacity()).await?.ok_or_else(|| {
            Error::from(SpecError::new(
                "network.mode",
                format!("the address pool {} is exhausted ({} leases); remove VMs or configure a larger --net-pool", self.cfg.pool.cidr(), self.cfg.pool.capacity()),
            ))
        })?;
        crate::crash_point!("lease.after-row");
        let lease = self.lease_of(vm, index).ok_or_else(|| Error::Unavailable(format!("lease index {index} is outside the pool")))?;
        let row_us = t0.elapsed().as_micros();
        if let Err(e) = self.ensure_tap(&lease).await {
            // Roll back: nothing half-created stays.
            let _ = self.store.release_lease(vm).await;
            return Err(net_err(vm, e));
        }
        let tap_us = t0.elapsed().as_micros() - row_us;
        let rules = match self.store.lease(vm).await {
            Ok(Some((_, spec))) => spec.and_then(|s| self.rules_of(vm, index, &s)),
            Ok(None) => None,
            Err(e) => {
                self.delete_tap(&lease.tap, vm).await;
                let _ = self.store.release_lease(vm).await;
                return Err(e.into());
            }
        };
        if let Err(e) = self.apply_lease(&mut table, vm, rules).await {
            self.delete_tap(&lease.tap, vm).await;
            let _ = self.store.release_lease(vm).await;
            let _ = self.apply_lease(&mut table, vm, None).await;
            return Err(net_err(vm, e));
        }
        let table_us = t0.elapsed().as_micros() - row_us - tap_us;
        match paddock_net::ensure_ip_forward() {
            Ok(true) => tracing::info!("enabled IPv4 forwarding (net.ipv4.ip_forward = 1) for TAP leases"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot enable IPv4 forwarding; leased guests will not reach the outside"),
        }
        tracing::info!(vm, tap = %lease.tap, guest = %lease.addrs.guest, row_us, tap_us, table_us, "lease granted");
        Ok(lease)
    }

    async fn ensure_tap(&self, lease: &Lease) -> std::result::Result<(), paddock_net::Error> {
        let links = self.links().await?;
        let alias = owner_alias(&lease.vm);
        let existing = links.get(&lease.tap).await?;
        let created = existing.is_none();
        // A new TAP stays pending (it vanishes if we die) until it carries
        // our owner alias: a crash in between never leaves an unmarked TAP
        // that the reaper may not touch and that blocks the lease's index.
        let mut pending = None;
        match existing {
            Some(li) if li.alias.as_deref() == Some(alias.as_str()) => {}
            Some(li) => {
                return Err(paddock_net::Error::Foreign {
                    name: lease.tap.clone(),
                    detail: match li.alias {
                        Some(a) => format!("its owner alias is {a:?}"),
                        None => "it has no Paddock owner alias".into(),
                    },
                });
            }
            None => pending = Some(paddock_net::tap::create_pending(&lease.tap)?),
        }
        let li = links.get(&lease.tap).await?.ok_or_else(|| paddock_net::Error::Netlink {
            what: format!("find {}", lease.tap),
            message: "vanished right after creation".into(),
        })?;
        if let Err(e) = links.configure(li.index, &lease.tap, &alias, lease.addrs.gateway, lease.addrs.prefix).await {
            if created {
                let _ = links.delete(li.index, &lease.tap).await;
            }
            return Err(e);
        }
        // Forwards reachable on the host's 127.0.0.1 (see paddock_net::localnet).
        if let Err(e) = paddock_net::enable_route_localnet(&lease.tap) {
            if created {
                let _ = links.delete(li.index, &lease.tap).await;
            }
            return Err(e);
        }
        match pending {
            Some(p) => p.persist(),
            None => Ok(()),
        }
    }

    async fn delete_tap(&self, tap: &str, vm: &str) {
        let Ok(links) = self.links().await else { return };
        if let Ok(Some(li)) = links.get(tap).await {
            if li.alias.as_deref() == Some(owner_alias(vm).as_str()) {
                if let Err(e) = links.delete(li.index, tap).await {
                    tracing::error!(vm, tap, error = %e, "cannot delete TAP");
                }
            }
        }
    }

    /// Deletes the TAP, then the row (exactly once), then rebuilds rules.
    pub async fn release(&self, vm: &str) -> Result<()> {
        let mut table = self.lock.lock().await;
        let Some((index, _)) = self.store.lease(vm).await? else {
            return Ok(());
        };
        self.delete_tap(&tap_name(index), vm).await;
        if self.store.release_lease(vm).await? {
            tracing::info!(vm, tap = %tap_name(index), "lease released");
        }
        self.apply_lease(&mut table, vm, None).await.map_err(|e| net_err(vm, e))
    }

    /// Reloads the whole table from the lease rows.
    pub async fn rebuild(&self) -> Result<()> {
        let mut table = self.lock.lock().await;
        self.load_locked(&mut table).await.map_err(|e| net_err("*", e))
    }

    fn rules_of(&self, vm: &str, idx: u32, spec: &VmSpec) -> Option<LeaseRules> {
        let addrs = self.cfg.pool.addrs(idx)?;
        Some(LeaseRules {
            vm: vm.to_string(),
            tap: tap_name(idx),
            mac: lease_mac(idx),
            guest: addrs.guest,
            groups: spec.network.groups.clone(),
            host_ports: spec.network.host_ports.clone(),
            forwards: spec.network.forwards.clone(),
        })
    }

    /// One lease's change as one netlink batch; the full table from the
    /// rows when nothing is loaded yet or the batch fails (the rows are
    /// the truth, the kernel's table follows them).
    async fn apply_lease(&self, table: &mut Table, vm: &str, rules: Option<LeaseRules>) -> std::result::Result<(), paddock_net::Error> {
        if table.is_loaded() {
            match table.update(vm, rules) {
                Ok(applied) => {
                    tracing::debug!(vm, ?applied, "nftables lease change");
                    return Ok(());
                }
                Err(e) => tracing::warn!(vm, error = %e, "nftables batch failed; reloading the whole table from the lease rows"),
            }
        }
        self.load_locked(table).await
    }

    async fn load_locked(&self, table: &mut Table) -> std::result::Result<(), paddock_net::Error> {
        let rows = self.store.leases().await.map_err(|e| paddock_net::Error::Pool(e.to_string()))?;
        let rules: Vec<LeaseRules> = rows.into_iter().filter_map(|(vm, idx, spec)| self.rules_of(&vm, idx, &spec?)).collect();
        // `nft -f` blocks for tens of milliseconds: off the async workers.
        let mut owned = std::mem::replace(table, Table::new(table.config().clone()));
        let (owned, result) = tokio::task::spawn_blocking(move || {
            let r = owned.load(&rules);
            (owned, r)
        })
        .await
        .map_err(|e| paddock_net::Error::Pool(format!("nft worker: {e}")))?;
        *table = owned;
        result
    }

    /// Deletes our TAPs that have no lease, frees leases whose VM is gone,
    /// and rebuilds the table. Touches nothing when Paddock has never made
    /// a lease here (so hosts without nftables are left alone).
    pub async fn reap(&self) -> Result<ReapReport> {
        let mut table = self.lock.lock().await;
        let mut report = ReapReport::default();
        let rows = self.store.leases().await?;
        for (vm, _, spec) in &rows {
            if spec.is_none() && self.store.release_lease(vm).await? {
                report.leases_freed.push(vm.clone());
            }
        }
        let live: Vec<(String, String)> = rows.iter().filter(|(_, _, s)| s.is_some()).map(|(vm, i, _)| (tap_name(*i), owner_alias(vm))).collect();
        let links = self.links().await.map_err(|e| net_err("*", e))?;
        let ours: Vec<_> = links
            .list()
            .await
            .map_err(|e| net_err("*", e))?
            .into_iter()
            .filter(|l| l.name.starts_with(TAP_PREFIX) && l.alias.as_deref().is_some_and(|a| a.starts_with(OWNER_ALIAS_PREFIX)))
            .collect();
        for l in &ours {
            if !live.iter().any(|(name, alias)| *name == l.name && l.alias.as_deref() == Some(alias.as_str())) {
                if let Err(e) = links.delete(l.index, &l.name).await {
                    tracing::error!(tap = %l.name, error = %e, "reaper cannot delete TAP");
                } else {
                    tracing::warn!(tap = %l.name, alias = ?l.alias, "reaper deleted a TAP without a lease");
                    report.taps_deleted.push(l.name.clone());
                }
            }
        }
        // The repair: the full table again when the reaper changed
        // anything or the kernel's table is not what was applied.
        let changed = !report.taps_deleted.is_empty() || !report.leases_freed.is_empty();
        let intact = table.intact().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot check the nftables table; loading it again");
            false
        });
        if (!rows.is_empty() || !ours.is_empty()) && (changed || !intact) {
            self.load_locked(&mut table).await.map_err(|e| net_err("*", e))?;
        }
        Ok(report)
    }

    pub fn mac_of(index: u32) -> MacAddress {
        lease_mac(index)
    }

    /// The VM's current lease, if it has one (no side effects).
    pub async fn lease_of_vm(&self, vm: &str) -> Result<Option<Lease>> {
        let rows = self.store.leases().await?;
        Ok(rows.into_iter().find(|(v, _, _)| v == vm).and_then(|(v, i, _)| self.lease_of(&v, i)))
    }
}
