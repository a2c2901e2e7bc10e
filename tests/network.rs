//! TAP leases with real guests, in network namespaces made by each test
//! (traffic stays inside them): addresses, isolation, groups, NAT, port
//! forwards, anti-spoofing, and nothing leaked across a daemon kill -9.

mod common;

use common::*;
use paddock::WaitFor;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Packets the anti-spoofing rule for addresses dropped (one counter for
/// all leases: the rule looks the TAP's address up in a set).
fn spoof_drops(table: &str) -> u64 {
    table
        .lines()
        .filter(|l| l.contains("comment \"spoofed address\""))
        .filter_map(|l| l.split("packets ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_get_addresses_are_isolated_and_reach_out_through_nat() {
    let lab = NetLab::new();
    let d = Daemon::start_in(&lab.host, &[], &[]);
    let c = &d.client;
    let a = c.up(&tap_guest_spec("neta", "paddock.serve_port=22", &[], &[(8022, 22)]), WaitFor::Ready, 180).await.expect("up a");
    let b = c.up(&tap_guest_spec("netb", "", &[], &[]), WaitFor::Ready, 180).await.expect("up b");
    let (ip_a, ip_b) = (lease_ip(&a), lease_ip(&b));
    assert_ne!(ip_a, ip_b);
    let gw_a = lease_gateway(&ip_a);
    assert_eq!(lab.taps().len(), 2);

    let (out, code) = guest_run(c, "neta", &format!("ping -c 1 -W 3 {gw_a}"), T).await;
    assert_eq!(code, 0, "guest a cannot ping its gateway:\n{out}");
    let (out, code) = guest_run(c, "neta", &format!("ping -c 1 -W 2 {ip_b}"), T).await;
    assert_ne!(code, 0, "guest a reached guest b without a shared group:\n{out}");
    let (out, code) = guest_run(c, "neta", &format!("ping -c 1 -W 3 {LAB_OUTSIDE_IP}"), T).await;
    assert_eq!(code, 0, "guest a cannot reach the outside through NAT:\n{out}");

    // Host -> guest port forward, from the outside namespace.
    let (ok, out) = lab.exec(&lab.outside, &["busybox", "nc", "-w", "5", LAB_HOST_IP, "8022"]);
    assert!(ok && out.contains("hello from"), "port forward did not answer: {out}");

    // A packet with a source address that is not the lease's is dropped.
    let before = spoof_drops(&lab.table());
    let spoof = format!("ip addr add 10.88.200.1/32 dev eth0; ping -c 2 -W 1 -I 10.88.200.1 {gw_a}");
    let (out, code) = guest_run(c, "neta", &spoof, T).await;
    assert_ne!(code, 0, "a spoofed ping got an answer:\n{out}");
    let after = spoof_drops(&lab.table());
    println!("anti-spoofing dropped {} packets", after - before);
    assert!(after > before, "the anti-spoofing rule did not count the spoofed packets");

    for n in ["neta", "netb"] {
        c.remove(n, true).await.expect("rm");
    }
    assert!(lab.taps().is_empty(), "TAPs left: {:?}", lab.taps());
    assert!(!lab.table().contains("chain"), "rules left:\n{}", lab.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_in_one_group_reach_each_other() {
    let lab = NetLab::new();
    let d = Daemon::start_in(&lab.host, &[], &[]);
    let c = &d.client;
    c.up(&tap_guest_spec("grpa", "", &["backend"], &[]), WaitFor::Ready, 180).await.expect("up a");
    let b = c.up(&tap_guest_spec("grpb", "paddock.serve_port=7000", &["backend"], &[]), WaitFor::Ready, 180).await.expect("up b");
    let ip_b = lease_ip(&b);
    let (out, code) = guest_run(c, "grpa", &format!("ping -c 1 -W 3 {ip_b}"), T).await;
    assert_eq!(code, 0, "group members cannot reach each other:\n{out}");
    let (out, code) = guest_run(c, "grpa", &format!("nc -w 3 {ip_b} 7000"), T).await;
    assert!(code == 0 && out.contains("hello from"), "no TCP between group members:\n{out}");
    // The host's own services stay closed to guests.
    let (out, code) = guest_run(c, "grpa", &format!("nc -w 2 {LAB_HOST_IP} 22 </dev/null"), T).await;
    assert_ne!(code, 0, "guest reached a host port it was not allowed:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_kill_9_with_taps_leaks_and_duplicates_nothing() {
    let lab = NetLab::new();
    let mut d = Daemon::start_in(&lab.host, &["--qemu-binary", fake_qemu()], &[]);
    for n in ["ka", "kb"] {
        let mut spec = fake_spec(&d, n);
        spec.network.mode = paddock::spec::NetworkMode::Tap;
        spec.network.forwards = vec![paddock_net::PortForward { host: if n == "ka" { 9001 } else { 9002 }, guest: 80, protocol: paddock_net::Protocol::Tcp }];
        d.client.up(&spec, WaitFor::Ready, 30).await.expect("up");
    }
    let (taps, table, leases) = (lab.taps(), lab.table(), lease_rows(&d));
    assert_eq!(taps.len(), 2);
    d.kill9();
    d.spawn();
    assert_eq!(lab.taps(), taps, "TAPs changed across the restart");
    assert_eq!(strip_counters(&lab.table()), strip_counters(&table), "rules changed (or doubled) across the restart");
    assert_eq!(lease_rows(&d), leases, "leases changed across the restart");
    for n in ["ka", "kb"] {
        d.client.remove(n, true).await.expect("rm");
    }
    assert!(lab.taps().is_empty());
    assert!(!lab.table().contains("chain"), "{}", lab.table());
    assert!(lease_rows(&d).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_lease_cycles_leak_nothing_and_exhaustion_is_clean() {
    let lab = NetLab::new();
    let d = Daemon::start_in(&lab.host, &["--qemu-binary", fake_qemu(), "--net-pool", "10.77.0.0/29"], &[]);
    let c = &d.client;
    let t0 = std::time::Instant::now();
    for i in 0..1000 {
        let mut spec = fake_spec(&d, &format!("cyc{}", i % 2));
        spec.network.mode = paddock::spec::NetworkMode::Tap;
        c.up(&spec, WaitFor::Running, 30).await.unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        c.remove(&spec.name, true).await.expect("rm");
    }
    println!("1000 lease cycles in {:?}", t0.elapsed());
    assert!(lab.taps().is_empty(), "{:?}", lab.taps());
    assert!(lease_rows(&d).is_empty());

    // A /29 holds two leases; the third VM is refused and leaves nothing.
    for n in ["full1", "full2"] {
        let mut spec = fake_spec(&d, n);
        spec.network.mode = paddock::spec::NetworkMode::Tap;
        c.up(&spec, WaitFor::Running, 30).await.expect("up");
    }
    let mut spec = fake_spec(&d, "full3");
    spec.network.mode = paddock::spec::NetworkMode::Tap;
    let e = c.up(&spec, WaitFor::Running, 30).await.expect_err("pool should be exhausted");
    assert_eq!(e.kind(), Some("invalid_spec"), "{e}");
    assert!(e.to_string().contains("exhausted"), "{e}");
    assert_eq!(lab.taps().len(), 2);
    assert_eq!(lease_rows(&d).len(), 2);
    assert!(!d.db_vm_names().contains(&"full3".to_string()));
    assert!(!d.run_dir_entries().contains(&"full3".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_interface_with_our_name_is_left_alone() {
    let lab = NetLab::new();
    let (ok, out) = lab.exec(&lab.host, &["ip", "link", "add", "pdtap0", "type", "veth", "peer", "name", "foreign0"]);
    assert!(ok, "{out}");
    let d = Daemon::start_in(&lab.host, &["--qemu-binary", fake_qemu()], &[]);
    let mut spec = fake_spec(&d, "clash");
    spec.network.mode = paddock::spec::NetworkMode::Tap;
    let e = d.client.up(&spec, WaitFor::Running, 30).await.expect_err("collision must fail");
    assert!(e.to_string().contains("pdtap0") && e.to_string().contains("not Paddock's"), "{e}");
    let (_, link) = lab.exec(&lab.host, &["ip", "-d", "link", "show", "pdtap0"]);
    assert!(link.contains("veth") && !link.contains("alias"), "the foreign interface was changed: {link}");
    assert!(lease_rows(&d).is_empty());
    assert!(d.db_vm_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cap_net_admin_tap_is_refused_and_user_networking_works() {
    let lab = NetLab::new();
    // setpriv drops CAP_NET_ADMIN from the bounding set before exec.
    let mut d = Daemon::start_in(&lab.host, &["--qemu-binary", fake_qemu()], &[]);
    d.kill9();
    d.netns = None;
    let fake = fake_qemu().to_string();
    d.args = vec!["--qemu-binary".into(), fake];
    d.spawn_wrapped(&["ip", "netns", "exec", lab.host.as_str(), "setpriv", "--bounding-set=-net_admin", "--"]);
    let mut spec = fake_spec(&d, "nocap");
    spec.network.mode = paddock::spec::NetworkMode::Tap;
    let e = d.client.up(&spec, WaitFor::Running, 30).await.expect_err("tap without CAP_NET_ADMIN");
    assert_eq!(e.kind(), Some("invalid_spec"), "{e}");
    assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    let mut user = fake_spec(&d, "usernet");
    user.network.mode = paddock::spec::NetworkMode::User;
    d.client.up(&user, WaitFor::Running, 30).await.expect("user networking needs no privilege");
    assert!(lab.taps().is_empty());
}

fn lease_rows(d: &Daemon) -> Vec<(String, u32)> {
    let c = rusqlite::Connection::open_with_flags(d.state_dir().join("paddock.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("db");
    let mut s = c.prepare("SELECT vm, idx FROM leases ORDER BY idx").expect("query");
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("rows").map(|r| r.expect("row")).collect()
}

fn strip_counters(table: &str) -> String {
    table.lines().map(|l| l.split(" counter packets").next().unwrap_or(l).to_string()).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_hypervisor_vm_gets_the_same_lease() {
    let lab = NetLab::new();
    let logdir = tempfile::tempdir().expect("tmp");
    let log = logdir.path().join("fake-ch.log");
    // The fake runs as its VM's unprivileged identity and writes here.
    writable_by_vms(logdir.path());
    // The real binary when CLOUD_HYPERVISOR_BIN is set (it opens the TAP
    // itself; its guest may not run here, so no readiness), else the fake.
    let real = std::env::var_os("CLOUD_HYPERVISOR_BIN").filter(|v| !v.is_empty());
    let binary = real.clone().unwrap_or_else(|| fake_ch().into());
    let d = Daemon::start_in(
        &lab.host,
        &["--cloud-hypervisor-binary", &binary.to_string_lossy()],
        &[("PADDOCK_FAKE_CH_LOG", log.to_string_lossy().as_ref())],
    );
    let mut spec = if real.is_some() { guest_spec("chnet", "") } else { fake_spec(&d, "chnet") };
    spec.backend = paddock::spec::BackendKind::CloudHypervisor;
    spec.accel = paddock::spec::Accel::Kvm;
    spec.network.mode = paddock::spec::NetworkMode::Tap;
    let wait = if real.is_some() { WaitFor::Running } else { WaitFor::Ready };
    let info = d.client.up(&spec, wait, 60).await.expect("up");
    assert!(lease_ip(&info).starts_with("10.88."), "{info:?}");
    assert_eq!(lab.taps(), vec!["pdtap0".to_string()]);
    if let Some(bin) = &real {
        println!("a_cloud_hypervisor_vm_gets_the_same_lease: ran against {bin:?}");
    } else {
        // vm.create carried the TAP and passed the fake's check against CH's API document.
        let requests = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(requests.lines().any(|l| l.contains("vm.create")), "{requests}");
        assert!(!requests.contains("VIOLATION"), "{requests}");
    }
    d.client.remove("chnet", true).await.expect("rm");
    assert!(lab.taps().is_empty());
}
