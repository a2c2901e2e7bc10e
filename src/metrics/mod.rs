//! `/metrics` in the Prometheus text format (prometheus-client).
//!
//! Counters that must survive between scrapes (API requests, restarts,
//! ladder rungs) live in `Metrics`; the per-VM figures are read at each
//! scrape from the status board and the kernel (`figures.rs`), so a scrape
//! never asks a VM actor. Labels are the VM's name (bounded by the VMs
//! that exist: a removed VM's series go with it), its phase, a rung, an
//! API route template and a status code: no unbounded values.

pub mod figures;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

use crate::{Event, EventKind, VmInfo};

type F64Gauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmLabel {
    pub vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub vm: String,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RungLabels {
    pub vm: String,
    pub rung: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/v1/vms/{name}`), never the raw path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

fn request_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The phases a VM can be in, each a series of `paddock_vm_phase`.
const PHASES: [&str; 8] = ["defined", "starting", "running", "paused", "stopping", "stopped", "crashed", "failed"];

#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Per VM: restarts, and rungs taken by rung. Emitted only for VMs on
    /// the board, so a removed VM's series go with it at once.
    counts: Arc<Mutex<HashMap<String, VmCounts>>>,
    /// The event stream, drained at every scrape (so a scrape sees every
    /// event published before it) and every second between scrapes.
    events: Arc<Mutex<broadcast::Receiver<Event>>>,
    adoption_seconds: F64Gauge,
}

#[derive(Default)]
struct VmCounts {
    restarts: u64,
    rungs: BTreeMap<&'static str, u64>,
}

/// How often the event stream is drained between scrapes: well within
/// the stream's buffer (`LIVE_CAPACITY` events) at any plausible rate.
pub const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// What a scrape reads besides the counters kept here.
pub struct Snapshot<'a> {
    pub vms: &'a [VmInfo],
    pub events_written: u64,
}

impl Metrics {
    pub fn new(events: broadcast::Receiver<Event>) -> Self {
        Metrics {
            requests: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            counts: Arc::default(),
            events: Arc::new(Mutex::new(events)),
            adoption_seconds: F64Gauge::default(),
        }
    }

    /// Counts the events published since the last drain.
    pub fn drain(&self) {
        let mut rx = self.events.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match rx.try_recv() {
                Ok(ev) => self.record_event(&ev),
                Err(broadcast::error::TryRecvError::Lagged(n)) => tracing::warn!(missed = n, "metrics fell behind the event stream"),
                Err(_) => return,
            }
        }
    }

    /// One API request, by route template, method and status.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let labels = RequestLabels { route: route.to_string(), method: method.to_string(), status };
        self.requests.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// How long the start-up recovery (adopting running VMs) took.
    pub fn set_adoption(&self, took: Duration) {
        self.adoption_seconds.set(took.as_secs_f64());
    }

    /// Counts restarts and rungs from the event stream; a removed VM's
    /// series are dropped.
    fn record_event(&self, ev: &Event) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match &ev.kind {
            EventKind::RestartScheduled { .. } => counts.entry(ev.vm.clone()).or_default().restarts += 1,
            EventKind::Rung { rung } => *counts.entry(ev.vm.clone()).or_default().rungs.entry(rung.as_str()).or_default() += 1,
            EventKind::Removed => {
                counts.remove(&ev.vm);
            }
            _ => {}
        }
    }

    /// The whole exposition, in the Prometheus text format.
    pub fn encode(&self, snap: &Snapshot<'_>) -> Result<String, std::fmt::Error> {
        self.drain();
        let mut reg = Registry::with_prefix("paddock");
        self.register_daemon(&mut reg, snap);
        register_vms(&mut reg, snap.vms);
        self.register_counts(&mut reg, snap.vms);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg)?;
        Ok(out)
    }

    fn register_counts(&self, reg: &mut Registry, vms: &[VmInfo]) {
        let restarts = Family::<VmLabel, Counter>::default();
        let rungs = Family::<RungLabels, Counter>::default();
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for info in vms {
            restarts.get_or_create(&VmLabel { vm: info.name.clone() }).inc_by(counts.get(&info.name).map_or(0, |c| c.restarts));
            for (rung, n) in counts.get(&info.name).map(|c| &c.rungs).into_iter().flatten() {
                rungs.get_or_create(&RungLabels { vm: info.name.clone(), rung }).inc_by(*n);
            }
        }
        reg.register("vm_restarts", "Restarts the restart policy scheduled", restarts);
        reg.register("vm_ladder_rungs", "Shutdown ladder rungs taken", rungs);
    }

    fn register_daemon(&self, reg: &mut Registry, snap: &Snapshot<'_>) {
        reg.register_with_unit("api_request_duration", "API request durations by route, method and status", Unit::Seconds, self.requests.clone());
        reg.register_with_unit("adoption_duration", "Time the start-up recovery took", Unit::Seconds, self.adoption_seconds.clone());
        let events = Counter::<u64>::default();
        events.inc_by(snap.events_written);
        reg.register("events_written", "Events written since the daemon started", events);
        let rss = Gauge::<i64>::default();
        rss.set(figures::own_rss().map_or(0, |b| b as i64));
        reg.register_with_unit("daemon_resident_memory", "Resident memory of the daemon", Unit::Bytes, rss);
        let vms = Gauge::<i64>::default();
        vms.set(snap.vms.len() as i64);
        reg.register("vms", "VMs defined", vms);
    }
}

/// Per-VM families, filled from the board and the kernel at each scrape.
fn register_vms(reg: &mut Registry, vms: &[VmInfo]) {
    let phase = Family::<PhaseLabels, Gauge>::default();
    let ready = Family::<VmLabel, Gauge>::default();
    let uptime = Family::<VmLabel, F64Gauge>::default();
    let cpu = Family::<VmLabel, Counter<f64, AtomicU64>>::default();
    let memory = Family::<VmLabel, Gauge>::default();
    let io = [(); 4].map(|_| Family::<VmLabel, Counter>::default());
    let net = [(); 4].map(|_| Family::<VmLabel, Counter>::default());
    for info in vms {
        let f = figures::of(info);
        let vm = VmLabel { vm: info.name.clone() };
        for p in PHASES {
            phase.get_or_create(&PhaseLabels { vm: info.name.clone(), phase: p }).set(i64::from(p == f.phase));
        }
        ready.get_or_create(&vm).set(i64::from(f.ready));
        if let Some(u) = f.uptime_seconds {
            uptime.get_or_create(&vm).set(u);
        }
        if let Some(c) = f.cpu_seconds {
            cpu.get_or_create(&vm).inc_by(c);
        }
        if let Some(m) = f.memory_rss_bytes {
            memory.get_or_create(&vm).set(i64::try_from(m).unwrap_or(i64::MAX));
        }
        if let Some(i) = f.io {
            for (family, v) in io.iter().zip([i.read_bytes, i.write_bytes, i.read_ops, i.write_ops]) {
                family.get_or_create(&vm).inc_by(v);
            }
        }
        if let Some(n) = f.net {
            for (family, v) in net.iter().zip([n.rx_bytes, n.rx_packets, n.tx_bytes, n.tx_packets]) {
                family.get_or_create(&vm).inc_by(v);
            }
        }
    }
    reg.register("vm_phase", "1 for the phase the VM is in, 0 for the others", phase);
    reg.register("vm_ready", "1 once the VM's current boot is ready", ready);
    reg.register_with_unit("vm_uptime", "Time since the hypervisor process started", Unit::Seconds, uptime);
    reg.register_with_unit("vm_cpu", "CPU time of the hypervisor process (user + system)", Unit::Seconds, cpu);
    reg.register_with_unit("vm_memory_resident", "Resident memory of the hypervisor process", Unit::Bytes, memory);
    let [read_bytes, write_bytes, read_ops, write_ops] = io;
    reg.register_with_unit("vm_disk_read", "Bytes the hypervisor read from storage (/proc/PID/io)", Unit::Bytes, read_bytes);
    reg.register_with_unit("vm_disk_written", "Bytes the hypervisor wrote to storage (/proc/PID/io)", Unit::Bytes, write_bytes);
    reg.register("vm_io_read_operations", "Read system calls of the hypervisor process", read_ops);
    reg.register("vm_io_write_operations", "Write system calls of the hypervisor process", write_ops);
    let [rx_bytes, rx_packets, tx_bytes, tx_packets] = net;
    reg.register_with_unit("vm_network_transmitted", "Bytes the guest sent (its TAP's rx)", Unit::Bytes, rx_bytes);
    reg.register("vm_network_transmitted_packets", "Packets the guest sent (its TAP's rx)", rx_packets);
    reg.register_with_unit("vm_network_received", "Bytes the guest received (its TAP's tx)", Unit::Bytes, tx_bytes);
    reg.register("vm_network_received_packets", "Packets the guest received (its TAP's tx)", tx_packets);
}
