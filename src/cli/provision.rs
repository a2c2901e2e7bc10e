//! Provisioning a project's VM: once its SSH server answers, each step in
//! order (inline shell commands and scripts through `ssh`, files through
//! `scp`; argv vectors), output streamed with the VM's name as prefix and
//! recorded in the project's `.paddock/provision/NAME.log`. A failed step
//! stops the rest and says which.

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

use super::ssh::{scp_command, ssh_command};
use super::CliError;
use crate::api::ssh::SshTarget;
use crate::client::Client;
use crate::project::{Project, ProjectVm, ShellStep, Step};

/// The VM's SSH target once `ssh true` succeeds, within `timeout`.
async fn wait_for_ssh(client: &Client, name: &str, timeout: Duration) -> Result<SshTarget, CliError> {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let t = client.ssh_target(name).await?;
        let mut c = tokio::process::Command::from(ssh_command(&t, true, &["true".to_string()]));
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
        if c.status().await.is_ok_and(|s| s.success()) {
            return Ok(t);
        }
        if Instant::now() >= deadline {
            return Err(CliError::Other(format!("{name}: SSH did not answer within {}s", timeout.as_secs())));
        }
    }
}

/// Forwards each line of `r` to `tx`.
fn lines<R: AsyncRead + Unpin + Send + 'static>(r: R, tx: tokio::sync::mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut l = BufReader::new(r).lines();
        while let Ok(Some(line)) = l.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// Runs every step of `vm`; the first failure ends the run.
pub async fn provision(client: &Client, project: &Project, vm: &ProjectVm, timeout: Duration) -> Result<(), CliError> {
    let name = &vm.spec.name;
    if vm.provision.is_empty() {
        return Ok(());
    }
    let log_path = project.provision_log(name);
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Other(format!("cannot create {dir:?}: {e}")))?;
    }
    let mut log = std::fs::File::create(&log_path).map_err(|e| CliError::Other(format!("cannot write {log_path:?}: {e}")))?;
    let mut say = |line: &str| {
        println!("{name} | {line}");
        let _ = writeln!(log, "{line}");
    };
    say("waiting for SSH");
    let t = wait_for_ssh(client, name, timeout).await?;
    let total = vm.provision.len();
    for (i, step) in vm.provision.iter().enumerate() {
        let what = step.describe();
        say(&format!("==> step {}/{total}: {what}", i + 1));
        let (mut cmd, stdin_file) = match step {
            Step::Shell(ShellStep { inline: Some(c), .. }) => (ssh_command(&t, true, std::slice::from_ref(c)), None),
            Step::Shell(ShellStep { script: Some(s), .. }) => (ssh_command(&t, true, &["sh".into(), "-s".into()]), Some(s.clone())),
            Step::Shell(_) => return Err(CliError::Other(format!("{name}: step {}: give exactly one of inline or script", i + 1))),
            Step::File(f) => (scp_command(&t, &f.source, &f.destination), None),
        };
        let stdin = match &stdin_file {
            Some(p) => Stdio::from(std::fs::File::open(p).map_err(|e| CliError::Other(format!("{name}: step {} ({what}): cannot read {p:?}: {e}", i + 1)))?),
            None => Stdio::null(),
        };
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CliError::Other(format!("{name}: step {} ({what}): cannot run ssh/scp: {e}", i + 1)))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        if let Some(o) = child.stdout.take() {
            lines(o, tx.clone());
        }
        if let Some(e) = child.stderr.take() {
            lines(e, tx.clone());
        }
        drop(tx);
        while let Some(line) = rx.recv().await {
            say(&line);
        }
        let status = child.wait().await.map_err(|e| CliError::Other(format!("{name}: step {}: {e}", i + 1)))?;
        if !status.success() {
            let msg = format!("step {}/{total} ({what}) failed with {status}; the remaining steps were not run", i + 1);
            say(&msg);
            return Err(CliError::Other(format!("{name}: {msg}")));
        }
    }
    say(&format!("provisioned ({total} steps)"));
    Ok(())
}
