//! `shipjar.toml`: parsing with spans, validation, and the built-in `local` stage.
//!
//! Every error names the file, line, column and key, and says what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use crate::error::{Error, Result};
use crate::protocol::manifest::{LogSpec, RestartSpec};

/// Name of the stage every project has without declaring it.
pub const LOCAL_STAGE: &str = "local";
/// The host name that means "this machine, no SSH".
pub const LOCAL_HOST: &str = "local";

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
}

fn default_java() -> String {
    "java".to_string()
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
#[derive(Debug, Deserialize)]
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
}

impl Default for Health {
    fn default() -> Self {
        Health {
            url: None,
            tcp: None,
            start_timeout: default_start_timeout(),
            interval: default_interval(),
        }
    }
}

fn default_start_timeout() -> Millis {
    Millis(90_000)
}

fn default_interval() -> Millis {
    Millis(5_000)
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
    "version".to_string()
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
    Millis(10_000)
}

fn default_stop_timeout() -> Millis {
    Millis(30_000)
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
}

impl Default for Restart {
    fn default() -> Self {
        let spec = RestartSpec::default();
        Restart {
            enabled: spec.enabled,
            initial_delay: Millis(spec.initial_delay_ms),
            max_delay: Millis(spec.max_delay_ms),
            factor: Spanned::new(0..0, spec.factor),
            reset_after: Millis(spec.reset_after_ms),
            max_failures: Spanned::new(0..0, spec.max_failures),
            window: Millis(spec.window_ms),
        }
    }
}

/// `[logs]`: rotation of the service log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logs {
    /// Rotate once the log would grow past this size; 0 never rotates.
    pub max_size: Bytes,
    /// Rotated files kept.
    pub keep: Spanned<u32>,
    /// Gzip rotated files.
    pub compress: bool,
}

impl Default for Logs {
    fn default() -> Self {
        let spec = LogSpec::default();
        Logs {
            max_size: Bytes(spec.max_size),
            keep: Spanned::new(0..0, spec.keep),
            compress: spec.compress,
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
    #[serde(default = "default_keep_spanned")]
    pub keep: Spanned<usize>,
}

impl Default for Releases {
    fn default() -> Self {
        Releases {
            keep: default_keep_spanned(),
        }
    }
}

fn default_keep_spanned() -> Spanned<usize> {
    Spanned::new(0..0, 5)
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
    #[serde(default = "default_local_hosts")]
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
}

fn default_agent_path() -> Spanned<String> {
    Spanned::new(0..0, "/usr/local/bin/shipjar".to_string())
}

/// `rolling = { batch = 1 | "25%", max_failed = 0 }`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Hosts switched at once.
    #[serde(default)]
    pub batch: BatchSize,
    /// Failed hosts a batch may have before the deploy stops.
    #[serde(default)]
    pub max_failed: usize,
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling {
            batch: BatchSize::Percent(100),
            max_failed: 0,
        }
    }
}

/// A batch size: a number of hosts or a percentage of the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// This many hosts.
    Hosts(usize),
    /// This percentage of the stage's hosts (rounded up, at least one).
    Percent(u8),
}

impl Default for BatchSize {
    fn default() -> Self {
        BatchSize::Percent(100)
    }
}

impl BatchSize {
    /// Hosts per batch for a stage of `total` hosts.
    pub fn hosts(self, total: usize) -> usize {
        let n = match self {
            BatchSize::Hosts(n) => n,
            BatchSize::Percent(p) => (total * usize::from(p)).div_ceil(100),
        };
        n.clamp(1, total.max(1))
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = BatchSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of hosts (e.g. 2) or a percentage (e.g. \"25%\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BatchSize, E> {
                usize::try_from(v)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(BatchSize::Hosts)
                    .ok_or_else(|| E::custom("a batch needs at least one host"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BatchSize, E> {
                v.strip_suffix('%')
                    .and_then(|p| p.trim().parse::<u8>().ok())
                    .filter(|p| (1..=100).contains(p))
                    .map(BatchSize::Percent)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "invalid batch `{v}`: expected e.g. 2 or \"25%\" (1% to 100%)"
                        ))
                    })
            }
        }
        d.deserialize_any(Visitor)
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

