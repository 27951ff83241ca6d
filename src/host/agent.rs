//! The agent: reads JSON requests on stdin, applies them to this host.

use std::path::Path;

/// Runs the agent until stdin closes; returns the exit code.
pub fn run(_root: &Path) -> i32 {
    todo!("agent")
}
