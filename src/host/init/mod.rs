//! Init-system integration: a systemd unit and an LSB init script, both
//! generated from the service's current release and both delegating every
//! action to `shipjar service`.

mod initscript;
mod unit;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::defaults;
use crate::protocol::layout::{Dir, Layout};
use crate::protocol::manifest::{MANIFEST_FILE, ReleaseManifest, RestartSpec};

/// Everything the generated files say, gathered before anything is written.
/// Nothing in it depends on who runs the service: the unit's main process
/// (the supervisor) runs as root and drops to the release's user for the
/// service alone, as `service start` does.
#[derive(Debug, Clone, PartialEq)]
pub struct InitSpec {
    /// Service name.
    pub name: String,
    /// Host root the layout lives under (`/` in production).
    pub root: PathBuf,
    /// Absolute path of the shipjar binary the files call.
    pub shipjar: PathBuf,
    /// `[health] start_timeout`.
    pub start_timeout: Duration,
    /// `[stop] timeout` plus the stop hook's timeout.
    pub stop_timeout: Duration,
    /// `[restart]`.
    pub restart: RestartSpec,
    /// Log dir and `shared/`, which the service writes.
    pub log_dir: PathBuf,
    /// `var/lib/NAME/shared`.
    pub shared_dir: PathBuf,
    /// `run/NAME`.
    pub run_dir: PathBuf,
    /// Mode of `run/NAME` (the layout's table).
    pub run_mode: u32,
}

impl InitSpec {
    /// From the release `current` points to (defaults when there is none
    /// yet): the unit's timeouts and restart limits are the release's, so a
    /// deploy that changes them rewrites the unit ([`refresh_unit`]).
    pub fn gather(layout: &Layout, shipjar: &Path) -> Result<InitSpec, String> {
        let manifest = current_manifest(layout)?;
        let (start_timeout, stop_timeout, restart) = match &manifest {
            Some(m) => {
                let hook = if m.stop.hook.is_some() {
                    m.stop.hook_timeout_ms
                } else {
                    0
                };
                (
                    Duration::from_millis(m.health.start_timeout_ms),
                    Duration::from_millis(m.stop.timeout_ms + hook),
                    m.restart.clone(),
                )
            }
            // No release yet: what a release would carry by default.
            None => (
                defaults::START_TIMEOUT,
                defaults::STOP_TIMEOUT,
                RestartSpec::default(),
            ),
        };
        let run = layout.directory(Dir::Run);
        Ok(InitSpec {
            name: layout.name().to_string(),
            root: layout.root().to_path_buf(),
            shipjar: shipjar.to_path_buf(),
            start_timeout,
            stop_timeout,
            restart,
            log_dir: layout.log_dir(),
            shared_dir: layout.shared_dir(),
            run_dir: run.path,
            run_mode: run.mode,
        })
    }
}

/// The path this binary was started as, which is the agent path the
/// operator uses (`AGENT_PATH agent …`), the one `provision` writes into the
/// unit; the resolved executable when started by a bare name.
pub fn this_binary() -> Result<PathBuf, String> {
    if let Some(arg0) = std::env::args_os().next().map(PathBuf::from)
        && arg0.is_absolute()
    {
        return Ok(arg0);
    }
    std::env::current_exe().map_err(|e| format!("cannot find the shipjar executable: {e}"))
}

/// Rewrites the installed unit when what `current` asks for differs from
/// it (a release with other timeouts or restart limits); true when it did,
/// and the caller must `systemctl daemon-reload`. Provision renders the same
/// text from the same release, so the two never undo each other.
pub fn refresh_unit(layout: &Layout, shipjar: &Path) -> Result<bool, String> {
    let text = unit_text(&InitSpec::gather(layout, shipjar)?)?;
    let path = unit_path(layout);
    if fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    install(&path, &text, 0o644)?;
    Ok(true)
}

/// The current release's manifest; `None` before the first deploy.
fn current_manifest(layout: &Layout) -> Result<Option<ReleaseManifest>, String> {
    let path = layout.current_link().join(MANIFEST_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The systemd unit's text.
pub fn unit_text(spec: &InitSpec) -> Result<String, String> {
    unit::render(spec)
}

/// The LSB init script's text.
pub fn initscript_text(spec: &InitSpec) -> String {
    initscript::render(spec)
}

/// `<root>/etc/systemd/system/<name>.service`.
pub fn unit_path(layout: &Layout) -> PathBuf {
    layout
        .root()
        .join("etc/systemd/system")
        .join(format!("{}.service", layout.name()))
}

/// `<root>/etc/init.d/<name>`.
pub fn initscript_path(layout: &Layout) -> PathBuf {
    layout.root().join("etc/init.d").join(layout.name())
}

/// Writes `text` to `path` with `mode`, atomically (temp file + rename).
pub fn install(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", path.display()))?;
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.shipjar-tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let result = fs::write(&tmp, text)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(format!("{}: {e}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn sample_spec() -> InitSpec {
    InitSpec {
        name: "hello".into(),
        root: "/".into(),
        shipjar: "/usr/local/bin/shipjar".into(),
        start_timeout: Duration::from_secs(90),
        stop_timeout: Duration::from_secs(30),
        restart: RestartSpec::default(),
        log_dir: "/var/log/hello".into(),
        shared_dir: "/var/lib/hello/shared".into(),
        run_dir: "/run/hello".into(),
        run_mode: 0o755,
    }
}
