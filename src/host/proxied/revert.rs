//! `[restart] auto_revert` behind the proxy: when the supervisor of the
//! instance taking traffic gives up on a release soon after its deploy, the
//! runner starts the previous healthy release as the idle instance, through
//! the gate, switches the proxy to it, moves `current`, and stops the
//! instance given up on — a blue/green switch back, under the switch lock.
//! The decision is the supervisor's pure [`auto_revert::plan`]; the records
//! are the same `auto-revert` lines as a plain service's.

use std::time::{Duration, SystemTime};

use super::instances::{self, start_watched};
use crate::host::lockfile::{self, NoSwitch};
use crate::host::os::process::Signals;
use crate::host::supervisor::auto_revert;
use crate::host::{proxy, revisions, secrets, store, supervisor};
use crate::protocol::layout::Layout;
use crate::protocol::manifest::{ProxySpec, ReleaseManifest};

/// Who `revisions.log` says made the auto-revert.
const DEPLOYER: &str = "runner";

/// What came of an instance given up on.
pub enum Reverted {
    /// The previous release takes traffic again.
    Back { target: String },
    /// Not reverted; the text (empty, or `; not auto-reverting: why`) is
    /// added to why the runner gives up.
    No(String),
    /// A stop arrived meanwhile.
    Stopping,
}

/// `auto_revert` for the instance on `port`, given up on (`why`).
pub fn auto_revert(
    layout: &Layout,
    spec: &ProxySpec,
    port: u16,
    why: &str,
    signals: &Signals,
) -> Reverted {
    let not = |why: String| {
        eprintln!("shipjar runner: not auto-reverting: {why}");
        Reverted::No(format!("; not auto-reverting: {why}"))
    };
    let Some(from) = store::current(layout).and_then(|id| store::read_manifest(layout, &id).ok())
    else {
        return Reverted::No(String::new());
    };
    if !from.restart.auto_revert {
        return Reverted::No(String::new());
    }
    let window = Duration::from_millis(from.restart.revert_window_ms);
    if let Err(why) = plan(layout, &from.id, window) {
        return not(why);
    }
    let _switching = match lockfile::take_switch_or_stop(layout, signals) {
        Ok(lock) => lock,
        Err(NoSwitch::Stopped(_)) => return Reverted::Stopping,
        Err(NoSwitch::Held(why)) => return not(why),
    };
    // Again under the lock: a deploy or rollback may have changed what runs.
    if store::current(layout).as_deref() != Some(from.id.as_str())
        || proxy::active(layout) != Some(port)
    {
        return not(format!(
            "a deploy or rollback changed what runs since release {} was given up on",
            from.id
        ));
    }
    let plan = match plan(layout, &from.id, window) {
        Ok(plan) => plan,
        Err(why) => return not(why),
    };
    let given_up = format!(
        "given up on {} s after its deploy: {why}",
        plan.deployed_ago.as_secs()
    );
    match switch_back(layout, spec, port, &from, &plan.target, &given_up, signals) {
        Ok(()) => Reverted::Back {
            target: plan.target,
        },
        Err(None) => Reverted::Stopping,
        Err(Some(why)) => not(why),
    }
}

/// Starts `target` as the idle instance through the gate, switches the
/// proxy and `current` to it, records both lines and stops the instance on
/// `port`. `Err(None)`: a stop arrived; `Err(Some(why))`: it did not come
/// up (the proxy and `current` stay; recorded).
fn switch_back(
    layout: &Layout,
    spec: &ProxySpec,
    port: u16,
    from: &ReleaseManifest,
    target: &str,
    given_up: &str,
    signals: &Signals,
) -> Result<(), Option<String>> {
    let version = store::read_manifest(layout, target)
        .map(|m| m.version)
        .unwrap_or_else(|_| "-".into());
    eprintln!(
        "shipjar runner: auto-revert: release {} (version {}) {given_up}; back to release {target} (version {version})",
        from.id, from.version
    );
    let idle = instances::idle_port(spec, Some(port));
    let new = layout.with_instance(Some(idle));
    let linked = supervisor::stop(&new)
        .map_err(|e| e.message)
        .and_then(|_| instances::link(layout, idle, target));
    let started = match linked {
        Ok(()) => start_watched(&new, signals)
            .ok_or(None)?
            .map_err(|e| e.message),
        Err(e) => Err(e),
    };
    let detail = format!(
        "auto-reverted: from release {} (version {}), {given_up}",
        from.id, from.version
    );
    let switched = started.and_then(|report| {
        proxy::switch(layout, Some(idle))?;
        store::switch(layout, target)?;
        Ok(report)
    });
    let report = match switched {
        Ok(report) => report,
        Err(how) => {
            let _ = supervisor::stop(&new);
            let _ = proxy::switch(layout, Some(port));
            let _ = store::switch(layout, &from.id);
            record(
                layout,
                target,
                &version,
                false,
                format!("{detail}; NOT healthy: {how}"),
            );
            return Err(Some(format!(
                "release {target} did not come up on port {idle}: {how}"
            )));
        }
    };
    // The release given up on is marked failed: no rollback or prune takes
    // it for a healthy one.
    record(
        layout,
        &from.id,
        &from.version,
        false,
        format!("auto-reverted: {given_up}; back to release {target}"),
    );
    record(layout, target, &version, true, detail);
    let stopped = match supervisor::stop(&layout.with_instance(Some(port))) {
        Ok(_) => "is stopped".to_string(),
        Err(e) => format!("could not be stopped: {}", e.message),
    };
    eprintln!(
        "shipjar runner: auto-revert: release {target} takes traffic on port {idle} (pid {}, healthy after {} ms); the instance on port {port} {stopped}",
        report.pid, report.healthy_after_ms
    );
    Ok(())
}

/// The plan for release `current`, from `revisions.log` as it is now; only
/// a release behind the proxy can be an instance.
fn plan(layout: &Layout, current: &str, window: Duration) -> Result<auto_revert::Plan, String> {
    let history = revisions::read(layout)?;
    let runnable = |id: &str| store::read_manifest(layout, id).is_ok_and(|m| m.proxy.is_some());
    auto_revert::plan(&history, current, SystemTime::now(), window, &runnable)
}

/// Appends one `auto-revert` line to `revisions.log`.
fn record(layout: &Layout, release: &str, version: &str, healthy: bool, detail: String) {
    let line = auto_revert::revision(DEPLOYER, release, version, healthy, detail);
    if let Err(e) = revisions::append(layout, &line, &secrets::masker(layout)) {
        eprintln!("shipjar runner: cannot append to revisions.log: {e}");
    }
}
