//! The host-side supervisor: starts the service from `current`, reports
//! "started" only once it is healthy, tracks it by pid + start time, and stops
//! it gracefully. `service start` spawns `service supervise` detached.
//! Nothing is signalled because a file names it: every pid is proven
//! against `/proc` first (see `identity`).

pub(crate) mod auto_revert;
mod backoff;
mod cds;
pub(crate) mod cds_share;
mod control;
mod health;
#[allow(clippy::disallowed_methods)] // root-only: /proc, the shipjar binary, root's releases/
mod identity;
pub(crate) mod logfile;
mod logpipe;
mod observe;
pub use observe::last_sign_of_life;
mod privileges;
pub(crate) mod readiness;
#[allow(clippy::disallowed_methods)]
// root-only: `current` and releases/ in root's 0755 var/lib/NAME
pub(crate) mod release;
mod rotate;
pub(crate) mod spawn;

pub use spawn::CLEAN_PATH;
#[allow(clippy::disallowed_methods)] // root-only: pidfile and state in root's run/NAME
mod state;
pub use state::{ClassDataUse, Phase, SupervisorState};
mod status;
mod stopping;
mod supervise;

use crate::host::error::HostError;
use std::time::Duration;

use crate::host::os::procfs;

use serde::{Deserialize, Serialize};

use crate::protocol::layout::Layout;
pub use crate::protocol::status::{ServiceState, ServiceStatus};

/// What `service start` reports when the service is up and healthy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartReport {
    /// Pid of the service process (the JVM).
    pub pid: i32,
    /// Release id the process was started from.
    pub release: String,
    /// Milliseconds from spawn to the first passing health check.
    pub healthy_after_ms: u64,
    /// True when it was already running and nothing was started.
    pub already_running: bool,
}

/// What `service start` and `service restart` did: the start, and the
/// unsupervised service (its supervisor gone) they stopped first, if any.
#[derive(Debug, Clone, Serialize)]
pub struct StartOutcome {
    /// The healthy start.
    #[serde(flatten)]
    pub report: StartReport,
    /// Pid of the unsupervised service that was stopped to make way.
    pub replaced_pid: Option<i32>,
    /// How it ended, e.g. "terminated after SIGTERM".
    pub replaced_how: Option<String>,
}

/// What `service stop` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    /// False when nothing was running (stop still succeeds).
    pub was_running: bool,
    /// How the service ended, e.g. "exited 143 after SIGTERM" or "killed by SIGKILL".
    pub how: String,
    /// Milliseconds the stop took.
    pub took_ms: u64,
    /// Exit code of the main process, when it exited.
    pub exit_code: Option<i32>,
    /// Signal that ended the main process, e.g. "SIGTERM" or "SIGKILL".
    pub signal: Option<String>,
    /// Ended on SIGTERM alone with 0, 143 or death by SIGTERM; `None` when unknown.
    pub clean: Option<bool>,
    /// A SIGQUIT asked it for a thread dump (look in the log).
    pub thread_dump: bool,
    /// The service ran without a supervisor (it died): its pid.
    pub unsupervised_pid: Option<i32>,
}

/// What `service reload` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// What the reload did, e.g. "sent SIGHUP to pid 4242" or
    /// "restarted: pid 4300 from release R, healthy after 412 ms".
    pub how: String,
    /// Milliseconds it took.
    pub took_ms: u64,
}

/// Starts the service from `current` and returns once it is healthy; a
/// service left running by a dead supervisor is stopped first.
pub fn start(layout: &Layout) -> Result<StartReport, HostError> {
    control::start(layout).map(|o| o.report)
}

/// Like [`start`], saying which unsupervised service it replaced.
pub fn start_outcome(layout: &Layout) -> Result<StartOutcome, HostError> {
    control::start(layout)
}

/// Stops the service gracefully; succeeds when it was not running.
pub fn stop(layout: &Layout) -> Result<StopReport, HostError> {
    control::stop(layout)
}

