//! The `paddock` command line: `serve` runs the daemon; every other command
//! is a client of its socket. Human tables by default, `--json` for scripts.
//!
//! Exit codes: 0 ok, 1 other failure, 2 usage, 3 not found, 4 invalid spec,
//! 5 daemon not running, 6 conflict (wrong state, duplicate name, busy),
//! 7 the VM failed to start.

mod console;
mod docs;
mod images;
mod confine_args;
mod limits;
mod snapshots;
mod stats;
mod project;
mod provision;
mod ssh;
mod table;
mod vsock;

use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::BodyExt as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::{Client, ClientError};
use crate::WaitFor;

pub const EXIT_OTHER: i32 = 1;
pub const EXIT_NOT_FOUND: i32 = 3;
pub const EXIT_INVALID_SPEC: i32 = 4;
pub const EXIT_NO_DAEMON: i32 = 5;
pub const EXIT_CONFLICT: i32 = 6;
pub const EXIT_START_FAILED: i32 = 7;

#[derive(Parser, Debug)]
#[command(name = "paddock", version, about = "Supervise virtual machines")]
pub struct Cli {
    /// The daemon's API socket [default: /run/paddock/paddock.sock; for
    /// `serve`, RUN_DIR/paddock.sock].
    #[arg(long, global = true, env = "PADDOCK_SOCKET")]
    socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Wait {
    Running,
    Ready,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Download an image, verify its sha256 and keep it by content.
    Pull {
        url: String,
        #[arg(long)]
        sha256: String,
    },
    /// Copy a local image file into the cache by content (a .zst or .xz
    /// file is decompressed); the file itself is only read.
    Import { path: PathBuf },
    /// List cached images.
    Ls,
    /// Delete a cached image (refused while a VM uses it).
    Rm { sha256: String },
}

#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// List data disks: those kept after `rm` and those of existing VMs.
    Ls,
    /// Delete the kept data disk of a removed VM.
    Rm { name: String },
}

