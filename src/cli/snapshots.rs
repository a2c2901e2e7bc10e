//! `paddock snapshot NAME [--as SNAP] [--stop]`, `paddock snapshot ls|rm`,
//! `paddock restore SNAP [--name NEW]`.

use clap::{Args, Subcommand};

use super::{print_one, CliError, Wait};
use crate::client::Client;
use crate::AfterSnapshot;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: Option<SnapshotCommand>,
    /// The VM to snapshot (it is paused while its state is saved).
    name: Option<String>,
    /// The snapshot's name; `<name>-<unix seconds>` by default.
    #[arg(long = "as")]
    as_: Option<String>,
    /// Stop the VM once the snapshot is written, instead of resuming it.
    #[arg(long)]
    stop: bool,
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// List snapshots.
    Ls,
    /// Delete a snapshot (refused while a VM starts from it).
    Rm { snapshot: String },
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    snapshot: String,
    /// The new VM's name; the snapshotted VM's by default.
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_enum, default_value = "running")]
    wait: Wait,
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

pub async fn snapshot(client: &Client, json: bool, args: SnapshotArgs) -> Result<(), CliError> {
    match (args.command, args.name) {
        (Some(SnapshotCommand::Ls), _) => {
            let snaps = client.snapshots().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snaps).unwrap_or_default());
            } else {
                println!("{:<24}  {:<24}  {:>12}  CREATED (unix ms)", "SNAPSHOT", "VM", "SIZE");
                for s in snaps {
                    println!("{:<24}  {:<24}  {:>12}  {}", s.name, s.vm, s.bytes, s.created_ms);
                }
            }
            Ok(())
        }
        (Some(SnapshotCommand::Rm { snapshot }), _) => {
            client.snapshot_remove(&snapshot).await?;
            if !json {
                println!("{snapshot}: removed");
            }
            Ok(())
        }
        (None, Some(name)) => {
            let then = if args.stop { AfterSnapshot::Stop } else { AfterSnapshot::Resume };
            let info = client.snapshot(&name, args.as_.as_deref(), then).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info).unwrap_or_default());
            } else {
                println!("{name}: snapshot {} written ({} bytes)", info.name, info.bytes);
            }
            Ok(())
        }
        (None, None) => Err(CliError::Other("name the VM to snapshot (`paddock snapshot NAME`), or use `snapshot ls` / `snapshot rm`".into())),
    }
}

pub async fn restore(client: &Client, json: bool, args: RestoreArgs) -> Result<(), CliError> {
    let info = client.restore(&args.snapshot, args.name.as_deref(), args.wait.into(), args.timeout).await?;
    print_one(json, &info);
    Ok(())
}
