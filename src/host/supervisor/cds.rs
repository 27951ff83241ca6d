//! Class-data sharing (AppCDS) per release, `[service] cds` (on by default).
//!
//! A start of a release that has no valid archive runs the JVM with
//! `-XX:DumpLoadedClassList` aimed at a directory of the service's own in
//! root's `cds-dump/` (see `Layout::cds_dump_dir`), reached only through
//! `host::fs`: the service owns what is in it, never the directory's name.
//! [`DUMP_DELAY`] after that run is healthy, the supervisor starts a static
//! dump (`java -Xshare:dump` from that class list, as the service's user,
//! at idle CPU priority, within [`DUMP_DEADLINE`]) beside the running
//! service; nobody waits for it, and a stop kills it. A complete archive is
//! copied next to the release as root's own file with a record of what it
//! was made with. Every later start of the release maps it with
//! `-XX:SharedArchiveFile` and `-Xshare:auto`; one of a release that has no
//! class list of its own run yet (its archive came from another host or
//! another release) records its classes too: [`DUMP_DELAY`] after it is
//! healthy that list is kept as the release's ([`keep_list`]; no dump), so
//! every host that ran a release has a class list of it to dump the next
//! artifact's shared archive from (see `cds_share`). An archive whose JDK, jar or own file changed since is
//! ignored (with a note) and the start goes on without it, recording its
//! classes for a fresh one. A release with none yet first borrows a valid
//! one of another release of the same jar (a re-deploy).

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::host::fs::{Expect, GuardedDir, NewFile, Owned, Owner};
use crate::protocol::digest;
use crate::protocol::files::{fsync_dir, write_atomic};
use crate::protocol::layout::{CDS_ARCHIVE, CDS_IDENTITY, Dir, Layout};

use super::release::Release;
use super::spawn::{self, CLEAN_PATH};
use crate::host::os::process::{self, Credentials, ExitInfo};

/// First four bytes of a static (`-Xshare:dump`) archive; HotSpot writes
/// its header last, so a dump cut short has none.
pub(super) const STATIC_ARCHIVE_MAGIC: u32 = 0xf00b_aba2;

/// The class list a recording run writes, in its dump directory.
const CLASS_LIST: &str = "classes.lst";

/// The class list of a run of the release, kept beside its archive: the
/// one a recording run's archive was dumped from, or the list recorded by
/// the first run that mapped an archive made elsewhere. A deploy of a new
/// artifact dumps the new jar's archive from it on one host and shares
/// that archive (see `cds_share`).
pub(super) const KEPT_CLASS_LIST: &str = "cds.classes";

/// The class list a shared archive was dumped from (the previous
/// release's), kept beside it on the host that dumped it until a run of
/// the release keeps its own: so a deploy that follows at once (before any
/// run of this release was healthy [`DUMP_DELAY`]) can still be shared.
pub(super) const INHERITED_CLASS_LIST: &str = "cds.classes.inherited";

/// Where the class list of the release in `dir` is: its own run's, else
/// the one its shared archive was dumped from.
pub(super) fn class_list_in(dir: &Path) -> Option<PathBuf> {
    [KEPT_CLASS_LIST, INHERITED_CLASS_LIST]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|path| is_file(path))
}

/// Largest class list kept (the Clojure example's is 300 KiB).
const MAX_CLASS_LIST: u64 = 16 << 20;

/// How long after a recording run is healthy its dump starts: the classes
/// its first requests load are in the list by then.
pub const DUMP_DELAY: Duration = Duration::from_secs(5);

/// Longest a dump may take (at idle priority on a busy host) before it is
/// killed and nothing is kept: the Clojure example's takes 2–5 s.
pub const DUMP_DEADLINE: Duration = Duration::from_secs(300);

/// Largest dump kept (its size and its allocated blocks; a sparse one is
/// refused): examples/hello's is 2 MiB, a large Clojure service's tens of
/// MiB. Every start that uses the archive hashes it, so it stays bounded.
pub const MAX_ARCHIVE: u64 = 512 << 20;

/// What one start does about class data.
#[derive(Debug, Clone, PartialEq)]
pub enum ClassData {
    /// Not asked for, or cannot be done (see the note).
    Off,
    /// Maps the release's archive.
    Use {
        /// `releases/<id>/cds.jsa`.
        archive: PathBuf,
        /// Where this run records its classes, until [`keep_list`] kept
        /// them as the release's class list (no dump is made from them);
        /// `None` when that could not be set up, or once it is done.
        list: Option<Box<Dump>>,
    },
    /// Records the classes this run loads; once it is healthy a dump of
    /// them runs beside it.
    Record(Box<Dump>),
}

/// A run that records its classes, and the dump made from them: where the
/// JVMs write, and what the archive will be recorded as made with. A run
/// that maps an archive records into one too, and only its list is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    /// The service-owned directory the JVMs write into (absolute).
    dir: PathBuf,
    /// Who must own it and the archive: the service's user.
    owner: u32,
    /// The release's real directory, where the archive goes.
    release_dir: PathBuf,
    /// Its id, for the log.
    release_id: String,
    /// The JDK and jar of this run.
    made_with: MadeWith,
    /// The dump's options after `java` (see [`dump_options`]).
    options: Vec<String>,
}

