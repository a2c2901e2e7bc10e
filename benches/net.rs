//! Network lease numbers, in a network namespace of the benchmark's own
//! (unshare(CLONE_NEWNET)): real TAP devices, real nftables rules.
//!   lease set-up (row + TAP + address/up + table rebuild), median of 100
//!   with 500 leases already present;
//!   how the table rebuild time grows from 10 to 500 leases.
//!
//! Run (as root): cargo bench --bench net

use paddock_actors::netmgr::{NetConfig, NetManager};
use paddock_actors::spec::VmSpec;
use paddock_actors::vm::phase::VmPhase;
use paddock_actors::Store;
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spec(name: &str) -> VmSpec {
    serde_json::from_value(serde_json::json!({
        "name": name, "boot": {"kernel": "/k"},
        "network": {"mode": "tap", "forwards": [{"host": 20000, "guest": 22}], "groups": ["g"]},
    }))
    .expect("spec")
}

fn main() {
    // SAFETY: unshare with CLONE_NEWNET before any other thread exists; all
    // later threads inherit the new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("net bench: unshare(CLONE_NEWNET) failed (needs root): {}", std::io::Error::last_os_error());
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return eprintln!("net bench: {e}"),
    };
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        let net = NetManager::new(NetConfig::default(), store.clone());
        let mut curve = Vec::new();
        let mut have = 0;
        for target in [10usize, 50, 100, 200, 300, 400, 500] {
            while have < target {
                let name = format!("vm{have}");
                store.insert_vm(&spec(&name), &VmPhase::Defined).await.expect("row");
                net.acquire(&name).await.expect("acquire");
                have += 1;
            }
            let mut t = Vec::new();
            for _ in 0..5 {
                let t0 = Instant::now();
                net.rebuild().await.expect("rebuild");
                t.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            curve.push((target, median(&mut t)));
        }
        println!("table rebuild time by lease count (median of 5):");
        for (n, ms) in &curve {
            println!("  {n:>4} leases: {ms:.1} ms");
        }
        let mut setup = Vec::new();
        for i in 0..100 {
            let name = format!("extra{i}");
            store.insert_vm(&spec(&name), &VmPhase::Defined).await.expect("row");
            let t0 = Instant::now();
            net.acquire(&name).await.expect("acquire");
            setup.push(t0.elapsed().as_secs_f64() * 1e3);
            net.release(&name).await.expect("release");
            store.delete_vm(&name).await.expect("row");
        }
        println!("lease set-up with 500 existing leases, median of 100: {:.1} ms (max {:.1} ms)", median(&mut setup), setup[setup.len() - 1]);
    });
}
