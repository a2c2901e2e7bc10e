//! paddock-fake-qemu: a stand-in hypervisor process for tests and scale.
//!
//! Takes QEMU's command line, serves QMP on the `-qmp unix:` socket, opens
//! the serial chardev socket and writes its `logfile=`, and obeys signals.
//! Behaviour is chosen with PADDOCK_FAKE_QEMU, comma-separated:
//!   silent          accept QMP connections and never say a word
//!   hang-commands   greet and negotiate, then never answer a command
//!   ignore-acpi     system_powerdown does nothing
//!   ignore-term     SIGTERM is ignored
//!   exit=N          print an error to stderr and exit with code N at once
//!   crash-after-ms=N  abort (SIGABRT) after N ms
//!   panic-after-ms=N  emit GUEST_PANICKED, then exit, after N ms
//!   gate=PATH       while PATH exists, a QMP connection gets no greeting
//!                   (a busy hypervisor); it comes once PATH is gone
//!   crash-when=PATH abort (SIGABRT) once PATH exists, removing it first
//!   fill=PATH       before serving, fill PATH's file system (write PATH
//!                   until ENOSPC): the disk is full right after the spawn
//! Without flags it behaves like a guest that boots instantly, prints
//! PADDOCK-GUEST-READY on its console and powers off on ACPI.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

const PANIC_EVENT: &str = r#"{"event":"GUEST_PANICKED","data":{"action":"pause"}}"#;

#[derive(Default, Clone)]
struct Mode {
    silent: bool,
    hang_commands: bool,
    ignore_acpi: bool,
    ignore_term: bool,
    exit: Option<i32>,
    crash_after_ms: Option<u64>,
    panic_after_ms: Option<u64>,
    fill: Option<PathBuf>,
    gate: Option<PathBuf>,
    crash_when: Option<PathBuf>,
}

fn mode() -> Mode {
    let mut m = Mode::default();
    for flag in std::env::var("PADDOCK_FAKE_QEMU").unwrap_or_default().split(',') {
        let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
        match k {
            "silent" => m.silent = true,
            "hang-commands" => m.hang_commands = true,
            "ignore-acpi" => m.ignore_acpi = true,
            "ignore-term" => m.ignore_term = true,
            "exit" => m.exit = v.parse().ok(),
            "crash-after-ms" => m.crash_after_ms = v.parse().ok(),
            "panic-after-ms" => m.panic_after_ms = v.parse().ok(),
            "fill" => m.fill = Some(PathBuf::from(v)),
            "gate" => m.gate = Some(PathBuf::from(v)),
            "crash-when" => m.crash_when = Some(PathBuf::from(v)),
            _ => {}
        }
    }
    m
}

/// Value of `key=` in a QEMU option string (`,,` is an escaped comma).
fn opt(s: &str, key: &str) -> Option<PathBuf> {
    let unescaped = s.replace(",,", "\u{0}");
    unescaped
        .split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .map(|v| PathBuf::from(v.replace('\u{0}', ",")))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let m = mode();
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = m.exit {
        eprintln!("fake-qemu: -machine: invalid accelerator (asked to fail with code {code})");
        std::process::exit(code);
    }
    let mut qmp = None;
    let mut serial = None;
    let mut log = None;
    for w in args.windows(2) {
        match w[0].as_str() {
            "-qmp" => qmp = w[1].strip_prefix("unix:").map(|s| PathBuf::from(s.split(',').next().unwrap_or(s))),
            "-chardev" => {
                serial = opt(&w[1], "path");
                log = opt(&w[1], "logfile");
            }
            _ => {}
        }
    }
    let Some(qmp) = qmp else {
        eprintln!("fake-qemu: no -qmp unix: socket given");
        std::process::exit(1);
    };
    if let Some(path) = &m.fill {
        fill(path);
    }
    let mut console = log.as_ref().and_then(|l| std::fs::OpenOptions::new().create(true).append(true).open(l).ok());
    let serial_l = serial.as_ref().and_then(|p| UnixListener::bind(p).ok());
    let listener = match UnixListener::bind(&qmp) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-qemu: cannot bind {qmp:?}: {e}");
            std::process::exit(1);
        }
    };
    if let Some(c) = console.as_mut() {
        let _ = c.write_all(b"fake-qemu: booting\nPADDOCK-GUEST-READY\n");
    }
    let (events, _) = broadcast::channel::<String>(16);
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::channel::<i32>(1);
    if let Some(l) = serial_l {
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _hold = s;
                    std::future::pending::<()>().await;
                });
            }
        });
    }
    if let Some(ms) = m.crash_after_ms {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            std::process::abort();
        });
    }
    if let Some(path) = m.crash_when.clone() {
        tokio::spawn(async move {
            // Polled: the test's touch is the trigger, at any time.
            while std::fs::remove_file(&path).is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            std::process::abort();
        });
    }
    if let Some(ms) = m.panic_after_ms {
        let ev = events.clone();
        let tx = exit_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            // With a QMP client, its writer exits once the event is written
            // (as QEMU's panic action does); with none, exit at once.
            if ev.send(PANIC_EVENT.into()).is_err() {
                let _ = tx.send(0).await;
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let m2 = m.clone();
    let ev2 = events.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_qmp(s, m2.clone(), ev2.clone(), exit_tx.clone()));
        }
    });
    let code = loop {
        tokio::select! {
            Some(code) = exit_rx.recv() => break code,
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
                if !m.ignore_term { break 0; }
            }
        }
    };
    let _ = std::fs::remove_file(&qmp);
    if let Some(s) = serial {
        let _ = std::fs::remove_file(s);
    }
    std::process::exit(code);
}

