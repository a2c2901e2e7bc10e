//! A VM's own disks, made at start from its spec: the copy-on-write
//! overlay of a pulled image, the persistent data disk, and the cloud-init
//! seed. They live in `STATE_DIR/vms/<name>/`; the result is the spec the
//! backend sees, with these as plain disks.

use paddock_images::{
    create_overlay, ensure_data_disk, write_seed_image, CloudConfig, DiskFormat, FsSetup, ImageCache, InstanceId, MetaData, RunCmd,
    Seed, SeedFormat, User, UserData, WriteFile,
};
use std::path::{Path, PathBuf};

use crate::error::{Error, SpecError};
use crate::spec::{image_digest, Disk, VmSpec};

pub const OVERLAY: &str = "root.qcow2";
pub const DATA_DISK: &str = "data.qcow2";
/// Virtio serials of the disks Paddock makes: the guest sees them as
/// /dev/disk/by-id/virtio-<serial>, whatever /dev/vdX they get.
pub const ROOT_SERIAL: &str = "root";
pub const DATA_SERIAL: &str = "data";
pub const SEED_SERIAL: &str = "cidata";
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
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {dir:?}"), e))?;
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
        out.disks.push(Disk { path, format: Some(DiskFormat::Qcow2), readonly: false, serial: Some(DATA_SERIAL.into()) });
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
        let generated = cloud_config(spec);
        let user_data = match &ci.user_data {
            // Only the user's own: passed through untouched.
            Some(raw) if generated == bare_cloud_config(spec) => UserData::Raw(raw.clone()),
            Some(raw) => UserData::Combined { generated, user: raw.clone() },
            None => UserData::CloudConfig(generated),
        };
        let seed = Seed {
            meta_data: MetaData {
                instance_id: InstanceId::derive(&spec.name, nonce.trim()),
                local_hostname: hostname(spec),
            },
            user_data,
            network_config: network,
        };
        let files = seed.render().map_err(|e| match e {
            paddock_images::SeedError::Multipart(m) => SpecError::new("cloud_init.user_data", m.to_string()).into(),
            e => io("cloud_init", e),
        })?;
        let name = match ci.format {
            SeedFormat::Iso => "seed.iso",
            SeedFormat::Vfat => "seed.img",
        };
        let path = dir.join(name);
        // Rewritten each start: the spec (and the lease) may have changed.
        let _ = std::fs::remove_file(&path);
        write_seed_image(&files, ci.format, &path).map_err(|e| io("cloud_init seed", e))?;
        out.disks.push(Disk { path, format: Some(DiskFormat::Raw), readonly: true, serial: Some(SEED_SERIAL.into()) });
    }
    Ok(out)
}

/// What a spec's cloud-init would generate with no typed field set: then
/// a raw user_data needs no multipart around it.
fn bare_cloud_config(spec: &VmSpec) -> CloudConfig {
    CloudConfig { hostname: Some(hostname(spec)), ..Default::default() }
}

fn hostname(spec: &VmSpec) -> String {
    spec.cloud_init.as_ref().and_then(|c| c.hostname.clone()).unwrap_or_else(|| spec.name.clone())
}

/// The cloud-config generated from the spec's typed fields (and its data
/// disk's `mount`).
pub fn cloud_config(spec: &VmSpec) -> CloudConfig {
    let mut c = bare_cloud_config(spec);
    if let Some(ci) = &spec.cloud_init {
        c.users = ci
            .users
            .iter()
            .map(|u| User {
                name: u.name.clone(),
                ssh_authorized_keys: u.ssh_authorized_keys.clone(),
                sudo: u.sudo.clone(),
                shell: u.shell.clone(),
                groups: u.groups.clone(),
                lock_passwd: u.lock_passwd,
            })
            .collect();
        c.write_files = ci.write_files.iter().map(|f| WriteFile { path: f.path.clone(), content: f.content.clone(), ..Default::default() }).collect();
        c.bootcmd = ci.bootcmd.iter().map(|b| RunCmd::Shell(b.clone())).collect();
        c.runcmd = ci.runcmd.iter().map(|r| RunCmd::Shell(r.clone())).collect();
    }
    if let Some((mount, fs)) = spec.data_disk.as_ref().and_then(|d| d.mount.as_ref().map(|m| (m, d.filesystem.unwrap_or_default()))) {
        let device = format!("/dev/disk/by-id/virtio-{DATA_SERIAL}");
        // partition "auto" on the whole disk: cloud-init 22.4 formats it only
        // if it has no filesystem at all, and reuses one with this type and
        // label (a new instance on a kept disk after `rm` + `up`). "none"
        // would run mkfs -F on every new instance.
        c.fs_setup.push(FsSetup { label: DATA_SERIAL.into(), filesystem: fs.as_str().into(), device: device.clone(), partition: "auto".into(), overwrite: false });
        // nofail: a missing disk must not hold the boot in emergency mode.
        c.mounts.push(vec![device, mount.clone(), fs.as_str().into(), "defaults,nofail".into(), "0".into(), "2".into()]);
    }
    c
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
