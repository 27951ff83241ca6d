//! The two instances of a service behind `[proxy]`: each runs the release
//! its own link (`instances/<port>`) names, under its own supervisor; the
//! proxy sends traffic to one of them.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use crate::host::proxy::{self, ProxyState, ProxyStatus};
use crate::host::supervisor::{self, StartReport, SupervisorError};
use crate::protocol::files::fsync_dir;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;
use crate::protocol::status::InstanceStatus;

/// The proxy spec of the release `current` points to, if it has one.
pub fn proxied(layout: &Layout) -> Option<ProxySpec> {
    let id = crate::host::store::current(layout)?;
    crate::host::store::read_manifest(layout, &id).ok()?.proxy
}

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

/// `service start` of a proxied service: the proxy, and the active
/// instance (the first port when none was) from `current`, healthy, with
/// traffic switched to it.
pub fn start(layout: &Layout, spec: &ProxySpec) -> Result<StartReport, SupervisorError> {
    let fail = |message: String| SupervisorError {
        message,
        log_tail: Vec::new(),
    };
    let port = proxy::active(layout)
        .filter(|p| spec.ports.contains(p))
        .unwrap_or(spec.ports[0]);
    let id =
        crate::host::store::current(layout).ok_or_else(|| fail("no current release".into()))?;
    let instance = layout.with_instance(Some(port));
    if supervisor::status(&instance).pid.is_none() {
        link(layout, port, &id).map_err(fail)?;
    }
    let report = supervisor::start(&instance)?;
    proxy::ensure_running(layout, spec).map_err(fail)?;
    proxy::switch(layout, Some(port)).map_err(fail)?;
    Ok(report)
}

/// `service stop` of a proxied service: no instance takes traffic, both
/// are stopped, then the proxy.
pub fn stop(layout: &Layout, spec: &ProxySpec) -> Result<(), SupervisorError> {
    let fail = |message: String| SupervisorError {
        message,
        log_tail: Vec::new(),
    };
    for port in spec.ports {
        supervisor::stop(&layout.with_instance(Some(port)))?;
    }
    proxy::stop(layout).map_err(fail)?;
    Ok(())
}

/// The proxy and both instances, every pid proven.
pub fn status(layout: &Layout, spec: &ProxySpec) -> ProxyStatus {
    let mut proxy = proxy::status(layout);
    proxy.instances = spec
        .ports
        .iter()
        .map(|&port| InstanceStatus {
            port,
            // A stopped proxy sends traffic nowhere, whatever it last recorded.
            active: proxy.state == ProxyState::Running && proxy.active == Some(port),
            service: supervisor::status(&layout.with_instance(Some(port))),
        })
        .collect();
    proxy
}

/// LSB code of a proxied service: the active instance's code behind a
/// running proxy; 3 when the proxy and both instances are stopped; 1 otherwise.
pub fn lsb_code(status: &ProxyStatus) -> i32 {
    let active = status.instances.iter().find(|i| i.active);
    let none_runs = status.instances.iter().all(|i| i.service.pid.is_none());
    match (&status.state, active) {
        (ProxyState::Running, Some(i)) => i.service.lsb_code,
        (ProxyState::Stopped, _) if none_runs => 3,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::idle_port;
    use crate::protocol::manifest::ProxySpec;

    #[test]
    fn the_idle_port_is_the_other_one_or_the_first() {
        let spec = ProxySpec {
            listen: "127.0.0.1:8080".into(),
            ports: [18081, 18082],
            port_env: "PORT".into(),
            drain_timeout_ms: 1,
            hold_ms: 1,
        };
        assert_eq!(idle_port(&spec, None), 18081);
        assert_eq!(idle_port(&spec, Some(18081)), 18082);
        assert_eq!(idle_port(&spec, Some(18082)), 18081);
        assert_eq!(idle_port(&spec, Some(9)), 18081);
    }
}
