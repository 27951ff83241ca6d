//! How a run ends: a graceful stop, the reaping of what is left of the
//! service's process group, and the record of how it ended; a failed first
//! start is told to whoever waits.

use std::process::Child;

use nix::sys::signal::Signal;

use crate::host::os::process::{self, ExitInfo};
use crate::host::os::procfs;
use crate::host::supervisor::state::Phase;
use crate::host::supervisor::stopping::{self, StopContext};

use super::{LOG_SYNC_WAIT, Supervisor};

impl Supervisor<'_> {
    /// Records a failed first start, cleans up and tells `start`.
    pub(super) fn fail_start(&mut self, message: String) {
        self.state.state = Phase::Exited;
        if self.state.last_exit.is_none() {
            self.state.last_exit = Some(message.clone());
        }
        self.save();
        self.remove_pidfile();
        // The log tail `start` shows must hold the service's last words.
        self.log.sync(LOG_SYNC_WAIT);
        self.readiness.failed(&message, self.layout);
    }

    /// Stops the service gracefully (see [`stopping`]); returns how it
    /// ended, also recorded in the state. `drain`: run the stop hook first.
    pub(super) fn stop_service(&mut self, child: &mut Child, drain: bool) -> String {
        self.readiness.stopping();
        self.end_service(child, drain)
    }

    /// Stops the service to start it again (a reload). Unlike a stop, this
    /// says nothing of stopping to systemd: a `STOPPING=1` sent during
    /// `ExecReload` is queued, and when the reload ends systemd acts on it
    /// by waiting for the unit to stop, then killing it at its timeout.
    pub(super) fn stop_for_restart(&mut self, child: &mut Child, drain: bool) -> String {
        self.readiness
            .status("reloading: restarting through the health gate");
        self.end_service(child, drain)
    }

    fn end_service(&mut self, child: &mut Child, drain: bool) -> String {
        let pid = child.id() as i32;
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
    pub(super) fn finish(
        &mut self,
        child: &mut Child,
        exit: Option<ExitInfo>,
        description: String,
    ) {
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
        // Nothing waits for an archive: a dump still running is killed.
        self.end_class_data();
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
}
