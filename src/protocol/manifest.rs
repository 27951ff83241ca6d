//! The `RELEASE` manifest: everything the host needs to run one release.
//!
//! The operator builds it (planning), the agent writes it into the release
//! directory, and the supervisor runs the service from it. Because a release
//! carries its own run spec, a rollback restores the old environment too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::defaults;
use super::net::IpRange;

/// Manifest format version, bumped on incompatible changes.
pub const MANIFEST_FORMAT: u32 = 1;

/// File name of the manifest inside a release directory.
pub const MANIFEST_FILE: &str = "RELEASE";

/// One release, as recorded in `releases/<id>/RELEASE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// Always [`MANIFEST_FORMAT`] when written by this version.
    pub format: u32,
    /// Release id, the same on every host of a deploy.
    pub id: String,
    /// Service name.
    pub service: String,
    /// The version this release should report.
    pub version: String,
    /// sha256 of the artifact, hex.
    pub artifact_sha256: String,
    /// File name of the artifact link inside the release (`[service].jar`).
    pub jar: String,
    /// Git commit the artifact was built from, if known.
    pub git_commit: Option<String>,
    /// When the artifact was built (RFC 3339, UTC).
    pub build_time: String,
    /// When this release was created (RFC 3339, UTC).
    pub deployed_at: String,
    /// `user@machine` of whoever deployed it.
    pub deployer: String,
    /// Stage name.
    pub stage: String,
    /// Host name as written in the stage.
    pub host: String,
    /// How to run the service.
    pub run: RunSpec,
    /// How to tell that the service is healthy.
    pub health: HealthSpec,
    /// How to ask the service which version it runs.
    pub version_check: Option<VersionCheckSpec>,
    /// How to stop the service.
    pub stop: StopSpec,
    /// Config files rendered into `config/`.
    pub files: Vec<ManifestFile>,
    /// When and how often to restart a crashed service.
    #[serde(default)]
    pub restart: RestartSpec,
    /// Rotation of the service log.
    #[serde(default)]
    pub logs: LogSpec,
    /// What `service reload` does.
    #[serde(default)]
    pub reload: ReloadSpec,
    /// Deploy hooks run on the host around its switch (never on a rollback).
    #[serde(default)]
    pub hooks: HostHooks,
    /// Blue/green behind shipjar's proxy; `None`: one instance, restarted in place.
    #[serde(default)]
    pub proxy: Option<ProxySpec>,
}

/// Two instances of the service behind shipjar's own HTTP proxy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// The public address the proxy listens on, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// The two instance ports (on 127.0.0.1); a deploy starts the idle one.
    pub ports: [u16; 2],
    /// The environment variable that tells an instance its port.
    pub port_env: String,
    /// How long in-flight requests on the old instance may take to finish.
    pub drain_timeout_ms: u64,
    /// How long a new request waits while no instance is healthy.
    pub hold_ms: u64,
    /// Longest a client may take to send a request's head, from its first byte.
    #[serde(default = "default_proxy_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Longest a client's keep-alive connection may sit between requests.
    #[serde(default = "default_proxy_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Longest the instance may take to answer a request's head (504 after);
    /// `None`: as long as it takes.
    #[serde(default)]
    pub upstream_timeout_ms: Option<u64>,
    /// Client connections served at once; more are answered 503.
    #[serde(default = "default_proxy_max_connections")]
    pub max_connections: u32,
    /// Peers whose `Forwarded`/`X-Forwarded-*`/`X-Real-IP` headers are kept
    /// (and whose `X-Forwarded-For` is appended to); everyone else's are dropped.
    #[serde(default)]
    pub trusted_proxies: Vec<IpRange>,
    /// Largest request body passed on (413 over it); `None`: no limit.
    #[serde(default)]
    pub max_request_body: Option<u64>,
    /// Largest response body passed on (502 over it, or the connection
    /// cut once its head went out); `None`: no limit.
    #[serde(default)]
    pub max_response_body: Option<u64>,
    /// One JSON line per request in `access.log` in the service's log dir.
    #[serde(default)]
    pub access_log: bool,
    /// `[metrics] listen`: where the proxy serves the Prometheus scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// `[proxy] tls`: TLS terminated on `listen` (paths on the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<TlsSpec>>,
}

/// TLS on the proxy's address: PEM files on the host, read again when they change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// The certificate chain, PEM, the server's certificate first.
    pub cert: String,
    /// Its private key, PEM (readable by the service's user, who runs the proxy).
    pub key: String,
    /// A plain-HTTP address answering every request with 308 to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<String>,
}

fn default_proxy_header_timeout_ms() -> u64 {
    defaults::millis(defaults::PROXY_HEADER_TIMEOUT)
}

