//! Activating a release on this host: switch `current`, restart through the
//! health gate, verify the version the service reports; on any failure go
//! back to the previous release and confirm it is healthy again.

use std::time::Instant;

use crate::host::error::HostError;
use crate::host::lockfile::hold_switch;
use crate::host::restart::{self, Restarted};
use crate::host::steps::{cancelled, reported_version, run_hook, settle};
use crate::host::{cancel, proxied, revisions, secrets, store, supervisor};
use crate::protocol::clock::now_rfc3339;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ReleaseManifest;
use crate::protocol::{
    Action, Activation, HookPoint, NotSwitched, NowRunning, Revision, RevisionOutcome,
};

/// Activates `release`; never returns with the host on a half-switched release.
/// A failed step is told to `failed` when it happens, before the revert.
/// `partial` (a run on some of the stage's hosts) is recorded with it.
pub fn activate(
    layout: &Layout,
    release: &str,
    action: Action,
    deployer: &str,
    partial: Option<&str>,
    emit: &dyn Fn(&str, &str),
    failed: &dyn Fn(&str, &str),
) -> Activation {
    let previous = store::current(layout);
    let mut outcome = Activation::of(release);
    let manifest = match store::read_manifest(layout, release) {
        Ok(m) => m,
        Err(e) => return fail_early(outcome, "switch", e),
    };
    let _switching = match hold_switch(layout) {
        Ok(held) => held,
        Err(e) => {
            failed("lock", &e);
            let stopped = not_switched(release, action, deployer, format!("lock: {e}"));
            record_not_switched(layout, &stopped, emit);
            return fail_early(outcome, "lock", e);
        }
    };
    // Deploy hooks run for a deploy only: a rollback runs none of them.
    let deploying = action == Action::Deploy;
    let result = match manifest.hooks.before_start.as_ref().filter(|_| deploying) {
        Some(hook) => run_hook(layout, release, HookPoint::BeforeStart, hook, emit),
        None => Ok(()),
    };
    if let Err(e) = result {
        // Nothing was switched: the host stays on what it runs.
        failed(&e.step, &e.message);
        let detail = e.to_string();
        record_failure(&mut outcome, e);
        outcome.now_running = Some(running_unswitched(layout, &manifest, previous.as_deref()));
        let stopped = not_switched(release, action, deployer, detail);
        record_not_switched(layout, &stopped, emit);
        return outcome;
    }
    let result = match &manifest.proxy {
        Some(spec) => {
            proxied::switch::activate(layout, &manifest, spec, deploying, emit, &mut outcome)
        }
        None => switch_and_verify(layout, &manifest, deploying, emit, &mut outcome),
    };
    let (ok, detail) = match result {
        Ok(()) => (true, String::new()),
        Err(e) => {
            let detail = after_failure(
                layout,
                &manifest,
                previous.as_deref(),
                e,
                emit,
                failed,
                &mut outcome,
            );
            (false, detail)
        }
    };
    outcome.ok = ok;
    let detail = with_partial(detail, partial);
    let revision = Revision {
        time: now_rfc3339(),
        action: action.clone(),
        release: release.to_string(),
        version: manifest.version.clone(),
        deployer: deployer.to_string(),
        outcome: if ok {
            RevisionOutcome::Success
        } else {
            RevisionOutcome::Failed
        },
        detail,
    };
    if let Err(e) = revisions::append(layout, &revision, &secrets::masker(layout)) {
        emit("record", &format!("cannot append to revisions.log: {e}"));
    }
    outcome
}

