//! paddock-fake-ch: a stand-in Cloud Hypervisor process for tests.
//!
//! Takes CH's command line (`--api-socket path=...`, `--event-monitor
//! path=...`), serves the HTTP API on the socket with the VM state machine
//! of the release Paddock is tested against (v53 line, `vmm.ping` 54.0.0,
//! probed with curl): errors are JSON arrays of CH's messages, 404 when no
//! VM (or no config) exists, 500 for a request the VM's state refuses;
//! `vm.shutdown` (even of a paused VM) answers at once and leaves the VM
//! `Created`; SIGTERM ends the process before and after boot. It writes the
//! event monitor (pretty JSON objects one after another, as CH does) and
//! the serial output (where the `vm.create` body says; it prints
//! PADDOCK-GUEST-READY on boot and truncates the file at every boot).
//!
//! Files, as CH leaves them: the API socket is guarded by an OFD lock on
//! `<socket>.lock` (left behind at exit); with the lock taken a stale socket
//! file is replaced. A vsock device binds its host socket at `vm.boot` and
//! a file already there fails the boot with CH's "Address already in use".
//!
//! Every request body is checked against the API document (schema.rs): a
//! violation is logged as `VIOLATION` to stderr and to PADDOCK_FAKE_CH_LOG
//! (if set), where every request is also recorded as `METHOD endpoint
//! status`, so tests can see both. A wrong type fails the request with 400
//! (CH's deserializer would); a field the document does not name is only
//! logged, since CH's `vm.create` ignores unknown fields.
//!
//! Behaviour is chosen with PADDOCK_FAKE_CH, comma-separated:
//!   ignore-power-button   vm.power-button answers 204 and does nothing
//!   hang                  once vm.info has reported the VM running, no API
//!                         request is ever answered again
//!   ignore-term           SIGTERM is ignored
//!   exit=N                print an error and exit with code N at once
//!   crash-after-ms=N      abort (SIGABRT) N ms after vm.boot
//!   vcpu-error-after-ms=N N ms after vm.boot, what CH does on a fatal vCPU
//!                         error: an ERROR line on stderr, `vm shutdown`,
//!                         `deleted`, `vmm shutdown`, exit code 0
//!   panic-after-ms=N      N ms after vm.boot the guest panics: a `guest`
//!                         `panic` event (pvpanic); the VMM keeps running
//!   no-reply-on-shutdown  vmm.shutdown exits before answering (CH #6247)
//!   ticker                print `tick N` on the serial port every 100 ms
//!   fail-boot             vm.boot answers 500 as CH does for a kernel it
//!                         cannot load

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
    vcpu_error_after_ms: Option<u64>,
    panic_after_ms: Option<u64>,
    no_reply_on_shutdown: bool,
    ticker: bool,
    fail_boot: bool,
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
            "vcpu-error-after-ms" => m.vcpu_error_after_ms = v.parse().ok(),
            "panic-after-ms" => m.panic_after_ms = v.parse().ok(),
            "no-reply-on-shutdown" => m.no_reply_on_shutdown = true,
            "ticker" => m.ticker = true,
            "fail-boot" => m.fail_boot = true,
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
}

impl VmState {
    fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
        }
    }
}

struct Vm {
    state: VmState,
    config: Value,
    /// The vsock device's host socket, bound while the VM is booted.
    vsock: Option<std::os::unix::net::UnixListener>,
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
    /// Exit when this connection ends (the answer has been read).
    Exit,
}

type Answer = (StatusCode, Value, After);

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

/// CH's error answer: the chain of messages as a JSON array.
fn api_error(status: StatusCode, chain: &[&str]) -> Answer {
    let mut v = vec!["Error from API"];
    v.extend_from_slice(chain);
    (status, json!(v), After::Nothing)
}

fn not_created(what: &str) -> Answer {
    api_error(StatusCode::NOT_FOUND, &[what, "VM is not created"])
}

fn refused(what: &str, s: VmState, to: &str) -> Answer {
    let why = format!("Invalid VM state transition: {} to {to}", s.as_str());
    api_error(StatusCode::INTERNAL_SERVER_ERROR, &[what, &why])
}

impl Fake {
    fn event(&self, source: &str, event: &str, properties: Value) {
        let t = self.started.elapsed();
        let v = json!({
            "timestamp": {"secs": t.as_secs(), "nanos": t.subsec_nanos()},
            "source": source,
            "event": event,
            "properties": properties,
        });
        if let Some(f) = lock(&self.events).as_mut() {
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            let _ = f.write_all(format!("{text}\n\n").as_bytes());
            let _ = f.flush();
        }
    }