/// The decision for one start, plus what to tell the log.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the start does.
    pub class_data: ClassData,
    /// A line for the service's events, when there is something to say.
    pub note: Option<String>,
}

/// Identity of one file: its real path, size and modification time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileId {
    path: PathBuf,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    /// The file at `path`, symlinks resolved.
    #[allow(clippy::disallowed_methods)] // root-only: java, libjvm.so, the jar and the archive in root's release
    fn of(path: &Path) -> io::Result<FileId> {
        let real = fs::canonicalize(path)?;
        let meta = fs::metadata(&real)?;
        Ok(FileId {
            path: real,
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }
}

/// The JDK (launcher and `libjvm.so`) and the jar a start runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MadeWith {
    java: FileId,
    libjvm: Option<FileId>,
    jar: FileId,
}

impl MadeWith {
    /// The JDK part, as one string: hosts whose strings are equal run the
    /// same JDK build (a package installs the same files with the same
    /// mtimes), so an archive made on one fits the other.
    pub(super) fn jdk(&self) -> String {
        let id = |f: &FileId| {
            format!(
                "{} {} bytes mtime {}.{:09}",
                f.path.display(),
                f.size,
                f.mtime,
                f.mtime_nsec
            )
        };
        match &self.libjvm {
            Some(libjvm) => format!("{}; {}", id(&self.java), id(libjvm)),
            None => id(&self.java),
        }
    }
}

/// `cds.json`: what the archive was made with, and the archive itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    made_with: MadeWith,
    archive: FileId,
    /// Its contents: HotSpot checks only the header by default, and maps a
    /// body damaged in place as it is (classes fail to load).
    archive_sha256: String,
}

impl ClassData {
    /// Takes out the run's dump directory (a recording run's, or where a run
    /// that maps an archive records its list), leaving what it still uses.
    pub fn take_dump(&mut self) -> Option<Box<Dump>> {
        match self {
            ClassData::Off => None,
            ClassData::Use { list, .. } => list.take(),
            ClassData::Record(_) => match std::mem::replace(self, ClassData::Off) {
                ClassData::Record(dump) => Some(dump),
                _ => None,
            },
        }
    }
}

/// The JVM options of a start, put right after `java`.
pub fn jvm_options(class_data: &ClassData) -> Vec<String> {
    let record = |dump: &Dump| {
        format!(
            "-XX:DumpLoadedClassList={}",
            dump.dir.join(CLASS_LIST).display()
        )
    };
    match class_data {
        ClassData::Off => Vec::new(),
        ClassData::Use { archive, list } => {
            // HotSpot lists every class the run loads, from the archive too.
            let mut options = vec![
                "-Xshare:auto".to_string(),
                format!("-XX:SharedArchiveFile={}", archive.display()),
            ];
            options.extend(list.as_deref().map(record));
            options
        }
        ClassData::Record(dump) => vec![record(dump)],
    }
}

/// What the dump runs after `java`: the release's options that decide
/// whether an archive fits a JVM (heap size, compressed pointers, object
/// alignment, collector), then the class list, the archive and the jar as
/// the service names it (`-jar <jar>` in the release directory: HotSpot
/// maps an archive only for the class path it was dumped with).
fn dump_options(argv: &[String], dir: &Path) -> Result<Vec<String>, String> {
    let at = argv
        .iter()
        .position(|a| a == "-jar")
        .ok_or_else(|| "run.argv has no -jar".to_string())?;
    let jar = argv
        .get(at + 1)
        .ok_or_else(|| "run.argv ends at -jar".to_string())?;
    let fits = |o: &&String| {
        o.starts_with("-Xmx")
            || o.starts_with("-XX:ObjectAlignmentInBytes=")
            || ["UseCompressedOops", "UseCompressedClassPointers"]
                .iter()
                .any(|f| o.ends_with(f) && (o.starts_with("-XX:+") || o.starts_with("-XX:-")))
            || (o.starts_with("-XX:+Use") && o.ends_with("GC"))
    };
    let mut options: Vec<String> = argv[1..at].iter().filter(fits).cloned().collect();
    options.extend([
        "-Xshare:dump".to_string(),
        format!("-XX:SharedClassListFile={}", dir.join(CLASS_LIST).display()),
        format!("-XX:SharedArchiveFile={}", dir.join(CDS_ARCHIVE).display()),
        "-cp".to_string(),
        jar.clone(),
    ]);
    Ok(options)
}

