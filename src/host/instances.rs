//! The two instances of a service behind `[proxy]`: each runs the release
//! its own link (`instances/<port>`) names, under its own supervisor; the
//! proxy sends traffic to one of them.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use serde::Serialize;

use crate::host::proxy::{self, ProxyStatus};
use crate::host::supervisor::{self, ServiceStatus, StartReport, SupervisorError};
use crate::protocol::files::fsync_dir;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;

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

/// One instance as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    /// Its port.
    pub port: u16,
    /// Whether the proxy sends traffic to it.
    pub active: bool,
    /// Its supervisor's status.
    pub status: ServiceStatus,
}

/// Both instances and the proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxiedStatus {
    /// The proxy.
    pub proxy: ProxyStatus,
    /// Both instances, in `ports` order.
    pub instances: Vec<InstanceStatus>,
}

impl ProxiedStatus {
    /// LSB code: 0 when the active instance runs behind a running proxy.
    pub fn lsb_code(&self) -> i32 {
        let active = self.instances.iter().find(|i| i.active);
        match (self.proxy.state, active) {
            (proxy::ProxyState::Running, Some(i)) => i.status.lsb_code,
            (proxy::ProxyState::Stopped, None) => 3,
            _ => 1,
        }
    }

    /// Plain lines for a terminal.
    pub fn lines(&self) -> Vec<String> {
        let p = &self.proxy;
        let mut proxy_line = format!(
            "proxy: {:?} on {}",
            p.state,
            p.listen.as_deref().unwrap_or("?")
        )
        .to_lowercase();
        if let Some(pid) = p.worker_pid {
            proxy_line += &format!(", pid {pid}");
        }
        if p.restarts > 0 {
            proxy_line += &format!(
                ", restarted {} time(s) (last: {})",
                p.restarts,
                p.last_exit.as_deref().unwrap_or("?")
            );
        }
        let mut lines = vec![proxy_line];
        for i in &self.instances {
            let mark = if i.active { "takes traffic" } else { "idle" };
            lines.push(format!("instance {} ({mark}): {}", i.port, i.status.detail));
        }
        lines
    }
}

/// The proxy and both instances, every pid proven.
pub fn status(layout: &Layout, spec: &ProxySpec) -> ProxiedStatus {
    let proxy = proxy::status(layout);
    let instances = spec
        .ports
        .iter()
        .map(|&port| InstanceStatus {
            port,
            active: proxy.active == Some(port),
            status: supervisor::status(&layout.with_instance(Some(port))),
        })
        .collect();
    ProxiedStatus { proxy, instances }
}
