//! Every lock shipjar holds on a host, in one scheme: a flock on a file in
//! `run/NAME/locks/` ([`Layout::lock_file`]). The directory is the agent's
//! user's (root on a provisioned host), mode 0711, and each file is that
//! user's, mode 0600: no other user can open a lock file, so none can take
//! — or hold up — a lock. Anyone can still stat one, so anyone can find
//! its holder.
//!
//! A held lock is the proof that its holder lives, and the holder's pid
//! comes from the kernel: `/proc/locks` (readable by all) lists each flock
//! with the pid that took it and the device and inode of the file. A
//! process that forked after taking a lock would leave it held by a child
//! while `/proc/locks` still names the parent, so lock files are opened
//! close-on-exec and every lock is taken by the process that holds it for
//! its life (the supervisor, the keeper and the runner each take theirs
//! after they were exec'ed, and fork only to exec).
//!
//! No wait on a lock is unbounded: [`take`] gives up at its deadline and
//! names the holder.

use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::host::os::procfs;
use crate::protocol::layout::{Dir, Layout, Lock};

/// How long [`take`] sleeps between two tries.
const RETRY: Duration = Duration::from_millis(10);

/// A lock this process holds; released when dropped (or when the process
/// ends, however it ends).
#[derive(Debug)]
pub struct HeldLock {
    // Only its open file description matters: closing it releases the flock.
    _file: File,
}

/// The process holding a lock, as the kernel names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid in our pid namespace; 0 when it lives outside it.
    pub pid: i32,
    /// Its command line, shortened; empty when it cannot be read.
    pub command: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pid, self.command.as_str()) {
            (0, _) => f.write_str("a process outside this pid namespace"),
            (pid, "") => write!(f, "pid {pid}"),
            (pid, command) => write!(f, "pid {pid} ({command})"),
        }
    }
}

/// Why a lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it (`None`: it let go while we looked).
    Busy {
        /// Which lock.
        lock: Lock,
        /// Who holds it.
        holder: Option<Holder>,
        /// How long we waited for it.
        waited: Duration,
    },
    /// The lock file or its directory is wrong or cannot be opened.
    Failed(String),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Busy {
                lock,
                holder,
                waited,
            } => {
                let who = holder
                    .as_ref()
                    .map_or_else(|| "another process".to_string(), Holder::to_string);
                write!(f, "{} is held by {who}", lock.describe())?;
                if !waited.is_zero() {
                    write!(f, " (waited {} ms)", waited.as_millis())?;
                }
                Ok(())
            }
            LockError::Failed(why) => f.write_str(why),
        }
    }
}

/// Takes `lock` without waiting.
pub fn try_take(layout: &Layout, lock: Lock) -> Result<HeldLock, LockError> {
    take(layout, lock, Duration::ZERO)
}

/// Takes `lock`, waiting at most `wait` for its holder to let go. Also
/// busy while a process of ours (root's, or this user's) holds the file
/// an older version used for it, so an upgrade never runs two of a kind.
pub fn take(layout: &Layout, lock: Lock, wait: Duration) -> Result<HeldLock, LockError> {
    let file = open(layout, lock).map_err(LockError::Failed)?;
    let path = layout.lock_file(lock);
    let began = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => match legacy_holder(layout, lock) {
                None => return Ok(HeldLock { _file: file }),
                Some(_) => {
                    let _ = file.unlock();
                }
            },
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(LockError::Failed(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )));
            }
        }
        if began.elapsed() >= wait {
            return Err(LockError::Busy {
                lock,
                holder: holder(layout, lock),
                waited: began.elapsed().min(wait),
            });
        }
        std::thread::sleep(RETRY);
    }
}

/// The live holder of `lock` (or of its file from an older version), from
/// the kernel; `None` when nobody holds it. Needs no permission beyond
/// stat: any user may ask.
pub fn holder(layout: &Layout, lock: Lock) -> Option<Holder> {
    holder_of(&layout.lock_file(lock)).or_else(|| legacy_holder(layout, lock))
}

