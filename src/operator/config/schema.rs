//! The serde structs of `shipjar.toml`, with their defaults.
//!
//! `deny_unknown_fields` everywhere so a typo is an error, not a silent default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::defaults;
use super::{BatchSize, Bytes, Millis, Pause, ServiceName};
use crate::protocol::HookPoint;
use crate::protocol::manifest::{HookSpec, HostHooks, LogTarget};

/// The whole project file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What the service is and how it runs.
    pub service: Service,
    /// How to build the artifact.
    pub build: Option<Build>,
    /// How the supervisor tells the service is healthy.
    #[serde(default)]
    pub health: Health,
    /// The service's own version endpoint.
    pub version_check: Option<VersionCheck>,
    /// Graceful stop.
    #[serde(default)]
    pub stop: Stop,
    /// Release retention.
    #[serde(default)]
    pub releases: Releases,
    /// Config files rendered into each release.
    #[serde(default)]
    pub config: Vec<Spanned<ConfigFile>>,
    /// Deploy targets.
    #[serde(default)]
    pub stages: BTreeMap<String, Spanned<Stage>>,
    /// Crash restarts.
    #[serde(default)]
    pub restart: Restart,
    /// Rotation of the service log.
    #[serde(default)]
    pub logs: Logs,
    /// What `service reload` does.
    #[serde(default)]
    pub reload: Reload,
    /// Commands run at fixed points of a deploy or rollback.
    #[serde(default)]
    pub hooks: Hooks,
    /// Blue/green instances behind shipjar's proxy (off without this section).
    pub proxy: Option<Proxy>,
    /// Deploy from a Maven repository instead of building.
    pub artifact: Option<super::artifact::Artifact>,
    /// The Prometheus scrape, served by the proxy (off without this section).
    pub metrics: Option<Metrics>,
}

/// `[metrics]`: where the proxy serves Prometheus metrics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// The scrape's address, e.g. `"127.0.0.1:9400"`.
    pub listen: Spanned<String>,
}

impl Config {
    /// The proxy of stage `stage`: its own `proxy`, else the top-level `[proxy]`.
    pub fn proxy_of(&self, stage: &str) -> Option<&Proxy> {
        self.stages
            .get(stage)
            .and_then(|s| s.get_ref().proxy.as_ref())
            .or(self.proxy.as_ref())
    }
}

/// `[proxy]` (or a stage's `proxy = { … }`): zero-downtime deploys on one host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// The public address, e.g. `"127.0.0.1:8080"`.
    pub listen: Spanned<String>,
    /// The two instance ports, e.g. `[18081, 18082]`.
    pub ports: Spanned<Vec<u16>>,
    /// The environment variable that carries an instance's port.
    #[serde(default = "default_port_env")]
    pub port_env: Spanned<String>,
    /// How long the old instance may take to finish its in-flight requests.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Millis,
    /// How long a new request waits while no instance is healthy.
    #[serde(default = "default_hold")]
    pub hold: Millis,
    /// Longest a client may take to send a request's head, from its first byte.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Millis,
    /// Longest a client's keep-alive connection may sit between requests.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Millis,
    /// Longest the instance may take to answer (504 after); none when left out.
    pub upstream_timeout: Option<Millis>,
    /// Client connections served at once; more are answered 503.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<u32>,
    /// Addresses or CIDR blocks whose forwarding headers are trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Largest request body the proxy passes on (413 over it); none when left out.
    pub max_request_body: Option<Bytes>,
    /// Largest response body the proxy passes on (502, or the connection cut); none when left out.
    pub max_response_body: Option<Bytes>,
    /// One JSON line per request in the service's log directory (`access.log`).
    #[serde(default)]
    pub access_log: bool,
    /// An HTML template in the project for `shipjar maintenance` (built-in page otherwise).
    pub maintenance_page: Option<Spanned<String>>,
    /// TLS terminated on `listen`.
    pub tls: Option<Tls>,
}

/// `[proxy] tls = { cert = "…", key = "…" }`: PEM files on the host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain's file on the host (absolute).
    pub cert: Spanned<String>,
    /// The private key's file on the host (absolute).
    pub key: Spanned<String>,
    /// A plain-HTTP address whose every request is redirected to HTTPS.
    pub redirect: Option<Spanned<String>>,
}