fn default_proxy_idle_timeout_ms() -> u64 {
    defaults::millis(defaults::PROXY_IDLE_TIMEOUT)
}

fn default_proxy_max_connections() -> u32 {
    defaults::PROXY_MAX_CONNECTIONS
}

/// The deploy hooks a release carries for its own activation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostHooks {
    /// Run just before the host switches to this release (the old one still serves).
    pub before_start: Option<HookSpec>,
    /// Run once this release is healthy and reports its version.
    pub after_switch: Option<HookSpec>,
}

/// One hook: a command (argv, no shell) and how long it may take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    /// Program and arguments; `argv[0]` is looked up in the service's clean `PATH`.
    pub argv: Vec<String>,
    /// Killed (its whole process group) after this long; the hook then fails.
    pub timeout_ms: u64,
}

/// The process to run, relative to the release directory (its working directory).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Program and arguments; `argv[0]` is looked up in the clean `PATH`.
    pub argv: Vec<String>,
    /// Environment on top of a clean base environment.
    pub env: BTreeMap<String, String>,
    /// Unix user to run as when the supervisor runs as root.
    pub user: Option<String>,
    /// Keep a class-data sharing archive of this release (a `java -jar` service).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cds: bool,
}

/// Health check and its timing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// What to probe.
    pub check: HealthCheck,
    /// How long a start may take before it counts as failed.
    pub start_timeout_ms: u64,
    /// Poll interval once running.
    pub interval_ms: u64,
    /// Consecutive failed checks of a running service before it is restarted.
    #[serde(default = "default_health_failures")]
    pub failures: u32,
    /// Longest single check of a running service (the host caps it at the interval).
    #[serde(default = "default_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// How long the release must stay up and healthy after its gate before it
    /// counts as activated (0: the gate alone decides).
    #[serde(default)]
    pub settle_ms: u64,
}

fn default_health_failures() -> u32 {
    defaults::HEALTH_FAILURES
}

fn default_probe_timeout_ms() -> u64 {
    defaults::millis(defaults::HEALTH_PROBE_TIMEOUT)
}

/// What the supervisor probes to decide the service is healthy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthCheck {
    /// An HTTP GET answering 2xx.
    Http {
        /// Full URL, e.g. `http://127.0.0.1:8080/health`.
        url: String,
    },
    /// A TCP connect to 127.0.0.1.
    Tcp {
        /// Port.
        port: u16,
    },
    /// No check: running counts as healthy.
    None,
}

/// The service's own version endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionCheckSpec {
    /// URL answering JSON.
    pub url: String,
    /// Top-level key holding the version.
    pub key: String,
}

/// Graceful stop settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StopSpec {
    /// SIGTERM, wait this long, then SIGKILL the process group.
    pub timeout_ms: u64,
    /// SIGQUIT the main process once at half the timeout (a JVM thread dump).
    #[serde(default)]
    pub thread_dump: bool,
    /// Asked before any signal, to drain the service.
    #[serde(default)]
    pub hook: Option<StopHook>,
    /// Longest the hook may take.
    #[serde(default = "default_hook_timeout_ms")]
    pub hook_timeout_ms: u64,
}

fn default_hook_timeout_ms() -> u64 {
    defaults::millis(defaults::STOP_HOOK_TIMEOUT)
}

/// What a graceful stop asks before signalling.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StopHook {
    /// An HTTP POST (empty body) to a URL on the host.
    Http {
        /// Full `http://` URL.
        url: String,
    },
    /// A command, run like the service (its user, environment and directory).
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// Crash restarts with exponential back-off and a burst limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestartSpec {
    /// Restart at all; when false a crash leaves the service dead.
    pub enabled: bool,
    /// Delay before the first restart after a crash.
    pub initial_delay_ms: u64,
    /// Longest delay between restarts.
    pub max_delay_ms: u64,
    /// Each further failure multiplies the delay by this.
    pub factor: f64,
    /// Healthy this long, the back-off starts over.
    pub reset_after_ms: u64,
    /// This many failures within `window_ms` and the supervisor gives up.
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window_ms: u64,
    /// On giving up within `revert_window_ms` of this release's deploy, the
    /// supervisor puts the host back on the previous healthy release.
    pub auto_revert: bool,
    /// How long after its deploy a release given up on is auto-reverted.
    pub revert_window_ms: u64,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            enabled: defaults::RESTART_ENABLED,
            initial_delay_ms: defaults::millis(defaults::RESTART_INITIAL_DELAY),
            max_delay_ms: defaults::millis(defaults::RESTART_MAX_DELAY),
            factor: defaults::RESTART_FACTOR,
            reset_after_ms: defaults::millis(defaults::RESTART_RESET_AFTER),
            max_failures: defaults::RESTART_MAX_FAILURES,
            window_ms: defaults::millis(defaults::RESTART_WINDOW),
            auto_revert: defaults::RESTART_AUTO_REVERT,
            revert_window_ms: defaults::millis(defaults::RESTART_REVERT_WINDOW),
        }
    }
}