fn default_local_hosts() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, LOCAL_HOST.to_string())]
}

/// Where a secret's value comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable of the operator.
    pub env: Option<String>,
    /// A file on the operator's machine (relative to the project); trailing newline removed.
    pub file: Option<PathBuf>,
}

/// A validated service name: `[a-z][a-z0-9-]*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName(pub String);

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        validate_service_name(&name).map_err(de::Error::custom)?;
        Ok(ServiceName(name))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration written like `90s`, `1m 30s` or `500ms`, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(&text).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration `{text}` ({e}): expected e.g. \"90s\", \"1m 30s\", \"500ms\""
            ))
        })?;
        Ok(Millis(duration.as_millis().min(u64::MAX as u128) as u64))
    }
}

/// A size written like `"10MiB"`, `"500KB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl Bytes {
    /// Parses `10MiB`, `10 MB`, `4096`: KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000.
    pub fn parse(text: &str) -> Result<Bytes, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let bad = || {
            format!(
                "invalid size `{text}`: expected e.g. \"10MiB\", \"500KB\" or a number of bytes"
            )
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(factor).map(Bytes).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Accepts a string with a unit or a plain non-negative integer.
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"10MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Bytes, E> {
                Ok(Bytes(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Bytes, E> {
                u64::try_from(n)
                    .map(Bytes)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Bytes, E> {
                Bytes::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

pub use crate::protocol::validate_service_name;

/// A host of a stage, parsed from `[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    /// This machine: the agent runs as a child process, no SSH.
    Local,
    /// A remote host reached with OpenSSH.
    Ssh {
        /// Login user, if given.
        user: Option<String>,
        /// Host name or address.
        host: String,
        /// Port, if given.
        port: Option<u16>,
    },
}

impl HostSpec {
    /// Parses `[user@]host[:port]`; `local` means this machine.
    pub fn parse(text: &str) -> Result<HostSpec, String> {
        if text == LOCAL_HOST {
            return Ok(HostSpec::Local);
        }
        let (user, rest) = match text.split_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, text),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("invalid port `{port}` in host `{text}`"))?;
                (host, Some(port))
            }
            None => (rest, None),
        };
        let valid_word = |w: &str| {
            !w.is_empty()
                && !w.starts_with('-')
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if user.is_some_and(|u| !valid_word(u)) || !valid_word(host) {
            return Err(format!(
                "invalid host `{text}`: expected [user@]host[:port] with letters, digits, `.`, `-`, `_`"
            ));
        }
        Ok(HostSpec::Ssh {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
        })
    }
}

/// The absolute directory a project file is in.
pub fn project_dir(file: &Path) -> Result<PathBuf> {
    std::path::absolute(file)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| Error::config(format!("{}: cannot resolve its directory", file.display())))
}

/// A loaded project: the parsed file plus where it lives.
#[derive(Debug)]
pub struct Project {
    /// The parsed configuration.
    pub config: Config,
    /// Path of the project file as given.
    pub file: PathBuf,
    /// The project directory (the file's parent), absolute.
    pub dir: PathBuf,
    /// The file's text, for pointing at spans in later errors.
    pub source: String,
}

impl Project {
    /// Reads and validates the project file.
    pub fn load(file: &Path) -> Result<Project> {
        let source = std::fs::read_to_string(file).map_err(|e| {
            let err = Error::config(format!(
                "{}: cannot read the project file: {e}",
                file.display()
            ));
            if e.kind() == std::io::ErrorKind::NotFound {
                err.hint("run shipjar in the service's directory, or pass -C DIR or --config FILE")
            } else {
                err
            }
        })?;
        let dir = project_dir(file)?;
        let config = parse(&source, file)?;
        let project = Project {
            config,
            file: file.to_path_buf(),
            dir,
            source,
        };
        project.validate()?;
        Ok(project)
    }