/// Decides what the next start of `release` does about class data.
pub fn plan(layout: &Layout, release: &Release, creds: Option<&Credentials>) -> Plan {
    let off = |note: Option<String>| Plan {
        class_data: ClassData::Off,
        note,
    };
    if !release.manifest.run.cds {
        return off(None);
    }
    let made_with = match made_with(release) {
        Ok(m) => m,
        Err(why) => {
            return off(Some(format!(
                "class-data sharing off for this start: {why}"
            )));
        }
    };
    sweep_dumps(layout);
    let archive = release.dir.join(CDS_ARCHIVE);
    let checking = Instant::now();
    let ignored = match check(&release.dir, &made_with) {
        Ok(()) => {
            let note = format!(
                "class-data archive: using {} (checked in {} ms)",
                archive.display(),
                checking.elapsed().as_millis()
            );
            return using(layout, release, made_with, creds, archive, note);
        }
        Err(Invalid::Missing) => match adopt(layout, release, &made_with) {
            Some(from) => {
                let note = format!(
                    "class-data archive: copied from release {from} (the same jar and JDK) in {} ms; using {}",
                    checking.elapsed().as_millis(),
                    archive.display()
                );
                return using(layout, release, made_with, creds, archive, note);
            }
            None => None,
        },
        Err(Invalid::Stale(why)) => Some(why),
    };
    let made = dump_dir(layout, creds)
        .map_err(|e| e.to_string())
        .and_then(|(dir, owner)| {
            let options = dump_options(&release.manifest.run.argv, &dir)?;
            Ok((dir, owner, options))
        });
    match made {
        Ok((dir, owner, options)) => {
            let writes =
                "this run records its classes, and an archive is made from them once it is healthy";
            let note = match ignored {
                Some(why) => format!(
                    "class-data archive ignored: {why}; this start goes on without it and {writes}"
                ),
                None => format!("class-data archive: none yet; {writes}"),
            };
            Plan {
                class_data: ClassData::Record(Box::new(Dump {
                    dir,
                    owner,
                    release_dir: release.dir.clone(),
                    release_id: release.manifest.id.clone(),
                    made_with,
                    options,
                })),
                note: Some(note),
            }
        }
        Err(e) => {
            let why = ignored
                .map(|w| format!("archive ignored: {w}; "))
                .unwrap_or_default();
            off(Some(format!(
                "class-data sharing off for this start: {why}cannot create a directory for the JVM to write one: {e}"
            )))
        }
    }
}

/// A start that maps `archive` and records its classes beside it, for
/// [`keep_list`]; without recording when its directory cannot be made
/// (the note says so: the start goes on with the archive).
fn using(
    layout: &Layout,
    release: &Release,
    made_with: MadeWith,
    creds: Option<&Credentials>,
    archive: PathBuf,
    note: String,
) -> Plan {
    // Once per release and host: a list a run of this release recorded
    // is as fresh as the next would be, and recording costs every start
    // a little CPU. (An inherited list is the previous release's.)
    if is_file(&release.dir.join(KEPT_CLASS_LIST)) {
        return Plan {
            class_data: ClassData::Use {
                archive,
                list: None,
            },
            note: Some(note),
        };
    }
    let (list, note) = match Dump::for_release(layout, release, made_with, creds) {
        Ok(dump) => (
            Some(Box::new(dump)),
            format!("{note}; this run records its class list for the release"),
        ),
        Err(e) => (
            None,
            format!("{note}; this run's class list is not recorded ({e})"),
        ),
    };
    Plan {
        class_data: ClassData::Use { archive, list },
        note: Some(note),
    }
}

/// A regular file (not a link) is at `path`.
#[allow(clippy::disallowed_methods)] // root-only: a release dir (root's 0755)
pub(super) fn is_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

/// Why an archive is not used.
enum Invalid {
    /// There is none.
    Missing,
    /// There is one, but it must not be used; says why.
    Stale(String),
}

/// The archive in `dir` is there, ours, unchanged, and made with this JDK and jar.
#[allow(clippy::disallowed_methods)] // root-only: the release dir (root's 0755)
pub(super) fn check_archive(dir: &Path, now: &MadeWith) -> Result<(), String> {
    check(dir, now).map_err(|e| match e {
        Invalid::Missing => format!("no {CDS_ARCHIVE}"),
        Invalid::Stale(why) => why,
    })
}

