//! The layout of one VM's run directory, recorded with each run.

use std::path::{Path, PathBuf};

/// Where one VM's runtime files live: `<run-dir>/<name>/...`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunPaths {
    pub dir: PathBuf,
    pub control_socket: PathBuf,
    pub serial_socket: PathBuf,
    /// Written by the hypervisor itself, so it has no gap while the
    /// supervisor is down; the Console actor tails it.
    pub console_log: PathBuf,
    /// The hypervisor's stdout and stderr; quoted in start errors.
    pub stderr_log: PathBuf,
}

impl RunPaths {
    pub fn new(run_dir: &Path, name: &str) -> Self {
        let dir = run_dir.join(name);
        RunPaths {
            control_socket: dir.join("control.sock"),
            serial_socket: dir.join("serial.sock"),
            console_log: dir.join("console.log"),
            stderr_log: dir.join("hypervisor.log"),
            dir,
        }
    }
}
