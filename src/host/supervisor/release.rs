//! Finding the release to run: `current` resolved to its real directory, and
//! that directory's `RELEASE` manifest.

use std::fs;
use std::path::{Path, PathBuf};

use crate::protocol::layout::Layout;
use crate::protocol::manifest::{MANIFEST_FILE, MANIFEST_FORMAT, ReleaseManifest};

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
    load(&dir)
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
        .or_else(|| current(layout).ok())
}