    fn vm_event(&self, event: &str) {
        self.event("vm", event, Value::Null);
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

    /// Checks a request body against the API document.
    fn check_body(&self, method: &str, endpoint: &str, body: &[u8]) -> Result<Value, Answer> {
        let schema = match self.spec.request_schema(endpoint, method) {
            Ok(s) => s,
            Err(e) => {
                log_line(&format!("VIOLATION {endpoint}: {e}"));
                return Err((StatusCode::NOT_FOUND, json!(["Not Found"]), After::Nothing));
            }
        };
        let bad = |why: String| {
            log_line(&format!("VIOLATION {endpoint}: {why}"));
            Err((StatusCode::BAD_REQUEST, json!([why]), After::Nothing))
        };
        match (schema, body.is_empty()) {
            (Some(_), true) => bad("the request body is required".into()),
            (None, false) => bad("this endpoint takes no body".into()),
            (None, true) => Ok(Value::Null),
            (Some(s), false) => {
                let v: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => return bad(format!("body is not JSON: {e}")),
                };
                let errs = self.spec.check(s, &v);
                let (unknown, wrong): (Vec<String>, Vec<String>) = errs.into_iter().partition(|e| e.contains("unknown field"));
                if !unknown.is_empty() {
                    // CH's vm.create ignores them; Paddock must still not send them.
                    log_line(&format!("VIOLATION {endpoint}: {} (accepted, as CH does)", unknown.join("; ")));
                }
                if !wrong.is_empty() {
                    return bad(wrong.join("; "));
                }
                Ok(v)
            }
        }
    }