    /// An error pointing at `span` in the project file.
    pub fn error_at(&self, span: Range<usize>, key: &str, message: &str) -> Error {
        Error::config(describe(
            &self.source,
            &self.file,
            Some(span),
            Some(key),
            message,
        ))
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
        match (&c.service.jar, &c.service.command) {
            (Some(_), Some(cmd)) => {
                return Err(self.error_at(
                    cmd.span(),
                    "service.command",
                    "set either `jar` (run with java -jar) or `command`, not both",
                ));
            }
            (None, None) => {
                return Err(self.error_at(
                    self.key_span("service"),
                    "service",
                    "missing `jar` (a JVM service) or `command` (anything else)",
                ));
            }
            (None, Some(cmd)) if cmd.get_ref().is_empty() => {
                return Err(self.error_at(cmd.span(), "service.command", "must not be empty"));
            }
            _ => {}
        }
        if let Some(jar) = &c.service.jar
            && (jar.contains('/') || jar.is_empty() || jar.starts_with('.'))
        {
            return Err(self.error_at(
                self.key_span("jar"),
                "service.jar",
                "expected a plain file name such as \"hello.jar\"",
            ));
        }
        if let Some(build) = &c.build
            && build.version.is_some()
            && build.version_command.is_some()
        {
            return Err(self.error_at(
                build.artifact.span(),
                "build",
                "set either `version` or `version_command`, not both",
            ));
        }
        if let (Some(url), Some(_)) = (&c.health.url, &c.health.tcp) {
            return Err(self.error_at(url.span(), "health", "set either `url` or `tcp`, not both"));
        }
        if let Some(url) = &c.health.url
            && !url.get_ref().starts_with("http://")
        {
            return Err(self.error_at(
                url.span(),
                "health.url",
                "expected an http:// URL on this host, e.g. \"http://127.0.0.1:8080/health\"",
            ));
        }
        if *c.releases.keep.get_ref() < 2 {
            return Err(self.error_at(
                c.releases.keep.span(),
                "releases.keep",
                "must be at least 2 (the current release and the one to roll back to)",
            ));
        }
        self.validate_restart()?;
        let mut dests = std::collections::BTreeSet::new();
        for entry in &c.config {
            let file = entry.get_ref();
            let dest = file.dest.get_ref();
            match (&file.template, &file.builtin) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(self.error_at(
                        entry.span(),
                        "config",
                        "each [[config]] needs exactly one of `template` or `builtin`",
                    ));
                }
                _ => {}
            }
            let bad_dest = dest.is_empty()
                || dest.starts_with('/')
                || dest
                    .split('/')
                    .any(|part| part.is_empty() || part == "." || part == "..");
            if bad_dest {
                return Err(self.error_at(
                    file.dest.span(),
                    "config.dest",
                    "expected a relative path inside the release's config/ (no `..`)",
                ));
            }
            if !dests.insert(dest.clone()) {
                return Err(self.error_at(
                    file.dest.span(),
                    "config.dest",
                    &format!("`{dest}` is written by two [[config]] entries"),
                ));
            }
        }
        for (name, stage) in &c.stages {
            if !is_identifier(name) {
                return Err(self.error_at(
                    stage.span(),
                    &format!("stages.{name}"),
                    "a stage name must be [a-z][a-z0-9_-]*",
                ));
            }
            let stage_ref = stage.get_ref();
            if stage_ref.hosts.is_empty() {
                return Err(self.error_at(
                    stage.span(),
                    &format!("stages.{name}.hosts"),
                    "needs at least one host",
                ));
            }
            if !stage_ref.agent_path.get_ref().starts_with('/') {
                return Err(self.error_at(
                    stage_ref.agent_path.span(),
                    &format!("stages.{name}.agent_path"),
                    "expected an absolute path such as \"/usr/local/bin/shipjar\"",
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for host in &stage_ref.hosts {
                if !seen.insert(host.get_ref()) {
                    return Err(self.error_at(
                        host.span(),
                        &format!("stages.{name}.hosts"),
                        &format!("`{}` is listed twice", host.get_ref()),
                    ));
                }
                HostSpec::parse(host.get_ref())
                    .map_err(|m| self.error_at(host.span(), &format!("stages.{name}.hosts"), &m))?;
            }
            for key in stage_ref.vars.keys() {
                if !is_identifier(key) || RESERVED_VARS.contains(&key.as_str()) {
                    return Err(self.error_at(
                        stage.span(),
                        &format!("stages.{name}.vars.{key}"),
                        &format!(
                            "a variable name must be [a-z][a-z0-9_]* and not one of {}",
                            RESERVED_VARS.join(", ")
                        ),
                    ));
                }
            }
            for (key, source) in &stage_ref.secrets {
                let s = source.get_ref();
                if s.env.is_some() == s.file.is_some() {
                    return Err(self.error_at(
                        source.span(),
                        &format!("stages.{name}.secrets.{key}"),
                        "expected exactly one of `env = \"VAR\"` or `file = \"path\"`",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_restart(&self) -> Result<()> {
        let r = &self.config.restart;
        let factor = *r.factor.get_ref();
        if !factor.is_finite() || !(1.0..=100.0).contains(&factor) {
            return Err(self.error_at(
                r.factor.span(),
                "restart.factor",
                "expected a number from 1.0 (a constant delay) to 100.0",
            ));
        }
        if *r.max_failures.get_ref() == 0 {
            return Err(self.error_at(
                r.max_failures.span(),
                "restart.max_failures",
                "must be at least 1",
            ));
        }
        if r.initial_delay.0 > r.max_delay.0 {
            return Err(self.error_at(
                self.key_span("restart"),
                "restart.max_delay",
                "must not be shorter than `initial_delay`",
            ));
        }
        let stop = &self.config.stop;
        if let (Some(url), Some(_)) = (&stop.hook_url, &stop.hook_command) {
            return Err(self.error_at(
                url.span(),
                "stop",
                "set either `hook_url` or `hook_command`, not both",
            ));
        }
        if let Some(url) = &stop.hook_url
            && !url.get_ref().starts_with("http://")
        {
            return Err(self.error_at(
                url.span(),
                "stop.hook_url",
                "expected an http:// URL on this host, e.g. \"http://127.0.0.1:8080/drain\"",
            ));
        }
        if let Some(cmd) = &stop.hook_command
            && cmd.get_ref().is_empty()
        {
            return Err(self.error_at(cmd.span(), "stop.hook_command", "must not be empty"));
        }
        if let Some(signal) = &self.config.reload.signal
            && self.config.reload.signal_name().is_none()
        {
            return Err(self.error_at(
                signal.span(),
                "reload.signal",
                "expected one of \"HUP\", \"USR1\", \"USR2\"",
            ));
        }
        if *self.config.logs.keep.get_ref() == 0 {
            return Err(self.error_at(
                self.config.logs.keep.span(),
                "logs.keep",
                "must be at least 1",
            ));
        }
        if r.window.0 == 0 {
            return Err(self.error_at(
                self.key_span("restart"),
                "restart.window",
                "must be longer than 0s",
            ));
        }
        Ok(())
    }

    /// Span of the first `key` (a table header or key) in the file, for errors on whole tables.
    fn key_span(&self, key: &str) -> Range<usize> {
        let header = format!("[{key}]");
        let mut offset = 0;
        for line in self.source.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if trimmed.starts_with(&header)
                || trimmed.starts_with(&format!("{key} "))
                || trimmed.starts_with(&format!("{key}="))
            {
                let start = offset + (line.len() - trimmed.len());
                return start..start + trimmed.trim_end().len();
            }
            offset += line.len();
        }
        0..0
    }

    /// The named stage; `local` exists even when not declared.
    pub fn stage(&self, name: &str) -> Result<ResolvedStage> {
        let declared = self.config.stages.get(name);
        if declared.is_none() && name != LOCAL_STAGE {
            let mut known: Vec<&str> = self.config.stages.keys().map(String::as_str).collect();
            if !known.contains(&LOCAL_STAGE) {
                known.insert(0, LOCAL_STAGE);
            }
            return Err(
                Error::config(format!("{}: no stage `{name}`", self.file.display()))
                    .hint(format!("stages are: {}", known.join(", "))),
            );
        }
        let mut hosts = Vec::new();
        let (root, vars, secrets) = match declared {
            Some(stage) => {
                let stage = stage.get_ref();
                for host in &stage.hosts {
                    let spec = HostSpec::parse(host.get_ref()).map_err(Error::config)?;
                    hosts.push((host.get_ref().clone(), spec));
                }
                (stage.root.clone(), stage.vars.clone(), &stage.secrets)
            }
            None => {
                hosts.push((LOCAL_HOST.to_string(), HostSpec::Local));
                (None, BTreeMap::new(), &EMPTY_SECRETS)
            }
        };
        let declared = declared.map(Spanned::get_ref);
        // A killed deploy's lock must outlive any single step of a live one.
        let step_ms = self.config.health.start_timeout.0 + self.config.stop.timeout.0;
        let lock_lease_ms = declared
            .and_then(|s| s.lock_lease)
            .map_or((2 * step_ms).max(120_000), |l| l.0);
        let is_local = hosts.iter().all(|(_, spec)| *spec == HostSpec::Local);
        let root = match root {
            Some(root) if root.is_absolute() => root,
            Some(root) => self.dir.join(root),
            None if is_local => self.dir.join(".shipjar").join(name),
            None => PathBuf::from("/"),
        };
        let mut secret_sources = BTreeMap::new();
        for (key, source) in secrets {
            let s = source.get_ref();
            let src = match (&s.env, &s.file) {
                (Some(var), _) => SecretFrom::Env(var.clone()),
                (None, Some(file)) => SecretFrom::File(self.dir.join(file)),
                (None, None) => unreachable!("validated"),
            };
            secret_sources.insert(key.clone(), src);
        }
        Ok(ResolvedStage {
            name: name.to_string(),
            hosts,
            root,
            vars,
            secrets: secret_sources,
            ssh_config: declared
                .and_then(|s| s.ssh_config.as_ref())
                .map(|p| self.dir.join(p)),
            sudo: declared.is_some_and(|s| s.sudo),
            agent_path: declared.map_or_else(
                || default_agent_path().into_inner(),
                |s| s.agent_path.get_ref().clone(),
            ),
            agent_binary: declared
                .and_then(|s| s.agent_binary.as_ref())
                .map(|p| self.dir.join(p)),
            rolling: declared.map(|s| s.rolling).unwrap_or_default(),
            on_failure: declared.map(|s| s.on_failure).unwrap_or_default(),
            lock_lease_ms,
        })
    }
}

static EMPTY_SECRETS: BTreeMap<String, Spanned<SecretSource>> = BTreeMap::new();

/// Template variables shipjar defines itself; stage vars may not shadow them.
pub const RESERVED_VARS: &[&str] = &[
    "service",
    "stage",
    "host",
    "version",
    "secrets",
    "release",
    "release_dir",
    "config_dir",
    "shared_dir",
    "log_dir",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// A stage with defaults applied and paths resolved.
#[derive(Debug, Clone)]
pub struct ResolvedStage {
    /// Stage name.
    pub name: String,
    /// Hosts as written, with their parsed form.
    pub hosts: Vec<(String, HostSpec)>,
    /// Absolute host root.
    pub root: PathBuf,
    /// Template variables.
    pub vars: BTreeMap<String, String>,
    /// Where each secret comes from.
    pub secrets: BTreeMap<String, SecretFrom>,
    /// ssh config file for this stage, if any.
    pub ssh_config: Option<PathBuf>,
    /// Run the agent through `sudo -n`.
    pub sudo: bool,
    /// The shipjar binary on the hosts.
    pub agent_path: String,
    /// The binary `provision` installs (default: the running one).
    pub agent_binary: Option<PathBuf>,
    /// Batching of the switch.
    pub rolling: Rolling,
    /// What to do with earlier batches on failure.
    pub on_failure: OnFailure,
    /// Deploy lock lease in milliseconds.
    pub lock_lease_ms: u64,
}

/// A resolved secret source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFrom {
    /// An environment variable of the operator.
    Env(String),
    /// A file on the operator's machine.
    File(PathBuf),
}

/// Parses the project file text.
pub fn parse(source: &str, file: &Path) -> Result<Config> {
    toml::from_str::<Config>(source).map_err(|e| {
        let key = e.span().and_then(|span| key_at(source, span.start));
        Error::config(describe(
            source,
            file,
            e.span(),
            key.as_deref(),
            e.message(),
        ))
    })
}

/// Formats `file:line:col: key `k`: message` plus the offending line and a caret.
fn describe(
    source: &str,
    file: &Path,
    span: Option<Range<usize>>,
    key: Option<&str>,
    message: &str,
) -> String {
    let message = message.trim_end();
    let Some(span) = span.filter(|s| s.start <= source.len()) else {
        return format!("{}: {message}", file.display());
    };
    let (line_no, col, line) = locate(source, span.start);
    let key_part = key.map(|k| format!("key `{k}`: ")).unwrap_or_default();
    let width = span
        .end
        .saturating_sub(span.start)
        .clamp(1, line.len().saturating_sub(col - 1).max(1));
    format!(
        "{}:{line_no}:{col}: {key_part}{message}\n{line_no:>5} | {line}\n      | {}{}",
        file.display(),
        " ".repeat(col - 1),
        "^".repeat(width)
    )
}

/// 1-based line and column of a byte offset, with the line's text.
fn locate(source: &str, offset: usize) -> (usize, usize, &str) {
    let before = &source[..offset.min(source.len())];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = source[line_start..].lines().next().unwrap_or("");
    let col = before[line_start..].chars().count() + 1;
    (line_no, col, line)
}

/// Best-effort dotted key at a byte offset: the table header in effect plus the line's key.
fn key_at(source: &str, offset: usize) -> Option<String> {
    let before = &source[..offset.min(source.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = source[line_start..].lines().next().unwrap_or("");
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return Some(
            trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        );
    }
    let line_key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string());
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match (table, line_key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[service]\nname = \"hello\"\njar = \"hello.jar\"\n";

    fn load(text: &str) -> Result<Project> {
        let config = parse(text, Path::new("shipjar.toml"))?;
        let project = Project {
            config,
            file: PathBuf::from("shipjar.toml"),
            dir: PathBuf::from("/project"),
            source: text.to_string(),
        };
        project.validate()?;
        Ok(project)
    }

    #[test]
    fn minimal_config_has_defaults_and_a_local_stage() {
        let project = load(MINIMAL).unwrap();
        assert_eq!(project.config.health.start_timeout, Millis(90_000));
        assert_eq!(*project.config.releases.keep.get_ref(), 5);
        let stage = project.stage("local").unwrap();
        assert_eq!(stage.hosts, vec![("local".to_string(), HostSpec::Local)]);
        assert_eq!(stage.root, PathBuf::from("/project/.shipjar/local"));
    }

    #[test]
    fn unknown_key_names_file_line_column_and_key() {
        let err = load(&format!("{MINIMAL}colour = \"red\"\n")).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.message
                .starts_with("shipjar.toml:4:1: key `service.colour`"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("unknown field `colour`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_duration_says_what_is_expected() {
        let err = load(&format!(
            "{MINIMAL}[health]\ntcp = 8080\nstart_timeout = \"soon\"\n"
        ))
        .unwrap_err();
        assert!(
            err.message
                .contains("shipjar.toml:6:17: key `health.start_timeout`"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("expected e.g. \"90s\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn jar_and_command_are_exclusive() {
        let err =
            load("[service]\nname = \"a\"\njar = \"a.jar\"\ncommand = [\"x\"]\n").unwrap_err();
        assert!(
            err.message
                .contains("shipjar.toml:4:11: key `service.command`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn invalid_service_name_is_rejected() {
        let err = load("[service]\nname = \"Bad_Name\"\njar = \"a.jar\"\n").unwrap_err();
        assert!(
            err.message.contains("shipjar.toml:2:8: key `service.name`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn undeclared_stage_lists_known_stages() {
        let project = load(&format!("{MINIMAL}[stages.prod]\nhosts = [\"app1\"]\n")).unwrap();
        let err = project.stage("staging").unwrap_err();
        assert!(err.to_string().contains("stages are: local, prod"), "{err}");
    }

    #[test]
    fn secret_needs_exactly_one_source() {
        let text =
            format!("{MINIMAL}[stages.prod]\nhosts = [\"app1\"]\nsecrets = {{ pw = {{}} }}\n");
        let err = load(&text).unwrap_err();
        assert!(
            err.message.contains("stages.prod.secrets.pw"),
            "{}",
            err.message
        );
    }

    #[test]
    fn rolling_batches_accept_counts_and_percentages() {
        let text = format!(
            "{MINIMAL}[stages.prod]\nhosts = [\"a\", \"b\", \"c\", \"d\", \"e\"]\nrolling = {{ batch = \"25%\", max_failed = 1 }}\non_failure = \"stop\"\n"
        );
        let project = load(&text).unwrap();
        let stage = project.stage("prod").unwrap();
        assert_eq!(stage.rolling.batch, BatchSize::Percent(25));
        assert_eq!(stage.rolling.batch.hosts(5), 2);
        assert_eq!(stage.rolling.max_failed, 1);
        assert_eq!(stage.on_failure, OnFailure::Stop);
        assert_eq!(BatchSize::Hosts(10).hosts(3), 3);
        assert_eq!(BatchSize::Percent(100).hosts(30), 30);
        let bad =
            format!("{MINIMAL}[stages.prod]\nhosts = [\"a\"]\nrolling = {{ batch = \"0%\" }}\n");
        let err = load(&bad).unwrap_err();
        assert!(
            err.message.contains("invalid batch `0%`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn duplicate_hosts_are_rejected() {
        let text = format!("{MINIMAL}[stages.prod]\nhosts = [\"a\", \"a\"]\n");
        let err = load(&text).unwrap_err();
        assert!(
            err.message.contains("`a` is listed twice"),
            "{}",
            err.message
        );
    }

    #[test]
    fn host_specs_parse() {
        assert_eq!(HostSpec::parse("local"), Ok(HostSpec::Local));
        assert_eq!(
            HostSpec::parse("deploy@app2.example.com:2222"),
            Ok(HostSpec::Ssh {
                user: Some("deploy".into()),
                host: "app2.example.com".into(),
                port: Some(2222)
            })
        );
        assert!(HostSpec::parse("app:0").is_err());
        assert!(HostSpec::parse("-oProxyCommand=x").is_err());
        assert!(HostSpec::parse("a b").is_err());
    }

    #[test]
    fn restart_defaults_and_checks() {
        let project = load(MINIMAL).unwrap();
        let r = &project.config.restart;
        assert!(r.enabled);
        assert_eq!(r.initial_delay, Millis(1_000));
        assert_eq!(r.max_delay, Millis(60_000));
        assert_eq!(*r.factor.get_ref(), 2.0);
        assert_eq!(*r.max_failures.get_ref(), 5);

        let project = load(&format!(
            "{MINIMAL}[restart]\ninitial_delay = \"200ms\"\nfactor = 3\nmax_failures = 2\n"
        ))
        .unwrap();
        assert_eq!(project.config.restart.initial_delay, Millis(200));
        assert_eq!(*project.config.restart.factor.get_ref(), 3.0);

        let err = load(&format!("{MINIMAL}[restart]\nfactor = 0.5\n")).unwrap_err();
        assert!(
            err.message
                .contains("shipjar.toml:5:10: key `restart.factor`"),
            "{}",
            err.message
        );
        let err = load(&format!("{MINIMAL}[restart]\nmax_failures = 0\n")).unwrap_err();
        assert!(
            err.message.contains("restart.max_failures"),
            "{}",
            err.message
        );
        let err = load(&format!(
            "{MINIMAL}[restart]\ninitial_delay = \"2m\"\nmax_delay = \"1m\"\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("restart.max_delay"), "{}", err.message);
        let err = load(&format!("{MINIMAL}[restart]\nbackoff = 1\n")).unwrap_err();
        assert!(
            err.message.contains("unknown field `backoff`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn log_rotation_sizes() {
        let project = load(MINIMAL).unwrap();
        assert_eq!(project.config.logs.max_size, Bytes(10 * 1024 * 1024));
        assert_eq!(*project.config.logs.keep.get_ref(), 5);
        assert!(!project.config.logs.compress);
        let project = load(&format!(
            "{MINIMAL}[logs]\nmax_size = \"512KiB\"\nkeep = 3\ncompress = true\n"
        ))
        .unwrap();
        assert_eq!(project.config.logs.max_size, Bytes(512 * 1024));
        assert!(project.config.logs.compress);
        let project = load(&format!("{MINIMAL}[logs]\nmax_size = 4096\n")).unwrap();
        assert_eq!(project.config.logs.max_size, Bytes(4096));
        assert_eq!(Bytes::parse("2 MB"), Ok(Bytes(2_000_000)));
        assert_eq!(Bytes::parse("0"), Ok(Bytes(0)));
        let err = load(&format!("{MINIMAL}[logs]\nmax_size = \"lots\"\n")).unwrap_err();
        assert!(
            err.message.contains("key `logs.max_size`") && err.message.contains("10MiB"),
            "{}",
            err.message
        );
        let err = load(&format!("{MINIMAL}[logs]\nkeep = 0\n")).unwrap_err();
        assert!(err.message.contains("logs.keep"), "{}", err.message);
    }

    #[test]
    fn stop_hook_is_a_url_or_a_command() {
        let project = load(MINIMAL).unwrap();
        assert_eq!(project.config.stop.hook_timeout, Millis(10_000));
        assert_eq!(project.config.stop.thread_dump, None);
        let project = load(&format!(
            "{MINIMAL}[stop]\nhook_command = [\"bin/drain\"]\nthread_dump = false\n"
        ))
        .unwrap();
        assert_eq!(project.config.stop.thread_dump, Some(false));
        let err = load(&format!(
            "{MINIMAL}[stop]\nhook_url = \"http://x/\"\nhook_command = [\"y\"]\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("not both"), "{}", err.message);
        let err = load(&format!("{MINIMAL}[stop]\nhook_url = \"https://x/\"\n")).unwrap_err();
        assert!(
            err.message
                .contains("shipjar.toml:5:12: key `stop.hook_url`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn reload_signal_names() {
        let project = load(MINIMAL).unwrap();
        assert_eq!(project.config.reload.signal_name(), None);
        let project = load(&format!("{MINIMAL}[reload]\nsignal = \"usr1\"\n")).unwrap();
        assert_eq!(
            project.config.reload.signal_name().as_deref(),
            Some("SIGUSR1")
        );
        let project = load(&format!("{MINIMAL}[reload]\nsignal = \"SIGHUP\"\n")).unwrap();
        assert_eq!(
            project.config.reload.signal_name().as_deref(),
            Some("SIGHUP")
        );
        let err = load(&format!("{MINIMAL}[reload]\nsignal = \"KILL\"\n")).unwrap_err();
        assert!(
            err.message
                .contains("shipjar.toml:5:10: key `reload.signal`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn config_dest_may_not_escape() {
        let text =
            format!("{MINIMAL}[[config]]\nbuiltin = \"service-properties\"\ndest = \"../x\"\n");
        let err = load(&text).unwrap_err();
        assert!(err.message.contains("key `config.dest`"), "{}", err.message);
    }
}
