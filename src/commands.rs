//! Dispatch: one function per command, returning the process exit code.
//! The host-side `service` commands act through [`service::HostService`];
//! completions and the man page are in [`docs`].

use std::path::PathBuf;

use crate::cli::{Cli, Command, InstallArgs, ProxyArgs, ServiceArgs, ServiceCommand};
use crate::error::{Error, Result};
use crate::host::{self, init};
use crate::operator;
use crate::protocol::layout::Layout;

mod docs;
mod service;

use service::HostService;

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
        Command::Completions(args) => docs::completions(args.shell),
        Command::Man => docs::man(),
        command => operator::run(command, &cli.config, json),
    }
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

/// The service `args` name, plain or proxied, resolved once.
fn service(args: &ServiceArgs) -> Result<HostService> {
    Ok(HostService::resolve(layout(args)?))
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
    let report = if args.stop {
        service::proxy_stop(&layout)
    } else if args.status {
        service::proxy_status(&layout)
    } else {
        service::proxy_start(&layout)
    };
    Ok(report.print(json))
}

fn run_service(cmd: ServiceCommand, json: bool) -> Result<i32> {
    let report = match cmd {
        ServiceCommand::Start(args) => service(&args)?.start(),
        ServiceCommand::Stop(args) => service(&args)?.stop(),
        ServiceCommand::Restart(args) => service(&args)?.restart(&progress(json)),
        ServiceCommand::Reload(args) => service(&args)?.reload(&progress(json)),
        ServiceCommand::Status(args) => service(&args)?.status(),
        ServiceCommand::Proxy(args) => return run_proxy(&args, json),
        ServiceCommand::Run(args) => return Ok(service(&args)?.run()),
        ServiceCommand::Supervise(args) => return Ok(service(&args)?.supervise()),
        ServiceCommand::Exec(args) => {
            let why = host::hooks::exec_interactive(&layout(&args.service)?, &args.command);
            return Err(Error::failed(why));
        }
        ServiceCommand::InstallUnit(args) => return install(&args, Init::Unit, json),
        ServiceCommand::InstallInitscript(args) => return install(&args, Init::Script, json),
    };
    Ok(report.print(json))
}

/// Progress lines of a restart behind the proxy (stderr, so `--json` stays one object).
fn progress(json: bool) -> impl Fn(&str, &str) {
    move |step: &str, text: &str| {
        if !json {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{step}: {text}");
        }
    }
}

/// Which init file to write.
enum Init {
    Unit,
    Script,
}

fn install(args: &InstallArgs, which: Init, json: bool) -> Result<i32> {
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
        // The file itself is the output, with `--json` too.
        docs::write_stdout(text.as_bytes())
            .map_err(|e| Error::failed(format!("cannot write the file: {e}")))?;
        return Ok(0);
    }
    init::install(&path, &text, mode).map_err(Error::failed)?;
    let wrote = path.display().to_string();
    Ok(service::Report::Wrote { wrote }.print(json))
}
