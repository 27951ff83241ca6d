//! The supervisor process (`service supervise`): holds the lock, spawns the
//! service, gates on health, reports once on stdout, then waits for the
//! service to exit or for a stop signal; restarts crashes with back-off.
//!
//! One run of the service has two phases: the gate ([`gate`]: spawn, wait
//! for the first passing health check) and the watch ([`watch`]: signals,
//! reloads, the exit). [`ending`] stops the service and records how a run
//! ended; [`setup`] takes the lock and opens the log before the first run.

mod archive;
mod ending;
mod gate;
mod reverting;
mod setup;
mod watch;

use std::process::Child;
use std::time::{Duration, Instant};

use crate::host::lockfile::HeldLock;
use crate::host::os::process::{self, Credentials, ExitInfo, Signals};
use crate::host::supervisor::backoff::{Backoff, Decision};
use crate::host::supervisor::cds::{self, ClassData};
use crate::host::supervisor::human_duration;
use crate::host::supervisor::logfile;
use crate::host::supervisor::logpipe::LogPipe;
use crate::host::supervisor::readiness::ReadinessChannel;
use crate::host::supervisor::release::Release;
use crate::host::supervisor::spawn;
use crate::host::supervisor::state::{self, Phase, SupervisorState};
use crate::protocol::layout::Layout;

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
    // Its events, state file and probe answers may carry what the service said.
    crate::host::secrets::mask_with(layout);
    let (mut readiness, notifier) = ReadinessChannel::open(mode == Mode::Foreground);
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
            readiness.failed(&format!("cannot block signals: {e}"), layout);
            return 1;
        }
    };
    match Supervisor::setup(layout, mode, signals) {
        Ok(mut supervisor) => {
            supervisor.readiness = readiness;
            supervisor.run()
        }
        Err(message) => {
            // Also into the log, for whoever reads it rather than `start`'s output.
            logfile::append_event(
                &logfile::service_log(layout),
                &format!("supervisor not started: {message}"),
            );
            readiness.failed(&message, layout);
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
    /// Failed `[health] failures` checks in a row while running, and was
    /// stopped; restarted like a crash.
    Unhealthy {
        /// Why, with the last check's result.
        why: String,
        /// How long it had been healthy before the checks began to fail.
        healthy_for: Duration,
    },
    /// Exited on its own after being healthy for a while.
    Crashed {
        /// How it ended.
        exit: ExitInfo,
        /// How long it had been healthy.
        healthy_for: Duration,
    },
}

impl Outcome {
    /// How a run that never passed its gate ended, in a few words.
    fn describe(&self) -> String {
        match self {
            Outcome::StartFailed(why) => why.clone(),
            Outcome::StoppedWhileStarting(how) => format!("stopped while starting: {how}"),
            Outcome::Stopped => "stopped".into(),
            Outcome::Reload => "reloaded while starting".into(),
            Outcome::Unhealthy { why, .. } => why.clone(),
            Outcome::Crashed { exit, .. } => exit.to_string(),
        }
    }
}

struct Supervisor<'a> {
    layout: &'a Layout,
    signals: Signals,
    log: LogPipe,
    release: Release,
    state: SupervisorState,
    backoff: Backoff,
    /// Where readiness and state go.
    readiness: ReadinessChannel,
    /// A reload restart is under way; its outcome is recorded for `service reload`.
    reloading: bool,
    /// An auto-revert is in its health gate; its outcome goes to `revisions.log`.
    reverting: Option<reverting::Pending>,
    /// Who the service runs as, when we drop privileges.
    creds: Option<Credentials>,
    /// What the current run does about class data (`[service] cds`).
    class_data: ClassData,
    /// The current run's class-data dump, when it records its classes.
    dump_job: archive::DumpJob,
    /// Held for our whole life: proof that a supervisor is alive.
    _lock: HeldLock,
}

impl Supervisor<'_> {
    /// Supervises until the service is stopped, or fails for good.
    fn run(&mut self) -> i32 {
        let mut first = true;
        loop {
            let outcome = self.run_once(first);
            // The gate passed records itself; anything else is its failure.
            if self.reverting.is_some() {
                self.reverted(Err(outcome.describe()));
            }
            let (why, healthy_for) = match outcome {
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
                    self.adopt_current("reload");
                    self.reloading = true;
                    first = false;
                    continue;
                }
                Outcome::StartFailed(message) => {
                    if self.reloading {
                        self.reloaded(false, format!("the restart failed: {message}"));
                    }
                    (message, None)
                }
                Outcome::Crashed { exit, healthy_for } => (exit.to_string(), Some(healthy_for)),
                Outcome::Unhealthy { why, healthy_for } => (why, Some(healthy_for)),
            };
            first = false;
            if !self.release.manifest.restart.enabled {
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
                    self.give_up(reason.clone());
                    match self.auto_revert(&reason) {
                        reverting::Revert::No => return 1,
                        reverting::Revert::Stopped => return 0,
                        reverting::Revert::Started => continue,
                    }
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

    /// One run of the service: spawn, health gate, then watch until it ends
    /// or a stop arrives. Only the first run reports to `start`.
    fn run_once(&mut self, first: bool) -> Outcome {
        let (mut child, spawned) = match self.launch() {
            Ok(launched) => launched,
            Err(outcome) => return outcome,
        };
        match self.gate(&mut child, spawned, first) {
            Ok(healthy_at) => self.watch(&mut child, healthy_at),
            Err(outcome) => outcome,
        }
    }

    /// Too many failures: records why and stays `failed`.
    fn give_up(&mut self, reason: String) {
        self.log.event(&format!("giving up: {reason}"));
        self.readiness.status(&format!("failed: {reason}"));
        self.state.state = Phase::Failed;
        self.state.failed_reason = Some(reason);
        self.state.next_restart_at = None;
        self.save();
        // The pidfile stays: `status` reports the service failed (LSB 1).
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
        self.readiness.status(&format!(
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
                self.readiness.stopping();
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

    fn spawn(&mut self) -> Result<Child, String> {
        let (stdout, stderr) = self
            .log
            .service_stdio()
            .map_err(|e| format!("cannot hand the log pipe to the service: {e}"))?;
        let options = cds::jvm_options(&self.class_data);
        if options.is_empty() {
            return spawn::spawn(
                self.layout,
                &self.release,
                self.creds.as_ref(),
                stdout,
                stderr,
            );
        }
        // Right after `java`, before the release's own options and `-jar`.
        let mut release = self.release.clone();
        let argv = &mut release.manifest.run.argv;
        argv.splice(1.min(argv.len())..1.min(argv.len()), options);
        spawn::spawn(self.layout, &release, self.creds.as_ref(), stdout, stderr)
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
        if let Err(e) = state::remove(&path) {
            self.log
                .event(&format!("cannot remove {}: {e}", path.display()));
        }
    }
}
