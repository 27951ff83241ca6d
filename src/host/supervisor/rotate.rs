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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crate::protocol::files::remove_if_present;

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

/// Owner and group given to every log file shipjar creates (when running as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The log file being written, and its rotated predecessors.
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    owner: Option<Owner>,
    file: File,
    size: u64,
    compressing: Option<JoinHandle<()>>,
}

impl RotatingFile {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path, rotation: Rotation, owner: Option<Owner>) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_log(path, owner)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
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
            remove_if_present(&self.numbered(keep, ext))?;
        }
        for n in (1..keep).rev() {
            for ext in ["", ".gz"] {
                let from = self.numbered(n, ext);
                if fs::symlink_metadata(&from).is_ok() {
                    fs::rename(&from, self.numbered(n + 1, ext))?;
                }
            }
        }
        let first = self.numbered(1, "");
        fs::rename(&self.path, &first)?;
        // Nothing is lost if this fails: we keep writing to the renamed file.
        self.file = open_log(&self.path, self.owner)?;
        self.size = 0;
        if self.rotation.compress {
            let owner = self.owner;
            let gz = self.numbered(1, ".gz");
            self.compressing = std::thread::Builder::new()
                .name("log-gzip".into())
                .spawn(move || {
                    // A failure leaves `.1` uncompressed, which is fine.
                    let _ = gzip(&first, &gz, owner);
                })
                .ok();
        }
        Ok(())
    }

    /// `<name>.log.<n><ext>`.
    fn numbered(&self, n: u32, ext: &str) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}{ext}"));
        PathBuf::from(name)
    }

    /// Waits for a compression in progress (at exit, and in tests).
    pub fn finish(&mut self) {
        if let Some(done) = self.compressing.take() {
            let _ = done.join();
        }
    }
}

/// Opens a log file for appending without following a symlink, and refuses
/// anything but a regular file with a single name. A file this creates is
/// mode 0640 and given `owner`; an existing one keeps its owner and mode.
pub fn open_log(path: &Path, owner: Option<Owner>) -> io::Result<File> {
    let open = |create: bool| {
        OpenOptions::new()
            .append(true)
            .create_new(create)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(path)
    };
    // Create it, or open what is there; the loop covers a file removed in between.
    for _ in 0..3 {
        match open(true) {
            Ok(file) => {
                check_plain(&file, path)?;
                if let Some(o) = owner {
                    std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))?;
                }
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        match open(false) {
            Ok(file) => {
                check_plain(&file, path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::Interrupted,
        format!("{} keeps appearing and disappearing", path.display()),
    ))
}

/// Errors unless `file` is a regular file with one link.
fn check_plain(file: &File, path: &Path) -> io::Result<()> {
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a plain log file (a hard link or not a regular file)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Compresses `from` into `to` (via a temp name), then removes `from`.
fn gzip(from: &Path, to: &Path, owner: Option<Owner>) -> io::Result<()> {
    let mut input = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)?;
    check_plain(&input, from)?;
    let mut tmp_name = to.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    remove_if_present(&tmp)?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&tmp)?;
    if let Some(o) = owner {
        std::os::unix::fs::fchown(&out, Some(o.uid), Some(o.gid))?;
    }
    let result = (|| {
        let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        io::copy(&mut input, &mut encoder)?;
        encoder.finish()?.sync_all()?;
        fs::rename(&tmp, to)?;
        fs::remove_file(from)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
        let mut file = open_log(&path, Some(me)).expect("open");
        file.write_all(b"ours\n").expect("write");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o604);
        assert_eq!(read(&path), "theirs\nours\n");
        let new = dir.path().join("new.log");
        open_log(&new, Some(me)).expect("create");
        let mode = fs::metadata(&new).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode & !0o040, 0o600, "created 0640 (less the umask)");
    }

    #[test]
    fn refuses_symlinks_and_hard_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        fs::write(&target, "precious\n").expect("write");
        let link = dir.path().join("svc.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(open_log(&link, None).is_err());
        fs::remove_file(&link).expect("rm");
        fs::hard_link(&target, &link).expect("hard link");
        assert!(open_log(&link, None).is_err());
        assert_eq!(read(&target), "precious\n");
    }
}