#[allow(clippy::disallowed_methods)] // root-only: the release dir (root's 0755)
fn check(dir: &Path, now: &MadeWith) -> Result<(), Invalid> {
    let archive = dir.join(CDS_ARCHIVE);
    let meta = match fs::symlink_metadata(&archive) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Invalid::Missing),
        Err(e) => return Err(Invalid::Stale(format!("cannot read {CDS_ARCHIVE}: {e}"))),
    };
    if !meta.is_file() {
        return Err(Invalid::Stale(format!(
            "{CDS_ARCHIVE} is not a regular file"
        )));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(Invalid::Stale(format!(
            "{CDS_ARCHIVE} is writable by others than the supervisor's user"
        )));
    }
    let record_path = dir.join(CDS_IDENTITY);
    let record: Record = fs::read(&record_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| {
            Invalid::Stale(format!(
                "no usable record of how it was made ({CDS_IDENTITY}: {e})"
            ))
        })?;
    let archive_now = FileId::of(&archive)
        .map_err(|e| Invalid::Stale(format!("cannot read {CDS_ARCHIVE}: {e}")))?;
    let then = &record.made_with;
    if then.java != now.java || then.libjvm != now.libjvm {
        return Err(Invalid::Stale(format!(
            "the JDK changed since it was written ({} {}, now {} {})",
            describe(&then.java),
            then.libjvm.as_ref().map(describe).unwrap_or_default(),
            describe(&now.java),
            now.libjvm.as_ref().map(describe).unwrap_or_default(),
        )));
    }
    if then.jar != now.jar {
        return Err(Invalid::Stale(format!(
            "the jar changed since it was written ({}, now {})",
            describe(&then.jar),
            describe(&now.jar)
        )));
    }
    if record.archive != archive_now {
        return Err(Invalid::Stale(format!(
            "{CDS_ARCHIVE} changed since it was written ({}, now {})",
            describe(&record.archive),
            describe(&archive_now)
        )));
    }
    match digest::sha256_file(&archive) {
        Ok(sum) if sum == record.archive_sha256 => Ok(()),
        Ok(_) => Err(Invalid::Stale(format!(
            "{CDS_ARCHIVE} is damaged (its sha256 differs from the one recorded)"
        ))),
        Err(e) => Err(Invalid::Stale(format!("cannot read {CDS_ARCHIVE}: {e}"))),
    }
}

/// The sha256 `cds.json` in `dir` records for its archive.
#[allow(clippy::disallowed_methods)] // root-only: the release dir (root's 0755)
pub(super) fn recorded_sha256(dir: &Path) -> Result<String, String> {
    let path = dir.join(CDS_IDENTITY);
    fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
        .map(|r| r.archive_sha256)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `PATH (N bytes, mtime S)`: enough to see what differs.
fn describe(f: &FileId) -> String {
    format!("{} {} bytes mtime {}", f.path.display(), f.size, f.mtime)
}

/// The JDK and jar this release runs: `java` from the clean `PATH` (as the
/// spawn finds it), its `lib/server/libjvm.so`, and the release's jar.
pub(super) fn made_with(release: &Release) -> Result<MadeWith, String> {
    let (java, libjvm) = jdk_of(&release.manifest.run.argv, &release.dir)?;
    let jar_path = release.dir.join(&release.manifest.jar);
    let jar = FileId::of(&jar_path).map_err(|e| format!("{}: {e}", jar_path.display()))?;
    Ok(MadeWith { java, libjvm, jar })
}

/// The JDK a run of `argv` in `dir` starts: `java` as the spawn finds it,
/// and its `libjvm.so`.
fn jdk_of(argv: &[String], dir: &Path) -> Result<(FileId, Option<FileId>), String> {
    let argv0 = argv
        .first()
        .ok_or_else(|| "run.argv is empty".to_string())?;
    let java = process::resolve_program(argv0, CLEAN_PATH.as_ref(), dir)?;
    let java = FileId::of(&java).map_err(|e| format!("{}: {e}", java.display()))?;
    // bin/java → lib/server/libjvm.so: the JVM proper, which a JDK update replaces.
    let libjvm = java
        .path
        .parent()
        .and_then(Path::parent)
        .map(|home| home.join("lib/server/libjvm.so"))
        .and_then(|p| FileId::of(&p).ok());
    Ok((java, libjvm))
}

/// [`MadeWith::jdk`] of a run of `argv` in `dir`, without a jar.
pub(super) fn jdk_identity(argv: &[String], dir: &Path) -> Result<String, String> {
    let (java, libjvm) = jdk_of(argv, dir)?;
    let jar = java.clone();
    Ok(MadeWith { java, libjvm, jar }.jdk())
}

/// `cds-dump/`, opened through the guarded layer and checked to be
/// root's alone (ours, writable by nobody else): created when missing.
fn dump_parent(layout: &Layout) -> io::Result<GuardedDir> {
    let entry = layout.directory(Dir::CdsDump);
    let (parent, _) = crate::host::fs::create_missing(&entry)?;
    let st = parent.stat()?;
    if st.uid != nix::unistd::geteuid().as_raw() || st.mode & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} must belong to the supervisor's user and be writable by nobody else \
             (it is uid {}, mode {:04o})",
            parent.path().display(),
            st.uid,
            st.mode
        )));
    }
    Ok(parent)
}

/// Creates this supervisor's dump directory, empty, for the service's
/// user (`mkdirat` + `fchown` in root's `cds-dump/`); returns its absolute
/// path and the uid that must own what the JVM writes.
fn dump_dir(layout: &Layout, creds: Option<&Credentials>) -> io::Result<(PathBuf, u32)> {
    let parent = dump_parent(layout)?;
    let name = std::process::id().to_string();
    parent.remove_tree(&name)?;
    let owner = creds.map(|c| Owner {
        uid: c.uid,
        gid: c.gid,
    });
    parent.make_dir(&name, NewFile { mode: 0o700, owner })?;
    let uid = owner.map_or_else(|| nix::unistd::geteuid().as_raw(), |o| o.uid);
    // The JVM runs in the release directory: a relative `--root` would miss.
    let path = std::path::absolute(layout.cds_dump_dir(std::process::id()))?;
    Ok((path, uid))
}

