//! The supervisor process (`service supervise`): holds the lock, spawns the
//! service, gates on health, reports once on stdout, then waits for the
//! service to exit or for a stop signal.

use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Child;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::protocol::files::remove_if_present;
use crate::protocol::layout::Layout;

use super::backoff::{Backoff, Decision};
use super::health::{self, Gate};
use super::logfile;
use super::logpipe::LogPipe;
use super::memory;
use super::notify::Notifier;
use super::privileges;
use super::process::{self, Credentials, ExitInfo, Signals};
use super::procfs::{self, Liveness, ProcessId};
use super::release::{self, Release};
use super::report::Reporter;
use super::rotate::{Owner, RotatingFile, Rotation};
use super::spawn;
use super::state::{self, Phase, Pidfile, SupervisorState};
use super::stopping::{self, KILL_WAIT, StopContext};
use super::{StartReport, human_duration};

/// How often the running loop re-checks the child even without a signal;
/// SIGCHLD is the real trigger, this is a safety net.
const RECHECK: Duration = Duration::from_secs(5);

/// Longest wait for the log thread to write out what the service said.
const LOG_SYNC_WAIT: Duration = Duration::from_secs(2);

/// How the supervisor was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// By `service start`, which waits for one line on our stdout.
    Detached,
    /// `service run`: in the foreground of a process manager (systemd).
    Foreground,
}

/// Runs the supervisor; returns its exit code (0 after a requested stop).
pub fn run(layout: &Layout, mode: Mode) -> i32 {
    // One malloc arena for both threads: a second arena would cost more
    // than the log thread's few allocations ever need.
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let notifier = match mode {
        Mode::Detached => None,
        Mode::Foreground => Notifier::from_env().map(Rc::new),
    };
    let mut reporter = match mode {
        Mode::Detached => Reporter::Detached { sent: false },
        Mode::Foreground => Reporter::Foreground {
            notifier: notifier.clone(),
        },
    };
    let signals = match Signals::block() {
        Ok(mut signals) => {
            if let Some(n) = notifier.clone()
                && let Some(every) = n.watchdog
            {
                // Twice per watchdog period, as systemd recommends.
                signals.keep_alive(every / 2, Box::new(move || n.send("WATCHDOG=1")));
            }
            signals
        }
        Err(e) => {
            reporter.failed(&format!("cannot block signals: {e}"), layout);
            return 1;
        }
    };
    match Supervisor::setup(layout, mode, signals) {
        Ok(mut supervisor) => {
            supervisor.reporter = reporter;
            supervisor.run()
        }
        Err(message) => {
            // Also into the log, for whoever reads it rather than `start`'s output.
            logfile::append_event(
                &layout.log_file(),
                &format!("supervisor not started: {message}"),
            );
            reporter.failed(&message, layout);
            1
        }
    }
}

/// How one run of the service ended.
enum Outcome {
    /// Stopped on request once healthy (or while waiting to restart).
    Stopped,
    /// Stopped on request before it became healthy; says how it ended.
    StoppedWhileStarting(String),
    /// Never became healthy (or could not be spawned); says why.
    StartFailed(String),
    /// A reload asked for a restart through the health gate; the service
    /// was stopped gracefully.
    Reload,
    /// Exited on its own after being healthy for a while.
    Crashed {
        /// How it ended.
        exit: ExitInfo,
        /// How long it had been healthy.
        healthy_for: Duration,
    },
}

struct Supervisor<'a> {
    layout: &'a Layout,
    signals: Signals,
    log: LogPipe,
    release: Release,
    state: SupervisorState,
    backoff: Backoff,
    /// Where readiness and state go.
    reporter: Reporter,
    /// A reload restart is under way; its outcome is recorded for `service reload`.
    reloading: bool,
    /// Who the service runs as, when we drop privileges.
    creds: Option<Credentials>,
    /// Held for our whole life: proof that a supervisor is alive.
    _lock: File,
}

