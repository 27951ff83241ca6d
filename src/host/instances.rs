//! The two instances of a service behind `[proxy]`: each runs the release
//! its own link (`instances/<port>`) names, under its own supervisor; the
//! proxy sends traffic to one of them.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use std::time::{Duration, Instant};

use crate::host::proxy::{self, ProxyState, ProxyStatus, runner};
use crate::host::supervisor::{self, ReloadReport, StartReport, SupervisorError};
use crate::host::{init, restart};
use crate::protocol::defaults::SUPERVISOR_GRACE;
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

/// The instance that takes traffic, or the first port when none is recorded.
pub fn active_or_first(layout: &Layout, spec: &ProxySpec) -> Option<u16> {
    Some(
        proxy::active(layout)
            .filter(|p| spec.ports.contains(p))
            .unwrap_or(spec.ports[0]),
    )
}

fn fail(message: String) -> SupervisorError {
    SupervisorError {
        message,
        log_tail: Vec::new(),
    }
}

/// `service start` of a proxied service: the whole comes up under its
/// runner — the unit's on a host where systemd owns the service, else a
/// detached one. A runner that lives already just makes sure of the parts.
pub fn start(layout: &Layout, spec: &ProxySpec) -> Result<StartReport, SupervisorError> {
    if runner::is_held(layout) {
        return start_parts(layout, spec);
    }
    if restart::systemd_owned(layout) {
        return start_with_systemd(layout, spec);
    }
    runner::spawn_detached(layout)
}

/// After a deploy or a restart: the whole is left under a runner (which
/// adopts the instance and the proxy that run).
pub fn ensure_supervised(layout: &Layout, spec: &ProxySpec) -> Result<(), SupervisorError> {
    if runner::is_held(layout) {
        return Ok(());
    }
    start(layout, spec).map(|_| ())
}

/// `systemctl start NAME`: the unit's runner starts (or adopts) the parts
/// and sends READY=1 once the active instance is healthy behind the proxy.
fn start_with_systemd(layout: &Layout, spec: &ProxySpec) -> Result<StartReport, SupervisorError> {
    let unit = format!("{}.service", layout.name());
    let shipjar = init::this_binary().map_err(fail)?;
    if init::refresh_unit(layout, &shipjar).map_err(fail)? {
        restart::systemctl(&["daemon-reload"]).map_err(fail)?;
    }
    let _ = restart::systemctl(&["reset-failed", "--", &unit]);
    restart::start_unit(&unit).map_err(fail)?;
    let instance = layout.with_instance(active_or_first(layout, spec));
    let status = supervisor::status(&instance);
    match (status.pid, status.release) {
        (Some(pid), Some(release)) => Ok(StartReport {
            pid,
            release,
            healthy_after_ms: supervisor::healthy_after_ms(&instance).unwrap_or(0),
            already_running: false,
        }),
        _ => Err(fail(format!(
            "systemctl start {unit} succeeded, but the active instance is not running: {}",
            status.detail
        ))),
    }
}

