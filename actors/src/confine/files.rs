//! The files a confined hypervisor uses. Its own directories (run dir and
//! disk dir) become its uid's, mode 0700, so no other VM reaches them.
//! Inputs elsewhere (kernel, initrd, firmware, the spec's disks) are
//! opened by the daemon and inherited: the hypervisor names them
//! `/proc/self/fd/N`, which needs no path through directories it may not
//! enter (a kernel under /root). Disks are also given to its uid so that
//! it may open them read-write; kernels and firmware stay shared and must
//! be world-readable.

use std::ffi::OsString;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use super::{ConfineError, Identity};
use crate::backend::LaunchPlan;
use crate::spec::VmSpec;

/// Gives `root` and everything below it (symlinks not followed) to the
/// VM's uid and gid.
pub fn give_tree(root: &Path, id: &Identity) -> Result<(), ConfineError> {
    give(root, id)?;
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(()) };
    for e in entries.flatten() {
        let ft = e.file_type().map_err(|source| ConfineError::Chown { path: e.path(), uid: id.uid, source })?;
        if ft.is_dir() {
            give_tree(&e.path(), id)?;
        } else {
            give(&e.path(), id)?;
        }
    }
    Ok(())
}

fn give(path: &Path, id: &Identity) -> Result<(), ConfineError> {
    std::os::unix::fs::lchown(path, Some(id.uid), Some(id.gid)).map_err(|source| ConfineError::Chown { path: path.to_path_buf(), uid: id.uid, source })
}

/// The program of a confined child, opened by the daemon: it may live
/// where the VM's identity cannot pass (~/.cargo/bin under /root); the
/// child executes `/proc/self/fd/N`. A bare name is looked up on PATH.
pub fn open_program(program: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let path = if program.components().count() > 1 {
        program.to_path_buf()
    } else {
        let search = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&search)
            .map(|d| d.join(program))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?
    };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(&path)?;
    if file.metadata()?.mode() & 0o001 == 0 {
        return Err(std::io::Error::other(format!("{path:?} is not executable by other users; the unprivileged hypervisor runs it: chmod o+rx it")));
    }
    Ok(file.into())
}

/// One input: which spec field, where, and whether the VM writes it.
struct Input {
    field: String,
    path: PathBuf,
    disk: bool,
    readonly: bool,
}

fn inputs(spec: &VmSpec) -> Vec<Input> {
    let mut v = Vec::new();
    let mut shared = |field: &str, p: &Option<PathBuf>| {
        if let Some(path) = p {
            v.push(Input { field: field.into(), path: path.clone(), disk: false, readonly: true });
        }
    };
    shared("boot.kernel", &spec.boot.kernel);
    shared("boot.initrd", &spec.boot.initrd);
    shared("boot.firmware", &spec.boot.firmware);
    if let Some(flash) = spec.boot.efi.as_ref().filter(|_| spec.firmware == crate::spec::Firmware::Uefi) {
        shared("firmware", &Some(flash.code.clone()));
        v.push(Input { field: "firmware".into(), path: flash.vars.clone(), disk: true, readonly: false });
    }
    if let Some(path) = &spec.boot.disk {
        v.push(Input { field: "boot.disk".into(), path: path.clone(), disk: true, readonly: false });
    }
    for (i, d) in spec.disks.iter().enumerate() {
        v.push(Input { field: format!("disks[{i}].path"), path: d.path.clone(), disk: true, readonly: d.readonly });
    }
    v
}

/// Opens every input of `spec` outside `own_dir` (the VM's disk
/// directory, reached by path) and points `plan` at the inherited
/// descriptors. Returns the descriptors the child must keep.
pub fn pass_inputs(spec: &VmSpec, own_dir: &Path, id: &Identity, plan: &mut LaunchPlan) -> Result<Vec<OwnedFd>, ConfineError> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let mut fds = Vec::new();
    let mut renames: Vec<(PathBuf, String)> = Vec::new();
    for input in inputs(spec) {
        if input.path.starts_with(own_dir) || renames.iter().any(|(p, _)| *p == input.path) {
            continue;
        }
        let open_err = |source| ConfineError::Open { field: input.field.clone(), path: input.path.clone(), source };
        let meta = std::fs::metadata(&input.path).map_err(open_err)?;
        if input.disk {
            give(&input.path, id)?;
        } else if meta.mode() & 0o004 == 0 {
            return Err(ConfineError::NotReadable { field: input.field, path: input.path, mode: meta.mode() & 0o7777 });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(input.disk && !input.readonly)
            .custom_flags(libc::O_CLOEXEC)
            .open(&input.path)
            .map_err(open_err)?;
        let fd: OwnedFd = file.into();
        renames.push((input.path.clone(), format!("/proc/self/fd/{}", fd.as_raw_fd())));
        fds.push(fd);
    }
    for arg in plan.args.iter_mut() {
        *arg = rename_in_arg(arg, &renames);
    }
    if let Some(payload) = plan.boot_payload.as_mut() {
        rename_in_json(payload, &renames);
    }
    Ok(fds)
}

