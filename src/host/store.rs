//! The release store: content-addressed artifacts, complete release
//! directories, and the atomic `current` switch.
//!
//! Invariants: an artifact is visible under its sha256 only after it was
//! verified and synced; a release directory is visible under its id only once
//! it is complete and synced; `current` always points at a complete release
//! (or does not exist) because it is replaced with rename(2).

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::protocol::digest::{hex, is_sha256};
use crate::protocol::files::{fsync_dir, write_synced};
use crate::protocol::names::{self, is_release_id};

use crate::host::revisions;
use crate::protocol::keep::{self, Kept, Standing};
use crate::protocol::layout::{Layout, RELEASE_SECRETS};
use crate::protocol::manifest::{MANIFEST_FILE, ReleaseManifest};
use crate::protocol::mask::SecretValue;
use crate::protocol::{FileContent, ReleaseInfo, RevisionOutcome};

/// Prefix of everything half-written; removed by the next deploy.
const TMP_PREFIX: &str = ".tmp-";

/// Creates the layout's directories if missing, with the modes `provision`
/// gives them.
pub fn ensure_dirs(layout: &Layout) -> io::Result<()> {
    for dir in layout.directories() {
        crate::host::fs::create_missing(&dir)?;
    }
    Ok(())
}

/// Removes half-written releases and uploads left by a killed run.
/// Call only while holding the deploy lock.
pub fn clean_up_partial(layout: &Layout) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in [
        layout.releases_dir(),
        layout.artifacts_dir(),
        layout.lib_dir(),
    ] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(TMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            removed.push(path.display().to_string());
        }
    }
    Ok(removed)
}

/// Whether an artifact with this sha256 is stored: a regular file, not a link.
pub fn has_artifact(layout: &Layout, sha256: &str) -> bool {
    is_sha256(sha256)
        && fs::symlink_metadata(layout.artifact(sha256)).is_ok_and(|m| m.file_type().is_file())
}

/// Like [`has_artifact`], but the stored bytes are hashed again: a stored
/// artifact that no longer matches its name (a disk error, a write that
/// went astray) is removed, so the deploy asking uploads it again instead of
/// running something else. Asked once per deploy, when the agent decides
/// whether an upload is needed.
pub fn has_verified_artifact(layout: &Layout, sha256: &str) -> bool {
    if !has_artifact(layout, sha256) {
        return false;
    }
    let path = layout.artifact(sha256);
    match crate::protocol::digest::sha256_file(&path) {
        Ok(actual) if actual == sha256 => true,
        _ => {
            let _ = fs::remove_file(&path);
            let _ = fsync_dir(&layout.artifacts_dir());
            false
        }
    }
}

/// Streams `size` bytes from `input` into the store, verifying the sha256.
/// Always consumes exactly `size` bytes of `input` unless it ends early.
pub fn put_artifact(
    layout: &Layout,
    sha256: &str,
    size: u64,
    input: &mut impl Read,
) -> Result<u64, String> {
    let mut limited = input.take(size);
    if !is_sha256(sha256) {
        drain(&mut limited);
        return Err(format!("`{sha256}` is not a sha256 in hex"));
    }
    let tmp = layout.artifacts_dir().join(artifact_temp_name(sha256));
    let result = write_verified(&tmp, sha256, size, &mut limited);
    drain(&mut limited);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let dest = layout.artifact(sha256);
    fs::rename(&tmp, &dest).map_err(|e| format!("cannot move artifact into place: {e}"))?;
    fsync_dir(&layout.artifacts_dir())
        .map_err(|e| format!("cannot sync the artifact store: {e}"))?;
    Ok(size)
}

/// The mtime every artifact gets when it enters the store (2000-01-01
/// UTC): HotSpot maps a class-data archive only for a jar of the size and
/// mtime it was dumped with, so equal mtimes let hosts share one archive.
pub const ARTIFACT_MTIME: std::time::Duration = std::time::Duration::from_secs(946_684_800);

/// Gives an artifact being written its store mtime ([`ARTIFACT_MTIME`]), through its fd.
pub fn set_artifact_mtime(file: &fs::File) -> Result<(), String> {
    file.set_modified(std::time::UNIX_EPOCH + ARTIFACT_MTIME)
        .map_err(|e| format!("cannot set the artifact's mtime: {e}"))
}

/// The name of an artifact's temp file in `artifacts/` while it is written
/// (removed by the next `begin` if the writer dies).
pub fn artifact_temp_name(sha256: &str) -> String {
    format!("{TMP_PREFIX}{sha256}-{}", std::process::id())
}

/// Syncs `artifacts/` after an artifact was renamed into it.
pub fn sync_artifacts(layout: &Layout) -> Result<(), String> {
    fsync_dir(&layout.artifacts_dir()).map_err(|e| format!("cannot sync the artifact store: {e}"))
}

