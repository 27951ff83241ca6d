//! Operator side: config, build, planning, transport, orchestration, output.

pub mod config;
pub mod output;

use std::path::Path;

use crate::cli::Command;
use crate::error::Result;

/// Runs an operator command.
pub fn run(_command: Command, _config: &Path, _json: bool) -> Result<i32> {
    todo!("operator commands")
}
