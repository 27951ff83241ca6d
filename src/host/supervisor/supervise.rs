//! The supervisor process (`service supervise`): holds the lock, spawns the
//! service, gates on health, reports once on stdout, then waits for the
//! service to exit or for a stop signal.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::host::layout::Layout;
use crate::protocol::manifest::HealthCheck;

use super::health::{self, Gate};
use super::logfile::{self, EventLog};
use super::process::{self, Credentials, ExitInfo, Signals};
use super::procfs::{self, Liveness, ProcessId};
use super::release::{self, Release};
use super::state::{self, Phase, Pidfile, SupervisorState};
use super::{StartReport, SupervisorError, human_duration};

/// `PATH` of the service's clean environment.
pub const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long to wait for a SIGKILLed process to be gone before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often the running loop re-checks the child even without a signal;
/// SIGCHLD is the real trigger, this is a safety net.
const RECHECK: Duration = Duration::from_secs(5);

/// Prefix of the readiness line on success.
pub const READY: &str = "READY ";

/// Prefix of the readiness line on failure.
pub const FAILED: &str = "FAILED ";

/// Runs the supervisor; returns its exit code (0 after a requested stop).
pub fn run(layout: &Layout) -> i32 {
    let mut ready = Readiness { sent: false };
    match Supervisor::setup(layout) {
        Ok(mut supervisor) => supervisor.run(&mut ready),
        Err(message) => {
            // Also into the log, for whoever reads it rather than `start`'s output.
            let mut events = EventLog::new(logfile::open_append(&layout.log_file()).ok());
            events.event(&format!("supervisor not started: {message}"));
            ready.failed(&message, layout);
            1
        }
    }
}

/// The one-line report to `service start` on stdout.
struct Readiness {
    sent: bool,
}

impl Readiness {
    fn ready(&mut self, report: &StartReport) {
        match serde_json::to_string(report) {
            Ok(json) => self.send(&format!("{READY}{json}")),
            Err(e) => self.send(&format!("{FAILED}cannot encode report: {e}")),
        }
    }

    fn failed(&mut self, message: &str, layout: &Layout) {
        let err = SupervisorError {
            message: message.to_string(),
            log_tail: logfile::tail(&layout.log_file(), logfile::TAIL_LINES),
        };
        match serde_json::to_string(&err) {
            Ok(json) => self.send(&format!("{FAILED}{json}")),
            Err(_) => self.send(&format!("{FAILED}{message}")),
        }
    }

    /// Writes the line once, then points stdout at /dev/null so `start` sees
    /// EOF and nothing we do later can block on, or die from, a closed pipe.
    fn send(&mut self, line: &str) {
        if self.sent {
            return;
        }
        self.sent = true;
        let mut out = io::stdout().lock();
        // `start` may have given up already; the supervisor carries on regardless.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        drop(out);
        if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto fd 1, which we own as our stdout.
            unsafe {
                libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
            }
        }
    }
}

/// How one run of the service ended.
enum Ended {
    /// Stopped on request; the pidfile is gone.
    Stopped,
    /// Exited on its own after becoming healthy; the pidfile stays.
    Crashed,
    /// Never became healthy (or could not be spawned); already reported.
    StartFailed,
}

struct Supervisor<'a> {
    layout: &'a Layout,
    signals: Signals,
    events: EventLog,
    release: Release,
    state: SupervisorState,
    /// Held for our whole life: proof that a supervisor is alive.
    _lock: File,
}

