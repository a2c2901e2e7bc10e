//! The Blueprint flow on Paddock: each service in its own VM with a FAT
//! service disk (binary, keystore tree, launcher with exact args and env),
//! a cloud-init seed, a data disk, a TAP lease and vsock. Wait for the
//! service's readiness line, talk to it over vsock, stop it through ACPI,
//! remove it (the data disk stays).
//!
//! ```sh
//! scripts/build-test-guest.sh; scripts/build-guest-service.sh
//! sudo cargo run --example blueprint      # TAP leases need root
//! ```
//!
//! The guest is the busybox test guest unless `BLUEPRINT_GUEST=debian`
//! picks the Debian cloud guest of scripts/build-debian-guest.sh (in
//! `PADDOCK_DEBIAN_GUEST_DIR`, default ~/.cache/paddock/debian-guest) or
//! `BLUEPRINT_IMAGE` names a pulled cloud image (`sha256:...`); both run
//! the launcher through cloud-init. `BLUEPRINT_DIR`: state and run files
//! (default: a temporary directory). `BLUEPRINT_SERVICE_BIN`: the in-guest service
//! (examples/guest-service, built static by scripts/build-guest-service.sh).

use anyhow::Context;
use paddock::{
    Boot, CloudInitSpec, DataDiskSpec, LauncherSpec, Network, Runtime, RuntimeConfig, ServiceDiskSpec, ServiceFile, ServiceTree,
    VmSpec, WaitFor,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The vsock port the service listens on.
pub const PORT: u32 = 5000;

/// One service: what goes on its disk.
pub struct Service {
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub keystore: PathBuf,
    pub binary: PathBuf,
}

/// Where a service runs: the boot, whether cloud-init starts the launcher,
/// memory, and how long a boot (and the ACPI power-off) may take.
pub struct Guest {
    pub boot: Boot,
    pub cloud_init: bool,
    pub memory_mib: u64,
    pub secs: u64,
}

/// The VM of one service.
pub fn spec(s: &Service, guest: &Guest) -> VmSpec {
    // A cloud image runs the launcher from cloud-init (to /dev/console, the
    // serial console, which a getty's hangup of ttyS0 leaves alone); the
    // test guest from its `paddock.run_disk` switch (in `test_guest_boot`).
    let run = "modprobe -q vmw_vsock_virtio_transport; mkdir -p /srv/svc && mount -o ro LABEL=SERVICE /srv/svc && (sh /srv/svc/launch.sh >/dev/console 2>&1 &)";
    VmSpec::builder(s.name.as_str())
        .boot(guest.boot.clone())
        .memory_mib(guest.memory_mib)
        .ready_pattern("SERVICE-READY")
        .vsock(true)
        .network(Network::tap())
        .data_disk(DataDiskSpec::gib(1))
        .cloud_init(CloudInitSpec { runcmd: guest.cloud_init.then(|| run.to_string()).into_iter().collect(), ..Default::default() })
        .service_disk(ServiceDiskSpec {
            files: vec![ServiceFile::host("bin/service", &s.binary)],
            trees: vec![ServiceTree::new(&s.keystore, "keystore")],
            launcher: Some(LauncherSpec::new("../bin/service").args(s.args.clone()).env(s.env.clone()).workdir("keystore")),
            ..Default::default()
        })
        .build()
}

/// Deploys a service, asks it `questions` over vsock, stops and removes it.
/// Returns the lease address, the answers and the rung that stopped it.
pub async fn deploy(rt: &Runtime, spec: VmSpec, questions: &[&str], secs: u64) -> anyhow::Result<(Option<std::net::Ipv4Addr>, Vec<Value>, String)> {
    let info = rt.up(spec, WaitFor::Ready, Duration::from_secs(secs)).await?;
    let mut vsock = BufReader::new(rt.vsock_connect(&info.name, PORT).await?);
    let mut answers = Vec::new();
    for q in questions {
        vsock.get_mut().write_all(format!("{q}\n").as_bytes()).await?;
        let mut line = String::new();
        vsock.read_line(&mut line).await?;
        answers.push(serde_json::from_str(&line)?);
    }
    let stopped = rt.stop(&info.name, Duration::from_secs(secs / 4)).await?;
    rt.remove(&info.name, false).await?;
    let rung = stopped.rung.map(|r| r.as_str().to_string()).unwrap_or_default();
    Ok((info.network.and_then(|n| n.address), answers, rung))
}

/// The test guest's kernel boot; disks in attach order: data (vda), seed
/// (vdb), service (vdc).
pub fn test_guest_boot(dir: &Path) -> Boot {
    Boot::kernel(dir.join("vmlinuz")).initrd(dir.join("initramfs.cpio.gz")).cmdline("console=ttyS0 panic=-1 quiet paddock.run_disk=/dev/vdc")
}

/// The Debian cloud guest in `dir`: its root.qcow2 put into the runtime's
/// image cache under its sha256 (a hard link, else a copy), booted as
/// `boot.image` with its own kernel, initrd and cmdline.
pub fn debian_boot(rt: &Runtime, dir: &Path) -> anyhow::Result<Boot> {
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read_to_string(&p).with_context(|| format!("{} (build the guest: scripts/build-debian-guest.sh)", p.display()))
    };
    let sha256 = read("root.qcow2.sha256")?.trim().to_string();
    let cached = rt.images().path_of(&sha256)?;
    if !cached.exists() {
        let tmp = rt.images().dir().join("tmp/blueprint-root.qcow2");
        std::fs::hard_link(dir.join("root.qcow2"), &cached)
            .or_else(|_| std::fs::copy(dir.join("root.qcow2"), &tmp).and_then(|_| std::fs::rename(&tmp, &cached)))
            .with_context(|| format!("put {} into the image cache", dir.join("root.qcow2").display()))?;
    }
    let boot = Boot::kernel(dir.join("vmlinuz")).initrd(dir.join("initrd.img")).cmdline(read("cmdline")?.trim());
    Ok(Boot { image: Some(format!("sha256:{sha256}")), ..boot })
}

