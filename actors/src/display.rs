//! The optional VNC display (`display = "vnc"`, QEMU only): a VGA device
//! and QEMU's VNC server on a Unix socket in the VM's run directory
//! (`RUN_DIR/NAME/vnc.sock`, 0600 like the directory), never on a TCP port
//! another user of the host could reach. Pure: paths and argv only.

use std::path::PathBuf;

use crate::backend::RunPaths;
use crate::spec::{Display, VmSpec};

/// Where the VNC server listens.
pub fn vnc_socket(paths: &RunPaths) -> PathBuf {
    paths.dir.join("vnc.sock")
}

/// The display's line in `addresses` (shown by `ps` and `inspect`).
pub fn address(spec: &VmSpec, paths: &RunPaths) -> Option<String> {
    spec.display.map(|Display::Vnc| format!("vnc unix:{}", vnc_socket(paths).display()))
}

/// QEMU's arguments for the display: `-nodefaults` leaves the guest
/// without a graphics card, so one is added with the server.
pub fn qemu_args(display: Option<Display>, paths: &RunPaths) -> Vec<(&'static str, String)> {
    match display {
        None => Vec::new(),
        Some(Display::Vnc) => vec![
            ("-device", "VGA".to_string()),
            ("-vnc", format!("unix:{}", vnc_socket(paths).to_string_lossy().replace(',', ",,"))),
        ],
    }
}
