//! shipjar: build a JVM service, deploy it over SSH, supervise it on each host.

mod cli;
mod commands;
mod error;
// Root's file operations go through host::fs; see clippy.toml.
#[deny(clippy::disallowed_methods)]
mod host;
mod operator;
mod protocol;

use clap::Parser;

fn main() {
    // A bug must still end in a message and a meaningful exit code, not an abort (134).
    std::panic::set_hook(Box::new(|info| {
        eprintln!("shipjar: internal error: {info}");
        eprintln!("  this is a bug in shipjar; nothing more was changed after this point");
        std::process::exit(2);
    }));
    let cli = cli::Cli::parse();
    let json = cli.json;
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            operator::output::print_error(&err, json);
            err.exit_code()
        }
    };
    std::process::exit(code);
}
