//! The Blueprint example's in-guest service (examples/guest-service),
//! built static by the project's script and cached.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub fn guest_service() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("scripts/build-guest-service.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-guest-service.sh");
        assert!(out.status.success(), "building the guest service failed");
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(bin.is_file(), "no guest service at {bin:?}");
        bin
    })
}