/// An argument that is the path, or a QEMU option list with `key=path`
/// (commas in a path are doubled there).
fn rename_in_arg(arg: &OsString, renames: &[(PathBuf, String)]) -> OsString {
    let Some(s) = arg.to_str() else { return arg.clone() };
    for (path, fd) in renames {
        let Some(p) = path.to_str() else { continue };
        if s == p {
            return fd.into();
        }
    }
    let mut out = s.to_string();
    for (path, fd) in renames {
        let Some(p) = path.to_str() else { continue };
        let escaped = format!("={}", p.replace(',', ",,"));
        let mut rebuilt = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&escaped) {
            let after = &rest[at + escaped.len()..];
            // Whole values only: the next byte ends the option (a single
            // ',' or the end), never a longer path.
            let whole = after.is_empty() || (after.starts_with(',') && !after.starts_with(",,"));
            rebuilt.push_str(&rest[..at]);
            if whole {
                rebuilt.push('=');
                rebuilt.push_str(fd);
            } else {
                rebuilt.push_str(&escaped);
            }
            rest = after;
        }
        rebuilt.push_str(rest);
        out = rebuilt;
    }
    out.into()
}

fn rename_in_json(v: &mut serde_json::Value, renames: &[(PathBuf, String)]) {
    match v {
        serde_json::Value::String(s) => {
            if let Some((_, fd)) = renames.iter().find(|(p, _)| p.to_str() == Some(s.as_str())) {
                *s = fd.clone();
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| rename_in_json(x, renames)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| rename_in_json(x, renames)),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn whole_paths_are_renamed_in_plain_and_option_arguments() {
        let r = vec![(PathBuf::from("/g/vmlinuz"), "/proc/self/fd/7".to_string()), (PathBuf::from("/d/a,b.img"), "/proc/self/fd/8".to_string())];
        let f = |s: &str| rename_in_arg(&OsString::from(s), &r).into_string().unwrap();
        assert_eq!(f("/g/vmlinuz"), "/proc/self/fd/7");
        assert_eq!(f("file=/d/a,,b.img,if=none,id=disk0"), "file=/proc/self/fd/8,if=none,id=disk0");
        assert_eq!(f("file=/g/vmlinuz"), "file=/proc/self/fd/7");
        assert_eq!(f("file=/g/vmlinuz2,if=none"), "file=/g/vmlinuz2,if=none", "a longer path is another file");
        assert_eq!(f("file=/g/vmlinuz,,x"), "file=/g/vmlinuz,,x", "an escaped comma continues the path");
        assert_eq!(f("-kernel"), "-kernel");
    }

    #[test]
    fn json_strings_equal_to_a_path_are_renamed() {
        let r = vec![(PathBuf::from("/g/vmlinuz"), "/proc/self/fd/7".to_string())];
        let mut v = serde_json::json!({"payload": {"kernel": "/g/vmlinuz", "cmdline": "/g/vmlinuz x"}});
        rename_in_json(&mut v, &r);
        assert_eq!(v["payload"]["kernel"], "/proc/self/fd/7");
        assert_eq!(v["payload"]["cmdline"], "/g/vmlinuz x");
    }

    #[test]
    fn unreadable_kernels_are_refused_naming_the_field() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        std::fs::write(&k, b"k").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let spec: VmSpec = serde_json::from_value(serde_json::json!({"name": "a", "boot": {"kernel": k}})).unwrap();
        let id = Identity { uid: 4242, gid: 4242, groups: vec![] };
        let mut plan = crate::backend::adoption_plan(&spec, &crate::backend::RunPaths::new(dir.path(), "a"), None);
        let e = pass_inputs(&spec, &dir.path().join("own"), &id, &mut plan).unwrap_err().to_string();
        assert!(e.contains("boot.kernel") && e.contains("chmod o+r"), "{e}");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        plan.args = vec!["-kernel".into(), k.clone().into()];
        let fds = pass_inputs(&spec, &dir.path().join("own"), &id, &mut plan).unwrap();
        assert_eq!(plan.args[1], OsString::from(format!("/proc/self/fd/{}", fds[0].as_raw_fd())));
    }
}
