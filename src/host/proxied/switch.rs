//! Activation behind the proxy: the new release starts as the idle
//! instance, passes the health and version gate, then the proxy switches to
//! it, `current` follows, and the old instance drains and stops. Until the
//! switch, the old instance takes all traffic; a failed gate stops the new
//! instance and changes nothing else; a failure past the switch goes back
//! to what ran (the old instance, or the service without the proxy).

use crate::host::error::HostError;
use std::time::{Duration, Instant};

use super::{instances, runner, whole};
use crate::host::steps::{cancelled, reported_version_at, run_hook, settle};
use crate::host::supervisor::StartReport;
use crate::host::{proxy, restart, store, supervisor};
use crate::protocol::layout::Layout;
use crate::protocol::manifest::{ProxySpec, ReleaseManifest};
use crate::protocol::{Activation, HookPoint, NowRunning};

/// Starts `manifest` beside the running instance and moves traffic to it.
pub(crate) fn activate(
    layout: &Layout,
    manifest: &ReleaseManifest,
    spec: &ProxySpec,
    deploying: bool,
    emit: &dyn Fn(&str, &str),
    outcome: &mut Activation,
) -> Result<(), HostError> {
    // The instance taking traffic, if it really runs.
    let old = proxy::active(layout)
        .filter(|p| spec.ports.contains(p))
        .filter(|p| {
            supervisor::status(&layout.with_instance(Some(*p)))
                .pid
                .is_some()
        });
    let port = instances::idle_port(spec, old);
    let new = layout.with_instance(Some(port));
    let (started, healthy_at) = start_idle(layout, manifest, port, emit, outcome)?;
    if let Err(failure) = gate(manifest, port, emit) {
        let _ = supervisor::stop(&new);
        return Err(failure);
    }
    outcome.reported_version = manifest
        .version_check
        .as_ref()
        .map(|_| manifest.version.clone());

    // What `current` named before: where a failure past this point goes back to.
    let before = Before {
        old,
        new_port: port,
        previous: store::current(layout).filter(|id| *id != manifest.id),
        plain_ran: leave_plain(layout, &new, emit)?,
    };
    let fail = |failure: HostError, outcome: &mut Activation| -> HostError {
        outcome.now_running = Some(go_back(layout, &before, emit));
        failure
    };
    let switched = match switch_traffic(layout, manifest, spec, port, emit) {
        Ok(at) => at,
        Err(failure) => return Err(fail(failure, outcome)),
    };
    // It settles taking the traffic, with the old instance still there to go back to.
    if let Err(failure) = settle::settle(&new, &manifest.health, started.pid, healthy_at, emit) {
        return Err(fail(failure, outcome));
    }
    if let Some(hook) = manifest.hooks.after_switch.as_ref().filter(|_| deploying)
        && let Err(failure) = run_hook(layout, &manifest.id, HookPoint::AfterSwitch, hook, emit)
    {
        return Err(fail(failure, outcome));
    }
    // Past here the release is live: traffic and `current` moved, and it
    // settled. What goes wrong with the old instance is said as such
    // ("switched, then …"), with what still runs; it fails nothing.
    if let Some(old) = old {
        retire(layout, spec, old, switched, emit, outcome);
    }
    // The whole under a runner (the unit's, or a detached one), which
    // adopts what runs: from now on a reboot or a dead proxy keeper needs
    // no deploy. Traffic flows whether or not it came up.
    if !runner::is_held(layout) {
        match whole::ensure_supervised(layout, spec) {
            Ok(()) => emit(
                "supervise",
                "the proxy and the instance are supervised by their runner",
            ),
            Err(e) => emit("supervise", &format!("no runner: {}", e.message)),
        }
    }
    Ok(())
}

/// The new release as the instance on the idle `port`, through its health
/// gate (what an interrupted deploy left there goes first); under a running
/// unit it joins the unit. Returns its start and when it became healthy.
fn start_idle(
    layout: &Layout,
    manifest: &ReleaseManifest,
    port: u16,
    emit: &dyn Fn(&str, &str),
    outcome: &mut Activation,
) -> Result<(StartReport, Instant), HostError> {
    let new = layout.with_instance(Some(port));
    cancelled("switch")?;
    supervisor::stop(&new).map_err(|e| e.in_step("stop"))?;
    instances::link(layout, port, &manifest.id).map_err(|e| HostError::at("switch", e))?;
    emit(
        "start",
        &format!("release {} as the instance on port {port}", manifest.id),
    );
    let started = supervisor::start(&new).map_err(|e| {
        let _ = supervisor::stop(&new);
        e.in_step("health")
    })?;
    let healthy_at = Instant::now();
    outcome.pid = Some(started.pid);
    outcome.healthy_after_ms = Some(started.healthy_after_ms);
    // Under a running unit, what this (ssh) session started joins the unit.
    if crate::host::restart::systemd_owned(layout)
        && runner::is_held(layout)
        && let Some(leader) = supervisor::status(&new).supervisor_pid
    {
        match whole::adopt_into_unit(layout, leader) {
            Ok(0) => {}
            Ok(n) => emit(
                "supervise",
                &format!(
                    "instance on port {port}: {n} process(es) moved into {}.service",
                    layout.name()
                ),
            ),
            Err(e) => emit("supervise", &format!("instance on port {port}: {e}")),
        }
    }
    emit(
        "health",
        &format!(
            "pid {} healthy after {} ms on port {port}",
            started.pid, started.healthy_after_ms
        ),
    );
    Ok((started, healthy_at))
}

