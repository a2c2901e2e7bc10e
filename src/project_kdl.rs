//! vmctl's `VMFile.kdl`, read into a [`Project`] so a vmctl project runs
//! unchanged (`paddock up` finds it when there is no `Paddock.toml`).
//!
//! vmctl's nodes: `vm "NAME" { image "PATH" | image-url "URL"; vcpus N;
//! memory MIB; disk GIB; network "user"|"tap"|"none"; cloud-init {
//! hostname; ssh-key "PUBKEY-FILE"; user-data "FILE" }; ssh { user;
//! private-key "FILE" }; provision "shell" { inline | script };
//! provision "file" { source; destination } }`. Paths may start with `~`
//! and are otherwise relative to the file. As in vmctl, user networking
//! gets a free host port forwarded to the guest's SSH port, and an `ssh`
//! block without `private-key` gets a generated key.
//!
//! Paddock's own additions, for images without a bootloader: `kernel`,
//! `initrd`, `cmdline`; `uefi` (bare, or `uefi #true`/`#false`: OVMF with
//! the VM's own variable store, like vmctl's `--uefi`); `display "vnc"` or
//! `display "vnc-tcp"` (see the spec's `display`). `image-url` is refused: Paddock verifies every
//! download against a sha256, which a VMFile does not carry.

use std::path::{Path, PathBuf};

use kdl::{KdlDocument, KdlNode};
use paddock_actors::VmSpec;

use crate::project::{FileStep, Project, ProjectVm, ShellStep, Step};

/// The vmctl file `paddock up` looks for when there is no `Paddock.toml`.
pub const VMFILE: &str = "VMFile.kdl";

fn string<'a>(doc: &'a KdlDocument, key: &str) -> Option<&'a str> {
    doc.get_arg(key).and_then(|v| v.as_string())
}

fn integer(doc: &KdlDocument, key: &str, vm: &str) -> Result<Option<u64>, String> {
    match doc.get_arg(key) {
        None => Ok(None),
        Some(v) => v.as_integer().and_then(|i| u64::try_from(i).ok()).map(Some).ok_or_else(|| format!("vm {vm:?}: {key}: a positive whole number")),
    }
}

/// `~/x` under $HOME; a relative path under `dir`.
fn path(raw: &str, dir: &Path) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    match raw.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None if raw == "~" => home(),
        None => dir.join(raw),
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| format!("no free local port for SSH: {e}"))
}

pub fn parse(text: &str, dir: &Path) -> Result<Project, String> {
    let doc: KdlDocument = text.parse().map_err(|e: kdl::KdlError| format!("not valid KDL: {e}"))?;
    let mut vms: Vec<ProjectVm> = Vec::new();
    for node in doc.nodes() {
        if node.name().value() != "vm" {
            return Err(format!("unknown top-level node {:?}; a VMFile has only vm \"NAME\" {{ ... }} nodes", node.name().value()));
        }
        let vm = vm(node, dir)?;
        if vms.iter().any(|v| v.spec.name == vm.spec.name) {
            return Err(format!("a second vm named {:?}", vm.spec.name));
        }
        vms.push(vm);
    }
    if vms.is_empty() {
        return Err("no vm definitions; add vm \"NAME\" { image \"./base.qcow2\" }".into());
    }
    Ok(Project { dir: dir.to_path_buf(), vms })
}