/// Where the service's output goes in the log dir, and its rotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSpec {
    /// Rotate once the log would grow past this many bytes; 0 never rotates.
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: u32,
    /// Gzip rotated files.
    pub compress: bool,
    /// File name inside the log dir (one plain name, see `names::file_name`).
    pub file: String,
    /// Where the output goes: the file, or journald.
    pub to: LogTarget,
}

/// Where the service's output (and the supervisor's events) go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// `[logs] file` in the log dir, rotated by the supervisor.
    #[default]
    File,
    /// journald, identifier the service's name (systemd hosts).
    Journal,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec {
            to: LogTarget::File,
            file: defaults::LOG_FILE.to_string(),
            max_size: defaults::LOG_MAX_SIZE,
            keep: defaults::LOG_KEEP,
            compress: defaults::LOG_COMPRESS,
        }
    }
}

/// What `service reload` does.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSpec {
    /// Signal sent to the service's main process, e.g. `SIGHUP`; `None`:
    /// reload restarts the service through the health gate.
    pub signal: Option<String>,
}

/// A config file of the release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Path relative to `config/`.
    pub dest: String,
    /// Written 0600 (0640 root:group as root); never printed.
    pub secret: bool,
    /// sha256 of the content; omitted for secrets (a hash of a short secret leaks it).
    pub sha256: Option<String>,
}

/// Room beyond the summed timeouts of an activation: systemd's own margins
/// around the unit's start and stop, process start-up, file syncs.
const ACTIVATION_MARGIN_MS: u64 = 60_000;

/// The longest an activation of `target` can take on a host whose current
/// release is `current`, every step running to its own timeout: the old
/// release stopped, the hooks, the new one started, checked and settled, the proxy's
/// drain, and the same again backwards for a revert. A host silent longer
/// than this is stuck, whatever it is doing.
pub fn activation_bound_ms(current: Option<&ReleaseManifest>, target: &ReleaseManifest) -> u64 {
    let stop = |m: &ReleaseManifest| {
        m.stop.timeout_ms + m.stop.hook.as_ref().map_or(0, |_| m.stop.hook_timeout_ms)
    };
    let start = |m: &ReleaseManifest| {
        m.health.start_timeout_ms
            + m.version_check
                .as_ref()
                .map_or(0, |_| m.health.probe_timeout_ms)
    };
    let hooks = |m: &ReleaseManifest| {
        [&m.hooks.before_start, &m.hooks.after_switch]
            .into_iter()
            .flatten()
            .map(|h| h.timeout_ms)
            .sum::<u64>()
    };
    let drain = |m: &ReleaseManifest| m.proxy.as_ref().map_or(0, |p| p.drain_timeout_ms);
    // Settling is the new release's alone: a revert is not watched again.
    let forward = current.map_or(0, stop)
        + hooks(target)
        + start(target)
        + target.health.settle_ms
        + drain(target);
    let back = stop(target) + current.map_or(0, |c| start(c) + drain(c));
    forward + back + ACTIVATION_MARGIN_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(start_ms: u64, stop_ms: u64) -> ReleaseManifest {
        serde_json::from_value(serde_json::json!({
            "format": 1, "id": "r", "service": "demo", "version": "1",
            "artifact_sha256": "0", "jar": "demo.jar", "git_commit": null, "build_time": "t",
            "deployed_at": "t", "deployer": "me@box", "stage": "test", "host": "local",
            "run": {"argv": ["java"], "env": {}, "user": null},
            "health": {"check": {"kind": "none"}, "start_timeout_ms": start_ms, "interval_ms": 1000},
            "version_check": null,
            "stop": {"timeout_ms": stop_ms},
            "files": [],
        }))
        .expect("a manifest")
    }

    #[test]
    fn an_activation_is_bounded_by_both_releases_timeouts_there_and_back() {
        let old = manifest(90_000, 30_000);
        let new = manifest(20_000, 5_000);
        assert_eq!(
            activation_bound_ms(Some(&old), &new),
            30_000 + 20_000 + 5_000 + 90_000 + ACTIVATION_MARGIN_MS
        );
        assert_eq!(
            activation_bound_ms(None, &new),
            20_000 + 5_000 + ACTIVATION_MARGIN_MS
        );
        let mut settling = new.clone();
        settling.health.settle_ms = 30_000;
        assert_eq!(
            activation_bound_ms(None, &settling),
            activation_bound_ms(None, &new) + 30_000,
            "the operator waits through the settle window"
        );
    }
}
