//! cloud-init NoCloud seed content: meta-data, user-data and
//! network-config (version 2), rendered from typed structs.
//!
//! Owns: the text of the three files. Everything goes through a YAML
//! serializer (serde_norway), never string templates, so no value can add
//! keys or list items: a hostname `a: b # c\n- d` stays one string. Writing
//! the files into an ISO or FAT image is [`crate::seed_image`]'s job.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Errors rendering seed files.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot render {file} as YAML")]
    Yaml {
        file: &'static str,
        #[source]
        source: serde_norway::Error,
    },
    #[error("meta-data.instance-id: must not be empty")]
    EmptyInstanceId,
    #[error(transparent)]
    Multipart(#[from] crate::multipart::MultipartError),
}

/// A cloud-init instance id: cloud-init runs its once-per-instance steps
/// (users, keys, hostname) again whenever this changes. Keep it stable for
/// one VM across reboots and new for a new VM of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    /// `iid-` and 16 hex digits of sha256(name, NUL, creation_nonce). Pass a
    /// nonce chosen once when the VM is created (a UUID, a creation time):
    /// the id then survives restarts and changes when the VM is recreated.
    pub fn derive(vm_name: &str, creation_nonce: &str) -> InstanceId {
        let mut h = Sha256::new();
        h.update(vm_name.as_bytes());
        h.update([0u8]);
        h.update(creation_nonce.as_bytes());
        let digest = h.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        InstanceId(format!("iid-{hex}"))
    }

    /// An id given as is.
    pub fn new(id: impl Into<String>) -> InstanceId {
        InstanceId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The meta-data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetaData {
    pub instance_id: InstanceId,
    pub local_hostname: String,
}

/// The user-data file: a generated `#cloud-config`, the user's own
/// user-data (any format cloud-init understands) passed through verbatim,
/// or both as one MIME multipart message (see [`crate::multipart`]).
#[derive(Debug, Clone, PartialEq)]
pub enum UserData {
    CloudConfig(CloudConfig),
    Raw(String),
    Combined { generated: CloudConfig, user: String },
}

/// The `#cloud-config` keys Paddock generates. Empty fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CloudConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub write_files: Vec<WriteFile>,
    /// Run early on every boot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootcmd: Vec<RunCmd>,
    /// Run once per instance, late in the first boot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runcmd: Vec<RunCmd>,
    /// Filesystems cloud-init makes (once: an existing one is kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fs_setup: Vec<FsSetup>,
    /// fstab entries: `[device, mount point, type, options, dump, pass]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Vec<String>>,
}

/// A `fs_setup:` item: a filesystem on a whole device or a partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FsSetup {
    pub label: String,
    pub filesystem: String,
    pub device: String,
    /// `auto`: the first free place on the device (the whole device when
    /// it has no partitions), and none at all if a filesystem with this
    /// type and label exists already.
    pub partition: String,
    /// false: a device that already has a filesystem is left alone.
    pub overwrite: bool,
}

/// A user account (cloud-config `users:` item).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct User {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// e.g. `ALL=(ALL) NOPASSWD:ALL`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sudo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_passwd: Option<bool>,
}

/// A file cloud-init writes (cloud-config `write_files:` item).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WriteFile {
    pub path: String,
    pub content: String,
    /// Octal string, e.g. `"0644"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// `user:group`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A `runcmd:` item: a string run by `sh -c`, or an argv list run
/// directly (no shell).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RunCmd {
    Shell(String),
    Argv(Vec<String>),
}

/// network-config, version 2 (netplan syntax), ethernets only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkConfig {
    /// Always 2.
    pub version: u8,
    pub ethernets: BTreeMap<String, Ethernet>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig { version: 2, ethernets: BTreeMap::new() }
    }
}

/// One interface, matched by MAC address or name.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ethernet {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<Match>,
    #[serde(rename = "set-name", skip_serializing_if = "Option::is_none")]
    pub set_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp4: Option<bool>,
    /// CIDR addresses, e.g. `10.0.0.2/24`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Nameservers>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Match {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macaddress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// A CIDR; the default route is `0.0.0.0/0` (cloud-init 22.4 rejects
    /// netplan's `default`).
    pub to: String,
    pub via: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Nameservers {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

/// Everything a NoCloud seed holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Seed {
    pub meta_data: MetaData,
    pub user_data: UserData,
    pub network_config: Option<NetworkConfig>,
}

/// The rendered files, ready to be put into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
}

impl SeedFiles {
    /// (file name, content) in the order they are written.
    pub fn entries(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![("meta-data", self.meta_data.as_str()), ("user-data", self.user_data.as_str())];
        if let Some(n) = &self.network_config {
            v.push(("network-config", n.as_str()));
        }
        v
    }
}

fn yaml<T: Serialize>(file: &'static str, v: &T) -> Result<String, SeedError> {
    serde_norway::to_string(v).map_err(|source| SeedError::Yaml { file, source })
}

