//! The proxy's files under `/run/<name>/proxy/`: its spec, the active
//! instance (replaced by rename, so a restarted proxy resumes where it was),
//! the keeper's record, the keeper's lock and the control socket.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::supervisor::procfs::ProcessId;
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

/// `keeper.lock`: held by the keeper while it lives.
pub fn lock_path(layout: &Layout) -> PathBuf {
    layout.proxy_dir().join("keeper.lock")
}

/// `control.sock`: the worker's control socket.
pub fn socket_path(layout: &Layout) -> PathBuf {
    layout.proxy_dir().join("control.sock")
}

/// Creates `dir` (`run/NAME/proxy/`, root's) when missing, mode 0755
/// whatever the umask (the unit's is 0027): like the rest of the run dir,
/// the records in it are for any user to read.
fn create_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    let err = |e: std::io::Error| format!("{}: {e}", dir.display());
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
    {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// Writes the spec the next proxy start reads.
pub fn write_spec(layout: &Layout, spec: &ProxySpec) -> Result<(), String> {
    create_dir(&layout.proxy_dir())?;
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
    let path = active_path(layout);
    let text = format!("{}\n", port.unwrap_or(0));
    files::write_atomic(&path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the keeper records about itself and its worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeeperRecord {
    /// The keeper process.
    pub keeper: ProcessId,
    /// The proxy process serving requests, when one runs.
    pub worker: Option<ProcessId>,
    /// When the worker was started (RFC 3339).
    pub worker_started_at: Option<String>,
    /// Workers started after the first one (crash restarts).
    pub restarts: u32,
    /// How the last worker ended, e.g. "killed by SIGKILL".
    pub last_exit: Option<String>,
    /// The address it listens on.
    pub listen: String,
}

/// Writes the keeper's record atomically.
pub fn write_keeper(layout: &Layout, record: &KeeperRecord) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    let path = keeper_path(layout);
    files::write_atomic(&path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The keeper's record, if there is one.
pub fn read_keeper(layout: &Layout) -> Option<KeeperRecord> {
    let text = fs::read(keeper_path(layout)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// `runner.lock`: held by the runner of the proxied service while it lives.
pub fn runner_lock_path(layout: &Layout) -> PathBuf {
    layout.proxy_dir().join("runner.lock")
}

/// `runner.json`: the runner's identity (pid and start time).
pub fn runner_path(layout: &Layout) -> PathBuf {
    layout.proxy_dir().join("runner.json")
}

/// Records the runner's identity atomically.
pub fn write_runner(layout: &Layout, id: &ProcessId) -> Result<(), String> {
    let text = serde_json::to_vec(id).map_err(|e| e.to_string())?;
    let path = runner_path(layout);
    files::write_atomic(&path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The runner's recorded identity, if any.
pub fn read_runner(layout: &Layout) -> Option<ProcessId> {
    let text = fs::read(runner_path(layout)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Takes the lock at `path` (the keeper's or the runner's) without waiting,
/// creating it and its directory; `Ok(None)` when another process holds it.
pub fn try_lock(path: &Path) -> Result<Option<File>, String> {
    if let Some(dir) = path.parent() {
        create_dir(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
    }
}

/// Whether a live process holds the lock at `path`.
pub fn lock_held(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}
