//! Processes and signals: preparing a child so it starts clean, signalling
//! process groups, waiting for signals without a busy loop, and describing
//! how a process ended.

use std::cell::Cell;
use std::ffi::{CString, OsStr};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::{Pid, Uid, User};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitInfo::Code(code) => write!(f, "exited with code {code}"),
            ExitInfo::Signal(sig) => write!(f, "killed by {}", signal_name(sig)),
        }
    }
}

/// `SIGTERM` for 15, `signal 99` for unknown numbers.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// Checks, without reaping, whether child `pid` has exited. Leaving the
/// zombie in place keeps its pid (and so its process group id) reserved until
/// we have signalled whatever is left of the group.
pub fn exited_child(pid: i32) -> io::Result<Option<ExitInfo>> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(ExitInfo::Code(code))),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(ExitInfo::Signal(sig as i32))),
            Ok(_) => return Ok(None),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `sig` to process group `pgid`; `Ok(false)` when the group is empty.
pub fn signal_group(pgid: i32, sig: Signal) -> io::Result<bool> {
    if pgid <= 1 {
        // killpg(0) or (1) would hit our own group or everything.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Sends `sig` to one process; `Ok(false)` when it does not exist.
pub fn signal_pid(pid: i32, sig: Signal) -> io::Result<bool> {
    if pid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}"),
        ));
    }
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The signals the supervisor handles, blocked so they queue up and are
/// taken one at a time with `sigtimedwait` (no handlers, no busy loop).
/// While waiting it can also keep a watchdog fed.
pub struct Signals {
    set: libc::sigset_t,
    keepalive: Option<Keepalive>,
}

/// A ping due every so often while the supervisor waits (systemd's watchdog).
struct Keepalive {
    every: Duration,
    last: Cell<Instant>,
    ping: Box<dyn Fn()>,
}

/// Signals the supervisor waits for: stop (TERM, INT), reload (HUP), child
/// exits (CHLD), and those it passes on to the service (QUIT, USR1, USR2).
pub const SUPERVISOR_SIGNALS: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGCHLD,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

impl Signals {
    /// Resets the handled signals to their default disposition (an inherited
    /// SIG_IGN would make the kernel drop them, and an ignored SIGCHLD would
    /// auto-reap the service) and blocks them in this thread.
    pub fn block() -> io::Result<Signals> {
        // SAFETY: plain libc calls on a local, initialised sigset.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in SUPERVISOR_SIGNALS {
                libc::sigaddset(&mut set, sig);
                if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Signals {
                set,
                keepalive: None,
            })
        }
    }

    /// Calls `ping` at least every `every` while waiting.
    pub fn keep_alive(&mut self, every: Duration, ping: Box<dyn Fn()>) {
        ping();
        self.keepalive = Some(Keepalive {
            every,
            last: Cell::new(Instant::now()),
            ping,
        });
    }

    /// Waits for one of the signals, at most `timeout` (`None`: forever).
    /// Returns `None` on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<i32> {
        let Some(keep) = &self.keepalive else {
            return self.wait_once(timeout);
        };
        let until = timeout.map(|t| Instant::now() + t);
        loop {
            let now = Instant::now();
            let due = keep.last.get() + keep.every;
            if now >= due {
                (keep.ping)();
                keep.last.set(now);
                continue;
            }
            let mut slice = due - now;
            if let Some(until) = until {
                if now >= until {
                    return None;
                }
                slice = slice.min(until - now);
            }
            if let Some(sig) = self.wait_once(Some(slice)) {
                return Some(sig);
            }
        }
    }

    fn wait_once(&self, timeout: Option<Duration>) -> Option<i32> {
        // SAFETY: `set` is initialised; info and ts are valid for writing/reading.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = match timeout {
                Some(t) => {
                    let ts = libc::timespec {
                        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
                        tv_nsec: t.subsec_nanos() as libc::c_long,
                    };
                    libc::sigtimedwait(&self.set, &mut info, &ts)
                }
                None => libc::sigwaitinfo(&self.set, &mut info),
            };
            // -1 is a timeout (EAGAIN) or an interruption (EINTR): both mean
            // "no signal", and callers re-check the world anyway.
            if rc > 0 { Some(rc) } else { None }
        }
    }
}

/// User to switch to in the child, resolved before fork (name lookups are
/// not async-signal-safe).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: libc::uid_t,
    /// Primary group id.
    pub gid: libc::gid_t,
    /// Every group the user is in, the primary one included.
    pub groups: Vec<libc::gid_t>,
    /// Home directory from the passwd entry.
    pub home: PathBuf,
}

