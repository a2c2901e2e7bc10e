//! The Blueprint flow on Paddock: each service in its own VM.
//!
//! Per service: a spec with the guest (kernel boot, or a cloud image), a FAT
//! service disk (the service binary, a keystore tree and a launcher with
//! exact args and env), a cloud-init seed, a data disk, a TAP lease, and
//! vsock. Then: wait for the service's readiness line, talk to it over
//! vsock, stop it through ACPI, remove it (the data disk stays).
//!
//! ```sh
//! scripts/build-test-guest.sh; scripts/build-guest-service.sh
//! sudo cargo run --example blueprint      # TAP leases need root
//! ```
//!
//! The guest is the project's busybox test guest unless `BLUEPRINT_IMAGE`
//! names a pulled cloud image (`sha256:...`), which then runs the launcher
//! through cloud-init. `BLUEPRINT_DIR` holds state and run files (default:
//! a temporary directory); `BLUEPRINT_SERVICE_BIN` is the in-guest service
//! (examples/guest-service, built static by scripts/build-guest-service.sh).

use paddock::{
    Boot, CloudInitSpec, DataDiskSpec, LauncherSpec, Network, NetworkMode, Runtime, RuntimeConfig, ServiceDiskSpec, ServiceFile,
    ServiceTree, VmSpec, WaitFor,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The vsock port the service listens on.
pub const PORT: u32 = 5000;

/// One service to deploy.
pub struct Service {
    pub name: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// A host directory copied to `keystore/` on the service disk.
    pub keystore: PathBuf,
}

/// What the service said about itself over vsock.
#[derive(Debug)]
pub struct Report {
    pub address: Option<std::net::Ipv4Addr>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, Option<String>>,
    pub cwd: String,
    pub tree: Vec<String>,
    pub stopped_by: String,
}

/// Where the guest and the service binary come from.
pub struct Guest {
    pub boot: Boot,
    /// Cloud images run the launcher through cloud-init; the test guest
    /// through its `paddock.run_disk` switch.
    pub cloud_image: bool,
    pub service_bin: PathBuf,
}

impl Guest {
    pub fn from_env() -> Guest {
        let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/paddock");
        let service_bin = std::env::var_os("BLUEPRINT_SERVICE_BIN").map(PathBuf::from).unwrap_or_else(|| home.join("guest-service/paddock-guest-service"));
        match std::env::var("BLUEPRINT_IMAGE") {
            Ok(image) => Guest { boot: Boot::image(image), cloud_image: true, service_bin },
            Err(_) => {
                let g = std::env::var_os("PADDOCK_GUEST_DIR").map(PathBuf::from).unwrap_or_else(|| home.join("test-guest"));
                // Disks in attach order: data (vda), seed (vdb), service (vdc).
                let boot = Boot::kernel(g.join("vmlinuz")).initrd(g.join("initramfs.cpio.gz")).cmdline("console=ttyS0 panic=-1 quiet paddock.run_disk=/dev/vdc");
                Guest { boot, cloud_image: false, service_bin }
            }
        }
    }
}

/// The VM of one service: everything the Blueprint manager used to build by hand.
pub fn spec(s: &Service, guest: &Guest) -> VmSpec {
    let launcher = LauncherSpec { program: "../bin/service".into(), args: s.args.clone(), env: s.env.clone(), workdir: Some("keystore".into()) };
    let runcmd = vec!["mkdir -p /srv/svc && mount -o ro LABEL=SERVICE /srv/svc && (sh /srv/svc/launch.sh >/dev/ttyS0 2>&1 &)".to_string()];
    VmSpec::builder(s.name.as_str())
        .boot(guest.boot.clone())
        .memory_mib(256)
        .ready_pattern("SERVICE-READY")
        .vsock(true)
        .network(Network { mode: NetworkMode::Tap, ..Default::default() })
        .data_disk(DataDiskSpec { size_gib: 1 })
        .cloud_init(CloudInitSpec { runcmd: if guest.cloud_image { runcmd } else { vec![] }, ..Default::default() })
        .service_disk(ServiceDiskSpec {
            files: vec![ServiceFile { path: "bin/service".into(), source: Some(guest.service_bin.clone()), content: None }],
            trees: vec![ServiceTree { source: s.keystore.clone(), at: "keystore".into() }],
            launcher: Some(launcher),
            ..Default::default()
        })
        .build()
}

/// Deploys `s`, asks it about itself over vsock, stops it by ACPI, removes it.
pub async fn deploy(rt: &Runtime, s: &Service, guest: &Guest) -> anyhow::Result<Report> {
    let info = rt.up(spec(s, guest), WaitFor::Ready, Duration::from_secs(240)).await?;
    let mut vsock = BufReader::new(rt.vsock_connect(&s.name, PORT).await?);
    let mut ask = async |q: &str| -> anyhow::Result<serde_json::Value> {
        vsock.get_mut().write_all(format!("{q}\n").as_bytes()).await?;
        let mut line = String::new();
        vsock.read_line(&mut line).await?;
        Ok(serde_json::from_str(&line)?)
    };
    let args = serde_json::from_value(ask("args").await?)?;
    let mut env = BTreeMap::new();
    for k in s.env.keys() {
        env.insert(k.clone(), serde_json::from_value(ask(&format!("env {k}")).await?)?);
    }
    let (cwd, tree) = (serde_json::from_value(ask("cwd").await?)?, serde_json::from_value(ask("tree").await?)?);
    let stopped = rt.stop(&s.name, Duration::from_secs(60)).await?;
    rt.remove(&s.name, false).await?;
    let stopped_by = stopped.rung.map(|r| r.as_str().to_string()).unwrap_or_default();
    Ok(Report { address: info.network.and_then(|n| n.address), args, env, cwd, tree, stopped_by })
}

/// The demo service: arguments and values a shell would mangle.
pub fn demo_service(keystore: &Path) -> Service {
    let args = ["plain", "two words", "it's \"quoted\"", "$HOME and `id` and $(id)", "", "back\\slash", "ünï €"];
    let env = [("SERVICE_VSOCK_PORT", PORT.to_string()), ("TRICKY", "a 'b' \"c\" $d `e` \\f".into()), ("EMPTY", String::new())];
    Service {
        name: "blueprint-svc".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        keystore: keystore.to_path_buf(),
    }
}

/// Writes a small keystore tree (what a real deployment copies from its vault).
pub fn write_keystore(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("certs"))?;
    std::fs::write(dir.join("node.key"), b"-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n")?;
    std::fs::write(dir.join("certs/ca.pem"), b"-----BEGIN CERTIFICATE-----\nnot-a-real-cert\n")
}

pub async fn run(dir: &Path) -> anyhow::Result<Report> {
    write_keystore(&dir.join("keystore"))?;
    let rt = Runtime::start(RuntimeConfig::new(dir.join("state"), dir.join("run"))).await?;
    let report = deploy(&rt, &demo_service(&dir.join("keystore")), &Guest::from_env()).await;
    rt.shutdown().await;
    report
}

#[allow(dead_code)] // the suite calls `run`, not `main`
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tmp;
    let dir = match std::env::var_os("BLUEPRINT_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            tmp = tempfile::Builder::new().prefix("blueprint").tempdir_in("/tmp")?;
            tmp.path().to_path_buf()
        }
    };
    let report = run(&dir).await?;
    println!("{report:#?}");
    Ok(())
}
