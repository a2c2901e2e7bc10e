//! Prepares one confined start: the VM's identity, its files given to it,
//! its inputs opened, its TAP's owner, QEMU's syscall filter.

use std::path::Path;

use super::cgroup::{CgroupError, VmCgroup, CGROUP_ROOT};
use super::{files, identity, ConfineError, Confinement, Jail};
use crate::backend::LaunchPlan;
use crate::spec::{BackendKind, VmSpec};

/// QEMU's seccomp filter: no obsolete syscalls, no setuid, no fork/exec,
/// no scheduler or priority changes.
pub const QEMU_SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

pub struct JailInputs<'a> {
    pub store: &'a crate::store::Store,
    /// The materialized spec (its disks are the VM's own files by now).
    pub spec: &'a VmSpec,
    /// The VM's disk directory (`STATE_DIR/vms/<name>`).
    pub disk_dir: &'a Path,
    /// The spec as written (its `boot.image` names the shared base image
    /// the overlay reads through).
    pub original: &'a VmSpec,
    pub images: &'a paddock_images::ImageCache,
    /// The daemon's instance: the cgroup is `paddock/<instance>/<vm>`.
    pub instance: &'a str,
}

/// None when confinement is off. Mutates `plan` (inherited inputs,
/// `-sandbox`).
pub async fn prepare(conf: &Confinement, input: JailInputs<'_>, plan: &mut LaunchPlan) -> Result<Option<Jail>, ConfineError> {
    let Some(mode) = &conf.identity else { return Ok(None) };
    let spec = input.spec;
    let id = identity::for_vm(mode, input.store, &spec.name).await?;
    for dir in [&plan.paths.dir, &input.disk_dir.to_path_buf()] {
        if dir.exists() {
            files::give_tree(dir, &id)?;
        }
    }
    if let Ok(Some(base)) = crate::disks::base_image(input.original, input.images) {
        share_base_image(&base)?;
    }
    let inherited = files::pass_inputs(spec, input.disk_dir, &id, plan)?;
    let cgroup = VmCgroup::on_host(input.instance, &spec.name).ok_or(ConfineError::Cgroup(CgroupError::NoHierarchy { root: CGROUP_ROOT.into() }))?;
    let tcg = plan.accel == crate::spec::Accel::Tcg;
    let cgroup_procs = cgroup.create(&spec.limits, spec.limits.memory_max_bytes(spec.memory_mib, tcg))?;
    if let Some(tap) = plan.network.as_ref().and_then(|n| n.tap.clone()) {
        paddock_net::tap::set_owner(&tap, id.uid, id.gid).map_err(|source| ConfineError::Tap { tap, uid: id.uid, source })?;
    }
    if spec.backend == BackendKind::Qemu {
        plan.args.push("-sandbox".into());
        plan.args.push(QEMU_SANDBOX.into());
    }
    tracing::info!(vm = %spec.name, uid = id.uid, gid = id.gid, groups = ?id.groups, inherited = inherited.len(), cgroup = ?cgroup.dir("memory"), "hypervisor confined");
    Ok(Some(Jail { identity: id, inherited, cgroup_procs }))
}

/// A pulled image is shared by every VM booted from it, read-only: world
/// readable (images are public content), its directories traversable.
fn share_base_image(base: &Path) -> Result<(), ConfineError> {
    use std::os::unix::fs::PermissionsExt as _;
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|source| ConfineError::Chmod { path: p.to_path_buf(), source })
    };
    chmod(base, 0o644)?;
    // <state>/images/sha256/<hex>: both directories above it.
    for dir in base.ancestors().skip(1).take(2) {
        chmod(dir, super::TRAVERSE_MODE)?;
    }
    Ok(())
}
