//! The one guarded filesystem layer for root: every file operation root
//! performs in a directory another user can write (the service's log dir
//! and `shared/`, a class-data dump dir, anything under them) goes through
//! here, so no planted link, FIFO, hard link or swapped directory steers it.
//!
//! A [`GuardedDir`] is a directory held open by fd, reached from `/` one
//! component at a time with `O_NOFOLLOW`: a symlink on the way is followed
//! only when it sits in a directory that only root (or the effective user)
//! can write, so only such a user could have put it there. Everything below
//! is relative to that fd: `openat` with `O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`
//! and `fstat` checks (kind, owner, one link, size), `fchown`/`fchmod` on
//! the fd, `unlinkat`/`renameat`/`mkdirat`. Nothing here takes a path to a
//! chown, chmod, canonicalize or recursive remove. `clippy.toml` forbids the
//! path-based std functions everywhere else under `src/host`.

mod stat;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, fcntl, openat};
use nix::sys::stat::{Mode, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

pub use stat::{Kind, Stat};

use crate::protocol::layout::Directory;

/// Owner and group given to what the layer creates (as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Whose files a guarded open accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    /// The directory's owner, or the effective user (root: whoever could
    /// have written it anyway).
    ByDirOwnerOrMe,
    /// Exactly this user.
    By(u32),
}

/// What a file opened through the layer must be besides a regular file with
/// one name: whose, and how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// Whose file it must be.
    pub owned: Owned,
    /// Largest size (`st_size` and the allocated blocks) accepted.
    pub max_size: Option<u64>,
    /// Refuse a file with holes (fewer bytes allocated than its size by more
    /// than a MiB): a sparse file must not become a dense copy.
    pub dense: bool,
}

impl Expect {
    /// The directory owner's or ours, any size.
    pub const DIR_OWNER_OR_ME: Expect = Expect {
        owned: Owned::ByDirOwnerOrMe,
        max_size: None,
        dense: false,
    };
}

/// A file the layer created: its mode (set exactly, whatever the umask) and,
/// as root, its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFile {
    /// Permission bits.
    pub mode: u32,
    /// Owner and group, when given (root only).
    pub owner: Option<Owner>,
}

/// Why the layer refused an entry: what it is instead of what was expected.
/// Carried inside an `io::Error` (kind `InvalidData`); see [`is_refusal`].
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Whether `e` is the layer refusing an entry (a link, a FIFO, a hard link,
/// a foreign owner, too big) rather than an ordinary I/O error.
pub fn is_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Refused>())
}

fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refused(message))
}

const PLANTED: &str = "another user may have planted it";

/// Most symlinks followed while walking to a directory (as the kernel's ELOOP).
const MAX_LINKS: usize = 40;

/// Deepest tree [`GuardedDir::remove_tree`] descends into.
const MAX_DEPTH: usize = 32;

fn io_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Creates a directory of the layout's table when it is missing (its mode
/// exactly, missing parents 0755), through the guarded walk; true when it
/// was created. The owner is the caller's to set, on the returned fd.
pub fn create_missing(dir: &Directory) -> io::Result<(GuardedDir, bool)> {
    GuardedDir::open_or_create(&dir.path, dir.mode, None)
}

/// A directory held open by fd; every operation is relative to it.
#[derive(Debug)]
pub struct GuardedDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl GuardedDir {
    /// Opens the directory at `path`; a link on the way (the last component
    /// included) is followed only where the module doc says.
    pub fn open(path: &Path) -> io::Result<GuardedDir> {
        walk(path, None).map(|(dir, _)| dir)
    }

    /// Opens the directory at `path`, creating it (mode `mode`, exactly,
    /// and `owner` as root) and missing parents (0755, ours) when missing;
    /// true when the last component was created. An existing directory is
    /// left as it is.
    pub fn open_or_create(
        path: &Path,
        mode: u32,
        owner: Option<Owner>,
    ) -> io::Result<(GuardedDir, bool)> {
        walk(path, Some(NewFile { mode, owner }))
    }

