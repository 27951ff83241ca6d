//! The watch phase of one run: the service is healthy; check its health
//! every `[health] interval` and wait for it to exit or for a signal: a
//! stop, a reload (the release's reload signal, or a restart through the
//! health gate into `current`), or one passed on. After `[health] failures`
//! failed checks in a row the service is stopped and the run ends like a
//! crash, so it is restarted with the same back-off.

use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::host::os::process;
use crate::host::supervisor::health::{self, Failure, Streak, Verdict};
use crate::host::supervisor::logfile;
use crate::host::supervisor::privileges;
use crate::host::supervisor::release;
use crate::host::supervisor::spawn;
use crate::protocol::defaults;
use crate::protocol::manifest::{HealthCheck, HealthSpec};

use super::{Outcome, Supervisor};

/// How often the running loop re-checks the child even without a signal;
/// SIGCHLD is the real trigger, this is a safety net.
const RECHECK: Duration = Duration::from_secs(5);

/// Shortest interval between checks of a running service, whatever a
/// manifest says.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The checks of a running service: what, how often, how long each may take.
struct Liveness {
    check: HealthCheck,
    interval: Duration,
    timeout: Duration,
    streak: Streak,
    /// When the next check is due.
    next: Instant,
}

impl Liveness {
    /// `None` when the service has no check (running counts as healthy).
    fn new(spec: &HealthSpec, healthy_at: Instant) -> Option<Liveness> {
        if spec.check == HealthCheck::None {
            return None;
        }
        let interval = Duration::from_millis(spec.interval_ms).max(MIN_INTERVAL);
        Some(Liveness {
            check: spec.check.clone(),
            interval,
            // A check ends before the next is due, so a hung service is
            // found within interval × (failures + 1).
            timeout: Duration::from_millis(spec.probe_timeout_ms)
                .min(interval)
                .min(defaults::HEALTH_PROBE_TIMEOUT_MAX)
                .max(Duration::from_millis(1)),
            streak: Streak::new(spec.failures),
            next: healthy_at + interval,
        })
    }

    /// Runs the check and schedules the next one at a fixed rate (a slow
    /// check does not push the schedule back).
    fn probe(&mut self) -> Result<(), Failure> {
        let result = health::probe_once(&self.check, self.timeout);
        let now = Instant::now();
        self.next += self.interval;
        if self.next <= now {
            self.next = now + self.interval;
        }
        result
    }
}

