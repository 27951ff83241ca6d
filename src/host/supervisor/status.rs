//! `service status`: LSB state with proven identity, plus uptime, release
//! and a health probe made now (not while the start's own gate is running:
//! its verdict is the supervisor's to give).

use std::time::{Duration, Instant, SystemTime};

use crate::protocol::layout::Layout;

use super::health;
use super::observe::{self, LostSupervisor, Observation, Service};
use super::release;
use super::state::{ClassDataUse, Phase, SupervisorState};
use super::{ServiceState, ServiceStatus, human_duration};
use crate::host::os::procfs;

/// Longest health probe `status` makes.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest wait for a supervisor that is recording its service's exit.
const RECORDING_GRACE: Duration = Duration::from_millis(500);

/// LSB code of a service that runs (0 only for `running`).
const LSB_RUNNING: i32 = 0;
/// LSB "program is dead and the pidfile exists": dead, failed.
const LSB_DEAD: i32 = 1;
/// LSB "program is not running": stopped, and starting or restarting (not
/// serving yet; `systemctl status` says 3 for an activating unit too).
const LSB_NOT_RUNNING: i32 = 3;

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
    let died = supervisor_died(&seen).cloned();
    let mut status = match &seen.service {
        Service::Alive {
            id,
            supervised: true,
            ..
        } => running(layout, &seen, *id),
        Service::Alive {
            id,
            supervised: false,
            release,
        } => unsupervised(layout, &seen, *id, release.clone()),
        _ if died.is_some() => supervisor_gone(&seen, died.as_ref()),
        _ if seen.supervisor.is_some() && phase(&seen) == Some(&Phase::BackingOff) => {
            restarting(&seen)
        }
        Service::NoPidfile | Service::Gone(_) if phase(&seen) == Some(&Phase::Failed) => {
            failed(&seen)
        }
        // Between runs: the new one is not spawned yet (the pidfile may
        // still name the last one).
        Service::NoPidfile | Service::Gone(_) if seen.starting() => spawning(&seen),
        Service::NoPidfile => not_running(&seen),
        Service::Garbled(why) => with_nothing_known(
            ServiceState::Dead,
            LSB_DEAD,
            format!("not running: unreadable pidfile: {why}"),
        ),
        Service::Gone(pid) => {
            let how = seen
                .state
                .as_ref()
                .filter(|s| s.service.is_some_and(|id| id.pid == *pid))
                .and_then(|s| s.last_exit.clone())
                .unwrap_or_else(|| "no longer exists".to_string());
            with_nothing_known(
                ServiceState::Dead,
                LSB_DEAD,
                format!("not running: stale pidfile: pid {pid} {how}"),
            )
        }
        Service::Other { pid, why } => with_nothing_known(
            ServiceState::Dead,
            LSB_DEAD,
            format!("not running: stale pidfile: pid {pid} is another process ({why})"),
        ),
    };
    if let Some(s) = &seen.state {
        status.last_exit = s.last_exit.clone();
        status.last_exit_code = s.last_exit_code;
        status.last_exit_signal = s.last_exit_signal.clone();
        status.restarts = s.restarts;
        status.auto_reverted = s.auto_reverted.as_ref().map(|a| a.line());
    }
    status
}

/// Between runs: the new one is not spawned yet (the pidfile may still
/// name the last one).
fn spawning(seen: &Observation) -> ServiceStatus {
    let sup = seen.supervisor.map_or(0, |s| s.pid);
    let after = seen
        .state
        .as_ref()
        .filter(|s| s.restarts > 0)
        .map(|s| format!(" (restart {} after: {})", s.restarts, how_it_ended(s)))
        .unwrap_or_default();
    let mut status = with_nothing_known(
        ServiceState::Starting,
        LSB_NOT_RUNNING,
        format!("starting: supervisor pid {sup} is spawning the service{after}"),
    );
    status.supervisor_pid = seen.supervisor.map(|s| s.pid);
    status.healthy = Some(false);
    status
}

/// No pidfile: stopped, saying so when the last start failed.
fn not_running(seen: &Observation) -> ServiceStatus {
    let detail = match &seen.state {
        Some(s) if s.state == Phase::Exited && !s.stopped_on_request => {
            let why = s.last_exit.as_deref().unwrap_or("unknown");
            format!("not running (last start failed: {why})")
        }
        _ => "not running".to_string(),
    };
    with_nothing_known(ServiceState::Stopped, LSB_NOT_RUNNING, detail)
}

/// The state file's phase.
fn phase(seen: &Observation) -> Option<&Phase> {
    seen.state.as_ref().map(|s| &s.state)
}