/// After a failed switch: the failure told and recorded, the host back on
/// what it ran before (or, behind the proxy, where the switch went back to);
/// the revision's detail.
fn after_failure(
    layout: &Layout,
    manifest: &ReleaseManifest,
    previous: Option<&str>,
    e: HostError,
    emit: &dyn Fn(&str, &str),
    failed: &dyn Fn(&str, &str),
    outcome: &mut Activation,
) -> String {
    // A cancel stops the new release; going back must run to the end.
    cancel::clear();
    failed(&e.step, &e.message);
    let failure = e.to_string();
    record_failure(outcome, e);
    let now = match &manifest.proxy {
        // Where the switch went back to, or (a failed gate) the old
        // instance, which never stopped taking traffic.
        Some(spec) => outcome
            .now_running
            .take()
            .unwrap_or_else(|| proxied::switch::now_running(layout, spec, previous)),
        None => revert(layout, previous, &manifest.id, emit),
    };
    let detail = format!("{failure}; {}", describe_now_running(&now));
    outcome.now_running = Some(now);
    detail
}

/// A revision's detail, naming the hosts of a partial run.
fn with_partial(detail: String, partial: Option<&str>) -> String {
    match (partial, detail.is_empty()) {
        (None, _) => detail,
        (Some(p), true) => format!("partial: {p}"),
        (Some(p), false) => format!("{detail}; partial: {p}"),
    }
}

/// `shipjar restart STAGE` on this host: `release` (which must be current)
/// restarted through the same gate as a deploy (health, version, settle),
/// under the switch lock, with no hooks. Behind the proxy it is the
/// blue/green switch onto a fresh instance of the same release, so no
/// request is dropped. There is no other release to go back to: a plain
/// service that fails is left as its supervisor has it (its state says
/// so); behind the proxy a failed gate leaves the old instance taking
/// traffic. Not written to revisions.log: it activates nothing new, and
/// rollback, pruning and auto-revert read that history as activations.
pub fn restart(
    layout: &Layout,
    release: &str,
    emit: &dyn Fn(&str, &str),
    failed: &dyn Fn(&str, &str),
) -> Activation {
    let mut outcome = Activation::of(release);
    let _switching = match hold_switch(layout) {
        Ok(held) => held,
        Err(e) => {
            failed("lock", &e);
            return fail_early(outcome, "lock", e);
        }
    };
    // Under the deploy lock `current` cannot move; checked all the same.
    let current = store::current(layout);
    if current.as_deref() != Some(release) {
        let e = format!(
            "current is {}, not {release}: nothing restarted",
            current.as_deref().unwrap_or("(none)")
        );
        failed("restart", &e);
        return fail_early(outcome, "restart", e);
    }
    let manifest = match store::read_manifest(layout, release) {
        Ok(m) => m,
        Err(e) => {
            failed("restart", &e);
            return fail_early(outcome, "restart", e);
        }
    };
    let result = match &manifest.proxy {
        Some(spec) => proxied::switch::activate(layout, &manifest, spec, false, emit, &mut outcome),
        None => switch_and_verify(layout, &manifest, false, emit, &mut outcome),
    };
    if let Err(e) = result {
        cancel::clear();
        failed(&e.step, &e.message);
        record_failure(&mut outcome, e);
        let now = match &manifest.proxy {
            Some(spec) => outcome
                .now_running
                .take()
                .unwrap_or_else(|| proxied::switch::now_running(layout, spec, Some(release))),
            None => {
                let status = supervisor::status(layout);
                let healthy = status.pid.is_some() && status.healthy != Some(false);
                NowRunning {
                    release: Some(release.to_string()),
                    version: Some(manifest.version.clone()),
                    healthy,
                    problem: (!healthy).then(|| {
                        format!(
                            "the service is {} (no other release to go back to)",
                            status.state
                        )
                    }),
                }
            }
        };
        outcome.now_running = Some(now);
        return outcome;
    }
    outcome.ok = true;
    outcome
}

/// What runs when an activation stopped before it switched: what ran before.
fn running_unswitched(
    layout: &Layout,
    manifest: &ReleaseManifest,
    previous: Option<&str>,
) -> NowRunning {
    match &manifest.proxy {
        Some(spec) => proxied::switch::now_running(layout, spec, previous),
        None => NowRunning {
            release: previous.map(str::to_string),
            version: previous
                .and_then(|p| store::read_manifest(layout, p).ok())
                .map(|m| m.version),
            healthy: supervisor::status(layout).pid.is_some(),
            problem: None,
        },
    }
}

