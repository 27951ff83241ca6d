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
    /// The supervisor went back to this release by itself (`[restart]
    /// auto_revert`): when, from which release, why.
    #[serde(default)]
    pub auto_reverted: Option<String>,
}

wire_enum! {
    /// The blue/green proxy's state as `status` sees it.
    pub enum ProxyState {
        /// Its keeper lives and a worker answers on the control socket.
        Running => "running",
        /// The keeper lives, its worker does not answer (being restarted).
        Restarting => "restarting",
        /// The keeper is gone without having been stopped.
        Dead => "dead",
        /// Never started, or stopped.
        Stopped => "stopped",
    }
}

/// The proxy in front of a service with `[proxy]`, and both instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyStatus {
    /// Running, restarting, dead or stopped.
    pub state: ProxyState,
    /// The public address.
    pub listen: Option<String>,
    /// The instance port taking traffic.
    pub active: Option<u16>,
    /// The keeper's pid (proven against /proc).
    pub keeper_pid: Option<i32>,
    /// The serving worker's pid (proven against /proc).
    pub worker_pid: Option<i32>,
    /// Workers restarted after they died.
    pub restarts: u32,
    /// How the last worker ended, e.g. "killed by SIGKILL".
    pub last_exit: Option<String>,
    /// In-flight requests per instance port.
    pub inflight: Vec<(u16, u64)>,
    /// Both instances, in `ports` order (filled in by whoever knows the ports).
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,
    /// The runner's pid (it holds its lock, its recorded identity is alive).
    #[serde(default)]
    pub runner_pid: Option<i32>,
    /// When the runner (the live one, else the last one) started (RFC 3339).
    #[serde(default)]
    pub runner_started_at: Option<String>,
    /// The service as a whole: `running`, `stopped` (by request), `dead` (a
    /// part is missing), or the active instance's `starting`/`restarting`.
    /// `None` where only the proxy was looked at.
    #[serde(default)]
    pub service_state: Option<ServiceState>,
    /// LSB code of the whole (0 running, 1 dead, 3 stopped or starting).
    #[serde(default)]
    pub lsb_code: Option<i32>,
    /// Every part that is not (proven) alive, in the order runner, keeper,
    /// worker, active instance; empty when running or stopped as a whole.
    #[serde(default)]
    pub missing: Vec<MissingPart>,
    /// Whether the proxy serves, holds (`shipjar pause`) or answers with the
    /// maintenance page, as recorded on the host.
    #[serde(default)]
    pub traffic: Option<Traffic>,
    /// Requests the worker holds right now (paused).
    #[serde(default)]
    pub held: u64,
}

wire_enum! {
    /// What the proxy does with a new request (`shipjar pause`, `resume`,
    /// `maintenance`).
    pub enum TrafficMode {
        /// Sends it to the active instance.
        Serving => "serving",
        /// Holds it (up to `[proxy] hold`, then 503) until `resume`.
        Paused => "paused",
        /// Answers 503 with the maintenance page until `resume`.
        Maintenance => "maintenance",
    }
}

/// The proxy's traffic mode as the host records it (`run/NAME/proxy/traffic.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Serving, paused or maintenance.
    pub mode: TrafficMode,
    /// Since when (RFC 3339); `None` for a proxy never paused.
    #[serde(default)]
    pub since: Option<String>,
    /// Maintenance: the message the page shows.
    #[serde(default)]
    pub message: Option<String>,
    /// Maintenance: the `Retry-After` seconds the 503 carries.
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

impl Traffic {
    /// Serving, as a proxy starts when nothing else is recorded.
    pub fn serving() -> Traffic {
        Traffic {
            mode: TrafficMode::Serving,
            since: None,
            message: None,
            retry_after_s: None,
        }
    }

    /// "paused since T", "maintenance since T: message", "serving".
    pub fn line(&self) -> String {
        let since = self
            .since
            .as_deref()
            .map(|t| format!(" since {t}"))
            .unwrap_or_default();
        match (&self.mode, &self.message) {
            (TrafficMode::Serving, _) => "serving".to_string(),
            (TrafficMode::Maintenance, Some(m)) => format!("maintenance{since}: {m}"),
            (mode, _) => format!("{mode}{since}"),
        }
    }
}

wire_enum! {
    /// A part of a proxied service.
    pub enum Part {
        /// The runner: owns the whole, brings back a keeper that died.
        Runner => "runner",
        /// The proxy's keeper: holds the public socket, keeps a worker.
        Keeper => "keeper",
        /// The proxy's worker: serves the requests.
        Worker => "worker",
        /// The instance on the port the proxy sends traffic to.
        ActiveInstance => "active instance",
        /// The other instance (named only when it died, not when stopped).
        IdleInstance => "idle instance",
    }
}

/// A part of a proxied service that is not (proven) alive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingPart {
    /// Which part.
    pub part: Part,
    /// The instance's port, for the active instance.
    pub port: Option<u16>,
    /// What is wrong and since when, as far as the records tell.
    pub detail: String,
}

impl MissingPart {
    /// "missing runner: …", "missing active instance 18081: …".
    pub fn line(&self) -> String {
        match self.port {
            Some(port) => format!("missing {} {port}: {}", self.part, self.detail),
            None => format!("missing {}: {}", self.part, self.detail),
        }
    }
}

/// One of the two instances behind the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceStatus {
    /// Its port.
    pub port: u16,
    /// Whether the proxy sends traffic to it.
    pub active: bool,
    /// Its supervisor's view.
    pub service: ServiceStatus,
}

impl ProxyStatus {
    /// One line: state, address, pid, restarts and how the last worker
    /// ended; paused or in maintenance, since when.
    pub fn line(&self) -> String {
        let mut line = format!(
            "proxy {} on {}",
            self.state,
            self.listen.as_deref().unwrap_or("?")
        );
        if let Some(pid) = self.worker_pid {
            line += &format!(", pid {pid}");
        }
        if self.restarts > 0 {
            line += &format!(
                ", restarted {} time(s) (last: {})",
                self.restarts,
                self.last_exit.as_deref().unwrap_or("?")
            );
        }
        if let Some(t) = self
            .traffic
            .as_ref()
            .filter(|t| t.mode != TrafficMode::Serving)
        {
            line += &format!("; {}", t.line());
            if self.held > 0 {
                line += &format!(" ({} request(s) held)", self.held);
            }
        }
        line
    }

    /// One line per instance: port, whether it takes traffic, its state.
    pub fn instance_lines(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|i| {
                let mark = if i.active { "takes traffic" } else { "idle" };
                format!("instance {} ({mark}): {}", i.port, i.service.detail)
            })
            .collect()
    }
}

impl ServiceStatus {
    /// A status that says only its state, code and detail; everything else unknown.
    pub fn bare(state: ServiceState, lsb_code: i32, detail: String) -> ServiceStatus {
        ServiceStatus {
            state,
            lsb_code,
            pid: None,
            supervisor_pid: None,
            release: None,
            started_at: None,
            uptime_s: None,
            healthy: None,
            detail,
            reason: None,
            last_exit: None,
            last_exit_code: None,
            last_exit_signal: None,
            restarts: 0,
            next_restart_at: None,
            unsupervised_since: None,
            unhealthy_since: None,
            last_probe: None,
            auto_reverted: None,
        }
    }
}
