//! Ten real guests started and stopped concurrently through the API.

mod common;

use common::*;
use paddock::{Rung, VmPhase, WaitFor};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_vms_up_and_down_concurrently() {
    let d = Daemon::start();
    let names: Vec<String> = (0..10).map(|i| format!("many-{i}")).collect();
    let t0 = Instant::now();
    let ups = names.iter().map(|n| {
        let c = d.client.clone();
        let spec = guest_spec(n, "");
        tokio::spawn(async move { c.up(&spec, WaitFor::Ready, 600).await })
    });
    for r in futures::future::join_all(ups).await {
        let info = r.expect("task").expect("up");
        assert!(info.ready && info.phase == VmPhase::Running, "{info:?}");
    }
    println!("10 VMs ready after {:?}", t0.elapsed());
    let listed = d.client.list().await.expect("list");
    assert_eq!(listed.len(), 10);
    assert!(listed.iter().all(|v| v.ready));
    let pids: Vec<i32> = listed.iter().filter_map(|v| v.pid).collect();
    assert_eq!(pids.len(), 10);

    let t1 = Instant::now();
    let stops = names.iter().map(|n| {
        let c = d.client.clone();
        let n = n.clone();
        tokio::spawn(async move { c.stop(&n, 120).await })
    });
    for r in futures::future::join_all(stops).await {
        let out = r.expect("task").expect("stop");
        assert_eq!(out.rung, Some(Rung::Acpi), "{out:?}");
    }
    println!("10 VMs stopped after {:?}", t1.elapsed());
    assert!(pids.iter().all(|p| !process_exists(*p)));
    for n in &names {
        d.client.remove(n, false).await.expect("rm");
    }
    assert!(d.run_dir_entries().is_empty(), "{:?}", d.run_dir_entries());
    assert!(d.db_vm_names().is_empty());
    assert!(d.hypervisor_pids().is_empty());
}
