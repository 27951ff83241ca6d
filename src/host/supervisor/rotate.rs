//! The service log file with rotation by size: `console.log` is renamed to
//! `console.log.1` (older ones shift to `.2` … `.<keep>`, the oldest is
//! removed) and a new `console.log` is opened. Never copy-and-truncate: the
//! supervisor is the only writer, so a rename loses nothing. Rotated files
//! may be gzipped, aside, so the service never waits on compression.
//!
//! The log dir may be writable by the service user while the supervisor runs
//! as root, so nothing here follows a symlink or writes into a file that has
//! another name too (a hard link planted to make root write elsewhere).
//! A file shipjar creates gets the owner it is given; a file that was there
//! already keeps its owner and mode.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::thread::JoinHandle;

use nix::fcntl::OFlag;

use crate::host::fs::{self, Expect, GuardedDir, NewFile};

pub use crate::host::fs::Owner;

/// Rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file would grow past this many bytes; 0 never rotates.
    pub max_size: u64,
    /// Rotated files kept (`.1` … `.keep`).
    pub keep: u32,
    /// Gzip rotated files (`.1.gz` …).
    pub compress: bool,
}

/// The log file being written, and its rotated predecessors, all reached
/// through the log dir's fd.
pub struct RotatingFile {
    dir: GuardedDir,
    name: OsString,
    rotation: Rotation,
    owner: Option<Owner>,
    file: File,
    size: u64,
    compressing: Option<JoinHandle<()>>,
}

impl RotatingFile {
    /// Opens (creating) `path` for appending, creating its directory too.
    pub fn open(path: &Path, rotation: Rotation, owner: Option<Owner>) -> io::Result<Self> {
        let (dir, name) = log_dir(path)?;
        Self::open_in(dir, name, rotation, owner)
    }

    /// Opens (creating) the log `name` in `dir`, reached already.
    pub fn open_in(
        dir: GuardedDir,
        name: OsString,
        rotation: Rotation,
        owner: Option<Owner>,
    ) -> io::Result<Self> {
        let file = open_log(&dir, &name, owner)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            dir,
            name,
            rotation,
            owner,
            file,
            size,
            compressing: None,
        })
    }

    /// Appends `bytes`, rotating first when they would not fit. Chunks are
    /// never split, so a chunk of whole lines stays in one file.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> io::Result<()> {
        let max = self.rotation.max_size;
        if max > 0 && self.size > 0 && self.size + bytes.len() as u64 > max {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Renames the current file to `.1` (shifting the older ones) and opens a new one.
    pub fn rotate(&mut self) -> io::Result<()> {
        // One compression at a time, finished before names shift under it.
        if let Some(done) = self.compressing.take() {
            let _ = done.join();
        }
        let keep = self.rotation.keep.max(1);
        for ext in ["", ".gz"] {
            self.dir.remove_file(self.numbered(keep, ext))?;
        }
        for n in (1..keep).rev() {
            for ext in ["", ".gz"] {
                let from = self.numbered(n, ext);
                if self.dir.entry(&from)?.is_some() {
                    self.dir.rename(&from, self.numbered(n + 1, ext))?;
                }
            }
        }
        let first = self.numbered(1, "");
        self.dir.rename(&self.name, &first)?;
        // Nothing is lost if this fails: we keep writing to the renamed file.
        self.file = open_log(&self.dir, &self.name, self.owner)?;
        self.size = self.file.metadata()?.len();
        if self.rotation.compress {
            let owner = self.owner;
            let gz = self.numbered(1, ".gz");
            let dir = self.dir.try_clone()?;
            self.compressing = std::thread::Builder::new()
                .name("log-gzip".into())
                .spawn(move || {
                    // A failure leaves `.1` uncompressed, which is fine.
                    let _ = gzip(&dir, &first, &gz, owner);
                })
                .ok();
        }
        Ok(())
    }

    /// `<name>.<n><ext>`.
    fn numbered(&self, n: u32, ext: &str) -> OsString {
        let mut name = self.name.clone();
        name.push(format!(".{n}{ext}"));
        name
    }

    /// Waits for a compression in progress (at exit, and in tests).
    pub fn finish(&mut self) {
        if let Some(done) = self.compressing.take() {
            let _ = done.join();
        }
    }
}

/// The log file's directory, opened (created, 0750, when missing) through
/// the guarded layer, and the file's name in it.
pub fn log_dir(path: &Path) -> io::Result<(GuardedDir, OsString)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file in a directory", path.display()),
        ));
    };
    let (dir, _) = GuardedDir::open_or_create(dir, 0o750, None)?;
    Ok((dir, name.to_os_string()))
}

/// Opens the log file `name` in `dir` for appending: never through a
/// symlink, never a FIFO, socket, directory or a file with another name too
/// (a hard link planted to make root write elsewhere). A file this creates
/// is mode 0640 and given `owner`; an existing one keeps its owner and mode.
///
/// Anything else found under the name is moved aside (to
/// `<name>.refused-<n>`) and a new file started, with an event saying so:
/// the entry is in the service's own directory, so only the service (or
/// root) could have put it there, and refusing to start would let it stop
/// its own logging — or hang root, for a FIFO — without anyone noticing.
pub fn open_log(dir: &GuardedDir, name: &OsStr, owner: Option<Owner>) -> io::Result<File> {
    let new = NewFile { mode: 0o640, owner };
    match dir.open_append(name, new) {
        Err(e) if fs::is_refusal(&e) => {
            let aside = dir.move_aside(name)?;
            let mut file = dir.open_append(name, new)?;
            let note = format_event(&format!(
                "{e}; moved it aside to {} and started a new log file",
                aside.to_string_lossy()
            ));
            file.write_all(note.as_bytes())?;
            Ok(file)
        }
        other => other,
    }
}

