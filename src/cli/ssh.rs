//! `paddock ssh NAME [-- COMMAND...]`: the system `ssh` (argv, no shell on
//! the host), replacing this process so a terminal session behaves as
//! ssh's own. The system client rather than a Rust one: the user's
//! agent, config and terminal handling work as they always do.

use std::os::unix::process::CommandExt as _;

use super::CliError;
use crate::client::Client;

pub async fn run(client: &Client, name: &str, command: Vec<String>) -> Result<(), CliError> {
    let t = client.ssh_target(name).await?;
    let mut c = std::process::Command::new("ssh");
    if let Some(key) = &t.key {
        c.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    // A VM's host key is new at every creation: not worth a prompt, and
    // never written to the user's known_hosts.
    c.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-p", &t.port.to_string(), "-l", &t.user])
        .arg(t.host.to_string());
    if !command.is_empty() {
        c.arg("--").args(command);
    }
    let e = c.exec();
    Err(CliError::Other(format!("cannot run ssh (apt-get install openssh-client): {e}")))
}