impl Dump {
    /// A dump of `release` in a fresh directory of this process, for the
    /// service's user (`creds`), from the class list put there by
    /// [`Dump::put_class_list`] or recorded there by a run.
    pub(super) fn for_release(
        layout: &Layout,
        release: &Release,
        made_with: MadeWith,
        creds: Option<&Credentials>,
    ) -> Result<Dump, String> {
        let (dir, owner) = dump_dir(layout, creds)
            .map_err(|e| format!("cannot create a directory for the dump: {e}"))?;
        let options = dump_options(&release.manifest.run.argv, &dir)?;
        Ok(Dump {
            dir,
            owner,
            release_dir: release.dir.clone(),
            release_id: release.manifest.id.clone(),
            made_with,
            options,
        })
    }

    /// Copies the class list kept in `from` (a release's, root's) into the
    /// dump's directory as root's read-only file, for the JVM to read.
    #[allow(clippy::disallowed_methods)] // root-only: a release dir (root's 0755)
    pub(super) fn put_class_list(&self, from: &Path) -> Result<(), String> {
        let mut src = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(from)
            .map_err(|e| format!("{}: {e}", from.display()))?
            .take(MAX_CLASS_LIST);
        let leaf = GuardedDir::open(&self.dir).map_err(|e| e.to_string())?;
        let mut dst = leaf
            .create_new(
                CLASS_LIST,
                NewFile {
                    mode: 0o444,
                    owner: None,
                },
                nix::fcntl::OFlag::empty(),
            )
            .map_err(|e| e.to_string())?;
        io::copy(&mut src, &mut dst)
            .map(|_| ())
            .map_err(|e| format!("copying {}: {e}", from.display()))
    }
}

/// Removes dump directories of supervisors that no longer run (killed
/// before they could clean up).
fn sweep_dumps(layout: &Layout) {
    let Ok(parent) = dump_parent(layout) else {
        return;
    };
    for name in parent.entries().unwrap_or_default() {
        let Some(pid) = name.to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && nix::sys::signal::kill(pid_of(pid), None).is_err() {
            let _ = parent.remove_tree(&name);
        }
    }
}

fn pid_of(pid: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Removes a dump run's directory, whatever it holds, through directory
/// fds only (see `GuardedDir::remove_tree`).
pub fn discard(dump: &Dump) {
    if let (Some(parent), Some(name)) = (dump.dir.parent(), dump.dir.file_name())
        && let Ok(parent) = GuardedDir::open(parent)
    {
        let _ = parent.remove_tree(name);
    }
}

/// Starts the static dump of a recording run's classes beside it: `java
/// -Xshare:dump` as the service's user, in the release directory with the
/// service's environment, in its own session, at idle CPU priority
/// (`SCHED_IDLE`, nice 19) so that it takes only what nothing else wants.
pub fn start_dump(
    layout: &Layout,
    release: &Release,
    dump: &Dump,
    creds: Option<&Credentials>,
) -> io::Result<Child> {
    spawn_dump(layout, release, dump, creds, true)
}

/// Starts a dump as [`start_dump`] does; at idle CPU priority only when
/// `idle` (a deploy's shared dump runs at normal priority: a deploy waits).
pub(super) fn spawn_dump(
    layout: &Layout,
    release: &Release,
    dump: &Dump,
    creds: Option<&Credentials>,
    idle: bool,
) -> io::Result<Child> {
    let env = spawn::service_env(layout, release, creds);
    let mut cmd = Command::new(&dump.made_with.java.path);
    cmd.args(&dump.options)
        .current_dir(&release.dir)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    process::prepare_child(&mut cmd, true, creds.cloned());
    if !idle {
        return cmd.spawn();
    }
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            // Lowering one's own priority needs no privilege; failing to is harmless.
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            Ok(())
        });
    }
    cmd.spawn()
}

