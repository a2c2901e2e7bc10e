//! A real distro guest end to end, through the daemon: the Debian 12 cloud
//! image built by scripts/build-debian-guest.sh (systemd, cloud-init 22.4,
//! openssh-server), booted under TCG from `boot.image` + its kernel with a
//! cloud-init seed, reached over SSH with the spec's key.
//!
//! Real boots take minutes here, so each test boots its VM twice at most
//! (first boot, then stop through ACPI and start) and checks everything on
//! the way; the TAP and the user-mode test run concurrently.

mod common;

use common::debian::*;
use common::*;
use paddock::client::Client;
use paddock::{EventKind, WaitFor};
use std::time::{Duration, Instant};

/// Lines of `text` with cloud-final's end-of-boot message.
fn finished_lines(text: &str) -> usize {
    text.lines().filter(|l| l.contains("Cloud-init v. ") && l.contains(" finished at ")).count()
}

/// Everything the first boot must show, over SSH. Returns the instance-id.
async fn check_first_boot(ssh: &Ssh, name: &str) -> String {
    let status = ssh.ok("cloud-init status --long").await;
    assert!(status.contains("status: done"), "cloud-init did not finish cleanly:\n{status}");
    assert_eq!(ssh.ok("hostname").await, name);
    ssh.ok("sudo -n true").await;
    assert!(ssh.ok("id -nG").await.split_whitespace().any(|g| g == "adm"), "user not in its group");
    assert_eq!(ssh.ok("getent passwd ops | cut -d: -f7").await, "/bin/bash");
    // The data disk: found by its serial, formatted by cloud-init, mounted.
    assert_eq!(ssh.ok("findmnt -n -o FSTYPE /srv/data").await, "ext4");
    let dev = ssh.ok("readlink -f /dev/disk/by-id/virtio-data").await;
    assert_eq!(ssh.ok("findmnt -n -o SOURCE /srv/data").await, dev, "the data disk is not what is mounted");
    assert_eq!(ssh.ok("readlink -f /dev/disk/by-id/virtio-root").await, ssh.ok("findmnt -n -o SOURCE /").await);
    // Both user-data parts took effect (typed + raw, merged).
    assert_eq!(ssh.ok("cat /etc/paddock-typed /etc/paddock-raw").await, "typed\nraw");
    assert_eq!(ssh.ok("cat /var/tmp/runcmd.log").await, "run");
    assert_eq!(ssh.ok("cat /var/tmp/bootcmd.log").await, "boot");
    ssh.ok("echo kept | sudo tee /srv/data/marker >/dev/null && sync").await;
    ssh.ok("cat /var/lib/cloud/data/instance-id").await
}

