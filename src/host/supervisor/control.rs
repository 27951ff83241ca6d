//! `service start` and `service stop`: the client side, run by the operator
//! (or the agent), talking to the detached supervisor.

use crate::host::error::HostError;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::protocol::defaults::{self, SUPERVISOR_GRACE};
use crate::protocol::layout::Layout;

use super::logfile;
use super::observe::{self, Service};
use super::release;
use super::state::{self, Phase, Pidfile};
use super::stopping::KILL_WAIT;
use super::{ReloadReport, StartOutcome, StartReport, StopReport, human_duration};
use crate::host::os::detached::{self, Report};
use crate::host::os::process;
use crate::host::os::procfs::{self, Liveness, ProcessId};

fn with_tail(mut err: HostError, layout: &Layout) -> HostError {
    if err.log_tail.is_empty() {
        err.log_tail = logfile::service_tail(layout, logfile::TAIL_LINES);
    }
    err
}

/// Starts the service through a detached supervisor; returns once healthy.
/// A service whose supervisor died is stopped first (it could not be
/// adopted: nothing would reap it, and its output pipe has no reader).
pub fn start(layout: &Layout) -> Result<StartOutcome, HostError> {
    let seen = observe::observe(layout);
    if let Some(sup) = seen
        .supervisor
        .filter(|_| seen.starting() || seen.restarting())
    {
        // Another start, or a restart after a crash, is under way: its
        // outcome is ours.
        return join(layout, sup).map(plain);
    }
    let mut replaced = None;
    match &seen.service {
        Service::Alive { id, .. } if seen.supervisor.is_some() => {
            return Ok(plain(already_running(layout, &seen, *id)));
        }
        Service::Alive { id, .. } => {
            let release_dir = seen.state.as_ref().map(|s| s.release_dir.as_path());
            let how = stop_unsupervised(*id, stop_timeout(layout, release_dir))?;
            replaced = Some((id.pid, how));
            state::remove(&layout.pidfile())
                .map_err(|e| HostError::new(format!("{}: {e}", layout.pidfile().display())))?;
        }
        // A stale pidfile naming another process: the new supervisor must
        // not mistake it for a copy of the service.
        Service::Other { .. } | Service::Garbled(_) => {
            state::remove(&layout.pidfile())
                .map_err(|e| HostError::new(format!("{}: {e}", layout.pidfile().display())))?;
        }
        Service::NoPidfile | Service::Gone(_) => {}
    }
    let report = spawn_supervisor(layout)?;
    let (replaced_pid, replaced_how) = replaced.unzip();
    Ok(StartOutcome {
        report,
        replaced_pid,
        replaced_how,
    })
}

/// A start that replaced nothing.
fn plain(report: StartReport) -> StartOutcome {
    StartOutcome {
        report,
        replaced_pid: None,
        replaced_how: None,
    }
}

/// Spawns the detached supervisor and waits for its one-line report.
fn spawn_supervisor(layout: &Layout) -> Result<StartReport, HostError> {
    // Read here too, for the timeout and so a missing release fails fast.
    let current = release::current(layout).map_err(HostError::new)?;
    let deadline =
        Duration::from_millis(current.manifest.health.start_timeout_ms) + SUPERVISOR_GRACE;

    let (log_path, log) = logfile::open_service_log(layout);
    let log = log.map_err(|e| HostError::new(format!("{}: {e}", log_path.display())))?;
    let mut args = vec![
        "service".to_string(),
        "supervise".into(),
        layout.name().into(),
    ];
    if let Some(port) = layout.instance() {
        args.extend(["--instance".to_string(), port.to_string()]);
    }
    let mut child = detached::spawn(layout.root(), &args, Stdio::piped(), log)
        .map_err(|e| HostError::new(format!("cannot start the supervisor: {e}")))?;

    let report = detached::read_report(&mut child, deadline);
    answer(layout, child, report, deadline)
}