/// The record of a run that stopped, `why`, before its host switched.
fn not_switched(release: &str, action: Action, deployer: &str, why: String) -> NotSwitched {
    NotSwitched {
        release: Some(release.to_string()),
        action,
        deployer: deployer.to_string(),
        why: format!("{why}; not switched"),
    }
}

/// Records a run that stopped before this host switched, and removes the
/// release it prepared for a deploy that never ran here (a release that
/// never switched is nothing to keep or roll back to).
pub fn record_not_switched(layout: &Layout, stopped: &NotSwitched, emit: &dyn Fn(&str, &str)) {
    let release = stopped.release.as_deref().unwrap_or("-");
    let manifest = stopped
        .release
        .as_deref()
        .and_then(|r| store::read_manifest(layout, r).ok());
    let history = revisions::read(layout);
    let revision = Revision {
        time: now_rfc3339(),
        action: stopped.action.clone(),
        release: release.to_string(),
        version: manifest.as_ref().map_or("-".into(), |m| m.version.clone()),
        deployer: stopped.deployer.clone(),
        outcome: RevisionOutcome::Failed,
        detail: stopped.why.clone(),
    };
    if let Err(e) = revisions::append(layout, &revision, &secrets::masker(layout)) {
        emit("record", &format!("cannot append to revisions.log: {e}"));
    }
    // Unknown history: keep it, it might be something to roll back to.
    let activated_before = |id: &str| {
        history
            .as_ref()
            .map_or(true, |h| h.iter().any(|r| r.release == id))
    };
    if stopped.action == Action::Deploy
        && let Some(id) = stopped.release.as_deref()
        && manifest.is_some()
        && store::current(layout).as_deref() != Some(id)
        && !activated_before(id)
    {
        match store::remove_release(layout, id) {
            Ok(()) => emit("record", &format!("release {id} never switched: removed")),
            Err(e) => emit("record", &format!("release {id} never switched: {e}")),
        }
    }
}

fn switch_and_verify(
    layout: &Layout,
    manifest: &ReleaseManifest,
    deploying: bool,
    emit: &dyn Fn(&str, &str),
    outcome: &mut Activation,
) -> Result<(), HostError> {
    cancelled("switch")?;
    // Leaving the proxy: its instances and the proxy itself go before the
    // plain service can take the port (a downtime like any plain restart).
    if let Some(spec) = crate::host::proxied::spec(layout) {
        crate::host::proxied::stop(layout, &spec).map_err(|e| e.in_step("stop"))?;
        emit("stop", "the proxy and both instances");
    }
    // A restart of the current release has nothing to switch.
    if store::current(layout).as_deref() != Some(manifest.id.as_str()) {
        store::switch(layout, &manifest.id).map_err(|e| HostError::at("switch", e))?;
        emit("switch", &format!("current -> releases/{}", manifest.id));
    }
    let restarted = restart::restart(layout)?;
    cancelled("health")?;
    if let Some(stop) = restarted.stop.filter(|s| s.was_running) {
        outcome.stopped_after_ms = Some(stop.took_ms);
        let which = match stop.unsupervised_pid {
            Some(pid) => format!("replaced an unsupervised service pid {pid}:"),
            None => "previous process".to_string(),
        };
        emit(
            "stop",
            &format!("{which} {} in {} ms", stop.how, stop.took_ms),
        );
    }
    let started = restarted.start;
    let healthy_at = Instant::now();
    outcome.pid = Some(started.pid);
    outcome.healthy_after_ms = Some(started.healthy_after_ms);
    emit(
        "health",
        &format!(
            "pid {} healthy after {} ms",
            started.pid, started.healthy_after_ms
        ),
    );
    if started.release != manifest.id {
        return Err(HostError::at(
            "health",
            format!(
                "the running process was started from release {}, not {}",
                started.release, manifest.id
            ),
        ));
    }
    if manifest.version_check.is_some() {
        let reported = reported_version(manifest).map_err(|e| HostError::at("version", e))?;
        let reported = reported.unwrap_or_default();
        outcome.reported_version = Some(reported.clone());
        if reported != manifest.version {
            return Err(HostError::at(
                "version",
                format!(
                    "the service reports version `{reported}`, expected `{}`",
                    manifest.version
                ),
            ));
        }
        emit("version", &format!("service reports {reported}"));
    }
    settle::settle(layout, &manifest.health, started.pid, healthy_at, emit)?;
    if let Some(hook) = manifest.hooks.after_switch.as_ref().filter(|_| deploying) {
        run_hook(layout, &manifest.id, HookPoint::AfterSwitch, hook, emit)?;
    }
    Ok(())
}