/// The supervisor the state file names is gone (or not ours) while its
/// phase says it should be there: it died without finishing.
fn supervisor_died(seen: &Observation) -> Option<&LostSupervisor> {
    let lost = seen.lost_supervisor.as_ref()?;
    let finished = matches!(phase(seen), Some(Phase::Exited | Phase::Failed));
    (!finished).then_some(lost)
}

/// "supervisor pid N is gone", or why the pid is not our supervisor.
fn lost_words(lost: &LostSupervisor) -> String {
    match &lost.not_ours {
        None => format!("supervisor pid {} is gone", lost.pid),
        Some(why) => format!(
            "supervisor pid {} is not this service's supervisor: {why}",
            lost.pid
        ),
    }
}

/// The supervisor died and took nothing with it, or its service is gone too.
fn supervisor_gone(seen: &Observation, lost: Option<&LostSupervisor>) -> ServiceStatus {
    let service = match &seen.service {
        Service::Gone(pid) => format!("; the service pid {pid} is gone too"),
        Service::Other { pid, why } => {
            format!("; the service's pid {pid} is another process now ({why})")
        }
        _ => String::new(),
    };
    let mut status = with_nothing_known(
        ServiceState::Dead,
        LSB_DEAD,
        format!(
            "dead: {}{service}",
            lost.map_or_else(|| "no supervisor".to_string(), lost_words)
        ),
    );
    status.release = seen.state.as_ref().map(|s| s.release.clone());
    status
}

/// The service runs, proven, but no supervisor owns it: nothing restarts it,
/// nothing captures its output. LSB 1, whatever it answers.
fn unsupervised(
    layout: &Layout,
    seen: &Observation,
    id: procfs::ProcessId,
    release: Option<String>,
) -> ServiceStatus {
    let mine = seen.state_of_service();
    let started = started_at(mine, id);
    // Since the supervisor's last sign of life; a service started by hand
    // was unsupervised from its start.
    let since = match (&seen.lost_supervisor, mine) {
        (Some(_), Some(_)) => observe::last_sign_of_life(layout)
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        _ => None,
    }
    .or_else(|| started.as_ref().map(|(t, _)| t.clone()));
    let who = match (&seen.lost_supervisor, seen.supervisor) {
        (Some(lost), _) => lost_words(lost),
        (None, Some(sup)) => format!("supervisor pid {} does not own it", sup.pid),
        (None, None) => "no supervisor".to_string(),
    };
    let since_words = since
        .as_ref()
        .map(|t| format!(" since {t}"))
        .unwrap_or_default();
    let release = mine.map(|s| s.release.clone()).or(release);
    let manifest = release::running_or_current(layout, mine.map(|s| s.release_dir.as_path()));
    let healthy = manifest
        .map(|r| health::probe_once(&r.manifest.health.check, STATUS_PROBE_TIMEOUT).is_ok());
    let mut status = with_nothing_known(
        ServiceState::Dead,
        LSB_DEAD,
        format!(
            "dead: {who}; the service pid {} runs unsupervised{since_words}",
            id.pid
        ),
    );
    status.pid = Some(id.pid);
    status.release = release;
    status.started_at = started.as_ref().map(|(t, _)| t.clone());
    status.uptime_s = started.map(|(_, up)| up.as_secs());
    status.healthy = healthy;
    status.unsupervised_since = since;
    status
}

/// Waiting out the back-off before the next restart.
fn restarting(seen: &Observation) -> ServiceStatus {
    let state = seen.state.as_ref();
    let last = state.map_or_else(|| "the service ended".to_string(), how_it_ended);
    let restart = state.map_or(1, |s| s.restarts + 1);
    let when = state
        .and_then(|s| s.next_restart_at.clone())
        .map(|t| format!(" at {t}"))
        .unwrap_or_default();
    let mut status = with_nothing_known(
        ServiceState::Restarting,
        LSB_NOT_RUNNING,
        format!("restarting: {last}; restart {restart} due{when}"),
    );
    status.supervisor_pid = seen.supervisor.map(|s| s.pid);
    status.release = state.map(|s| s.release.clone());
    status.next_restart_at = state.and_then(|s| s.next_restart_at.clone());
    status
}

/// "the service was killed by SIGKILL", "the service exited with code 3",
/// or the supervisor's words for a start that failed.
fn how_it_ended(s: &SupervisorState) -> String {
    match (&s.last_exit_signal, s.last_exit_code, &s.last_exit) {
        (Some(sig), _, _) => format!("the service was killed by {sig}"),
        (None, Some(code), _) => format!("the service exited with code {code}"),
        (None, None, Some(how)) => format!("the last start failed: {how}"),
        (None, None, None) => "the service ended".to_string(),
    }
}