fn default_port_env() -> Spanned<String> {
    Spanned::new(0..0, defaults::PROXY_PORT_ENV.to_string())
}

fn default_drain_timeout() -> Millis {
    Millis(defaults::PROXY_DRAIN_TIMEOUT_MS)
}

fn default_hold() -> Millis {
    Millis(defaults::PROXY_HOLD_MS)
}

fn default_header_timeout() -> Millis {
    Millis(defaults::PROXY_HEADER_TIMEOUT_MS)
}

fn default_idle_timeout() -> Millis {
    Millis(defaults::PROXY_IDLE_TIMEOUT_MS)
}

fn default_max_connections() -> Spanned<u32> {
    Spanned::new(0..0, defaults::PROXY_MAX_CONNECTIONS)
}

/// `[service]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service name; also the unix user by default.
    pub name: ServiceName,
    /// File name of the artifact inside a release; the service runs `java -jar <jar>`.
    pub jar: Option<String>,
    /// The java program.
    #[serde(default = "default_java")]
    pub java: String,
    /// JVM options, before `-jar`; each is a template.
    #[serde(default)]
    pub java_opts: Vec<String>,
    /// A command to run instead of `java -jar` (non-JVM services); each element is a template.
    pub command: Option<Spanned<Vec<String>>>,
    /// Environment of the service.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Unix user to run as (on hosts where shipjar runs as root); default: the service name.
    pub user: Option<String>,
    /// Keep a class-data sharing (AppCDS) archive per release (JVM services only).
    #[serde(default)]
    pub cds: bool,
    /// A Clojure socket REPL on 127.0.0.1 (`shipjar repl`).
    pub repl: Option<Repl>,
}

/// `[service] repl`: Clojure's socket REPL, bound to 127.0.0.1 only (there is
/// no address to set), reached with `shipjar repl` through an ssh forward.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repl {
    /// Port on the host's 127.0.0.1.
    pub port: u16,
}

impl Repl {
    /// The JVM option that starts the REPL server as Clojure's runtime loads.
    pub fn java_opt(&self) -> String {
        format!(
            "-Dclojure.server.repl={{:port {} :address \"127.0.0.1\" :accept clojure.core.server/repl}}",
            self.port
        )
    }
}

impl Service {
    /// The unix user the service runs as on a host: `user`, else its name.
    pub fn unix_user(&self) -> String {
        self.user.clone().unwrap_or_else(|| self.name.0.clone())
    }
}

fn default_java() -> String {
    defaults::JAVA.to_string()
}

/// `[build]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// Shell command run in the project directory.
    pub command: String,
    /// Glob (relative to the project) that must match exactly one file.
    pub artifact: Spanned<String>,
    /// A literal version.
    pub version: Option<String>,
    /// A command whose first line of output is the version.
    pub version_command: Option<String>,
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// HTTP URL that answers 2xx when healthy.
    pub url: Option<Spanned<String>>,
    /// TCP port on 127.0.0.1 that accepts connections when healthy.
    pub tcp: Option<u16>,
    /// How long a start may take.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: Millis,
    /// How often to check once running.
    #[serde(default = "default_interval")]
    pub interval: Millis,
    /// Consecutive failed checks of a running service before a restart.
    #[serde(default = "default_failures")]
    pub failures: Spanned<u32>,
    /// Longest single check of a running service.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: Millis,
    /// How long a new release must stay healthy after its gate before it counts as deployed.
    #[serde(default)]
    pub settle: Millis,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            url: None,
            tcp: None,
            start_timeout: default_start_timeout(),
            interval: default_interval(),
            failures: default_failures(),
            probe_timeout: default_probe_timeout(),
            settle: Millis::default(),
        }
    }
}

fn default_failures() -> Spanned<u32> {
    Spanned::new(0..0, defaults::HEALTH_FAILURES)
}

fn default_probe_timeout() -> Millis {
    Millis(defaults::HEALTH_PROBE_TIMEOUT_MS)
}

