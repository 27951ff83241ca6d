//! Default values of `shipjar.toml` settings, in the config's units.
//!
//! What the host also needs (timeouts, restart, logs) is defined once in
//! `protocol::defaults` and only converted here; the rest is the config's own.

use crate::protocol::defaults::{self as shared, millis};

/// `[service] java`: the java program, looked up in `PATH`.
pub const JAVA: &str = "java";

/// `[health] start_timeout`: how long a start may take before it counts as failed.
pub const HEALTH_START_TIMEOUT_MS: u64 = millis(shared::START_TIMEOUT);
/// `[health] interval`: how often a running service is checked.
pub const HEALTH_INTERVAL_MS: u64 = millis(shared::HEALTH_INTERVAL);
/// `[health] failures`: consecutive failed checks before a restart.
pub const HEALTH_FAILURES: u32 = shared::HEALTH_FAILURES;
/// `[health] probe_timeout`: longest single check of a running service.
pub const HEALTH_PROBE_TIMEOUT_MS: u64 = millis(shared::HEALTH_PROBE_TIMEOUT);

/// `[health] settle` is at most this long (it delays every batch).
pub const SETTLE_MAX_MS: u64 = 30 * 60_000;

/// `[version_check] key`: the JSON key holding the version.
pub const VERSION_KEY: &str = "version";

/// `[stop] timeout`: SIGTERM, wait this long, then SIGKILL.
pub const STOP_TIMEOUT_MS: u64 = millis(shared::STOP_TIMEOUT);
/// `[stop] hook_timeout`: longest the drain hook may take.
pub const STOP_HOOK_TIMEOUT_MS: u64 = millis(shared::STOP_HOOK_TIMEOUT);

/// `[releases] keep`: releases kept on each host.
pub const RELEASES_KEEP: usize = 5;

/// `[restart] enabled`: a crashed service is restarted.
pub const RESTART_ENABLED: bool = shared::RESTART_ENABLED;
/// `[restart] initial_delay`: delay before the first restart.
pub const RESTART_INITIAL_DELAY_MS: u64 = millis(shared::RESTART_INITIAL_DELAY);
/// `[restart] max_delay`: longest delay between restarts.
pub const RESTART_MAX_DELAY_MS: u64 = millis(shared::RESTART_MAX_DELAY);
/// `[restart] factor`: each further failure multiplies the delay by this.
pub const RESTART_FACTOR: f64 = shared::RESTART_FACTOR;
/// `[restart] reset_after`: healthy this long and the back-off starts over.
pub const RESTART_RESET_AFTER_MS: u64 = millis(shared::RESTART_RESET_AFTER);
/// `[restart] max_failures`: this many failures within the window and the supervisor gives up.
pub const RESTART_MAX_FAILURES: u32 = shared::RESTART_MAX_FAILURES;
/// `[restart] window`: the window failures are counted in.
pub const RESTART_WINDOW_MS: u64 = millis(shared::RESTART_WINDOW);
/// `[restart] auto_revert`: go back to the previous healthy release on giving up soon after a deploy.
pub const RESTART_AUTO_REVERT: bool = shared::RESTART_AUTO_REVERT;
/// `[restart] revert_window`: how long after its deploy a release is auto-reverted.
pub const RESTART_REVERT_WINDOW_MS: u64 = millis(shared::RESTART_REVERT_WINDOW);

/// `[logs] max_size`: rotate once the service log would grow past this many bytes.
pub const LOG_MAX_SIZE: u64 = shared::LOG_MAX_SIZE;
/// `[logs] keep`: rotated files kept.
pub const LOG_KEEP: u32 = shared::LOG_KEEP;
/// `[logs] compress`: gzip rotated files.
pub const LOG_COMPRESS: bool = shared::LOG_COMPRESS;
/// `[logs] file`: the file in the log dir the service's output goes to.
pub const LOG_FILE: &str = shared::LOG_FILE;

/// `[stages.NAME] hosts`: without it a stage runs on this machine.
pub const STAGE_HOST: &str = super::hosts::LOCAL_HOST;
/// `[stages.NAME] agent_path`: where the shipjar binary lives on the hosts.
pub const AGENT_PATH: &str = "/usr/local/bin/shipjar";
/// `[stages.NAME] rolling.batch`: percentage of the stage's hosts switched at once.
pub const ROLLING_BATCH_PERCENT: u8 = 100;
/// `[stages.NAME] rolling.max_failed`: failed hosts a batch may have.
pub const ROLLING_MAX_FAILED: usize = 0;
/// `[stages.NAME] lock_lease` is this many times the longest deploy step
/// (start timeout + stop timeout), so a killed deploy's lock outlives any live step.
pub const LOCK_LEASE_STEPS: u64 = 2;
/// `[stages.NAME] lock_lease` is at least this long by default.
pub const LOCK_LEASE_MIN_MS: u64 = 120_000;
/// `[stages.NAME] lock_lease` set by hand may not be shorter than this.
pub const LOCK_LEASE_FLOOR_MS: u64 = 10_000;
/// `[stages.NAME] answer_timeout`: a host silent this long on a request
/// (no answer, no progress) is given up as unreachable.
pub const ANSWER_TIMEOUT_MS: u64 = 30_000;
/// `[stages.NAME] answer_timeout` may not be shorter than this.
pub const ANSWER_TIMEOUT_FLOOR_MS: u64 = 1_000;
/// `[stages.NAME] root` of an all-local stage: this directory of the project, then the stage name.
pub const LOCAL_ROOT_DIR: &str = ".shipjar";
/// `[stages.NAME] root` of a stage with remote hosts.
pub const REMOTE_ROOT: &str = "/";

/// `[proxy] port_env`: the variable that tells an instance its port.
pub const PROXY_PORT_ENV: &str = "PORT";
/// `[proxy] drain_timeout`: how long in-flight requests on the old instance may take.
pub const PROXY_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// `[proxy] hold`: how long a new request waits while no instance is healthy.
pub const PROXY_HOLD_MS: u64 = 10_000;
/// `[proxy] header_timeout`: longest a client may take to send a request's head.
pub const PROXY_HEADER_TIMEOUT_MS: u64 = millis(shared::PROXY_HEADER_TIMEOUT);
/// `[proxy] idle_timeout`: longest a keep-alive connection may sit between requests.
pub const PROXY_IDLE_TIMEOUT_MS: u64 = millis(shared::PROXY_IDLE_TIMEOUT);
/// `[proxy] max_connections`: client connections served at once.
pub const PROXY_MAX_CONNECTIONS: u32 = shared::PROXY_MAX_CONNECTIONS;

/// Longest a secret's `command` may run unless its `timeout` says otherwise.
pub const SECRET_COMMAND_TIMEOUT_MS: u64 = 30_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::config::schema::{Logs, Restart};
    use crate::protocol::manifest::{LogSpec, RestartSpec, StopSpec};

    /// The manifest repeats some defaults (for manifests written without them);
    /// both must agree until it takes them from here.
    #[test]
    fn manifest_defaults_agree() {
        assert_eq!(
            RestartSpec::from(&Restart::default()),
            RestartSpec::default()
        );
        assert_eq!(LogSpec::from(&Logs::default()), LogSpec::default());
        let stop: StopSpec =
            serde_json::from_str(r#"{"timeout_ms": 1, "thread_dump": false}"#).unwrap();
        assert_eq!(stop.hook_timeout_ms, STOP_HOOK_TIMEOUT_MS);
    }
}
