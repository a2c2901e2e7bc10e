//! Shell completions (`paddock completions bash|zsh|fish`, clap_complete)
//! and man pages (`paddock manpages DIR`, clap_mangen), both generated
//! from the same command definitions as the parser, so they cannot drift.

use clap::CommandFactory as _;
use std::path::Path;

use super::{Cli, CliError};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn completions(shell: Shell) {
    let mut cmd = Cli::command();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "paddock", &mut std::io::stdout());
}

/// Writes `paddock.1` and one `paddock-SUBCOMMAND.1` per subcommand.
pub fn manpages(dir: &Path) -> Result<Vec<String>, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::Other(format!("cannot create {}: {e}", dir.display())))?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut write = |name: String, page: clap::Command| -> Result<(), CliError> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf).map_err(|e| CliError::Other(format!("cannot render {name}: {e}")))?;
        let path = dir.join(&name);
        std::fs::write(&path, buf).map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))?;
        written.push(name);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("paddock-{}", sub.get_name());
        write(format!("{name}.1"), sub.clone().display_name(name.clone()).bin_name(name.replace('-', " ")))?;
    }
    write("paddock.1".into(), cmd)?;
    Ok(written)
}