/// Whether `lock` is held right now.
pub fn is_held(layout: &Layout, lock: Lock) -> bool {
    holder(layout, lock).is_some()
}

/// A holder of the file an older version used for `lock`; only a process
/// of root or of our user counts (that file may be open to anyone).
fn legacy_holder(layout: &Layout, lock: Lock) -> Option<Holder> {
    let path = layout.legacy_lock_file(lock)?;
    let me = nix::unistd::Uid::effective().as_raw();
    holder_of(&path).filter(|h| {
        h.pid > 0
            && procfs::uids(h.pid)
                .ok()
                .flatten()
                .is_some_and(|(uid, _)| uid == 0 || uid == me)
    })
}

/// The holder of a flock on the regular file at `path`.
fn holder_of(path: &Path) -> Option<Holder> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    let table = fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let mut devices = vec![(libc::major(dev), libc::minor(dev))];
    if let Some(mounted) = mount_device(path)
        && !devices.contains(&mounted)
    {
        devices.push(mounted);
    }
    let pid = flock_holder(&table, &devices, meta.ino())?;
    Some(Holder {
        pid,
        command: command_of(pid),
    })
}

/// The device of the file system `path` is on, as `/proc/locks` names it
/// (the superblock's): stat's differs on overlayfs and btrfs subvolumes.
fn mount_device(path: &Path) -> Option<(u32, u32)> {
    let real = fs::canonicalize(path).ok()?;
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    device_in_mountinfo(&table, &real)
}

/// The `major:minor` of the mount holding `path` (the longest mount point
/// it is under; of equal ones the last, which covers the others).
fn device_in_mountinfo(table: &str, path: &Path) -> Option<(u32, u32)> {
    let mut best: Option<(usize, (u32, u32))> = None;
    for line in table.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(device), Some(point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let point = unescape_octal(point);
        if !path.starts_with(&point) {
            continue;
        }
        let Some((major, minor)) = device.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        let depth = Path::new(&point).components().count();
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, (major, minor)));
        }
    }
    best.map(|(_, device)| device)
}