impl<'a> Supervisor<'a> {
    /// Takes the lock and opens the log. `signals` were blocked first, so a
    /// stop that arrives while we set up waits for us.
    fn setup(layout: &'a Layout, mode: Mode, signals: Signals) -> Result<Self, String> {
        let run_dir = layout.run_dir();
        fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        let lock = take_lock(layout)?;
        let me = procfs::identify(std::process::id() as i32)
            .ok()
            .flatten()
            .ok_or("cannot read this process's own /proc entry")?;

        // The lock rules out another supervisor, not a service left running
        // after its supervisor was killed: never start a second copy.
        if let Pidfile::Found {
            pid,
            start_ticks: Some(ticks),
        } = state::read_pidfile(&layout.pidfile())
        {
            let old = ProcessId {
                pid,
                start_ticks: ticks,
            };
            if procfs::liveness(old) == Liveness::Alive {
                return Err(format!(
                    "already running without a supervisor (pid {pid}); stop it first"
                ));
            }
        }

        let release = release::current(layout)?;
        let creds = spawn::credentials(&release)?;
        if let Some(c) = &creds {
            privileges::check_release(layout, &release.dir, c)?;
            privileges::prepare_dirs(layout, c)?;
        }
        let log = open_log(layout, &release, creds.as_ref(), mode)?;
        // Under systemd `User=` we already are that user: nothing to say.
        if creds.is_none()
            && let Some(user) = &release.manifest.run.user
            && !process::is_root()
            && process::current_user_name().as_deref() != Some(user.as_str())
        {
            log.event(&format!(
                "running as the current user: run.user `{user}` applies only when started as root"
            ));
        }
        let state = SupervisorState {
            boot_id: procfs::boot_id(),
            supervisor: me,
            service: None,
            release: release.manifest.id.clone(),
            release_dir: release.dir.clone(),
            started_at: None,
            state: Phase::Starting,
            healthy_after_ms: None,
            last_exit: None,
            stopped_on_request: false,
            last_exit_code: None,
            last_exit_signal: None,
            restarts: 0,
            next_restart_at: None,
            failed_reason: None,
            clean_stop: None,
            stop_took_ms: None,
            thread_dump: false,
            reloads: 0,
            last_reload: None,
            last_reload_ok: None,
            updated_at: logfile::now_rfc3339(),
        };
        let backoff = Backoff::new(&release.manifest.restart);
        let mut supervisor = Supervisor {
            layout,
            signals,
            log,
            release,
            state,
            backoff,
            reporter: Reporter::Detached { sent: true },
            reloading: false,
            creds,
            _lock: lock,
        };
        supervisor.save();
        Ok(supervisor)
    }

    /// Supervises until the service is stopped, or fails for good.
    fn run(&mut self) -> i32 {
        let mut first = true;
        loop {
            let (why, healthy_for) = match self.run_once(first) {
                Outcome::Stopped => return 0,
                Outcome::StoppedWhileStarting(how) => {
                    if first {
                        self.fail_start(format!("stopped while starting: {how}"));
                    }
                    self.remove_pidfile();
                    return 0;
                }
                Outcome::StartFailed(message) if first => {
                    self.fail_start(message);
                    return 1;
                }
                Outcome::Reload => {
                    self.adopt_current();
                    self.reloading = true;
                    first = false;
                    continue;
                }
                Outcome::StartFailed(message) => {
                    // What start-up needed (parsing, JSON, HTTP) stays in
                    // the page cache but leaves our resident set.
                    memory::drop_clean_file_pages();
                    if self.reloading {
                        self.reloaded(false, format!("the restart failed: {message}"));
                    }
                    (message, None)
                }
                Outcome::Crashed { exit, healthy_for } => (exit.to_string(), Some(healthy_for)),
            };
            first = false;
            let restart = &self.release.manifest.restart;
            if !restart.enabled {
                // The pidfile stays: `status` reports the service dead (LSB 1).
                self.log.event("not restarting: restarts are disabled");
                return 1;
            }
            match self.backoff.on_failure(Instant::now(), healthy_for) {
                Decision::GiveUp { failures, window } => {
                    let reason = format!(
                        "{failures} failures within {}; the last: {why}",
                        human_duration(window)
                    );
                    self.log.event(&format!("giving up: {reason}"));
                    self.reporter.status(&format!("failed: {reason}"));
                    self.state.state = Phase::Failed;
                    self.state.failed_reason = Some(reason);
                    self.state.next_restart_at = None;
                    self.save();
                    // The pidfile stays: `status` reports the service failed (LSB 1).
                    return 1;
                }
                Decision::RestartIn(delay) => {
                    if !self.back_off(delay) {
                        return 0;
                    }
                }
            }
            self.state.restarts += 1;
        }
    }