fn vm(node: &KdlNode, dir: &Path) -> Result<ProjectVm, String> {
    let name = node.get(0).and_then(|v| v.as_string()).ok_or("a vm node needs a name: vm \"my-server\" { ... }")?.to_string();
    let empty = KdlDocument::new();
    let body = node.children().unwrap_or(&empty);
    const KNOWN: [&str; 15] = [
        "image", "image-url", "vcpus", "memory", "disk", "network", "cloud-init", "ssh", "provision", "kernel", "initrd", "cmdline", "ssh-port", "uefi",
        "display",
    ];
    if let Some(n) = body.nodes().iter().find(|n| !KNOWN.contains(&n.name().value())) {
        return Err(format!("vm {name:?}: unknown node {:?}", n.name().value()));
    }
    if body.get("image-url").is_some() {
        return Err(format!(
            "vm {name:?}: image-url: Paddock verifies downloads by sha256; `paddock image pull URL --sha256 HEX`, then image \"sha256:HEX\" (or a local file)"
        ));
    }
    let image = string(body, "image").ok_or_else(|| format!("vm {name:?}: no image; add image \"/path/to/image.qcow2\""))?;
    let image = if image.starts_with("sha256:") { image.to_string() } else { path(image, dir).to_string_lossy().into_owned() };
    let mut boot = serde_json::json!({ "image": image });
    for key in ["kernel", "initrd"] {
        if let Some(p) = string(body, key) {
            boot[key] = path(p, dir).to_string_lossy().into();
        }
    }
    if let Some(c) = string(body, "cmdline") {
        boot["cmdline"] = c.into();
    }
    if let Some(gib) = integer(body, "disk", &name)? {
        boot["overlay_gib"] = gib.into();
    }
    let ssh_port = integer(body, "ssh-port", &name)?.unwrap_or(22);
    let mode = body.get("network").and_then(|n| n.get(0)).and_then(|v| v.as_string()).unwrap_or("user");
    let network = match mode {
        "user" => serde_json::json!({ "mode": "user", "forwards": [{ "host": free_port()?, "guest": ssh_port }] }),
        "tap" => serde_json::json!({ "mode": "tap" }),
        "none" => serde_json::json!({ "mode": "none" }),
        other => return Err(format!("vm {name:?}: network {other:?}: use \"user\", \"tap\" or \"none\"")),
    };
    let mut spec = serde_json::json!({
        "name": name,
        "vcpus": integer(body, "vcpus", &name)?.unwrap_or(1),
        "memory_mib": integer(body, "memory", &name)?.unwrap_or(1024),
        "boot": boot,
        "network": network,
    });
    if let Some(node) = body.get("uefi") {
        let on = match node.get(0) {
            None => true,
            Some(v) => v.as_bool().ok_or_else(|| format!("vm {name:?}: uefi: write uefi, uefi #true or uefi #false"))?,
        };
        if on {
            spec["firmware"] = "uefi".into();
        }
    }
    if let Some(node) = body.get("display") {
        match node.get(0).and_then(|v| v.as_string()) {
            Some(d @ ("vnc" | "vnc-tcp")) => spec["display"] = d.into(),
            _ => return Err(format!("vm {name:?}: display: use display \"vnc\" (a Unix socket) or display \"vnc-tcp\" (127.0.0.1)")),
        }
    }
    let ssh_user = body.get("ssh").and_then(|n| n.children()).map(|d| string(d, "user").unwrap_or("vm").to_string());
    if let Some(ci) = body.get("cloud-init") {
        let ci = ci.children().unwrap_or(&empty);
        let mut c = serde_json::json!({});
        if let Some(h) = string(ci, "hostname") {
            c["hostname"] = h.into();
        }
        if let Some(k) = string(ci, "ssh-key") {
            let p = path(k, dir);
            let key = std::fs::read_to_string(&p).map_err(|e| format!("vm {name:?}: cloud-init ssh-key {p:?}: {e}"))?;
            let user = ssh_user.clone().unwrap_or_else(|| "vm".into());
            c["users"] = serde_json::json!([{ "name": user, "ssh_authorized_keys": [key.trim()], "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash" }]);
        }
        if let Some(u) = string(ci, "user-data") {
            let p = path(u, dir);
            c["user_data"] = std::fs::read_to_string(&p).map_err(|e| format!("vm {name:?}: cloud-init user-data {p:?}: {e}"))?.into();
        }
        spec["cloud_init"] = c;
    }
    if let Some(user) = ssh_user {
        let ssh_doc = body.get("ssh").and_then(|n| n.children()).unwrap_or(&empty);
        spec["ssh"] = match string(ssh_doc, "private-key") {
            Some(k) => serde_json::json!({ "user": user, "port": ssh_port, "key": path(k, dir) }),
            None => {
                // vmctl generates a key whenever none is given; it reaches
                // the guest through cloud-init.
                if spec.get("cloud_init").is_none() {
                    spec["cloud_init"] = serde_json::json!({});
                }
                serde_json::json!({ "user": user, "port": ssh_port, "generate_key": true })
            }
        };
    }
    let spec: VmSpec = serde_json::from_value(spec).map_err(|e| format!("vm {name:?}: {e}"))?;
    let mut provision = Vec::new();
    for (i, p) in body.nodes().iter().filter(|n| n.name().value() == "provision").enumerate() {
        let kind = p.get(0).and_then(|v| v.as_string()).unwrap_or("shell");
        let d = p.children().unwrap_or(&empty);
        let at = format!("vm {name:?}: provision #{}", i + 1);
        provision.push(match kind {
            "shell" => match (string(d, "inline"), string(d, "script")) {
                (Some(c), None) => Step::Shell(ShellStep { inline: Some(c.to_string()), script: None }),
                (None, Some(s)) => Step::Shell(ShellStep { inline: None, script: Some(path(s, dir)) }),
                _ => return Err(format!("{at} \"shell\": give exactly one of inline or script")),
            },
            "file" => match (string(d, "source"), string(d, "destination")) {
                (Some(s), Some(dst)) if !dst.is_empty() => Step::File(FileStep { source: path(s, dir), destination: dst.to_string() }),
                _ => return Err(format!("{at} \"file\": needs source and destination")),
            },
            other => return Err(format!("{at}: unknown type {other:?}; use \"shell\" or \"file\"")),
        });
    }
    if !provision.is_empty() && spec.ssh.is_none() {
        return Err(format!("vm {name:?}: provision steps run over SSH; add ssh {{ user \"...\" }}"));
    }
    Ok(ProjectVm { spec, provision })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uefi_and_display_nodes() {
        let dir = Path::new("/p");
        let p = parse("vm \"a\" {\n image \"x.qcow2\"\n uefi\n display \"vnc-tcp\"\n}\nvm \"b\" {\n image \"x.qcow2\"\n uefi #false\n}", dir).unwrap();
        assert_eq!(p.vms[0].spec.firmware, paddock_actors::spec::Firmware::Uefi);
        assert_eq!(p.vms[0].spec.display, Some(paddock_actors::spec::Display::VncTcp));
        assert_eq!(p.vms[1].spec.firmware, paddock_actors::spec::Firmware::Bios);
        let e = parse("vm \"a\" {\n image \"x.qcow2\"\n display \"sdl\"\n}", dir).unwrap_err();
        assert!(e.contains("display"), "{e}");
        let e = parse("vm \"a\" {\n image \"x.qcow2\"\n uefi \"yes\"\n}", dir).unwrap_err();
        assert!(e.contains("uefi"), "{e}");
    }

    const VMFILE_TEXT: &str = r#"
vm "full-example" {
    image "images/base.qcow2"
    vcpus 4
    memory 4096
    disk 40
    network "user"
    cloud-init {
        hostname "full-example"
    }
    ssh {
        user "ubuntu"
    }
    provision "shell" {
        inline "sudo apt-get update"
    }
    provision "file" {
        source "config/bashrc"
        destination "/home/ubuntu/.bashrc"
    }
    provision "shell" {
        script "scripts/setup.sh"
    }
}
vm "minimal" {
    image "~/images/debian.qcow2"
    network "none"
}
"#;

    #[test]
    fn vmctl_example_reads_as_a_project() {
        let p = parse(VMFILE_TEXT, Path::new("/proj")).unwrap();
        let full = p.vm("full-example").unwrap();
        full.spec.validate().unwrap();
        assert_eq!((full.spec.vcpus, full.spec.memory_mib, full.spec.boot.overlay_gib), (4, 4096, Some(40)));
        assert_eq!(full.spec.boot.image.as_deref(), Some("/proj/images/base.qcow2"));
        let ssh = full.spec.ssh.as_ref().unwrap();
        assert!(ssh.generate_key && ssh.user == "ubuntu" && ssh.port == 22);
        assert_eq!(full.spec.network.forwards[0].guest, 22);
        assert_eq!(full.provision.len(), 3);
        assert!(matches!(&full.provision[1], Step::File(f) if f.source == Path::new("/proj/config/bashrc")));
        let min = p.vm("minimal").unwrap();
        min.spec.validate().unwrap();
        assert!(min.spec.boot.image.as_deref().unwrap().ends_with("/images/debian.qcow2") && !min.spec.boot.image.as_deref().unwrap().starts_with('~'));
        assert_eq!(min.spec.memory_mib, 1024);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, want) in [
            ("vm \"a\" { image-url \"https://x/y.img\" }", "sha256"),
            ("vm \"a\" { }", "no image"),
            ("vm \"a\" { image \"x\"\n colour 1 }", "unknown node \"colour\""),
            ("vm \"a\" { image \"x\"\n provision \"shell\" { inline \"x\" } }", "over SSH"),
            ("vm \"a\" { image \"x\"\n ssh { user \"u\" }\n provision \"shell\" { } }", "inline or script"),
            ("vm \"a\" { image \"x\"\n network \"bridge\" }", "network"),
            ("vm \"a\" { image \"x\" }\nvm \"a\" { image \"y\" }", "second vm"),
            ("vm {", "KDL"),
        ] {
            let e = parse(text, Path::new("/p")).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
