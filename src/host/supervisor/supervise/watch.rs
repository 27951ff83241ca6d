//! The watch phase of one run: the service is healthy; wait for it to exit
//! or for a signal: a stop, a reload (the release's reload signal, or a
//! restart through the health gate into `current`), or one passed on.

use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::host::supervisor::privileges;
use crate::host::supervisor::process;
use crate::host::supervisor::release;
use crate::host::supervisor::spawn;

use super::{Outcome, Supervisor};

/// How often the running loop re-checks the child even without a signal;
/// SIGCHLD is the real trigger, this is a safety net.
const RECHECK: Duration = Duration::from_secs(5);

impl Supervisor<'_> {
    /// Watches the healthy service until it exits or a stop or a reload
    /// restart ends the run.
    pub(super) fn watch(&mut self, child: &mut Child, healthy_at: Instant) -> Outcome {
        let pid = child.id() as i32;
        loop {
            if let Ok(Some(exit)) = process::exited_child(pid) {
                self.log.event(&exit.to_string());
                self.finish(child, Some(exit), exit.to_string());
                return Outcome::Crashed {
                    exit,
                    healthy_for: healthy_at.elapsed(),
                };
            }
            match self.signals.wait(Some(RECHECK)) {
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
            self.stop_service(child, true);
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

    /// Switches to the release `current` points to now (a reload restarts
    /// into it); keeps the old one when the new one cannot be run.
    pub(super) fn adopt_current(&mut self) {
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
}
