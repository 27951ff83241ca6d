//! The proxy's files under `/run/<name>/proxy/`: its spec, the active
//! instance (replaced by rename, so a restarted proxy resumes where it was),
//! the keeper's record and the control socket. Their
//! locks are in `/run/<name>/locks/` ([`crate::host::lockfile`]).

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::host::os::procfs::ProcessId;
use crate::protocol::files;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;

/// `spec.json`: what the proxy listens on and forwards to.
pub fn spec_path(layout: &Layout) -> PathBuf {
    layout.proxy_dir().join("spec.json")
}

/// `active`: the port of the instance taking traffic, one line.
pub fn active_path(layout: &Layout) -> PathBuf {
    layout.proxy_dir().join("active")
}

/// `keeper.json`: the keeper's and the worker's identity, restarts.
pub fn keeper_path(layout: &Layout) -> PathBuf {
    layout.proxy_dir().join("keeper.json")
}

/// `control.sock`: the worker's control socket.
pub fn socket_path(layout: &Layout) -> PathBuf {
    layout.proxy_dir().join("control.sock")
}

/// Creates `/run/<name>/proxy/` (root's) when missing (a reboot empties
/// `/run`), mode 0755 whatever the umask (the unit's is 0027): like the rest
/// of the run dir, the records in it are for any user to read.
pub fn ensure_dir(layout: &Layout) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = layout.proxy_dir();
    if dir.is_dir() {
        return Ok(());
    }
    let err = |e: std::io::Error| format!("{}: {e}", dir.display());
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
    {
        Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// Writes the spec the next proxy start reads.
pub fn write_spec(layout: &Layout, spec: &ProxySpec) -> Result<(), String> {
    ensure_dir(layout)?;
    let text = serde_json::to_vec_pretty(spec).map_err(|e| e.to_string())?;
    let path = spec_path(layout);
    files::write_atomic(&path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The spec the proxy runs with.
pub fn read_spec(layout: &Layout) -> Result<ProxySpec, String> {
    let path = spec_path(layout);
    let text = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The active instance's port as recorded; `None` when there is none.
pub fn read_active(layout: &Layout) -> Option<u16> {
    fs::read_to_string(active_path(layout))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|p| *p != 0)
}

/// Records the active instance (`None`: no instance takes traffic).
pub fn write_active(layout: &Layout, port: Option<u16>) -> Result<(), String> {
    ensure_dir(layout)?;
    let path = active_path(layout);
    let text = format!("{}\n", port.unwrap_or(0));
    files::write_atomic(&path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the keeper records about itself and its worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeeperRecord {
    /// The keeper process.
    pub keeper: ProcessId,
    /// When the keeper started (RFC 3339); absent in an older keeper's record.
    #[serde(default)]
    pub started_at: Option<String>,
    /// The proxy process serving requests, when one runs.
    pub worker: Option<ProcessId>,
    /// When the worker was started (RFC 3339).
    pub worker_started_at: Option<String>,
    /// Workers started after the first one (crash restarts).
    pub restarts: u32,
    /// How the last worker ended, e.g. "killed by SIGKILL"; "stopped"
    /// once the keeper itself was stopped.
    pub last_exit: Option<String>,
    /// When that was (RFC 3339).
    #[serde(default)]
    pub last_exit_at: Option<String>,
    /// The address it listens on.
    pub listen: String,
}

/// Writes the keeper's record atomically.
pub fn write_keeper(layout: &Layout, record: &KeeperRecord) -> Result<(), String> {
    ensure_dir(layout)?;
    let text = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    let path = keeper_path(layout);
    files::write_atomic(&path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The keeper's record, if there is one.
pub fn read_keeper(layout: &Layout) -> Option<KeeperRecord> {
    let text = fs::read(keeper_path(layout)).ok()?;
    serde_json::from_slice(&text).ok()
}