/// Kills a dump still running (its whole session) and reaps it.
pub fn kill_dump(child: &mut Child) {
    let _ = process::signal_group(child.id() as i32, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// After a dump ended: keeps the archive when the JVM exited with 0 and it
/// is a complete archive. Returns the line for the log.
pub fn keep(dump: &Dump, exit: ExitInfo, took: Duration) -> String {
    let result = match exit {
        ExitInfo::Code(0) => copy_out(dump, KEPT_CLASS_LIST),
        other => Err(format!("the dump failed ({other})")),
    };
    discard(dump);
    match result {
        Ok(line) => format!("{line}; dumped in {} ms", took.as_millis()),
        Err(why) => format!("class-data archive not kept: {why}"),
    }
}

/// Copies the dumped archive into a file of our own next to the release,
/// then records what it was made with. The dump is reached through the
/// guarded layer: the run's directory and the archive must be the
/// service user's, the archive a regular file with one name, dense and at
/// most [`MAX_ARCHIVE`].
pub(super) fn copy_out(dump: &Dump, list_name: &str) -> Result<String, String> {
    let release_dir = &dump.release_dir;
    let started = Instant::now();
    let src_path = dump.dir.join(CDS_ARCHIVE);
    let leaf = open_leaf(dump)?;
    let expect = Expect {
        owned: Owned::By(dump.owner),
        max_size: Some(MAX_ARCHIVE),
        dense: true,
    };
    let src = match leaf.open_read(CDS_ARCHIVE, &expect) {
        Ok(src) => src,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("the JVM wrote none ({}: {e})", src_path.display()));
        }
        Err(e) => return Err(e.to_string()),
    };
    let size = src.metadata().map_err(|e| e.to_string())?.len();
    // At most the size checked: a file still growing is cut there (and
    // then fails the JVM's own checks, or the next start's hash).
    let mut src = src.take(size);
    let mut magic = [0u8; 4];
    src.read_exact(&mut magic)
        .map_err(|e| format!("{}: {e}", src_path.display()))?;
    if u32::from_ne_bytes(magic) != STATIC_ARCHIVE_MAGIC {
        return Err("the JVM's dump is incomplete (no archive header)".to_string());
    }
    let size = install(&mut (&magic[..]).chain(src), release_dir, &dump.made_with)
        .map_err(|e| format!("cannot copy it next to the release: {e}"))?;
    // Its class list too: a deploy of the next artifact dumps from it.
    if let Err(e) = keep_class_list(&leaf, dump, list_name) {
        let _ = fs_remove(&release_dir.join(list_name));
        return Ok(format!(
            "class-data archive written: {} ({} KiB); its class list not kept ({e}); later starts of release {} use it",
            release_dir.join(CDS_ARCHIVE).display(),
            size / 1024,
            dump.release_id
        ));
    }
    let archive = release_dir.join(CDS_ARCHIVE);
    Ok(format!(
        "class-data archive written: {} ({} KiB, copied in {} ms); later starts of release {} use it",
        archive.display(),
        size / 1024,
        started.elapsed().as_millis(),
        dump.release_id
    ))
}

/// The run's dump directory, opened through the guarded layer and checked
/// to be the service user's.
fn open_leaf(dump: &Dump) -> Result<GuardedDir, String> {
    let leaf = dump
        .dir
        .parent()
        .zip(dump.dir.file_name())
        .ok_or_else(|| format!("{} is not a directory in cds-dump/", dump.dir.display()))
        .and_then(|(parent, name)| {
            GuardedDir::open(parent)
                .and_then(|p| p.subdir(name))
                .map_err(|e| e.to_string())
        })?;
    let leaf_owner = leaf.stat().map_err(|e| e.to_string())?.uid;
    if leaf_owner != dump.owner {
        return Err(format!(
            "{} belongs to uid {leaf_owner}, not the service's user",
            dump.dir.display()
        ));
    }
    Ok(leaf)
}

/// [`DUMP_DELAY`] after a run that maps an archive made elsewhere is
/// healthy: keeps the class list it recorded (the classes its first
/// requests loaded are in it by then) as the release's `cds.classes`, in
/// place of any inherited one, so the next deploy of a new artifact can
/// dump from a list of this release on this host. Nothing is dumped.
/// Returns the line for the log; a failure leaves the release as it was.
pub fn keep_list(dump: &Dump) -> String {
    let kept = dump.release_dir.join(KEPT_CLASS_LIST);
    match open_leaf(dump)
        .and_then(|leaf| keep_class_list(&leaf, dump, KEPT_CLASS_LIST).map_err(|e| e.to_string()))
    {
        Ok(size) => {
            // Its own list supersedes the one its archive was dumped from.
            let _ = fs_remove(&dump.release_dir.join(INHERITED_CLASS_LIST));
            format!(
                "class-data archive: this run's class list kept as {} ({} KiB) for the next artifact's archive",
                kept.display(),
                size.div_ceil(1024)
            )
        }
        Err(e) => format!(
            "class-data archive: this run's class list not kept ({e}); {} stays as it was",
            kept.display()
        ),
    }
}

/// Copies the dump's class list (the service user's, bounded) next to the
/// release as root's file `name`, its whole lines only; returns its size.
fn keep_class_list(leaf: &GuardedDir, dump: &Dump, name: &str) -> io::Result<u64> {
    // The service user's (a run's), or root's (the list a shared dump was
    // given): both list classes of this service.
    let expect = Expect {
        owned: Owned::ByDirOwnerOrMe,
        max_size: Some(MAX_CLASS_LIST),
        dense: false,
    };
    let src = leaf.open_read(CLASS_LIST, &expect)?;
    let size = src.metadata()?.len();
    let mut bytes = Vec::new();
    src.take(size.min(MAX_CLASS_LIST)).read_to_end(&mut bytes)?;
    // A JVM still running may be in the middle of a line.
    let whole = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |end| end + 1);
    if whole == 0 {
        return Err(io::Error::other(format!(
            "{} holds no complete line",
            dump.dir.join(CLASS_LIST).display()
        )));
    }
    write_root_file(&mut &bytes[..whole], &dump.release_dir, name)?;
    Ok(whole as u64)
}

