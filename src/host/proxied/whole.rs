//! The proxied service as one whole under its runner: started (by the
//! unit's runner where systemd owns the service, else a detached one),
//! stopped, and kept supervised after a deploy or a restart.

use crate::host::error::HostError;
use std::fs;

use super::instances::{active_or_first, start_parts, stop_budget, stop_parts};
use super::runner;
use crate::host::supervisor::{self, StartReport};
use crate::host::{init, restart};
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;

/// `service start` of a proxied service: the whole comes up under its
/// runner — the unit's on a host where systemd owns the service, else a
/// detached one. A runner that lives already just makes sure of the parts.
pub fn start(layout: &Layout, spec: &ProxySpec) -> Result<StartReport, HostError> {
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
pub fn ensure_supervised(layout: &Layout, spec: &ProxySpec) -> Result<(), HostError> {
    if runner::is_held(layout) {
        return Ok(());
    }
    start(layout, spec).map(|_| ())
}

/// `systemctl start NAME`: the unit's runner starts (or adopts) the parts
/// and sends READY=1 once the active instance is healthy behind the proxy.
fn start_with_systemd(layout: &Layout, spec: &ProxySpec) -> Result<StartReport, HostError> {
    let unit = format!("{}.service", layout.name());
    let shipjar = init::this_binary().map_err(HostError::new)?;
    if init::refresh_unit(layout, &shipjar).map_err(HostError::new)? {
        restart::systemctl(&["daemon-reload"]).map_err(HostError::new)?;
    }
    let _ = restart::systemctl(&["reset-failed", "--", &unit]);
    restart::start_unit(&unit).map_err(HostError::new)?;
    let instance = layout.with_instance(active_or_first(layout, spec));
    let status = supervisor::status(&instance);
    match (status.pid, status.release) {
        (Some(pid), Some(release)) => Ok(StartReport {
            pid,
            release,
            healthy_after_ms: supervisor::healthy_after_ms(&instance).unwrap_or(0),
            already_running: false,
        }),
        _ => Err(HostError::new(format!(
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
            crate::host::os::procfs::stat(*pid)
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

/// `service stop` of a proxied service: its runner stops (it stops the
/// parts); then both instances and the proxy, whatever still runs.
pub fn stop(layout: &Layout, spec: &ProxySpec) -> Result<(), HostError> {
    runner::stop(layout, stop_budget(layout)).map_err(HostError::new)?;
    stop_parts(layout, spec)?;
    // A runner that had died before: the whole is stopped by request now.
    runner::record_stopped_without_it(layout).map_err(HostError::new)
}