impl Seed {
    /// Renders the three files. Pure.
    pub fn render(&self) -> Result<SeedFiles, SeedError> {
        if self.meta_data.instance_id.0.is_empty() {
            return Err(SeedError::EmptyInstanceId);
        }
        let user_data = match &self.user_data {
            // cloud-init recognises cloud-config by this first line.
            UserData::CloudConfig(c) => format!("#cloud-config\n{}", yaml("user-data", c)?),
            UserData::Raw(s) => s.clone(),
            UserData::Combined { generated, user } => {
                crate::multipart::combine(&format!("#cloud-config\n{}", yaml("user-data", generated)?), user)?
            }
        };
        Ok(SeedFiles {
            meta_data: yaml("meta-data", &self.meta_data)?,
            user_data,
            network_config: self.network_config.as_ref().map(|n| yaml("network-config", n)).transpose()?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NASTY: &str = "a: b # c\n- d";

    fn seed(hostname: &str) -> Seed {
        Seed {
            meta_data: MetaData { instance_id: InstanceId::derive("web", "nonce-1"), local_hostname: hostname.into() },
            user_data: UserData::CloudConfig(CloudConfig {
                hostname: Some(hostname.into()),
                users: vec![User {
                    name: "ops".into(),
                    ssh_authorized_keys: vec!["ssh-ed25519 AAAA key: with # stuff".into()],
                    ..Default::default()
                }],
                write_files: vec![WriteFile { path: "/etc/x".into(), content: "line1\nline2: x\n".into(), ..Default::default() }],
                runcmd: vec![RunCmd::Argv(vec!["echo".into(), "- not a list item".into()]), RunCmd::Shell("echo hi".into())],
                ..Default::default()
            }),
            network_config: Some(NetworkConfig {
                ethernets: BTreeMap::from([(
                    "eth0".to_string(),
                    Ethernet {
                        match_: Some(Match { macaddress: Some("52:54:00:12:34:56".into()), name: None }),
                        addresses: vec!["10.0.0.2/24".into()],
                        routes: vec![Route { to: "0.0.0.0/0".into(), via: "10.0.0.1".into() }],
                        ..Default::default()
                    },
                )]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn yaml_special_hostname_round_trips_exactly() {
        let files = seed(NASTY).render().unwrap();
        let md: BTreeMap<String, String> = serde_norway::from_str(&files.meta_data).unwrap();
        assert_eq!(md.len(), 2, "no key injected: {}", files.meta_data);
        assert_eq!(md["local-hostname"], NASTY);
        assert!(files.user_data.starts_with("#cloud-config\n"));
        let ud: serde_norway::Value = serde_norway::from_str(&files.user_data).unwrap();
        assert_eq!(ud["hostname"].as_str(), Some(NASTY));
        assert_eq!(ud["users"][0]["ssh_authorized_keys"][0].as_str(), Some("ssh-ed25519 AAAA key: with # stuff"));
        assert_eq!(ud["runcmd"][0][1].as_str(), Some("- not a list item"));
        assert_eq!(ud["write_files"][0]["content"].as_str(), Some("line1\nline2: x\n"));
        let nc: serde_norway::Value = serde_norway::from_str(files.network_config.as_deref().unwrap()).unwrap();
        assert_eq!(nc["version"].as_u64(), Some(2));
        assert_eq!(nc["ethernets"]["eth0"]["match"]["macaddress"].as_str(), Some("52:54:00:12:34:56"));
    }

    #[test]
    fn instance_id_is_stable_per_vm_and_new_per_creation() {
        assert_eq!(InstanceId::derive("web", "n1"), InstanceId::derive("web", "n1"));
        assert_ne!(InstanceId::derive("web", "n1"), InstanceId::derive("web", "n2"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(InstanceId::derive("ab", "c"), InstanceId::derive("a", "bc"));
    }

    #[test]
    fn data_disk_and_bootcmd_render_as_cloud_init_keys() {
        let mut s = seed("h");
        let UserData::CloudConfig(c) = &mut s.user_data else { unreachable!() };
        c.bootcmd = vec![RunCmd::Shell("echo boot".into())];
        c.fs_setup = vec![FsSetup {
            label: "data".into(),
            filesystem: "ext4".into(),
            device: "/dev/disk/by-id/virtio-data".into(),
            partition: "auto".into(),
            overwrite: false,
        }];
        c.mounts = vec![vec!["/dev/disk/by-id/virtio-data".into(), "/srv/data".into(), "ext4".into(), "defaults,nofail".into(), "0".into(), "2".into()]];
        let ud: serde_norway::Value = serde_norway::from_str(&s.render().unwrap().user_data).unwrap();
        assert_eq!(ud["bootcmd"][0].as_str(), Some("echo boot"));
        assert_eq!(ud["fs_setup"][0]["partition"].as_str(), Some("auto"));
        assert_eq!(ud["fs_setup"][0]["overwrite"].as_bool(), Some(false));
        assert_eq!(ud["mounts"][0][1].as_str(), Some("/srv/data"));
    }

    #[test]
    fn combined_user_data_is_multipart_with_both_parts() {
        let mut s = seed("h");
        let UserData::CloudConfig(c) = s.user_data.clone() else { unreachable!() };
        s.user_data = UserData::Combined { generated: c, user: "#cloud-config\npackages: [htop]\n".into() };
        let text = s.render().unwrap().user_data;
        assert!(text.starts_with("Content-Type: multipart/mixed;"), "{text}");
        assert!(text.contains("\n#cloud-config\nhostname: h\n"), "{text}");
        assert!(text.contains("packages: [htop]"), "{text}");
    }

    #[test]
    fn raw_user_data_is_passed_through_verbatim() {
        let mut s = seed("h");
        s.user_data = UserData::Raw("#!/bin/sh\necho 'mine'\n".into());
        assert_eq!(s.render().unwrap().user_data, "#!/bin/sh\necho 'mine'\n");
    }
}
