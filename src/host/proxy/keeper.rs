//! The keeper: binds the public address once and keeps a proxy worker
//! serving on it, restarting a worker that dies (with back-off). Because the
//! keeper holds the listening socket, a worker's crash loses no connection
//! attempt: the kernel queues them until the next worker accepts.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::Pid;

use super::files::{self, KeeperRecord};
use super::metrics::{METRICS_FD, METRICS_FD_ENV};
use super::tls::{REDIRECT_FD, REDIRECT_FD_ENV};
use super::worker::LISTEN_FD;
use crate::host::lockfile::{self, HeldLock, LockError};
use crate::host::os::procfs;
use crate::protocol::clock::now_rfc3339;
use crate::protocol::layout::{Layout, Lock};

/// A worker that lived this long was not crash-looping: the back-off starts over.
const STEADY: Duration = Duration::from_secs(10);
/// Longest wait between two worker starts.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// How long a stopping worker gets before SIGKILL.
const WORKER_STOP: Duration = Duration::from_secs(2);

/// Runs the keeper in the foreground; returns its exit code.
pub fn run(layout: &Layout) -> i32 {
    match keep(layout) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shipjar proxy: {e}");
            1
        }
    }
}

/// Takes the keeper lock; `Err` names why not (another keeper holds it).
pub fn take_lock(layout: &Layout) -> Result<HeldLock, String> {
    lockfile::try_take(layout, Lock::Keeper).map_err(|e| match e {
        LockError::Busy { holder, .. } => format!(
            "the proxy of {} already runs (its keeper: {})",
            layout.name(),
            holder.map_or_else(|| "gone meanwhile".to_string(), |h| h.to_string())
        ),
        LockError::Failed(why) => why,
    })
}

fn keep(layout: &Layout) -> Result<(), String> {
    let _lock = take_lock(layout)?;
    let spec = files::read_spec(layout)?;
    let listener = high(bind(&spec.listen)?)?;
    // Handed to each worker beside the public socket: (socket, descriptor, variable).
    let extras: Vec<(OwnedFd, i32, &str)> = [
        (
            "metrics ([metrics] listen)",
            spec.metrics_listen.as_deref(),
            METRICS_FD,
            METRICS_FD_ENV,
        ),
        (
            "the HTTPS redirect ([proxy] tls.redirect)",
            spec.tls.as_ref().and_then(|t| t.redirect.as_deref()),
            REDIRECT_FD,
            REDIRECT_FD_ENV,
        ),
    ]
    .into_iter()
    .filter_map(|(what, listen, fd, env)| Some((bind_extra(what, listen?)?, fd, env)))
    .collect();
    let signals = block_signals()?;
    let mut record = first_record(layout, &spec)?;
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let handed: Vec<(i32, i32, &str)> = extras
            .iter()
            .map(|(socket, fd, env)| (socket.as_raw_fd(), *fd, *env))
            .collect();
        let mut child = spawn_worker(layout, listener.as_raw_fd(), &handed)?;
        record.worker = procfs::identify(child.id() as i32).ok().flatten();
        record.worker_started_at = Some(now_rfc3339());
        files::write_keeper(layout, &record)?;
        let status = match wait(&mut child, &signals, None) {
            Waited::Exited(status) => status,
            Waited::Stop | Waited::Elapsed => {
                stop_worker(&mut child);
                record.worker = None;
                record.last_exit = Some("stopped".into());
                record.last_exit_at = Some(now_rfc3339());
                let _ = files::write_keeper(layout, &record);
                return Ok(());
            }
        };
        let how = describe(status);
        eprintln!("shipjar proxy: worker pid {} {how}; restarting", child.id());
        record.worker = None;
        record.last_exit = Some(how);
        record.last_exit_at = Some(now_rfc3339());
        record.restarts += 1;
        files::write_keeper(layout, &record)?;
        failures = if started.elapsed() >= STEADY {
            0
        } else {
            failures.saturating_add(1)
        };
        // The first restart is immediate: a killed worker is back at once.
        let delay = match failures {
            0 | 1 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 2)).min(MAX_DELAY),
        };
        if !delay.is_zero() && matches!(wait_signal(&signals, delay), Some(true)) {
            // Stopped while backing off: a stop all the same, not a death.
            record.last_exit = Some("stopped".into());
            record.last_exit_at = Some(now_rfc3339());
            let _ = files::write_keeper(layout, &record);
            return Ok(());
        }
    }
}

/// Blocks the signals the keeper takes with sigtimedwait, one at a time,
/// never by a handler.
fn block_signals() -> Result<SigSet, String> {
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        signals.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|e| format!("cannot block signals: {e}"))?;
    Ok(signals)
}

/// This keeper's record. A keeper that died before (no "stopped" in its
/// record) counts as a restart of the proxy, so `status` names it; a
/// stopped one starts afresh.
fn first_record(
    layout: &Layout,
    spec: &crate::protocol::manifest::ProxySpec,
) -> Result<KeeperRecord, String> {
    let me = procfs::identify(std::process::id() as i32)
        .ok()
        .flatten()
        .ok_or("cannot read this process's own /proc entry")?;
    let (restarts, last_exit) = match files::read_keeper(layout) {
        Some(before) if before.last_exit.as_deref() != Some("stopped") => (
            before.restarts.saturating_add(1),
            Some(format!("keeper pid {} died", before.keeper.pid)),
        ),
        _ => (0, None),
    };
    Ok(KeeperRecord {
        keeper: me,
        started_at: Some(now_rfc3339()),
        worker: None,
        worker_started_at: None,
        restarts,
        last_exit,
        last_exit_at: None,
        listen: spec.listen.clone(),
    })
}