    /// Answers one request: (status, JSON body or empty, what next).
    fn route(self: &Arc<Self>, method: &str, endpoint: &str, body: &[u8]) -> Answer {
        let parsed = match self.check_body(method, endpoint, body) {
            Ok(v) => v,
            Err(answer) => return answer,
        };
        let none = Value::Null;
        let mut vm = lock(&self.vm);
        let state = vm.as_ref().map(|v| v.state);
        let ok = (StatusCode::NO_CONTENT, none.clone(), After::Nothing);
        let set = |vm: &mut Option<Vm>, s: VmState| {
            if let Some(v) = vm.as_mut() {
                v.state = s;
            }
        };
        match (endpoint, state) {
            ("vmm.ping", _) => (
                StatusCode::OK,
                json!({"version": "fake-ch-54.0.0", "build_version": "fake", "pid": std::process::id(), "features": ["kvm"]}),
                After::Nothing,
            ),
            ("vm.info", None) => not_created("The VM info is not available"),
            ("vm.info", Some(s)) => {
                if self.mode.hang && s == VmState::Running {
                    self.hanging.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let config = vm.as_ref().map(|v| v.config.clone()).unwrap_or_default();
                (StatusCode::OK, json!({"config": config, "state": s.as_str()}), After::Nothing)
            }
            ("vm.create", Some(_)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not be created", "VM is already created"]),
            ("vm.create", None) => {
                *vm = Some(Vm { state: VmState::Created, config: parsed, vsock: None });
                ok
            }
            ("vm.boot", None) => api_error(StatusCode::NOT_FOUND, &["The VM could not boot", "VM config is missing"]),
            ("vm.boot", Some(VmState::Created)) if self.mode.fail_boot => {
                drop(vm);
                self.vm_event("booting");
                api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not boot", "Error from VM", "Cannot load the kernel into memory"])
            }
            ("vm.boot", Some(VmState::Created)) => {
                let Some(v) = vm.as_mut() else { return ok };
                if let Some(path) = v.config.pointer("/vsock/socket").and_then(Value::as_str) {
                    // CH binds the host side of hybrid vsock when it builds
                    // the devices, and never unlinks a file that is there.
                    match std::os::unix::net::UnixListener::bind(path) {
                        Ok(l) => {
                            // The fake "guest" behind it echoes (see serve_hybrid_vsock).
                            if let Ok(c) = l.try_clone() {
                                serve_hybrid_vsock(c);
                            }
                            v.vsock = Some(l);
                        }
                        Err(e) => {
                            drop(vm);
                            self.vm_event("booting");
                            let os = e.to_string();
                            return api_error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                &["The VM could not boot", "Error from device manager", "Cannot create virtio-vsock backend", "Error binding to the host-side Unix socket", &os],
                            );
                        }
                    }
                }
                v.state = VmState::Running;
                drop(vm);
                self.boot();
                ok
            }
            ("vm.boot", Some(s)) => refused("The VM could not boot", s, "Running"),
            ("vm.pause", None) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not be paused", "VM is not running"]),
            ("vm.pause", Some(VmState::Running)) => {
                set(&mut vm, VmState::Paused);
                drop(vm);
                self.vm_event("pausing");
                self.vm_event("paused");
                ok
            }
            ("vm.pause", Some(s)) => refused("The VM could not be paused", s, "Paused"),
            ("vm.resume", None) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not resume", "VM is not running"]),
            ("vm.resume", Some(VmState::Paused)) => {
                set(&mut vm, VmState::Running);
                drop(vm);
                self.vm_event("resuming");
                self.vm_event("resumed");
                ok
            }
            ("vm.resume", Some(s)) => refused("The VM could not resume", s, "Running"),
            ("vm.power-button", Some(VmState::Running)) if !self.mode.ignore_power_button => {
                // The guest powers off: CH shuts the VM and itself down.
                drop(vm);
                self.serial("fake-ch: power button pressed, powering off\n");
                self.vm_event("shutdown");
                self.vm_event("deleted");
                self.event("vmm", "shutdown", Value::Null);
                (StatusCode::NO_CONTENT, none, After::Exit)
            }
            ("vm.power-button", Some(VmState::Running | VmState::Paused)) => ok,
            ("vm.power-button", _) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &["Error triggering power button", "VM is not running"]),
            // This release answers at once, paused or not, and keeps the
            // VM's config: `vm.info` then says Created (a `vm.boot` would
            // start it again).
            ("vm.shutdown", None) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not shutdown", "VM is not running"]),
            ("vm.shutdown", Some(VmState::Running | VmState::Paused)) => {
                if let Some(v) = vm.as_mut() {
                    v.state = VmState::Created;
                    v.vsock = None;
                }
                drop(vm);
                self.vm_event("shutdown");
                ok
            }
            ("vm.shutdown", Some(s)) => refused("The VM could not shutdown", s, "Shutdown"),
            ("vm.reboot", Some(VmState::Running)) => {
                drop(vm);
                self.vm_event("rebooting");
                self.reboot_serial();
                self.vm_event("rebooted");
                ok
            }
            ("vm.reboot", None) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not reboot", "VM is not running"]),
            ("vm.reboot", Some(s)) => refused("The VM could not reboot", s, "Running"),
            // As CH: a snapshot of a paused VM into an existing directory
            // (its config and state; the fake has no memory to write).
            ("vm.snapshot", Some(VmState::Paused)) => {
                let Some(dir) = parsed.get("destination_url").and_then(Value::as_str).and_then(|u| u.strip_prefix("file://")) else {
                    return api_error(StatusCode::BAD_REQUEST, &["The VM could not be snapshotted", "Invalid destination_url"]);
                };
                let config = vm.as_ref().map(|v| v.config.clone()).unwrap_or_default();
                let written = std::fs::write(Path::new(dir).join("config.json"), config.to_string())
                    .and_then(|()| std::fs::write(Path::new(dir).join("state.json"), json!({"fake": true}).to_string()));
                match written {
                    Ok(()) => ok,
                    Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not be snapshotted", &e.to_string()]),
                }
            }
            ("vm.snapshot", Some(_)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not be snapshotted", "VM is not paused"]),
            // A restore makes the VM of the snapshot, paused.
            ("vm.restore", None) => {
                let Some(dir) = parsed.get("source_url").and_then(Value::as_str).and_then(|u| u.strip_prefix("file://")) else {
                    return api_error(StatusCode::BAD_REQUEST, &["The VM could not be restored", "Invalid source_url"]);
                };
                let config = std::fs::read(Path::new(dir).join("config.json")).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                let Some(config) = config else {
                    return api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not be restored", "Cannot read the snapshot's config.json"]);
                };
                *vm = Some(Vm { state: VmState::Paused, config, vsock: None });
                drop(vm);
                self.vm_event("restoring");
                self.vm_event("restored");
                ok
            }
            ("vm.restore", Some(_)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &["The VM could not be restored", "VM is already created"]),
            ("vm.delete", _) => {
                *vm = None;
                drop(vm);
                self.vm_event("deleted");
                ok
            }
            ("vmm.shutdown", s) => {
                drop(vm);
                if s.is_some_and(|s| s != VmState::Created) {
                    self.vm_event("shutdown");
                }
                if s.is_some() {
                    self.vm_event("deleted");
                }
                self.event("vmm", "shutdown", Value::Null);
                if self.mode.no_reply_on_shutdown {
                    log_line("vmm.shutdown: exiting before the reply");
                    std::process::exit(0);
                }
                (StatusCode::NO_CONTENT, none, After::Exit)
            }
            (_, None) => not_created("The VM is not created"),
            (other, _) => (StatusCode::INTERNAL_SERVER_ERROR, json!([format!("{other} is not implemented by the fake")]), After::Nothing),
        }
    }

    /// A reboot rebuilds the devices: the serial file starts afresh and
    /// the guest boots again.
    fn reboot_serial(&self) {
        if let Some(path) = lock(&self.vm).as_ref().and_then(|v| v.config.pointer("/serial/file").and_then(Value::as_str).map(PathBuf::from)) {
            let _ = std::fs::File::create(path);
        }
        self.serial("fake-ch: rebooted\nPADDOCK-GUEST-READY\n");
    }

    fn boot(self: &Arc<Self>) {
        // CH opens the serial file with File::create when it builds the
        // devices at boot: each boot starts the log afresh.
        if let Some(path) = lock(&self.vm).as_ref().and_then(|v| v.config.pointer("/serial/file").and_then(Value::as_str).map(PathBuf::from)) {
            let _ = std::fs::File::create(path);
        }
        self.vm_event("booting");
        self.serial("fake-ch: booting\nPADDOCK-GUEST-READY\n");
        self.vm_event("booted");
        if let Some(ms) = self.mode.crash_after_ms {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                std::process::abort();
            });
        }
        if let Some(ms) = self.mode.vcpu_error_after_ms {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                // CH's own log line format and its shutdown sequence.
                let t = me.started.elapsed().as_secs_f64();
                eprintln!("cloud-hypervisor: {t:11.6}s: <vcpu0> ERROR:vmm/src/cpu.rs:1487 -- VCPU generated error: VcpuRun(Failed to run vcpu: Bad address (os error 14))");
                me.vm_event("shutdown");
                me.vm_event("deleted");
                me.event("vmm", "shutdown", Value::Null);
                let _ = me.exit.send(0).await;
            });
        }
        if let Some(ms) = self.mode.panic_after_ms {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                me.serial("Kernel panic - not syncing: sysrq triggered crash\n");
                me.event("guest", "panic", json!({"event": "panic"}));
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
fn serve_hybrid_vsock(listener: std::os::unix::net::UnixListener) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let listener = match listener.set_nonblocking(true).and_then(|()| tokio::net::UnixListener::from_std(listener)) {
        Ok(l) => l,
        Err(e) => fail(&format!("cannot serve the vsock socket: {e}")),
    };
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

async fn handle(fake: Arc<Fake>, req: Request<Incoming>, after: Arc<Mutex<After>>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if fake.hanging.load(std::sync::atomic::Ordering::SeqCst) {
        log_line(&format!("{method} {path} HANG"));
        std::future::pending::<()>().await;
    }
    let (status, value, next) = match path.strip_prefix("/api/v1/") {
        Some(endpoint) => fake.route(&method, endpoint, &body),
        None => {
            log_line(&format!("VIOLATION {path}: not under /api/v1/"));
            (StatusCode::NOT_FOUND, json!(["Not Found"]), After::Nothing)
        }
    };
    let endpoint = path.strip_prefix("/api/v1/").unwrap_or(&path);
    // The fake's own successful answers keep to the document too.
    if let Some(schema) = fake.spec.response_schema(endpoint, &method, status.as_u16()).filter(|_| status.is_success()) {
        let errs = fake.spec.check(schema, &value);
        if !errs.is_empty() {
            log_line(&format!("VIOLATION (fake answer) {endpoint}: {}", errs.join("; ")));
        }
    }
    log_line(&format!("{method} {endpoint} {}", status.as_u16()));
    *lock(&after) = next;
    let bytes = if value.is_null() { Bytes::new() } else { Bytes::from(value.to_string()) };
    let mut resp = Response::builder().status(status).header("server", "Cloud Hypervisor API");
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

/// What CH does before it binds its API socket: an OFD write lock on
/// `<socket>.lock` (kept for the process's life, the file left behind),
/// then, holding it, any file at the socket path is stale and removed.
fn lock_api_socket(api: &Path) -> std::fs::File {
    let mut lock_path = api.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| fail(&format!("Error creation API server's socket: {e}")));
    // SAFETY: an all-zero flock is a valid value; the fields that matter
    // are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    if let Err(e) = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)) {
        fail(&format!("API socket {api:?} is already in use by another running instance ({e})"));
    }
    let _ = std::fs::remove_file(api);
    file
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
    let _api_lock = lock_api_socket(&api);
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
    fake.event("vmm", "starting", Value::Null);
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
                    // This release ends on SIGTERM, booted or not.
                    let booted = lock(&fake.vm).as_ref().map(|v| v.state);
                    if matches!(booted, Some(VmState::Running | VmState::Paused)) {
                        fake.vm_event("shutdown");
                    }
                    fake.vm_event("deleted");
                    fake.event("vmm", "shutdown", Value::Null);
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
