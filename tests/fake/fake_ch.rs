//! paddock-fake-ch: a stand-in Cloud Hypervisor process for tests.
//!
//! Takes CH's command line (`--api-socket path=...`, `--event-monitor
//! path=...`), serves the HTTP API on the socket with the VM state machine
//! the API document describes (404 before `vm.create`, 405 for a
//! transition that is not allowed), writes the event monitor (pretty JSON
//! objects one after another, as CH does) and the serial output (where the
//! `vm.create` body says; it prints PADDOCK-GUEST-READY on boot).
//!
//! Every request body is checked against the API document (schema.rs): a
//! violation fails the request with 400 and is logged as `VIOLATION` to
//! stderr and to PADDOCK_FAKE_CH_LOG (if set), where every request is also
//! recorded as `METHOD endpoint status`, so tests can see both.
//!
//! Like released CH, `vm.shutdown` or `vmm.shutdown` of a paused VM never
//! answers (CH #816/#817): a client must resume first.
//!
//! Behaviour is chosen with PADDOCK_FAKE_CH, comma-separated:
//!   ignore-power-button   vm.power-button answers 204 and does nothing
//!   hang                  once vm.info has reported the VM running, no API
//!                         request is ever answered again
//!   ignore-term           SIGTERM is ignored
//!   exit=N                print an error and exit with code N at once
//!   crash-after-ms=N      abort (SIGABRT) N ms after vm.boot
//!   no-reply-on-shutdown  vmm.shutdown exits before answering (CH #6247)
//!   ticker                print `tick N` on the serial port every 100 ms

mod schema;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixListener;

#[derive(Default, Clone)]
struct Mode {
    ignore_power_button: bool,
    hang: bool,
    ignore_term: bool,
    exit: Option<i32>,
    crash_after_ms: Option<u64>,
    no_reply_on_shutdown: bool,
    ticker: bool,
}

fn mode() -> Mode {
    let mut m = Mode::default();
    for flag in std::env::var("PADDOCK_FAKE_CH").unwrap_or_default().split(',') {
        let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
        match k {
            "ignore-power-button" => m.ignore_power_button = true,
            "hang" => m.hang = true,
            "ignore-term" => m.ignore_term = true,
            "exit" => m.exit = v.parse().ok(),
            "crash-after-ms" => m.crash_after_ms = v.parse().ok(),
            "no-reply-on-shutdown" => m.no_reply_on_shutdown = true,
            "ticker" => m.ticker = true,
            _ => {}
        }
    }
    m
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VmState {
    Created,
    Running,
    Paused,
    Shutdown,
}

impl VmState {
    fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Shutdown => "Shutdown",
        }
    }
}

struct Vm {
    state: VmState,
    config: Value,
}

struct Fake {
    mode: Mode,
    spec: schema::ApiSpec,
    vm: Mutex<Option<Vm>>,
    events: Mutex<Option<std::fs::File>>,
    started: Instant,
    /// Set with `hang` once the VM was seen running: nothing is answered
    /// any more.
    hanging: std::sync::atomic::AtomicBool,
    exit: tokio::sync::mpsc::Sender<i32>,
}

/// What to do once the answer is on its way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    /// Never answer (what released CH does in some states).
    Hang,
    /// Exit when this connection ends (the answer has been read).
    Exit,
}

