//! Dispatch: one function per command, returning the process exit code.

use std::path::PathBuf;

use crate::cli::{Cli, Command, InstallArgs, ProxyArgs, ServiceArgs, ServiceCommand, Shell};
use crate::error::{Error, Result};
use crate::host::{self, init, supervisor};
use crate::operator;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;

/// `println!` that never panics: a closed stdout (`shipjar service status
/// NAME | head -1`) is the reader's choice, not a failure of the command.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<i32> {
    if let Some(dir) = &cli.chdir {
        std::env::set_current_dir(dir)
            .map_err(|e| Error::config(format!("-C {}: {e}", dir.display())))?;
    }
    let json = cli.json;
    match cli.command {
        Command::Service(cmd) => run_service(cmd, json),
        Command::Agent(args) => Ok(crate::host::agent::run(&absolute(&args.root)?)),
        Command::Completions(args) => completions(args.shell),
        Command::Man => man(),
        command => operator::run(command, &cli.config, json),
    }
}

/// Writes the completion script for `shell` to stdout, from the CLI definition.
fn completions(shell: Shell) -> Result<i32> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    // Generated into memory: clap_complete panics when its writer fails, and
    // `shipjar completions zsh | head -1` closes the pipe early.
    let mut out = Vec::new();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "shipjar", &mut out)
        }
        Shell::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "shipjar", &mut out)
        }
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "shipjar", &mut out)
        }
    }
    write_stdout(&out).map_err(|e| Error::failed(format!("cannot write the completions: {e}")))?;
    Ok(0)
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes the man page to stdout.
fn man() -> Result<i32> {
    let failed = |e: std::io::Error| Error::failed(format!("cannot write the man page: {e}"));
    let text = man_page().map_err(failed)?;
    write_stdout(text.as_bytes()).map_err(failed)?;
    Ok(0)
}

/// The man page (roff), from the CLI definition: the top-level page, then one
/// section per visible subcommand (and per `service` action).
fn man_page() -> std::io::Result<String> {
    use clap::CommandFactory;
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

fn absolute(path: &PathBuf) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::config(format!("{}: {e}", path.display())))
}

fn layout(args: &ServiceArgs) -> Result<Layout> {
    crate::protocol::validate_service_name(&args.name).map_err(Error::config)?;
    let layout = Layout::new(absolute(&args.root)?, &args.name).with_instance(args.instance);
    // What a service command prints may carry what the service said.
    host::secrets::mask_with(&layout);
    Ok(layout)
}

/// A proxied service (its `current` release has `[proxy]`) addressed as a
/// whole: `start`, `stop` and `status` cover the proxy and both instances.
fn proxied(args: &ServiceArgs) -> Result<Option<(Layout, ProxySpec)>> {
    let layout = layout(args)?;
    if args.instance.is_some() {
        return Ok(None);
    }
    Ok(host::proxied::spec(&layout).map(|spec| (layout, spec)))
}

/// `service status` of a proxied service: the proxy, both instances and
/// the runner; the LSB code of the whole.
fn print_proxied_status(layout: &Layout, spec: &ProxySpec, json: bool) -> i32 {
    let status = host::proxied::status(layout, spec);
    if json {
        print_json(&status);
    } else {
        say!("{}", status.line());
        for line in status.instance_lines() {
            say!("{line}");
        }
        if let Some(pid) = status.runner_pid {
            let since = status
                .runner_started_at
                .as_deref()
                .map(|t| format!(", started at {t}"))
                .unwrap_or_default();
            say!("runner pid {pid}{since}");
        }
        for part in &status.missing {
            say!("{}", host::secrets::mask(&part.line()));
        }
        // The whole's state last, as a plain service's status says it.
        match &status.service_state {
            Some(host::supervisor::ServiceState::Running) => {
                say!("running: the proxy, its runner and the active instance")
            }
            Some(host::supervisor::ServiceState::Stopped) => {
                say!("stopped: the proxy and both instances")
            }
            Some(state) => say!("{state}: {} part(s) missing", status.missing.len()),
            None => {}
        }
    }
    host::proxied::lsb_code(&status)
}

fn run_proxy(args: &ProxyArgs, json: bool) -> Result<i32> {
    crate::protocol::validate_service_name(&args.name).map_err(Error::config)?;
    let layout = Layout::new(absolute(&args.root)?, &args.name);
    if args.worker {
        return Ok(host::proxy::run_worker(&layout));
    }
    if args.foreground {
        return Ok(host::proxy::run_keeper(&layout));
    }
    if args.stop {
        return match host::proxy::stop(&layout) {
            Ok(true) => {
                say!("proxy stopped");
                Ok(0)
            }
            Ok(false) => {
                say!("proxy not running");
                Ok(0)
            }
            Err(e) => Err(Error::failed(e)),
        };
    }
    if !args.status {
        let spec = host::proxied::spec(&layout).ok_or_else(|| {
            Error::failed(format!(
                "the current release of {} has no [proxy] section",
                args.name
            ))
        })?;
        host::proxy::ensure_running(&layout, &spec).map_err(Error::failed)?;
    }
    let status = host::proxy::status(&layout);
    if json {
        print_json(&status);
    } else {
        let active = status
            .active
            .map_or("none".to_string(), |p| format!("127.0.0.1:{p}"));
        say!("{}, active instance {active}", status.line());
    }
    Ok(match status.state {
        host::proxy::ProxyState::Running => 0,
        host::proxy::ProxyState::Stopped => 3,
        _ => 1,
    })
}