#[allow(clippy::disallowed_methods)] // root-only: the release dir (root's 0755)
fn fs_remove(path: &Path) -> io::Result<()> {
    fs::remove_file(path)
}

/// Writes `name` in `dir` (root's release directory) from `src`: a new
/// file of our own (0444), synced, renamed into place.
#[allow(clippy::disallowed_methods)] // root-only: the release dir (root's 0755)
fn write_root_file(src: &mut impl Read, dir: &Path, name: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| -> io::Result<()> {
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&tmp)?;
        dst.set_permissions(fs::Permissions::from_mode(0o444))?;
        io::copy(src, &mut dst)?;
        dst.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copies an archive from `src` into `release_dir` as a new file of our
/// own (0444), renames it into place, then records it; returns its size.
#[allow(clippy::disallowed_methods)] // root-only: writes into the release dir (root's 0755)
fn install(src: &mut impl Read, release_dir: &Path, made_with: &MadeWith) -> io::Result<u64> {
    install_known(src, release_dir, made_with, None)
}

/// [`install`], with the sha256 of what `src` holds when the caller
/// checked it already (a shared archive): not hashed again.
#[allow(clippy::disallowed_methods)] // root-only: writes into the release dir (root's 0755)
pub(super) fn install_known(
    src: &mut impl Read,
    release_dir: &Path,
    made_with: &MadeWith,
    sha256: Option<String>,
) -> io::Result<u64> {
    write_root_file(src, release_dir, CDS_ARCHIVE)?;
    let archive = release_dir.join(CDS_ARCHIVE);
    let archive_id = FileId::of(&archive)?;
    let size = archive_id.size;
    let archive_sha256 = match sha256 {
        Some(sum) => sum,
        None => digest::sha256_file(&archive)?,
    };
    let record = Record {
        made_with: made_with.clone(),
        archive: archive_id,
        archive_sha256,
    };
    let text = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
    write_atomic(&release_dir.join(CDS_IDENTITY), &text)?;
    Ok(size)
}

/// A release of the same jar (a re-deploy of the same artifact) with a
/// valid archive made by this JDK: copied into `release`, whose path the
/// JVM does not check (it runs `-jar <jar>` from the release directory).
/// Returns the id of the release it came from.
#[allow(clippy::disallowed_methods)] // root-only: releases/ and their dirs (root's 0755)
fn adopt(layout: &Layout, release: &Release, now: &MadeWith) -> Option<String> {
    let mut others: Vec<PathBuf> = fs::read_dir(layout.releases_dir())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| fs::canonicalize(p).is_ok_and(|real| real != release.dir))
        .collect();
    // The newest first: the likeliest to have been made by this JDK.
    others.sort();
    for dir in others.iter().rev() {
        let Ok(dir) = fs::canonicalize(dir) else {
            continue;
        };
        if check(&dir, now).is_err() {
            continue;
        }
        let Ok(mut src) = fs::File::open(dir.join(CDS_ARCHIVE)) else {
            continue;
        };
        if install(&mut src, &release.dir, now).is_ok() && check(&release.dir, now).is_ok() {
            return dir.file_name().map(|n| n.to_string_lossy().into_owned());
        }
    }
    None
}

/// Whether process `pid` maps `archive`; `None` when its maps cannot be read.
#[allow(clippy::disallowed_methods)] // root-only: /proc
pub fn mapped(pid: i32, archive: &Path) -> Option<bool> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let path = archive.to_string_lossy();
    Some(maps.lines().any(|l| l.ends_with(path.as_ref())))
}

