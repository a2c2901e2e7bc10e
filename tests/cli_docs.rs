//! Shell completions and man pages come from the parser's own definitions:
//! every subcommand is in each completion script and has a man page.

use std::process::Command;

fn paddock(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_paddock")).args(args).output().expect("run paddock");
    assert!(out.status.success(), "paddock {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The subcommands, from `paddock --help`.
fn subcommands() -> Vec<String> {
    let help = paddock(&["--help"]);
    let section = help.split("Commands:").nth(1).expect("a Commands section");
    let section = section.split("Options:").next().unwrap_or(section);
    section.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| *w != "help").map(String::from).collect()
}

#[test]
fn completion_scripts_cover_every_subcommand_and_bash_parses_its_own() {
    let subs = subcommands();
    assert!(subs.iter().any(|s| s == "stats") && subs.iter().any(|s| s == "up"), "{subs:?}");
    for shell in ["bash", "zsh", "fish"] {
        let script = paddock(&["completions", shell]);
        for s in &subs {
            assert!(script.contains(s.as_str()), "{shell} completion lacks `{s}`");
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("paddock.bash");
    std::fs::write(&file, paddock(&["completions", "bash"])).expect("write");
    let ok = Command::new("bash").arg("-n").arg(&file).status().expect("bash -n");
    assert!(ok.success(), "the bash completion script does not parse");
    let out = Command::new(env!("CARGO_BIN_EXE_paddock")).args(["completions", "tcsh"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_pages_are_written_for_the_command_and_each_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    paddock(&["manpages", dir.path().to_str().expect("path")]);
    let page = std::fs::read_to_string(dir.path().join("paddock.1")).expect("paddock.1");
    assert!(page.contains(".TH paddock 1"), "{page}");
    for s in subcommands() {
        let page = std::fs::read_to_string(dir.path().join(format!("paddock-{s}.1"))).unwrap_or_else(|e| panic!("paddock-{s}.1: {e}"));
        assert!(page.contains(&format!(".TH paddock-{s} 1")), "paddock-{s}.1 has no title");
    }
    let stats = std::fs::read_to_string(dir.path().join("paddock-stats.1")).expect("stats page");
    assert!(stats.contains("CPU time"), "the page lacks the command's help text");
}
