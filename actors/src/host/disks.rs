//! A VM's own disks, made at start from its spec: the copy-on-write
//! overlay of a pulled image, the persistent data disk, the cloud-init
//! seed and the FAT service disk. They live in `STATE_DIR/vms/<name>/`; the result is the spec the
//! backend sees, with these as plain disks.

use paddock_images::{
    create_overlay, ensure_data_disk, write_seed_image, CloudConfig, DiskFormat, FsSetup, ImageCache, InstanceId, MetaData, RunCmd,
    Seed, SeedFormat, User, UserData, WriteFile,
};
use std::path::{Path, PathBuf};

use crate::error::{Error, SpecError};
use crate::host::DiskError;
use crate::spec::{image_digest, Disk, VmSpec};

pub const OVERLAY: &str = "root.qcow2";
pub const DATA_DISK: &str = "data.qcow2";
pub const SERVICE_DISK: &str = "service.img";
/// Present while the data disk was made by a start that has not booted
/// yet: a failed `up` (or its rollback after a crash) deletes such a disk
/// with everything else, while a disk a guest has used is kept.
pub const DATA_DISK_UNUSED: &str = "data.qcow2.unused";
/// Virtio serials of the disks Paddock makes: the guest sees them as
/// /dev/disk/by-id/virtio-<serial>, whatever /dev/vdX they get.
pub const ROOT_SERIAL: &str = "root";
pub const DATA_SERIAL: &str = "data";
pub const SEED_SERIAL: &str = "cidata";
pub const SERVICE_SERIAL: &str = "service";
/// Random, made once per VM: with the name it gives a stable instance-id
/// for one VM and a new one for a new VM of the same name.
const NONCE: &str = "instance-nonce";

pub fn vm_dir(state_dir: &Path, vm: &str) -> PathBuf {
    state_dir.join("vms").join(vm)
}

/// The cached base image of `boot.image`, or a spec error saying how to
/// get it.
pub fn base_image(spec: &VmSpec, images: &ImageCache) -> Result<Option<PathBuf>, Error> {
    let Some(image) = &spec.boot.image else { return Ok(None) };
    let digest = image_digest(image)?;
    match images.get(&digest).map_err(DiskError::Cache)? {
        Some(img) => Ok(Some(img.path)),
        None => Err(SpecError::new("boot.image", format!("{image} is not in the image cache; `paddock image pull URL --sha256 {digest}` first")).into()),
    }
}

