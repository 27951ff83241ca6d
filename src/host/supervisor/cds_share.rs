//! One class-data archive per deploy, shared by the hosts: the agent's side.
//!
//! In a deploy of a new artifact, the operator asks one host to dump the
//! new release's archive from the class list its current release's run
//! recorded ([`dump_request`]: as the service's user, at normal priority,
//! within a deadline, through the same dump code as the supervisor's) and
//! sends it to the other hosts ([`put_request`]), which keep it when they
//! run the same JDK and jar and its sha256 matches. HotSpot also checks the
//! jar's size and mtime, which match across hosts because the store gives
//! every artifact the same mtime (`store::ARTIFACT_MTIME`); should it still
//! refuse one, the supervisor removes it and the run records, as for any
//! archive. Neither request ever fails the session: the answer says why
//! there is no archive, and the host goes without.

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cds::{self, Dump, INHERITED_CLASS_LIST, MAX_ARCHIVE, STATIC_ARCHIVE_MAGIC};
use super::release::{self, Release};
use super::spawn;
use crate::host::os::process::ExitInfo;
use crate::protocol::digest;
use crate::protocol::layout::{CDS_ARCHIVE, Layout};
use crate::protocol::manifest::ReleaseManifest;
use crate::protocol::names::is_release_id;
use crate::protocol::{ClassDataArchive, ClassDataHost, Response};

/// zstd's default level: fast, and most of what higher levels would give.
const ZSTD_LEVEL: i32 = 3;

/// What this host can do for a shared archive of a release of `manifest`:
/// its JDK, and whether its current release kept a class list.
pub fn host(layout: &Layout, manifest: &ReleaseManifest) -> Option<ClassDataHost> {
    if !manifest.run.cds {
        return None;
    }
    let current = release::current(layout).ok();
    let base = current
        .as_ref()
        .map_or_else(|| layout.releases_dir(), |r| r.dir.clone());
    let jdk = cds::jdk_identity(&manifest.run.argv, &base).ok()?;
    let class_list = current.is_some_and(|r| cds::class_list_in(&r.dir).is_some());
    Some(ClassDataHost { jdk, class_list })
}

/// `dump_class_data`: the archive, or a note saying why there is none.
pub fn dump_request(layout: &Layout, release_id: &str, deadline_ms: u64) -> Response {
    match dump_and_pack(layout, release_id, Duration::from_millis(deadline_ms)) {
        Ok((archive, note)) => Response::ClassDataDumped {
            archive: Some(Box::new(archive)),
            note,
        },
        Err(note) => Response::ClassDataDumped {
            archive: None,
            note: format!("no shared class-data archive: {note}"),
        },
    }
}

/// `put_class_data`: kept, or a note saying why not.
pub fn put_request(layout: &Layout, release_id: &str, archive: &ClassDataArchive) -> Response {
    match receive(layout, release_id, archive) {
        Ok(note) => Response::ClassDataKept { kept: true, note },
        Err(note) => Response::ClassDataKept {
            kept: false,
            note: format!(
                "shared class-data archive not kept: {note}; the release's first start records its classes"
            ),
        },
    }
}

/// The prepared release `id`, its directory resolved.
fn prepared(layout: &Layout, id: &str) -> Result<Release, String> {
    if !is_release_id(id) {
        return Err(format!("`{id}` is not a release id"));
    }
    let dir: PathBuf = std::path::absolute(layout.release_dir(id)).map_err(|e| e.to_string())?;
    release::load(&dir)
}

/// Dumps the archive of release `id` from the current release's class
/// list and packs it for the other hosts.
fn dump_and_pack(
    layout: &Layout,
    id: &str,
    deadline: Duration,
) -> Result<(ClassDataArchive, String), String> {
    let started = Instant::now();
    let target = prepared(layout, id)?;
    let current = release::current(layout)?;
    let class_list = cds::class_list_in(&current.dir)
        .ok_or_else(|| format!("release {} kept no class list", current.manifest.id))?;
    let made_with = cds::made_with(&target)?;
    let creds = spawn::credentials(&target)?;
    let dump = Dump::for_release(layout, &target, made_with.clone(), creds.as_ref())?;
    let result = dump.put_class_list(&class_list).and_then(|()| {
        let mut child = cds::spawn_dump(layout, &target, &dump, creds.as_ref(), false)
            .map_err(|e| format!("cannot start the dump: {e}"))?;
        match wait_within(&mut child, deadline) {
            // The list as inherited: it is the old release's, and this
            // release's first run records its own.
            Some(ExitInfo::Code(0)) => cds::copy_out(&dump, INHERITED_CLASS_LIST),
            Some(other) => Err(format!("the dump failed ({other})")),
            None => Err(format!(
                "the dump took longer than {} ms (killed)",
                deadline.as_millis()
            )),
        }
    });
    cds::discard(&dump);
    result?;
    let dumped_ms = started.elapsed().as_millis();
    cds::check_archive(&target.dir, &made_with)?;
    let archive = pack(&target, &made_with.jdk())?;
    let note = format!(
        "class-data archive dumped for release {id} from release {}'s class list in {dumped_ms} ms \
         ({} KiB, {} KiB compressed)",
        current.manifest.id,
        archive.size / 1024,
        archive.packed_size / 1024
    );
    Ok((archive, note))
}

