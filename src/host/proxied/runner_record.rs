//! `run/NAME/proxy/runner.json`: who the runner is, and how it ended.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::host::os::procfs::ProcessId;
use crate::protocol::files;
use crate::protocol::layout::Layout;

/// `runner.json`: the runner's identity (pid and start time).
pub fn runner_path(layout: &Layout) -> PathBuf {
    layout.proxy_dir().join("runner.json")
}

/// What the runner records about itself: who it is, and how it ended when
/// it ended on its own terms (a runner killed leaves no end).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerRecord {
    /// The runner process.
    #[serde(flatten)]
    pub id: ProcessId,
    /// When it started (RFC 3339); absent in an older runner's record.
    #[serde(default)]
    pub started_at: Option<String>,
    /// How it ended: "stopped", "handed over", "start failed: …".
    #[serde(default)]
    pub ended: Option<String>,
    /// Whether that end was asked for (a stop or a hand-over).
    #[serde(default)]
    pub stopped_on_request: bool,
    /// When it ended (RFC 3339).
    #[serde(default)]
    pub ended_at: Option<String>,
}

/// Records the runner atomically.
pub fn write_runner(layout: &Layout, record: &RunnerRecord) -> Result<(), String> {
    crate::host::proxy::ensure_run_dir(layout)?;
    let text = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    let path = runner_path(layout);
    files::write_atomic(&path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The runner's record, if any.
pub fn read_runner(layout: &Layout) -> Option<RunnerRecord> {
    let text = fs::read(runner_path(layout)).ok()?;
    serde_json::from_slice(&text).ok()
}
