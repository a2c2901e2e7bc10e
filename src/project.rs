//! A project file, `Paddock.toml`: several VMs, each a spec (`[[vm]]`)
//! with provisioning steps (`[[vm.provision]]`) that `paddock up` runs
//! over SSH once the guest answers.
//!
//! ```toml
//! [[vm]]
//! name = "web"
//! # ... any spec field ...
//! [[vm.provision]]
//! shell = { inline = "apt-get install -y nginx" }   # or { script = "setup.sh" }
//! [[vm.provision]]
//! file = { source = "site.conf", destination = "/tmp/site.conf" }
//! ```
//!
//! Relative paths (spec files, scripts, sources) are relative to the
//! project file. Provisioning logs are kept in `.paddock/provision/NAME.log`
//! beside it.

use std::path::{Path, PathBuf};

use paddock_actors::VmSpec;
use serde::Deserialize;

/// The file `paddock up` looks for in the current directory.
pub const PROJECT_FILE: &str = "Paddock.toml";

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("no {PROJECT_FILE} (or vmctl's VMFile.kdl) in {dir:?}; write one (see README \"Projects\") or give a spec file: `paddock up FILE`")]
    NotFound { dir: PathBuf },
    #[error("cannot read {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path:?}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// One provisioning step.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Step {
    /// Run in the guest's shell: an inline command, or a host script sent
    /// to `sh -s` on its standard input.
    Shell(ShellStep),
    /// Copy a host file to the guest (scp).
    File(FileStep),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellStep {
    #[serde(default)]
    pub inline: Option<String>,
    #[serde(default)]
    pub script: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStep {
    pub source: PathBuf,
    pub destination: String,
}

impl Step {
    /// A short description for progress lines and errors.
    pub fn describe(&self) -> String {
        match self {
            Step::Shell(ShellStep { inline: Some(c), .. }) => format!("shell {:?}", c.lines().next().unwrap_or("")),
            Step::Shell(ShellStep { script: Some(s), .. }) => format!("script {}", s.display()),
            Step::Shell(_) => "shell".into(),
            Step::File(f) => format!("file {} -> {}", f.source.display(), f.destination),
        }
    }
}

/// A VM of the project: its spec and its steps.
#[derive(Debug, Clone)]
pub struct ProjectVm {
    pub spec: VmSpec,
    pub provision: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Project {
    /// The project file's directory (absolute).
    pub dir: PathBuf,
    pub vms: Vec<ProjectVm>,
}

impl Project {
    /// `Paddock.toml` in `dir`, or else vmctl's `VMFile.kdl`.
    pub fn find(dir: &Path) -> Result<Project, ProjectError> {
        let path = dir.join(PROJECT_FILE);
        if path.is_file() {
            return Project::load(&path);
        }
        let kdl = dir.join(crate::project_kdl::VMFILE);
        if kdl.is_file() {
            return Project::load(&kdl);
        }
        Err(ProjectError::NotFound { dir: dir.to_path_buf() })
    }

    /// A `.kdl` file is read as vmctl's VMFile, anything else as TOML.
    pub fn load(path: &Path) -> Result<Project, ProjectError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProjectError::Read { path: path.to_path_buf(), source })?;
        let dir = crate::config::base_dir(path);
        let parsed = if path.extension().is_some_and(|e| e == "kdl") { crate::project_kdl::parse(&text, &dir) } else { Project::parse(&text, &dir) };
        parsed.map_err(|message| ProjectError::Parse { path: path.to_path_buf(), message })
    }

    /// Parses the TOML text; errors name the VM and the field.
    pub fn parse(text: &str, dir: &Path) -> Result<Project, String> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        if let Some(k) = doc.keys().find(|k| *k != "vm") {
            return Err(format!("unknown key {k:?}; a project has only [[vm]] tables"));
        }
        let Some(toml::Value::Array(tables)) = doc.remove("vm") else {
            return Err("no VMs: add a [[vm]] table with a name and a boot section".into());
        };
        let mut vms = Vec::new();
        for (i, t) in tables.into_iter().enumerate() {
            let toml::Value::Table(mut t) = t else { return Err(format!("vm[{i}]: must be a table ([[vm]])")) };
            let label = t_name(&t);
            let at = |e: &dyn std::fmt::Display| format!("vm[{i}]{label}: {}", e.to_string().trim());
            let steps = match t.remove("provision") {
                None => Vec::new(),
                Some(v) => Vec::<Step>::deserialize(v).map_err(|e| format!("{}.provision: {}", at(&""), e.to_string().trim()))?,
            };
            let mut spec = VmSpec::deserialize(toml::Value::Table(t)).map_err(|e| at(&e))?;
            crate::config::resolve_paths(&mut spec, dir);
            let mut provision = Vec::new();
            for (j, mut s) in steps.into_iter().enumerate() {
                let field = format!("vm[{i}] ({}).provision[{j}]", spec.name);
                match &mut s {
                    Step::Shell(ShellStep { inline: Some(_), script: None }) => {}
                    Step::Shell(ShellStep { inline: None, script: Some(p) }) => *p = dir.join(&*p),
                    Step::Shell(_) => return Err(format!("{field}.shell: give exactly one of inline or script")),
                    Step::File(f) => {
                        f.source = dir.join(&f.source);
                        if f.destination.is_empty() || f.destination.contains('\0') {
                            return Err(format!("{field}.file.destination: a path in the guest"));
                        }
                    }
                }
                provision.push(s);
            }
            if !provision.is_empty() && spec.ssh.is_none() {
                return Err(format!("vm[{i}] ({}).provision: steps run over SSH; add ssh = {{ user = \"...\", generate_key = true }}", spec.name));
            }
            if vms.iter().any(|v: &ProjectVm| v.spec.name == spec.name) {
                return Err(format!("vm[{i}]: a second VM named {:?}", spec.name));
            }
            vms.push(ProjectVm { spec, provision });
        }
        Ok(Project { dir: dir.to_path_buf(), vms })
    }

    /// The VM named `name`, or an error listing the project's VMs.
    pub fn vm(&self, name: &str) -> Result<&ProjectVm, String> {
        self.vms.iter().find(|v| v.spec.name == name).ok_or_else(|| {
            format!("no VM named {name:?} in the project; it has {}", self.vms.iter().map(|v| v.spec.name.as_str()).collect::<Vec<_>>().join(", "))
        })
    }

    /// Where the provisioning output of `vm` is recorded.
    pub fn provision_log(&self, vm: &str) -> PathBuf {
        self.dir.join(".paddock/provision").join(format!("{vm}.log"))
    }
}

