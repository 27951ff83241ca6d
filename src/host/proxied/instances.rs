//! The two instances of a service behind `[proxy]`: each runs the release
//! its own link (`instances/<port>`) names, under its own supervisor; the
//! proxy sends traffic to one of them.

use crate::host::error::HostError;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use std::time::Duration;

use crate::host::os::process::Signals;
use crate::host::proxy;
use crate::host::supervisor::{self, StartReport};
use crate::protocol::defaults::SUPERVISOR_GRACE;
use crate::protocol::files::fsync_dir;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;

/// Points the instance on `port` at `releases/<id>` (new symlink + rename).
pub fn link(layout: &Layout, port: u16, id: &str) -> Result<(), String> {
    let path = layout.instance_link(port);
    let dir = path.parent().ok_or("instance link has no parent")?;
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{port}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    symlink(Path::new("../releases").join(id), &tmp)
        .map_err(|e| format!("cannot create symlink: {e}"))?;
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot point {} at {id}: {e}", path.display())
    })?;
    fsync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The port that is not `active` (the first one when none is).
pub fn idle_port(spec: &ProxySpec, active: Option<u16>) -> u16 {
    match active {
        Some(p) if p == spec.ports[0] => spec.ports[1],
        _ => spec.ports[0],
    }
}

/// The instance that takes traffic, or the first port when none is recorded.
pub fn active_or_first(layout: &Layout, spec: &ProxySpec) -> Option<u16> {
    Some(
        proxy::active(layout)
            .filter(|p| spec.ports.contains(p))
            .unwrap_or(spec.ports[0]),
    )
}

/// The parts, as the runner brings them up: the active instance (the first
/// port when none was) from `current`, healthy, the proxy, traffic switched
/// to the instance. What runs already is kept.
pub fn start_parts(layout: &Layout, spec: &ProxySpec) -> Result<StartReport, HostError> {
    let port = active_or_first(layout, spec).unwrap_or(spec.ports[0]);
    let instance = layout.with_instance(Some(port));
    if supervisor::status(&instance).pid.is_none() {
        let id = crate::host::store::current(layout)
            .ok_or_else(|| HostError::new("no current release"))?;
        link(layout, port, &id).map_err(HostError::new)?;
    }
    let report = supervisor::start(&instance)?;
    proxy::ensure_running(layout, spec).map_err(HostError::new)?;
    proxy::switch(layout, Some(port)).map_err(HostError::new)?;
    Ok(report)
}

/// How long a runner may take to stop both instances and the proxy.
pub(super) fn stop_budget(layout: &Layout) -> Duration {
    let stop = crate::host::store::current(layout)
        .and_then(|id| crate::host::store::read_manifest(layout, &id).ok())
        .map_or(crate::protocol::defaults::STOP_TIMEOUT, |m| {
            Duration::from_millis(m.stop.timeout_ms + m.stop.hook_timeout_ms)
        });
    (stop + SUPERVISOR_GRACE) * 2 + Duration::from_secs(10)
}

/// Both instances stopped, then the proxy (no instance takes traffic).
pub fn stop_parts(layout: &Layout, spec: &ProxySpec) -> Result<(), HostError> {
    for port in spec.ports {
        supervisor::stop(&layout.with_instance(Some(port)))?;
    }
    proxy::stop(layout).map_err(HostError::new)?;
    Ok(())
}

/// How often a watched start looks at the signals.
const WATCH_TICK: Duration = Duration::from_millis(50);

/// Starts the instance of `instance` through its health gate in a thread,
/// so the watchdog is fed and a SIGTERM is seen meanwhile (`None`: one
/// came; the caller's stop of the parts ends the start).
pub fn start_watched(
    instance: &Layout,
    signals: &Signals,
) -> Option<Result<StartReport, HostError>> {
    let starting = std::thread::spawn({
        let instance = instance.clone();
        move || supervisor::start(&instance)
    });
    loop {
        if let Some(libc::SIGTERM | libc::SIGINT) = signals.wait(Some(WATCH_TICK)) {
            return None;
        }
        if starting.is_finished() {
            return Some(
                starting
                    .join()
                    .unwrap_or_else(|_| Err(HostError::new("the start panicked"))),
            );
        }
    }
}
