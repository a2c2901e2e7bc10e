//! QEMU's command line, built as a vector from fully resolved inputs.
//!
//! Pure: no file is opened and no socket bound here, so the argv can be
//! golden-tested (tests/golden/qemu-*.argv) and reviewed as a diff.

use paddock_images::DiskFormat;
use paddock_net::{MacAddress, PortForward};
use std::ffi::OsString;
use std::path::PathBuf;

use crate::backend::RunPaths;
use crate::spec::{Accel, OnPanic};

#[derive(Debug, Clone)]
pub enum QemuBoot {
    Kernel { kernel: PathBuf, initrd: Option<PathBuf>, cmdline: Option<String> },
    Disk { disk: PathBuf, format: DiskFormat, firmware: Option<PathBuf> },
}

pub type QemuDisk = crate::backend::CheckedDisk;

#[derive(Debug, Clone)]
pub enum QemuNet {
    None,
    User { mac: MacAddress, forwards: Vec<PortForward> },
    /// A persistent TAP made by the NetManager, opened by name.
    Tap { ifname: String, mac: String },
}

/// Everything the argv depends on; `accel` is already resolved (not Auto).
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub name: String,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: QemuBoot,
    pub disks: Vec<QemuDisk>,
    pub net: QemuNet,
    pub vsock: Option<QemuVsock>,
    pub paths: RunPaths,
    pub on_panic: OnPanic,
    pub display: Option<crate::spec::Display>,
    /// OVMF's code and the VM's variable store (`firmware = "uefi"`).
    pub efi: Option<crate::host::uefi::EfiFlash>,
}

/// QEMU's own action on a guest panic (`-action panic=`), so the VM is
/// already in the right state when the GUEST_PANICKED event arrives:
/// `restart` exits with a failure status (the restart policy decides),
/// `stop` exits cleanly (and the VM actor does not restart it), `pause`
/// freezes the vCPUs, `ignore` lets the guest carry on.
fn panic_action(p: OnPanic) -> &'static str {
    match p {
        OnPanic::Restart => "exit-failure",
        OnPanic::Stop => "shutdown",
        OnPanic::Pause => "pause",
        OnPanic::Ignore => "none",
    }
}

pub use crate::vsock::QemuVsock;

/// The process name QEMU shows; also the marker that recognises our
/// processes after a supervisor restart.
pub fn marker(name: &str) -> String {
    crate::backend::marker(name)
}