fn log_line(line: &str) {
    eprintln!("fake-ch: {line}");
    if let Some(path) = std::env::var_os("PADDOCK_FAKE_CH_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fake {
    fn event(&self, source: &str, event: &str) {
        let t = self.started.elapsed();
        let v = json!({
            "timestamp": {"secs": t.as_secs(), "nanos": t.subsec_nanos()},
            "source": source,
            "event": event,
            "properties": null,
        });
        if let Some(f) = lock(&self.events).as_mut() {
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            let _ = f.write_all(format!("{text}\n\n").as_bytes());
            let _ = f.flush();
        }
    }

    fn serial(&self, text: &str) {
        let vm = lock(&self.vm);
        let Some(cfg) = vm.as_ref().map(|v| &v.config) else { return };
        if cfg.pointer("/serial/mode").and_then(Value::as_str) != Some("File") {
            return;
        }
        let Some(path) = cfg.pointer("/serial/file").and_then(Value::as_str) else { return };
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(text.as_bytes());
        }
    }

    /// Answers one request: (status, JSON body or empty, what next).
    fn route(self: &Arc<Self>, method: &str, endpoint: &str, body: &[u8]) -> (StatusCode, Value, After) {
        // The request itself, against the API document.
        let schema = match self.spec.request_schema(endpoint, method) {
            Ok(s) => s,
            Err(e) => return violation(endpoint, &e, StatusCode::NOT_FOUND),
        };
        let parsed = match (schema, body.is_empty()) {
            (Some(_), true) => return violation(endpoint, "the request body is required", StatusCode::BAD_REQUEST),
            (None, false) => return violation(endpoint, "this endpoint takes no body", StatusCode::BAD_REQUEST),
            (None, true) => Value::Null,
            (Some(s), false) => match serde_json::from_slice::<Value>(body) {
                Ok(v) => {
                    let errs = self.spec.check(s, &v);
                    if !errs.is_empty() {
                        return violation(endpoint, &errs.join("; "), StatusCode::BAD_REQUEST);
                    }
                    v
                }
                Err(e) => return violation(endpoint, &format!("body is not JSON: {e}"), StatusCode::BAD_REQUEST),
            },
        };
        let none = Value::Null;
        let mut vm = lock(&self.vm);
        let state = vm.as_ref().map(|v| v.state);
        let not_created = (StatusCode::NOT_FOUND, json!("VM is not created"), After::Nothing);
        let not_allowed = |s: Option<VmState>| (StatusCode::METHOD_NOT_ALLOWED, json!(format!("not allowed in state {s:?}")), After::Nothing);
        let ok = (StatusCode::NO_CONTENT, none.clone(), After::Nothing);
        match endpoint {
            "vmm.ping" => (
                StatusCode::OK,
                json!({"version": "fake-ch-0.1", "build_version": "fake", "pid": std::process::id(), "features": []}),
                After::Nothing,
            ),
            "vm.info" => match vm.as_ref() {
                None => not_created,
                Some(v) => {
                    if self.mode.hang && v.state == VmState::Running {
                        self.hanging.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    (StatusCode::OK, json!({"config": v.config, "state": v.state.as_str()}), After::Nothing)
                }
            },
            "vm.create" => match state {
                Some(_) => (StatusCode::INTERNAL_SERVER_ERROR, json!("VM is already created"), After::Nothing),
                None => {
                    *vm = Some(Vm { state: VmState::Created, config: parsed });
                    ok
                }
            },
            "vm.boot" => match state {
                None => not_created,
                Some(VmState::Created | VmState::Shutdown) => {
                    if let Some(v) = vm.as_mut() {
                        v.state = VmState::Running;
                    }
                    drop(vm);
                    self.boot();
                    ok
                }
                s => not_allowed(s),
            },
            "vm.pause" => match state {
                None => not_created,
                Some(VmState::Running) => {
                    if let Some(v) = vm.as_mut() {
                        v.state = VmState::Paused;
                    }
                    drop(vm);
                    self.event("vm", "pausing");
                    self.event("vm", "paused");
                    ok
                }
                s => not_allowed(s),
            },
            "vm.resume" => match state {
                None => not_created,
                Some(VmState::Paused) => {
                    if let Some(v) = vm.as_mut() {
                        v.state = VmState::Running;
                    }
                    drop(vm);
                    self.event("vm", "resuming");
                    self.event("vm", "resumed");
                    ok
                }
                s => not_allowed(s),
            },
            "vm.power-button" => match state {
                None => not_created,
                Some(VmState::Running) if !self.mode.ignore_power_button => {
                    // The guest powers off: CH shuts the VM and itself down.
                    drop(vm);
                    self.serial("fake-ch: power button pressed, powering off\n");
                    self.event("vm", "shutdown");
                    self.event("vmm", "shutdown");
                    (StatusCode::NO_CONTENT, none, After::Exit)
                }
                Some(VmState::Running | VmState::Paused) => ok,
                s => not_allowed(s),
            },
            "vm.shutdown" => match state {
                None => not_created,
                Some(VmState::Paused) => hang_forever(endpoint),
                Some(VmState::Running) => {
                    if let Some(v) = vm.as_mut() {
                        v.state = VmState::Shutdown;
                    }
                    drop(vm);
                    self.event("vm", "shutdown");
                    ok
                }
                s => not_allowed(s),
            },
            "vm.reboot" => match state {
                None => not_created,
                Some(VmState::Running) => {
                    drop(vm);
                    self.event("vm", "rebooting");
                    self.event("vm", "rebooted");
                    ok
                }
                s => not_allowed(s),
            },
            "vm.delete" => {
                *vm = None;
                drop(vm);
                self.event("vm", "deleted");
                ok
            }
            "vmm.shutdown" => {
                if state == Some(VmState::Paused) {
                    return hang_forever(endpoint);
                }
                drop(vm);
                self.event("vmm", "shutdown");
                if self.mode.no_reply_on_shutdown {
                    log_line("vmm.shutdown: exiting before the reply");
                    std::process::exit(0);
                }
                (StatusCode::NO_CONTENT, none, After::Exit)
            }
            other => (StatusCode::INTERNAL_SERVER_ERROR, json!(format!("{other} is not implemented by the fake")), After::Nothing),
        }
    }

    fn boot(self: &Arc<Self>) {
        // CH opens the serial file with File::create when it builds the
        // devices at boot: each boot starts the log afresh.
        if let Some(path) = lock(&self.vm).as_ref().and_then(|v| v.config.pointer("/serial/file").and_then(Value::as_str).map(PathBuf::from)) {
            let _ = std::fs::File::create(path);
        }
        self.event("vm", "booting");
        self.serial("fake-ch: booting\nPADDOCK-GUEST-READY\n");
        self.event("vm", "booted");
        if let Some(path) = lock(&self.vm).as_ref().and_then(|v| v.config.pointer("/vsock/socket").and_then(Value::as_str).map(PathBuf::from)) {
            serve_hybrid_vsock(path);
        }
        if let Some(ms) = self.mode.crash_after_ms {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                std::process::abort();
            });
        }
        if self.mode.ticker {
            let me = self.clone();
            tokio::spawn(async move {
                for i in 1.. {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    me.serial(&format!("tick {i}\n"));
                }
            });
        }
    }
}