fn run_service(cmd: ServiceCommand, json: bool) -> Result<i32> {
    match cmd {
        ServiceCommand::Start(args) => match proxied(&args)? {
            Some((layout, spec)) => report_start(
                host::proxied::start(&layout, &spec).map(|report| supervisor::StartOutcome {
                    report,
                    replaced_pid: None,
                    replaced_how: None,
                }),
                json,
            ),
            None => report_start(supervisor::start_outcome(&layout(&args)?), json),
        },
        ServiceCommand::Proxy(args) => run_proxy(&args, json),
        ServiceCommand::Restart(args) => match proxied(&args)? {
            Some((layout, spec)) => report_start(
                host::proxied::restart(&layout, &spec, &progress(json)).map(|report| {
                    supervisor::StartOutcome {
                        report,
                        replaced_pid: None,
                        replaced_how: None,
                    }
                }),
                json,
            ),
            None => {
                let layout = layout(&args)?;
                let _switching =
                    crate::host::lockfile::hold_switch(&layout).map_err(Error::failed)?;
                report_start(supervisor::restart(&layout), json)
            }
        },
        ServiceCommand::Reload(args) => {
            let result = match proxied(&args)? {
                Some((layout, spec)) => host::proxied::reload(&layout, &spec, &progress(json)),
                None => {
                    let layout = layout(&args)?;
                    let _switching =
                        crate::host::lockfile::hold_switch(&layout).map_err(Error::failed)?;
                    supervisor::reload(&layout)
                }
            };
            match result {
                Ok(report) => {
                    if json {
                        print_json(&report);
                    } else {
                        say!("reloaded: {} ({} ms)", report.how, report.took_ms);
                    }
                    Ok(0)
                }
                Err(err) => Ok(report_supervisor_error(&err, json)),
            }
        }
        // Behind the proxy, the runner owns the whole: as the unit's main
        // process (`run`), or detached, as `service start` spawns it (`supervise`).
        ServiceCommand::Run(args) => Ok(match proxied(&args)? {
            Some((layout, _)) => {
                host::proxied::runner::run(&layout, host::proxied::runner::Mode::Foreground)
            }
            None => supervisor::run(&layout(&args)?),
        }),
        ServiceCommand::Supervise(args) => Ok(match proxied(&args)? {
            Some((layout, _)) => {
                host::proxied::runner::run(&layout, host::proxied::runner::Mode::Detached)
            }
            None => supervisor::supervise(&layout(&args)?),
        }),
        ServiceCommand::Stop(args) => match proxied(&args)? {
            Some((layout, spec)) => match host::proxied::stop(&layout, &spec) {
                Ok(()) => {
                    say!("stopped: both instances and the proxy");
                    Ok(0)
                }
                Err(err) => Ok(report_supervisor_error(&err, json)),
            },
            None => match supervisor::stop(&layout(&args)?) {
                Ok(report) => {
                    if json {
                        print_json(&report);
                    } else if report.was_running {
                        let dump = if report.thread_dump {
                            "; a thread dump is in the service log"
                        } else {
                            ""
                        };
                        let what = match report.unsupervised_pid {
                            Some(pid) => format!("the unsupervised service pid {pid} "),
                            None => String::new(),
                        };
                        say!(
                            "stopped: {what}{} ({} ms{dump})",
                            report.how,
                            report.took_ms
                        );
                    } else {
                        say!("not running");
                    }
                    Ok(0)
                }
                Err(err) => Ok(report_supervisor_error(&err, json)),
            },
        },
        ServiceCommand::Status(args) => match proxied(&args)? {
            Some((layout, spec)) => Ok(print_proxied_status(&layout, &spec, json)),
            None => {
                let status = supervisor::status(&layout(&args)?);
                if json {
                    print_json(&status);
                } else {
                    say!("{}", host::secrets::mask(&status.detail));
                    if let Some(reverted) = &status.auto_reverted {
                        say!("auto-reverted {}", host::secrets::mask(reverted));
                    }
                }
                Ok(status.lsb_code)
            }
        },
        ServiceCommand::InstallUnit(args) => install(&args, Init::Unit),
        ServiceCommand::InstallInitscript(args) => install(&args, Init::Script),
    }
}