    /// Waits out the back-off delay; false when a stop arrived meanwhile.
    fn back_off(&mut self, delay: Duration) -> bool {
        let due = std::time::SystemTime::now() + delay;
        self.state.state = Phase::BackingOff;
        self.state.next_restart_at = Some(humantime::format_rfc3339_millis(due).to_string());
        self.save();
        self.log.event(&format!(
            "restarting in {} (restart {})",
            human_duration(delay),
            self.state.restarts + 1
        ));
        self.reporter.status(&format!(
            "restarting in {}: {}",
            human_duration(delay),
            self.state.last_exit.as_deref().unwrap_or("crashed")
        ));
        let deadline = Instant::now() + delay;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let sig = self.signals.wait(Some(deadline - now));
            if sig == Some(libc::SIGHUP) {
                self.log.event("reload requested: restarting now");
                break;
            }
            if let Some(sig @ (libc::SIGTERM | libc::SIGINT)) = sig {
                self.reporter.stopping();
                self.log.event(&format!(
                    "stop requested ({}) while waiting to restart",
                    process::signal_name(sig)
                ));
                self.state.state = Phase::Exited;
                self.state.stopped_on_request = true;
                self.state.next_restart_at = None;
                self.save();
                self.remove_pidfile();
                return false;
            }
        }
        self.state.next_restart_at = None;
        true
    }

    /// One run of the service: spawn, health gate, then watch until it ends
    /// or a stop arrives. Only the first run reports to `start`.
    fn run_once(&mut self, first: bool) -> Outcome {
        let manifest = &self.release.manifest;
        let start_timeout = Duration::from_millis(manifest.health.start_timeout_ms);
        let check = manifest.health.check.clone();
        self.state.state = Phase::Starting;
        self.state.healthy_after_ms = None;
        self.save();

        // Something already listening there would answer for the service
        // (typically an old instance that never went away).
        if let Err(message) = health::port_free(&check) {
            self.log.event(&message);
            return Outcome::StartFailed(message);
        }

        // Kept before the spawn, so the log says "started" before anything
        // the new process writes.
        let hold = self.log.hold();
        let mut child = match self.spawn() {
            Ok(child) => child,
            Err(message) => {
                self.log.fill(hold, None);
                return Outcome::StartFailed(message);
            }
        };
        let spawned = Instant::now();
        let pid = child.id() as i32;
        self.log.fill(
            hold,
            Some(&format!(
                "started pid {pid} from release {}",
                self.release.manifest.id
            )),
        );
        let id = procfs::identify(pid).ok().flatten().unwrap_or(ProcessId {
            pid,
            start_ticks: 0,
        });
        self.state.service = Some(id);
        self.state.started_at = Some(logfile::now_rfc3339());
        if let Err(e) = state::write_pidfile(&self.layout.pidfile(), id) {
            self.log.event(&format!(
                "cannot write {}: {e}",
                self.layout.pidfile().display()
            ));
        }
        self.save();
        self.reporter.status(&format!(
            "starting pid {pid} from release {}",
            self.state.release
        ));

        let healthy_at =
            match health::wait_healthy(&check, pid, spawned, start_timeout, &self.signals) {
                Gate::Healthy(after) => {
                    let ms = after.as_millis() as u64;
                    self.log.event(&format!("healthy after {ms} ms"));
                    self.state.state = Phase::Running;
                    self.state.healthy_after_ms = Some(ms);
                    self.save();
                    if first {
                        // `start` returning means the log shows it too.
                        self.log.sync(LOG_SYNC_WAIT);
                        self.reporter.ready(&StartReport {
                            pid,
                            release: self.state.release.clone(),
                            healthy_after_ms: ms,
                            already_running: false,
                        });
                    } else {
                        self.reporter.status(&format!(
                            "healthy: pid {pid}, release {}, restart {}",
                            self.state.release, self.state.restarts
                        ));
                    }
                    // What start-up needed (parsing, JSON, HTTP) stays in
                    // the page cache but leaves our resident set.
                    memory::drop_clean_file_pages();
                    if self.reloading {
                        self.reloaded(
                            true,
                            format!(
                                "restarted: pid {pid} from release {}, healthy after {ms} ms",
                                self.state.release
                            ),
                        );
                    }
                    Instant::now()
                }
                Gate::Exited(exit) => {
                    let message = format!("{exit} before becoming healthy");
                    self.log.event(&message);
                    self.finish(&mut child, Some(exit), message.clone());
                    return Outcome::StartFailed(message);
                }
                Gate::TimedOut => {
                    let message = format!("not healthy after {}", human_duration(start_timeout));
                    self.log
                        .event(&format!("{message}: killing process group {pid} (SIGKILL)"));
                    let _ = process::signal_group(pid, Signal::SIGKILL);
                    let exit = stopping::wait_exit(&self.signals, pid, Instant::now() + KILL_WAIT);
                    let how = match exit {
                        Some(exit) => exit.to_string(),
                        None => format!("still alive {} after SIGKILL", human_duration(KILL_WAIT)),
                    };
                    self.log.event(&how);
                    self.finish(&mut child, exit, message.clone());
                    return Outcome::StartFailed(message);
                }
                Gate::NotOurs(message) => {
                    self.log
                        .event(&format!("{message}: killing process group {pid} (SIGKILL)"));
                    let _ = process::signal_group(pid, Signal::SIGKILL);
                    let exit = stopping::wait_exit(&self.signals, pid, Instant::now() + KILL_WAIT);
                    self.finish(&mut child, exit, message.clone());
                    return Outcome::StartFailed(message);
                }
                Gate::StopRequested(sig) => {
                    self.log.event(&format!(
                        "stop requested ({}) while starting",
                        process::signal_name(sig)
                    ));
                    let how = self.stop_service(&mut child, false);
                    self.state.stopped_on_request = true;
                    self.save();
                    return Outcome::StoppedWhileStarting(how);
                }
            };

        loop {
            if let Ok(Some(exit)) = process::exited_child(pid) {
                self.log.event(&exit.to_string());
                self.finish(&mut child, Some(exit), exit.to_string());
                return Outcome::Crashed {
                    exit,
                    healthy_for: healthy_at.elapsed(),
                };
            }
            match self.signals.wait(Some(RECHECK)) {
                Some(libc::SIGTERM | libc::SIGINT) => {
                    self.stop_service(&mut child, true);
                    self.state.stopped_on_request = true;
                    self.save();
                    self.remove_pidfile();
                    return Outcome::Stopped;
                }
                Some(libc::SIGHUP) => match self.release.manifest.reload.signal.clone() {
                    Some(name) => {
                        let sent = name
                            .parse::<Signal>()
                            .map_err(|e| e.to_string())
                            .and_then(|s| process::signal_pid(pid, s).map_err(|e| e.to_string()));
                        match sent {
                            Ok(_) => self.reloaded(true, format!("sent {name} to pid {pid}")),
                            Err(e) => self
                                .reloaded(false, format!("cannot send {name} to pid {pid}: {e}")),
                        }
                    }
                    None => {
                        self.log
                            .event("reload requested: restarting through the health gate");
                        self.stop_service(&mut child, true);
                        return Outcome::Reload;
                    }
                },
                Some(sig @ (libc::SIGQUIT | libc::SIGUSR1 | libc::SIGUSR2)) => {
                    // Passed on to the main process only: SIGQUIT would kill
                    // a wrapper script, and a JVM prints its thread dump once.
                    let name = process::signal_name(sig);
                    let sent = Signal::try_from(sig)
                        .map_err(|e| e.to_string())
                        .and_then(|s| process::signal_pid(pid, s).map_err(|e| e.to_string()));
                    match sent {
                        Ok(_) => self.log.event(&format!("passed {name} on to pid {pid}")),
                        Err(e) => self
                            .log
                            .event(&format!("cannot pass {name} on to pid {pid}: {e}")),
                    }
                }
                _ => {}
            }
        }
    }

    /// Records how a reload went, for the waiting `service reload`.
    fn reloaded(&mut self, ok: bool, how: String) {
        self.reloading = false;
        self.log.event(&format!("reload: {how}"));
        self.state.reloads += 1;
        self.state.last_reload = Some(how);
        self.state.last_reload_ok = Some(ok);
        self.save();
    }

    /// Switches to the release `current` points to now (a reload restarts
    /// into it); keeps the old one when the new one cannot be run.
    fn adopt_current(&mut self) {
        let next = release::current(self.layout).and_then(|release| {
            let creds = spawn::credentials(&release)?;
            if let Some(c) = &creds {
                privileges::check_release(self.layout, &release.dir, c)?;
            }
            Ok((release, creds))
        });
        match next {
            Ok((release, creds)) => {
                if release.manifest.id != self.release.manifest.id {
                    self.log.event(&format!(
                        "reload: release {} (was {})",
                        release.manifest.id, self.release.manifest.id
                    ));
                }
                self.state.release = release.manifest.id.clone();
                self.state.release_dir = release.dir.clone();
                self.release = release;
                self.creds = creds;
            }
            Err(e) => self.log.event(&format!(
                "reload: keeping release {}: {e}",
                self.release.manifest.id
            )),
        }
    }

    /// Records a failed first start, cleans up and tells `start`.
    fn fail_start(&mut self, message: String) {
        self.state.state = Phase::Exited;
        if self.state.last_exit.is_none() {
            self.state.last_exit = Some(message.clone());
        }
        self.save();
        self.remove_pidfile();
        // The log tail `start` shows must hold the service's last words.
        self.log.sync(LOG_SYNC_WAIT);
        self.reporter.failed(&message, self.layout);
    }

    /// Stops the service gracefully (see [`stopping`]); returns how it
    /// ended, also recorded in the state. `drain`: run the stop hook first.
    fn stop_service(&mut self, child: &mut Child, drain: bool) -> String {
        let pid = child.id() as i32;
        self.reporter.stopping();
        self.state.state = Phase::Stopping;
        self.save();
        let ctx = StopContext {
            layout: self.layout,
            release: &self.release,
            creds: self.creds.as_ref(),
            log: &self.log,
            signals: &self.signals,
        };
        let ending = stopping::stop(&ctx, pid, drain);
        self.state.clean_stop = Some(ending.clean);
        self.state.stop_took_ms = Some(ending.took.as_millis() as u64);
        self.state.thread_dump = ending.thread_dump;
        self.finish(child, ending.exit, ending.how.clone());
        ending.how
    }

    /// After the service's main process exited: kill what is left of its
    /// group (the zombie still reserves the group id), reap it, record the end.
    fn finish(&mut self, child: &mut Child, exit: Option<ExitInfo>, description: String) {
        let pid = child.id() as i32;
        if !procfs::live_group_members(pid).is_empty() {
            self.log.event(&format!(
                "killing leftover processes of group {pid} (SIGKILL)"
            ));
            let _ = process::signal_group(pid, Signal::SIGKILL);
        }
        // Reap only what has exited: a process stuck in the kernel (state D)
        // ignores even SIGKILL, and waiting for it would hang the supervisor.
        if let Ok(Some(_)) = process::exited_child(pid) {
            if let Err(e) = child.wait() {
                self.log.event(&format!("cannot reap pid {pid}: {e}"));
            }
        } else {
            self.log.event(&format!(
                "pid {pid} has not exited even after SIGKILL; giving up on it"
            ));
        }
        self.state.state = Phase::Exited;
        self.state.last_exit = Some(description);
        self.state.last_exit_code = match exit {
            Some(ExitInfo::Code(code)) => Some(code),
            _ => None,
        };
        self.state.last_exit_signal = match exit {
            Some(ExitInfo::Signal(sig)) => Some(process::signal_name(sig)),
            _ => None,
        };
        self.save();
    }

    fn spawn(&mut self) -> Result<Child, String> {
        let (stdout, stderr) = self
            .log
            .service_stdio()
            .map_err(|e| format!("cannot hand the log pipe to the service: {e}"))?;
        spawn::spawn(
            self.layout,
            &self.release,
            self.creds.as_ref(),
            stdout,
            stderr,
        )
    }

    fn save(&mut self) {
        self.state.updated_at = logfile::now_rfc3339();
        let path = self.layout.supervisor_state();
        if let Err(e) = state::write_state(&path, &self.state) {
            self.log
                .event(&format!("cannot write {}: {e}", path.display()));
        }
    }

    fn remove_pidfile(&mut self) {
        let path = self.layout.pidfile();
        if let Err(e) = remove_if_present(&path) {
            self.log
                .event(&format!("cannot remove {}: {e}", path.display()));
        }
    }
}