fn t_name(t: &toml::Table) -> String {
    t.get("name").and_then(|n| n.as_str()).map(|n| format!(" ({n})")).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[vm]]
name = "web"
[vm.boot]
kernel = "k/vmlinuz"
[vm.network]
mode = "user"
forwards = [{ host = 8022, guest = 22 }]
[vm.cloud_init]
[vm.ssh]
user = "ops"
generate_key = true
[[vm.provision]]
shell = { inline = "echo hi" }
[[vm.provision]]
shell = { script = "setup.sh" }
[[vm.provision]]
file = { source = "app.conf", destination = "/tmp/app.conf" }

[[vm]]
name = "db"
boot = { kernel = "/k" }
"#;

    #[test]
    fn vms_steps_and_relative_paths() {
        let p = Project::parse(GOOD, Path::new("/proj")).unwrap();
        assert_eq!(p.vms.len(), 2);
        let web = p.vm("web").unwrap();
        web.spec.validate().unwrap();
        assert_eq!(web.spec.boot.kernel.as_deref(), Some(Path::new("/proj/k/vmlinuz")));
        assert_eq!(web.provision.len(), 3);
        assert_eq!(web.provision[1], Step::Shell(ShellStep { inline: None, script: Some("/proj/setup.sh".into()) }));
        assert!(matches!(&web.provision[2], Step::File(f) if f.source == Path::new("/proj/app.conf")));
        assert!(p.vm("db").unwrap().provision.is_empty());
        assert!(p.vm("nope").unwrap_err().contains("web, db"));
    }

    #[test]
    fn mistakes_name_the_vm_and_field() {
        let cases = [
            (GOOD.replace("generate_key = true", "generate_key = true\ncolour = 1"), "colour"),
            (GOOD.replace("{ inline = \"echo hi\" }", "{ inline = \"a\", script = \"b\" }"), "vm[0] (web).provision[0].shell"),
            (GOOD.replace("shell = { script", "shel = { script"), "provision"),
            (GOOD.replace("name = \"db\"", "name = \"web\""), "second VM named \"web\""),
            (GOOD.replace("[vm.ssh]\nuser = \"ops\"\ngenerate_key = true\n", ""), "steps run over SSH"),
            ("[vm]\nname = 1".to_string(), "vm"),
            ("x = 1".to_string(), "unknown key \"x\""),
        ];
        for (text, want) in cases {
            let e = Project::parse(&text, Path::new("/p")).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
