//! What changes when the supervisor runs as root and the service as its own
//! user: the log dir and `shared/` belong to that user, and the release it
//! runs must not be writable by it (a service that can rewrite its own jar
//! or config survives every deploy and rollback).

use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::protocol::layout::{DirOwner, Layout};

use crate::host::os::process::Credentials;

/// Gives the service user the directories it may write: the log dir and
/// `shared/`, created when missing with the layout's modes (those `provision`
/// gives them).
pub fn prepare_dirs(layout: &Layout, creds: &Credentials) -> Result<(), String> {
    for entry in layout.directories() {
        if entry.owner != DirOwner::Service {
            continue;
        }
        let path = &entry.path;
        // Through the guarded walk and its fd: a link planted in place of
        // the directory (or of a parent another user can write) is refused.
        let (dir, _) = crate::host::fs::create_missing(&entry)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        dir.chown(crate::host::fs::Owner {
            uid: creds.uid,
            gid: creds.gid,
        })
        .map_err(|e| format!("cannot give {} to {}: {e}", path.display(), creds.name))?;
    }
    Ok(())
}

/// Errors naming the first path of the release (or the directories holding
/// it) that the service user could change.
pub fn check_release(
    layout: &Layout,
    release_dir: &Path,
    creds: &Credentials,
) -> Result<(), String> {
    for dir in [layout.lib_dir(), layout.releases_dir()] {
        check(&dir, creds)?;
    }
    check_tree(release_dir, creds)
}

// root-only: the release tree, which this checks no one but root can write
#[allow(clippy::disallowed_methods)]
fn check_tree(path: &Path, creds: &Credentials) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        // The link itself cannot be changed without writing its directory
        // (checked); what it points to can (the jar in artifacts/).
        if let Ok(target) = fs::canonicalize(path) {
            if let Some(parent) = target.parent() {
                check(parent, creds)?;
            }
            check(&target, creds)?;
        }
        return Ok(());
    }
    check_meta(path, &meta, creds)?;
    if meta.is_dir() {
        let entries = fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            check_tree(&entry.path(), creds)?;
        }
    }
    Ok(())
}

// root-only: var/lib/NAME and releases/, checked not writable by the service
#[allow(clippy::disallowed_methods)]
fn check(path: &Path, creds: &Credentials) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    check_meta(path, &meta, creds)
}

fn check_meta(path: &Path, meta: &Metadata, creds: &Credentials) -> Result<(), String> {
    if writable_by(meta.uid(), meta.gid(), meta.mode(), creds) {
        return Err(format!(
            "{} is writable by the service user {} (owner uid {}, group gid {}, mode {:o}); \
             a release must belong to root and not be writable by the service",
            path.display(),
            creds.name,
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Whether a file with this owner, group and mode is writable by the user
/// (its owner may always chmod it).
fn writable_by(uid: u32, gid: u32, mode: u32, creds: &Credentials) -> bool {
    uid == creds.uid
        || mode & 0o002 != 0
        || (mode & 0o020 != 0 && (gid == creds.gid || creds.groups.contains(&gid)))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests: their own temp dirs
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn user() -> Credentials {
        Credentials {
            name: "svc".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 50],
            home: PathBuf::from("/"),
        }
    }

    #[test]
    fn who_can_write() {
        let u = user();
        assert!(!writable_by(0, 0, 0o755, &u));
        assert!(
            !writable_by(0, 1000, 0o750, &u),
            "group may read, not write"
        );
        assert!(writable_by(1000, 0, 0o555, &u), "the owner can chmod");
        assert!(writable_by(0, 0, 0o757, &u));
        assert!(writable_by(0, 50, 0o775, &u), "a supplementary group");
        assert!(!writable_by(0, 51, 0o775, &u));
    }

    #[test]
    fn names_the_writable_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path(), "svc");
        let release = layout.release_dir("r1");
        fs::create_dir_all(release.join("config")).expect("mkdir");
        for d in [
            dir.path().to_path_buf(),
            layout.lib_dir(),
            layout.releases_dir(),
        ] {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        // Whoever runs the test owns the files: check as a different user.
        let mut u = user();
        u.uid = u32::MAX - 1;
        u.gid = u32::MAX - 1;
        u.groups = vec![];
        check_release(&layout, &release, &u).expect("not writable");
        use std::os::unix::fs::PermissionsExt;
        let config = release.join("config");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = check_release(&layout, &release, &u).expect_err("writable");
        assert!(
            err.starts_with(&format!(
                "{} is writable by the service user svc",
                config.display()
            )),
            "{err}"
        );
    }
}