fn write_verified(
    tmp: &Path,
    sha256: &str,
    size: u64,
    input: &mut impl Read,
) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| format!("reading the upload: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        written += n as u64;
    }
    if written != size {
        return Err(format!("upload ended after {written} of {size} bytes"));
    }
    let actual = hex(&hasher.finalize());
    if actual != sha256 {
        return Err(format!(
            "sha256 mismatch: expected {sha256}, received {actual}"
        ));
    }
    set_artifact_mtime(&file)?;
    file.sync_all()
        .map_err(|e| format!("syncing {}: {e}", tmp.display()))
}

fn drain(input: &mut impl Read) {
    let _ = io::copy(input, &mut io::sink());
}

/// Creates `releases/<id>` complete and synced: config files, the jar link and
/// `RELEASE`, built in a temporary directory and renamed into place.
pub fn prepare(
    layout: &Layout,
    manifest: &ReleaseManifest,
    files: &[FileContent],
    secrets: &[SecretValue],
    secret_gid: Option<u32>,
) -> Result<PathBuf, String> {
    let id = &manifest.id;
    if !is_release_id(id) {
        return Err(format!("invalid release id `{id}`"));
    }
    // The link to the artifact is created before RELEASE is written in the
    // same directory: a reserved name would redirect that write.
    names::jar_name(&manifest.jar).map_err(|e| format!("invalid jar name: {e}"))?;
    for file in files {
        names::relative_path(&file.dest).map_err(|e| format!("invalid config file path: {e}"))?;
    }
    if manifest.service != layout.name() {
        return Err(format!(
            "release is for service `{}`, not `{}`",
            manifest.service,
            layout.name()
        ));
    }
    let dest = layout.release_dir(id);
    if dest.exists() {
        // A retried deploy (e.g. after --wait) prepares the same release again.
        return match read_manifest(layout, id) {
            Ok(existing) if existing == *manifest => Ok(dest),
            _ => Err(format!("release {id} already exists with other content")),
        };
    }
    if !has_artifact(layout, &manifest.artifact_sha256) {
        return Err(format!(
            "artifact {} is not stored",
            manifest.artifact_sha256
        ));
    }
    let tmp = layout
        .releases_dir()
        .join(format!("{TMP_PREFIX}{id}-{}", std::process::id()));
    let result = write_release(layout, &tmp, manifest, files, secret_gid)
        .and_then(|()| write_secrets(&tmp, secrets));
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &dest).map_err(|e| format!("cannot move release into place: {e}"))?;
    fsync_dir(&layout.releases_dir()).map_err(|e| format!("cannot sync releases/: {e}"))?;
    Ok(dest)
}

fn write_release(
    layout: &Layout,
    dir: &Path,
    manifest: &ReleaseManifest,
    files: &[FileContent],
    secret_gid: Option<u32>,
) -> Result<(), String> {
    let config_dir = dir.join("config");
    fs::create_dir_all(&config_dir)
        .map_err(|e| format!("cannot create {}: {e}", config_dir.display()))?;
    let mut dirs = BTreeSet::from([dir.to_path_buf(), config_dir.clone()]);
    for file in files {
        let rel = names::relative_path(&file.dest)?;
        let path = config_dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            dirs.insert(parent.to_path_buf());
        }
        let mode = match (file.secret, secret_gid) {
            (false, _) => 0o644,
            (true, None) => 0o600,
            (true, Some(_)) => 0o640,
        };
        write_synced(&path, file.content.as_bytes(), mode)
            .map_err(|e| format!("cannot write config/{}: {e}", file.dest))?;
        if let (true, Some(gid)) = (file.secret, secret_gid) {
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(0)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| format!("cannot chown config/{}: {e}", file.dest))?;
        }
    }
    let artifact = Path::new("../../artifacts").join(format!("{}.jar", manifest.artifact_sha256));
    debug_assert!(
        layout
            .artifact(&manifest.artifact_sha256)
            .ends_with(artifact.file_name().unwrap_or_default())
    );
    symlink(&artifact, dir.join(&manifest.jar))
        .map_err(|e| format!("cannot link the artifact: {e}"))?;
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| format!("cannot encode RELEASE: {e}"))?;
    write_synced(
        &dir.join(MANIFEST_FILE),
        format!("{text}\n").as_bytes(),
        0o644,
    )
    .map_err(|e| format!("cannot write RELEASE: {e}"))?;
    for d in dirs.iter().rev() {
        fsync_dir(d).map_err(|e| format!("cannot sync {}: {e}", d.display()))?;
    }
    Ok(())
}