/// Where clients look for the daemon without --socket.
pub const DEFAULT_SOCKET: &str = "/run/paddock/paddock.sock";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (under systemd, or in a terminal).
    Serve {
        #[arg(long, env = "PADDOCK_STATE_DIR", default_value = "/var/lib/paddock")]
        state_dir: PathBuf,
        #[arg(long, env = "PADDOCK_RUN_DIR", default_value = "/run/paddock")]
        run_dir: PathBuf,
        #[arg(long, env = "PADDOCK_QEMU", default_value = "qemu-system-x86_64")]
        qemu_binary: PathBuf,
        #[arg(long, env = "CLOUD_HYPERVISOR_BIN", default_value = "cloud-hypervisor")]
        cloud_hypervisor_binary: PathBuf,
        /// The vhost-user vsock device QEMU VMs use on hosts without
        /// /dev/vhost-vsock.
        #[arg(long, env = "PADDOCK_VSOCK_DEVICE", default_value = "vhost-device-vsock")]
        vsock_device_binary: PathBuf,
        /// Deadline for every control-socket call (QMP, CH API), in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        control_timeout_ms: u64,
        /// Address pool of TAP leases (a /30 per VM).
        #[arg(long, env = "PADDOCK_NET_POOL", default_value = "10.88.0.0/16")]
        net_pool: String,
        /// NAT for leased guests: `any` (out of any non-TAP interface),
        /// `off`, or an interface name.
        #[arg(long, default_value = "any")]
        masquerade: String,
        #[command(flatten)]
        limits: limits::LimitArgs,
        #[command(flatten)]
        confine: confine_args::ConfineArgs,
    },
    /// Create a VM from a TOML spec file and boot it; without FILE, every
    /// VM of the project file ./Paddock.toml, then provision them.
    Up {
        file: Option<PathBuf>,
        /// Return when the guest runs, or when its console readiness
        /// pattern matched.
        #[arg(long, value_enum, default_value = "running")]
        wait: Wait,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Stop every VM of ./Paddock.toml; --destroy removes them, their data
    /// disks and their provisioning logs.
    Down {
        #[arg(long)]
        destroy: bool,
    },
    /// Recreate every VM of ./Paddock.toml from the file (data disks kept)
    /// and provision it.
    Reload {
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Run the provisioning steps of ./Paddock.toml again (one VM or all).
    Provision {
        name: Option<String>,
        /// Seconds to wait for each VM's SSH server.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// List VMs.
    Ps,
    /// What each VM uses: CPU time, memory, disk and network I/O.
    Stats {
        /// One VM only.
        name: Option<String>,
    },
    /// The stats table, refreshed, with CPU use between refreshes.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(short = 'n', long)]
        iterations: Option<u64>,
    },
    /// Show one VM in full.
    Inspect { name: String },
    /// Print the serial console log.
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// The last provisioning output (of ./Paddock.toml's VM) instead.
        #[arg(long, conflicts_with = "follow")]
        provision: bool,
    },
    /// Attach to the serial console (Ctrl-] detaches).
    Console { name: String },
    /// Freeze the VM's vCPUs.
    Pause { name: String },
    /// Thaw the VM's vCPUs.
    Resume { name: String },
    /// Power the VM off: ACPI, then escalate (quit, SIGTERM, SIGKILL).
    Stop {
        name: String,
        /// Seconds the guest gets to react to the ACPI power button.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Boot a stopped VM again.
    Start {
        name: String,
        #[arg(long, value_enum, default_value = "running")]
        wait: Wait,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Delete a VM and everything it owned (its data disk only with --volumes).
    Rm {
        name: String,
        /// Stop it first if it is running.
        #[arg(long)]
        force: bool,
        /// Also delete the VM's data disk.
        #[arg(long)]
        volumes: bool,
    },
    /// Log in to the guest with ssh (the spec's `[ssh]`: its user, the
    /// key Paddock generated, the lease or forwarded port), or run COMMAND.
    Ssh {
        name: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Manage the image cache.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Data disks kept after `rm` (without --volumes).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Save a running VM's state and disks (`snapshot NAME [--as SNAP]`),
    /// or `snapshot ls`, `snapshot rm SNAP`.
    Snapshot(snapshots::SnapshotArgs),
    /// A new VM from a snapshot, supervised like any other.
    Restore(snapshots::RestoreArgs),
    /// Connect stdin/stdout to a port of the guest's vsock (the VM needs
    /// `vsock = true`).
    Vsock {
        name: String,
        port: u32,
        /// After the end of input, wait this long (milliseconds) for more
        /// of the guest's answer before closing.
        #[arg(long, default_value_t = 1000)]
        linger_ms: u64,
    },
    /// Stop the daemon. VMs keep running (the next daemon re-adopts them)
    /// unless --stop-vms.
    Shutdown {
        #[arg(long)]
        stop_vms: bool,
        /// Snapshot every running VM and stop it; the next daemon starts
        /// each from its snapshot.
        #[arg(long)]
        suspend_vms: bool,
        /// With --stop-vms: seconds each guest gets for ACPI.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Print a shell completion script (e.g. `paddock completions bash >
    /// /etc/bash_completion.d/paddock`).
    Completions { shell: docs::Shell },
    /// Write the man pages (paddock.1, paddock-SUBCOMMAND.1) into DIR.
    Manpages { dir: PathBuf },
    /// Follow the event stream (NDJSON with --json).
    Events {
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Print what is recorded and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PADDOCK_LOG").unwrap_or_else(|_| {
        let default = if matches!(cli.cmd, Command::Serve { .. }) { "info" } else { "warn" };
        tracing_subscriber::EnvFilter::new(default)
    });
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if !matches!(cli.cmd, Command::Serve { .. }) {
        // A client whose reader went away (`paddock inspect x | head`)
        // ends quietly, as Unix tools do, instead of panicking in println!.
        // The daemon keeps Rust's default (ignored): it must survive
        // clients that hang up.
        // SAFETY: setting a signal's disposition to the default action
        // before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_OTHER;
        }
    };
    let code = rt.block_on(run(cli));
    // Blocking work still queued (a database write of a request that was
    // cut off at shutdown) must not hold the exit past the daemon's bound.
    rt.shutdown_timeout(Duration::from_millis(500));
    code
}

async fn run(cli: Cli) -> i32 {
    let client = Client::new(cli.socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)));
    let json = cli.json;
    let result: Result<(), CliError> = match cli.cmd {
        Command::Serve { state_dir, run_dir, qemu_binary, cloud_hypervisor_binary, vsock_device_binary, control_timeout_ms, net_pool, masquerade, limits, confine } => {
            let pool = match net_pool.parse::<paddock_net::Pool>() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: --net-pool: {e}");
                    return 2;
                }
            };
            let masquerade = match masquerade.as_str() {
                "off" => paddock_net::nft::Masquerade::Off,
                "any" => paddock_net::nft::Masquerade::AnyUplink,
                dev => paddock_net::nft::Masquerade::Uplink(dev.to_string()),
            };
            let opts = crate::daemon::ServeOptions {
                net: paddock_actors::netmgr::NetConfig { pool, masquerade },
                // The socket lives in the run directory unless placed elsewhere.
                socket: cli.socket.clone().unwrap_or_else(|| run_dir.join("paddock.sock")),
                state_dir,
                run_dir,
                qemu_binary,
                cloud_hypervisor_binary,
                vsock_device_binary,
                control_timeout: Duration::from_millis(control_timeout_ms),
                api: limits.api(),
                bounds: limits.bounds(),
                confine: match confine.confinement() {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 2;
                    }
                },
            };
            return match crate::daemon::serve(opts).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    EXIT_OTHER
                }
            };
        }
        Command::Up { file: None, timeout, .. } => project::up(&client, timeout).await,
        Command::Down { destroy } => project::down(&client, destroy).await,
        Command::Reload { timeout } => project::reload(&client, timeout).await,
        Command::Provision { name, timeout } => project::provision(&client, name, timeout).await,
        Command::Logs { name, provision: true, .. } => project::provision_log(&name),
        Command::Up { file: Some(file), wait, timeout } => async {
            let spec = crate::config::load_spec_file(&file).map_err(CliError::Spec)?;
            let info = client.up(&spec, wait.into(), timeout).await?;
            print_one(json, &info);
            Ok(())
        }
        .await,
        Command::Ps => async {
            let vms = client.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vms).unwrap_or_default());
            } else {
                print!("{}", table::vms(&vms));
            }
            Ok(())
        }
        .await,
        Command::Completions { shell } => {
            docs::completions(shell);
            Ok(())
        }
        Command::Manpages { dir } => docs::manpages(&dir).map(|pages| {
            if !json {
                println!("{} man pages written to {}", pages.len(), dir.display());
            }
        }),
        Command::Stats { name } => stats::stats(&client, json, name.as_deref()).await,
        Command::Top { interval, iterations } => stats::top(&client, Duration::from_secs(interval.max(1)), iterations).await,
        Command::Inspect { name } => async {
            let info = client.get(&name).await?;
            println!("{}", serde_json::to_string_pretty(&info).unwrap_or_default());
            Ok(())
        }
        .await,
        Command::Logs { name, follow, provision: false } => async {
            let mut body = client.console(&name, follow).await?;
            let mut out = std::io::stdout();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| CliError::Other(e.to_string()))?;
                if let Some(data) = frame.data_ref() {
                    let _ = out.write_all(data);
                    let _ = out.flush();
                }
            }
            Ok(())
        }
        .await,
        Command::Console { name } => console::attach(&client, &name).await,
        Command::Pause { name } => client.pause(&name).await.map(|i| print_one(json, &i)).map_err(Into::into),
        Command::Resume { name } => client.resume(&name).await.map(|i| print_one(json, &i)).map_err(Into::into),
        Command::Stop { name, timeout } => async {
            let outcome = client.stop(&name, timeout).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
            } else {
                match outcome.rung {
                    Some(r) => println!("{name}: stopped by rung {} in {} ms", r.as_str(), outcome.elapsed_ms),
                    None => println!("{name}: already {}", outcome.phase.name()),
                }
            }
            Ok(())
        }
        .await,
        Command::Start { name, wait, timeout } => client.start(&name, wait.into(), timeout).await.map(|i| print_one(json, &i)).map_err(Into::into),
        Command::Image(cmd) => images::run(&client, json, cmd).await,
        Command::Ssh { name, command } => ssh::run(&client, &name, command).await,
        Command::Volume(cmd) => vsock::volume(&client, json, cmd).await,
        Command::Snapshot(args) => snapshots::snapshot(&client, json, args).await,
        Command::Restore(args) => snapshots::restore(&client, json, args).await,
        Command::Vsock { name, port, linger_ms } => vsock::bridge(&client, &name, port, Duration::from_millis(linger_ms)).await,
        Command::Rm { name, force, volumes } => async {
            client.remove_with(&name, force, volumes).await?;
            if !json {
                println!("{name}: removed");
            }
            Ok(())
        }
        .await,
        Command::Shutdown { stop_vms, suspend_vms, timeout } => async {
            let r = client.shutdown_with(stop_vms, suspend_vms, timeout).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                let n = r["stopped"].as_object().map(|m| m.len()).unwrap_or(0);
                let s = r["suspended"].as_object().map(|m| m.len()).unwrap_or(0);
                println!("daemon exiting; {n} VM(s) stopped, {s} suspended");
            }
            Ok(())
        }
        .await,
        Command::Events { since, no_follow } => async {
            let mut body = client.events(since, !no_follow).await?;
            let mut out = std::io::stdout();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| CliError::Other(e.to_string()))?;
                if let Some(data) = frame.data_ref() {
                    if json {
                        let _ = out.write_all(data);
                    } else {
                        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            if let Ok(ev) = serde_json::from_slice::<crate::Event>(line) {
                                let _ = writeln!(out, "{}", table::event(&ev));
                            } else if let Ok(l) = serde_json::from_slice::<crate::api::events::LaggedLine>(line) {
                                let _ = writeln!(out, "-- {} --", l.lagged.message);
                            }
                        }
                    }
                    let _ = out.flush();
                }
            }
            Ok(())
        }
        .await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

impl From<Wait> for WaitFor {
    fn from(w: Wait) -> Self {
        match w {
            Wait::Running => WaitFor::Running,
            Wait::Ready => WaitFor::Ready,
        }
    }
}

fn print_one(json: bool, info: &crate::VmInfo) {
    if json {
        println!("{}", serde_json::to_string_pretty(info).unwrap_or_default());
    } else {
        print!("{}", table::vms(std::slice::from_ref(info)));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Spec(crate::config::SpecFileError),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Spec(_) => EXIT_INVALID_SPEC,
            CliError::Client(ClientError::DaemonNotRunning { .. }) => EXIT_NO_DAEMON,
            CliError::Client(c) => match c.kind() {
                Some("not_found") => EXIT_NOT_FOUND,
                Some("invalid_spec") => EXIT_INVALID_SPEC,
                Some("conflict") | Some("busy") => EXIT_CONFLICT,
                Some("start_failed") | Some("backend_unavailable") => EXIT_START_FAILED,
                _ => EXIT_OTHER,
            },
            CliError::Other(_) => EXIT_OTHER,
        }
    }
}
