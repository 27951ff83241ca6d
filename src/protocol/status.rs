//! The service's lifecycle state and status report, as `service status`
//! prints it and as the agent sends it to the operator.

use serde::{Deserialize, Serialize};

use super::wire_enum;

wire_enum! {
    /// Lifecycle state as `status` sees it.
    pub enum ServiceState {
        /// Supervisor and service alive (identity proven), health gate passed.
        Running => "running",
        /// The first start or a restart is in its health gate.
        Starting => "starting",
        /// The supervisor is gone (the service may run on, unsupervised), or
        /// the pidfile names a process that is gone or is another one.
        Dead => "dead",
        /// Nothing running, no pidfile.
        Stopped => "stopped",
        /// Crashed; the supervisor restarts it after the back-off delay.
        Restarting => "restarting",
        /// Crashed too often: the supervisor gave up.
        Failed => "failed",
    }
}

/// Result of `service status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Lifecycle state.
    pub state: ServiceState,
    /// LSB exit code: 0 running, 1 dead or failed, 3 stopped, starting or restarting.
    pub lsb_code: i32,
    /// Service pid when running.
    pub pid: Option<i32>,
    /// Supervisor pid when running.
    pub supervisor_pid: Option<i32>,
    /// Release the running process was started from.
    pub release: Option<String>,
    /// When the service process started (RFC 3339, UTC).
    pub started_at: Option<String>,
    /// Seconds since the service process started.
    pub uptime_s: Option<u64>,
    /// Result of a health probe made now (None when not running).
    pub healthy: Option<bool>,
    /// Human-readable detail, e.g. "stale pidfile: pid 42 is another process".
    pub detail: String,
    /// Why the supervisor gave up (state `failed`).
    pub reason: Option<String>,
    /// How the last run ended, e.g. "exited with code 3".
    pub last_exit: Option<String>,
    /// Exit code of the last run, when it exited.
    pub last_exit_code: Option<i32>,
    /// Signal that ended the last run, e.g. "SIGKILL".
    pub last_exit_signal: Option<String>,
    /// Restarts after crashes by the current (or last) supervisor.
    pub restarts: u32,
    /// When the next restart is due, while restarting (RFC 3339).
    pub next_restart_at: Option<String>,
    /// State `dead` with the service still running: since when no supervisor
    /// owns it (the supervisor's last sign of life, RFC 3339).
    #[serde(default)]
    pub unsupervised_since: Option<String>,
    /// Since when the running service's health checks fail (RFC 3339);
    /// `None` while they pass.
    #[serde(default)]
    pub unhealthy_since: Option<String>,
    /// What the last failed health check got while unhealthy, e.g.
    /// "HTTP 500", "connection refused", "timed out after 2s".
    #[serde(default)]
    pub last_probe: Option<String>,
}
