//! Network lease numbers, in a network namespace of the benchmark's own
//! (unshare(CLONE_NEWNET)): real TAP devices, real nftables.
//!   table apply alone: one lease added and removed as a netlink batch,
//!   with 10, 500 and 2,000 leases in the table (it must not grow);
//!   the full render (`nft -f`, the first lease and the reaper's repair)
//!   by lease count, for comparison;
//!   lease set-up (row + TAP + address/up + table batch), median of 100
//!   with 500 and with 2,000 leases already present.
//!
//! Run (as root): cargo bench --bench net

use paddock_actors::netmgr::{NetConfig, NetManager};
use paddock_actors::spec::VmSpec;
use paddock_actors::vm::phase::VmPhase;
use paddock_actors::Store;
use paddock_net::names::{lease_mac, tap_name};
use paddock_net::nft::{LeaseRules, Masquerade, Table, TableConfig};
use paddock_net::{PortForward, Protocol};
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spec(name: &str, host_port: u16) -> VmSpec {
    serde_json::from_value(serde_json::json!({
        "name": name, "boot": {"kernel": "/k"},
        "network": {"mode": "tap", "forwards": [{"host": host_port, "guest": 22}], "groups": ["g"], "host_ports": [53]},
    }))
    .expect("spec")
}

fn rules(i: u32) -> LeaseRules {
    LeaseRules {
        vm: format!("t{i}"),
        tap: tap_name(i),
        mac: lease_mac(i),
        guest: std::net::Ipv4Addr::from(0x0a58_0002 + i * 4),
        groups: vec!["g".into()],
        host_ports: vec![53],
        forwards: vec![PortForward { host: 30000 + i as u16, guest: 22, protocol: Protocol::Tcp }],
    }
}

/// The table alone: batch time for one lease in and out, and the full
/// render's time, by lease count.
fn table_alone() {
    let cfg = TableConfig { pool_cidr: "10.88.0.0/16".into(), masquerade: Masquerade::AnyUplink };
    let mut table = Table::new(cfg);
    println!("table apply by lease count (one lease added + removed as netlink batches, median of 50; full render via nft -f, median of 3):");
    for n in [10u32, 500, 2000] {
        let all: Vec<LeaseRules> = (0..n).map(rules).collect();
        let mut full = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            table.load(&all).expect("full render");
            full.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let extra = rules(n);
            let t0 = Instant::now();
            table.update(&extra.vm, Some(extra.clone())).expect("batch add");
            add.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            table.update(&extra.vm, None).expect("batch remove");
            del.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        println!("  {n:>5} leases: batch add {:.3} ms, batch remove {:.3} ms; full render {:.1} ms", median(&mut add), median(&mut del), median(&mut full));
    }
    table.load(&[]).expect("empty table");
}

fn main() {
    // SAFETY: unshare with CLONE_NEWNET before any other thread exists; all
    // later threads inherit the new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("net bench: unshare(CLONE_NEWNET) failed (needs root): {}", std::io::Error::last_os_error());
        return;
    }
    // PADDOCK_BENCH_LOG=paddock_actors::netmgr=info shows each lease's
    // steps (row_us, tap_us, table_us).
    if std::env::var_os("PADDOCK_BENCH_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_env("PADDOCK_BENCH_LOG")).init();
    }
    table_alone();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return eprintln!("net bench: {e}"),
    };
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        let net = NetManager::new(NetConfig::default(), store.clone());
        let mut have = 0u16;
        for target in [500u16, 2000] {
            while have < target {
                let name = format!("vm{have}");
                store.insert_vm(&spec(&name, 20000 + have), &VmPhase::Defined).await.expect("row");
                net.acquire(&name).await.expect("acquire");
                have += 1;
            }
            let mut setup = Vec::new();
            for i in 0..100u16 {
                let name = format!("extra{i}");
                store.insert_vm(&spec(&name, 10000 + i), &VmPhase::Defined).await.expect("row");
                let t0 = Instant::now();
                net.acquire(&name).await.expect("acquire");
                setup.push(t0.elapsed().as_secs_f64() * 1e3);
                net.release(&name).await.expect("release");
                store.delete_vm(&name).await.expect("row");
            }
            let max = setup.iter().cloned().fold(0.0, f64::max);
            println!("lease set-up with {target} existing leases, median of 100: {:.2} ms (max {max:.1} ms)", median(&mut setup));
        }
        let t0 = Instant::now();
        net.rebuild().await.expect("rebuild");
        println!("full reload (reaper's repair) with {have} leases: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    });
    println!("load: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
}
