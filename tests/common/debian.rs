//! The Debian 12 cloud guest of scripts/build-debian-guest.sh for tests
//! and benchmarks: its files, a spec with a cloud-init seed, SSH into it.

use super::Daemon;
use paddock::VmSpec;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// One boot under TCG on a loaded 2-core machine: about 3 minutes, and
/// much more when other VMs boot at the same time.
pub const BOOT_SECS: u64 = 1500;
pub const SSH_TIMEOUT: Duration = Duration::from_secs(120);
/// cloud-final prints this at the end of every boot.
pub const FINISHED: &str = r"Cloud-init v\. \S+ finished at";
pub const USER: &str = "ops";

pub struct DebianGuest {
    pub image: PathBuf,
    pub sha256: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

/// The Debian guest, built (or found in its cache) by the project's script.
pub fn debian() -> &'static DebianGuest {
    static G: OnceLock<DebianGuest> = OnceLock::new();
    G.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("scripts/build-debian-guest.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-debian-guest.sh");
        assert!(out.status.success(), "building the Debian guest failed");
        let paths: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect();
        let [image, kernel, initrd] = &paths[..] else { panic!("unexpected output of build-debian-guest.sh: {paths:?}") };
        let dir = image.parent().expect("image dir");
        let sha256 = std::fs::read_to_string(dir.join("root.qcow2.sha256")).expect("root.qcow2.sha256").trim().to_string();
        let cmdline = std::fs::read_to_string(dir.join("cmdline")).expect("cmdline").trim().to_string();
        DebianGuest { image: image.clone(), sha256, kernel: kernel.clone(), initrd: initrd.clone(), cmdline }
    })
}

/// Puts the image into the daemon's image cache under its sha256 (the
/// cache's documented layout; a hard link, since the daemon of a TAP test
/// lives in a network namespace where the host's loopback HTTP server of
/// image_specs.rs cannot be reached). `paddock image pull` itself is
/// tested in image_specs.rs.
pub fn seed_image_cache(d: &Daemon) {
    let g = debian();
    let dir = d.state_dir().join("images/sha256");
    std::fs::create_dir_all(&dir).expect("image cache dir");
    let dest = dir.join(&g.sha256);
    if std::fs::hard_link(&g.image, &dest).is_err() {
        std::fs::copy(&g.image, &dest).expect("copy the image into the cache");
    }
}

/// A throwaway ed25519 key pair; returns (private key path, public key).
pub fn ssh_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "paddock-test", "-f"]).arg(&key).status().expect("ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key").trim().to_string();
    (key, public)
}

/// Where and how to reach the guest's SSH server.
pub struct Ssh {
    pub key: PathBuf,
    pub host: String,
    pub port: u16,
    /// Run ssh inside this network namespace.
    pub netns: Option<String>,
}

impl Ssh {
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "ssh"]);
                c
            }
            None => Command::new("ssh"),
        };
        c.arg("-i")
            .arg(&self.key)
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR", "-p", &self.port.to_string()])
            .arg(format!("{USER}@{}", self.host))
            .arg(cmd)
            .stdin(Stdio::null());
        c
    }

    /// Runs `cmd` in the guest; (exit code, stdout + stderr).
    pub async fn run(&self, cmd: &str) -> (i32, String) {
        let mut c = tokio::process::Command::from(self.command(cmd));
        c.kill_on_drop(true);
        let out = tokio::time::timeout(SSH_TIMEOUT, c.output())
            .await
            .unwrap_or_else(|_| panic!("ssh {}:{} `{cmd}` took over {SSH_TIMEOUT:?}", self.host, self.port))
            .expect("run ssh");
        (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// Runs `cmd`, which must succeed; its trimmed output.
    pub async fn ok(&self, cmd: &str) -> String {
        let (code, out) = self.run(cmd).await;
        assert_eq!(code, 0, "`{cmd}` on {}:{} failed:\n{out}", self.host, self.port);
        out.trim().to_string()
    }
}

pub fn debian_spec(name: &str, public_key: &str) -> VmSpec {
    let g = debian();
    serde_json::from_value(serde_json::json!({
        "name": name,
        "vcpus": 2,
        "memory_mib": 1024,
        "accel": "auto",
        "ready_pattern": FINISHED,
        "ready_probe": { "tcp": 22 },
        "boot": {
            "image": format!("sha256:{}", g.sha256),
            "kernel": g.kernel,
            "initrd": g.initrd,
            "cmdline": g.cmdline,
        },
        "data_disk": { "size_gib": 1, "mount": "/srv/data" },
        "cloud_init": {
            "users": [{
                "name": USER,
                "ssh_authorized_keys": [public_key],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "groups": ["adm"],
                "shell": "/bin/bash",
                "lock_passwd": true,
            }],
            "write_files": [{ "path": "/etc/paddock-typed", "content": "typed\n" }],
            "bootcmd": ["echo boot >> /var/tmp/bootcmd.log"],
            "runcmd": ["echo run >> /var/tmp/runcmd.log"],
            // The user's own part, merged with the typed ones (multipart).
            "user_data": "#cloud-config\nwrite_files:\n  - path: /etc/paddock-raw\n    content: |\n      raw\n",
        },
    }))
    .expect("valid spec")
}

