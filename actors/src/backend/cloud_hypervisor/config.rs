//! The `vm.create` body, built purely from a resolved spec: no file is
//! opened here, so the body can be golden-tested (tests/golden/ch-*.json).
//!
//! The serial port writes straight into console.log (`mode: File`): CH
//! itself keeps the log complete while the supervisor is down, exactly as
//! QEMU's chardev `logfile=` does, and the Console actor tails that file.
//! CH's `Socket` mode would lose every byte written while nobody is
//! connected. The price: no interactive input on the CH serial console.

use paddock_images::DiskFormat;
use std::path::PathBuf;

use super::api::NetConfig;
use super::api::{ConsoleConfig, ConsoleMode, CpusConfig, DiskConfig, ImageType, MemoryConfig, PayloadConfig, RngConfig, SerialConfig, VmConfig, VsockConfig};
use crate::backend::RunPaths;

#[derive(Debug, Clone)]
pub enum ChBoot {
    Kernel { kernel: PathBuf, initrd: Option<PathBuf>, cmdline: Option<String> },
    /// A disk booted by firmware (rust-hypervisor-firmware or CLOUDHV.fd);
    /// CH has no built-in BIOS, so the firmware is required.
    Disk { disk: PathBuf, format: DiskFormat, firmware: PathBuf },
}

pub type ChDisk = crate::backend::CheckedDisk;

/// Everything the body depends on.
#[derive(Debug, Clone)]
pub struct ChConfig {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: ChBoot,
    pub disks: Vec<ChDisk>,
    /// A guest CID (>= 3) when the VM asked for vsock.
    pub vsock_cid: Option<u32>,
    /// The lease's TAP and MAC when `network.mode = "tap"`.
    pub tap: Option<(String, String)>,
    pub paths: RunPaths,
}

fn image_type(f: DiskFormat) -> ImageType {
    match f {
        DiskFormat::Raw => ImageType::Raw,
        DiskFormat::Qcow2 => ImageType::Qcow2,
    }
}

pub fn vm_config(c: &ChConfig) -> VmConfig {
    let mut disks = Vec::new();
    let payload = match &c.boot {
        ChBoot::Kernel { kernel, initrd, cmdline } => PayloadConfig {
            kernel: Some(kernel.clone()),
            initramfs: initrd.clone(),
            cmdline: cmdline.clone(),
            firmware: None,
        },
        ChBoot::Disk { disk, format, firmware } => {
            disks.push(DiskConfig {
                path: disk.clone(),
                readonly: false,
                id: Some("boot0".into()),
                image_type: Some(image_type(*format)),
                serial: Some(crate::disks::ROOT_SERIAL.into()),
            });
            PayloadConfig { firmware: Some(firmware.clone()), ..Default::default() }
        }
    };
    for (i, d) in c.disks.iter().enumerate() {
        disks.push(DiskConfig {
            path: d.path.clone(),
            readonly: d.readonly,
            id: Some(format!("disk{i}")),
            image_type: Some(image_type(d.format)),
            serial: Some(d.serial.clone()),
        });
    }
    VmConfig {
        cpus: CpusConfig { boot_vcpus: c.vcpus, max_vcpus: c.vcpus },
        memory: MemoryConfig { size: (c.memory_mib as i64) << 20 },
        payload,
        disks: (!disks.is_empty()).then_some(disks),
        net: c.tap.as_ref().map(|(tap, mac)| vec![NetConfig { tap: tap.clone(), mac: Some(mac.clone()), id: None }]),
        rng: RngConfig { src: "/dev/urandom".into() },
        serial: SerialConfig { mode: ConsoleMode::File, file: Some(c.paths.console_log.clone()), socket: None },
        console: ConsoleConfig { mode: ConsoleMode::Off, file: None, socket: None },
        vsock: c.vsock_cid.map(|cid| VsockConfig { cid: cid.into(), socket: super::stale::vsock_path(&c.paths) }),
        pvpanic: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests_support::golden;
    use std::path::Path;

    fn base() -> ChConfig {
        ChConfig {
            vcpus: 2,
            memory_mib: 256,
            boot: ChBoot::Kernel {
                kernel: "/guest/vmlinuz".into(),
                initrd: Some("/guest/initramfs.cpio.gz".into()),
                cmdline: Some("console=ttyS0 panic=-1".into()),
            },
            disks: vec![],
            vsock_cid: None,
            tap: None,
            paths: RunPaths::new(Path::new("/run/paddock"), "web"),
        }
    }

    fn pretty(c: &ChConfig) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_string_pretty(&vm_config(c)).unwrap() + "\n"
    }

    #[test]
    fn kernel_boot_golden() {
        golden("ch-kernel.vm-create.json", &pretty(&base()));
    }

    #[test]
    fn firmware_disk_vsock_golden() {
        let mut c = base();
        c.boot = ChBoot::Disk { disk: "/img/root.qcow2".into(), format: DiskFormat::Qcow2, firmware: "/fw/hypervisor-fw".into() };
        c.disks = vec![ChDisk { path: "/img/data.raw".into(), format: DiskFormat::Raw, readonly: true, serial: "disk0".into() }];
        c.vsock_cid = Some(42);
        golden("ch-disk-vsock.vm-create.json", &pretty(&c));
    }

    /// A cloud image booted by its kernel: the overlay is the first disk.
    #[test]
    fn kernel_with_root_disk_golden() {
        let mut c = base();
        c.boot = ChBoot::Kernel {
            kernel: "/guest/vmlinuz".into(),
            initrd: Some("/guest/initrd.img".into()),
            cmdline: Some("console=ttyS0 root=LABEL=root rw".into()),
        };
        c.disks = vec![
            ChDisk { path: "/state/vms/web/root.qcow2".into(), format: DiskFormat::Qcow2, readonly: false, serial: "root".into() },
            ChDisk { path: "/state/vms/web/seed.iso".into(), format: DiskFormat::Raw, readonly: true, serial: "cidata".into() },
        ];
        c.tap = Some(("pdtap7".into(), "02:50:44:00:00:07".into()));
        golden("ch-kernel-root-disk.vm-create.json", &pretty(&c));
    }

    #[test]
    fn body_round_trips_through_the_typed_structs() {
        let body = serde_json::to_string(&vm_config(&base())).unwrap();
        let back: VmConfig = serde_json::from_str(&body).unwrap();
        assert_eq!(back, vm_config(&base()));
    }
}