/// What the supervisor's `report` means for `start`; a supervisor that
/// will not report is killed, with what it spawned.
fn answer(
    layout: &Layout,
    mut child: Child,
    report: Report,
    deadline: Duration,
) -> Result<StartReport, HostError> {
    let err = match report {
        Report::Ready(json) => match serde_json::from_str::<StartReport>(&json) {
            Ok(report) => {
                // The supervisor outlives us; in a long-lived caller (the
                // agent) someone must still reap it.
                detached::let_live(child);
                return Ok(report);
            }
            Err(e) => {
                abandon(&mut child, layout);
                HostError::new(format!("bad report from the supervisor: {e}"))
            }
        },
        Report::Failed(rest) => {
            let err =
                serde_json::from_str::<HostError>(&rest).unwrap_or_else(|_| HostError::new(rest));
            // It reports after cleaning up, so it is about to exit.
            detached::wait_or_kill(&mut child, KILL_WAIT);
            err
        }
        Report::Garbled(line) => {
            abandon(&mut child, layout);
            HostError::new(format!("unexpected report from the supervisor: {line}"))
        }
        Report::Eof => died_without_report(layout, &mut child),
        Report::Cancelled => stop_cancelled_start(layout, &mut child),
        Report::Timeout => {
            abandon(&mut child, layout);
            HostError::new(format!(
                "no report from the supervisor within {}; killed it",
                human_duration(deadline)
            ))
        }
    };
    Err(with_tail(err, layout))
}

/// A supervisor that died without a word (crashed, killed): whatever it spawned goes too.
fn died_without_report(layout: &Layout, child: &mut Child) -> HostError {
    let sup = child.id() as i32;
    detached::wait_or_kill(child, KILL_WAIT);
    kill_orphan_service(layout, sup);
    let status = child
        .try_wait()
        .ok()
        .flatten()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    HostError::new(format!("supervisor exited before reporting{status}"))
}

/// The operator cancelled a start: the supervisor stops the half-started
/// service as it would any stop.
fn stop_cancelled_start(layout: &Layout, child: &mut Child) -> HostError {
    let sup = child.id() as i32;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), Signal::SIGTERM);
    detached::wait_or_kill(child, defaults::STOP_TIMEOUT + defaults::SUPERVISOR_GRACE);
    kill_orphan_service(layout, sup);
    HostError::new("cancelled by the operator (Ctrl-C) before it was healthy")
}

/// The report for a service that is already up.
fn already_running(layout: &Layout, seen: &observe::Observation, id: ProcessId) -> StartReport {
    let mine = seen.state_of_service();
    StartReport {
        pid: id.pid,
        release: mine
            .map(|s| s.release.clone())
            .or_else(|| observe::release_from_cwd(layout, id.pid))
            // Said as "release unknown" rather than printed empty.
            .unwrap_or_default(),
        healthy_after_ms: mine.and_then(|s| s.healthy_after_ms).unwrap_or(0),
        already_running: true,
    }
}

