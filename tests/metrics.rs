//! `/metrics` read by a Prometheus text-format parser: the series of a
//! real running guest, whose disk and network counters move after it
//! writes its disk and sends packets; the daemon's own series; and
//! `paddock stats`, from the same figures.

mod common;

use common::*;
use paddock::WaitFor;
use std::collections::HashMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    async fn of(c: &paddock::client::Client) -> Scrape {
        let text = c.metrics().await.expect("scrape");
        assert!(text.trim_end().ends_with("# EOF"), "not a whole exposition:\n{text}");
        Scrape(prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse"))
    }

    /// The value of the one sample of `metric` carrying every label of `want`.
    fn get(&self, metric: &str, want: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.0.samples.iter().filter(|s| s.metric == metric && want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
        let s = found.next()?;
        assert!(found.next().is_none(), "{metric} {want:?} matches more than one series");
        Some(match &s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => panic!("{metric} is a summary"),
        })
    }

    fn vm(&self, metric: &str, vm: &str) -> f64 {
        self.get(metric, &[("vm", vm)]).unwrap_or_else(|| panic!("no {metric} for {vm}"))
    }

    fn vm_labels(&self) -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for s in &self.0.samples {
            if let Some(vm) = s.labels.get("vm") {
                *n.entry(vm.to_string()).or_default() += 1;
            }
        }
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_has_its_series_and_its_disk_and_network_counters_move() {
    let lab = NetLab::new();
    let d = Daemon::start_in(&lab.host, &[], &[]);
    let c = &d.client;
    let mut spec = tap_guest_spec("mx", "", &[], &[]);
    spec.data_disk = Some(paddock::DataDiskSpec::gib(1));
    let info = c.up(&spec, WaitFor::Ready, 180).await.expect("up");
    let gw = lease_gateway(&lease_ip(&info));

    let before = Scrape::of(c).await;
    assert_eq!(before.get("paddock_vm_phase", &[("vm", "mx"), ("phase", "running")]), Some(1.0));
    assert_eq!(before.get("paddock_vm_phase", &[("vm", "mx"), ("phase", "stopped")]), Some(0.0));
    assert_eq!(before.vm("paddock_vm_ready", "mx"), 1.0);
    assert!(before.vm("paddock_vm_uptime_seconds", "mx") > 0.0);
    assert!(before.vm("paddock_vm_cpu_seconds_total", "mx") > 0.0);
    assert!(before.vm("paddock_vm_memory_resident_bytes", "mx") > 1e6);

    // 4 MiB to the data disk (the one whose serial is "data"), synced.
    let write = "for b in /sys/block/vd*; do [ \"$(cat $b/serial)\" = data ] && dev=/dev/${b##*/}; done; \
                 dd if=/dev/zero of=$dev bs=64k count=64 conv=fsync";
    let (out, code) = guest_run(c, "mx", write, T).await;
    assert_eq!(code, 0, "the guest could not write its disk:\n{out}");
    let (out, code) = guest_run(c, "mx", &format!("ping -c 5 -W 3 {gw}"), T).await;
    assert_eq!(code, 0, "the guest could not ping its gateway:\n{out}");

    let after = Scrape::of(c).await;
    let grew = |m: &str| after.vm(m, "mx") - before.vm(m, "mx");
    assert!(grew("paddock_vm_disk_written_bytes_total") >= (4 << 20) as f64, "disk writes not counted: {}", grew("paddock_vm_disk_written_bytes_total"));
    assert!(grew("paddock_vm_io_write_operations_total") >= 1.0);
    assert!(grew("paddock_vm_network_transmitted_packets_total") >= 5.0, "sent packets not counted");
    assert!(grew("paddock_vm_network_transmitted_bytes_total") >= 5.0 * 84.0);
    assert!(grew("paddock_vm_network_received_packets_total") >= 5.0, "ping replies not counted");
    assert!(grew("paddock_vm_cpu_seconds_total") > 0.0);

    // The daemon's own series.
    let created = after.get("paddock_api_request_duration_seconds", &[("route", "/v1/vms"), ("method", "POST"), ("status", "201")]);
    assert_eq!(created, Some(1.0), "the create request was not timed");
    assert!(after.get("paddock_events_written_total", &[]).is_some_and(|v| v > 0.0));
    assert!(after.get("paddock_daemon_resident_memory_bytes", &[]).is_some_and(|v| v > 1e6));
    assert!(after.get("paddock_adoption_duration_seconds", &[]).is_some());

    // The ladder's rung is counted; the phase moves.
    let out = c.stop("mx", 30).await.expect("stop");
    let rung = out.rung.expect("a rung").as_str();
    let stopped = Scrape::of(c).await;
    assert_eq!(stopped.get("paddock_vm_ladder_rungs_total", &[("vm", "mx"), ("rung", rung)]), Some(1.0));
    assert_eq!(stopped.get("paddock_vm_phase", &[("vm", "mx"), ("phase", "stopped")]), Some(1.0));
    assert_eq!(stopped.get("paddock_vm_uptime_seconds", &[("vm", "mx")]), None, "a stopped VM has no uptime");
}

#[test]
fn stats_prints_the_figures_and_a_removed_vm_leaves_no_series() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let socket = d.client.socket().to_path_buf();
    let paddock = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paddock")).arg("--socket").arg(&socket).args(args).output().expect("run paddock");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let info = block_on(d.client.up(&fake_spec(&d, "s1"), WaitFor::Ready, 30)).expect("up");
    block_on(d.client.up(&fake_spec(&d, "s2"), WaitFor::Running, 30)).expect("up");

    let (code, table, err) = paddock(&["stats"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("CPU") && lines[0].contains("MEM"), "{table}");
    let row: Vec<&str> = lines.iter().find(|l| l.starts_with("s1 ")).expect("a row for s1").split_whitespace().collect();
    assert_eq!(&row[..3], ["s1", "running", "yes"], "{table}");
    assert_eq!(lines.len(), 3, "{table}");

    let (code, json, err) = paddock(&["stats", "s1", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let figures: Vec<paddock::metrics::figures::VmFigures> = serde_json::from_str(&json).expect("json");
    assert_eq!(figures.len(), 1);
    assert_eq!((figures[0].name.as_str(), figures[0].pid), ("s1", info.pid));
    assert!(figures[0].memory_rss_bytes.is_some_and(|m| m > 0) && figures[0].cpu_seconds.is_some());

    let (code, _, err) = paddock(&["stats", "nope"]);
    assert_eq!(code, Some(3), "an unknown VM is exit 3: {err}");

    // `top` draws the same table, here twice.
    let (code, top, err) = paddock(&["top", "--interval", "1", "-n", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(top.matches("NAME").count(), 2, "{top}");

    block_on(async {
        // A crash the restart policy answers is counted.
        let mut spec = fake_spec(&d, "rs");
        spec.restart.policy = paddock::spec::RestartPolicy::OnFailure;
        spec.restart.backoff_base_ms = 10;
        let pid = d.client.up(&spec, WaitFor::Running, 30).await.expect("up rs").pid.expect("pid");
        assert_eq!(Scrape::of(&d.client).await.vm("paddock_vm_restarts_total", "rs"), 0.0);
        let since = last_seq(&d.client).await;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
        wait_event(&d.client, since, Duration::from_secs(30), |e| e.vm == "rs" && matches!(e.kind, paddock::EventKind::RestartScheduled { .. })).await;
        assert_eq!(Scrape::of(&d.client).await.vm("paddock_vm_restarts_total", "rs"), 1.0);

        let n = Scrape::of(&d.client).await.vm_labels();
        assert!(n.get("s1").is_some_and(|&k| k > 0) && n.contains_key("s2"));
        d.client.remove("s2", true).await.expect("rm");
        let n = Scrape::of(&d.client).await.vm_labels();
        assert_eq!(n.get("s2"), None, "a removed VM's series remain");
    });
}
