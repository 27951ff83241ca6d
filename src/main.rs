//! shipjar: build a JVM service, deploy it over SSH, supervise it on each host.

mod cli;
mod commands;
mod error;
mod host;
mod operator;
mod protocol;

use clap::Parser;

fn main() {
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