/// Removes an archive HotSpot refused, and its record: the next start
/// writes a new one instead of being refused again.
#[allow(clippy::disallowed_methods)] // root-only: the release dir (root's 0755)
pub fn forget(archive: &Path) {
    if let Some(dir) = archive.parent() {
        let _ = fs::remove_file(dir.join(CDS_IDENTITY));
    }
    let _ = fs::remove_file(archive);
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests: their own temp dirs
mod tests {
    use super::*;

    /// A dump run of a fake release under a temp root: its dump dir made by
    /// `dump_dir`, as a start makes it.
    fn dump_in(root: &Path) -> Dump {
        let layout = Layout::new(root, "svc");
        let release_dir = layout.release_dir("r1");
        fs::create_dir_all(&release_dir).expect("mkdir");
        let jar = release_dir.join("svc.jar");
        fs::write(&jar, "jar").expect("write");
        let id = FileId::of(&jar).expect("id");
        let (dir, owner) = dump_dir(&layout, None).expect("dump dir");
        Dump {
            dir,
            owner,
            release_dir,
            release_id: "r1".into(),
            made_with: MadeWith {
                java: id.clone(),
                libjvm: None,
                jar: id,
            },
            options: Vec::new(),
        }
    }

    #[test]
    fn a_sparse_dump_with_the_right_header_is_not_copied() {
        let root = tempfile::tempdir().expect("tempdir");
        let dump = dump_in(root.path());
        let archive = dump.dir.join(CDS_ARCHIVE);
        fs::write(&archive, STATIC_ARCHIVE_MAGIC.to_ne_bytes()).expect("write");
        fs::OpenOptions::new()
            .write(true)
            .open(&archive)
            .and_then(|f| f.set_len(64 << 20))
            .expect("sparse");
        let err = copy_out(&dump, KEPT_CLASS_LIST).expect_err("sparse");
        assert!(err.contains("is sparse"), "{err}");
        fs::OpenOptions::new()
            .write(true)
            .open(&archive)
            .and_then(|f| f.set_len(MAX_ARCHIVE + 1))
            .expect("sparse");
        let err = copy_out(&dump, KEPT_CLASS_LIST).expect_err("too big");
        assert!(err.contains("over the limit"), "{err}");
        assert!(!dump.release_dir.join(CDS_ARCHIVE).exists());
        discard(&dump);
        assert!(!dump.dir.exists());
    }

    #[test]
    fn a_link_or_fifo_in_place_of_the_dump_is_not_followed() {
        let root = tempfile::tempdir().expect("tempdir");
        let dump = dump_in(root.path());
        let precious = root.path().join("precious");
        fs::write(&precious, STATIC_ARCHIVE_MAGIC.to_ne_bytes()).expect("write");
        let archive = dump.dir.join(CDS_ARCHIVE);
        std::os::unix::fs::symlink(&precious, &archive).expect("symlink");
        let err = copy_out(&dump, KEPT_CLASS_LIST).expect_err("a link");
        assert!(err.contains("is a symlink"), "{err}");
        fs::remove_file(&archive).expect("rm");
        nix::unistd::mkfifo(&archive, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .expect("mkfifo");
        let err = copy_out(&dump, KEPT_CLASS_LIST).expect_err("a FIFO");
        assert!(err.contains("is a FIFO"), "{err}");
        // A directory with a link to outside, removed without following it.
        fs::create_dir(dump.dir.join("d")).expect("mkdir");
        std::os::unix::fs::symlink(root.path(), dump.dir.join("d/up")).expect("symlink");
        discard(&dump);
        assert!(!dump.dir.exists());
        assert!(precious.exists());
    }

    #[test]
    fn a_runs_class_list_replaces_the_kept_one_with_its_whole_lines() {
        let root = tempfile::tempdir().expect("tempdir");
        let dump = dump_in(root.path());
        let kept = dump.release_dir.join(KEPT_CLASS_LIST);
        fs::write(&kept, "Old\n").expect("write");
        // The JVM may be in the middle of a line.
        fs::write(dump.dir.join(CLASS_LIST), "java/lang/Object\nHello\nHel").expect("write");
        let line = keep_list(&dump);
        assert!(line.contains("class list kept"), "{line}");
        assert_eq!(
            fs::read_to_string(&kept).expect("read"),
            "java/lang/Object\nHello\n"
        );
        let meta = fs::symlink_metadata(&kept).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    }

    #[test]
    fn a_link_fifo_oversized_or_empty_file_in_place_of_a_runs_class_list_is_refused_and_the_kept_one_stays()
     {
        let root = tempfile::tempdir().expect("tempdir");
        let dump = dump_in(root.path());
        let kept = dump.release_dir.join(KEPT_CLASS_LIST);
        fs::write(&kept, "Old\n").expect("write");
        let list = dump.dir.join(CLASS_LIST);
        let precious = root.path().join("precious");
        fs::write(&precious, "Secret\n").expect("write");
        std::os::unix::fs::symlink(&precious, &list).expect("symlink");
        let refused = |what: &str| {
            let line = keep_list(&dump);
            assert!(line.contains("not kept") && line.contains(what), "{line}");
            assert_eq!(fs::read_to_string(&kept).expect("read"), "Old\n");
        };
        refused("is a symlink");
        fs::remove_file(&list).expect("rm");
        nix::unistd::mkfifo(&list, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .expect("mkfifo");
        refused("is a FIFO");
        fs::remove_file(&list).expect("rm");
        fs::write(&list, "Hello\n").expect("write");
        fs::OpenOptions::new()
            .write(true)
            .open(&list)
            .and_then(|f| f.set_len(MAX_CLASS_LIST + 1))
            .expect("grow");
        refused("over the limit");
        fs::write(&list, "no line ends").expect("write");
        refused("no complete line");
        discard(&dump);
        assert!(!dump.dir.exists());
        assert!(precious.exists());
    }
}
