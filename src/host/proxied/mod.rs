//! The proxied service: a service with `[proxy]` is one supervised thing
//! made of shipjar's proxy (`host::proxy`), two instances of the service
//! (each under its own supervisor) and the runner that starts and watches
//! them. Its operations (start, stop, restart, reload, status), its
//! blue/green switch, and the runner live here; nothing below imports it.

#[allow(clippy::disallowed_methods)]
// root-only: var/lib/NAME/instances (root 0755), /proc, cgroupfs
pub mod instances;
mod revert;
pub mod runner;
#[allow(clippy::disallowed_methods)] // root-only: run/NAME/proxy is root's
pub mod runner_record;
mod status;
pub mod switch;
#[allow(clippy::disallowed_methods)] // root-only: /proc, cgroupfs
pub mod whole;

use crate::host::error::HostError;
use std::time::Instant;

use crate::host::supervisor::{self, ReloadReport, StartReport};
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;

pub use status::{lsb_code, status};
pub use whole::{start, stop};

/// The proxy spec of the release `current` points to, if it has one.
pub fn spec(layout: &Layout) -> Option<ProxySpec> {
    let id = crate::host::store::current(layout)?;
    crate::host::store::read_manifest(layout, &id).ok()?.proxy
}

/// `service restart` of a proxied service, without downtime: `current`
/// started as the idle instance, gated, switched to, the old one drained
/// and stopped (as a deploy does, without hooks); left under a runner.
pub fn restart(
    layout: &Layout,
    spec: &ProxySpec,
    emit: &dyn Fn(&str, &str),
) -> Result<StartReport, HostError> {
    let _switching = switch_lock(layout)?;
    switch::restart(layout, spec, emit)
}

fn switch_lock(layout: &Layout) -> Result<crate::host::lockfile::HeldLock, HostError> {
    crate::host::lockfile::hold_switch(layout).map_err(HostError::new)
}

/// `service reload` of a proxied service: `[reload] signal` to the instance
/// taking traffic, or a restart without downtime.
pub fn reload(
    layout: &Layout,
    spec: &ProxySpec,
    emit: &dyn Fn(&str, &str),
) -> Result<ReloadReport, HostError> {
    let signal = crate::host::store::current(layout)
        .and_then(|id| crate::host::store::read_manifest(layout, &id).ok())
        .and_then(|m| m.reload.signal);
    let started = Instant::now();
    let switching = switch_lock(layout)?;
    if signal.is_some() {
        return supervisor::reload(&layout.with_instance(instances::active_or_first(layout, spec)));
    }
    let report = switch::restart(layout, spec, emit)?;
    drop(switching);
    Ok(ReloadReport {
        how: format!(
            "restarted without downtime: pid {} from release {}, healthy after {} ms",
            report.pid, report.release, report.healthy_after_ms
        ),
        took_ms: started.elapsed().as_millis() as u64,
    })
}
