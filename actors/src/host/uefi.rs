//! UEFI firmware (`firmware = "uefi"`, QEMU only): OVMF from Debian's
//! `ovmf` package, found the way libvirt finds it, through QEMU's firmware
//! descriptors (`/usr/share/qemu/firmware/*.json`, overridden by
//! `/etc/qemu/firmware`), and a per-VM copy of its variable store.
//!
//! The store is `STATE_DIR/vms/NAME/efi-vars.fd`: copied from OVMF's
//! template at the VM's first start, written by the firmware and the guest
//! (boot entries, efivarfs), kept across stops, restarts and daemon
//! restarts, and removed with the VM's directory by `rm`.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::error::{Error, SpecError};

/// The VM's variable store, in its state directory.
pub const VARS_FILE: &str = "efi-vars.fd";

/// Where QEMU's firmware descriptors live; a file in a later directory
/// replaces one of the same name in an earlier one (QEMU's interop rule).
const DESCRIPTOR_DIRS: [&str; 2] = ["/usr/share/qemu/firmware", "/etc/qemu/firmware"];

/// The firmware pair of one UEFI VM: OVMF's code (shared, read-only) and
/// the VM's own variable store (written by the guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiFlash {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// OVMF as installed: its code and the variable store template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Descriptor {
    #[serde(default)]
    interface_types: Vec<String>,
    mapping: Mapping,
    #[serde(default)]
    targets: Vec<Target>,
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Mapping {
    device: String,
    #[serde(default)]
    executable: Option<FlashFile>,
    #[serde(default)]
    nvram_template: Option<FlashFile>,
}

#[derive(Debug, Deserialize)]
struct FlashFile {
    filename: PathBuf,
    #[serde(default = "raw")]
    format: String,
}

fn raw() -> String {
    "raw".into()
}

#[derive(Debug, Deserialize)]
struct Target {
    architecture: String,
    #[serde(default)]
    machines: Vec<String>,
}

/// Secure Boot builds need SMM (and enrolled keys a test kernel lacks);
/// Paddock boots the plain build.
const UNWANTED_FEATURES: [&str; 3] = ["secure-boot", "requires-smm", "enrolled-keys"];

impl Descriptor {
    /// A plain x86_64 UEFI flash image for q35 with a variable store template.
    fn usable(&self) -> Option<Ovmf> {
        let q35 = self.targets.iter().any(|t| t.architecture == "x86_64" && t.machines.iter().any(|m| m.starts_with("pc-q35")));
        let wanted = self.interface_types.iter().any(|t| t == "uefi")
            && self.mapping.device == "flash"
            && q35
            && !self.features.iter().any(|f| UNWANTED_FEATURES.contains(&f.as_str()));
        let (code, vars) = (self.mapping.executable.as_ref()?, self.mapping.nvram_template.as_ref()?);
        (wanted && code.format == "raw" && vars.format == "raw").then(|| Ovmf { code: code.filename.clone(), vars_template: vars.filename.clone() })
    }
}

/// The first usable firmware of the descriptors in `dirs`, in QEMU's
/// order (by file name, a later directory overriding an earlier one).
pub fn find_in(dirs: &[&Path]) -> Option<Ovmf> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                by_name.insert(e.file_name(), e.path());
            }
        }
    }
    by_name.values().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        let d: Descriptor = serde_json::from_str(&text).map_err(|e| tracing::debug!(path = %path.display(), error = %e, "firmware descriptor skipped")).ok()?;
        d.usable().filter(|o| o.code.is_file() && o.vars_template.is_file())
    })
}

/// OVMF on this host, or the spec error that says how to install it.
pub fn find() -> Result<Ovmf, SpecError> {
    let dirs: Vec<&Path> = DESCRIPTOR_DIRS.iter().map(Path::new).collect();
    find_in(&dirs).ok_or_else(|| {
        SpecError::new(
            "firmware",
            "no UEFI firmware for QEMU on this host (no usable descriptor in /usr/share/qemu/firmware): apt-get install ovmf, or use firmware = \"bios\"",
        )
    })
}