    /// Another handle on the same directory (`dup`), for another thread.
    pub fn try_clone(&self) -> io::Result<GuardedDir> {
        Ok(GuardedDir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Its path, for messages (never used to reach it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fstat` of the directory itself.
    pub fn stat(&self) -> io::Result<Stat> {
        fstat(&self.fd).map(Stat::from).map_err(io_err)
    }

    /// `fchown` of the directory itself.
    pub fn chown(&self, owner: Owner) -> io::Result<()> {
        fchown(
            &self.fd,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
        )
        .map_err(|e| self.error(e, "cannot change the owner of"))
    }

    /// `fchmod` of the directory itself.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        fchmod(&self.fd, Mode::from_bits_truncate(mode))
            .map_err(|e| self.error(e, "cannot change the mode of"))
    }

    /// The path of `name` in this directory, for messages.
    pub fn join(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// What `name` is, without following it; `None` when there is nothing.
    pub fn entry(&self, name: impl AsRef<OsStr>) -> io::Result<Option<Stat>> {
        let name = plain(name.as_ref())?;
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Stat::from(st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.error_at(name, e, "cannot stat")),
        }
    }

    /// The names in this directory (without `.` and `..`).
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        let fd = openat(
            &self.fd,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.error(e, "cannot list"))?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| self.error(e, "cannot list"))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| self.error(e, "cannot list"))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_os_string());
            }
        }
        Ok(names)
    }

    /// The subdirectory `name`, refusing a link or anything but a directory.
    pub fn subdir(&self, name: impl AsRef<OsStr>) -> io::Result<GuardedDir> {
        let name = plain(name.as_ref())?;
        let flags = OFlag::O_RDONLY
            | OFlag::O_DIRECTORY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NONBLOCK;
        match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => Ok(GuardedDir {
                fd,
                path: self.join(name),
            }),
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => Err(self.not_a(name, Kind::Dir, e)),
            Err(e) => Err(self.error_at(name, e, "cannot open")),
        }
    }

    /// Creates the subdirectory `name` (`mkdirat`; it must not exist) with
    /// exactly `new.mode`, given to `new.owner` through its fd.
    pub fn make_dir(&self, name: impl AsRef<OsStr>, new: NewFile) -> io::Result<GuardedDir> {
        let name = plain(name.as_ref())?;
        mkdirat(&self.fd, name, Mode::from_bits_truncate(new.mode))
            .map_err(|e| self.error_at(name, e, "cannot create"))?;
        let dir = self.subdir(name)?;
        dir.claim(new)?;
        Ok(dir)
    }

    /// Gives a directory this process just created its exact mode and
    /// owner, through the fd — after checking it is still ours: where the
    /// parent is another user's to write, they could have put their own in
    /// its place between the `mkdirat` and the open.
    fn claim(&self, new: NewFile) -> io::Result<()> {
        let me = nix::unistd::geteuid().as_raw();
        let found = self.stat()?.uid;
        if found != me {
            return Err(refused(format!(
                "{} was replaced after it was created (now uid {found}'s); refusing it",
                self.path.display()
            )));
        }
        self.chmod(new.mode)?;
        if let Some(owner) = new.owner {
            self.chown(owner)?;
        }
        Ok(())
    }

    /// Opens `name` for reading: a regular file with one name that meets
    /// `expect`. Never follows a link and never blocks on a FIFO.
    pub fn open_read(&self, name: impl AsRef<OsStr>, expect: &Expect) -> io::Result<File> {
        let name = plain(name.as_ref())?;
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | guard_flags(),
            Mode::empty(),
        )
        .map_err(|e| self.open_error(name, e))?;
        self.checked(name, fd, expect)
    }

    /// Opens `name` for appending, creating it as `new` when missing. What
    /// is there must be a regular file with one name, the directory
    /// owner's or ours. Never follows a link and never blocks on a FIFO.
    pub fn open_append(&self, name: impl AsRef<OsStr>, new: NewFile) -> io::Result<File> {
        let name = plain(name.as_ref())?;
        let flags = OFlag::O_WRONLY | OFlag::O_APPEND | guard_flags();
        // Create it, or open what is there; the loop covers a file removed in between.
        for _ in 0..3 {
            match self.create_new(name, new, OFlag::O_APPEND) {
                Ok(file) => return Ok(file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            match openat(&self.fd, name, flags, Mode::empty()) {
                Ok(fd) => return self.checked(name, fd, &Expect::DIR_OWNER_OR_ME),
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(self.open_error(name, e)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            format!(
                "{} keeps appearing and disappearing",
                self.join(name).display()
            ),
        ))
    }

    /// Creates `name` (it must not exist: `O_EXCL`) for writing, with
    /// exactly `new.mode`, given to `new.owner` through its fd. `extra`
    /// adds open flags (`O_APPEND`).
    pub fn create_new(
        &self,
        name: impl AsRef<OsStr>,
        new: NewFile,
        extra: OFlag,
    ) -> io::Result<File> {
        let name = plain(name.as_ref())?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | guard_flags() | extra;
        let fd = openat(&self.fd, name, flags, Mode::from_bits_truncate(new.mode))
            .map_err(|e| self.open_error(name, e))?;
        fchmod(&fd, Mode::from_bits_truncate(new.mode))
            .map_err(|e| self.error_at(name, e, "cannot set the mode of"))?;
        if let Some(o) = new.owner {
            fchown(&fd, Some(Uid::from_raw(o.uid)), Some(Gid::from_raw(o.gid)))
                .map_err(|e| self.error_at(name, e, "cannot change the owner of"))?;
        }
        blocking(&fd).map_err(|e| self.error_at(name, e, "cannot open"))?;
        Ok(File::from(fd))
    }

    /// `renameat` of `from` to `to`, both in this directory (links are
    /// renamed, never followed).
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> io::Result<()> {
        let (from, to) = (plain(from.as_ref())?, plain(to.as_ref())?);
        nix::fcntl::renameat(&self.fd, from, &self.fd, to).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "cannot rename {} to {}: {e}",
                    self.join(from).display(),
                    self.join(to).display()
                ),
            )
        })
    }

    /// `unlinkat` of a non-directory `name`; gone already is fine.
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = plain(name.as_ref())?;
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.error_at(name, e, "cannot remove")),
        }
    }

    /// Removes `name` and, when it is a directory, everything in it, through
    /// directory fds only: a link is removed, never followed; an entry
    /// swapped meanwhile is removed where it is found or left. Gone already
    /// is fine.
    pub fn remove_tree(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        self.remove_tree_at(plain(name.as_ref())?, 0)
    }

    fn remove_tree_at(&self, name: &OsStr, depth: usize) -> io::Result<()> {
        match self.entry(name)? {
            None => return Ok(()),
            Some(st) if st.kind != Kind::Dir => return self.remove_file(name),
            Some(_) => {}
        }
        if depth >= MAX_DEPTH {
            return Err(refused(format!(
                "{} is nested deeper than {MAX_DEPTH} directories; not removed",
                self.join(name).display()
            )));
        }
        let sub = match self.subdir(name) {
            Ok(sub) => sub,
            // Replaced by a non-directory meanwhile: remove that.
            Err(e) if is_refusal(&e) => return self.remove_file(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in sub.entries()? {
            sub.remove_tree_at(&entry, depth + 1)?;
        }
        match unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.error_at(name, e, "cannot remove")),
        }
    }

    /// Renames `name` out of the way to `<name>.refused-<n>` (the first
    /// free `n`) and returns the new name: for an entry the layer refused
    /// in a place it must write, kept for whoever looks into it.
    pub fn move_aside(&self, name: impl AsRef<OsStr>) -> io::Result<OsString> {
        let name = plain(name.as_ref())?;
        for n in 1..=100 {
            let mut aside = name.to_os_string();
            aside.push(format!(".refused-{n}"));
            if self.entry(&aside)?.is_some() {
                continue;
            }
            // renameat2(RENAME_NOREPLACE) is not in every libc; a name taken
            // in between is only the directory owner's own entry replaced.
            self.rename(name, &aside)?;
            return Ok(aside);
        }
        Err(refused(format!(
            "{}: 100 entries refused already; not moving another aside",
            self.join(name).display()
        )))
    }

    /// Checks an opened fd against `expect`, then makes it blocking.
    fn checked(&self, name: &OsStr, fd: OwnedFd, expect: &Expect) -> io::Result<File> {
        let st = Stat::from(fstat(&fd).map_err(|e| self.error_at(name, e, "cannot stat"))?);
        let path = self.join(name);
        if st.kind != Kind::File {
            return Err(refused(format!(
                "{} is {}, not a regular file; refusing it ({PLANTED})",
                path.display(),
                st.kind.described()
            )));
        }
        if st.nlink != 1 {
            return Err(refused(format!(
                "{} has {} names (a hard link); refusing it ({PLANTED})",
                path.display(),
                st.nlink
            )));
        }
        let me = nix::unistd::geteuid().as_raw();
        let ok_owner = match expect.owned {
            Owned::By(uid) => st.uid == uid,
            Owned::ByDirOwnerOrMe => st.uid == me || self.stat()?.uid == st.uid,
        };
        if !ok_owner {
            return Err(refused(format!(
                "{} belongs to uid {}, not to whoever it should; refusing it ({PLANTED})",
                path.display(),
                st.uid
            )));
        }
        if let Some(max) = expect.max_size
            && (st.size > max || st.allocated() > max)
        {
            return Err(refused(format!(
                "{} is {} bytes ({} allocated), over the limit of {max}; refusing it",
                path.display(),
                st.size,
                st.allocated()
            )));
        }
        if expect.dense && st.allocated() + (1 << 20) < st.size {
            return Err(refused(format!(
                "{} is sparse ({} bytes, {} allocated); refusing it",
                path.display(),
                st.size,
                st.allocated()
            )));
        }
        blocking(&fd).map_err(|e| self.error_at(name, e, "cannot open"))?;
        Ok(File::from(fd))
    }

    /// An open that failed: a link or a FIFO (`ELOOP`, `ENXIO`) named as
    /// what it is, anything else as the error.
    fn open_error(&self, name: &OsStr, e: Errno) -> io::Error {
        match e {
            Errno::ELOOP | Errno::ENXIO | Errno::EISDIR | Errno::ENOTDIR => {
                self.not_a(name, Kind::File, e)
            }
            _ => self.error_at(name, e, "cannot open"),
        }
    }

    /// A refusal naming what `name` is instead of a `want`.
    fn not_a(&self, name: &OsStr, want: Kind, e: Errno) -> io::Error {
        let path = self.join(name);
        match self.entry(name) {
            Ok(Some(st)) if st.kind != want => refused(format!(
                "{} is {}, not {}; refusing it ({PLANTED})",
                path.display(),
                st.kind.described(),
                want.described()
            )),
            _ => self.error_at(name, e, "cannot open"),
        }
    }

    fn error(&self, e: Errno, what: &str) -> io::Error {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{what} {}: {e}", self.path.display()),
        )
    }

    fn error_at(&self, name: &OsStr, e: Errno, what: &str) -> io::Error {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{what} {}: {}", self.join(name).display(), e.desc()),
        )
    }
}

impl AsFd for GuardedDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Flags of every file open here: no link followed, no wait on a FIFO, no
/// controlling terminal, not inherited.
fn guard_flags() -> OFlag {
    OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
}

/// Clears `O_NONBLOCK` once the fd is known to be a regular file or ours.
fn blocking(fd: &OwnedFd) -> Result<(), Errno> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK)).map(|_| ())
}

/// One plain name: no `/`, not empty, `.` or `..`.
fn plain(name: &OsStr) -> io::Result<&OsStr> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not one plain file name"),
        ));
    }
    Ok(name)
}

/// Whether a symlink in the directory `st` could only have been put there
/// by root or by us: the directory is theirs and nobody else may write it.
fn trusted_for_links(st: &Stat) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    (st.uid == 0 || st.uid == me) && st.mode & 0o022 == 0
}

/// Walks `path` from `/` (or the working directory for a relative path)
/// one component at a time; see [`GuardedDir::open_or_create`].
#[allow(clippy::disallowed_methods)] // the layer: opens only `/` or `.` by path, O_PATH
fn walk(path: &Path, create: Option<NewFile>) -> io::Result<(GuardedDir, bool)> {
    let start = if path.is_absolute() { "/" } else { "." };
    let cur = nix::fcntl::open(start, WALK_FLAGS, Mode::empty())
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{start}: {e}")))?;
    let mut walk = Walk {
        cur,
        shown: PathBuf::from(start),
        todo: components(path),
        links: 0,
        raced: 0,
        created: false,
    };
    while let Some(name) = walk.todo.pop_front() {
        walk.step(name, create)?;
    }
    // Re-open the last one readable (O_PATH cannot be fchmod'ed or listed).
    let fd = openat(
        &walk.cur,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{}: {e}", path.display()),
        )
    })?;
    let dir = GuardedDir {
        fd,
        path: path.to_path_buf(),
    };
    if walk.created
        && let Some(new) = create
    {
        dir.claim(new)?;
    }
    Ok((dir, walk.created))
}

/// How the walk opens each directory: by handle only, never following the last link.
const WALK_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// A walk under way.
struct Walk {
    /// The directory the walk has reached.
    cur: OwnedFd,
    /// Where the walk is, for messages.
    shown: PathBuf,
    /// The names still to walk (a followed link's target spliced in front).
    todo: VecDeque<OsString>,
    /// Links followed so far.
    links: usize,
    /// Entries found missing, then made (by us or by whoever won the race).
    raced: usize,
    /// Whether the walk made the last directory.
    created: bool,
}

impl Walk {
    /// One name: into it, made when missing (with `create`), or through the link it is.
    #[allow(clippy::disallowed_methods)] // the layer: opens only `/` by path, O_PATH
    fn step(&mut self, name: OsString, create: Option<NewFile>) -> io::Result<()> {
        if name == ".." {
            // The physical parent of where the walk is (`/..` is `/`).
            self.cur = openat(&self.cur, "..", WALK_FLAGS, Mode::empty()).map_err(io_err)?;
            self.shown.push("..");
            return Ok(());
        }
        if name == "/" {
            self.cur = nix::fcntl::open("/", WALK_FLAGS, Mode::empty()).map_err(io_err)?;
            self.shown = PathBuf::from("/");
            return Ok(());
        }
        let flags = WALK_FLAGS | OFlag::O_NOFOLLOW;
        match openat(&self.cur, name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => {
                self.cur = fd;
                self.shown.push(&name);
                Ok(())
            }
            Err(Errno::ENOENT) if create.is_some() => self.make(name, create),
            Err(e @ (Errno::ENOTDIR | Errno::ELOOP)) => self.follow(name, e),
            Err(e) => Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot open {}: {e}", self.shown.join(&name).display()),
            )),
        }
    }

    /// Makes the missing directory `name` (the last one with `create`'s
    /// mode), then walks into whatever is there.
    fn make(&mut self, name: OsString, create: Option<NewFile>) -> io::Result<()> {
        let is_last = self.todo.is_empty();
        let mode = match (is_last, create) {
            (true, Some(new)) => new.mode,
            _ => 0o755,
        };
        match mkdirat(&self.cur, name.as_os_str(), Mode::from_bits_truncate(mode)) {
            Ok(()) => self.created |= is_last,
            Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot create {}: {e}", self.shown.join(&name).display()),
                ));
            }
        }
        // Open what is there now (ours, or whoever won the race);
        // an entry that keeps vanishing is someone playing games.
        self.raced += 1;
        if self.raced > 10 {
            return Err(refused(format!(
                "{} keeps appearing and disappearing",
                self.shown.join(&name).display()
            )));
        }
        self.todo.push_front(name);
        Ok(())
    }

    /// `name` is not a directory: a link is followed (spliced into the
    /// walk) when only root or we could have put it there; anything else is refused.
    fn follow(&mut self, name: OsString, e: Errno) -> io::Result<()> {
        let parent = &self.cur;
        let st = fstatat(parent, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(Stat::from)
            .map_err(io_err)?;
        let here = self.shown.join(&name);
        if st.kind != Kind::Link {
            return Err(refused(format!(
                "{} is {}, not a directory",
                here.display(),
                st.kind.described()
            )));
        }
        let dir_st = Stat::from(fstat(parent).map_err(io_err)?);
        if !trusted_for_links(&dir_st) {
            return Err(refused(format!(
                "{} is a symlink in {}, which another user can write; \
                 refusing to follow it ({PLANTED})",
                here.display(),
                self.shown.display()
            )));
        }
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {}", here.display(), e.desc()),
            ));
        }
        let target = nix::fcntl::readlinkat(parent, name.as_os_str()).map_err(io_err)?;
        let mut spliced = components(Path::new(&target));
        if Path::new(&target).is_absolute() {
            spliced.push_front(OsString::from("/"));
        }
        for c in spliced.into_iter().rev() {
            self.todo.push_front(c);
        }
        Ok(())
    }
}

/// The names of `path`, in order (`.` dropped, `..` kept).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}
