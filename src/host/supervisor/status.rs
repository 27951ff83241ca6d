//! `service status`: LSB state with verified identity, plus uptime, release
//! and a health probe made now.

use std::time::{Duration, Instant, SystemTime};

use crate::protocol::layout::Layout;

use super::health;
use super::observe::{self, Observation, Service};
use super::procfs;
use super::release;
use super::state::Phase;
use super::{ServiceState, ServiceStatus, human_duration};

/// Longest health probe `status` makes.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest wait for a supervisor that is recording its service's exit.
const RECORDING_GRACE: Duration = Duration::from_millis(500);

/// Builds the status report.
pub fn status(layout: &Layout) -> ServiceStatus {
    let mut seen = observe::observe(layout);
    // The service just ended and its supervisor is still recording how:
    // a moment's wait gives the full story instead of "no longer exists".
    let until = Instant::now() + RECORDING_GRACE;
    while unrecorded_exit(&seen) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        seen = observe::observe(layout);
    }
    let mut status = match &seen.service {
        Service::Alive { id, verified } => running(layout, &seen, *id, *verified),
        _ if seen.supervisor.is_some() && phase(&seen) == Some(&Phase::BackingOff) => {
            restarting(&seen)
        }
        Service::NoPidfile | Service::Gone(_) if phase(&seen) == Some(&Phase::Failed) => {
            failed(&seen)
        }
        Service::NoPidfile => {
            let detail = if let (Some(sup), true) = (seen.supervisor, seen.starting()) {
                format!("not running (starting: supervisor pid {})", sup.pid)
            } else {
                match &seen.state {
                    Some(s) if s.state == Phase::Exited && !s.stopped_on_request => {
                        let why = s.last_exit.as_deref().unwrap_or("unknown");
                        format!("not running (last start failed: {why})")
                    }
                    _ => "not running".to_string(),
                }
            };
            not_running(ServiceState::Stopped, detail)
        }
        Service::Garbled(why) => not_running(
            ServiceState::Dead,
            format!("not running (unreadable pidfile: {why})"),
        ),
        Service::Gone(pid) => {
            let how = seen
                .state
                .as_ref()
                .filter(|s| s.service.is_some_and(|id| id.pid == *pid))
                .and_then(|s| s.last_exit.clone())
                .unwrap_or_else(|| "no longer exists".to_string());
            not_running(
                ServiceState::Dead,
                format!("not running (stale pidfile: pid {pid} {how})"),
            )
        }
        Service::Reused(pid) => not_running(
            ServiceState::Dead,
            format!("not running (stale pidfile: pid {pid} now belongs to another process)"),
        ),
    };
    if let Some(s) = &seen.state {
        status.last_exit = s.last_exit.clone();
        status.last_exit_code = s.last_exit_code;
        status.last_exit_signal = s.last_exit_signal.clone();
        status.restarts = s.restarts;
    }
    status
}

/// The state file's phase.
fn phase(seen: &Observation) -> Option<&Phase> {
    seen.state.as_ref().map(|s| &s.state)
}

/// True while the pidfile's process is gone but its live supervisor has
/// not yet written down how it ended.
fn unrecorded_exit(seen: &Observation) -> bool {
    let Service::Gone(pid) = seen.service else {
        return false;
    };
    seen.supervisor.is_some()
        && seen.state.as_ref().is_some_and(|s| {
            s.service.is_some_and(|id| id.pid == pid)
                && matches!(s.state, Phase::Starting | Phase::Running | Phase::Stopping)
        })
}

/// Waiting out the back-off before the next restart.
fn restarting(seen: &Observation) -> ServiceStatus {
    let state = seen.state.as_ref();
    let last = state
        .and_then(|s| s.last_exit.as_deref())
        .unwrap_or("ended");
    let restart = state.map_or(1, |s| s.restarts + 1);
    let when = state
        .and_then(|s| s.next_restart_at.clone())
        .map(|t| format!(" at {t}"))
        .unwrap_or_default();
    let mut status = not_running(
        ServiceState::Restarting,
        format!("restarting: the service {last}; restart {restart} due{when}"),
    );
    // Restarting is not running: monitoring must see it as down (LSB 3).
    status.lsb_code = 3;
    status.supervisor_pid = seen.supervisor.map(|s| s.pid);
    status.release = state.map(|s| s.release.clone());
    status.next_restart_at = state.and_then(|s| s.next_restart_at.clone());
    status
}