/// Progress lines of a restart behind the proxy (stderr, so `--json` stays one object).
fn progress(json: bool) -> impl Fn(&str, &str) {
    move |step: &str, text: &str| {
        if !json {
            eprintln!("{step}: {text}");
        }
    }
}

/// Which init file to write.
enum Init {
    Unit,
    Script,
}

fn install(args: &InstallArgs, which: Init) -> Result<i32> {
    let layout = layout(&ServiceArgs {
        name: args.name.clone(),
        root: args.root.clone(),
        instance: None,
    })?;
    let shipjar = match &args.shipjar {
        Some(path) => absolute(path)?,
        None => std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(|e| Error::failed(format!("cannot find the shipjar executable: {e}")))?,
    };
    let spec = init::InitSpec::gather(&layout, &shipjar).map_err(Error::failed)?;
    let (text, path, mode) = match which {
        Init::Unit => (
            init::unit_text(&spec).map_err(Error::config)?,
            init::unit_path(&layout),
            0o644,
        ),
        Init::Script => (
            init::initscript_text(&spec),
            init::initscript_path(&layout),
            0o755,
        ),
    };
    if args.stdout {
        print!("{text}");
    } else {
        init::install(&path, &text, mode).map_err(Error::failed)?;
        say!("wrote {}", path.display());
    }
    Ok(0)
}

fn report_start(
    result: std::result::Result<supervisor::StartOutcome, supervisor::SupervisorError>,
    json: bool,
) -> Result<i32> {
    match result {
        Ok(outcome) => {
            if json {
                print_json(&outcome);
            } else {
                print!("{}", start_text(&outcome));
            }
            Ok(0)
        }
        Err(err) => Ok(report_supervisor_error(&err, json)),
    }
}

/// What `service start` says, one line per thing it did.
fn start_text(outcome: &supervisor::StartOutcome) -> String {
    let mut text = String::new();
    if let Some(pid) = outcome.replaced_pid {
        let how = outcome.replaced_how.as_deref().unwrap_or("stopped");
        text.push_str(&format!(
            "replaced an unsupervised service pid {pid} (its supervisor was gone): {how}\n"
        ));
    }
    let report = &outcome.report;
    let release = if report.release.is_empty() {
        "release unknown".to_string()
    } else {
        format!("release {}", report.release)
    };
    if report.already_running {
        text.push_str(&format!(
            "already running: pid {} ({release})\n",
            report.pid
        ));
    } else {
        text.push_str(&format!(
            "started: pid {} ({release}), healthy after {} ms\n",
            report.pid, report.healthy_after_ms
        ));
    }
    text
}

fn report_supervisor_error(err: &supervisor::SupervisorError, json: bool) -> i32 {
    if json {
        print_json(err);
    } else {
        eprintln!("error: {}", host::secrets::mask(&err.message));
        if !err.log_tail.is_empty() {
            eprintln!("last lines of the service log:");
            for line in &err.log_tail {
                eprintln!("  {}", host::secrets::mask(line));
            }
        }
    }
    1
}

fn print_json<T: serde::Serialize>(value: &T) {
    let masked = serde_json::to_value(value).map(|v| match host::secrets::active() {
        Some(masker) => masker.mask_json_values(v, &[]),
        None => v,
    });
    match masked.and_then(|v| serde_json::to_string(&v)) {
        Ok(text) => say!("{text}"),
        Err(e) => eprintln!("error: cannot encode JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::supervisor::{StartOutcome, StartReport};

    fn outcome(release: &str, already_running: bool, replaced: Option<i32>) -> StartOutcome {
        StartOutcome {
            report: StartReport {
                pid: 42,
                release: release.to_string(),
                healthy_after_ms: 7,
                already_running,
            },
            replaced_pid: replaced,
            replaced_how: replaced.map(|_| "terminated after SIGTERM".to_string()),
        }
    }

    #[test]
    fn start_never_prints_an_empty_release() {
        assert_eq!(
            start_text(&outcome("", true, None)),
            "already running: pid 42 (release unknown)\n"
        );
        assert_eq!(
            start_text(&outcome("r1", true, None)),
            "already running: pid 42 (release r1)\n"
        );
        assert_eq!(
            start_text(&outcome("r1", false, Some(17))),
            "replaced an unsupervised service pid 17 (its supervisor was gone): terminated after SIGTERM\n\
             started: pid 42 (release r1), healthy after 7 ms\n"
        );
    }

    use clap::CommandFactory;

    fn script(shell: clap_complete::Shell) -> String {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "shipjar", &mut out);
        String::from_utf8(out).expect("completion scripts are text")
    }

    #[test]
    fn every_completion_script_is_produced_and_bash_parses_its_own() {
        let bash = script(clap_complete::Shell::Bash);
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
        let zsh = script(clap_complete::Shell::Zsh);
        assert!(zsh.starts_with("#compdef shipjar") && zsh.contains("deploy"));
        let fish = script(clap_complete::Shell::Fish);
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