fn default_start_timeout() -> Millis {
    Millis(defaults::HEALTH_START_TIMEOUT_MS)
}

fn default_interval() -> Millis {
    Millis(defaults::HEALTH_INTERVAL_MS)
}

/// `[version_check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionCheck {
    /// URL answering a JSON object.
    pub url: String,
    /// Key holding the version.
    #[serde(default = "default_version_key")]
    pub key: String,
}

fn default_version_key() -> String {
    defaults::VERSION_KEY.to_string()
}

/// `[stop]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// SIGTERM, wait this long, then SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub timeout: Millis,
    /// SIGQUIT at half the timeout for a thread dump; default: on for `jar` services.
    pub thread_dump: Option<bool>,
    /// POSTed (empty body) before SIGTERM, to drain the service.
    pub hook_url: Option<Spanned<String>>,
    /// Run before SIGTERM instead of `hook_url`; each element is a template.
    pub hook_command: Option<Spanned<Vec<String>>>,
    /// Longest the hook may take.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout: Millis,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            timeout: default_stop_timeout(),
            thread_dump: None,
            hook_url: None,
            hook_command: None,
            hook_timeout: default_hook_timeout(),
        }
    }
}

fn default_hook_timeout() -> Millis {
    Millis(defaults::STOP_HOOK_TIMEOUT_MS)
}

fn default_stop_timeout() -> Millis {
    Millis(defaults::STOP_TIMEOUT_MS)
}

/// `[restart]`: crash restarts with exponential back-off and a burst limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Restart {
    /// Restart a service that exits on its own; false leaves it dead.
    pub enabled: bool,
    /// Delay before the first restart.
    pub initial_delay: Millis,
    /// Longest delay between restarts.
    pub max_delay: Millis,
    /// Each further failure multiplies the delay by this.
    pub factor: Spanned<f64>,
    /// Healthy this long, and the back-off starts over.
    pub reset_after: Millis,
    /// This many failures within `window` and the supervisor gives up (state `failed`).
    pub max_failures: Spanned<u32>,
    /// The window failures are counted in.
    pub window: Millis,
    /// On giving up within `revert_window` of a deploy, go back to the
    /// previous healthy release.
    pub auto_revert: bool,
    /// How long after its deploy a release given up on is auto-reverted.
    pub revert_window: Millis,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            enabled: defaults::RESTART_ENABLED,
            initial_delay: Millis(defaults::RESTART_INITIAL_DELAY_MS),
            max_delay: Millis(defaults::RESTART_MAX_DELAY_MS),
            factor: Spanned::new(0..0, defaults::RESTART_FACTOR),
            reset_after: Millis(defaults::RESTART_RESET_AFTER_MS),
            max_failures: Spanned::new(0..0, defaults::RESTART_MAX_FAILURES),
            window: Millis(defaults::RESTART_WINDOW_MS),
            auto_revert: defaults::RESTART_AUTO_REVERT,
            revert_window: Millis(defaults::RESTART_REVERT_WINDOW_MS),
        }
    }
}

/// `[logs]`: the file the service's output goes to, and its rotation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logs {
    /// Rotate once the log would grow past this size; 0 never rotates.
    pub max_size: Bytes,
    /// Rotated files kept.
    pub keep: Spanned<u32>,
    /// Gzip rotated files.
    pub compress: bool,
    /// File name inside the log dir.
    pub file: Spanned<String>,
    /// Where the output goes: `file` or `journal`.
    pub to: LogTarget,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            file: Spanned::new(0..0, defaults::LOG_FILE.to_string()),
            max_size: Bytes(defaults::LOG_MAX_SIZE),
            keep: Spanned::new(0..0, defaults::LOG_KEEP),
            compress: defaults::LOG_COMPRESS,
            to: LogTarget::File,
        }
    }
}

/// `[reload]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reload {
    /// `HUP`, `USR1` or `USR2` (with or without `SIG`); without it a reload
    /// restarts the service through the health gate.
    pub signal: Option<Spanned<String>>,
}

/// Signals a reload may send.
pub const RELOAD_SIGNALS: [&str; 3] = ["SIGHUP", "SIGUSR1", "SIGUSR2"];

