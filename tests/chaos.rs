//! Chaos: seeded random operations (up, stop, start, rm, pause, resume)
//! from several concurrent clients on fake hypervisors; the daemon killed
//! (SIGKILL or SIGTERM) at a random moment of each round; hypervisors
//! killed while it is down; the state disk (a real tmpfs) filled at a
//! random moment. After every restart the invariants must hold:
//!
//! - every VM whose creation was acknowledged exists unless its removal
//!   was acknowledged; no removed VM comes back;
//! - a hypervisor runs exactly for running and paused VMs, with the
//!   recorded pid; no marked process without a record;
//! - no stale run directory, socket, disk directory, lease or TAP.
//!
//! The daemon runs in a network namespace of its own (`NetLab`), where
//! two of the VMs get TAP leases.
//!
//! `PADDOCK_CHAOS_SEED` replays a run, `PADDOCK_CHAOS_ROUNDS` (default 30)
//! sets its length. A failing round prints its history.

mod common;

use common::*;
use paddock::client::ClientError;
use paddock::{VmInfo, VmPhase, WaitFor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMES: &[&str] = &["c0", "c1", "c2", "c3", "c4", "c5"];
const CLIENTS: usize = 3;
const OPS_PER_CLIENT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Up,
    Stop,
    Start,
    Rm { force: bool, volumes: bool },
    Pause,
    Resume,
}

/// What the test knows of one VM from acknowledged answers; None: unknown
/// (an unanswered or failed request may or may not have happened).
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    exists: Option<bool>,
    /// Some(true): running or paused; Some(false): stopped (no process).
    alive: Option<bool>,
}

/// One request and its answer, stamped with a logical clock so that
/// overlapping requests on one VM are recognised (their order is unknown).
#[derive(Debug, Clone)]
struct Record {
    client: usize,
    name: &'static str,
    op: Op,
    sent: u64,
    answered: u64,
    result: Result<(), String>,
    /// For `up` refused because the name is taken.
    name_taken: bool,
}

/// A tmpfs for the state dir, so that a full disk is a real full disk.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

fn seed() -> u64 {
    match std::env::var("PADDOCK_CHAOS_SEED") {
        Ok(s) => s.parse().expect("PADDOCK_CHAOS_SEED must be a number"),
        Err(_) => fastrand::u64(..),
    }
}

fn rounds() -> usize {
    std::env::var("PADDOCK_CHAOS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30)
}

fn pick_op(rng: &mut fastrand::Rng) -> Op {
    match rng.u32(0..100) {
        0..=29 => Op::Up,
        30..=44 => Op::Stop,
        45..=59 => Op::Start,
        60..=74 => Op::Rm { force: rng.bool(), volumes: rng.bool() },
        75..=87 => Op::Pause,
        _ => Op::Resume,
    }
}

fn spec(d: &Daemon, name: &str) -> paddock::VmSpec {
    let mut s = fake_spec(d, name);
    // Half the names have a data disk (kept across rm unless --volumes).
    if name.ends_with(['1', '3', '5']) {
        s.data_disk = Some(serde_json::from_value(serde_json::json!({ "size_gib": 1 })).expect("data disk"));
    }
    // Two have a TAP lease (a row, a TAP, nftables rules).
    if name.ends_with(['4', '5']) {
        s.network.mode = paddock::spec::NetworkMode::Tap;
    }
    s
}

async fn run_op(c: &paddock::client::Client, spec: &paddock::VmSpec, op: Op) -> Result<(), ClientError> {
    let name = spec.name.as_str();
    match op {
        Op::Up => c.up(spec, WaitFor::Running, 20).await.map(drop),
        Op::Stop => c.stop(name, 1).await.map(drop),
        Op::Start => c.start(name, WaitFor::Running, 20).await.map(drop),
        Op::Rm { force, volumes } => c.remove_with(name, force, volumes).await,
        Op::Pause => c.pause(name).await.map(drop),
        Op::Resume => c.resume(name).await.map(drop),
    }
}

/// Updates what is known from this round's answers, VM by VM in the
/// order they were answered. A failed request changes nothing only when
/// the daemon refused it outright (a conflict, an unknown name); anything
/// else (cut off by the kill, a full disk) may or may not have happened.
fn apply(known: &mut BTreeMap<&'static str, Known>, records: &[Record]) {
    let mut by_name: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_name.entry(r.name).or_default().push(r);
    }
    for (name, mut rs) in by_name {
        rs.sort_by_key(|r| r.answered);
        let k = known.entry(NAMES.iter().find(|n| **n == name).copied().expect("name")).or_default();
        let mut last_answered = 0u64;
        for r in rs {
            let overlaps = r.sent < last_answered;
            let refused = match (&r.result, r.op) {
                (Ok(()), _) => false,
                (Err(_), Op::Up) => r.name_taken,
                (Err(e), _) => e.starts_with("conflict:") || e.starts_with("not_found:"),
            };
            if refused {
                continue;
            }
            if overlaps || r.result.is_err() {
                // Unknown order, or an unknown outcome.
                *k = Known::default();
            } else {
                match r.op {
                    Op::Up | Op::Start | Op::Resume => *k = Known { exists: Some(true), alive: Some(true) },
                    Op::Pause => *k = Known { exists: Some(true), alive: Some(true) },
                    Op::Stop => *k = Known { exists: Some(true), alive: Some(false) },
                    Op::Rm { .. } => *k = Known { exists: Some(false), alive: Some(false) },
                }
            }
            last_answered = last_answered.max(r.answered);
        }
    }
}

