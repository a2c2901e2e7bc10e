//! A project file (`Paddock.toml`) with two VMs of the real Debian guest:
//! `paddock up` creates both concurrently, waits for SSH with the key
//! Paddock generated for each, and runs their provisioning steps (inline
//! shell, a script, a file upload) with each output line prefixed by the
//! VM's name; `paddock ssh` reads the uploaded file; `provision` reruns;
//! a failed step stops the rest; the same VMs written as vmctl's
//! `VMFile.kdl` are found running and provisioned from it; `down
//! --destroy` leaves nothing.

mod common;

use common::debian::*;
use common::*;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// `paddock ARGS` in `dir` against the test daemon.
fn paddock(d: &Daemon, dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("--socket")
        .arg(d.client.socket())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run paddock");
    println!("$ paddock {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn vm_table(name: &str, port: u16) -> String {
    let g = debian();
    format!(
        r#"
[[vm]]
name = "{name}"
vcpus = 1
memory_mib = 768
boot = {{ image = "sha256:{sha}", kernel = "{kernel}", initrd = "{initrd}", cmdline = "{cmdline}" }}
network = {{ mode = "user", forwards = [{{ host = {port}, guest = 22 }}] }}
ssh = {{ user = "ops", generate_key = true }}
[vm.cloud_init]
[[vm.provision]]
shell = {{ inline = "echo inline on $(hostname) | sudo tee /var/tmp/inline" }}
[[vm.provision]]
shell = {{ script = "setup.sh" }}
[[vm.provision]]
file = {{ source = "files/app.conf", destination = "/tmp/app.conf" }}
"#,
        sha = g.sha256,
        kernel = g.kernel.display(),
        initrd = g.initrd.display(),
        cmdline = g.cmdline,
    )
}

/// A vmctl `vm` node for the Debian guest (`kernel`, `initrd`, `cmdline`
/// are Paddock's additions: the image has no bootloader).
fn vmfile_vm(name: &str) -> String {
    let g = debian();
    format!(
        r#"
vm "{name}" {{
    image "{image}"
    kernel "{kernel}"
    initrd "{initrd}"
    cmdline "{cmdline}"
    vcpus 1
    memory 768
    network "user"
    cloud-init {{
        hostname "{name}"
    }}
    ssh {{
        user "ops"
    }}
    provision "shell" {{
        inline "echo kdl step on $(hostname)"
    }}
    provision "file" {{
        source "conf/kdl.conf"
        destination "/tmp/kdl.conf"
    }}
}}
"#,
        image = g.image.display(),
        kernel = g.kernel.display(),
        initrd = g.initrd.display(),
        cmdline = g.cmdline,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_vm_project_is_provisioned_reprovisioned_and_destroyed() {
    let d = Daemon::start();
    seed_image_cache(&d);
    let proj = d.dir.path().join("proj");
    std::fs::create_dir_all(proj.join("files")).expect("project dir");
    std::fs::write(proj.join("Paddock.toml"), format!("{}{}", vm_table("web", free_port()), vm_table("db", free_port()))).expect("Paddock.toml");
    std::fs::write(proj.join("setup.sh"), "set -e\necho script ran as $(id -un)\nwhoami > /var/tmp/script\n").expect("setup.sh");
    std::fs::write(proj.join("files/app.conf"), "port = 8080\n# uploaded\n").expect("app.conf");

    let up = paddock(&d, &proj, &["up", "--timeout", &BOOT_SECS.to_string()]);
    assert!(up.status.success(), "up failed");
    let out = text(&up);
    for vm in ["web", "db"] {
        for line in [format!("{vm} | ==> step 1/3: shell"), format!("{vm} | inline on {vm}"), format!("{vm} | script ran as ops"), format!("{vm} | ==> step 3/3: file"), format!("{vm} | provisioned (3 steps)")] {
            assert!(out.contains(&line), "{line:?} missing from:\n{out}");
        }
        let key = d.state_dir().join(format!("vms/{vm}/ssh_ed25519"));
        assert_eq!(std::fs::metadata(&key).expect("generated key").permissions().mode() & 0o777, 0o600);
    }
    let cat = paddock(&d, &proj, &["ssh", "web", "--", "cat", "/tmp/app.conf"]);
    assert!(cat.status.success());
    assert_eq!(text(&cat), "port = 8080\n# uploaded\n");
    let cat = paddock(&d, &proj, &["ssh", "db", "--", "cat", "/var/tmp/script", "/var/tmp/inline"]);
    assert_eq!(text(&cat), "ops\ninline on db\n");

    // provision reruns the steps; logs --provision shows the last run.
    std::fs::write(proj.join("files/app.conf"), "port = 9090\n").expect("app.conf");
    let again = paddock(&d, &proj, &["provision", "web"]);
    assert!(again.status.success() && text(&again).contains("web | provisioned (3 steps)"));
    assert!(!text(&again).contains("db |"), "only web was asked for");
    assert_eq!(text(&paddock(&d, &proj, &["ssh", "web", "--", "cat", "/tmp/app.conf"])), "port = 9090\n");
    let log = text(&paddock(&d, &proj, &["logs", "web", "--provision"]));
    assert!(log.contains("==> step 2/3: script") && log.contains("script ran as ops") && log.contains("provisioned"), "{log}");

    // A failing step stops the rest and says which.
    let broken = d.dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    let failing = vm_table("web", 1).replace(
        "shell = { inline = \"echo inline on $(hostname) | sudo tee /var/tmp/inline\" }",
        "shell = { inline = \"echo before; exit 7\" }",
    );
    std::fs::write(broken.join("Paddock.toml"), failing.replace("shell = { script = \"setup.sh\" }", "shell = { inline = \"touch /tmp/never\" }")).expect("toml");
    let fail = paddock(&d, &broken, &["provision", "web"]);
    assert!(!fail.status.success());
    let err = String::from_utf8_lossy(&fail.stderr);
    assert!(err.contains("step 1/3") && err.contains("exit status: 7") && err.contains("remaining steps were not run"), "{err}");
    assert!(text(&fail).contains("web | before"));
    let never = paddock(&d, &proj, &["ssh", "web", "--", "test", "-e", "/tmp/never"]);
    assert!(!never.status.success(), "a step after the failed one ran");

    // The same VMs as a vmctl VMFile.kdl: `up` finds them running, and
    // `provision` runs the KDL file's steps on both.
    let kdl = d.dir.path().join("kdl");
    std::fs::create_dir_all(kdl.join("conf")).expect("kdl dir");
    std::fs::write(kdl.join("conf/kdl.conf"), "from = \"kdl\"\n").expect("kdl.conf");
    std::fs::write(kdl.join("VMFile.kdl"), format!("{}{}", vmfile_vm("web"), vmfile_vm("db"))).expect("VMFile.kdl");
    let up = paddock(&d, &kdl, &["up"]);
    assert!(up.status.success() && text(&up).contains("web | already running") && text(&up).contains("db | already running"));
    let prov = paddock(&d, &kdl, &["provision"]);
    assert!(prov.status.success());
    for vm in ["web", "db"] {
        assert!(text(&prov).contains(&format!("{vm} | kdl step on {vm}")) && text(&prov).contains(&format!("{vm} | provisioned (2 steps)")), "{}", text(&prov));
        assert_eq!(text(&paddock(&d, &kdl, &["ssh", vm, "--", "cat", "/tmp/kdl.conf"])), "from = \"kdl\"\n");
    }

    let down = paddock(&d, &proj, &["down", "--destroy"]);
    assert!(down.status.success());
    assert!(d.client.list().await.expect("ls").is_empty());
    assert!(!proj.join(".paddock").exists(), "provisioning logs left");
    let left: Vec<_> = std::fs::read_dir(d.state_dir().join("vms")).map(|r| r.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left in the state dir: {left:?}");
}