/// Waits for the dump, killing it (its session) past `deadline`.
fn wait_within(child: &mut std::process::Child, deadline: Duration) -> Option<ExitInfo> {
    use std::os::unix::process::ExitStatusExt;
    let until = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return status
                    .code()
                    .map(ExitInfo::Code)
                    .or(status.signal().map(ExitInfo::Signal));
            }
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                cds::kill_dump(child);
                return None;
            }
        }
    }
}

/// The release's archive, compressed, with what it was made with.
#[allow(clippy::disallowed_methods)] // root-only: the archive in root's release dir
fn pack(release: &Release, jdk: &str) -> Result<ClassDataArchive, String> {
    let path = release.dir.join(CDS_ARCHIVE);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_ARCHIVE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // The sha256 recorded when it was dumped, not of what was read now:
    // a copy damaged since then is refused on arrival.
    let sha256 = cds::recorded_sha256(&release.dir)?;
    // zstd level 3: the Clojure example's 34 MB archive gives 8.5 MB in
    // 0.1 CPU-s, and each host unpacks it in 0.03 (gzip -1: 10 MB, 0.4 and 0.16).
    zstd::stream::encode_all(&bytes[..], ZSTD_LEVEL)
        .map(|packed| {
            ClassDataArchive::new(
                jdk.to_string(),
                release.manifest.artifact_sha256.clone(),
                sha256,
                bytes.len() as u64,
                packed,
            )
        })
        .map_err(|e| format!("compressing {}: {e}", path.display()))
}

/// Keeps `archive` as release `id`'s when this host runs the same JDK and
/// jar and it arrived whole.
fn receive(layout: &Layout, id: &str, archive: &ClassDataArchive) -> Result<String, String> {
    let started = Instant::now();
    let target = prepared(layout, id)?;
    if !target.manifest.run.cds {
        return Err("the release has cds off".into());
    }
    if target.manifest.artifact_sha256 != archive.jar_sha256 {
        return Err("it was made for another artifact".into());
    }
    let made_with = cds::made_with(&target)?;
    let jdk = made_with.jdk();
    if jdk != archive.jdk {
        return Err(format!(
            "it was made with another JDK ({}; this host runs {jdk})",
            archive.jdk
        ));
    }
    let bytes = unpack(archive)?;
    if bytes.len() < 4 || bytes[..4] != STATIC_ARCHIVE_MAGIC.to_ne_bytes() {
        return Err("it is not a complete archive (no header)".into());
    }
    // Checked in `unpack`: recorded without hashing it again (every start
    // that uses it hashes the file).
    cds::install_known(
        &mut &bytes[..],
        &target.dir,
        &made_with,
        Some(archive.sha256.clone()),
    )
    .map_err(|e| format!("cannot write it next to the release: {e}"))?;
    Ok(format!(
        "shared class-data archive kept for release {id} ({} KiB, sha256 checked, in {} ms)",
        bytes.len() / 1024,
        started.elapsed().as_millis()
    ))
}

/// The archive's bytes: decompressed within its announced size (at most
/// [`MAX_ARCHIVE`]), and checked against its sha256.
fn unpack(archive: &ClassDataArchive) -> Result<Vec<u8>, String> {
    if archive.size > MAX_ARCHIVE {
        return Err(format!(
            "{} bytes is over the limit of {MAX_ARCHIVE}",
            archive.size
        ));
    }
    let mut bytes = Vec::with_capacity(archive.size as usize);
    zstd::stream::read::Decoder::new(&archive.packed[..])
        .map_err(|e| format!("cannot unpack it ({e})"))?
        .take(archive.size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e: io::Error| format!("it arrived damaged ({e})"))?;
    if bytes.len() as u64 != archive.size || digest::sha256_hex(&bytes) != archive.sha256 {
        return Err("it arrived damaged (its size or sha256 differs from the dump's)".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(bytes: &[u8]) -> ClassDataArchive {
        let zst = zstd::stream::encode_all(bytes, ZSTD_LEVEL).expect("zstd");
        ClassDataArchive::new(
            "jdk".into(),
            "jar".into(),
            digest::sha256_hex(bytes),
            bytes.len() as u64,
            zst,
        )
    }

    #[test]
    fn an_archive_arrives_whole_or_is_refused_as_damaged() {
        let body = vec![7u8; 100_000];
        assert_eq!(unpack(&packed(&body)).expect("whole"), body);
        let mut other = packed(&body);
        other.sha256 = digest::sha256_hex(b"else");
        assert!(unpack(&other).expect_err("sha").contains("damaged"));
        let mut longer = packed(&body);
        longer.size -= 1;
        assert!(unpack(&longer).expect_err("size").contains("damaged"));
        let mut big = packed(&body);
        big.size = MAX_ARCHIVE + 1;
        assert!(unpack(&big).expect_err("limit").contains("over the limit"));
    }
}