/// QEMU's `-drive`/`-chardev` option syntax uses ',' as separator; a comma
/// in a value is written twice.
fn opt_path(p: &std::path::Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

pub fn build(cfg: &QemuConfig) -> Vec<OsString> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |k: &str, v: String| {
        a.push(k.to_string());
        a.push(v);
    };
    push("-name", marker(&cfg.name));
    let (machine_accel, cpu) = match cfg.accel {
        Accel::Kvm => ("kvm", "host"),
        // `max` gives TCG guests every feature QEMU can emulate.
        _ => ("tcg", "max"),
    };
    // A vhost-user device process reads and writes guest memory itself:
    // the RAM must be a shared memfd it can map (the same under TCG).
    let shared_ram = matches!(cfg.vsock, Some(QemuVsock::User { .. }));
    if shared_ram {
        push("-object", format!("memory-backend-memfd,id=mem0,size={}M,share=on", cfg.memory_mib));
        push("-machine", format!("q35,accel={machine_accel},memory-backend=mem0"));
    } else {
        push("-machine", format!("q35,accel={machine_accel}"));
    }
    push("-cpu", cpu.to_string());
    push("-smp", cfg.vcpus.to_string());
    push("-m", format!("{}M", cfg.memory_mib));
    push("-display", "none".into());
    push("-qmp", format!("unix:{},server=on,wait=off", opt_path(&cfg.paths.control_socket)));
    // The chardev writes the log itself: the record stays whole while the
    // supervisor is down, and the socket is only for live attach.
    push(
        "-chardev",
        format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            opt_path(&cfg.paths.serial_socket),
            opt_path(&cfg.paths.console_log)
        ),
    );
    push("-serial", "chardev:serial0".into());
    if let Some(flash) = &cfg.efi {
        for (k, v) in crate::host::uefi::qemu_args(flash, opt_path) {
            push(k, v);
        }
    }
    match &cfg.boot {
        QemuBoot::Kernel { kernel, initrd, cmdline } => {
            push("-kernel", kernel.to_string_lossy().into_owned());
            if let Some(i) = initrd {
                push("-initrd", i.to_string_lossy().into_owned());
            }
            if let Some(c) = cmdline {
                push("-append", c.clone());
            }
        }
        QemuBoot::Disk { disk, format, firmware } => {
            // Firmware comes before the devices so the boot disk is found
            // by bootindex, not by probe order.
            if let Some(fw) = firmware {
                push("-bios", fw.to_string_lossy().into_owned());
            }
            push("-drive", format!("file={},if=none,id=boot0,format={}", opt_path(disk), format.as_str()));
            push("-device", format!("virtio-blk-pci,drive=boot0,bootindex=0,serial={}", crate::disks::ROOT_SERIAL));
        }
    }
    for (i, d) in cfg.disks.iter().enumerate() {
        let ro = if d.readonly { ",readonly=on" } else { "" };
        push(
            "-drive",
            format!("file={},if=none,id=disk{i},format={}{ro}", opt_path(&d.path), d.format.as_str()),
        );
        // serial=: the guest's /dev/disk/by-id/virtio-<serial> (validated
        // to [A-Za-z0-9_-], so it needs no escaping).
        push("-device", format!("virtio-blk-pci,drive=disk{i},serial={}", d.serial));
    }
    push("-object", "rng-random,id=rng0,filename=/dev/urandom".into());
    push("-device", "virtio-rng-pci,rng=rng0".into());
    match &cfg.net {
        QemuNet::None => {}
        QemuNet::User { mac, forwards } => {
            let mut netdev = "user,id=net0".to_string();
            for f in forwards {
                netdev.push_str(",hostfwd=");
                netdev.push_str(&f.hostfwd());
            }
            push("-netdev", netdev);
            push("-device", format!("virtio-net-pci,netdev=net0,mac={mac}"));
        }
        QemuNet::Tap { ifname, mac } => {
            push("-netdev", format!("tap,id=net0,ifname={ifname},script=no,downscript=no"));
            push("-device", format!("virtio-net-pci,netdev=net0,mac={mac}"));
        }
    }
    match &cfg.vsock {
        None => {}
        Some(QemuVsock::Kernel { cid }) => push("-device", format!("vhost-vsock-pci,guest-cid={cid}")),
        Some(QemuVsock::User { socket, .. }) => {
            // QEMU is the vhost-user client: the device process listens.
            push("-chardev", format!("socket,id=vsock0,path={}", opt_path(socket)));
            push("-device", "vhost-user-vsock-pci,chardev=vsock0".into());
        }
    }
    for (k, v) in crate::display::qemu_args(cfg.display, &cfg.paths) {
        push(k, v);
    }
    // The guest panic device turns a guest kernel panic into a QMP event.
    push("-device", "pvpanic".into());
    push("-action", format!("panic={}", panic_action(cfg.on_panic)));
    let mut out: Vec<OsString> = vec!["-nodefaults".into(), "-no-user-config".into()];
    out.extend(a.into_iter().map(OsString::from));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_net::Protocol;
    use std::path::Path;

    fn golden(name: &str, argv: &[OsString]) {
        let text: String = argv.iter().map(|a| format!("{}\n", a.to_string_lossy())).collect();
        crate::backend::tests_support::golden(name, &text);
    }

    fn base() -> QemuConfig {
        QemuConfig {
            name: "web".into(),
            accel: Accel::Tcg,
            vcpus: 2,
            memory_mib: 256,
            boot: QemuBoot::Kernel {
                kernel: "/guest/vmlinuz".into(),
                initrd: Some("/guest/initramfs.cpio.gz".into()),
                cmdline: Some("console=ttyS0 panic=-1".into()),
            },
            disks: vec![],
            net: QemuNet::None,
            vsock: None,
            display: None,
            efi: None,
            paths: RunPaths::new(Path::new("/run/paddock"), "web"),
            on_panic: OnPanic::Restart,
        }
    }

    #[test]
    fn vnc_display_golden() {
        let mut c = base();
        c.display = Some(crate::spec::Display::Vnc);
        golden("qemu-vnc.argv", &build(&c));
    }

    /// UEFI: OVMF's code read-only, the VM's own store read-write, both
    /// before the boot disk.
    #[test]
    fn uefi_disk_golden() {
        let mut c = base();
        c.boot = QemuBoot::Disk { disk: "/state/vms/web/root.qcow2".into(), format: DiskFormat::Qcow2, firmware: None };
        c.efi = Some(crate::host::uefi::EfiFlash { code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(), vars: "/state/vms/web,1/efi-vars.fd".into() });
        golden("qemu-uefi.argv", &build(&c));
    }

    #[test]
    fn kernel_boot_tcg_golden() {
        golden("qemu-kernel-tcg.argv", &build(&base()));
    }

    #[test]
    fn disk_boot_kvm_user_net_golden() {
        let mut c = base();
        c.accel = Accel::Kvm;
        c.boot = QemuBoot::Disk { disk: "/img/root,1.qcow2".into(), format: DiskFormat::Qcow2, firmware: Some("/fw/bios.bin".into()) };
        c.disks = vec![QemuDisk { path: "/img/data.raw".into(), format: DiskFormat::Raw, readonly: true, serial: "disk0".into() }];
        c.on_panic = OnPanic::Pause;
        c.net = QemuNet::User {
            mac: MacAddress::for_vm("web"),
            forwards: vec![
                PortForward { host: 8022, guest: 22, protocol: Protocol::Tcp },
                PortForward { host: 5353, guest: 53, protocol: Protocol::Udp },
            ],
        };
        golden("qemu-disk-kvm-usernet.argv", &build(&c));
    }

    #[test]
    fn tap_golden() {
        let mut c = base();
        c.net = QemuNet::Tap { ifname: "pdtap7".into(), mac: "02:50:44:00:00:07".into() };
        golden("qemu-tap.argv", &build(&c));
    }

    /// A cloud image booted by its kernel: the overlay is the first disk
    /// (root), then the data disk and the seed, each with its serial.
    #[test]
    fn kernel_with_root_disk_golden() {
        let mut c = base();
        c.boot = QemuBoot::Kernel {
            kernel: "/guest/vmlinuz".into(),
            initrd: Some("/guest/initrd.img".into()),
            cmdline: Some("console=ttyS0 root=LABEL=root rw".into()),
        };
        c.disks = vec![
            QemuDisk { path: "/state/vms/web/root.qcow2".into(), format: DiskFormat::Qcow2, readonly: false, serial: "root".into() },
            QemuDisk { path: "/state/vms/web/data.qcow2".into(), format: DiskFormat::Qcow2, readonly: false, serial: "data".into() },
            QemuDisk { path: "/state/vms/web/seed.iso".into(), format: DiskFormat::Raw, readonly: true, serial: "cidata".into() },
        ];
        c.net = QemuNet::Tap { ifname: "pdtap7".into(), mac: "02:50:44:00:00:07".into() };
        golden("qemu-kernel-root-disk.argv", &build(&c));
    }

    #[test]
    fn vhost_user_vsock_golden() {
        let mut c = base();
        c.vsock = Some(QemuVsock::User { cid: 42, socket: "/run/paddock/web/vhost-vsock.sock".into() });
        golden("qemu-vsock-vhost-user.argv", &build(&c));
    }

    #[test]
    fn kernel_vsock_needs_no_shared_memory() {
        let mut c = base();
        c.vsock = Some(QemuVsock::Kernel { cid: 42 });
        let argv: Vec<String> = build(&c).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(argv.windows(2).any(|w| w[0] == "-device" && w[1] == "vhost-vsock-pci,guest-cid=42"));
        assert!(!argv.iter().any(|a| a.contains("memory-backend")));
    }

    #[test]
    fn values_stay_single_arguments() {
        let mut c = base();
        c.boot = QemuBoot::Kernel { kernel: "/k".into(), initrd: None, cmdline: Some("a b; rm -rf /".into()) };
        let argv = build(&c);
        let i = argv.iter().position(|a| a == "-append").unwrap();
        assert_eq!(argv[i + 1], "a b; rm -rf /");
    }
}
