//! The service log as a file: where it is (`[logs] file` of the release,
//! `console.log` by default), opening it safely, the event line format, and
//! reading the last lines back for a failed start.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::host::fs::{self, Expect, GuardedDir};

use crate::host::os::journal;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::LogTarget;
use crate::protocol::names;

use super::release::{self, Release};
use super::rotate::{self, Owner};
use super::spawn;

/// The file a release's service output goes to: its `[logs] file` in the
/// log dir. Refuses a name that is not one plain file name.
pub fn path_for(layout: &Layout, release: &Release) -> Result<PathBuf, String> {
    let file = &release.manifest.logs.file;
    names::file_name(file).map_err(|e| format!("logs.file: {e}"))?;
    Ok(layout.log_file_named(file))
}

/// Where the service's output is read from (`shipjar logs`, the tail of a
/// failed start): the file of the release `current` points to, else the
/// default name.
pub fn service_log(layout: &Layout) -> PathBuf {
    release::current(layout)
        .ok()
        .and_then(|r| path_for(layout, &r).ok())
        .unwrap_or_else(|| layout.log_file())
}

/// The last `n` lines of the service's output, wherever `[logs] to` of the
/// release `current` points to sends it; masked, long lines cut.
pub fn service_tail(layout: &Layout, n: usize) -> Vec<String> {
    match release::current(layout).map(|r| r.manifest.logs.to) {
        Ok(LogTarget::Journal) => journal::tail(layout.name(), layout.instance(), n)
            .iter()
            .map(|line| cut(&crate::host::secrets::mask(line)))
            .collect(),
        _ => tail(&service_log(layout), n),
    }
}

/// A line no longer than [`MAX_TAIL_LINE`] characters.
fn cut(line: &str) -> String {
    match line.char_indices().nth(MAX_TAIL_LINE) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

/// Lines a failed start shows from the log.
pub const TAIL_LINES: usize = 20;

/// Longest log line shown in a tail; the rest is cut.
const MAX_TAIL_LINE: usize = 500;

/// Opens the service log of the release `current` points to for appending
/// (for the supervisor's own stderr before its log pipe exists). A file
/// this creates gets the owner the supervisor gives its log files: as root,
/// the release's user and group.
pub fn open_service_log(layout: &Layout) -> (PathBuf, io::Result<File>) {
    let Ok(current) = release::current(layout) else {
        let path = layout.log_file();
        let file = open_append(&path);
        return (path, file);
    };
    let path = path_for(layout, &current).unwrap_or_else(|_| layout.log_file());
    let owner = match spawn::credentials(&current) {
        Ok(Some(c)) => Some(Owner {
            uid: c.uid,
            gid: c.gid,
        }),
        _ => None,
    };
    let file = rotate::log_dir(&path).and_then(|(dir, name)| rotate::open_log(&dir, &name, owner));
    (path, file)
}

/// Opens (creating) the log for appending, creating its directory too,
/// through the guarded layer (see [`rotate::open_log`]). As root, a file
/// this creates gets the owner and group of the log dir (the service's).
pub fn open_append(path: &Path) -> io::Result<File> {
    let (dir, name) = rotate::log_dir(path)?;
    let owner = new_file_owner(&dir)?;
    rotate::open_log(&dir, &name, owner)
}

/// As root, the owner and group a new log in `dir` gets: the dir's (the
/// service's); none otherwise.
fn new_file_owner(dir: &crate::host::fs::GuardedDir) -> io::Result<Option<Owner>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let st = dir.stat()?;
    Ok(Some(Owner {
        uid: st.uid,
        gid: st.gid,
    }))
}

/// Opens (creating) `path` as a log rotated by `rotation`, owned as
/// [`open_append`] makes a new file (another log beside the service's,
/// rotated the same way: the proxy's `access.log`).
pub fn open_rotating(path: &Path, rotation: Rotation) -> io::Result<RotatingFile> {
    let (dir, name) = rotate::log_dir(path)?;
    let owner = new_file_owner(&dir)?;
    RotatingFile::open_in(dir, name, rotation, owner)
}

pub use super::rotate::{RotatingFile, Rotation};

pub use crate::protocol::clock::now_rfc3339;

pub use super::rotate::format_event;

/// Appends one event straight to the log file, for when the supervisor
/// could not set up its log pipe.
pub fn append_event(path: &Path, message: &str) {
    if let Ok(mut file) = open_append(path) {
        // One write: with O_APPEND it lands whole. Errors are ignored: this
        // is the fallback of the fallback.
        let _ = file.write_all(format_event(message).as_bytes());
    }
}