fn transient(p: &VmPhase) -> bool {
    matches!(p, VmPhase::Starting | VmPhase::Stopping { .. })
}

/// The listing once no VM is half-way (an interrupted stop is finished by
/// the new daemon after it says READY).
async fn settled(d: &Daemon) -> Vec<VmInfo> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let since = last_seq(&d.client).await;
        let list = d.client.list().await.expect("list");
        if !list.iter().any(|v| transient(&v.phase)) {
            return list;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return list; // `check` reports what is still half-way.
        }
        // Wait for the next change (or a while), then look again.
        let mut events = subscribe(&d.client, since).await;
        let _ = tokio::time::timeout(left.min(Duration::from_secs(5)), events.until(Duration::from_secs(3600), |_| true)).await;
    }
}

fn check(d: &Daemon, lab: &NetLab, known: &BTreeMap<&'static str, Known>, list: &[VmInfo]) -> Result<(), String> {
    let listed: BTreeMap<&str, &VmInfo> = list.iter().map(|v| (v.name.as_str(), v)).collect();
    for (name, k) in known {
        let v = listed.get(name);
        match (k.exists, v) {
            (Some(true), None) => return Err(format!("{name}: acknowledged VM is gone")),
            (Some(false), Some(v)) => return Err(format!("{name}: removed VM came back: {v:?}")),
            _ => {}
        }
        if let (Some(alive), Some(v)) = (k.alive, v) {
            let is_alive = matches!(v.phase, VmPhase::Running | VmPhase::Paused);
            if alive != is_alive {
                return Err(format!("{name}: expected {}, found {:?}", if alive { "running or paused" } else { "stopped" }, v.phase));
            }
        }
    }
    let run = d.run_dir();
    let mut live_pids = Vec::new();
    if let Some(v) = list.iter().find(|v| transient(&v.phase)) {
        return Err(format!("{}: still {:?} 30 s after the restart", v.name, v.phase));
    }
    for v in list {
        let procs = pids_mentioning(&format!("{}/{}/", run.display(), v.name));
        match v.phase {
            VmPhase::Running | VmPhase::Paused => {
                let pid = v.pid.ok_or(format!("{}: {:?} without a pid", v.name, v.phase))?;
                if procs != vec![pid] {
                    return Err(format!("{}: {:?} with recorded pid {pid} but hypervisors {procs:?}", v.name, v.phase));
                }
                live_pids.push(pid);
            }
            _ => {
                if !procs.is_empty() {
                    return Err(format!("{}: {:?} but hypervisors {procs:?} run", v.name, v.phase));
                }
                for sock in ["control.sock", "serial.sock"] {
                    if run.join(&v.name).join(sock).exists() {
                        return Err(format!("{}: {:?} but its {sock} is left", v.name, v.phase));
                    }
                }
            }
        }
    }
    let mut all = d.hypervisor_pids();
    all.sort();
    live_pids.sort();
    if all != live_pids {
        return Err(format!("marked processes {all:?}, recorded {live_pids:?}"));
    }
    let mut db = d.db_vm_names();
    db.sort();
    let names: Vec<String> = listed.keys().map(|s| s.to_string()).collect();
    if db != names {
        return Err(format!("database rows {db:?}, listed {names:?}"));
    }
    for dir in d.run_dir_entries() {
        if !listed.contains_key(dir.as_str()) {
            return Err(format!("stale run directory {dir}"));
        }
    }
    for e in std::fs::read_dir(d.state_dir().join("vms")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let files: Vec<String> = std::fs::read_dir(e.path()).into_iter().flatten().flatten().map(|f| f.file_name().to_string_lossy().into_owned()).collect();
        // A removed VM's kept data disk (rm without --volumes) is the one
        // thing allowed to outlive it.
        if !listed.contains_key(name.as_str()) && files != ["data.qcow2"] {
            return Err(format!("stale disk directory {name}: {files:?}"));
        }
    }
    // A lease (and its TAP) lives from the first start to `rm`.
    let leases = leases(&d.state_dir())?;
    if let Some((vm, _)) = leases.iter().find(|(vm, _)| !listed.contains_key(vm.as_str())) {
        return Err(format!("stale lease of {vm}: {leases:?}"));
    }
    for tap in lab.taps() {
        if !leases.iter().any(|(_, idx)| tap == format!("pdtap{idx}")) {
            return Err(format!("stale TAP {tap}; leases {leases:?}"));
        }
    }
    Ok(())
}