/// The demo service: arguments and values a shell would mangle, and a
/// keystore tree (what a real deployment copies from its vault).
pub fn demo_service(dir: &Path, binary: PathBuf) -> std::io::Result<Service> {
    let keystore = dir.join("keystore");
    std::fs::create_dir_all(keystore.join("certs"))?;
    std::fs::write(keystore.join("node.key"), b"-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n")?;
    std::fs::write(keystore.join("certs/ca.pem"), b"-----BEGIN CERTIFICATE-----\nnot-a-real-cert\n")?;
    let args = ["plain", "two words", "it's \"quoted\"", "$HOME and `id` and $(id)", "", "back\\slash", "ünï €"];
    let env = [("SERVICE_VSOCK_PORT", PORT.to_string()), ("TRICKY", "a 'b' \"c\" $d `e` \\f".into()), ("EMPTY", String::new())];
    Ok(Service {
        name: "blueprint-svc".into(),
        args: args.map(String::from).to_vec(),
        env: env.map(|(k, v)| (k.to_string(), v)).to_vec(),
        keystore,
        binary,
    })
}

/// The whole flow in `dir`: one runtime, the demo service, its answers.
pub async fn run(dir: &Path) -> anyhow::Result<(Service, Option<std::net::Ipv4Addr>, Vec<Value>, String)> {
    let cache = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/paddock");
    let var = |k: &str, default: PathBuf| std::env::var_os(k).map(PathBuf::from).unwrap_or(default);
    let service = demo_service(dir, var("BLUEPRINT_SERVICE_BIN", cache.join("guest-service/paddock-guest-service")))?;
    let mut questions = vec!["args".to_string(), "cwd".into(), "tree".into()];
    questions.extend(service.env.iter().map(|(k, _)| format!("env {k}")));
    let q: Vec<&str> = questions.iter().map(String::as_str).collect();
    let rt = Runtime::start(RuntimeConfig::new(dir.join("state"), dir.join("run"))).await?;
    let result = async {
        // The Debian guest boots for minutes under TCG and needs 1 GiB.
        let guest = match (std::env::var("BLUEPRINT_GUEST").as_deref(), std::env::var("BLUEPRINT_IMAGE")) {
            (Ok("debian"), _) => {
                let boot = debian_boot(&rt, &var("PADDOCK_DEBIAN_GUEST_DIR", cache.join("debian-guest")))?;
                Guest { boot, cloud_init: true, memory_mib: 1024, secs: 900 }
            }
            (Ok(other), _) => anyhow::bail!("BLUEPRINT_GUEST={other:?}: the only choice is `debian`"),
            (_, Ok(image)) => Guest { boot: Boot::image(image), cloud_init: true, memory_mib: 1024, secs: 900 },
            _ => Guest { boot: test_guest_boot(&var("PADDOCK_GUEST_DIR", cache.join("test-guest"))), cloud_init: false, memory_mib: 256, secs: 240 },
        };
        deploy(&rt, spec(&service, &guest), &q, guest.secs).await
    }
    .await;
    rt.shutdown().await;
    let (address, answers, rung) = result?;
    Ok((service, address, answers, rung))
}

#[allow(dead_code)] // the suite calls `run`, not `main`
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("blueprint").tempdir_in("/tmp")?;
    let dir = std::env::var_os("BLUEPRINT_DIR").map(PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    let (_, address, answers, rung) = run(&dir).await?;
    println!("guest address: {address:?}\nthe service said over vsock:");
    answers.iter().for_each(|a| println!("  {a}"));
    println!("stopped by: {rung}");
    Ok(())
}
