//! Restarting the service into the release `current` points to, by whoever
//! owns it on this host: systemd when the service's unit is installed on a
//! host running systemd (so the unit keeps owning the service), else the
//! supervisor directly.

use crate::host::error::HostError;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::supervisor::{self, StartReport, StopReport};
use crate::host::{cancel, init};
use crate::protocol::layout::Layout;
use crate::protocol::status::ServiceStatus;

/// How often a `systemctl start` in progress is checked for a cancel.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// How the restart went: the stop (when known) and the healthy start.
pub struct Restarted {
    /// How the previous process ended, when it was stopped.
    pub stop: Option<StopReport>,
    /// The new process, healthy.
    pub start: StartReport,
}

/// Whether systemd runs this service here.
pub(crate) fn systemd_owned(layout: &Layout) -> bool {
    layout.root() == Path::new("/")
        && Path::new("/run/systemd/system").is_dir()
        && init::unit_path(layout).is_file()
}

/// Stops the running process and starts `current` through the health gate.
/// The error names the step (`stop`, `unit` or `health`).
pub fn restart(layout: &Layout) -> Result<Restarted, HostError> {
    if systemd_owned(layout) {
        return restart_with_systemd(layout);
    }
    let stop = supervisor::stop(layout).map_err(|e| e.in_step("stop"))?;
    let start = supervisor::start(layout).map_err(|e| e.in_step("health"))?;
    Ok(Restarted {
        stop: Some(stop),
        start,
    })
}

/// `systemctl stop`, the unit rewritten when the new release's timeouts or
/// restart limits differ from the old one's (so the old process stopped
/// under its own limits), then `systemctl start`, which returns once the
/// unit's `service run` sent READY=1 — only after the health gate passed.
fn restart_with_systemd(layout: &Layout) -> Result<Restarted, HostError> {
    let unit = format!("{}.service", layout.name());
    let failure = |step: &str, message: String| {
        HostError::at(step, message).with_log_tail(supervisor::logfile::service_tail(
            layout,
            supervisor::logfile::TAIL_LINES,
        ))
    };

    let before = supervisor::status(layout);
    let stopping = Instant::now();
    systemctl(&["stop", "--", &unit]).map_err(|e| failure("stop", e))?;
    let took = stopping.elapsed();
    let after = supervisor::status(layout);
    let stop = if after.supervisor_pid.is_some() {
        // A supervisor outside the unit (`service start` by hand, or a
        // deploy before the unit was installed): stopped the same way.
        Some(supervisor::stop(layout).map_err(|e| e.in_step("stop"))?)
    } else {
        Some(stop_report(&before, &after, took))
    };

    let shipjar = init::this_binary().map_err(|e| failure("unit", e))?;
    if init::refresh_unit(layout, &shipjar).map_err(|e| failure("unit", e))? {
        systemctl(&["daemon-reload"]).map_err(|e| failure("unit", e))?;
    }
    // A deploy is a deliberate start: a unit left failed by a release that
    // did not start, or at its start limit, starts again.
    let _ = systemctl(&["reset-failed", "--", &unit]);

    let starting = Instant::now();
    start_unit(&unit).map_err(|e| failure("health", e))?;
    let status = supervisor::status(layout);
    match (status.pid, status.release) {
        (Some(pid), Some(release)) => Ok(Restarted {
            stop,
            start: StartReport {
                pid,
                release,
                // The supervisor's own spawn-to-healthy time, not the
                // whole `systemctl start`.
                healthy_after_ms: supervisor::healthy_after_ms(layout)
                    .unwrap_or_else(|| starting.elapsed().as_millis() as u64),
                already_running: false,
            },
        }),
        _ => Err(failure(
            "health",
            format!(
                "systemctl start {unit} succeeded, but the service is not running: {}",
                status.detail
            ),
        )),
    }
}

/// What `systemctl stop` did, from the supervisor's record of the last run.
fn stop_report(before: &ServiceStatus, after: &ServiceStatus, took: Duration) -> StopReport {
    let was_running = before.supervisor_pid.is_some();
    let signal = after.last_exit_signal.clone();
    let clean = match (after.last_exit_code, signal.as_deref()) {
        (Some(code), _) => Some(code == 0 || code == 143),
        (None, Some(sig)) => Some(sig == "SIGTERM"),
        (None, None) => None,
    };
    StopReport {
        was_running,
        how: match (&after.last_exit, was_running) {
            (_, false) => "not running".to_string(),
            (Some(how), true) => how.clone(),
            (None, true) => "stopped by systemd".to_string(),
        },
        took_ms: took.as_millis() as u64,
        exit_code: after.last_exit_code,
        signal,
        clean: clean.filter(|_| was_running),
        thread_dump: false,
        unsupervised_pid: None,
    }
}

/// `systemctl start UNIT`, stopped when the operator cancels: a stop job
/// replaces the start job, the supervisor stops the service it is starting.
pub(crate) fn start_unit(unit: &str) -> Result<(), String> {
    let mut child = Command::new("systemctl")
        .args(["start", "--", unit])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    let mut cancelled = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for systemctl start {unit}: {e}")),
        }
        if !cancelled && cancel::requested() {
            cancelled = true;
            let _ = systemctl(&["stop", "--no-block", "--", unit]);
        }
        std::thread::sleep(CANCEL_POLL);
    }
    let (ok, stderr) = finish(child)?;
    if cancelled {
        return Err("cancelled by the operator (Ctrl-C) before it was healthy".to_string());
    }
    if ok {
        Ok(())
    } else {
        Err(format!("systemctl start {unit} failed: {stderr}"))
    }
}

/// Whether the finished child succeeded, and what it said on stderr.
fn finish(child: Child) -> Result<(bool, String), String> {
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for systemctl: {e}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// Runs `systemctl ARGS`; its stderr becomes the error.
pub(crate) fn systemctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