impl Credentials {
    /// Looks up `name` and its supplementary groups.
    pub fn resolve(name: &str) -> Result<Credentials, String> {
        let user = User::from_name(name)
            .map_err(|e| format!("cannot look up user `{name}`: {e}"))?
            .ok_or_else(|| format!("user `{name}` does not exist"))?;
        let cname = CString::new(name).map_err(|_| format!("bad user name `{name}`"))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| format!("cannot list groups of `{name}`: {e}"))?;
        Ok(Credentials {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.iter().map(|g| g.as_raw()).collect(),
            home: user.dir,
        })
    }
}

/// Home directory of the user we run as (passwd entry, then `$HOME`, then `/`).
pub fn own_home() -> PathBuf {
    User::from_uid(Uid::current())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Name of the user we run as, from the passwd entry.
pub fn current_user_name() -> Option<String> {
    User::from_uid(Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// True when running as root (and so able to switch users).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// Makes `cmd` start clean: default signal dispositions and an empty mask,
/// every inherited descriptor above stderr closed at exec, optionally a new
/// session, and optionally another user.
pub fn prepare_child(cmd: &mut Command, new_session: bool, creds: Option<Credentials>) {
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls; it allocates nothing (the group list
    // was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            if new_session && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            reset_signals();
            cloexec_from(3);
            // Groups first, the uid last: each step needs the privilege the next drops.
            if let Some(c) = &creds
                && (libc::setgroups(c.groups.len() as _, c.groups.as_ptr()) != 0
                    || libc::setgid(c.gid) != 0
                    || libc::setuid(c.uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Default disposition for every signal and an empty mask. Only SIG_IGN
/// survives exec, and it would survive into the service (think `nohup`).
///
/// The raw system call matters: glibc's `posix_spawn` (which std's Command
/// uses when it can) leaves signals 32 and 33 ignored in its children, and
/// glibc's `sigaction` refuses to touch those two.
fn reset_signals() {
    // An all-zero kernel `struct sigaction` is SIG_DFL, no flags, empty mask
    // on every architecture; 64 bytes covers every layout.
    let default = [0u64; 8];
    // Size of the kernel's sigset_t (64 signals); MIPS differs and falls back.
    const KERNEL_SIGSET_SIZE: usize = 8;
    // SAFETY: rt_sigaction, signal and sigprocmask are async-signal-safe;
    // invalid numbers (KILL, STOP) just fail.
    unsafe {
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let rc = libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                KERNEL_SIGSET_SIZE,
            );
            if rc != 0 {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Marks every descriptor from `first` up close-on-exec, so whatever leaked
/// into us (an ssh channel, a caller's pipe) does not live on in a daemon.
/// Marking rather than closing keeps std's exec-error pipe working.
fn cloexec_from(first: u32) {
    // SAFETY: raw syscalls on descriptor numbers; failures are harmless.
    unsafe {
        let rc = libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if rc == 0 {
            return;
        }
        // Kernels before 5.11: walk the descriptor table up to a sane bound.
        let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(256, 65536) as i32;
        for fd in first as i32..max {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Finds `program` the way `execvp` would, in `path` (a `PATH` value);
/// a name with a slash is taken relative to `cwd`.
pub fn resolve_program(program: &str, path: &OsStr, cwd: &Path) -> Result<PathBuf, String> {
    if program.is_empty() {
        return Err("run.argv is empty".to_string());
    }
    if program.contains('/') {
        let full = cwd.join(program);
        return if is_executable(&full) {
            Ok(full)
        } else {
            Err(format!("`{}` is not an executable file", full.display()))
        };
    }
    for dir in path.as_bytes().split(|b| *b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let candidate = cwd.join(dir).join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "`{program}` not found in PATH ({})",
        path.to_string_lossy()
    ))
}

#[allow(clippy::disallowed_methods)] // root-only: PATH dirs and the release (checked root's)
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_in_path() {
        let found = resolve_program(
            "sh",
            OsStr::new("/nonexistent:/usr/bin:/bin"),
            Path::new("/"),
        )
        .expect("sh is somewhere");
        assert!(found.ends_with("sh"));
        let err = resolve_program("no-such-program-xyz", OsStr::new("/bin"), Path::new("/"))
            .expect_err("missing");
        assert!(err.contains("not found in PATH"), "{err}");
    }

    #[test]
    fn describes_exits() {
        assert_eq!(ExitInfo::Code(1).to_string(), "exited with code 1");
        assert_eq!(ExitInfo::Signal(9).to_string(), "killed by SIGKILL");
    }
}
