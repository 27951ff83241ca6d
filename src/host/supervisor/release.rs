//! Finding the release to run: `current` resolved to its real directory, and
//! that directory's `RELEASE` manifest.

use std::fs;
use std::path::{Path, PathBuf};

use crate::protocol::layout::Layout;
use crate::protocol::manifest::{
    HealthCheck, MANIFEST_FILE, MANIFEST_FORMAT, ReleaseManifest, StopHook,
};

/// A release directory and its manifest.
#[derive(Debug, Clone)]
pub struct Release {
    /// Real path of `releases/<id>` (symlinks resolved).
    pub dir: PathBuf,
    /// Its `RELEASE` manifest.
    pub manifest: ReleaseManifest,
}

/// The release `current` points to, resolved to the real directory so the
/// process keeps its release even after `current` moves.
pub fn current(layout: &Layout) -> Result<Release, String> {
    let link = layout.current_link();
    let dir = fs::canonicalize(&link).map_err(|e| {
        if fs::symlink_metadata(&link).is_err() {
            format!("no current release: {} does not exist", link.display())
        } else {
            format!("current release {}: {e}", link.display())
        }
    })?;
    load(&dir).map(|r| for_instance(layout, r))
}

/// An instance behind the proxy runs with its port in `[proxy] port_env`,
/// and its health, version and stop-hook URLs aim at that port.
pub fn for_instance(layout: &Layout, mut release: Release) -> Release {
    let (Some(port), Some(proxy)) = (layout.instance(), release.manifest.proxy.clone()) else {
        return release;
    };
    let m = &mut release.manifest;
    m.run.env.insert(proxy.port_env, port.to_string());
    match &mut m.health.check {
        HealthCheck::Http { url } => *url = with_port(url, port),
        HealthCheck::Tcp { port: p } => *p = port,
        HealthCheck::None => {}
    }
    if let Some(v) = &mut m.version_check {
        v.url = with_port(&v.url, port);
    }
    if let Some(StopHook::Http { url }) = &mut m.stop.hook {
        *url = with_port(url, port);
    }
    release
}

/// `http://127.0.0.1:8080/health` with its port replaced (or added).
pub fn with_port(url: &str, port: u16) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = match authority.rsplit_once(':') {
        // `[::1]:8080` and `host:8080`; a bare `[::1]` has no port to cut.
        Some((host, p)) if p.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    format!("{scheme}://{host}:{port}{path}")
}

/// The release in `dir`.
pub fn load(dir: &Path) -> Result<Release, String> {
    let path = dir.join(MANIFEST_FILE);
    let text = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: ReleaseManifest =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(format!(
            "{}: manifest format {} is not supported (this shipjar reads format {MANIFEST_FORMAT})",
            path.display(),
            manifest.format
        ));
    }
    Ok(Release {
        dir: dir.to_path_buf(),
        manifest,
    })
}

/// The release a running process was started from (the state file names its
/// directory), else `current`.
pub fn running_or_current(layout: &Layout, dir: Option<&Path>) -> Option<Release> {
    dir.and_then(|d| load(d).ok())
        .map(|r| for_instance(layout, r))
        .or_else(|| current(layout).ok())
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn a_url_gets_the_instance_port() {
        assert_eq!(
            with_port("http://127.0.0.1:8080/health", 18081),
            "http://127.0.0.1:18081/health"
        );
        assert_eq!(with_port("http://localhost/v", 1), "http://localhost:1/v");
        assert_eq!(with_port("http://[::1]:80", 2), "http://[::1]:2");
    }
}