/// The VM's variable store in `dir`, copied from the template at its first
/// start and reused after. Written to a temporary name first, so a crash
/// mid-copy never leaves a short store that QEMU would refuse. Blocking.
pub fn ensure_vars(ovmf: &Ovmf, dir: &Path) -> Result<EfiFlash, Error> {
    let vars = dir.join(VARS_FILE);
    let template_len = std::fs::metadata(&ovmf.vars_template)
        .map_err(|e| Error::io(format!("cannot read OVMF's variable store template {:?}", ovmf.vars_template), e))?
        .len();
    match std::fs::metadata(&vars) {
        Ok(m) if m.len() == template_len => {}
        Ok(m) => {
            let message = format!(
                "the VM's variable store {vars:?} is {} bytes but OVMF's template {:?} is {template_len}: the ovmf package changed its flash size; delete the store to start with empty UEFI variables",
                m.len(),
                ovmf.vars_template
            );
            return Err(SpecError::new("firmware", message).into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The directory belongs to the VM's uid: a name it planted
            // (a symlink) must not redirect root's write, so the
            // temporary file is made new, never followed.
            let tmp = dir.join(format!("{VARS_FILE}.tmp"));
            let copy = || -> std::io::Result<()> {
                use std::os::unix::fs::OpenOptionsExt as _;
                match std::fs::remove_file(&tmp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
                std::io::copy(&mut std::fs::File::open(&ovmf.vars_template)?, &mut out)?;
                out.sync_all()?;
                std::fs::rename(&tmp, &vars)?;
                std::fs::File::open(dir)?.sync_all()
            };
            copy().map_err(|e| Error::io(format!("cannot make the UEFI variable store {vars:?}"), e))?;
            tracing::info!(store = %vars.display(), "UEFI variable store created");
        }
        Err(e) => return Err(Error::io(format!("cannot read the UEFI variable store {vars:?}"), e)),
    }
    Ok(EfiFlash { code: ovmf.code.clone(), vars })
}

/// QEMU's two flash devices: the shared code read-only, the VM's store
/// read-write. `escape` doubles commas as QEMU's option syntax wants.
pub fn qemu_args(flash: &EfiFlash, escape: impl Fn(&Path) -> String) -> Vec<(&'static str, String)> {
    vec![
        ("-drive", format!("if=pflash,format=raw,unit=0,readonly=on,file={}", escape(&flash.code))),
        ("-drive", format!("if=pflash,format=raw,unit=1,file={}", escape(&flash.vars))),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn descriptor(dir: &Path, file: &str, code: &Path, vars: &Path, features: &str) {
        let text = format!(
            r#"{{"interface-types":["uefi"],"mapping":{{"device":"flash","executable":{{"filename":{code:?},"format":"raw"}},"nvram-template":{{"filename":{vars:?},"format":"raw"}}}},"targets":[{{"architecture":"x86_64","machines":["pc-i440fx-*","pc-q35-*"]}}],"features":[{features}],"tags":[]}}"#
        );
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn picks_the_plain_build_and_a_later_directory_overrides() {
        let (share, etc, fw) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let file = |n: &str| {
            let p = fw.path().join(n);
            std::fs::write(&p, vec![0u8; 64]).unwrap();
            p
        };
        let (code, vars, sb) = (file("CODE.fd"), file("VARS.fd"), file("CODE.secboot.fd"));
        descriptor(share.path(), "40-secure.json", &sb, &vars, r#""secure-boot","requires-smm""#);
        descriptor(share.path(), "60-plain.json", &code, &vars, r#""acpi-s3""#);
        std::fs::write(share.path().join("10-broken.json"), "{not json").unwrap();
        let found = find_in(&[share.path(), etc.path()]).unwrap();
        assert_eq!(found, Ovmf { code: code.clone(), vars_template: vars.clone() });

        // An admin's file of the same name in /etc wins.
        let other = file("OTHER.fd");
        descriptor(etc.path(), "60-plain.json", &other, &vars, "");
        assert_eq!(find_in(&[share.path(), etc.path()]).unwrap().code, other);

        // A descriptor naming files that are not there is skipped.
        std::fs::remove_file(&other).unwrap();
        std::fs::remove_file(&code).unwrap();
        assert_eq!(find_in(&[share.path(), etc.path()]), None);
    }

    #[test]
    fn the_store_is_copied_once_and_kept() {
        let (fw, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ovmf = Ovmf { code: fw.path().join("CODE.fd"), vars_template: fw.path().join("VARS.fd") };
        std::fs::write(&ovmf.vars_template, vec![0u8; 128]).unwrap();
        let flash = ensure_vars(&ovmf, dir.path()).unwrap();
        assert_eq!(flash.vars, dir.path().join(VARS_FILE));
        // The guest wrote a variable: a second start keeps it.
        let mut written = vec![0u8; 128];
        written[7] = 42;
        std::fs::write(&flash.vars, &written).unwrap();
        ensure_vars(&ovmf, dir.path()).unwrap();
        assert_eq!(std::fs::read(&flash.vars).unwrap(), written);
        assert!(!dir.path().join(format!("{VARS_FILE}.tmp")).exists());

        // A temporary name planted as a symlink (the directory is the VM's
        // uid's) is replaced, never written through.
        let victim = fw.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::remove_file(&flash.vars).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(format!("{VARS_FILE}.tmp"))).unwrap();
        ensure_vars(&ovmf, dir.path()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&flash.vars).unwrap(), vec![0u8; 128]);
        std::fs::write(&flash.vars, &written).unwrap();

        // A store of another size than the template is refused, not overwritten.
        std::fs::write(&ovmf.vars_template, vec![0u8; 256]).unwrap();
        let e = ensure_vars(&ovmf, dir.path()).unwrap_err();
        assert!(e.to_string().contains("firmware"), "{e}");
        assert_eq!(std::fs::read(&flash.vars).unwrap(), written);
    }
}