/// Writes `path` until its file system has no byte left.
fn fill(path: &std::path::Path) {
    let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) else { return };
    for chunk in [1 << 16, 1 << 12, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
}

async fn serve_qmp(s: UnixStream, m: Mode, events: broadcast::Sender<String>, exit: tokio::sync::mpsc::Sender<i32>) {
    if m.silent {
        let _hold = s;
        return std::future::pending().await;
    }
    if let Some(gate) = &m.gate {
        while gate.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (r, mut w) = s.into_split();
    let mut ev_rx = events.subscribe();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<String>(64);
    let panic_exit = exit.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(line) = out_rx.recv() => { if w.write_all(line.as_bytes()).await.is_err() { return; } }
                Ok(ev) = ev_rx.recv() => {
                    if w.write_all(format!("{ev}\n").as_bytes()).await.is_err() { return; }
                    if ev == PANIC_EVENT {
                        let _ = w.flush().await;
                        let _ = panic_exit.send(0).await;
                    }
                }
                else => return,
            }
        }
    });
    let _ = out_tx.send("{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\n".into()).await;
    let mut lines = BufReader::new(r).lines();
    let mut negotiated = false;
    let mut running = true;
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let id = v.get("id").cloned().unwrap_or(serde_json::Value::Null);
        let cmd = v.get("execute").and_then(|c| c.as_str()).unwrap_or("");
        if negotiated && m.hang_commands {
            continue;
        }
        let ok = serde_json::json!({"return": {}, "id": id}).to_string() + "\n";
        match cmd {
            "qmp_capabilities" => {
                negotiated = true;
                let _ = out_tx.send(ok).await;
            }
            "query-status" => {
                let status = if running { "running" } else { "paused" };
                let _ = out_tx.send(serde_json::json!({"return": {"status": status, "running": running}, "id": id}).to_string() + "\n").await;
            }
            "stop" => {
                running = false;
                let _ = events.send(r#"{"event":"STOP","data":{}}"#.into());
                let _ = out_tx.send(ok).await;
            }
            "cont" => {
                running = true;
                let _ = events.send(r#"{"event":"RESUME","data":{}}"#.into());
                let _ = out_tx.send(ok).await;
            }
            "system_powerdown" => {
                let _ = out_tx.send(ok).await;
                if !m.ignore_acpi && running {
                    let _ = events.send(r#"{"event":"POWERDOWN","data":{}}"#.into());
                    let _ = events.send(r#"{"event":"SHUTDOWN","data":{"guest":true,"reason":"guest-shutdown"}}"#.into());
                    let _ = exit.send(0).await;
                }
            }
            "quit" => {
                let _ = out_tx.send(ok).await;
                let _ = events.send(r#"{"event":"SHUTDOWN","data":{"guest":false,"reason":"host-qmp-quit"}}"#.into());
                let _ = exit.send(0).await;
            }
            other => {
                let err = serde_json::json!({"error": {"class": "CommandNotFound", "desc": format!("The command {other} has not been found")}, "id": id});
                let _ = out_tx.send(err.to_string() + "\n").await;
            }
        }
    }
}