/// A mount point as mountinfo writes it: space, tab, newline and backslash
/// as `\ooo`.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pid holding a flock on inode `ino` of one of `devices` in `/proc/locks`.
fn flock_holder(table: &str, devices: &[(u32, u32)], ino: u64) -> Option<i32> {
    for line in table.lines() {
        let mut fields = line.split_whitespace().skip(1);
        // `N: -> FLOCK …` are waiters, not holders.
        if fields.next() != Some("FLOCK") {
            continue;
        }
        let mut rest = fields.skip(2);
        let (Some(pid), Some(file)) = (rest.next(), rest.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        let mut parts = file.split(':');
        let (Some(major), Some(minor), Some(inode)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if inode.parse::<u64>().ok() != Some(ino) {
            continue;
        }
        if let (Ok(major), Ok(minor)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
        ) && devices.contains(&(major, minor))
        {
            return Some(pid);
        }
    }
    None
}

/// A process's command line for a message, shortened.
fn command_of(pid: i32) -> String {
    if pid <= 0 {
        return String::new();
    }
    let words = procfs::cmdline(pid).ok().flatten().unwrap_or_default();
    let text = words
        .iter()
        .map(|w| w.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > 100 {
        format!("{}…", text.chars().take(100).collect::<String>())
    } else {
        text
    }
}

/// Opens (creating) the file of `lock`, after checking its directory: both
/// must be ours and open to nobody else for writing (the file to nobody at all).
fn open(layout: &Layout, lock: Lock) -> Result<File, String> {
    let dir = layout.directory(Dir::Locks);
    crate::host::fs::create_missing(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.path.display()))?;
    let dir_fd = open_dir(&dir.path).map_err(|e| format!("{}: {e}", dir.path.display()))?;
    let me = nix::unistd::Uid::effective().as_raw();
    let dir_meta = File::from(dir_fd.try_clone().map_err(|e| e.to_string())?)
        .metadata()
        .map_err(|e| format!("{}: {e}", dir.path.display()))?;
    if dir_meta.uid() != me || dir_meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} belongs to uid {} with mode {:04o}; a lock directory must be uid {me}'s and writable by it alone",
            dir.path.display(),
            dir_meta.uid(),
            dir_meta.mode() & 0o7777
        ));
    }
    let path = layout.lock_file(lock);
    let file = open_in(&dir_fd, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.file_type().is_file() || meta.uid() != me {
        return Err(format!(
            "{} is not a regular file of uid {me}: refusing it as a lock",
            path.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        // Ours, opened without following a link, in a directory only we
        // write: safe to tighten through the descriptor.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(file)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))
}

/// The lock directory itself, never a link in its place.
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: a valid C string; the descriptor returned is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The lock file, relative to its directory: no link followed, never
/// blocking (a FIFO in its place), closed on exec (no child inherits it).
fn open_in(dir: &OwnedFd, path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let c = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the name"))?;
    // SAFETY: a valid directory descriptor and C string; the descriptor
    // returned is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// How long a deploy, rollback, restart, reload or auto-revert waits for
/// another one of the same service to finish changing what runs.
pub const SWITCH_WAIT: Duration = Duration::from_secs(60);

/// Takes the switch lock (see [`Lock::Switch`]), waiting up to
/// [`SWITCH_WAIT`]; the error names whoever holds it.
///
/// [`Lock::Switch`]: Lock::Switch
pub fn hold_switch(layout: &Layout) -> Result<HeldLock, String> {
    take_switch(layout, SWITCH_WAIT)
}

/// Like [`hold_switch`], waiting at most `wait` (the supervisor's
/// auto-revert polls it, answering a stop between tries).
pub fn take_switch(layout: &Layout, wait: Duration) -> Result<HeldLock, String> {
    take(layout, Lock::Switch, wait).map_err(|e| match e {
        LockError::Busy { .. } => format!(
            "another deploy, rollback, restart or reload of {} is changing what runs: {e}; try again when it is done",
            layout.name()
        ),
        LockError::Failed(why) => why,
    })
}

/// Why [`take_switch_or_stop`] came back without the lock.
pub enum NoSwitch {
    /// A SIGTERM or SIGINT (this signal) arrived while waiting.
    Stopped(i32),
    /// Still held at the end of [`SWITCH_WAIT`]: who holds it.
    Held(String),
}

/// Takes the switch lock, waiting at most [`SWITCH_WAIT`] and answering a
/// stop meanwhile (the holder may be a deploy about to stop the waiter):
/// for a process that owns a service, blocked `signals` and all.
pub fn take_switch_or_stop(
    layout: &Layout,
    signals: &crate::host::os::process::Signals,
) -> Result<HeldLock, NoSwitch> {
    let deadline = Instant::now() + SWITCH_WAIT;
    loop {
        let why = match take_switch(layout, Duration::ZERO) {
            Ok(lock) => return Ok(lock),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(NoSwitch::Held(why));
        }
        if let Some(sig @ (libc::SIGTERM | libc::SIGINT)) =
            signals.wait(Some(Duration::from_millis(200)))
        {
            return Err(NoSwitch::Stopped(sig));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_found_by_device_and_inode_and_waiters_are_not_holders() {
        let table = "1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 5151 fe:00:1234 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 77 fe:00:999 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 88 00:2a:1234 0 EOF\n";
        assert_eq!(flock_holder(table, &[(0xfe, 0)], 1234), Some(4242));
        assert_eq!(flock_holder(table, &[(0, 0x2a)], 1234), Some(88));
        // The same inode number on another device is another file.
        assert_eq!(flock_holder(table, &[(0, 0x2b)], 1234), None);
        // POSIX locks are not ours.
        assert_eq!(flock_holder(table, &[(0xfe, 0)], 999), None);
        // stat's device, or the mount's (overlayfs: /proc/locks shows the latter).
        assert_eq!(flock_holder(table, &[(8, 1), (0, 0x2a)], 1234), Some(88));
    }

    #[test]
    fn the_mount_holding_a_path_names_its_device() {
        let table = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                     30 22 0:42 / /run rw shared:2 - tmpfs tmpfs rw\n\
                     31 22 0:48 / /srv/my\\040dir rw - overlay overlay rw\n\
                     32 30 0:50 / /run rw - tmpfs tmpfs rw\n";
        let dev = |p: &str| device_in_mountinfo(table, Path::new(p));
        assert_eq!(dev("/var/lib/x"), Some((254, 0)));
        // The later of two mounts on /run covers the first.
        assert_eq!(dev("/run/hello/locks/supervisor.lock"), Some((0, 50)));
        assert_eq!(dev("/srv/my dir/run/x"), Some((0, 48)));
        assert_eq!(dev("/srv/my"), Some((254, 0)));
        assert_eq!(dev("/running"), Some((254, 0)));
    }

    #[test]
    fn a_lock_is_held_until_dropped_and_its_holder_is_this_process() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path(), "svc");
        let held = try_take(&layout, Lock::Supervisor).expect("free");
        let holder = holder(&layout, Lock::Supervisor).expect("held");
        assert_eq!(holder.pid, std::process::id() as i32);
        // A second open file description of the same process conflicts too.
        match try_take(&layout, Lock::Supervisor) {
            Err(LockError::Busy {
                holder: Some(h), ..
            }) => assert_eq!(h.pid, holder.pid),
            other => panic!("expected busy, got {other:?}"),
        }
        let began = Instant::now();
        let err = take(&layout, Lock::Supervisor, Duration::from_millis(200)).unwrap_err();
        assert!(began.elapsed() >= Duration::from_millis(200));
        assert!(began.elapsed() < Duration::from_secs(2));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "the supervisor lock is held by pid {} (",
                holder.pid
            )) && text.ends_with("(waited 200 ms)"),
            "{text}"
        );
        drop(held);
        assert_eq!(super::holder(&layout, Lock::Supervisor), None);
        let _again = try_take(&layout, Lock::Supervisor).expect("free again");
        // Another lock of the same service is another file.
        let _deploy = try_take(&layout, Lock::Deploy).expect("free");
    }

    #[test]
    fn lock_files_are_ours_alone_and_closed_on_exec() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path(), "svc");
        let held = try_take(&layout, Lock::Keeper).expect("free");
        let dir = fs::symlink_metadata(layout.locks_dir()).expect("dir");
        assert_eq!(dir.mode() & 0o7777, 0o711);
        let file = fs::symlink_metadata(layout.lock_file(Lock::Keeper)).expect("file");
        assert_eq!(file.mode() & 0o7777, 0o600);
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(held._file.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "the lock fd must be close-on-exec"
        );
        drop(held);
        // A file someone made too open is tightened; a link is refused.
        fs::set_permissions(
            layout.lock_file(Lock::Keeper),
            fs::Permissions::from_mode(0o666),
        )
        .expect("chmod");
        drop(try_take(&layout, Lock::Keeper).expect("free"));
        let file = fs::symlink_metadata(layout.lock_file(Lock::Keeper)).expect("file");
        assert_eq!(file.mode() & 0o7777, 0o600);
        let target = root.path().join("elsewhere");
        fs::write(&target, "").expect("target");
        std::os::unix::fs::symlink(&target, layout.lock_file(Lock::Runner)).expect("link");
        let err = try_take(&layout, Lock::Runner).unwrap_err();
        assert!(matches!(err, LockError::Failed(_)), "{err}");
        // A lock directory others may write is refused.
        fs::set_permissions(layout.locks_dir(), fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = try_take(&layout, Lock::Deploy).unwrap_err();
        assert!(err.to_string().contains("writable by it alone"), "{err}");
    }
}
