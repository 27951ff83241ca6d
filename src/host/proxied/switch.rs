//! Activation behind the proxy: the new release starts as the idle
//! instance, passes the health and version gate, then the proxy switches to
//! it, `current` follows, and the old instance drains and stops. Until the
//! switch, the old instance takes all traffic; a failed gate stops the new
//! instance and changes nothing else.

use std::time::{Duration, Instant};

use super::{instances, runner, whole};
use crate::host::steps::{StepFailure, cancelled, reported_version_at, run_hook, settle};
use crate::host::supervisor::{StartReport, SupervisorError};
use crate::host::{proxy, store, supervisor};
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
) -> Result<(), StepFailure> {
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
    cancelled("switch")?;
    // Whatever an interrupted deploy left on the idle port goes first.
    supervisor::stop(&new).map_err(|e| ("stop", e.message, e.log_tail))?;
    instances::link(layout, port, &manifest.id).map_err(|e| ("switch", e, Vec::new()))?;
    emit(
        "start",
        &format!("release {} as the instance on port {port}", manifest.id),
    );
    let started = supervisor::start(&new).map_err(|e| {
        let _ = supervisor::stop(&new);
        ("health", e.message, e.log_tail)
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
    let gate = || -> Result<(), StepFailure> {
        cancelled("health")?;
        if manifest.version_check.is_some() {
            let reported = reported_version_at(manifest, Some(port))
                .map_err(|e| ("version", e, Vec::new()))?
                .unwrap_or_default();
            outcome_version(&reported, manifest)?;
            emit(
                "version",
                &format!("instance on port {port} reports {reported}"),
            );
        }
        Ok(())
    };
    if let Err(failure) = gate() {
        let _ = supervisor::stop(&new);
        return Err(failure);
    }
    outcome.reported_version = manifest
        .version_check
        .as_ref()
        .map(|_| manifest.version.clone());

    // A service that ran without the proxy holds its port until it stops:
    // this one switch to the proxy is the only gap.
    let plain = supervisor::status(layout);
    if plain.pid.is_some() {
        let stop = supervisor::stop(layout).map_err(|e| ("stop", e.message, e.log_tail))?;
        emit(
            "stop",
            &format!(
                "the service without proxy: {} in {} ms",
                stop.how, stop.took_ms
            ),
        );
    }
    let fresh = proxy::ensure_running(layout, spec).map_err(|e| {
        let _ = supervisor::stop(&new);
        ("switch", e, Vec::new())
    })?;
    if fresh {
        emit("proxy", &format!("started on {}", spec.listen));
    }
    let switched = Instant::now();
    proxy::switch(layout, Some(port)).map_err(|e| {
        let _ = supervisor::stop(&new);
        ("switch", e, Vec::new())
    })?;
    emit(
        "switch",
        &format!("proxy {} -> 127.0.0.1:{port} (confirmed)", spec.listen),
    );
    if let Err(e) = store::switch(layout, &manifest.id) {
        switch_back(layout, old, port);
        return Err(("switch", e, Vec::new()));
    }
    emit("switch", &format!("current -> releases/{}", manifest.id));
    // It settles taking the traffic, with the old instance still there to go back to.
    if let Err(failure) = settle::settle(&new, &manifest.health, started.pid, healthy_at, emit) {
        switch_back(layout, old, port);
        return Err(failure);
    }
    if let Some(hook) = manifest.hooks.after_switch.as_ref().filter(|_| deploying)
        && let Err(failure) = run_hook(layout, &manifest.id, HookPoint::AfterSwitch, hook, emit)
    {
        switch_back(layout, old, port);
        return Err(failure);
    }
    if let Some(old) = old {
        let left = proxy::drain(layout, old, Duration::from_millis(spec.drain_timeout_ms))
            .map_err(|e| ("drain", e, Vec::new()))?;
        let waited = switched.elapsed().as_millis();
        if left == 0 {
            emit(
                "drain",
                &format!("instance on port {old} drained in {waited} ms"),
            );
        } else {
            emit(
                "drain",
                &format!(
                    "instance on port {old}: {left} request(s) still in flight after {waited} ms; stopping it"
                ),
            );
        }
        let stop = supervisor::stop(&layout.with_instance(Some(old)))
            .map_err(|e| ("stop", e.message, e.log_tail))?;
        outcome.stopped_after_ms = Some(stop.took_ms);
        emit(
            "stop",
            &format!(
                "instance on port {old}: {} in {} ms",
                stop.how, stop.took_ms
            ),
        );
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

/// `service restart` (and `reload`) of a proxied service: `current` again,
/// as the idle instance, through the same gate, switch, drain and stop as a
/// deploy, without hooks and without a revision.
pub(crate) fn restart(
    layout: &Layout,
    spec: &ProxySpec,
    emit: &dyn Fn(&str, &str),
) -> Result<StartReport, SupervisorError> {
    let fail = |message: String| SupervisorError {
        message,
        log_tail: Vec::new(),
    };
    let id = store::current(layout).ok_or_else(|| fail("no current release".into()))?;
    let mut manifest = store::read_manifest(layout, &id).map_err(fail)?;
    // The release settled when it was activated; a restart (under systemd, a
    // reload within the unit's timeout) only passes the gate again.
    manifest.health.settle_ms = 0;
    let mut outcome = Activation {
        ok: false,
        release: id.clone(),
        pid: None,
        healthy_after_ms: None,
        stopped_after_ms: None,
        reported_version: None,
        failed_step: None,
        reason: None,
        log_tail: Vec::new(),
        now_running: None,
    };
    activate(layout, &manifest, spec, false, emit, &mut outcome).map_err(
        |(step, message, log_tail)| SupervisorError {
            message: format!("{step}: {message}"),
            log_tail,
        },
    )?;
    Ok(StartReport {
        pid: outcome.pid.unwrap_or_default(),
        release: id,
        healthy_after_ms: outcome.healthy_after_ms.unwrap_or_default(),
        already_running: false,
    })
}

fn outcome_version(reported: &str, manifest: &ReleaseManifest) -> Result<(), StepFailure> {
    if reported == manifest.version {
        Ok(())
    } else {
        Err((
            "version",
            format!(
                "the service reports version `{reported}`, expected `{}`",
                manifest.version
            ),
            Vec::new(),
        ))
    }
}

/// After a failure past the switch: traffic back to the old instance (or to
/// none), `current` back to its release, the new instance stopped.
fn switch_back(layout: &Layout, old: Option<u16>, new: u16) {
    let _ = proxy::switch(layout, old);
    if let Some(old) = old
        && let Some(id) = store::current(&layout.with_instance(Some(old)))
    {
        let _ = store::switch(layout, &id);
    }
    let _ = supervisor::stop(&layout.with_instance(Some(new)));
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