/// The supervisor gave up.
fn failed(seen: &Observation) -> ServiceStatus {
    let reason = seen
        .state
        .as_ref()
        .and_then(|s| s.failed_reason.clone())
        .unwrap_or_else(|| "too many failures".to_string());
    let mut status = not_running(ServiceState::Failed, format!("failed: {reason}"));
    status.release = seen.state.as_ref().map(|s| s.release.clone());
    status.reason = Some(reason);
    status
}

fn not_running(state: ServiceState, detail: String) -> ServiceStatus {
    // LSB: 1 "dead and the pidfile exists" (a crash, or given up), 3 not running.
    let lsb_code = if matches!(state, ServiceState::Dead | ServiceState::Failed) {
        1
    } else {
        3
    };
    with_nothing_known(state, lsb_code, detail)
}

/// A status with only its state, code and detail filled in.
fn with_nothing_known(state: ServiceState, lsb_code: i32, detail: String) -> ServiceStatus {
    ServiceStatus {
        state,
        lsb_code,
        pid: None,
        supervisor_pid: None,
        release: None,
        started_at: None,
        uptime_s: None,
        healthy: None,
        detail,
        reason: None,
        last_exit: None,
        last_exit_code: None,
        last_exit_signal: None,
        restarts: 0,
        next_restart_at: None,
        unhealthy_since: None,
        last_probe: None,
    }
}

fn running(
    layout: &Layout,
    seen: &Observation,
    id: procfs::ProcessId,
    verified: bool,
) -> ServiceStatus {
    let mine = seen.state_of_service();
    let supervisor_pid = seen.supervisor.filter(|_| mine.is_some()).map(|s| s.pid);
    let release = mine
        .map(|s| s.release.clone())
        .or_else(|| observe::release_from_cwd(layout, id.pid));
    let offset = procfs::start_offset(id);
    let started_at = procfs::boot_time()
        .ok()
        .map(|boot| boot + offset)
        .map(|t: SystemTime| humantime::format_rfc3339_seconds(t).to_string());
    let uptime = procfs::uptime().ok().map(|up| up.saturating_sub(offset));

    let manifest = release::running_or_current(layout, mine.map(|s| s.release_dir.as_path()));
    let healthy = manifest
        .map(|r| health::probe_once(&r.manifest.health.check, STATUS_PROBE_TIMEOUT).is_ok());

    let starting = mine.is_some_and(|s| s.state == Phase::Starting);
    let mut parts = vec![format!("pid {}", id.pid)];
    if let Some(r) = &release {
        parts.push(format!("release {r}"));
    }
    if let Some(up) = uptime {
        parts.push(format!(
            "up {}",
            human_duration(Duration::from_secs(up.as_secs()))
        ));
    }
    parts.push(
        match healthy {
            Some(true) => "healthy",
            Some(false) if starting => "not healthy yet",
            Some(false) => "NOT healthy",
            None => "health unknown (no release manifest)",
        }
        .to_string(),
    );
    if supervisor_pid.is_none() {
        parts.push("no supervisor".to_string());
    }
    if !verified {
        parts.push("identity unverified (pidfile has no start time)".to_string());
    }
    if let Some(n) = mine.map(|s| s.restarts).filter(|n| *n > 0) {
        parts.push(format!(
            "restarted {n} time{} after crashes",
            if n == 1 { "" } else { "s" }
        ));
    }
    let word = if starting { "starting" } else { "running" };
    ServiceStatus {
        pid: Some(id.pid),
        supervisor_pid,
        release,
        started_at,
        uptime_s: uptime.map(|u| u.as_secs()),
        healthy,
        unhealthy_since: mine.and_then(|s| s.unhealthy_since.clone()),
        last_probe: mine.and_then(|s| s.last_probe.clone()),
        ..with_nothing_known(
            ServiceState::Running,
            0,
            format!("{word}: {}", parts.join(", ")),
        )
    }
}