/// On a host where systemd owns the service and its unit runs: moves every
/// process of the session `leader` leads (an instance's supervisor and its
/// JVM, started by a deploy from an ssh session) into the unit's cgroup, so
/// the unit's stop, accounting and `systemctl status` cover it as they do
/// what the unit started itself. `Ok(0)` when the unit does not run.
pub fn adopt_into_unit(layout: &Layout, leader: i32) -> Result<usize, String> {
    // The unit's cgroup is its main process's (the runner's), under the
    // cgroup2 mount; nothing to do without either.
    let Some(runner) = runner::pid(layout) else {
        return Ok(0);
    };
    let Some(group) = fs::read_to_string(format!("/proc/{runner}/cgroup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .filter(|g| g.ends_with(&format!("/{}.service", layout.name())))
    else {
        return Ok(0);
    };
    let Some(mount) = cgroup2_mount() else {
        return Ok(0);
    };
    let procs = mount
        .join(group.trim_start_matches('/'))
        .join("cgroup.procs");
    let members: Vec<i32> = fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            crate::host::supervisor::procfs::stat(*pid)
                .ok()
                .flatten()
                .is_some_and(|s| s.session == leader)
        })
        .collect();
    for pid in &members {
        fs::write(&procs, pid.to_string())
            .map_err(|e| format!("cannot move pid {pid} into {}: {e}", procs.display()))?;
    }
    Ok(members.len())
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup` as a rule).
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))
            .flatten()
    })
}

/// The parts, as the runner brings them up: the active instance (the first
/// port when none was) from `current`, healthy, the proxy, traffic switched
/// to the instance. What runs already is kept.
pub fn start_parts(layout: &Layout, spec: &ProxySpec) -> Result<StartReport, SupervisorError> {
    let port = active_or_first(layout, spec).unwrap_or(spec.ports[0]);
    let instance = layout.with_instance(Some(port));
    if supervisor::status(&instance).pid.is_none() {
        let id =
            crate::host::store::current(layout).ok_or_else(|| fail("no current release".into()))?;
        link(layout, port, &id).map_err(fail)?;
    }
    let report = supervisor::start(&instance)?;
    proxy::ensure_running(layout, spec).map_err(fail)?;
    proxy::switch(layout, Some(port)).map_err(fail)?;
    Ok(report)
}

/// `service stop` of a proxied service: its runner stops (it stops the
/// parts); then both instances and the proxy, whatever still runs.
pub fn stop(layout: &Layout, spec: &ProxySpec) -> Result<(), SupervisorError> {
    runner::stop(layout, stop_budget(layout)).map_err(fail)?;
    stop_parts(layout, spec)
}

/// How long a runner may take to stop both instances and the proxy.
fn stop_budget(layout: &Layout) -> Duration {
    let stop = crate::host::store::current(layout)
        .and_then(|id| crate::host::store::read_manifest(layout, &id).ok())
        .map_or(crate::protocol::defaults::STOP_TIMEOUT, |m| {
            Duration::from_millis(m.stop.timeout_ms + m.stop.hook_timeout_ms)
        });
    (stop + SUPERVISOR_GRACE) * 2 + Duration::from_secs(10)
}

/// Both instances stopped, then the proxy (no instance takes traffic).
pub fn stop_parts(layout: &Layout, spec: &ProxySpec) -> Result<(), SupervisorError> {
    for port in spec.ports {
        supervisor::stop(&layout.with_instance(Some(port)))?;
    }
    proxy::stop(layout).map_err(fail)?;
    Ok(())
}

/// `service restart` of a proxied service, without downtime: `current`
/// started as the idle instance, gated, switched to, the old one drained
/// and stopped (as a deploy does, without hooks); left under a runner.
pub fn restart(
    layout: &Layout,
    spec: &ProxySpec,
    emit: &dyn Fn(&str, &str),
) -> Result<StartReport, SupervisorError> {
    let _switching = switch_lock(layout)?;
    crate::host::activate::blue_green::restart(layout, spec, emit)
}

fn switch_lock(layout: &Layout) -> Result<crate::host::lockfile::HeldLock, SupervisorError> {
    crate::host::activate::hold_switch(layout).map_err(|message| SupervisorError {
        message,
        log_tail: Vec::new(),
    })
}

/// `service reload` of a proxied service: `[reload] signal` to the instance
/// taking traffic, or a restart without downtime.
pub fn reload(
    layout: &Layout,
    spec: &ProxySpec,
    emit: &dyn Fn(&str, &str),
) -> Result<ReloadReport, SupervisorError> {
    let signal = crate::host::store::current(layout)
        .and_then(|id| crate::host::store::read_manifest(layout, &id).ok())
        .and_then(|m| m.reload.signal);
    let started = Instant::now();
    let switching = switch_lock(layout)?;
    if signal.is_some() {
        return supervisor::reload(&layout.with_instance(active_or_first(layout, spec)));
    }
    let report = crate::host::activate::blue_green::restart(layout, spec, emit)?;
    drop(switching);
    Ok(ReloadReport {
        how: format!(
            "restarted without downtime: pid {} from release {}, healthy after {} ms",
            report.pid, report.release, report.healthy_after_ms
        ),
        took_ms: started.elapsed().as_millis() as u64,
    })
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
            header_timeout_ms: 1,
            idle_timeout_ms: 1,
            upstream_timeout_ms: None,
            max_connections: 1,
            trusted_proxies: Vec::new(),
        };
        assert_eq!(idle_port(&spec, None), 18081);
        assert_eq!(idle_port(&spec, Some(18081)), 18082);
        assert_eq!(idle_port(&spec, Some(18082)), 18081);
        assert_eq!(idle_port(&spec, Some(9)), 18081);
    }
}
