//! `paddock up|down|reload|provision` on the project file of the current
//! directory (`Paddock.toml`, see `crate::project`). The VMs are created
//! and provisioned concurrently; each line of output names its VM.

use std::time::Duration;

use futures::future::join_all;

use super::CliError;
use crate::client::Client;
use crate::project::{Project, ProjectVm};
use crate::WaitFor;

fn load() -> Result<Project, CliError> {
    let dir = std::env::current_dir().map_err(|e| CliError::Other(format!("no current directory: {e}")))?;
    Project::find(&dir).map_err(|e| CliError::Other(e.to_string()))
}

/// The first error of several, after every one has been printed.
fn first_error(results: Vec<Result<(), CliError>>) -> Result<(), CliError> {
    let failed: Vec<CliError> = results.into_iter().filter_map(Result::err).collect();
    let n = failed.len();
    let mut it = failed.into_iter();
    match it.next() {
        None => Ok(()),
        Some(first) => {
            for e in it {
                eprintln!("error: {e}");
            }
            if n > 1 {
                eprintln!("({n} VMs failed)");
            }
            Err(first)
        }
    }
}

/// Creates (or starts) one VM and provisions it if it was created.
async fn up_one(client: &Client, project: &Project, vm: &ProjectVm, timeout: u64) -> Result<(), CliError> {
    let name = &vm.spec.name;
    let created = match client.get(name).await {
        Ok(info) if info.phase.is_active() => {
            println!("{name} | already running; `paddock provision {name}` reruns its steps");
            false
        }
        Ok(_) => {
            client.start(name, WaitFor::Running, timeout).await?;
            println!("{name} | started; `paddock provision {name}` reruns its steps");
            false
        }
        Err(e) if e.kind() == Some("not_found") => {
            client.up(&vm.spec, WaitFor::Running, timeout).await?;
            println!("{name} | created");
            true
        }
        Err(e) => return Err(e.into()),
    };
    if created {
        super::provision::provision(client, project, vm, Duration::from_secs(timeout)).await?;
    }
    Ok(())
}

pub async fn up(client: &Client, timeout: u64) -> Result<(), CliError> {
    let p = load()?;
    first_error(join_all(p.vms.iter().map(|vm| up_one(client, &p, vm, timeout))).await)
}

pub async fn down(client: &Client, destroy: bool) -> Result<(), CliError> {
    let p = load()?;
    let results = join_all(p.vms.iter().map(|vm| async {
        let name = &vm.spec.name;
        let r = if destroy { client.remove_with(name, true, true).await } else { client.stop(name, 30).await.map(drop) };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == Some("not_found") => {}
            Err(e) => return Err(CliError::from(e)),
        }
        if destroy {
            let _ = std::fs::remove_file(p.provision_log(name));
        }
        println!("{name} | {}", if destroy { "destroyed" } else { "stopped" });
        Ok(())
    }))
    .await;
    if destroy {
        // Only directories the provisioning made, and only when empty.
        let _ = std::fs::remove_dir(p.dir.join(".paddock/provision"));
        let _ = std::fs::remove_dir(p.dir.join(".paddock"));
    }
    first_error(results)
}

/// Recreates every VM from the file (keeping data disks) and provisions it.
pub async fn reload(client: &Client, timeout: u64) -> Result<(), CliError> {
    let p = load()?;
    first_error(
        join_all(p.vms.iter().map(|vm| async {
            match client.remove_with(&vm.spec.name, true, false).await {
                Ok(()) => {}
                Err(e) if e.kind() == Some("not_found") => {}
                Err(e) => return Err(CliError::from(e)),
            }
            up_one(client, &p, vm, timeout).await
        }))
        .await,
    )
}

pub async fn provision(client: &Client, name: Option<String>, timeout: u64) -> Result<(), CliError> {
    let p = load()?;
    let vms: Vec<&ProjectVm> = match &name {
        Some(n) => vec![p.vm(n).map_err(CliError::Other)?],
        None => p.vms.iter().collect(),
    };
    first_error(join_all(vms.into_iter().map(|vm| super::provision::provision(client, &p, vm, Duration::from_secs(timeout)))).await)
}

/// `paddock logs NAME --provision`.
pub fn provision_log(name: &str) -> Result<(), CliError> {
    let p = load()?;
    p.vm(name).map_err(CliError::Other)?;
    let path = p.provision_log(name);
    let text = std::fs::read_to_string(&path).map_err(|e| CliError::Other(format!("{name}: no provisioning log at {path:?} ({e}); `paddock provision {name}` writes one")))?;
    print!("{text}");
    Ok(())
}
