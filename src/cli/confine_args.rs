//! `paddock serve` flags of hypervisor confinement.

use paddock_actors::confine::{identity, Confinement, IdentityMode};

#[derive(clap::Args, Debug)]
pub struct ConfineArgs {
    /// Run hypervisors as root, unconfined (no own uid, capabilities kept,
    /// no syscall filter, no cgroup). For debugging only; logged at start.
    #[arg(long, env = "PADDOCK_NO_CONFINE")]
    no_confine: bool,
    /// First uid (and gid) of the per-VM identities.
    #[arg(long, default_value_t = identity::DEFAULT_UID_BASE)]
    vm_uid_base: u32,
    /// How many per-VM identities (at most that many VMs).
    #[arg(long, default_value_t = identity::DEFAULT_UID_COUNT)]
    vm_uid_count: u32,
    /// One shared identity `UID:GID` for every VM instead of one per VM.
    #[arg(long, conflicts_with_all = ["vm_uid_base", "vm_uid_count"])]
    vm_user: Option<String>,
}

impl ConfineArgs {
    pub fn confinement(&self) -> Result<Confinement, String> {
        if self.no_confine {
            return Ok(Confinement::off());
        }
        let mode = match &self.vm_user {
            Some(s) => {
                let parse = |v: &str| v.parse::<u32>().ok();
                match s.split_once(':').and_then(|(u, g)| Some((parse(u)?, parse(g)?))) {
                    Some((uid, gid)) => IdentityMode::Shared { uid, gid },
                    None => return Err(format!("--vm-user {s:?}: expected numeric UID:GID, e.g. --vm-user 990:990")),
                }
            }
            None => IdentityMode::PerVm { base: self.vm_uid_base, count: self.vm_uid_count },
        };
        identity::validate(&mode)?;
        Ok(Confinement { identity: Some(mode) })
    }
}