/// The values the host masks for this release (`SECRETS`, 0600, the agent's
/// user's: the service never needs it).
fn write_secrets(dir: &Path, secrets: &[SecretValue]) -> Result<(), String> {
    if secrets.is_empty() {
        return Ok(());
    }
    let text = serde_json::to_vec(secrets).map_err(|e| format!("cannot encode SECRETS: {e}"))?;
    write_synced(&dir.join(RELEASE_SECRETS), &text, 0o600)
        .map_err(|e| format!("cannot write SECRETS: {e}"))?;
    fsync_dir(dir).map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// The release id `current` points to, if any.
pub fn current(layout: &Layout) -> Option<String> {
    let target = fs::read_link(layout.current_link()).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Points `current` at `releases/<id>` atomically (new symlink, then rename).
pub fn switch(layout: &Layout, id: &str) -> Result<(), String> {
    if !layout.release_dir(id).join(MANIFEST_FILE).is_file() {
        return Err(format!("release {id} is not complete on this host"));
    }
    let tmp = layout
        .lib_dir()
        .join(format!("{TMP_PREFIX}current-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    symlink(Path::new("releases").join(id), &tmp)
        .map_err(|e| format!("cannot create symlink: {e}"))?;
    fs::rename(&tmp, layout.current_link()).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot switch current: {e}")
    })?;
    fsync_dir(&layout.lib_dir())
        .map_err(|e| format!("cannot sync {}: {e}", layout.lib_dir().display()))
}

/// Removes `current` (after a failed first deploy there is nothing to go back to).
pub fn remove_current(layout: &Layout) -> Result<(), String> {
    match fs::remove_file(layout.current_link()) {
        Ok(()) => fsync_dir(&layout.lib_dir()).map_err(|e| e.to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove current: {e}")),
    }
}

/// Reads `releases/<id>/RELEASE`.
pub fn read_manifest(layout: &Layout, id: &str) -> Result<ReleaseManifest, String> {
    if !is_release_id(id) {
        return Err(format!("invalid release id `{id}`"));
    }
    let path = layout.release_dir(id).join(MANIFEST_FILE);
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))
}

/// Ids of shipjar's complete releases (a `RELEASE` manifest naming the
/// directory), oldest first. Directories another tool left are not among them.
pub fn release_ids(layout: &Layout) -> Vec<String> {
    let mut ids: Vec<String> = release_dirs(layout)
        .into_iter()
        .filter(|id| is_ours(layout, id))
        .collect();
    ids.sort();
    ids
}

/// Directories in `releases/` that shipjar did not make (e.g. a Capistrano
/// host taken over): never counted, never removed.
pub fn foreign_release_dirs(layout: &Layout) -> Vec<String> {
    let mut names: Vec<String> = release_dirs(layout)
        .into_iter()
        .filter(|id| !is_ours(layout, id))
        .collect();
    names.sort();
    names
}

fn release_dirs(layout: &Layout) -> Vec<String> {
    fs::read_dir(layout.releases_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with(TMP_PREFIX) && is_release_id(name))
        .collect()
}

fn is_ours(layout: &Layout, id: &str) -> bool {
    read_manifest(layout, id).is_ok_and(|m| m.id == id)
}

/// All releases with their manifests and last outcomes, oldest first.
pub fn list(layout: &Layout) -> Vec<ReleaseInfo> {
    let current = current(layout);
    // For display an unreadable history means "outcome unknown"; pruning reads it strictly.
    let history = revisions::read(layout).unwrap_or_default();
    release_ids(layout)
        .into_iter()
        .filter_map(|id| {
            let manifest = read_manifest(layout, &id).ok()?;
            let outcome = history
                .iter()
                .rev()
                .find(|r| r.release == id)
                .map(|r| r.outcome.clone());
            Some(ReleaseInfo {
                current: current.as_deref() == Some(id.as_str()),
                id,
                version: manifest.version,
                deployed_at: manifest.deployed_at,
                deployer: manifest.deployer,
                artifact_sha256: manifest.artifact_sha256,
                outcome,
            })
        })
        .collect()
}

/// How release `id`'s last activation in `history` went.
fn standing(history: &[crate::protocol::Revision], id: &str) -> Standing {
    match history.iter().rev().find(|r| r.release == id) {
        Some(r) if r.outcome == RevisionOutcome::Success => Standing::Healthy,
        Some(_) => Standing::Failed,
        None => Standing::NeverSwitched,
    }
}

/// PURE: which of `ids` (oldest first) to remove, by [`keep::plan`].
fn releases_to_prune(
    ids: &[String],
    history: &[crate::protocol::Revision],
    current: Option<&str>,
    keep: usize,
) -> Vec<String> {
    let releases: Vec<(bool, Standing)> = ids
        .iter()
        .map(|id| (current == Some(id.as_str()), standing(history, id)))
        .collect();
    ids.iter()
        .zip(keep::plan(&releases, keep))
        .filter(|(_, kept)| *kept == Kept::Pruned)
        .map(|(id, _)| id.clone())
        .collect()
}

/// Removes release `id` (one that never switched); its artifact stays for a retry.
pub fn remove_release(layout: &Layout, id: &str) -> Result<(), String> {
    fs::remove_dir_all(layout.release_dir(id))
        .map_err(|e| format!("cannot remove release {id}: {e}"))?;
    fsync_dir(&layout.releases_dir()).map_err(|e| e.to_string())
}

/// Removes old releases as [`keep::plan`] says: `current`, the rollback
/// target and the newest healthy ones up to `keep` in all, plus the newest
/// one that failed (to look into); never directories shipjar did not make.
/// Then removes artifacts no remaining release uses.
pub fn prune(layout: &Layout, keep: usize) -> Result<Vec<String>, String> {
    let history = revisions::read(layout)
        .map_err(|e| format!("not pruning, the rollback target is unknown: {e}"))?;
    let current = current(layout);
    let ids = release_ids(layout);
    let mut removed = Vec::new();
    for id in releases_to_prune(&ids, &history, current.as_deref(), keep) {
        fs::remove_dir_all(layout.release_dir(&id))
            .map_err(|e| format!("cannot remove release {id}: {e}"))?;
        removed.push(id);
    }
    let used: BTreeSet<String> = release_ids(layout)
        .iter()
        .filter_map(|id| read_manifest(layout, id).ok())
        .map(|m| m.artifact_sha256)
        .collect();
    if let Ok(entries) = fs::read_dir(layout.artifacts_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(sha) = name.strip_suffix(".jar")
                && is_sha256(sha)
                && !used.contains(sha)
            {
                fs::remove_file(entry.path())
                    .map_err(|e| format!("cannot remove artifact {sha}: {e}"))?;
            }
        }
    }
    if !removed.is_empty() {
        fsync_dir(&layout.releases_dir()).map_err(|e| e.to_string())?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Action, Revision};

    #[test]
    fn an_artifact_enters_the_store_with_the_same_mtime_on_every_host() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path(), "svc");
        ensure_dirs(&layout).expect("dirs");
        let body = b"jar bytes";
        let sha = hex(&Sha256::digest(body));
        put_artifact(&layout, &sha, body.len() as u64, &mut &body[..]).expect("put");
        let mtime = fs::metadata(layout.artifact(&sha))
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(mtime, std::time::UNIX_EPOCH + ARTIFACT_MTIME);
    }

    fn revision(release: &str, outcome: RevisionOutcome) -> Revision {
        Revision {
            time: "t".into(),
            action: Action::Deploy,
            release: release.into(),
            version: "1".into(),
            deployer: "me".into(),
            outcome,
            detail: String::new(),
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("r{i}")).collect()
    }

    #[test]
    fn an_unreadable_history_stops_pruning_instead_of_guessing_the_rollback_target() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "svc");
        std::fs::create_dir_all(layout.releases_dir()).unwrap();
        // A directory where the log should be: reading it fails (as EIO would).
        std::fs::create_dir_all(layout.revisions_log()).unwrap();
        let err = prune(&layout, 1).unwrap_err();
        assert!(
            err.starts_with("not pruning, the rollback target is unknown"),
            "{err}"
        );
    }

    #[test]
    fn failed_releases_do_not_count_toward_keep() {
        // r0 good, r1..r3 failed three times (reverted to r0), r4 good and current.
        let ids = ids(5);
        let mut history = vec![revision("r0", RevisionOutcome::Success)];
        for id in ["r1", "r2", "r3"] {
            history.push(revision(id, RevisionOutcome::Failed));
            history.push(revision("r0", RevisionOutcome::Success));
        }
        history.push(revision("r4", RevisionOutcome::Success));
        let doomed = releases_to_prune(&ids, &history, Some("r4"), 2);
        assert_eq!(
            doomed,
            ["r1", "r2"],
            "the newest failed one stays to look into"
        );
    }

    #[test]
    fn keep_counts_good_releases_newest_first() {
        let ids = ids(6);
        let history: Vec<_> = ids
            .iter()
            .map(|id| revision(id, RevisionOutcome::Success))
            .collect();
        assert_eq!(
            releases_to_prune(&ids, &history, Some("r5"), 3),
            ["r0", "r1", "r2"]
        );
        // After a rollback to r0 it stays, and keep still means 2 in all.
        assert_eq!(
            releases_to_prune(&ids, &history, Some("r0"), 2),
            ["r1", "r2", "r3", "r4"]
        );
    }
}