/// The last `n` lines of the log, reaching into the newest rotated file
/// (`.1`) when the current one has fewer. A log the guarded layer refuses
/// (a link, a FIFO, a hard link) is one line saying why instead.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    tail_checked(path, n).unwrap_or_else(|e| vec![format!("(log not shown: {e})")])
}

/// [`tail`], with a refused or unreadable log as the error; a missing one
/// has no lines.
pub fn tail_checked(path: &Path, n: usize) -> Result<Vec<String>, String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = match GuardedDir::open(dir) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut lines = tail_of(&dir, name, n)?;
    if lines.len() < n {
        let mut rotated = name.to_os_string();
        rotated.push(".1");
        // The older file only adds context: one that cannot be read is skipped.
        let mut older = tail_of(&dir, &rotated, n - lines.len()).unwrap_or_default();
        older.append(&mut lines);
        lines = older;
    }
    Ok(lines)
}

/// Opens the log file `name` in `dir` for reading through the guarded
/// layer: `None` when there is none.
pub fn open_read(dir: &GuardedDir, name: &OsStr) -> Result<Option<File>, String> {
    match dir.open_read(name, &Expect::DIR_OWNER_OR_ME) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if fs::is_refusal(&e) => Err(e.to_string()),
        Err(e) => Err(format!("{}: {e}", dir.join(name).display())),
    }
}

/// The last `n` lines of one file (lossy UTF-8, masked, long lines cut), oldest first.
fn tail_of(dir: &GuardedDir, name: &OsStr, n: usize) -> Result<Vec<String>, String> {
    let Some(mut file) = open_read(dir, name)? else {
        return Ok(Vec::new());
    };
    // Reading the end is enough: 20 lines of a sane log fit in 64 KiB.
    const WINDOW: u64 = 64 * 1024;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Ok(Vec::new());
    }
    let mut buf = Vec::new();
    if file.take(WINDOW).read_to_end(&mut buf).is_err() {
        return Ok(Vec::new());
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    // A window starting mid-line would show a fragment.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..]
        .iter()
        .map(|line| {
            // Masked before it is cut, so no part of a secret is kept.
            let line = crate::host::secrets::mask(line.trim_end_matches('\r'));
            match line.char_indices().nth(MAX_TAIL_LINE) {
                Some((cut, _)) => format!("{}…", &line[..cut]),
                None => line.to_string(),
            }
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests: their own temp dirs
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn tail_of_a_fifo_or_a_link_says_why_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .expect("mkfifo");
        let started = std::time::Instant::now();
        let lines = tail(&path, 3);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("is a FIFO, not a regular file"),
            "{lines:?}"
        );
        fs::remove_file(&path).expect("rm");
        let secret = dir.path().join("secret");
        fs::write(&secret, "root only\n").expect("write");
        std::os::unix::fs::symlink(&secret, &path).expect("symlink");
        let err = tail_checked(&path, 3).expect_err("a link");
        assert!(err.contains("is a symlink"), "{err}");
    }

    #[test]
    fn a_secret_cut_by_the_line_limit_is_masked_whole() {
        use crate::protocol::mask::{Masker, SecretValue};
        let secret = "cut-secret-3f9a1c7e-0b";
        crate::host::secrets::use_masker(Masker::new(&[SecretValue {
            value: secret.into(),
            allow_short: false,
        }]));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, format!("{}{secret} tail\n", "x".repeat(490))).unwrap();
        let shown = tail(&path, 1);
        assert_eq!(shown, [format!("{}******** t…", "x".repeat(490))]);
    }

    #[test]
    fn tail_returns_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        assert!(tail(&path, 3).is_empty());
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, text).expect("write");
        assert_eq!(tail(&path, 3), vec!["line 28", "line 29", "line 30"]);
        assert_eq!(tail(&path, 100).len(), 30);
    }

    #[test]
    fn tail_reaches_into_the_rotated_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        fs::write(dir.path().join("log.1"), "a\nb\nc\n").expect("write");
        fs::write(&path, "d\n").expect("write");
        assert_eq!(tail(&path, 3), vec!["b", "c", "d"]);
    }

    #[test]
    fn tail_of_huge_log_skips_partial_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut text = "x".repeat(100_000);
        text.push_str("\nlast\n");
        fs::write(&path, text).expect("write");
        assert_eq!(tail(&path, 5), vec!["last"]);
    }
}