/// A spec for validation only: `boot.image` stands in as the boot disk.
/// The service disk's host files and trees are checked here, so a typo
/// is refused before anything of the VM exists.
pub fn for_validation(spec: &VmSpec, images: &ImageCache) -> Result<VmSpec, Error> {
    if let Some(sd) = &spec.service_disk {
        for (i, src) in sd.files.iter().enumerate().filter_map(|(i, f)| f.source.as_ref().map(|s| (i, s))) {
            paddock_images::check_file(&format!("service_disk.files[{i}].source"), src)?;
        }
        for (i, t) in sd.trees.iter().enumerate() {
            if !t.source.is_dir() {
                return Err(SpecError::new(format!("service_disk.trees[{i}].source"), format!("{:?} is not a readable directory", t.source)).into());
            }
        }
    }
    let mut s = spec.clone();
    if spec.firmware == crate::spec::Firmware::Uefi {
        let ovmf = crate::host::uefi::find()?;
        // The VM's store does not exist yet; a placeholder name stands in
        // (this spec only goes to `prepare`, never to a launch).
        s.boot.efi = Some(crate::host::uefi::EfiFlash { code: ovmf.code, vars: PathBuf::from(crate::host::uefi::VARS_FILE) });
    }
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
    let uefi = spec.firmware == crate::spec::Firmware::Uefi;
    let needs_dir = uefi || spec.boot.image.is_some() || spec.data_disk.is_some() || spec.cloud_init.is_some() || spec.service_disk.is_some();
    if !needs_dir {
        return Ok(out);
    }
    crate::private_dir::ensure_private_dir(dir).map_err(|e| Error::io(format!("cannot create {dir:?}"), e))?;
    if uefi {
        out.boot.efi = Some(crate::host::uefi::ensure_vars(&crate::host::uefi::find()?, dir)?);
    }
    if let Some(base) = base_image(spec, images)? {
        let overlay = dir.join(OVERLAY);
        // The overlay is the VM's root disk: made once, kept across runs.
        if !overlay.exists() {
            create_overlay(&base, &overlay, spec.boot.overlay_gib.map(|g| g << 30)).map_err(DiskError::Overlay)?;
        }
        out.boot.disk = Some(overlay);
        out.boot.image = None;
        out.boot.overlay_gib = None;
    }
    if let Some(d) = &spec.data_disk {
        let path = dir.join(DATA_DISK);
        let want = d.size_gib << 30;
        match ensure_data_disk(&path, want).map_err(DiskError::DataDisk)? {
            paddock_images::DataDisk::Created { .. } => {
                let unused = dir.join(DATA_DISK_UNUSED);
                std::fs::write(&unused, b"").map_err(|e| Error::io(format!("cannot write {unused:?}"), e))?;
            }
            // Never silently reused at another size than the spec says.
            paddock_images::DataDisk::Existing { virtual_size } if virtual_size != want => {
                let message = format!(
                    "{path:?} already exists with {} but the spec asks for {}; set size_gib = {} to use it, or delete it (`paddock rm --volumes` of the VM that had it)",
                    gib(virtual_size),
                    gib(want),
                    virtual_size >> 30,
                );
                return Err(SpecError::new("data_disk.size_gib", message).into());
            }
            paddock_images::DataDisk::Existing { .. } => {}
        }
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
        let mut generated = cloud_config(spec);
        if let Some(ssh) = spec.ssh.as_ref().filter(|s| s.generate_key) {
            let public = crate::ssh_key::ensure(dir, &spec.name)?;
            authorize(&mut generated, &ssh.user, public);
        }
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
            e => Error::from(DiskError::Seed(e)),
        })?;
        let name = match ci.format {
            SeedFormat::Iso => "seed.iso",
            SeedFormat::Vfat => "seed.img",
        };
        let path = dir.join(name);
        // Rewritten each start: the spec (and the lease) may have changed.
        let _ = std::fs::remove_file(&path);
        write_seed_image(&files, ci.format, &path).map_err(DiskError::SeedImage)?;
        out.disks.push(Disk { path, format: Some(DiskFormat::Raw), readonly: true, serial: Some(SEED_SERIAL.into()) });
    }
    if let Some(sd) = &spec.service_disk {
        out.disks.push(Disk { path: write_service_disk(sd, dir)?, format: Some(DiskFormat::Raw), readonly: true, serial: Some(SERVICE_SERIAL.into()) });
    }
    Ok(out)
}

/// Builds the service disk from the spec; rewritten at every start, like
/// the seed, so it always matches the spec and the host trees.
fn write_service_disk(sd: &crate::spec::ServiceDiskSpec, dir: &Path) -> Result<PathBuf, Error> {
    let mut disk = sd.to_image();
    for (i, f) in sd.files.iter().enumerate() {
        let bytes = match (&f.content, &f.source) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(src)) => std::fs::read(src).map_err(|e| {
                SpecError::new(format!("service_disk.files[{i}].source"), format!("cannot read {src:?}: {e}"))
            })?,
            (None, None) => return Err(SpecError::new(format!("service_disk.files[{i}]"), "give content or source").into()),
        };
        disk.files.push((f.path.clone(), bytes));
    }
    let path = dir.join(SERVICE_DISK);
    disk.write(&path).map_err(|e| match e {
        // The spec's own mistakes (unreadable trees, duplicates) name their field.
        paddock_images::ServiceDiskError::Fat(f) => Error::from(DiskError::ServiceDisk(f)),
        other => SpecError::new("service_disk", other.to_string()).into(),
    })?;
    Ok(path)
}