impl<'a> Supervisor<'a> {
    fn setup(layout: &'a Layout) -> Result<Self, String> {
        // Blocked first, so a stop that arrives while we set up waits for us.
        let signals = Signals::block().map_err(|e| format!("cannot block signals: {e}"))?;
        let run_dir = layout.run_dir();
        fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        let lock = take_lock(layout)?;
        let log = logfile::open_append(&layout.log_file())
            .map_err(|e| format!("{}: {e}", layout.log_file().display()))?;
        let events = EventLog::new(Some(log));
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
            updated_at: logfile::now_rfc3339(),
        };
        let mut supervisor = Supervisor {
            layout,
            signals,
            events,
            release,
            state,
            _lock: lock,
        };
        supervisor.save();
        Ok(supervisor)
    }

    /// Supervises until the service is stopped or ends; crash restarts with
    /// back-off will loop here.
    fn run(&mut self, ready: &mut Readiness) -> i32 {
        match self.run_once(ready) {
            Ended::Stopped => 0,
            Ended::Crashed | Ended::StartFailed => 1,
        }
    }

    fn run_once(&mut self, ready: &mut Readiness) -> Ended {
        let manifest = &self.release.manifest;
        let start_timeout = Duration::from_millis(manifest.health.start_timeout_ms);
        let check = manifest.health.check.clone();

        // Something already answering the check would make a dead service
        // look healthy (typically an old instance still holding the port).
        if !matches!(check, HealthCheck::None)
            && health::probe_once(&check, Duration::from_millis(500)).is_ok()
        {
            let message = "the health check passes before the service is started: \
                           another process answers it"
                .to_string();
            return self.fail_start(ready, message);
        }

        let mut child = match self.spawn() {
            Ok(child) => child,
            Err(message) => return self.fail_start(ready, message),
        };
        let spawned = Instant::now();
        let pid = child.id() as i32;
        let id = procfs::identify(pid).ok().flatten().unwrap_or(ProcessId {
            pid,
            start_ticks: 0,
        });
        self.state.service = Some(id);
        self.state.started_at = Some(logfile::now_rfc3339());
        if let Err(e) = state::write_pidfile(&self.layout.pidfile(), id) {
            self.events.event(&format!(
                "cannot write {}: {e}",
                self.layout.pidfile().display()
            ));
        }
        self.save();
        self.events.event(&format!(
            "started pid {pid} from release {}",
            self.state.release
        ));

        match health::wait_healthy(&check, pid, spawned, start_timeout, &self.signals) {
            Gate::Healthy(after) => {
                let ms = after.as_millis() as u64;
                self.events.event(&format!("healthy after {ms} ms"));
                self.state.state = Phase::Running;
                self.state.healthy_after_ms = Some(ms);
                self.save();
                ready.ready(&StartReport {
                    pid,
                    release: self.state.release.clone(),
                    healthy_after_ms: ms,
                    already_running: false,
                });
            }
            Gate::Exited(exit) => {
                let message = format!("{exit} before becoming healthy");
                self.events.event(&message);
                self.finish(&mut child, None);
                return self.fail_start(ready, message);
            }
            Gate::TimedOut => {
                let message = format!("not healthy after {}", human_duration(start_timeout));
                self.events
                    .event(&format!("{message}: killing process group {pid} (SIGKILL)"));
                let _ = process::signal_group(pid, Signal::SIGKILL);
                let how = match self.wait_exit(pid, KILL_WAIT) {
                    Some(exit) => exit.to_string(),
                    None => format!("still alive {} after SIGKILL", human_duration(KILL_WAIT)),
                };
                self.events.event(&how);
                self.finish(&mut child, None);
                return self.fail_start(ready, message);
            }
            Gate::StopRequested(sig) => {
                self.events.event(&format!(
                    "stop requested ({}) while starting",
                    process::signal_name(sig)
                ));
                let how = self.stop_service(&mut child);
                self.state.stopped_on_request = true;
                return self.fail_start(ready, format!("stopped while starting: {how}"));
            }
        }

        loop {
            if let Ok(Some(exit)) = process::exited_child(pid) {
                self.events.event(&exit.to_string());
                self.finish(&mut child, Some(exit.to_string()));
                // The pidfile stays: `status` reports the service dead (LSB 1).
                return Ended::Crashed;
            }
            match self.signals.wait(Some(RECHECK)) {
                Some(libc::SIGTERM | libc::SIGINT) => {
                    self.stop_service(&mut child);
                    self.state.stopped_on_request = true;
                    self.save();
                    self.remove_pidfile();
                    return Ended::Stopped;
                }
                Some(libc::SIGHUP) => self
                    .events
                    .event("SIGHUP ignored (reload is not supported)"),
                _ => {}
            }
        }
    }

    /// Records a failed start, cleans up and tells `start`.
    fn fail_start(&mut self, ready: &mut Readiness, message: String) -> Ended {
        self.state.state = Phase::Exited;
        if self.state.last_exit.is_none() {
            self.state.last_exit = Some(message.clone());
        }
        self.save();
        self.remove_pidfile();
        ready.failed(&message, self.layout);
        Ended::StartFailed
    }

    /// Stops the service: SIGTERM to its group, SIGKILL after the stop
    /// timeout. Returns how it ended, also recorded in the state.
    fn stop_service(&mut self, child: &mut Child) -> String {
        let pid = child.id() as i32;
        let timeout = Duration::from_millis(self.release.manifest.stop.timeout_ms);
        let began = Instant::now();
        self.state.state = Phase::Stopping;
        self.save();
        self.events.event("stopping (SIGTERM)");
        let _ = process::signal_group(pid, Signal::SIGTERM);
        let deadline = began + timeout;
        // The main process first, then the rest of its group: a wrapper
        // script may exit at once while its JVM is still shutting down.
        let leader = self.wait_exit(pid, timeout);
        let how = if leader.is_some() && self.wait_group_empty(pid, deadline) {
            after_sigterm(leader)
        } else {
            self.events.event(&format!(
                "still running {} after SIGTERM: sending SIGKILL",
                human_duration(timeout)
            ));
            let _ = process::signal_group(pid, Signal::SIGKILL);
            let stop_timeout = human_duration(timeout);
            match leader {
                None => {
                    self.wait_exit(pid, KILL_WAIT);
                    format!("killed by SIGKILL after the {stop_timeout} stop timeout")
                }
                Some(_) => format!(
                    "{}; the rest of its process group killed by SIGKILL after the {stop_timeout} stop timeout",
                    after_sigterm(leader)
                ),
            }
        };
        let took = began.elapsed().as_millis();
        self.events.event(&format!("stopped: {how} in {took} ms"));
        self.finish(child, Some(how.clone()));
        how
    }

    /// After the service's main process exited: kill what is left of its
    /// group (the zombie still reserves the group id), reap it, record the end.
    fn finish(&mut self, child: &mut Child, last_exit: Option<String>) {
        let pid = child.id() as i32;
        if !procfs::live_group_members(pid).is_empty() {
            self.events.event(&format!(
                "killing leftover processes of group {pid} (SIGKILL)"
            ));
            let _ = process::signal_group(pid, Signal::SIGKILL);
        }
        // Reap only what has exited: a process stuck in the kernel (state D)
        // ignores even SIGKILL, and waiting for it would hang the supervisor.
        if let Ok(Some(_)) = process::exited_child(pid) {
            if let Err(e) = child.wait() {
                self.events.event(&format!("cannot reap pid {pid}: {e}"));
            }
        } else {
            self.events.event(&format!(
                "pid {pid} has not exited even after SIGKILL; giving up on it"
            ));
        }
        self.state.state = Phase::Exited;
        if last_exit.is_some() {
            self.state.last_exit = last_exit;
        }
        self.save();
    }

    /// Waits up to `timeout` for child `pid` to exit (without reaping it).
    fn wait_exit(&self, pid: i32, timeout: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            match process::exited_child(pid) {
                Ok(Some(exit)) => return Some(exit),
                Ok(None) => {}
                // ECHILD: not ours any more (cannot happen unless reaped elsewhere).
                Err(_) => return None,
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // Wakes on SIGCHLD; a repeated SIGTERM changes nothing here.
            self.signals.wait(Some(deadline - now));
        }
    }

    /// Waits until no live process is left in group `pgid`, at most until
    /// `deadline`. Group members are not our children: no signal tells us
    /// they left, so this polls `/proc`.
    fn wait_group_empty(&self, pgid: i32, deadline: Instant) -> bool {
        loop {
            if procfs::live_group_members(pgid).is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20).min(deadline - now));
        }
    }

    fn spawn(&mut self) -> Result<Child, String> {
        let manifest = &self.release.manifest;
        let argv = &manifest.run.argv;
        let Some(argv0) = argv.first() else {
            return Err("run.argv is empty".to_string());
        };
        let creds = match &manifest.run.user {
            Some(user) if process::is_root() => Some(Credentials::resolve(user)?),
            Some(user) => {
                self.events.event(&format!(
                    "running as the current user: run.user `{user}` applies only when started as root"
                ));
                None
            }
            None => None,
        };
        let env = self.service_env(creds.as_ref());
        let path = env
            .get(&OsString::from("PATH"))
            .cloned()
            .unwrap_or_default();
        let program = process::resolve_program(argv0, &path, &self.release.dir)?;
        let log = self.events.file().ok_or("the service log is not open")?;
        let (stdout, stderr) = logfile::service_output(log)
            .map_err(|e| format!("cannot hand the log to the service: {e}"))?;
        let mut cmd = Command::new(&program);
        cmd.arg0(argv0)
            .args(&argv[1..])
            .current_dir(&self.release.dir)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own group: stop signals the whole service, never us.
            .process_group(0);
        process::prepare_child(&mut cmd, false, creds);
        cmd.spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))
    }

    /// The service's clean environment: a fixed base, then `run.env`, then ours.
    fn service_env(&self, creds: Option<&Credentials>) -> BTreeMap<OsString, OsString> {
        let layout = self.layout;
        let dir = &self.release.dir;
        let home = creds
            .map(|c| c.home.clone())
            .unwrap_or_else(process::own_home);
        let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
        let mut set = |k: &str, v: OsString| {
            env.insert(OsString::from(k), v);
        };
        set("PATH", CLEAN_PATH.into());
        set("HOME", home.into_os_string());
        set("LANG", "C.UTF-8".into());
        for (k, v) in &self.release.manifest.run.env {
            set(k, v.into());
        }
        set("SHIPJAR_SERVICE", layout.name().into());
        set("SHIPJAR_RELEASE", self.release.manifest.id.clone().into());
        set("SHIPJAR_RELEASE_DIR", dir.clone().into_os_string());
        set("SHIPJAR_CONFIG_DIR", dir.join("config").into_os_string());
        set("SHIPJAR_SHARED_DIR", layout.shared_dir().into_os_string());
        set("SHIPJAR_LOG_DIR", layout.log_dir().into_os_string());
        env
    }

    fn save(&mut self) {
        self.state.updated_at = logfile::now_rfc3339();
        let path = self.layout.supervisor_state();
        if let Err(e) = state::write_state(&path, &self.state) {
            self.events
                .event(&format!("cannot write {}: {e}", path.display()));
        }
    }

    fn remove_pidfile(&mut self) {
        let path = self.layout.pidfile();
        if let Err(e) = state::remove_if_present(&path) {
            self.events
                .event(&format!("cannot remove {}: {e}", path.display()));
        }
    }
}

/// How the main process ended after SIGTERM: "exited 143 after SIGTERM",
/// "killed by SIGTERM" (it did not handle it).
fn after_sigterm(exit: Option<ExitInfo>) -> String {
    match exit {
        Some(ExitInfo::Code(code)) => format!("exited {code} after SIGTERM"),
        Some(exit) => exit.to_string(),
        None => "ended after SIGTERM".to_string(),
    }
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