/// A service that ran without the proxy holds its port until it stops:
/// this one switch to the proxy is the only gap. Whether it ran.
fn leave_plain(
    layout: &Layout,
    new: &Layout,
    emit: &dyn Fn(&str, &str),
) -> Result<bool, HostError> {
    if supervisor::status(layout).pid.is_none() {
        return Ok(false);
    }
    let stop = supervisor::stop(layout).map_err(|e| {
        let _ = supervisor::stop(new);
        e.in_step("stop")
    })?;
    emit(
        "stop",
        &format!(
            "the service without proxy: {} in {} ms",
            stop.how, stop.took_ms
        ),
    );
    Ok(true)
}

/// The proxy (started if it is not running) switched to `port`, then
/// `current` to the release; when the switch was made.
fn switch_traffic(
    layout: &Layout,
    manifest: &ReleaseManifest,
    spec: &ProxySpec,
    port: u16,
    emit: &dyn Fn(&str, &str),
) -> Result<Instant, HostError> {
    if proxy::ensure_running(layout, spec).map_err(|e| HostError::at("switch", e))? {
        emit("proxy", &format!("started on {}", spec.listen));
    }
    let switched = Instant::now();
    proxy::switch(layout, Some(port)).map_err(|e| HostError::at("switch", e))?;
    emit(
        "switch",
        &format!("proxy {} -> 127.0.0.1:{port} (confirmed)", spec.listen),
    );
    store::switch(layout, &manifest.id).map_err(|e| HostError::at("switch", e))?;
    emit("switch", &format!("current -> releases/{}", manifest.id));
    Ok(switched)
}

/// The version gate of the instance on `port`, before it takes traffic.
fn gate(manifest: &ReleaseManifest, port: u16, emit: &dyn Fn(&str, &str)) -> Result<(), HostError> {
    cancelled("health")?;
    if manifest.version_check.is_some() {
        let reported = reported_version_at(manifest, Some(port))
            .map_err(|e| HostError::at("version", e))?
            .unwrap_or_default();
        outcome_version(&reported, manifest)?;
        emit(
            "version",
            &format!("instance on port {port} reports {reported}"),
        );
    }
    Ok(())
}

/// `service restart` (and `reload`) of a proxied service: `current` again,
/// as the idle instance, through the same gate, switch, drain and stop as a
/// deploy, without hooks and without a revision.
pub(crate) fn restart(
    layout: &Layout,
    spec: &ProxySpec,
    emit: &dyn Fn(&str, &str),
) -> Result<StartReport, HostError> {
    let id = store::current(layout).ok_or_else(|| HostError::new("no current release"))?;
    let mut manifest = store::read_manifest(layout, &id).map_err(HostError::new)?;
    // The release settled when it was activated; a restart (under systemd, a
    // reload within the unit's timeout) only passes the gate again.
    manifest.health.settle_ms = 0;
    let mut outcome = Activation::of(&id);
    // The step goes into the message: a restart's report has no step of its own.
    activate(layout, &manifest, spec, false, emit, &mut outcome)
        .map_err(|e| HostError::new(e.to_string()).with_log_tail(e.log_tail))?;
    Ok(StartReport {
        pid: outcome.pid.unwrap_or_default(),
        release: id,
        healthy_after_ms: outcome.healthy_after_ms.unwrap_or_default(),
        already_running: false,
    })
}

fn outcome_version(reported: &str, manifest: &ReleaseManifest) -> Result<(), HostError> {
    if reported == manifest.version {
        Ok(())
    } else {
        Err(HostError::at(
            "version",
            format!(
                "the service reports version `{reported}`, expected `{}`",
                manifest.version
            ),
        ))
    }
}

/// What ran before an activation behind the proxy, for going back to it.
struct Before {
    /// The instance that took traffic.
    old: Option<u16>,
    /// The port the new release was started on.
    new_port: u16,
    /// The release `current` named.
    previous: Option<String>,
    /// The service ran without the proxy (a move behind it), and was stopped.
    plain_ran: bool,
}

