//! A VM's own disks, made at start from its spec: the copy-on-write
//! overlay of a pulled image, the persistent data disk, and the cloud-init
//! seed. They live in `STATE_DIR/vms/<name>/`; the result is the spec the
//! backend sees, with these as plain disks.

use paddock_images::{
    create_overlay, ensure_data_disk, write_seed_image, CloudConfig, DiskFormat, ImageCache, InstanceId, MetaData, RunCmd, Seed,
    SeedFormat, User, UserData, WriteFile,
};
use std::path::{Path, PathBuf};

use crate::error::{Error, SpecError};
use crate::spec::{image_digest, Disk, VmSpec};

pub const OVERLAY: &str = "root.qcow2";
pub const DATA_DISK: &str = "data.qcow2";
/// Random, made once per VM: with the name it gives a stable instance-id
/// for one VM and a new one for a new VM of the same name.
const NONCE: &str = "instance-nonce";

pub fn vm_dir(state_dir: &Path, vm: &str) -> PathBuf {
    state_dir.join("vms").join(vm)
}

fn io(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io { context: what.to_string(), source: std::io::Error::other(e.to_string()) }
}

/// The cached base image of `boot.image`, or a spec error saying how to
/// get it.
pub fn base_image(spec: &VmSpec, images: &ImageCache) -> Result<Option<PathBuf>, Error> {
    let Some(image) = &spec.boot.image else { return Ok(None) };
    let digest = image_digest(image)?;
    match images.get(&digest).map_err(|e| io("image cache", e))? {
        Some(img) => Ok(Some(img.path)),
        None => Err(SpecError::new("boot.image", format!("{image} is not in the image cache; `paddock image pull URL --sha256 {digest}` first")).into()),
    }
}

/// A spec for validation only: `boot.image` stands in as the boot disk.
pub fn for_validation(spec: &VmSpec, images: &ImageCache) -> Result<VmSpec, Error> {
    let mut s = spec.clone();
    if let Some(base) = base_image(spec, images)? {
        s.boot.disk = Some(base);
        s.boot.image = None;
        s.boot.overlay_gib = None;
    }
    Ok(s)
}

/// Makes (or finds) the VM's disks and returns the spec with them as
/// plain disks. Blocking file work: call from `spawn_blocking`.
pub fn materialize(spec: &VmSpec, dir: &Path, images: &ImageCache, network: Option<paddock_images::NetworkConfig>) -> Result<VmSpec, Error> {
    let mut out = spec.clone();
    let needs_dir = spec.boot.image.is_some() || spec.data_disk.is_some() || spec.cloud_init.is_some();
    if !needs_dir {
        return Ok(out);
    }
    crate::private_dir::ensure_private_dir(dir).map_err(|e| Error::io(format!("cannot create {dir:?}"), e))?;
    if let Some(base) = base_image(spec, images)? {
        let overlay = dir.join(OVERLAY);
        // The overlay is the VM's root disk: made once, kept across runs.
        if !overlay.exists() {
            create_overlay(&base, &overlay, spec.boot.overlay_gib.map(|g| g << 30)).map_err(|e| io("boot.image overlay", e))?;
        }
        out.boot.disk = Some(overlay);
        out.boot.image = None;
        out.boot.overlay_gib = None;
    }
    if let Some(d) = &spec.data_disk {
        let path = dir.join(DATA_DISK);
        ensure_data_disk(&path, d.size_gib << 30).map_err(|e| io("data_disk", e))?;
        out.disks.push(Disk { path, format: Some(DiskFormat::Qcow2), readonly: false });
    }
    if let Some(ci) = &spec.cloud_init {
        let nonce_path = dir.join(NONCE);
        let nonce = match std::fs::read_to_string(&nonce_path) {
            Ok(n) => n,
            Err(_) => {
                let n = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
                std::fs::write(&nonce_path, &n).map_err(|e| Error::io(format!("cannot write {nonce_path:?}"), e))?;
                n
            }
        };
        let user_data = match &ci.user_data {
            Some(raw) => UserData::Raw(raw.clone()),
            None => UserData::CloudConfig(CloudConfig {
                hostname: Some(ci.hostname.clone().unwrap_or_else(|| spec.name.clone())),
                users: ci.users.iter().map(|u| User { name: u.name.clone(), ssh_authorized_keys: u.ssh_authorized_keys.clone(), ..Default::default() }).collect(),
                write_files: ci.write_files.iter().map(|f| WriteFile { path: f.path.clone(), content: f.content.clone(), ..Default::default() }).collect(),
                runcmd: ci.runcmd.iter().map(|c| RunCmd::Shell(c.clone())).collect(),
            }),
        };
        let seed = Seed {
            meta_data: MetaData {
                instance_id: InstanceId::derive(&spec.name, nonce.trim()),
                local_hostname: ci.hostname.clone().unwrap_or_else(|| spec.name.clone()),
            },
            user_data,
            network_config: network,
        };
        let files = seed.render().map_err(|e| io("cloud_init", e))?;
        let name = match ci.format {
            SeedFormat::Iso => "seed.iso",
            SeedFormat::Vfat => "seed.img",
        };
        let path = dir.join(name);
        // Rewritten each start: the spec (and the lease) may have changed.
        let _ = std::fs::remove_file(&path);
        write_seed_image(&files, ci.format, &path).map_err(|e| io("cloud_init seed", e))?;
        out.disks.push(Disk { path, format: Some(DiskFormat::Raw), readonly: true });
    }
    Ok(out)
}

/// Deletes the VM's disks; the data disk only with `volumes`.
pub fn remove(dir: &Path, volumes: bool) -> Result<(), Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot read {dir:?}"), e)),
    };
    let mut kept = false;
    for e in entries.flatten() {
        if !volumes && e.file_name() == DATA_DISK {
            kept = true;
            continue;
        }
        std::fs::remove_file(e.path()).map_err(|err| Error::io(format!("cannot remove {:?}", e.path()), err))?;
    }
    if !kept {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}