fn gib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{bytes} bytes")
    }
}

/// A guest booted with the VM's disks: its data disk is now worth keeping.
pub fn data_disk_used(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(DATA_DISK_UNUSED));
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

/// Adds `public` to `user`'s keys, making the user (with passwordless
/// sudo, as cloud images' default user has) if the spec has none by that
/// name.
fn authorize(c: &mut CloudConfig, user: &str, public: String) {
    match c.users.iter_mut().find(|u| u.name == user) {
        Some(u) => u.ssh_authorized_keys.push(public),
        None => c.users.push(User {
            name: user.to_string(),
            ssh_authorized_keys: vec![public],
            sudo: Some("ALL=(ALL) NOPASSWD:ALL".into()),
            shell: Some("/bin/bash".into()),
            groups: Vec::new(),
            lock_passwd: Some(true),
        }),
    }
}

/// Deletes the VM's disks; the data disk only with `volumes`, or if no
/// guest ever booted with it (`DATA_DISK_UNUSED`).
pub fn remove(dir: &Path, volumes: bool) -> Result<(), Error> {
    let volumes = volumes || dir.join(DATA_DISK_UNUSED).exists();
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spec::{Boot, LauncherSpec, ServiceDiskSpec, ServiceFile, ServiceTree};

    #[test]
    fn service_disk_is_built_read_only_and_removed_with_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("keys");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/k.pem"), b"key").unwrap();
        let vm = dir.path().join("vm");
        let images = ImageCache::open(dir.path().join("images"), Default::default()).unwrap();
        let spec = VmSpec::builder("svc")
            .boot(Boot::kernel("/k"))
            .service_disk(ServiceDiskSpec {
                files: vec![ServiceFile { path: "etc/app.conf".into(), content: Some("x=1".into()), source: None }],
                trees: vec![ServiceTree { source: tree.clone(), at: "keystore".into() }],
                launcher: Some(LauncherSpec { program: "bin/app".into(), ..Default::default() }),
                ..Default::default()
            })
            .build();
        for_validation(&spec, &images).unwrap();
        let out = materialize(&spec, &vm, &images, None).unwrap();
        let disk = out.disks.last().unwrap();
        assert_eq!((disk.path.clone(), disk.readonly), (vm.join(SERVICE_DISK), true));
        let label = std::process::Command::new("mlabel").args(["-s", "-i"]).arg(&disk.path).arg("::").output().unwrap();
        assert!(String::from_utf8_lossy(&label.stdout).contains("SERVICE"), "{label:?}");
        let ls = std::process::Command::new("mdir").args(["-/", "-b", "-i"]).arg(&disk.path).arg("::").output().unwrap();
        let ls = String::from_utf8_lossy(&ls.stdout);
        for want in ["launch.sh", "app.conf", "k.pem"] {
            assert!(ls.contains(want), "{want} missing from the disk: {ls}");
        }
        remove(&vm, false).unwrap();
        assert!(!vm.exists(), "the service disk outlived its VM");

        let mut bad = spec.clone();
        bad.service_disk.as_mut().unwrap().trees[0].source = dir.path().join("nope");
        match for_validation(&bad, &images) {
            Err(Error::InvalidSpec(e)) => assert_eq!(e.field, "service_disk.trees[0].source"),
            other => panic!("{other:?}"),
        }
        bad.service_disk.as_mut().unwrap().trees.clear();
        bad.service_disk.as_mut().unwrap().files[0] = ServiceFile { path: "bin/app".into(), content: None, source: Some(dir.path().join("missing")) };
        match for_validation(&bad, &images) {
            Err(Error::ImageFile(e)) => assert_eq!(e.field(), "service_disk.files[0].source"),
            other => panic!("{other:?}"),
        }
    }
}
