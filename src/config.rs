//! Spec files: TOML on disk, resolved to the JSON model the API takes.

use std::path::{Path, PathBuf};

use paddock_actors::VmSpec;

#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    #[error("cannot read spec file {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spec file {path:?}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Parses a TOML spec; relative file paths are taken relative to the spec
/// file's directory, so a spec and its images can move together.
pub fn load_spec_file(path: &Path) -> Result<VmSpec, SpecFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecFileError::Read { path: path.to_path_buf(), source })?;
    let mut spec: VmSpec = toml::from_str(&text)
        .map_err(|e| SpecFileError::Parse { path: path.to_path_buf(), message: e.to_string().trim().to_string() })?;
    resolve_paths(&mut spec, &base_dir(path));
    Ok(spec)
}

/// The directory relative paths of the file at `path` are taken from.
pub fn base_dir(path: &Path) -> PathBuf {
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::canonicalize(&base).unwrap_or(base)
}

/// Makes the spec's relative host paths relative to `base`.
pub fn resolve_paths(spec: &mut VmSpec, base: &Path) {
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    for p in [&mut spec.boot.kernel, &mut spec.boot.initrd, &mut spec.boot.disk, &mut spec.boot.firmware].into_iter().flatten() {
        resolve(p);
    }
    // A local image (not `sha256:`) is a path like the others.
    if let Some(image) = spec.boot.image.as_mut().filter(|i| !i.starts_with("sha256:")) {
        let mut p = PathBuf::from(&*image);
        resolve(&mut p);
        *image = p.to_string_lossy().into_owned();
    }
    for d in &mut spec.disks {
        resolve(&mut d.path);
    }
    if let Some(sd) = &mut spec.service_disk {
        sd.files.iter_mut().filter_map(|f| f.source.as_mut()).for_each(resolve);
        sd.trees.iter_mut().for_each(|t| resolve(&mut t.source));
    }
    if let Some(k) = spec.ssh.as_mut().and_then(|s| s.key.as_mut()) {
        resolve(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("vm.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn toml_spec_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"
name = "demo"
memory_mib = 256
ready_pattern = "READY"
[boot]
kernel = "guest/vmlinuz"
cmdline = "console=ttyS0"
[network]
mode = "user"
forwards = [{ host = 8022, guest = 22 }]
[restart]
policy = "on-failure"
"#,
        );
        let s = load_spec_file(&p).unwrap();
        s.validate().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(s.boot.kernel.unwrap(), root.join("guest/vmlinuz"));
        assert_eq!(s.network.forwards[0].guest, 22);
        assert_eq!(s.restart.policy, paddock_actors::spec::RestartPolicy::OnFailure);
    }

    #[test]
    fn unknown_toml_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "name = \"a\"\ncolour = \"red\"\n[boot]\nkernel = \"/k\"\n");
        let e = load_spec_file(&p).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }
}
