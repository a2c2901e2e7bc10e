//! The per-VM SSH key (`ssh = { user = "ops", generate_key = true }`): an
//! ed25519 pair made once by `ssh-keygen` (argv, no shell) in the VM's
//! private state directory (`STATE_DIR/vms/NAME/ssh_ed25519`, 0600), its
//! public half given to cloud-init for the spec's user, both deleted with
//! the VM (they live in the VM's directory).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Error;

pub const PRIVATE_KEY: &str = "ssh_ed25519";

/// The private key of the VM whose state directory is `dir`.
pub fn private_key(dir: &Path) -> PathBuf {
    dir.join(PRIVATE_KEY)
}

/// Makes the key pair unless it exists; returns the public key line.
/// Blocking (runs `ssh-keygen`).
pub fn ensure(dir: &Path, vm: &str) -> Result<String, Error> {
    let key = private_key(dir);
    let public = key.with_extension("pub");
    if !key.exists() || !public.exists() {
        for p in [&key, &public] {
            let _ = std::fs::remove_file(p);
        }
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("paddock-{vm}"))
            .arg("-f")
            .arg(&key)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Error::io("cannot run ssh-keygen (apt-get install openssh-client)", e))?;
        if !out.status.success() {
            return Err(Error::io(
                format!("ssh-keygen failed for {vm}: {}", String::from_utf8_lossy(&out.stderr).trim()),
                std::io::Error::other("ssh-keygen"),
            ));
        }
        tracing::info!(vm, key = %key.display(), "ssh key generated");
    }
    let line = std::fs::read_to_string(&public).map_err(|e| Error::io(format!("cannot read {public:?}"), e))?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), "web").unwrap();
        assert!(first.starts_with("ssh-ed25519 ") && first.ends_with(" paddock-web"), "{first}");
        let mode = std::fs::metadata(private_key(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ensure(dir.path(), "web").unwrap(), first, "a second start keeps the key");
    }
}