/// Stops, then starts through the health gate.
pub fn restart(layout: &Layout) -> Result<StartOutcome, HostError> {
    let stopped = stop(layout)?;
    let mut outcome = control::start(layout)?;
    if let Some(pid) = stopped.unsupervised_pid {
        outcome.replaced_pid = Some(pid);
        outcome.replaced_how = Some(stopped.how);
    }
    Ok(outcome)
}

/// Reloads the service: its `[reload] signal`, or a restart through the
/// health gate (into the release `current` points to).
pub fn reload(layout: &Layout) -> Result<ReloadReport, HostError> {
    control::reload(layout)
}

/// Reports the service's state, verifying pid identity.
pub fn status(layout: &Layout) -> ServiceStatus {
    status::status(layout)
}

/// The supervisor's state file as recorded: advisory, nothing in it proven.
pub fn recorded_state(layout: &Layout) -> Option<SupervisorState> {
    state::read_state(&layout.supervisor_state())
}

/// Milliseconds from spawn to healthy of the service's current run, as its
/// supervisor recorded it: how long a start made by systemd took.
pub fn healthy_after_ms(layout: &Layout) -> Option<u64> {
    state::read_state(&layout.supervisor_state()).and_then(|s| s.healthy_after_ms)
}

/// One liveness probe of `check`, at most `timeout` long; what it found when it failed.
pub fn probe_health(
    check: &crate::protocol::manifest::HealthCheck,
    timeout: Duration,
) -> Result<(), String> {
    health::probe_once(check, timeout).map_err(|e| e.to_string())
}

/// How a watched run ended.
pub struct RunEnd {
    /// What ended it, e.g. "exited with code 3".
    pub how: String,
    /// The supervisor has recorded it (else only the process is seen gone).
    pub recorded: bool,
}

/// How the run of service `pid` ended, as its supervisor recorded it; `None`
/// while that same process still runs and counts as running. A restart by
/// the supervisor is an end too: the run being watched is gone.
pub fn run_ended(layout: &Layout, pid: i32) -> Option<RunEnd> {
    let Some(state) = state::read_state(&layout.supervisor_state()) else {
        return Some(RunEnd {
            how: "its supervisor's state file is gone".into(),
            recorded: true,
        });
    };
    let recorded = |fallback: String| RunEnd {
        how: state.last_exit.clone().unwrap_or(fallback),
        recorded: true,
    };
    match state.service {
        Some(id) if id.pid == pid => {
            if state.state != state::Phase::Running {
                Some(recorded(format!(
                    "its supervisor says {}",
                    state.state.as_str()
                )))
            } else if procfs::liveness(id) != procfs::Liveness::Alive {
                Some(RunEnd {
                    how: format!("pid {pid} is gone"),
                    recorded: false,
                })
            } else {
                None
            }
        }
        Some(id) => Some(recorded(format!("restarted as pid {}", id.pid))),
        None => Some(recorded(format!(
            "its supervisor says {}",
            state.state.as_str()
        ))),
    }
}

/// Body of the detached supervisor process; returns its exit code.
pub fn supervise(layout: &Layout) -> i32 {
    supervise::run(layout, supervise::Mode::Detached)
}

/// `service run`: supervises in the foreground (for systemd and other
/// process managers), speaking sd_notify when `NOTIFY_SOCKET` is set.
/// Returns 0 after a requested stop, 1 when the start failed or it gave up.
pub fn run(layout: &Layout) -> i32 {
    supervise::run(layout, supervise::Mode::Foreground)
}

/// `5s`, `1m 30s`, `1s 500ms`: durations as people write them.
fn human_duration(d: Duration) -> String {
    // Sub-millisecond noise would print as `1s 2ms 345us 1ns`.
    let d = Duration::from_millis(d.as_millis() as u64);
    humantime::format_duration(d).to_string()
}
