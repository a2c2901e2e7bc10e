//! `paddock ssh NAME [-- COMMAND...]`: the system `ssh` (argv, no shell on
//! the host), replacing this process so a terminal session behaves as
//! ssh's own. The system client rather than a Rust one: the user's
//! agent, config and terminal handling work as they always do, and
//! provisioning (`scp`) uses the same.

use std::os::unix::process::CommandExt as _;

use super::CliError;
use crate::api::ssh::SshTarget;
use crate::client::Client;

/// Options for a guest whose host key is new at every creation: not worth
/// a prompt, and never written to the user's known_hosts.
fn common(c: &mut std::process::Command, t: &SshTarget) {
    if let Some(key) = &t.key {
        c.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    c.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]);
}

/// `ssh ... user@host -- command...` (no command: a login shell).
pub fn ssh_command(t: &SshTarget, batch: bool, command: &[String]) -> std::process::Command {
    let mut c = std::process::Command::new("ssh");
    common(&mut c, t);
    if batch {
        c.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]);
    }
    c.args(["-p", &t.port.to_string(), "-l", &t.user]).arg(t.host.to_string());
    if !command.is_empty() {
        c.arg("--").args(command);
    }
    c
}

/// `scp ... SOURCE user@host:DESTINATION`.
pub fn scp_command(t: &SshTarget, source: &std::path::Path, destination: &str) -> std::process::Command {
    let mut c = std::process::Command::new("scp");
    common(&mut c, t);
    c.args(["-q", "-o", "BatchMode=yes", "-P", &t.port.to_string()])
        .arg(source)
        .arg(format!("{}@{}:{destination}", t.user, t.host));
    c
}

pub async fn run(client: &Client, name: &str, command: Vec<String>) -> Result<(), CliError> {
    let t = client.ssh_target(name).await?;
    let e = ssh_command(&t, false, &command).exec();
    Err(CliError::Other(format!("cannot run ssh (apt-get install openssh-client): {e}")))
}