/// The failed step, why, and the lines that show it, in the activation's answer.
fn record_failure(outcome: &mut Activation, e: HostError) {
    outcome.failed_step = Some(e.step);
    outcome.reason = Some(e.message);
    outcome.log_tail = e.log_tail;
}

fn fail_early(mut outcome: Activation, step: &str, reason: String) -> Activation {
    outcome.failed_step = Some(step.to_string());
    outcome.reason = Some(reason);
    outcome
}

/// Puts the host back on `previous` (or on nothing) and checks it is healthy.
fn revert(
    layout: &Layout,
    previous: Option<&str>,
    failed: &str,
    emit: &dyn Fn(&str, &str),
) -> NowRunning {
    let Some(previous) = previous.filter(|p| *p != failed) else {
        let stopped = supervisor::stop(layout)
            .map(|_| ())
            .map_err(|e| format!("could not stop the failed release: {}", e.message));
        let problem = match (stopped, store::remove_current(layout)) {
            (Ok(()), Ok(())) => None,
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Some(e),
            (Err(stop), Err(remove)) => Some(format!("{stop}; {remove}")),
        };
        match &problem {
            None => emit("revert", "no previous release: service stopped"),
            Some(problem) => emit("revert", &format!("no previous release: {problem}")),
        }
        return NowRunning {
            release: None,
            version: None,
            healthy: false,
            problem,
        };
    };
    emit("revert", &format!("back to release {previous}"));
    let version = store::read_manifest(layout, previous)
        .ok()
        .map(|m| m.version);
    let back_behind_proxy = store::read_manifest(layout, previous)
        .ok()
        .and_then(|m| m.proxy);
    let result = store::switch(layout, previous).and_then(|()| match &back_behind_proxy {
        // A previous release behind the proxy goes back to being served by it.
        Some(spec) => {
            let _ = supervisor::stop(layout);
            crate::host::proxied::start(layout, spec)
                .map(|start| Restarted { stop: None, start })
                .map_err(|e| e.message)
        }
        None => restart::restart(layout).map_err(|e| e.message),
    });
    match result {
        Ok(Restarted { start: started, .. }) => {
            emit(
                "revert",
                &format!("release {previous} healthy again (pid {})", started.pid),
            );
            NowRunning {
                release: Some(previous.to_string()),
                version,
                healthy: true,
                problem: None,
            }
        }
        Err(problem) => NowRunning {
            release: Some(previous.to_string()),
            version,
            healthy: false,
            problem: Some(problem),
        },
    }
}

fn describe_now_running(now: &NowRunning) -> String {
    match (&now.release, now.healthy) {
        (Some(r), true) => format!("reverted to {r}, healthy"),
        (Some(r), false) => format!(
            "reverted to {r}, NOT healthy: {}",
            now.problem.as_deref().unwrap_or("unknown")
        ),
        (None, _) => "no previous release; service stopped".to_string(),
    }
}
