//! Dispatch: one function per command, returning the process exit code.

use std::path::PathBuf;

use crate::cli::{Cli, Command, InstallArgs, ServiceArgs, ServiceCommand};
use crate::error::{Error, Result};
use crate::host::{init, supervisor};
use crate::operator;
use crate::protocol::layout::Layout;

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
        command => operator::run(command, &cli.config, json),
    }
}

fn absolute(path: &PathBuf) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::config(format!("{}: {e}", path.display())))
}

fn layout(args: &ServiceArgs) -> Result<Layout> {
    crate::protocol::validate_service_name(&args.name).map_err(Error::config)?;
    Ok(Layout::new(absolute(&args.root)?, &args.name))
}

fn run_service(cmd: ServiceCommand, json: bool) -> Result<i32> {
    match cmd {
        ServiceCommand::Start(args) => report_start(supervisor::start(&layout(&args)?), json),
        ServiceCommand::Restart(args) => report_start(supervisor::restart(&layout(&args)?), json),
        ServiceCommand::Stop(args) => match supervisor::stop(&layout(&args)?) {
            Ok(report) => {
                if json {
                    print_json(&report);
                } else if report.was_running {
                    let dump = if report.thread_dump {
                        "; a thread dump is in the service log"
                    } else {
                        ""
                    };
                    println!("stopped: {} ({} ms{dump})", report.how, report.took_ms);
                } else {
                    println!("not running");
                }
                Ok(0)
            }
            Err(err) => Ok(report_supervisor_error(&err, json)),
        },
        ServiceCommand::Status(args) => {
            let status = supervisor::status(&layout(&args)?);
            if json {
                print_json(&status);
            } else {
                println!("{}", status.detail);
            }
            Ok(status.lsb_code)
        }
        ServiceCommand::Supervise(args) => Ok(supervisor::supervise(&layout(&args)?)),
        ServiceCommand::Run(args) => Ok(supervisor::run(&layout(&args)?)),
        ServiceCommand::Reload(args) => match supervisor::reload(&layout(&args)?) {
            Ok(report) => {
                if json {
                    print_json(&report);
                } else {
                    println!("reloaded: {} ({} ms)", report.how, report.took_ms);
                }
                Ok(0)
            }
            Err(err) => Ok(report_supervisor_error(&err, json)),
        },
        ServiceCommand::InstallUnit(args) => install(&args, Init::Unit),
        ServiceCommand::InstallInitscript(args) => install(&args, Init::Script),
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
        println!("wrote {}", path.display());
    }
    Ok(0)
}

fn report_start(
    result: std::result::Result<supervisor::StartReport, supervisor::SupervisorError>,
    json: bool,
) -> Result<i32> {
    match result {
        Ok(report) => {
            if json {
                print_json(&report);
            } else if report.already_running {
                println!(
                    "already running: pid {} (release {})",
                    report.pid, report.release
                );
            } else {
                println!(
                    "started: pid {} (release {}), healthy after {} ms",
                    report.pid, report.release, report.healthy_after_ms
                );
            }
            Ok(0)
        }
        Err(err) => Ok(report_supervisor_error(&err, json)),
    }
}

fn report_supervisor_error(err: &supervisor::SupervisorError, json: bool) -> i32 {
    if json {
        print_json(err);
    } else {
        eprintln!("error: {}", err.message);
        if !err.log_tail.is_empty() {
            eprintln!("last lines of the service log:");
            for line in &err.log_tail {
                eprintln!("  {line}");
            }
        }
    }
    1
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot encode JSON: {e}"),
    }
}
