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
use crate::protocol::layout::Layout;
use crate::protocol::manifest::{MANIFEST_FILE, ReleaseManifest, RestartSpec};

/// Everything the generated files say, gathered before anything is written.
#[derive(Debug, Clone, PartialEq)]
pub struct InitSpec {
    /// Service name.
    pub name: String,
    /// Host root the layout lives under (`/` in production).
    pub root: PathBuf,
    /// Absolute path of the shipjar binary the files call.
    pub shipjar: PathBuf,
    /// User the unit runs as; `None` leaves it to root.
    pub user: Option<String>,
    /// That user's primary group, when it exists already.
    pub group: Option<String>,
    /// `[health] start_timeout`.
    pub start_timeout: Duration,
    /// `[stop] timeout` plus the stop hook's timeout.
    pub stop_timeout: Duration,
    /// `[restart]`.
    pub restart: RestartSpec,
    /// Log dir, `shared/` and run dir, which the service user writes.
    pub log_dir: PathBuf,
    /// `var/lib/NAME/shared`.
    pub shared_dir: PathBuf,
    /// `run/NAME`.
    pub run_dir: PathBuf,
}

impl InitSpec {
    /// From the release `current` points to (defaults when there is none yet).
    /// `user` overrides the release's user; without either, the service name.
    pub fn gather(
        layout: &Layout,
        shipjar: &Path,
        user: Option<String>,
    ) -> Result<InitSpec, String> {
        let manifest = current_manifest(layout)?;
        let user = user
            .or_else(|| manifest.as_ref().and_then(|m| m.run.user.clone()))
            .unwrap_or_else(|| layout.name().to_string());
        let group = nix::unistd::User::from_name(&user)
            .ok()
            .flatten()
            .and_then(|u| nix::unistd::Group::from_gid(u.gid).ok().flatten())
            .map(|g| g.name);
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
        Ok(InitSpec {
            name: layout.name().to_string(),
            root: layout.root().to_path_buf(),
            shipjar: shipjar.to_path_buf(),
            user: Some(user),
            group,
            start_timeout,
            stop_timeout,
            restart,
            log_dir: layout.log_dir(),
            shared_dir: layout.shared_dir(),
            run_dir: layout.run_dir(),
        })
    }
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
        user: Some("hello".into()),
        group: Some("hello".into()),
        start_timeout: Duration::from_secs(90),
        stop_timeout: Duration::from_secs(30),
        restart: RestartSpec::default(),
        log_dir: "/var/log/hello".into(),
        shared_dir: "/var/lib/hello/shared".into(),
        run_dir: "/run/hello".into(),
    }
}