impl Reload {
    /// The signal's full name (`SIGHUP`), if one is set and valid.
    pub fn signal_name(&self) -> Option<String> {
        let name = self.signal.as_ref()?.get_ref().trim().to_ascii_uppercase();
        let full = if name.starts_with("SIG") {
            name
        } else {
            format!("SIG{name}")
        };
        RELOAD_SIGNALS.contains(&full.as_str()).then_some(full)
    }
}

/// `[releases]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Releases {
    /// How many releases to keep on each host (at least 2).
    #[serde(default = "default_keep")]
    pub keep: Spanned<usize>,
}

impl Default for Releases {
    fn default() -> Self {
        Releases {
            keep: default_keep(),
        }
    }
}

fn default_keep() -> Spanned<usize> {
    Spanned::new(0..0, defaults::RELEASES_KEEP)
}

/// One `[[config]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Template path relative to the project; may itself use `{{ stage }}`.
    pub template: Option<String>,
    /// A built-in file instead of a template: `service-properties`.
    pub builtin: Option<Builtin>,
    /// Path inside the release's `config/`.
    pub dest: Spanned<String>,
    /// Written 0600 and never printed.
    #[serde(default)]
    pub secret: bool,
}

/// Built-in config files.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Builtin {
    /// Java `.properties` with name, version, commit, build/deploy time, deployer, stage, host, sha256.
    ServiceProperties,
}

/// `[stages.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// `[user@]host[:port]`, or `local` for this machine.
    #[serde(default = "default_hosts")]
    pub hosts: Vec<Spanned<String>>,
    /// Host root; relative paths are relative to the project (for `local`).
    pub root: Option<PathBuf>,
    /// Template variables.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Secret template variables, available as `secrets.NAME`.
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<SecretSource>>,
    /// An ssh config file for this stage (relative to the project); `--ssh-config` overrides it.
    pub ssh_config: Option<PathBuf>,
    /// Run the agent through `sudo -n` (passwordless sudo) instead of logging in as root.
    #[serde(default)]
    pub sudo: bool,
    /// Where the shipjar binary lives on the hosts.
    #[serde(default = "default_agent_path")]
    pub agent_path: Spanned<String>,
    /// A shipjar binary to install on the hosts instead of the running one
    /// (e.g. a static build for another libc); relative to the project.
    pub agent_binary: Option<PathBuf>,
    /// Rolling deploy: batch size and how many failed hosts a batch tolerates.
    #[serde(default)]
    pub rolling: Rolling,
    /// What to do with hosts switched in earlier batches when a batch fails.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// How long a deploy lock lives without renewal (a killed deploy's lock expires after this).
    pub lock_lease: Option<Millis>,
    /// How long a host may leave a request unanswered, with no sign of
    /// progress, before it is given up as unreachable.
    pub answer_timeout: Option<Millis>,
    /// This stage's proxy, in place of the top-level `[proxy]`.
    pub proxy: Option<Proxy>,
    /// `[stages.NAME.roles.ROLE]`: hosts grouped by role, with their own settings.
    #[serde(default)]
    pub roles: BTreeMap<String, Spanned<super::roles::Role>>,
}

fn default_hosts() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, defaults::STAGE_HOST.to_string())]
}

fn default_agent_path() -> Spanned<String> {
    Spanned::new(0..0, defaults::AGENT_PATH.to_string())
}

/// `rolling = { batch = 1 | "25%", max_failed = 0, canary = 1 | "10%", pause = "10m" | "confirm" }`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Hosts switched at once.
    #[serde(default)]
    pub batch: BatchSize,
    /// Failed hosts a batch may have before the deploy stops.
    #[serde(default = "default_max_failed")]
    pub max_failed: usize,
    /// Hosts deployed first, as a batch of their own, and watched for `pause`
    /// before the rest; any failure there puts them back and stops the deploy.
    pub canary: Option<BatchSize>,
    /// How long the canary is watched, or `"confirm"`: stop after it until
    /// `deploy --continue` (or `--abort`).
    pub pause: Option<Pause>,
}