/// After a failure past the gate: traffic back to the old instance (or to
/// none), `current` back to what it named (or removed: a first release),
/// the new instance stopped; a service that ran without the proxy is
/// started again without it (the proxy stopped first: it may hold the
/// service's port). Returns where the host is now.
fn go_back(layout: &Layout, before: &Before, emit: &dyn Fn(&str, &str)) -> NowRunning {
    let _ = supervisor::stop(&layout.with_instance(Some(before.new_port)));
    let _ = proxy::switch(layout, before.old);
    let back_to = match before.old {
        Some(old) => store::current(&layout.with_instance(Some(old))),
        None => before.previous.clone(),
    };
    let switched_back = match &back_to {
        Some(id) => store::switch(layout, id),
        None => store::remove_current(layout),
    };
    let version = back_to
        .as_deref()
        .and_then(|id| store::read_manifest(layout, id).ok())
        .map(|m| m.version);
    if let Err(e) = switched_back {
        return NowRunning {
            release: back_to,
            version,
            healthy: false,
            problem: Some(format!("could not put `current` back: {e}")),
        };
    }
    if !before.plain_ran || before.old.is_some() {
        return NowRunning {
            healthy: before.old.is_some(),
            problem: before
                .old
                .is_none()
                .then(|| "no instance takes traffic".to_string()),
            release: back_to,
            version,
        };
    }
    // Back out from behind the proxy: the plain service as it was.
    let release = back_to.clone().unwrap_or_default();
    emit(
        "revert",
        &format!("back to release {release} without the proxy"),
    );
    let restarted = proxy::stop(layout)
        .map_err(|e| format!("could not stop the proxy: {e}"))
        .and_then(|_| restart::restart(layout).map_err(|e| e.to_string()));
    match restarted {
        Ok(r) => {
            emit(
                "revert",
                &format!(
                    "release {release} healthy again without the proxy (pid {})",
                    r.start.pid
                ),
            );
            NowRunning {
                release: back_to,
                version,
                healthy: true,
                problem: None,
            }
        }
        Err(problem) => NowRunning {
            release: back_to,
            version,
            healthy: false,
            problem: Some(problem),
        },
    }
}

/// The old instance, once the new one is live: drained, then stopped. A
/// failure here is "switched, then …": the release is live whatever it
/// says, so it fails nothing, and it says what still runs.
fn retire(
    layout: &Layout,
    spec: &ProxySpec,
    old: u16,
    switched: Instant,
    emit: &dyn Fn(&str, &str),
    outcome: &mut Activation,
) {
    match proxy::drain(layout, old, Duration::from_millis(spec.drain_timeout_ms)) {
        Ok(0) => emit(
            "drain",
            &format!(
                "instance on port {old} drained in {} ms",
                switched.elapsed().as_millis()
            ),
        ),
        Ok(left) => {
            // Past the deadline: tunnels and streams are closed before the
            // stop, so a client gets a close frame or a clean end.
            let closed = match proxy::close(layout, old) {
                Ok((0, 0)) => String::new(),
                Ok((tunnels, streams)) => format!(
                    "; closed {tunnels} upgraded (WebSocket) connection(s) and {streams} \
                     streaming response(s) past drain_timeout"
                ),
                Err(e) => format!("; could not close its tunnels and streams: {e}"),
            };
            emit(
                "drain",
                &format!(
                    "instance on port {old}: {left} request(s) still in flight after {} ms{closed}; stopping it",
                    switched.elapsed().as_millis()
                ),
            )
        }
        Err(e) => emit(
            "drain",
            &format!(
                "switched, then could not wait for the instance on port {old} to drain: {e}; stopping it"
            ),
        ),
    }
    match supervisor::stop(&layout.with_instance(Some(old))) {
        Ok(stop) => {
            outcome.stopped_after_ms = Some(stop.took_ms);
            emit(
                "stop",
                &format!(
                    "instance on port {old}: {} in {} ms",
                    stop.how, stop.took_ms
                ),
            );
        }
        Err(e) => emit(
            "stop",
            &format!(
                "switched, then could not stop the old instance on port {old}: {}; it may still run (the new release takes all traffic)",
                e.message
            ),
        ),
    }
}

/// Where a failed blue/green activation left the host: on the instance the
/// proxy sends traffic to, which never stopped.
pub(crate) fn now_running(layout: &Layout, spec: &ProxySpec, previous: Option<&str>) -> NowRunning {
    let active = proxy::active(layout).filter(|p| spec.ports.contains(p));
    let status = active.map(|p| supervisor::status(&layout.with_instance(Some(p))));
    let release = status
        .as_ref()
        .and_then(|s| s.release.clone())
        .or_else(|| previous.map(str::to_string));
    let healthy = status.as_ref().is_some_and(|s| s.pid.is_some());
    NowRunning {
        version: release
            .as_deref()
            .and_then(|r| store::read_manifest(layout, r).ok())
            .map(|m| m.version),
        release,
        healthy,
        problem: (!healthy).then(|| "no instance takes traffic".to_string()),
    }
}