/// The supervisor gave up.
fn failed(seen: &Observation) -> ServiceStatus {
    let reason = seen
        .state
        .as_ref()
        .and_then(|s| s.failed_reason.clone())
        .unwrap_or_else(|| "too many failures".to_string());
    let mut status =
        with_nothing_known(ServiceState::Failed, LSB_DEAD, format!("failed: {reason}"));
    status.release = seen.state.as_ref().map(|s| s.release.clone());
    status.reason = Some(reason);
    status
}

/// A status with only its state, code and detail filled in.
fn with_nothing_known(state: ServiceState, lsb_code: i32, detail: String) -> ServiceStatus {
    ServiceStatus::bare(state, lsb_code, detail)
}

/// When the service started and how long ago: to the millisecond from the
/// supervisor's record of the spawn, else (no record) from `/proc`, which
/// knows only whole seconds of boot time.
fn started_at(mine: Option<&SupervisorState>, id: procfs::ProcessId) -> Option<(String, Duration)> {
    if let Some(at) = mine.and_then(|s| s.started_at.as_deref())
        && let Ok(t) = humantime::parse_rfc3339(at)
    {
        let up = SystemTime::now().duration_since(t).unwrap_or_default();
        return Some((at.to_string(), up));
    }
    let offset = procfs::start_offset(id);
    let boot = procfs::boot_time().ok()?;
    let up = procfs::uptime().ok()?.saturating_sub(offset);
    Some((
        humantime::format_rfc3339_seconds(boot + offset).to_string(),
        up,
    ))
}

/// Supervised: running once the gate passed, else starting.
fn running(layout: &Layout, seen: &Observation, id: procfs::ProcessId) -> ServiceStatus {
    let mine = seen.state_of_service();
    let supervisor_pid = seen.supervisor.map(|s| s.pid);
    let release = mine
        .map(|s| s.release.clone())
        .or_else(|| observe::release_from_cwd(layout, id.pid));
    let started = started_at(mine, id);
    let uptime = started.as_ref().map(|(_, up)| *up);
    let starting = mine.is_some_and(|s| s.state == Phase::Starting);

    let mut parts = vec![format!("pid {}", id.pid)];
    if let Some(r) = &release {
        parts.push(format!("release {r}"));
    }
    let healthy = if starting {
        // The supervisor's gate is deciding; a probe of ours could pass a
        // moment before its verdict, or answer for another listener.
        if let Some(up) = uptime {
            parts.push(format!(
                "in the health gate for {}",
                human_duration(Duration::from_secs(up.as_secs()))
            ));
        }
        if let Some(s) = mine.filter(|s| s.restarts > 0) {
            parts.push(format!("restart {} after: {}", s.restarts, how_it_ended(s)));
        }
        Some(false)
    } else {
        if let Some(up) = uptime {
            parts.push(format!(
                "up {}",
                human_duration(Duration::from_secs(up.as_secs()))
            ));
        }
        let manifest = release::running_or_current(layout, mine.map(|s| s.release_dir.as_path()));
        let healthy = manifest
            .map(|r| health::probe_once(&r.manifest.health.check, STATUS_PROBE_TIMEOUT).is_ok());
        parts.push(
            match healthy {
                Some(true) => "healthy",
                Some(false) => "NOT healthy",
                None => "health unknown (no release manifest)",
            }
            .to_string(),
        );
        if let Some(n) = mine.map(|s| s.restarts).filter(|n| *n > 0) {
            parts.push(format!(
                "restarted {n} time{} after crashes",
                if n == 1 { "" } else { "s" }
            ));
        }
        match mine.and_then(|s| s.class_data.as_ref()) {
            Some(ClassDataUse::Used) => parts.push("class-data archive in use".to_string()),
            Some(ClassDataUse::Recording) => parts
                .push("no class-data archive yet: one is made from this run's classes".to_string()),
            Some(ClassDataUse::Refused) => {
                parts.push("class-data archive refused by the JVM".to_string())
            }
            _ => {}
        }
        healthy
    };
    let (state, lsb, word) = if starting {
        (ServiceState::Starting, LSB_NOT_RUNNING, "starting")
    } else {
        (ServiceState::Running, LSB_RUNNING, "running")
    };
    ServiceStatus {
        pid: Some(id.pid),
        supervisor_pid,
        release,
        started_at: started.map(|(t, _)| t),
        uptime_s: uptime.map(|u| u.as_secs()),
        healthy,
        unhealthy_since: mine.and_then(|s| s.unhealthy_since.clone()),
        last_probe: mine.and_then(|s| s.last_probe.clone()),
        ..with_nothing_known(state, lsb, format!("{word}: {}", parts.join(", ")))
    }
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
                // Exited: about to back off, or to exit itself.
                && matches!(
                    s.state,
                    Phase::Starting | Phase::Running | Phase::Stopping | Phase::Exited
                )
        })
}