/// Binds the public address; while the worker of a keeper that died still
/// holds it (its parent-death signal is on its way), tries again for a while.
fn bind(listen: &str) -> Result<std::net::TcpListener, String> {
    let started = Instant::now();
    loop {
        match std::net::TcpListener::bind(listen) {
            Ok(l) => return Ok(l),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < Duration::from_secs(3) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("cannot listen on {listen}: {e}")),
        }
    }
}

enum Waited {
    Exited(ExitStatus),
    Stop,
    Elapsed,
}

/// Waits for the worker to exit or a stop signal (`limit`: at most this long).
fn wait(child: &mut Child, signals: &SigSet, limit: Option<Duration>) -> Waited {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Waited::Exited(status);
        }
        if limit.is_some_and(|l| started.elapsed() >= l) {
            return Waited::Elapsed;
        }
        if wait_signal(signals, Duration::from_millis(500)) == Some(true) {
            return Waited::Stop;
        }
    }
}

/// One blocked signal, at most `timeout`: `Some(true)` for a stop
/// (SIGTERM, SIGINT), `Some(false)` for any other, `None` when none came.
fn wait_signal(signals: &SigSet, timeout: Duration) -> Option<bool> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid signal set and timespec; no siginfo is asked for.
    let n = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &ts) };
    match n {
        n if n == libc::SIGTERM || n == libc::SIGINT => Some(true),
        n if n > 0 => Some(false),
        _ => None,
    }
}

fn stop_worker(child: &mut Child) {
    // Our own child, not yet reaped: its pid cannot have been reused.
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let started = Instant::now();
    while started.elapsed() < WORKER_STOP {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {}", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => "ended".to_string(),
    }
}

/// An address besides the public one (`what`) bound, moved above the
/// handed-over descriptors; `None`, said in the log, when it cannot be:
/// the proxy serves without it.
fn bind_extra(what: &str, listen: &str) -> Option<OwnedFd> {
    match std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))
        .and_then(high)
    {
        Ok(fd) => {
            eprintln!("shipjar proxy: {what} on {listen}");
            Some(fd)
        }
        Err(e) => {
            eprintln!("shipjar proxy: serving without {what}: {e}");
            None
        }
    }
}

/// A listening socket moved to a descriptor above those a worker is handed
/// (3 to 5), so that handing one over cannot overwrite another.
fn high(listener: std::net::TcpListener) -> Result<OwnedFd, String> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one or -1.
    let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if fd < 0 {
        return Err(format!(
            "cannot move a listening socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor just made, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A worker with the public socket on [`LISTEN_FD`] and each of `handed`
/// (socket, descriptor, variable) on its descriptor, named in its variable.
fn spawn_worker(
    layout: &Layout,
    listen_fd: i32,
    handed: &[(i32, i32, &str)],
) -> Result<Child, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the shipjar executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["service", "proxy", layout.name(), "--worker", "--root"])
        .arg(layout.root())
        .stdin(Stdio::null());
    for (_, fd, env) in handed {
        cmd.env(env, fd.to_string());
    }
    let handed: Vec<(i32, i32)> = handed.iter().map(|(from, to, _)| (*from, *to)).collect();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let empty = libc_sigset_empty();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // A worker outliving its keeper would hold the port from the next keeper.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            // All are at 10 or above (`high`): no dup2 overwrites another.
            if libc::dup2(listen_fd, LISTEN_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (from, to) in &handed {
                if libc::dup2(*from, *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start the proxy worker: {e}"))
}

fn libc_sigset_empty() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        set
    }
}

/// Whether the keeper's lock is held right now (a live keeper).
pub fn is_held(layout: &Layout) -> bool {
    lockfile::is_held(layout, Lock::Keeper)
}

/// The live keeper, as the kernel names the holder of its lock.
pub fn holder(layout: &Layout) -> Option<lockfile::Holder> {
    lockfile::holder(layout, Lock::Keeper)
}

/// Asks the keeper to stop (it stops its worker) and waits for its lock to
/// be free; `Ok(false)` when none ran.
pub fn stop(layout: &Layout, timeout: Duration) -> Result<bool, String> {
    let Some(holder) = lockfile::holder(layout, Lock::Keeper) else {
        return Ok(false);
    };
    let record = files::read_keeper(layout).ok_or("the proxy's keeper left no record")?;
    // Proven before signalled: the lock's holder, with the start time it recorded.
    if holder.pid != record.keeper.pid || procfs::liveness(record.keeper) != procfs::Liveness::Alive
    {
        return Err(format!(
            "the proxy keeper's lock is held by {holder}, not by the keeper pid {} it recorded",
            record.keeper.pid
        ));
    }
    kill(Pid::from_raw(record.keeper.pid), Signal::SIGTERM)
        .map_err(|e| format!("cannot signal the proxy keeper: {e}"))?;
    let started = Instant::now();
    while started.elapsed() < timeout {
        if !is_held(layout) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "the proxy keeper (pid {}) did not stop within {} ms",
        record.keeper.pid,
        timeout.as_millis()
    ))
}
