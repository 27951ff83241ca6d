//! The gate phase of one run: spawn the service, record it, and wait for its
//! first passing health check; a service that exits, never gets healthy or
//! is not the one answering is killed, and a stop request ends the start.

use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::host::os::process::{self, ExitInfo};
use crate::host::os::procfs::{self, ProcessId};
use crate::host::supervisor::cds::{self, ClassData};
use crate::host::supervisor::health::{self, Gate};
use crate::host::supervisor::logfile;
use crate::host::supervisor::state::{self, ClassDataUse, Phase};
use crate::host::supervisor::stopping::{self, KILL_WAIT};
use crate::host::supervisor::{StartReport, human_duration};

use super::{LOG_SYNC_WAIT, Outcome, Supervisor};

impl Supervisor<'_> {
    /// Spawns the service and records it; returns it with its spawn time,
    /// or how the run ended when it could not start.
    pub(super) fn launch(&mut self) -> Result<(Child, Instant), Outcome> {
        self.state.state = Phase::Starting;
        self.state.healthy_after_ms = None;
        self.state.unhealthy_since = None;
        self.state.last_probe = None;
        self.save();

        // Something already listening there would answer for the service
        // (typically an old instance that never went away).
        if let Err(message) = health::port_free(&self.release.manifest.health.check) {
            self.log.event(&message);
            return Err(Outcome::StartFailed(message));
        }

        let plan = cds::plan(self.layout, &self.release, self.creds.as_ref());
        if let Some(note) = &plan.note {
            self.log.event(note);
        }
        self.state.class_data = match &plan.class_data {
            ClassData::Off => None,
            ClassData::Use { .. } => Some(ClassDataUse::Used),
            ClassData::Record(_) => Some(ClassDataUse::Recording),
        };
        self.class_data = plan.class_data;

        // Kept before the spawn, so the log says "started" before anything
        // the new process writes.
        let hold = self.log.hold();
        let child = match self.spawn() {
            Ok(child) => child,
            Err(message) => {
                self.log.fill(hold, None);
                self.end_class_data();
                return Err(Outcome::StartFailed(message));
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
        self.record_spawn(pid);
        Ok((child, spawned))
    }

    /// Writes the new process into the state and the pidfile.
    fn record_spawn(&mut self, pid: i32) {
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
        self.readiness.status(&format!(
            "starting pid {pid} from release {}",
            self.state.release
        ));
    }

    /// Waits for the first passing health check; returns when it passed,
    /// or how the run ended instead.
    pub(super) fn gate(
        &mut self,
        child: &mut Child,
        spawned: Instant,
        first: bool,
    ) -> Result<Instant, Outcome> {
        let spec = &self.release.manifest.health;
        let start_timeout = Duration::from_millis(spec.start_timeout_ms);
        let pid = child.id() as i32;
        match health::wait_healthy(&spec.check, pid, spawned, start_timeout, &self.signals) {
            Gate::Healthy(after) => {
                self.passed(pid, after, first);
                Ok(Instant::now())
            }
            Gate::Exited(exit) => {
                let message = format!("{exit} before becoming healthy");
                self.log.event(&message);
                self.finish(child, Some(exit), message.clone());
                Err(Outcome::StartFailed(message))
            }
            Gate::TimedOut(last) => {
                // Before the kill: what the service listens on says where it went wrong.
                let why =
                    health::why_unready(&self.release.manifest.health.check, pid, last.as_ref());
                let message = format!("not healthy after {}: {why}", human_duration(start_timeout));
                let exit = self.kill_unready(pid, &message);
                let how = match exit {
                    Some(exit) => exit.to_string(),
                    None => format!("still alive {} after SIGKILL", human_duration(KILL_WAIT)),
                };
                self.log.event(&how);
                self.finish(child, exit, message.clone());
                Err(Outcome::StartFailed(message))
            }
            Gate::NotOurs(message) => {
                let exit = self.kill_unready(pid, &message);
                self.finish(child, exit, message.clone());
                Err(Outcome::StartFailed(message))
            }
            Gate::StopRequested(sig) => {
                self.log.event(&format!(
                    "stop requested ({}) while starting",
                    process::signal_name(sig)
                ));
                let how = self.stop_service(child, false);
                self.state.stopped_on_request = true;
                self.save();
                Err(Outcome::StoppedWhileStarting(how))
            }
        }
    }

    /// The gate passed: records it and tells whoever waits for it (`start`
    /// on the first run, `service reload` after a reload restart).
    fn passed(&mut self, pid: i32, after: Duration, first: bool) {
        let ms = after.as_millis() as u64;
        // The state first: whoever sees the event and asks `status` finds
        // it running, not still in the gate.
        self.state.state = Phase::Running;
        self.state.healthy_after_ms = Some(ms);
        self.save();
        self.log.event(&format!("healthy after {ms} ms"));
        self.schedule_dump();
        if let ClassData::Use { archive, .. } = &self.class_data
            && cds::mapped(pid, archive) == Some(false)
        {
            self.log.event(&format!(
                "class-data archive: the JVM did not map {} (it refused it; its warning is above); \
                 removed, the next start records its classes for a new one",
                archive.display()
            ));
            cds::forget(archive);
            self.state.class_data = Some(ClassDataUse::Refused);
            self.save();
        }
        if first {
            // `start` returning means the log shows it too.
            self.log.sync(LOG_SYNC_WAIT);
            self.readiness.ready(&StartReport {
                pid,
                release: self.state.release.clone(),
                healthy_after_ms: ms,
                already_running: false,
            });
        } else {
            self.readiness.status(&format!(
                "healthy: pid {pid}, release {}, restart {}",
                self.state.release, self.state.restarts
            ));
        }
        self.reverted(Ok(pid));
        if self.reloading {
            self.reloaded(
                true,
                format!(
                    "restarted: pid {pid} from release {}, healthy after {ms} ms",
                    self.state.release
                ),
            );
        }
    }

    /// SIGKILLs the process group of a service that failed the gate and
    /// waits a moment for it; returns how the main process ended, if it did.
    fn kill_unready(&mut self, pid: i32, why: &str) -> Option<ExitInfo> {
        self.log
            .event(&format!("{why}: killing process group {pid} (SIGKILL)"));
        let _ = process::signal_group(pid, Signal::SIGKILL);
        stopping::wait_exit(&self.signals, pid, Instant::now() + KILL_WAIT)
    }
}