fn default_max_failed() -> usize {
    defaults::ROLLING_MAX_FAILED
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling {
            batch: BatchSize::default(),
            max_failed: default_max_failed(),
            canary: None,
            pause: None,
        }
    }
}

/// `on_failure`: what happens to earlier batches when a later batch fails.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Put hosts of earlier batches back on their previous release: the fleet ends on one version.
    #[default]
    Revert,
    /// Leave earlier batches on the new release.
    Stop,
}

/// Where a secret's value comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable of the operator.
    pub env: Option<String>,
    /// A file on the operator's machine (relative to the project); trailing newline removed.
    pub file: Option<PathBuf>,
    /// A command run on the operator's machine (argv, no shell), once per
    /// shipjar invocation; its stdout is the value (one trailing newline removed).
    pub command: Option<Vec<String>>,
    /// Longest the `command` may take (default 30s); then it and its children are killed.
    pub timeout: Option<Millis>,
    /// Accept a value shorter than 8 characters; it is then masked only where
    /// it stands as a whole word, since masking it everywhere would blank
    /// ordinary text and so reveal it.
    #[serde(default)]
    pub allow_short: bool,
}

/// Longest a hook may take unless `[hooks] timeout` or its own `timeout` says otherwise.
pub const HOOK_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// `[hooks]`: commands run at fixed points of a deploy or rollback.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Default timeout of every hook.
    #[serde(default = "default_hooks_timeout")]
    pub timeout: Millis,
    /// Once per deploy, on the stage's first host, in the new release, before any host switches.
    pub before_switch: Option<Hook>,
    /// On each host, in the new release, just before it switches.
    pub before_start: Option<Hook>,
    /// On each host, once its new release is healthy and reports its version.
    pub after_switch: Option<Hook>,
    /// On the operator's machine after a deploy that completed.
    pub after_deploy: Option<Hook>,
    /// On the operator's machine after a deploy that did not complete.
    pub after_failure: Option<Hook>,
    /// Once per rollback, on the stage's first host, in the release rolled back to.
    pub before_rollback: Option<Hook>,
    /// On the operator's machine after a rollback that completed.
    pub after_rollback: Option<Hook>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            timeout: default_hooks_timeout(),
            before_switch: None,
            before_start: None,
            after_switch: None,
            after_deploy: None,
            after_failure: None,
            before_rollback: None,
            after_rollback: None,
        }
    }
}

fn default_hooks_timeout() -> Millis {
    Millis(HOOK_TIMEOUT_MS)
}

/// One hook: `{ command = ["bin/migrate", "--yes"], timeout = "10m" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Program and arguments; no shell unless the command is `sh -c …`.
    pub command: Spanned<Vec<String>>,
    /// Longest it may take; default `[hooks] timeout`.
    pub timeout: Option<Millis>,
}

impl Hooks {
    /// Every hook point with its configured hook, in the order of a run.
    pub fn all(&self) -> [(HookPoint, Option<&Hook>); 7] {
        [
            (HookPoint::BeforeSwitch, self.before_switch.as_ref()),
            (HookPoint::BeforeStart, self.before_start.as_ref()),
            (HookPoint::AfterSwitch, self.after_switch.as_ref()),
            (HookPoint::AfterDeploy, self.after_deploy.as_ref()),
            (HookPoint::AfterFailure, self.after_failure.as_ref()),
            (HookPoint::BeforeRollback, self.before_rollback.as_ref()),
            (HookPoint::AfterRollback, self.after_rollback.as_ref()),
        ]
    }

    /// The hook at `point`, as it travels: argv and timeout.
    pub fn spec(&self, point: &HookPoint) -> Option<HookSpec> {
        let (_, hook) = self.all().into_iter().find(|(p, _)| p == point)?;
        let hook = hook?;
        Some(HookSpec {
            argv: hook.command.get_ref().clone(),
            timeout_ms: hook.timeout.unwrap_or(self.timeout).0,
        })
    }

    /// The hooks a release carries for its own activation.
    pub fn host_hooks(&self) -> HostHooks {
        HostHooks {
            before_start: self.spec(&HookPoint::BeforeStart),
            after_switch: self.spec(&HookPoint::AfterSwitch),
        }
    }
}
