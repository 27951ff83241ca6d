//! Every default, defined once: what `shipjar.toml` means when it leaves a
//! key out, what the host falls back to before the first release exists
//! (the systemd unit, the init script, `service stop` without a manifest),
//! and the grace the host gives a supervisor beyond its own limits.

use std::time::Duration;

/// `[health] start_timeout`: how long a start may take before it counts as failed.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// `[health] interval`: how often the service is checked once running.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// `[health] failures`: consecutive failed checks of a running service
/// before the supervisor restarts it.
pub const HEALTH_FAILURES: u32 = 3;

/// `[health] probe_timeout`: longest single health check of a running
/// service (never longer than the interval).
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest `[health] probe_timeout` allowed: the supervisor answers no
/// signal and feeds no systemd watchdog while a check runs.
pub const HEALTH_PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(10);

/// `[stop] timeout`: SIGTERM, wait this long, then SIGKILL the process group.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `[stop] hook_timeout`: longest the stop hook may take.
pub const STOP_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// `[restart] enabled`: a crashed service is restarted.
pub const RESTART_ENABLED: bool = true;

/// `[restart] initial_delay`: delay before the first restart after a crash.
pub const RESTART_INITIAL_DELAY: Duration = Duration::from_secs(1);

/// `[restart] max_delay`: longest delay between restarts.
pub const RESTART_MAX_DELAY: Duration = Duration::from_secs(60);

/// `[restart] factor`: each further failure multiplies the delay by this.
pub const RESTART_FACTOR: f64 = 2.0;

/// `[restart] reset_after`: healthy this long, the back-off starts over.
pub const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);

/// `[restart] max_failures`: this many failures within the window and the
/// supervisor gives up.
pub const RESTART_MAX_FAILURES: u32 = 5;

/// `[restart] window`: the window failures are counted in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// `[restart] auto_revert`: a release the supervisor gives up on soon after
/// its deploy is replaced by the previous healthy one.
pub const RESTART_AUTO_REVERT: bool = false;

/// `[restart] revert_window`: how long after its deploy a release given up
/// on is auto-reverted.
pub const RESTART_REVERT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// `[logs] max_size`: rotate once the log would grow past this many bytes.
pub const LOG_MAX_SIZE: u64 = 10 * 1024 * 1024;

/// `[logs] keep`: rotated files kept.
pub const LOG_KEEP: u32 = 5;

/// `[logs] compress`: gzip rotated files.
pub const LOG_COMPRESS: bool = false;

/// `[logs] file`: the file in the log dir the service's output goes to. Not
/// `NAME.log`: that is the name a service's own logging config tends to use.
pub const LOG_FILE: &str = "console.log";

/// `[proxy] header_timeout`: longest a client may take to send a request's
/// head, from its first byte (a connection sending half a head is closed).
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// `[proxy] idle_timeout`: longest a client's keep-alive connection may sit
/// between requests before the proxy closes it.
pub const PROXY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `[proxy] max_connections`: client connections the proxy serves at once;
/// one more is answered 503 and closed.
pub const PROXY_MAX_CONNECTIONS: u32 = 512;

/// How much longer than the supervisor's own start or stop limit a watcher
/// (`service start/stop/reload`, systemd's `TimeoutStartSec`/`TimeoutStopSec`)
/// waits before it treats the supervisor as hung: the supervisor enforces
/// the real limit and reports.
pub const SUPERVISOR_GRACE: Duration = Duration::from_secs(10);

/// A duration in the release manifest's unit, milliseconds.
pub const fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}