fn leases(state: &Path) -> Result<Vec<(String, u32)>, String> {
    let c = rusqlite::Connection::open_with_flags(state.join("paddock.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| e.to_string())?;
    let mut s = c.prepare("SELECT vm, idx FROM leases").map_err(|e| e.to_string())?;
    let rows = s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))).map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// Fills the file system of `path` (writes it until ENOSPC).
fn fill(path: &Path) {
    use std::io::Write as _;
    let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) else { return };
    for chunk in [1 << 16, 1 << 12, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_acknowledged_vms_survive_kills_crashes_and_full_disks() {
    let seed = seed();
    let rounds = rounds();
    println!("chaos: seed {seed} (replay with PADDOCK_CHAOS_SEED={seed}), {rounds} rounds");
    let mut rng = fastrand::Rng::with_seed(seed);
    let lab = NetLab::new();
    let mut d = Daemon::unstarted(&["--qemu-binary", fake_qemu()], &[]);
    d.netns = Some(lab.host.clone());
    std::fs::create_dir_all(d.state_dir()).expect("state dir");
    let out = Command::new("mount").args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs"]).arg(d.state_dir()).output().expect("mount");
    assert!(out.status.success(), "mount tmpfs (needs root): {}", String::from_utf8_lossy(&out.stderr));
    let _tmpfs = Tmpfs(d.state_dir());
    d.spawn();
    let filler = d.state_dir().join("filler");
    let mut known: BTreeMap<&'static str, Known> = BTreeMap::new();
    let specs: BTreeMap<&'static str, paddock::VmSpec> = NAMES.iter().map(|n| (*n, spec(&d, n))).collect();
    let (mut kills, mut terms, mut fills, mut crashes, mut answered, mut acked) = (0, 0, 0, 0, 0, 0);
    let t0 = Instant::now();

    for round in 0..rounds {
        let total = CLIENTS * OPS_PER_CLIENT;
        let kill_after = rng.usize(0..=total);
        let sigkill = rng.bool();
        let fill_after = rng.u32(0..100).lt(&25).then(|| rng.usize(0..=total));
        let plans: Vec<Vec<(&'static str, Op)>> =
            (0..CLIENTS).map(|_| (0..OPS_PER_CLIENT).map(|_| (NAMES[rng.usize(0..NAMES.len())], pick_op(&mut rng))).collect()).collect();
        let clock = Arc::new(AtomicU64::new(1));
        let done = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(tokio::sync::Notify::new());
        let records = Arc::new(Mutex::new(Vec::<Record>::new()));

        // Waits (on answers, not on time) until `n` requests were answered.
        let reached = |n: usize| {
            let (done, progress) = (done.clone(), progress.clone());
            async move {
                loop {
                    let notified = progress.notified();
                    if done.load(Ordering::SeqCst) >= n {
                        return;
                    }
                    notified.await;
                }
            }
        };
        let mut tasks = Vec::new();
        for (client, plan) in plans.into_iter().enumerate() {
            let c = d.client.clone();
            let (clock, done, progress, records) = (clock.clone(), done.clone(), progress.clone(), records.clone());
            let specs = specs.clone();
            tasks.push(tokio::spawn(async move {
                for (name, op) in plan {
                    let sent = clock.fetch_add(1, Ordering::SeqCst);
                    let r = run_op(&c, &specs[name], op).await;
                    let answered = clock.fetch_add(1, Ordering::SeqCst);
                    let gone = matches!(r, Err(ClientError::DaemonNotRunning { .. }));
                    let name_taken = matches!(&r, Err(ClientError::Api { detail, .. }) if detail.field.as_deref() == Some("name"));
                    // "kind: message"; the kind decides what the model learns.
                    let result = r.map_err(|e| format!("{}: {e}", e.kind().unwrap_or("transport")));
                    records.lock().expect("records").push(Record { client, name, op, sent, answered, result, name_taken });
                    done.fetch_add(1, Ordering::SeqCst);
                    progress.notify_waiters();
                    if gone {
                        break;
                    }
                }
                done.fetch_add(OPS_PER_CLIENT, Ordering::SeqCst); // this client has no more
                progress.notify_waiters();
            }));
        }
        let filler_task = fill_after.map(|n| {
            let (reached, filler) = (reached(n), filler.clone());
            tokio::spawn(async move {
                reached.await;
                tokio::task::spawn_blocking(move || fill(&filler)).await.expect("fill");
            })
        });
        reached(kill_after).await;
        if let Some(f) = filler_task {
            f.await.expect("filler");
            fills += 1;
        }
        // The daemon dies at this moment, requests in flight or not.
        if sigkill {
            d.kill9();
            kills += 1;
        } else {
            let mut child = d.child.take().expect("daemon running");
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
            assert!(status.code().is_some() || status.to_string().contains("signal"), "{status}");
            terms += 1;
        }
        for t in tasks {
            t.await.expect("client");
        }
        let mut records = std::mem::take(&mut *records.lock().expect("records"));
        records.sort_by_key(|r| r.sent);
        answered += records.len();
        acked += records.iter().filter(|r| r.result.is_ok()).count();
        apply(&mut known, &records);
        // While it is down, some hypervisors die too.
        for n in NAMES {
            for pid in pids_mentioning(&format!("{}/{n}/", d.run_dir().display())) {
                if rng.u32(0..100) < 20 {
                    // SAFETY: kill(2) on a fake hypervisor of this test's run dir.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    crashes += 1;
                    known.entry(n).or_default().alive = None;
                }
            }
        }
        let _ = std::fs::remove_file(&filler);
        d.spawn();
        let list = settled(&d).await;
        if let Err(why) = check(&d, &lab, &known, &list) {
            let history: Vec<String> = records.iter().map(|r| format!("  [{}..{}] client {} {:?} {}: {:?}", r.sent, r.answered, r.client, r.op, r.name, r.result)).collect();
            panic!(
                "chaos round {round} (seed {seed}; replay with PADDOCK_CHAOS_SEED={seed}): {why}\n\
                 daemon {} after {kill_after} answers, disk filled after {fill_after:?}\nhistory:\n{}\nknown: {known:?}\nlisted: {:#?}",
                if sigkill { "SIGKILLed" } else { "SIGTERMed" },
                history.join("\n"),
                list.iter().map(|v| (&v.name, &v.phase, v.pid)).collect::<Vec<_>>(),
            );
        }
        // What the daemon now says is the truth the next round builds on.
        for n in NAMES {
            let v = list.iter().find(|v| v.name == *n);
            known.insert(n, Known { exists: Some(v.is_some()), alive: Some(v.is_some_and(|v| matches!(v.phase, VmPhase::Running | VmPhase::Paused))) });
        }
    }
    println!(
        "chaos: {rounds} rounds in {:.1} s: {answered} requests answered ({acked} acknowledged), {kills} SIGKILLs, {terms} SIGTERMs, {fills} full disks, {crashes} hypervisors killed while the daemon was down; invariants held (seed {seed})",
        t0.elapsed().as_secs_f64()
    );
}