/// Waits for a supervisor that is starting (or restarting) the service to
/// get it healthy, or to give up.
fn join(layout: &Layout, sup: ProcessId) -> Result<StartReport, HostError> {
    let limit = release::current(layout)
        .map(|r| {
            Duration::from_millis(
                r.manifest.health.start_timeout_ms + r.manifest.restart.max_delay_ms,
            )
        })
        .unwrap_or(defaults::START_TIMEOUT + defaults::RESTART_MAX_DELAY)
        + SUPERVISOR_GRACE;
    let until = Instant::now() + limit;
    loop {
        let seen = observe::observe(layout);
        if let (Service::Alive { id, .. }, Some(Phase::Running)) =
            (&seen.service, seen.state.as_ref().map(|s| &s.state))
        {
            return Ok(already_running(layout, &seen, *id));
        }
        if seen.supervisor != Some(sup) {
            let why = seen
                .state
                .as_ref()
                .and_then(|s| s.failed_reason.clone().or_else(|| s.last_exit.clone()))
                .unwrap_or_else(|| "the supervisor exited".to_string());
            return Err(with_tail(
                HostError::new(format!(
                    "the start under way (supervisor pid {}) failed: {why}",
                    sup.pid
                )),
                layout,
            ));
        }
        if Instant::now() >= until {
            return Err(with_tail(
                HostError::new(format!(
                    "a start is under way (supervisor pid {}) and not healthy after {}",
                    sup.pid,
                    human_duration(limit)
                )),
                layout,
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gives up on a supervisor that is hung or talks nonsense: kills it, and
/// the service it may have spawned, so a failed start leaves nothing behind.
fn abandon(child: &mut Child, layout: &Layout) {
    let sup = child.id() as i32;
    let _ = child.kill();
    let _ = child.wait();
    kill_orphan_service(layout, sup);
}

/// After killing the supervisor `sup` we spawned: kill the service it had
/// spawned — only a process of its session (it called setsid, the service
/// did not) that leads its own group; the pidfile just says where to look.
fn kill_orphan_service(layout: &Layout, sup: i32) {
    if let Pidfile::Found { pid, start_ticks } = state::read_pidfile(&layout.pidfile())
        && let Ok(Some(stat)) = procfs::stat(pid)
        && stat.session == sup
        && stat.pgrp == pid
        && start_ticks.is_none_or(|t| t == stat.start_ticks)
    {
        let id = ProcessId {
            pid,
            start_ticks: stat.start_ticks,
        };
        let _ = kill_group(id, Signal::SIGKILL);
        wait_gone(id, KILL_WAIT);
    }
    let _ = state::remove(&layout.pidfile());
}

/// Stops the service gracefully; succeeds when nothing was running.
pub fn stop(layout: &Layout) -> Result<StopReport, HostError> {
    let began = Instant::now();
    let seen = observe::observe(layout);
    let release_dir = seen.state.as_ref().map(|s| s.release_dir.as_path());
    let timeout = stop_timeout(layout, release_dir);
    let mut was_running = false;
    let mut how: Option<String> = None;

    let mut ended: Option<state::SupervisorState> = None;
    let mut hung_supervisor = None;
    if let Some(sup) = seen.supervisor {
        was_running = true;
        // The supervisor knows the exit status; let it do the stop.
        process::signal_pid(sup.pid, Signal::SIGTERM).map_err(|e| {
            HostError::new(format!(
                "cannot signal the supervisor (pid {}): {e}",
                sup.pid
            ))
        })?;
        if wait_gone(sup, timeout + SUPERVISOR_GRACE) {
            ended = state::read_state(&layout.supervisor_state());
            how = ended.as_ref().and_then(|s| s.last_exit.clone());
        } else {
            hung_supervisor = Some(sup);
        }
    }

    // No supervisor, or it did not finish: stop the service ourselves (a
    // proven one; a stale pidfile naming another process is left alone).
    let mut unsupervised_pid = None;
    if let Service::Alive { id, supervised, .. } = seen.service
        && procfs::liveness(id) == Liveness::Alive
    {
        was_running = true;
        if !supervised {
            unsupervised_pid = Some(id.pid);
        }
        how = Some(stop_unsupervised(id, timeout)?);
    }
    if let Some(sup) = hung_supervisor
        && procfs::liveness(sup) == Liveness::Alive
    {
        let _ = process::signal_pid(sup.pid, Signal::SIGKILL);
        wait_gone(sup, KILL_WAIT);
    }

    for path in [layout.pidfile(), layout.supervisor_state()] {
        state::remove(&path)
            .map_err(|e| HostError::new(format!("cannot remove {}: {e}", path.display())))?;
    }
    let how = match (was_running, how) {
        (true, Some(how)) => how,
        (true, None) => "stopped".to_string(),
        (false, _) => "not running".to_string(),
    };
    // What the supervisor recorded describes this stop only if it did the stop.
    let ended = ended.filter(|s| s.stopped_on_request && s.state == Phase::Exited);
    Ok(StopReport {
        was_running,
        how,
        took_ms: began.elapsed().as_millis() as u64,
        exit_code: ended.as_ref().and_then(|s| s.last_exit_code),
        signal: ended.as_ref().and_then(|s| s.last_exit_signal.clone()),
        clean: ended.as_ref().and_then(|s| s.clean_stop),
        thread_dump: ended.is_some_and(|s| s.thread_dump),
        unsupervised_pid,
    })
}

/// The stop timeout, plus the hook's when there is one.
fn stop_timeout(layout: &Layout, release_dir: Option<&Path>) -> Duration {
    release::running_or_current(layout, release_dir)
        .map(|r| {
            let stop = &r.manifest.stop;
            let hook = if stop.hook.is_some() {
                stop.hook_timeout_ms
            } else {
                0
            };
            Duration::from_millis(stop.timeout_ms + hook)
        })
        .unwrap_or(defaults::STOP_TIMEOUT)
}

/// Asks the supervisor to reload (SIGHUP) and waits for it to say how it went.
pub fn reload(layout: &Layout) -> Result<ReloadReport, HostError> {
    let began = Instant::now();
    let seen = observe::observe(layout);
    let (Some(sup), Some(state)) = (seen.supervisor, seen.state.as_ref()) else {
        return Err(HostError::new(match seen.service {
            Service::Alive { id, .. } => format!(
                "pid {} runs without a supervisor: nothing can reload it; restart it",
                id.pid
            ),
            _ => "not running: nothing to reload".to_string(),
        }));
    };
    if state.state != Phase::Running {
        return Err(HostError::new(format!(
            "cannot reload now: the supervisor (pid {}) is {}",
            sup.pid,
            state.state.as_str()
        )));
    }
    let before = state.reloads;
    let limit = release::current(layout)
        .map(|r| Duration::from_millis(r.manifest.health.start_timeout_ms))
        .unwrap_or(defaults::START_TIMEOUT)
        + stop_timeout(layout, Some(&state.release_dir))
        + SUPERVISOR_GRACE;
    process::signal_pid(sup.pid, Signal::SIGHUP).map_err(|e| {
        HostError::new(format!(
            "cannot signal the supervisor (pid {}): {e}",
            sup.pid
        ))
    })?;
    let until = Instant::now() + limit;
    loop {
        let now = state::read_state(&layout.supervisor_state());
        if let Some(s) = now.as_ref().filter(|s| s.reloads > before) {
            let how = s.last_reload.clone().unwrap_or_default();
            return if s.last_reload_ok == Some(true) {
                Ok(ReloadReport {
                    how,
                    took_ms: began.elapsed().as_millis() as u64,
                })
            } else {
                Err(with_tail(
                    HostError::new(format!("reload failed: {how}")),
                    layout,
                ))
            };
        }
        if procfs::liveness(sup) != Liveness::Alive {
            return Err(with_tail(
                HostError::new(format!(
                    "the supervisor (pid {}) exited during the reload",
                    sup.pid
                )),
                layout,
            ));
        }
        if Instant::now() >= until {
            return Err(with_tail(
                HostError::new(format!(
                    "no reload outcome within {}",
                    human_duration(limit)
                )),
                layout,
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, wait, SIGKILL for a service (proven by [`observe`]) that has no
/// supervisor to do it. Not our child: we see that it ended, not how.
fn stop_unsupervised(id: ProcessId, timeout: Duration) -> Result<String, HostError> {
    let signal = |sig| kill_group(id, sig);
    signal(Signal::SIGTERM)
        .map_err(|e| HostError::new(format!("cannot signal pid {}: {e}", id.pid)))?;
    if wait_group_gone(id, timeout) {
        return Ok("terminated after SIGTERM".to_string());
    }
    signal(Signal::SIGKILL)
        .map_err(|e| HostError::new(format!("cannot signal pid {}: {e}", id.pid)))?;
    if wait_group_gone(id, KILL_WAIT) {
        Ok(format!(
            "killed by SIGKILL after the {} stop timeout",
            human_duration(timeout)
        ))
    } else {
        Err(HostError::new(format!(
            "pid {} is still alive after SIGKILL",
            id.pid
        )))
    }
}

/// Signals the process group led by `id`, or just `id` when it leads none;
/// nothing when `id` is no longer that process (its start time changed).
fn kill_group(id: ProcessId, sig: Signal) -> std::io::Result<()> {
    let stat = match procfs::stat(id.pid)? {
        Some(s) if s.start_ticks == id.start_ticks => s,
        _ => return Ok(()),
    };
    if stat.pgrp == id.pid {
        process::signal_group(id.pid, sig).map(drop)
    } else {
        process::signal_pid(id.pid, sig).map(drop)
    }
}

/// Polls until `id` is gone; true if it went within `timeout`.
fn wait_gone(id: ProcessId, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if procfs::liveness(id) != Liveness::Alive {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `id` and the rest of its group are gone.
fn wait_group_gone(id: ProcessId, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    if !wait_gone(id, timeout) {
        return false;
    }
    loop {
        if procfs::live_group_members(id.pid).is_empty() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