/// Opens the rotating log and starts the thread that drains the service's
/// output into it. Our own stderr goes into the pipe too, so anything we
/// print (a panic) lands in the log, in order.
fn open_log(
    layout: &Layout,
    release: &Release,
    creds: Option<&Credentials>,
    mode: Mode,
) -> Result<LogPipe, String> {
    let spec = &release.manifest.logs;
    let rotation = Rotation {
        max_size: spec.max_size,
        keep: spec.keep,
        compress: spec.compress,
    };
    let path = layout.log_file();
    // Ours, readable by the service's group (root:group 0640 as root).
    let owner = creds.map(|c| Owner {
        uid: nix::unistd::Uid::effective().as_raw(),
        gid: c.gid,
    });
    let file = RotatingFile::open(&path, rotation, owner)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // In the foreground our stderr is the process manager's (the journal):
    // events go there too, and it stays ours.
    let foreground = mode == Mode::Foreground;
    let log =
        LogPipe::start(file, foreground).map_err(|e| format!("cannot start the log pipe: {e}"))?;
    if !foreground {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 2, which we own as our stderr.
        unsafe {
            libc::dup2(log.service_fd().as_raw_fd(), libc::STDERR_FILENO);
        }
    }
    Ok(log)
}

/// Takes the supervisor lock without waiting: held means another supervisor lives.
fn take_lock(layout: &Layout) -> Result<File, String> {
    let path = layout.supervisor_lock();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            let holder = state::read_state(&layout.supervisor_state())
                .map(|s| format!(" (pid {})", s.supervisor.pid))
                .unwrap_or_default();
            Err(format!(
                "another supervisor is already running for {}{holder}",
                layout.name()
            ))
        }
        Err(fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}