/// CH's hybrid vsock on the host side: `CONNECT <port>\n` is answered
/// `OK <n>\n` and the fake "guest" echoes the bytes back.
fn serve_hybrid_vsock(path: PathBuf) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let _ = std::fs::remove_file(&path);
    let Ok(listener) = tokio::net::UnixListener::bind(&path) else { fail(&format!("cannot bind the vsock socket {path:?}")) };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                if s.read_line(&mut line).await.is_err() || !line.starts_with("CONNECT ") {
                    return;
                }
                if s.get_mut().write_all(b"OK 1073741824\n").await.is_err() {
                    return;
                }
                let (mut r, mut w) = tokio::io::split(s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

fn violation(endpoint: &str, why: &str, status: StatusCode) -> (StatusCode, Value, After) {
    log_line(&format!("VIOLATION {endpoint}: {why}"));
    (status, json!(why), After::Nothing)
}

/// What released CH does here: never answer.
fn hang_forever(endpoint: &str) -> (StatusCode, Value, After) {
    log_line(&format!("HANG {endpoint} on a paused VM (CH #816/#817)"));
    (StatusCode::INTERNAL_SERVER_ERROR, Value::Null, After::Hang)
}

async fn handle(fake: Arc<Fake>, req: Request<Incoming>, after: Arc<Mutex<After>>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if fake.hanging.load(std::sync::atomic::Ordering::SeqCst) {
        log_line(&format!("{method} {path} HANG"));
        std::future::pending::<()>().await;
    }
    let Some(endpoint) = path.strip_prefix("/api/v1/") else {
        let (status, _, _) = violation(&path, "not under /api/v1/", StatusCode::NOT_FOUND);
        return Ok(Response::builder().status(status).body(Full::new(Bytes::new())).unwrap_or_default());
    };
    let (status, value, next) = fake.route(&method, endpoint, &body);
    if next == After::Hang {
        std::future::pending::<()>().await;
    }
    // The fake's own answers keep to the document too.
    if let Some(schema) = fake.spec.response_schema(endpoint, &method, status.as_u16()) {
        let errs = fake.spec.check(schema, &value);
        if !errs.is_empty() {
            log_line(&format!("VIOLATION (fake answer) {endpoint}: {}", errs.join("; ")));
        }
    }
    log_line(&format!("{method} {endpoint} {}", status.as_u16()));
    *lock(&after) = next;
    let bytes = if value.is_null() { Bytes::new() } else { Bytes::from(value.to_string()) };
    let mut resp = Response::builder().status(status);
    if !bytes.is_empty() {
        resp = resp.header("content-type", "application/json");
    }
    Ok(resp.body(Full::new(bytes)).unwrap_or_default())
}

/// `path=X[,...]` or a bare path, as CH accepts.
fn path_arg(v: &str) -> PathBuf {
    PathBuf::from(v.split(',').find_map(|kv| kv.strip_prefix("path=")).unwrap_or(v))
}

fn fail(msg: &str) -> ! {
    eprintln!("fake-ch: {msg}");
    std::process::exit(1);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let m = mode();
    if let Some(code) = m.exit {
        fail_with(code);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut api, mut events) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--api-socket" => api = it.next().map(|v| path_arg(v)),
            "--event-monitor" => events = it.next().map(|v| path_arg(v)),
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    let Some(api) = api else { fail("--api-socket is required") };
    let spec = schema::ApiSpec::load().unwrap_or_else(|e| fail(&e));
    let events_file = events.as_deref().map(|p: &Path| {
        std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(p).unwrap_or_else(|e| fail(&format!("event monitor {p:?}: {e}")))
    });
    // Like CH (#7784): an existing file at the socket path is an error.
    let listener = UnixListener::bind(&api).unwrap_or_else(|e| fail(&format!("Error creating API socket {api:?}: {e}")));
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::channel::<i32>(1);
    let fake = Arc::new(Fake {
        mode: m.clone(),
        spec,
        vm: Mutex::new(None),
        events: Mutex::new(events_file),
        started: Instant::now(),
        hanging: Default::default(),
        exit: exit_tx,
    });
    fake.event("vmm", "starting");
    let f2 = fake.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let fake = f2.clone();
            tokio::spawn(async move {
                let after = Arc::new(Mutex::new(After::Nothing));
                let a2 = after.clone();
                let f3 = fake.clone();
                let svc = hyper::service::service_fn(move |req| handle(f3.clone(), req, a2.clone()));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                if *lock(&after) == After::Exit {
                    let _ = fake.exit.send(0).await;
                }
            });
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let code = loop {
        tokio::select! {
            Some(code) = exit_rx.recv() => break code,
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
                if m.ignore_term {
                    log_line("SIGTERM ignored");
                } else {
                    break 0;
                }
            }
        }
    };
    let _ = std::fs::remove_file(&api);
    std::process::exit(code);
}

fn fail_with(code: i32) -> ! {
    eprintln!("fake-ch: Error booting VM: KVM is not usable (asked to fail with code {code})");
    std::process::exit(code);
}
