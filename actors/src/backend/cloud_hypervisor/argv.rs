//! Cloud Hypervisor's command line: only the API socket and the event
//! monitor. Everything about the VM goes through `vm.create` (config.rs),
//! so the process can be started, and adopted, before a VM exists in it.
//!
//! The marker: CH has no `-name`, so the process is started with argv[0]
//! set to `paddock-NAME` (what `ps` shows). Recovery recognises either
//! form (see `recovery::has_marker`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::backend::RunPaths;

/// Where the event monitor writes, next to the other run files.
pub fn events_path(paths: &RunPaths) -> PathBuf {
    paths.dir.join("events.json")
}

/// The value of a `path=` option; CH splits options on ','.
fn path_opt(p: &Path) -> String {
    format!("path={}", p.to_string_lossy())
}

/// The argv after argv[0]. Paths must not contain ',' (checked by
/// `prepare`): CH's option syntax has no escape for it.
pub fn build(paths: &RunPaths) -> Vec<OsString> {
    vec![
        "--api-socket".into(),
        path_opt(&paths.control_socket).into(),
        "--event-monitor".into(),
        path_opt(&events_path(paths)).into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests_support::golden;

    #[test]
    fn argv_golden() {
        let paths = RunPaths::new(Path::new("/run/paddock"), "web");
        golden("ch.argv", &build(&paths).iter().map(|a| format!("{}\n", a.to_string_lossy())).collect::<String>());
    }
}