impl Supervisor<'_> {
    /// Watches the healthy service until it exits, stays unhealthy, or a
    /// stop or a reload restart ends the run.
    pub(super) fn watch(&mut self, child: &mut Child, healthy_at: Instant) -> Outcome {
        let pid = child.id() as i32;
        let mut liveness = Liveness::new(&self.release.manifest.health, healthy_at);
        loop {
            if let Ok(Some(exit)) = process::exited_child(pid) {
                self.log.event(&exit.to_string());
                self.finish(child, Some(exit), exit.to_string());
                return Outcome::Crashed {
                    exit,
                    healthy_for: healthy_at.elapsed(),
                };
            }
            let dump_at = self.tend_dump();
            let wait = liveness.as_ref().map_or(RECHECK, |l| {
                l.next
                    .saturating_duration_since(Instant::now())
                    .min(RECHECK)
            });
            let wait = dump_at.map_or(wait, |at| {
                wait.min(at.saturating_duration_since(Instant::now()))
            });
            match self.signals.wait(Some(wait)) {
                Some(libc::SIGTERM | libc::SIGINT) => {
                    self.stop_service(child, true);
                    self.state.stopped_on_request = true;
                    self.save();
                    self.remove_pidfile();
                    return Outcome::Stopped;
                }
                Some(libc::SIGHUP) => {
                    if let Some(outcome) = self.reload(child) {
                        return outcome;
                    }
                }
                Some(sig @ (libc::SIGQUIT | libc::SIGUSR1 | libc::SIGUSR2)) => {
                    self.pass_on(pid, sig);
                }
                _ => {}
            }
            if let Some(l) = liveness.as_mut()
                && Instant::now() >= l.next
            {
                let result = l.probe();
                // An exit wins over what the check says about it.
                if !matches!(process::exited_child(pid), Ok(None)) {
                    continue;
                }
                if let Some(outcome) = self.judge(child, l, result, healthy_at) {
                    return outcome;
                }
            }
        }
    }

    /// Logs and records what a check of the running service found; after
    /// too many failures in a row stops the service and returns how the run
    /// ended.
    fn judge(
        &mut self,
        child: &mut Child,
        liveness: &mut Liveness,
        result: Result<(), Failure>,
        healthy_at: Instant,
    ) -> Option<Outcome> {
        let allowed = liveness.streak.allowed;
        match (
            liveness.streak.record(result.is_ok(), Instant::now()),
            result,
        ) {
            (Verdict::Recovered(n), _) => {
                self.log.event(&format!(
                    "health check passed again after {n} failed check{}",
                    if n == 1 { "" } else { "s" }
                ));
                self.state.unhealthy_since = None;
                self.state.last_probe = None;
                self.save();
                self.readiness.status(&format!(
                    "healthy again: pid {}, release {}",
                    child.id(),
                    self.state.release
                ));
                None
            }
            (Verdict::Failing(n), Err(failure)) => {
                self.log
                    .event(&format!("health check failed ({n}/{allowed}): {failure}"));
                if n == 1 {
                    self.state.unhealthy_since = Some(logfile::now_rfc3339());
                }
                self.state.last_probe = Some(failure.to_string());
                self.save();
                self.readiness
                    .status(&format!("unhealthy ({n}/{allowed}): {failure}"));
                None
            }
            (Verdict::Unhealthy(n), Err(failure)) => {
                self.log
                    .event(&format!("health check failed ({n}/{allowed}): {failure}"));
                if self.state.unhealthy_since.is_none() {
                    self.state.unhealthy_since = Some(logfile::now_rfc3339());
                }
                self.state.last_probe = Some(failure.to_string());
                let why = format!(
                    "unhealthy: {n} health check{} failed in a row, the last: {failure}",
                    if n == 1 { "" } else { "s" }
                );
                self.log.event(&format!("{why}; restarting"));
                self.readiness.status(&format!("{why}; restarting"));
                let healthy_for = liveness
                    .streak
                    .since()
                    .map_or(healthy_at.elapsed(), |since| since - healthy_at);
                // A crash restart: no stop hook, an unhealthy service is not serving.
                let how = self.stop_service(child, false);
                self.state.last_exit = Some(format!("{why}; {how}"));
                self.save();
                Some(Outcome::Unhealthy { why, healthy_for })
            }
            // A pass that follows a pass; a failure is never Fine nor Recovered.
            _ => None,
        }
    }

    /// SIGHUP: sends the release's reload signal to the service, or, with
    /// none configured, stops it gracefully to restart it through the gate
    /// (the returned outcome ends the run).
    fn reload(&mut self, child: &mut Child) -> Option<Outcome> {
        let pid = child.id() as i32;
        let Some(name) = self.release.manifest.reload.signal.clone() else {
            self.log
                .event("reload requested: restarting through the health gate");
            self.stop_for_restart(child, true);
            return Some(Outcome::Reload);
        };
        let sent = name
            .parse::<Signal>()
            .map_err(|e| e.to_string())
            .and_then(|s| process::signal_pid(pid, s).map_err(|e| e.to_string()));
        match sent {
            Ok(_) => self.reloaded(true, format!("sent {name} to pid {pid}")),
            Err(e) => self.reloaded(false, format!("cannot send {name} to pid {pid}: {e}")),
        }
        None
    }

    /// Passes SIGQUIT, SIGUSR1 or SIGUSR2 on to the main process only:
    /// SIGQUIT would kill a wrapper script, and a JVM prints its thread dump once.
    fn pass_on(&mut self, pid: i32, sig: i32) {
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

    /// Records how a reload went, for the waiting `service reload`.
    pub(super) fn reloaded(&mut self, ok: bool, how: String) {
        self.reloading = false;
        self.log.event(&format!("reload: {how}"));
        self.state.reloads += 1;
        self.state.last_reload = Some(how);
        self.state.last_reload_ok = Some(ok);
        self.save();
    }

    /// Switches to the release `current` points to now (a reload or an
    /// auto-revert restarts into it, `what` says which); keeps the old one
    /// when the new one cannot be run.
    pub(super) fn adopt_current(&mut self, what: &str) {
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
                        "{what}: release {} (was {})",
                        release.manifest.id, self.release.manifest.id
                    ));
                }
                self.state.release = release.manifest.id.clone();
                self.state.release_dir = release.dir.clone();
                self.release = release;
                self.creds = creds;
            }
            Err(e) => self.log.event(&format!(
                "{what}: keeping release {}: {e}",
                self.release.manifest.id
            )),
        }
    }
}