/// Stop through the ACPI rung, start again with `--wait ready`, and check
/// what must survive and what must run again.
async fn stop_start_and_check(c: &Client, d: &Daemon, ssh: &Ssh, name: &str, instance_id: &str) {
    let stopped = c.stop(name, 600).await.expect("stop");
    assert_eq!(stopped.rung, Some(paddock::Rung::Acpi), "the guest did not power off on the ACPI button: {stopped:?}");
    let log = d.run_dir().join(name).join("console.log");
    let before = finished_lines(&std::fs::read_to_string(&log).unwrap_or_default());
    let t = Instant::now();
    c.start(name, WaitFor::Ready, BOOT_SECS).await.expect("start --wait ready");
    println!("{name}: second boot ready in {:.1} s", t.elapsed().as_secs_f64());
    // Ready means this boot's marker: the log holds one more than before.
    let after = finished_lines(&std::fs::read_to_string(&log).expect("console.log"));
    assert_eq!(after, before + 1, "start --wait ready returned before this boot's cloud-init finished");
    let status = ssh.ok("cloud-init status").await;
    assert!(status.contains("status: done"), "{status}");
    assert_eq!(ssh.ok("cat /srv/data/marker").await, "kept", "the data disk lost its file");
    assert_eq!(ssh.ok("cat /var/lib/cloud/data/instance-id").await, instance_id, "instance-id changed across stop/start");
    assert_eq!(ssh.ok("cat /var/tmp/runcmd.log").await, "run", "runcmd ran again");
    assert_eq!(ssh.ok("cat /var/tmp/bootcmd.log").await, "boot\nboot", "bootcmd did not run on the second boot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_guest_on_a_tap_lease() {
    let lab = NetLab::new();
    let d = Daemon::start_in(&lab.host, &[], &[]);
    let c = &d.client;
    seed_image_cache(&d);
    let (key, public) = ssh_key(d.dir.path());
    let name = "deb-tap";
    let mut spec = debian_spec(name, &public);
    spec.network.mode = paddock::spec::NetworkMode::Tap;
    spec.network.forwards = vec![paddock_net::PortForward { host: 2222, guest: 22, protocol: paddock_net::Protocol::Tcp }];
    // A second VM (the small test guest) beside it, in no common group.
    let other = tap_guest_spec("deb-other", "", &[], &[]);
    let t = Instant::now();
    let (deb, _) = tokio::join!(
        async { c.up(&spec, WaitFor::Ready, BOOT_SECS).await.expect("up the Debian guest") },
        async { c.up(&other, WaitFor::Ready, 300).await.expect("up the test guest") },
    );
    println!("{name}: first boot ready in {:.1} s", t.elapsed().as_secs_f64());
    let ip = lease_ip(&deb);
    let ssh = Ssh { key: key.clone(), host: ip.clone(), port: 22, netns: Some(lab.host.clone()) };
    let instance_id = check_first_boot(&ssh, name).await;
    // No kernel ip= naming a NIC: cloud-init configured it, by MAC.
    let cmdline = ssh.ok("cat /proc/cmdline").await;
    assert!(!cmdline.contains("ip="), "{cmdline}");
    assert!(ssh.ok("ip -o -4 addr show").await.contains(&format!("{ip}/")), "lease address not configured");
    let route = ssh.ok("ip -4 route show default").await;
    assert!(route.contains(&format!("via {}", lease_gateway(&ip))), "no default route via the gateway: {route:?}");

    // Isolation: the other VM cannot reach this one's SSH.
    let (out, code) = guest_run(c, "deb-other", &format!("nc -w 3 {ip} 22 </dev/null"), Duration::from_secs(60)).await;
    assert!(code != 0 || !out.contains("SSH-"), "another VM reached this one without a shared group:\n{out}");

    // The forward: from the host's own loopback and from outside.
    let via_loopback = Ssh { key: key.clone(), host: "127.0.0.1".into(), port: 2222, netns: Some(lab.host.clone()) };
    assert_eq!(via_loopback.ok("hostname").await, name, "forward not reachable on 127.0.0.1");
    let via_outside = Ssh { key: key.clone(), host: LAB_HOST_IP.into(), port: 2222, netns: Some(lab.outside.clone()) };
    assert_eq!(via_outside.ok("hostname").await, name, "forward not reachable from outside");

    stop_start_and_check(c, &d, &ssh, name, &instance_id).await;
    for n in [name, "deb-other"] {
        c.remove_with(n, true, true).await.expect("rm");
    }
    assert!(lab.taps().is_empty(), "TAPs left: {:?}", lab.taps());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_guest_on_user_networking() {
    let d = Daemon::start();
    let c = &d.client;
    seed_image_cache(&d);
    let (key, public) = ssh_key(d.dir.path());
    let name = "deb-user";
    let port = free_port();
    let mut spec = debian_spec(name, &public);
    spec.network.mode = paddock::spec::NetworkMode::User;
    spec.network.forwards = vec![paddock_net::PortForward { host: port, guest: 22, protocol: paddock_net::Protocol::Tcp }];
    let t = Instant::now();
    c.up(&spec, WaitFor::Ready, BOOT_SECS).await.expect("up the Debian guest");
    println!("{name}: first boot ready in {:.1} s", t.elapsed().as_secs_f64());
    let ssh = Ssh { key, host: "127.0.0.1".into(), port, netns: None };
    let instance_id = check_first_boot(&ssh, name).await;
    stop_start_and_check(c, &d, &ssh, name, &instance_id).await;
    restore_a_clone_and_check(c, &ssh, &spec).await;
    c.remove_with(name, true, true).await.expect("rm");
}

/// A snapshot of the running guest restores as a second VM, reachable
/// over SSH at its own address (its own forwarded port) at once, with the
/// source's disks as they were; the source runs on beside it.
async fn restore_a_clone_and_check(c: &Client, ssh: &Ssh, spec: &paddock::VmSpec) {
    ssh.ok("echo from-before-the-snapshot | sudo tee /srv/data/snap >/dev/null && sync").await;
    let snap = c.snapshot(&spec.name, Some("deb-booted"), paddock::AfterSnapshot::Resume).await.expect("snapshot the Debian guest");
    println!("{}: snapshot of {} MiB", spec.name, snap.bytes >> 20);
    let port = free_port();
    let mut clone = spec.clone();
    clone.name = "deb-clone".into();
    clone.network.forwards = vec![paddock_net::PortForward { host: port, guest: 22, protocol: paddock_net::Protocol::Tcp }];
    clone.boot.snapshot = Some("deb-booted".into());
    let t = Instant::now();
    let info = c.up(&clone, WaitFor::Ready, BOOT_SECS).await.expect("restore the Debian guest");
    let clone_ssh = Ssh { key: ssh.key.clone(), host: "127.0.0.1".into(), port, netns: None };
    // Once ready, SSH answers within a few tries (no boot in between).
    let deadline = Instant::now() + Duration::from_secs(60);
    while clone_ssh.run("true").await.0 != 0 {
        assert!(Instant::now() < deadline, "the restored guest does not answer SSH on port {port}");
    }
    println!("deb-clone: restored, ready and reachable over SSH in {:.1} s", t.elapsed().as_secs_f64());
    assert_ne!(info.pid, c.get(&spec.name).await.expect("source").pid);
    assert_eq!(clone_ssh.ok("cat /srv/data/snap /etc/paddock-typed").await, "from-before-the-snapshot\ntyped");
    // Its uptime is the source's: it did not boot.
    let up: f64 = clone_ssh.ok("cut -d' ' -f1 /proc/uptime").await.parse().expect("uptime");
    assert!(up > t.elapsed().as_secs_f64(), "the clone booted ({up} s of uptime)");
    // The two are separate machines from here on.
    clone_ssh.ok("echo clone-only | sudo tee /srv/data/snap >/dev/null").await;
    assert_eq!(ssh.ok("cat /srv/data/snap").await, "from-before-the-snapshot");
    c.remove_with("deb-clone", true, true).await.expect("rm clone");
    c.snapshot_remove("deb-booted").await.expect("snapshot rm");
}

/// A guest reboot resets readiness (an event says so) and the new boot's
/// marker makes the VM ready again. The small test guest reboots in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reboot_resets_readiness() {
    let d = Daemon::start();
    let c = &d.client;
    c.up(&guest_spec("rebooter", ""), WaitFor::Ready, 300).await.expect("up");
    let since = last_seq(c).await;
    let mut events = subscribe(c, since).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // First a round trip through the guest shell (it computes the answer, so
    // our echoed input cannot satisfy it): under load the shell may start a
    // while after the ready marker, and a command typed before that is lost.
    let mut io = c.attach("rebooter").await.expect("attach");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !String::from_utf8_lossy(&seen).contains("sum=42") {
        io.write_all(b"\necho sum=$((40+2))\n").await.expect("type");
        let round = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&seen).contains("sum=42") && Instant::now() < round {
            assert!(Instant::now() < deadline, "the guest shell never answered; saw {}", String::from_utf8_lossy(&seen));
            let left = round.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, io.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                Ok(r) => panic!("console closed ({r:?}); saw {}", String::from_utf8_lossy(&seen)),
                Err(_) => {}
            }
        }
    }
    // The session stays attached until the reset is seen, so nothing typed
    // can be cut off by the detach.
    io.write_all(b"reboot -f\n").await.expect("type");
    let reset = events.until(Duration::from_secs(120), |e| e.vm == "rebooter" && matches!(e.kind, EventKind::GuestReset)).await;
    drop(io);
    // Only a reset readiness publishes Ready again (it is sent once per
    // boot), and only the new boot's marker can trigger it.
    let ready = events.until(Duration::from_secs(300), |e| e.vm == "rebooter" && matches!(e.kind, EventKind::Ready)).await;
    assert!(ready.seq > reset.seq);
    let log = std::fs::read_to_string(d.run_dir().join("rebooter/console.log")).expect("console.log");
    assert!(log.matches(READY_MARKER).count() >= 2, "ready before the second boot's marker:\n{log}");
    assert!(c.get("rebooter").await.expect("get").ready);
    c.remove("rebooter", true).await.expect("rm");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// `start --wait ready` returns on this boot's marker, not on the previous
/// run's line still in console.log (QEMU appends every run to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_wait_ready_waits_for_this_boots_marker() {
    let d = Daemon::start();
    let c = &d.client;
    c.up(&guest_spec("again", ""), WaitFor::Ready, 300).await.expect("up");
    let stopped = c.stop("again", 60).await.expect("stop");
    assert_eq!(stopped.rung, Some(paddock::Rung::Acpi));
    c.start("again", WaitFor::Ready, 300).await.expect("start --wait ready");
    let log = std::fs::read_to_string(d.run_dir().join("again/console.log")).expect("console.log");
    assert_eq!(log.matches(READY_MARKER).count(), 2, "start returned before the second boot's marker:\n{log}");
    assert!(c.get("again").await.expect("get").ready);
    c.remove("again", true).await.expect("rm");
}
