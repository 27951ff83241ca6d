//! Operator side: config, build, planning, transport, orchestration, output.

pub mod args;
pub mod build;
pub mod check;
pub mod config;
pub mod deploy;
pub mod exec;
pub mod fleet;
pub mod hooks;
pub mod init;
pub mod inspect;
pub mod output;
pub mod plan;
pub mod provision;
pub mod publish;
pub mod render;
pub mod repl;
pub mod repository;
pub mod secret_command;
pub mod select;
pub mod ssh;
pub mod traffic;
pub mod transport;

use std::path::Path;

use crate::cli::Command;
use crate::error::Result;
use config::Project;
use output::Reporter;

/// Runs an operator command.
pub fn run(command: Command, config: &Path, json: bool) -> Result<i32> {
    let reporter = Reporter::new(json);
    if let Command::Init(args) = &command {
        let text = init::init(config, args.name.as_deref())?;
        reporter.result(&serde_json::json!({"ok": true, "file": config}), &text);
        return Ok(0);
    }
    let project = Project::load(config)?;
    render::register_secret_variables(&project.config);
    match command {
        Command::Check(args) => check::check(&project, &args, &reporter),
        Command::Build(args) => {
            let manifest = build::build(&project, args.version.as_deref(), &reporter)?;
            let text = format!(
                "built {} (version {}, sha256 {})\n",
                manifest.artifact.display(),
                manifest.version,
                manifest.sha256
            );
            reporter.result(&manifest, &text);
            Ok(0)
        }
        Command::Provision(args) => provision::provision(&project, &args, &reporter),
        Command::Deploy(args) => deploy::deploy(&project, &args, &reporter),
        Command::Publish(args) => publish::publish(&project, &args, &reporter),
        Command::Rollback(args) => deploy::rollback(&project, &args, &reporter),
        Command::Restart(args) => deploy::restart(&project, &args, &reporter),
        Command::Status(args) => inspect::status(&project, &args, &reporter),
        Command::Releases(args) => inspect::releases(&project, &args, &reporter),
        Command::Logs(args) => inspect::logs(&project, &args, &reporter),
        Command::Unlock(args) => deploy::unlock(&project, &args.stage, &args.fleet, &reporter),
        Command::Exec(args) => exec::exec(&project, &args, &reporter),
        Command::Pause(args) => traffic::pause(&project, &args, &reporter),
        Command::Resume(args) => traffic::resume(&project, &args, &reporter),
        Command::Maintenance(args) => traffic::maintenance(&project, &args, &reporter),
        Command::Repl(args) => repl::repl(&project, &args, &reporter),
        Command::Init(_)
        | Command::Service(_)
        | Command::Agent(_)
        | Command::Completions(_)
        | Command::Man => {
            unreachable!("dispatched earlier")
        }
    }
}
