//! `shipjar completions` and `shipjar man`: generated from the clap
//! definition in `cli.rs`, so they cannot drift from the CLI.

use clap::CommandFactory;

use crate::cli::{Cli, Shell};
use crate::error::{Error, Result};

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: Shell) -> Result<i32> {
    let out = completion_script(shell);
    write_stdout(&out).map_err(|e| Error::failed(format!("cannot write the completions: {e}")))?;
    Ok(0)
}

/// The completion script for `shell`. Generated into memory: clap_complete
/// panics when its writer fails, and `shipjar completions zsh | head -1`
/// closes the pipe early.
fn completion_script(shell: Shell) -> Vec<u8> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "shipjar", &mut out);
    out
}

/// Writes the man page to stdout.
pub fn man() -> Result<i32> {
    let failed = |e: std::io::Error| Error::failed(format!("cannot write the man page: {e}"));
    let text = man_page().map_err(failed)?;
    write_stdout(text.as_bytes()).map_err(failed)?;
    Ok(0)
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// The man page (roff), from the CLI definition: the top-level page, then one
/// section per visible subcommand (and per `service` action).
fn man_page() -> std::io::Result<String> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        man_section(&mut out, &format!("shipjar {}", sub.get_name()), sub)?;
        for nested in sub.get_subcommands().filter(|c| !c.is_hide_set()) {
            let name = format!("shipjar {} {}", sub.get_name(), nested.get_name());
            man_section(&mut out, &name, nested)?;
        }
    }
    // The after_help text is the examples; say so rather than clap_mangen's "EXTRA".
    Ok(String::from_utf8_lossy(&out)
        .replace("\n.SH EXTRA\n", "\n.SH EXAMPLES\n")
        .replace("\n.SS EXTRA\n", "\n.SS EXAMPLES\n"))
}

/// One subcommand as a section of the man page: its synopsis, description,
/// options and examples as subsections.
fn man_section(out: &mut Vec<u8>, title: &str, cmd: &clap::Command) -> std::io::Result<()> {
    use std::io::Write;
    let cmd = cmd.clone().bin_name(title.to_string());
    let man = clap_mangen::Man::new(cmd.clone());
    let mut part = Vec::new();
    man.render_synopsis_section(&mut part)?;
    man.render_description_section(&mut part)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut part)?;
    }
    if cmd.get_after_help().is_some() {
        man.render_extra_section(&mut part)?;
    }
    writeln!(out, ".SH \"{}\"", title.to_uppercase())?;
    for line in String::from_utf8_lossy(&part).lines() {
        match line.strip_prefix(".SH ") {
            Some(heading) => writeln!(out, ".SS {heading}")?,
            None => writeln!(out, "{line}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        String::from_utf8(completion_script(shell)).expect("completion scripts are text")
    }

    #[test]
    fn every_completion_script_is_produced_and_bash_parses_its_own() {
        let bash = script(Shell::Bash);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bash).unwrap();
        let checked = std::process::Command::new("bash")
            .arg("-n")
            .arg(file.path())
            .output()
            .expect("bash runs");
        assert!(
            checked.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
        assert!(bash.contains("complete -F _shipjar") && bash.contains("rollback"));
        let zsh = script(Shell::Zsh);
        assert!(zsh.starts_with("#compdef shipjar") && zsh.contains("deploy"));
        let fish = script(Shell::Fish);
        assert!(fish.contains("complete -c shipjar") && fish.contains("provision"));
    }

    #[test]
    fn the_man_page_has_a_section_for_every_subcommand() {
        let page = man_page().unwrap();
        let cmd = Cli::command();
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            let heading = format!(".SH \"SHIPJAR {}\"", sub.get_name().to_uppercase());
            assert!(page.contains(&heading), "no {heading}");
            for nested in sub.get_subcommands().filter(|c| !c.is_hide_set()) {
                let name = format!("SHIPJAR {} {}", sub.get_name(), nested.get_name());
                assert!(page.contains(&name.to_uppercase()), "no {name}");
            }
        }
        assert!(page.contains(".SS EXAMPLES") && !page.contains("EXTRA"));
        assert!(!page.contains("SHIPJAR AGENT"), "hidden commands stay out");
    }

    #[test]
    fn every_subcommand_has_an_example_in_its_help() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            assert!(
                sub.get_after_help().is_some(),
                "{} has no example",
                sub.get_name()
            );
            for nested in sub.get_subcommands().filter(|c| !c.is_hide_set()) {
                assert!(
                    nested.get_after_help().is_some(),
                    "{} {} has no example",
                    sub.get_name(),
                    nested.get_name()
                );
            }
        }
    }
}
