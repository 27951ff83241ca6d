//! Restarting the service into the release `current` points to, by whoever
//! owns it on this host: systemd when the service's unit is installed on a
//! host running systemd (so the unit keeps owning the service), else the
//! supervisor directly.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::host::init;
use crate::host::supervisor::{self, StartReport, StopReport, SupervisorError};
use crate::protocol::layout::Layout;

/// How the restart went: the stop (when known) and the healthy start.
pub struct Restarted {
    /// How the previous process ended, when the supervisor stopped it.
    pub stop: Option<StopReport>,
    /// The new process, healthy.
    pub start: StartReport,
}

/// Whether systemd runs this service here.
fn systemd_owned(layout: &Layout) -> bool {
    layout.root() == Path::new("/")
        && Path::new("/run/systemd/system").is_dir()
        && init::unit_path(layout).is_file()
}

/// Stops the running process and starts `current` through the health gate.
/// The error names the step (`stop` or `health`).
pub fn restart(layout: &Layout) -> Result<Restarted, (&'static str, SupervisorError)> {
    if systemd_owned(layout) {
        return restart_with_systemd(layout).map(|start| Restarted { stop: None, start });
    }
    let stop = supervisor::stop(layout).map_err(|e| ("stop", e))?;
    let start = supervisor::start(layout).map_err(|e| ("health", e))?;
    Ok(Restarted {
        stop: Some(stop),
        start,
    })
}

/// `systemctl restart` returns once the unit's `service run` sent READY=1,
/// which it does only after the health gate passed.
fn restart_with_systemd(layout: &Layout) -> Result<StartReport, (&'static str, SupervisorError)> {
    let unit = format!("{}.service", layout.name());
    let started = Instant::now();
    let failure = |message: String| {
        (
            "health",
            SupervisorError {
                message,
                log_tail: supervisor::logfile::tail(
                    &supervisor::logfile::service_log(layout),
                    supervisor::logfile::TAIL_LINES,
                ),
            },
        )
    };
    let out = Command::new("systemctl")
        .args(["restart", "--", &unit])
        .output()
        .map_err(|e| failure(format!("cannot run systemctl: {e}")))?;
    if !out.status.success() {
        return Err(failure(format!(
            "systemctl restart {unit} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let status = supervisor::status(layout);
    match (status.pid, status.release) {
        (Some(pid), Some(release)) => Ok(StartReport {
            pid,
            release,
            healthy_after_ms: started.elapsed().as_millis() as u64,
            already_running: false,
        }),
        _ => Err(failure(format!(
            "systemctl restart {unit} succeeded, but the service is not running: {}",
            status.detail
        ))),
    }
}