/// Compresses `from` into `to` (via a temp name), then removes `from`; all
/// in `dir`, through its fd.
fn gzip(dir: &GuardedDir, from: &OsStr, to: &OsStr, owner: Option<Owner>) -> io::Result<()> {
    let mut input = dir.open_read(from, &Expect::DIR_OWNER_OR_ME)?;
    let mut tmp = to.to_os_string();
    tmp.push(".tmp");
    dir.remove_file(&tmp)?;
    let new = NewFile { mode: 0o640, owner };
    let out = dir.create_new(&tmp, new, OFlag::empty())?;
    let result = (|| {
        let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        io::copy(&mut input, &mut encoder)?;
        encoder.finish()?.sync_all()?;
        dir.rename(&tmp, to)?;
        dir.remove_file(from)
    })();
    if result.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    result
}

/// `2026-11-26T14:03:01.123Z [shipjar] MESSAGE\n`: supervisor events are
/// prefixed so they stand out from the service's own output.
pub fn format_event(message: &str) -> String {
    format!(
        "{} [shipjar] {message}\n",
        crate::protocol::clock::now_rfc3339()
    )
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests: their own temp dirs
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;

    fn open_path(path: &Path, owner: Option<Owner>) -> io::Result<File> {
        let (dir, name) = log_dir(path)?;
        open_log(&dir, &name, owner)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn read(path: &Path) -> String {
        let bytes = fs::read(path).expect("read");
        if path.extension().is_some_and(|e| e == "gz") {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut text)
                .expect("gunzip");
            text
        } else {
            String::from_utf8(bytes).expect("utf8")
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.log");
        let rotation = Rotation {
            max_size: 10,
            keep: 2,
            compress: false,
        };
        let mut log = RotatingFile::open(&path, rotation, None).expect("open");
        for chunk in ["aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "eeee\n", "ffff\n"] {
            log.write_chunk(chunk.as_bytes()).expect("write");
        }
        assert_eq!(names(dir.path()), ["svc.log", "svc.log.1", "svc.log.2"]);
        assert_eq!(read(&path), "eeee\nffff\n");
        assert_eq!(read(&dir.path().join("svc.log.1")), "cccc\ndddd\n");
        assert_eq!(read(&dir.path().join("svc.log.2")), "aaaa\nbbbb\n");
    }

    #[test]
    fn a_chunk_larger_than_the_limit_is_not_split() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.log");
        let rotation = Rotation {
            max_size: 4,
            keep: 3,
            compress: false,
        };
        let mut log = RotatingFile::open(&path, rotation, None).expect("open");
        log.write_chunk(b"0123456789\n").expect("write");
        log.write_chunk(b"abcdefghij\n").expect("write");
        assert_eq!(read(&path), "abcdefghij\n");
        assert_eq!(read(&dir.path().join("svc.log.1")), "0123456789\n");
    }

    #[test]
    fn compresses_rotated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.log");
        let rotation = Rotation {
            max_size: 6,
            keep: 3,
            compress: true,
        };
        let mut log = RotatingFile::open(&path, rotation, None).expect("open");
        for chunk in ["one\n", "two\n", "three\n", "four\n"] {
            log.write_chunk(chunk.as_bytes()).expect("write");
        }
        log.finish();
        assert_eq!(
            names(dir.path()),
            ["svc.log", "svc.log.1.gz", "svc.log.2.gz", "svc.log.3.gz"]
        );
        assert_eq!(read(&dir.path().join("svc.log.3.gz")), "one\n");
        assert_eq!(read(&dir.path().join("svc.log.2.gz")), "two\n");
        assert_eq!(read(&dir.path().join("svc.log.1.gz")), "three\n");
        assert_eq!(read(&path), "four\n");
    }

    #[test]
    fn an_existing_file_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.log");
        fs::write(&path, "theirs\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o604)).expect("chmod");
        let me = Owner {
            uid: nix::unistd::Uid::effective().as_raw(),
            gid: nix::unistd::Gid::effective().as_raw(),
        };
        let mut file = open_path(&path, Some(me)).expect("open");
        file.write_all(b"ours\n").expect("write");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o604);
        assert_eq!(read(&path), "theirs\nours\n");
        let new = dir.path().join("new.log");
        open_path(&new, Some(me)).expect("create");
        let mode = fs::metadata(&new).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode & !0o040, 0o600, "created 0640 (less the umask)");
    }

    #[test]
    fn a_symlink_hard_link_or_fifo_is_moved_aside_and_never_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        fs::write(&target, "precious\n").expect("write");
        let link = dir.path().join("svc.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let mut file = open_path(&link, None).expect("a new file");
        file.write_all(b"ours\n").expect("write");
        assert!(read(&link).contains("is a symlink, not a regular file"));
        assert!(read(&link).ends_with("started a new log file\nours\n"));
        fs::remove_file(&link).expect("rm");
        fs::hard_link(&target, &link).expect("hard link");
        open_path(&link, None).expect("a new file");
        assert!(read(&link).contains("a hard link"), "{}", read(&link));
        fs::remove_file(&link).expect("rm");
        nix::unistd::mkfifo(&link, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .expect("mkfifo");
        let started = std::time::Instant::now();
        open_path(&link, None).expect("a new file");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(read(&link).contains("is a FIFO"), "{}", read(&link));
        assert_eq!(read(&target), "precious\n");
        assert_eq!(
            names(dir.path()),
            [
                "elsewhere",
                "svc.log",
                "svc.log.refused-1",
                "svc.log.refused-2",
                "svc.log.refused-3"
            ]
        );
    }
}
