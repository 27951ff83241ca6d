//! Checks serde cannot express: exclusive settings, ranges, paths, host lists,
//! names. Each error points at the offending value in the file.

use std::collections::BTreeSet;

use super::Project;
use super::defaults::{ANSWER_TIMEOUT_FLOOR_MS, LOCK_LEASE_FLOOR_MS, SETTLE_MAX_MS};
use super::diagnostics::{Seg, keys};
use super::schema::{ConfigFile, Proxy, Rolling, Stage};
use super::{Millis, Pause};
use crate::error::{Error, Result};
use crate::protocol::names;
use crate::protocol::net::IpRange;

/// Template variables shipjar defines itself; stage vars may not shadow them.
pub const RESERVED_VARS: &[&str] = &[
    "service",
    "stage",
    "host",
    "host_entry",
    "git_commit",
    "build_time",
    "artifact_sha256",
    "version",
    "secrets",
    "release",
    "release_dir",
    "config_dir",
    "shared_dir",
    "log_dir",
    "role",
];

/// `[a-z][a-z0-9_-]*`: stage and variable names.
pub(super) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

impl Project {
    /// Checks the whole file; the first problem found is the error.
    pub(super) fn validate(&self) -> Result<()> {
        self.validate_service()?;
        self.validate_no_nul()?;
        self.validate_build_and_health()?;
        self.validate_restart()?;
        self.validate_stop_reload_logs()?;
        self.validate_hooks()?;
        self.validate_artifact()?;
        if let Some(proxy) = &self.config.proxy {
            self.validate_proxy(&[Seg::Key("proxy")], proxy)?;
        }
        self.validate_metrics()?;
        for (i, entry) in self.config.config.iter().enumerate() {
            self.validate_config_file(i, entry.get_ref())?;
        }
        let mut dests = BTreeSet::new();
        for (i, entry) in self.config.config.iter().enumerate() {
            let dest = entry.get_ref().dest.get_ref();
            if !dests.insert(dest) {
                return Err(self.fail(
                    &[Seg::Key("config"), Seg::Index(i), Seg::Key("dest")],
                    &format!("`{dest}` is written by two [[config]] entries"),
                ));
            }
        }
        for (name, stage) in &self.config.stages {
            self.validate_stage(name, stage.get_ref())?;
        }
        Ok(())
    }

    /// A process's arguments and environment cannot hold a NUL byte.
    fn validate_no_nul(&self) -> Result<()> {
        let service = &self.config.service;
        let nul = |text: &str| text.contains('\0');
        let message =
            "contains a NUL byte, which a process's arguments and environment cannot hold";
        for (key, value) in &service.env {
            if nul(key) || nul(value) {
                return Err(self.fail(
                    &[Seg::Key("service"), Seg::Key("env"), Seg::Key(key)],
                    message,
                ));
            }
        }
        for (i, opt) in service.java_opts.iter().enumerate() {
            if nul(opt) {
                return Err(self.fail(
                    &[Seg::Key("service"), Seg::Key("java_opts"), Seg::Index(i)],
                    message,
                ));
            }
        }
        if let Some(command) = &service.command {
            for (i, word) in command.get_ref().iter().enumerate() {
                if nul(word) {
                    return Err(self.fail(
                        &[Seg::Key("service"), Seg::Key("command"), Seg::Index(i)],
                        message,
                    ));
                }
            }
        }
        for (name, stage) in &self.config.stages {
            for (key, value) in &stage.get_ref().vars {
                if nul(value) {
                    let path = [
                        Seg::Key("stages"),
                        Seg::Key(name),
                        Seg::Key("vars"),
                        Seg::Key(key),
                    ];
                    return Err(self.fail(&path, "contains a NUL byte"));
                }
            }
        }
        Ok(())
    }

    fn validate_service(&self) -> Result<()> {
        let service = &self.config.service;
        match (&service.jar, &service.command) {
            (Some(_), Some(_)) => Err(self.fail(
                &keys("service.command"),
                "set either `jar` (run with java -jar) or `command`, not both",
            )),
            (None, None) => Err(self.error_at(
                self.outline.value_span(&keys("service.jar")),
                "service",
                "missing `jar` (a JVM service) or `command` (anything else)",
            )),
            (None, Some(cmd)) if cmd.get_ref().is_empty() => {
                Err(self.fail(&keys("service.command"), "must not be empty"))
            }
            (Some(jar), None) if jar.contains('/') || jar.is_empty() || jar.starts_with('.') => {
                Err(self.fail(
                    &keys("service.jar"),
                    "expected a plain file name such as \"hello.jar\"",
                ))
            }
            (Some(jar), None) if let Err(why) = names::jar_name(jar) => {
                Err(self.fail(&keys("service.jar"), &why))
            }
            (None, Some(_)) if service.cds => Err(self.fail(
                &keys("service.cds"),
                "class-data sharing is for JVM services (`jar`), not a `command`",
            )),
            _ => self.validate_repl(),
        }
    }

    /// `[service] repl`: a JVM service, not behind `[proxy]` (two instances cannot
    /// share one port), a port above 0; and no socket server of Clojure's set by
    /// hand, which could bind to any address.
    fn validate_repl(&self) -> Result<()> {
        let service = &self.config.service;
        let by_hand = |text: &str| text.contains("clojure.server.");
        for (i, opt) in service.java_opts.iter().enumerate() {
            if by_hand(opt) {
                return Err(self.fail(
                    &[Seg::Key("service"), Seg::Key("java_opts"), Seg::Index(i)],
                    "a Clojure socket server set by hand could listen on any address: use `[service] repl = { port = N }`, which binds to 127.0.0.1 only",
                ));
            }
        }
        for (key, value) in &service.env {
            if by_hand(value) {
                return Err(self.fail(
                    &[Seg::Key("service"), Seg::Key("env"), Seg::Key(key)],
                    "a Clojure socket server set by hand could listen on any address: use `[service] repl = { port = N }`, which binds to 127.0.0.1 only",
                ));
            }
        }
        for (stage_name, stage) in &self.config.stages {
            for (role_name, role) in &stage.get_ref().roles {
                let role = role.get_ref();
                let mut path = vec![
                    Seg::Key("stages"),
                    Seg::Key(stage_name),
                    Seg::Key("roles"),
                    Seg::Key(role_name),
                ];
                let opt = role.java_opts.iter().position(|o| by_hand(o));
                let env = role.env.iter().find(|(_, v)| by_hand(v));
                match (opt, env) {
                    (Some(i), _) => path.extend([Seg::Key("java_opts"), Seg::Index(i)]),
                    (None, Some((key, _))) => path.extend([Seg::Key("env"), Seg::Key(key)]),
                    (None, None) => continue,
                }
                return Err(self.fail(
                    &path,
                    "a Clojure socket server set by hand could listen on any address: use `[service] repl = { port = N }`, which binds to 127.0.0.1 only",
                ));
            }
        }
        let Some(repl) = &service.repl else {
            return Ok(());
        };
        let why = if service.command.is_some() {
            Some("the REPL is started through a JVM option: a JVM service (`jar`) only")
        } else if repl.port == 0 {
            Some("expected a port from 1 to 65535")
        } else if self.config.proxy.is_some()
            || self
                .config
                .stages
                .values()
                .any(|s| s.get_ref().proxy.is_some())
        {
            Some("not with `[proxy]`: its two instances would both bind the REPL's port")
        } else {
            None
        };
        match why {
            Some(why) => Err(self.fail(&keys("service.repl"), why)),
            None => Ok(()),
        }
    }

    fn validate_build_and_health(&self) -> Result<()> {
        let c = &self.config;
        if let Some(build) = &c.build
            && build.version.is_some()
            && build.version_command.is_some()
        {
            return Err(self.fail(
                &keys("build.version_command"),
                "set either `version` or `version_command`, not both",
            ));
        }
        if c.health.url.is_some() && c.health.tcp.is_some() {
            return Err(self.fail(&keys("health.url"), "set either `url` or `tcp`, not both"));
        }
        if let Some(url) = &c.health.url
            && !url.get_ref().starts_with("http://")
        {
            return Err(self.fail(
                &keys("health.url"),
                "expected an http:// URL on this host, e.g. \"http://127.0.0.1:8080/health\"",
            ));
        }
        self.validate_liveness()?;
        if *c.releases.keep.get_ref() < 2 {
            return Err(self.fail(
                &keys("releases.keep"),
                "must be at least 2 (the current release and the one to roll back to)",
            ));
        }
        Ok(())
    }

    /// `[health] interval`, `failures`, `probe_timeout` and `settle`: a check of a
    /// running service ends before the next one is due.
    fn validate_liveness(&self) -> Result<()> {
        let h = &self.config.health;
        if h.interval.0 < 100 {
            return Err(self.fail(&keys("health.interval"), "must be at least 100ms"));
        }
        if *h.failures.get_ref() == 0 {
            return Err(self.fail(&keys("health.failures"), "must be at least 1"));
        }
        let max = crate::protocol::defaults::HEALTH_PROBE_TIMEOUT_MAX;
        if h.probe_timeout.0 == 0 || h.probe_timeout.0 > max.as_millis() as u64 {
            return Err(self.fail(
                &keys("health.probe_timeout"),
                &format!("must be longer than 0s and at most {}s", max.as_secs()),
            ));
        }
        // The default is capped at the interval on the host; a value set by
        // hand must fit by itself.
        if h.probe_timeout.0 > h.interval.0 && self.outline.contains(&keys("health.probe_timeout"))
        {
            return Err(self.fail(
                &keys("health.probe_timeout"),
                &format!("must not be longer than `interval` ({}ms)", h.interval.0),
            ));
        }
        // Every batch waits it out: longer than this is a mistake, not a policy.
        if h.settle.0 > SETTLE_MAX_MS {
            return Err(self.fail(
                &keys("health.settle"),
                &format!("must be at most {}m", SETTLE_MAX_MS / 60_000),
            ));
        }
        Ok(())
    }

    fn validate_restart(&self) -> Result<()> {
        let r = &self.config.restart;
        let factor = *r.factor.get_ref();
        if !factor.is_finite() || !(1.0..=100.0).contains(&factor) {
            return Err(self.fail(
                &keys("restart.factor"),
                "expected a number from 1.0 (a constant delay) to 100.0",
            ));
        }
        if *r.max_failures.get_ref() == 0 {
            return Err(self.fail(&keys("restart.max_failures"), "must be at least 1"));
        }
        if r.initial_delay.0 > r.max_delay.0 {
            // Point at whichever of the two the file sets; `max_delay` when both.
            return Err(if self.outline.contains(&keys("restart.max_delay")) {
                self.fail(
                    &keys("restart.max_delay"),
                    "must not be shorter than `initial_delay`",
                )
            } else {
                self.fail(
                    &keys("restart.initial_delay"),
                    &format!(
                        "must not be longer than `max_delay` ({}ms unless set)",
                        r.max_delay.0
                    ),
                )
            });
        }
        if r.window.0 == 0 {
            return Err(self.fail(&keys("restart.window"), "must be longer than 0s"));
        }
        if r.auto_revert && r.revert_window.0 == 0 {
            return Err(self.fail(
                &keys("restart.revert_window"),
                "must be longer than 0s when `auto_revert` is on",
            ));
        }
        Ok(())
    }

    fn validate_hooks(&self) -> Result<()> {
        let hooks = &self.config.hooks;
        if hooks.timeout.0 == 0 {
            return Err(self.fail(&keys("hooks.timeout"), "must be longer than 0s"));
        }
        for (point, hook) in hooks.all() {
            let Some(hook) = hook else { continue };
            let name = point.as_str();
            let at = |key: &'static str| vec![Seg::Key("hooks"), Seg::Key(name), Seg::Key(key)];
            if hook.command.get_ref().first().is_none_or(|p| p.is_empty()) {
                return Err(self.fail(
                    &at("command"),
                    "expected a program and its arguments, e.g. [\"bin/migrate\", \"--yes\"] (use [\"sh\", \"-c\", \"…\"] for a shell line)",
                ));
            }
            if hook.timeout.is_some_and(|t| t.0 == 0) {
                return Err(self.fail(&at("timeout"), "must be longer than 0s"));
            }
        }
        Ok(())
    }

    fn validate_stop_reload_logs(&self) -> Result<()> {
        let stop = &self.config.stop;
        if stop.hook_url.is_some() && stop.hook_command.is_some() {
            return Err(self.fail(
                &keys("stop.hook_command"),
                "set either `hook_url` or `hook_command`, not both",
            ));
        }
        if let Some(url) = &stop.hook_url
            && !url.get_ref().starts_with("http://")
        {
            return Err(self.fail(
                &keys("stop.hook_url"),
                "expected an http:// URL on this host, e.g. \"http://127.0.0.1:8080/drain\"",
            ));
        }
        if let Some(cmd) = &stop.hook_command
            && cmd.get_ref().is_empty()
        {
            return Err(self.fail(&keys("stop.hook_command"), "must not be empty"));
        }
        if self.config.reload.signal.is_some() && self.config.reload.signal_name().is_none() {
            return Err(self.fail(
                &keys("reload.signal"),
                "expected one of \"HUP\", \"USR1\", \"USR2\"",
            ));
        }
        if *self.config.logs.keep.get_ref() == 0 {
            return Err(self.fail(&keys("logs.keep"), "must be at least 1"));
        }
        let file = self.config.logs.file.get_ref();
        if let Err(e) = crate::protocol::names::file_name(file) {
            return Err(self.fail(
                &keys("logs.file"),
                &format!("{e} (a file name inside the log dir)"),
            ));
        }
        Ok(())
    }

    /// The `i`th `[[config]]` entry on its own; duplicates are checked across entries.
    fn validate_config_file(&self, i: usize, file: &ConfigFile) -> Result<()> {
        let at = |key: Option<&'static str>| {
            let mut path = vec![Seg::Key("config"), Seg::Index(i)];
            path.extend(key.map(Seg::Key));
            path
        };
        if file.template.is_some() == file.builtin.is_some() {
            return Err(self.fail(
                &at(None),
                "each [[config]] needs exactly one of `template` or `builtin`",
            ));
        }
        let dest = file.dest.get_ref();
        if let Err(why) = crate::protocol::names::relative_path(dest) {
            return Err(self.fail(
                &at(Some("dest")),
                &format!("expected a path inside the release's config/: {why}"),
            ));
        }
        Ok(())
    }

    fn validate_stage(&self, name: &str, stage: &Stage) -> Result<()> {
        let at = |rest: &[Seg<'static>]| {
            let mut path = vec![Seg::Key("stages"), Seg::Key(name)];
            path.extend_from_slice(rest);
            path
        };
        if !is_identifier(name) {
            return Err(self.fail_key(&at(&[]), "a stage name must be [a-z][a-z0-9_-]*"));
        }
        self.validate_stage_hosts(name, stage)?;
        if let Some(proxy) = &stage.proxy {
            self.validate_proxy(&at(&[Seg::Key("proxy")]), proxy)?;
        }
        if !stage.agent_path.get_ref().starts_with('/') {
            return Err(self.fail(
                &at(&[Seg::Key("agent_path")]),
                "expected an absolute path such as \"/usr/local/bin/shipjar\"",
            ));
        }
        for key in stage.vars.keys() {
            if !is_identifier(key) || RESERVED_VARS.contains(&key.as_str()) {
                let mut path = at(&[Seg::Key("vars")]);
                path.push(Seg::Key(key));
                let message = format!(
                    "a variable name must be [a-z][a-z0-9_]* and not one of {}",
                    RESERVED_VARS.join(", ")
                );
                return Err(self.fail_key(&path, &message));
            }
        }
        if let Some(lease) = stage.lock_lease
            && lease.0 < LOCK_LEASE_FLOOR_MS
        {
            return Err(self.fail(
                &at(&[Seg::Key("lock_lease")]),
                &format!(
                    "must be at least {}s: a shorter lease can run out between two renewals of a live deploy",
                    LOCK_LEASE_FLOOR_MS / 1000
                ),
            ));
        }
        if let Some(timeout) = stage.answer_timeout
            && timeout.0 < ANSWER_TIMEOUT_FLOOR_MS
        {
            return Err(self.fail(
                &at(&[Seg::Key("answer_timeout")]),
                &format!("must be at least {}s", ANSWER_TIMEOUT_FLOOR_MS / 1000),
            ));
        }
        self.validate_canary(&at(&[Seg::Key("rolling")]), &stage.rolling)?;
        for (key, source) in &stage.secrets {
            let s = source.get_ref();
            let mut path = at(&[Seg::Key("secrets")]);
            path.push(Seg::Key(key));
            let sources = [s.env.is_some(), s.file.is_some(), s.command.is_some()];
            if sources.iter().filter(|set| **set).count() != 1 {
                return Err(self.fail(
                    &path,
                    "expected exactly one of `env = \"VAR\"`, `file = \"path\"` or `command = [\"program\", \"arg\", …]`",
                ));
            }
            if let Some(argv) = &s.command
                && argv.first().is_none_or(|program| program.is_empty())
            {
                path.push(Seg::Key("command"));
                return Err(self.fail(&path, "expected a program and its arguments"));
            }
            if let Some(timeout) = s.timeout {
                path.push(Seg::Key("timeout"));
                if s.command.is_none() {
                    return Err(self.fail(&path, "`timeout` applies only to a `command` secret"));
                }
                if timeout.0 == 0 {
                    return Err(self.fail(&path, "must be above 0"));
                }
            }
        }
        Ok(())
    }

    /// `rolling.canary` and `rolling.pause` come together; a pause is longer than 0s.
    fn validate_canary(&self, rolling_at: &[Seg<'_>], rolling: &Rolling) -> Result<()> {
        let at = |key: &'static str| {
            let mut path = rolling_at.to_vec();
            path.push(Seg::Key(key));
            path
        };
        match (rolling.canary, rolling.pause) {
            (Some(_), None) => Err(self.fail(
                &at("canary"),
                "a canary needs a `pause`: a duration such as \"10m\" to watch it, or \"confirm\"",
            )),
            (None, Some(_)) => Err(self.fail(
                &at("pause"),
                "a pause follows a canary: add `canary = 1` (or a percentage such as \"10%\")",
            )),
            (Some(_), Some(Pause::For(Millis(0)))) => {
                Err(self.fail(&at("pause"), "must be longer than 0s (or \"confirm\")"))
            }
            _ => Ok(()),
        }
    }

    /// An error pointing at the value at `path` (or where it would go).
    pub(super) fn fail(&self, path: &[Seg<'_>], message: &str) -> Error {
        let key = super::diagnostics::display_path(path);
        self.error_at(self.outline.value_span(path), &key, message)
    }

    /// `[metrics] listen`: a socket address with a port of its own, on a
    /// project with a proxy (the proxy serves the scrape).
    fn validate_metrics(&self) -> Result<()> {
        let Some(metrics) = &self.config.metrics else {
            return Ok(());
        };
        let at = [Seg::Key("metrics"), Seg::Key("listen")];
        let Ok(address) = metrics.listen.get_ref().parse::<std::net::SocketAddr>() else {
            return Err(self.fail(
                &at,
                "expected an address and port such as \"127.0.0.1:9400\"",
            ));
        };
        if address.port() == 0 {
            return Err(self.fail(&at, "needs a port of its own, not 0"));
        }
        let proxies: Vec<&Proxy> = self
            .config
            .proxy
            .iter()
            .chain(
                self.config
                    .stages
                    .values()
                    .filter_map(|s| s.get_ref().proxy.as_ref()),
            )
            .collect();
        if proxies.is_empty() {
            return Err(self.fail(
                &at,
                "the metrics are served by shipjar's proxy: add `[proxy]` (or a stage's `proxy`)",
            ));
        }
        for proxy in proxies {
            let listen = proxy.listen.get_ref().parse::<std::net::SocketAddr>().ok();
            if listen.is_some_and(|l| l.port() == address.port())
                || proxy.ports.get_ref().contains(&address.port())
            {
                return Err(self.fail(
                    &at,
                    &format!(
                        "port {} is the proxy's (`listen` or `ports`); the metrics need another",
                        address.port()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[proxy] tls`: absolute paths on the host; a redirect address with a
    /// port apart from the proxy's.
    fn validate_tls(
        &self,
        prefix: &[Seg<'_>],
        tls: &super::schema::Tls,
        listen: u16,
        ports: &[u16],
    ) -> Result<()> {
        let at = |key: &'static str| {
            let mut path = prefix.to_vec();
            path.push(Seg::Key("tls"));
            path.push(Seg::Key(key));
            path
        };
        for (key, value) in [("cert", &tls.cert), ("key", &tls.key)] {
            if !value.get_ref().starts_with('/') {
                return Err(self.fail(
                    &at(key),
                    "expected an absolute path of a PEM file on the host, e.g. \"/etc/ssl/private/hello.pem\"",
                ));
            }
        }
        if let Some(redirect) = &tls.redirect {
            let Ok(address) = redirect.get_ref().parse::<std::net::SocketAddr>() else {
                return Err(self.fail(
                    &at("redirect"),
                    "expected an address and port such as \"0.0.0.0:80\"",
                ));
            };
            if address.port() == listen || ports.contains(&address.port()) {
                return Err(self.fail(
                    &at("redirect"),
                    "needs a port apart from the proxy's `listen` and `ports`",
                ));
            }
        }
        Ok(())
    }

    /// `[proxy]`: a socket address, two distinct instance ports apart from
    /// it, a plausible variable name, TLS files and redirect, then its limits.
    fn validate_proxy(&self, prefix: &[Seg<'_>], proxy: &Proxy) -> Result<()> {
        let at = |key: &'static str| {
            let mut path = prefix.to_vec();
            path.push(Seg::Key(key));
            path
        };
        let listen = proxy.listen.get_ref();
        let Ok(address) = listen.parse::<std::net::SocketAddr>() else {
            return Err(self.fail(
                &at("listen"),
                "expected an address and port such as \"127.0.0.1:8080\"",
            ));
        };
        let ports = proxy.ports.get_ref();
        if ports.len() != 2 || ports[0] == ports[1] || ports.contains(&0) {
            return Err(self.fail(
                &at("ports"),
                "expected two different instance ports, e.g. [18081, 18082]",
            ));
        }
        if ports.contains(&address.port()) {
            return Err(self.fail(
                &at("ports"),
                &format!(
                    "port {} is the proxy's own (`listen`); the instances need two others",
                    address.port()
                ),
            ));
        }
        let env = proxy.port_env.get_ref();
        let valid_env = env
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_env {
            return Err(self.fail(
                &at("port_env"),
                "expected an environment variable name such as \"PORT\"",
            ));
        }
        if let Some(tls) = &proxy.tls {
            self.validate_tls(prefix, tls, address.port(), ports)?;
        }
        self.validate_proxy_limits(prefix, proxy)
    }

    /// `[proxy]`'s timeouts above 0, a connection cap and body limits of at
    /// least 1, a maintenance page named, trusted proxies that are addresses
    /// or CIDR blocks.
    fn validate_proxy_limits(&self, prefix: &[Seg<'_>], proxy: &Proxy) -> Result<()> {
        let at = |key: &'static str| {
            let mut path = prefix.to_vec();
            path.push(Seg::Key(key));
            path
        };
        if proxy.drain_timeout.0 == 0 {
            return Err(self.fail(&at("drain_timeout"), "must be longer than 0s"));
        }
        for (key, value) in [
            ("header_timeout", proxy.header_timeout.0),
            ("idle_timeout", proxy.idle_timeout.0),
        ] {
            if value == 0 {
                return Err(self.fail(&at(key), "must be longer than 0s"));
            }
        }
        if proxy.upstream_timeout.is_some_and(|t| t.0 == 0) {
            return Err(self.fail(
                &at("upstream_timeout"),
                "must be longer than 0s (leave it out for no limit)",
            ));
        }
        if proxy
            .maintenance_page
            .as_ref()
            .is_some_and(|p| p.get_ref().trim().is_empty())
        {
            return Err(self.fail(
                &at("maintenance_page"),
                "expected the path of an HTML template in the project, e.g. \"deploy/maintenance.html\"",
            ));
        }
        if *proxy.max_connections.get_ref() == 0 {
            return Err(self.fail(&at("max_connections"), "must be at least 1"));
        }
        for (key, value) in [
            ("max_request_body", proxy.max_request_body),
            ("max_response_body", proxy.max_response_body),
        ] {
            if value.is_some_and(|b| b.0 == 0) {
                return Err(self.fail(
                    &at(key),
                    "must be at least 1 byte (leave it out for no limit)",
                ));
            }
        }
        for (i, range) in proxy.trusted_proxies.iter().enumerate() {
            if let Err(message) = range.get_ref().parse::<IpRange>() {
                let mut path = at("trusted_proxies");
                path.push(Seg::Index(i));
                return Err(self.fail(&path, &message));
            }
        }
        Ok(())
    }

    /// An error pointing at the key at `path`, for a bad name.
    pub(super) fn fail_key(&self, path: &[Seg<'_>], message: &str) -> Error {
        let key = super::diagnostics::display_path(path);
        self.error_at(self.outline.key_span(path), &key, message)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MINIMAL, load_str as load};
    use crate::operator::config::{Bytes, Millis};

    #[test]
    fn metrics_need_an_address_a_port_of_their_own_and_a_proxy() {
        let proxy = "[proxy]\nlisten = \"127.0.0.1:8080\"\nports = [18081, 18082]\n";
        let ok = load(&format!(
            "{MINIMAL}{proxy}[metrics]\nlisten = \"127.0.0.1:9400\"\n"
        ))
        .unwrap();
        assert_eq!(
            ok.config.metrics.as_ref().unwrap().listen.get_ref(),
            "127.0.0.1:9400"
        );
        for (text, says) in [
            (
                format!("{proxy}[metrics]\nlisten = \"9400\"\n"),
                "address and port",
            ),
            (
                format!("{proxy}[metrics]\nlisten = \"127.0.0.1:18082\"\n"),
                "the proxy's",
            ),
            (
                format!("{proxy}[metrics]\nlisten = \"127.0.0.1:0\"\n"),
                "not 0",
            ),
            (
                "[metrics]\nlisten = \"127.0.0.1:9400\"\n".to_string(),
                "add `[proxy]`",
            ),
        ] {
            let err = load(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
            assert!(err.contains("key `metrics.listen`"), "{err}");
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn tls_paths_are_absolute_and_the_redirect_has_a_port_of_its_own() {
        let proxy = "[proxy]\nlisten = \"127.0.0.1:8443\"\nports = [18081, 18082]\n";
        let ok = load(&format!(
            "{MINIMAL}{proxy}tls = {{ cert = \"/etc/c.pem\", key = \"/etc/k.pem\", redirect = \"0.0.0.0:8080\" }}\n"
        ))
        .unwrap();
        let spec = crate::protocol::manifest::ProxySpec::from(ok.config.proxy.as_ref().unwrap());
        let tls = spec.tls.expect("tls");
        assert_eq!(
            (tls.cert.as_str(), tls.key.as_str()),
            ("/etc/c.pem", "/etc/k.pem")
        );
        assert_eq!(tls.redirect.as_deref(), Some("0.0.0.0:8080"));
        for (tls, key, says) in [
            (
                "cert = \"c.pem\", key = \"/k\"",
                "proxy.tls.cert",
                "absolute",
            ),
            (
                "cert = \"/c\", key = \"k.pem\"",
                "proxy.tls.key",
                "absolute",
            ),
            (
                "cert = \"/c\", key = \"/k\", redirect = \"80\"",
                "proxy.tls.redirect",
                "address",
            ),
            (
                "cert = \"/c\", key = \"/k\", redirect = \"0.0.0.0:8443\"",
                "proxy.tls.redirect",
                "apart",
            ),
        ] {
            let err = load(&format!("{MINIMAL}{proxy}tls = {{ {tls} }}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("key `{key}`")), "{err}");
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn proxy_settings_are_checked_where_they_are_written() {
        let ok = load(&format!(
            "{MINIMAL}[proxy]\nlisten = \"127.0.0.1:8080\"\nports = [18081, 18082]\n"
        ))
        .unwrap();
        let proxy = ok.config.proxy.as_ref().unwrap();
        assert_eq!(proxy.port_env.get_ref(), "PORT");
        assert_eq!(proxy.drain_timeout, Millis(30_000));
        assert_eq!(proxy.hold, Millis(10_000));
        let err = load(&format!(
            "{MINIMAL}[proxy]\nlisten = \"127.0.0.1:8080\"\nports = [18081, 8080]\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("key `proxy.ports`"), "{err}");
        assert!(err.to_string().contains("proxy's own"), "{err}");
        let err = load(&format!(
            "{MINIMAL}[stages.p]\nproxy = {{ listen = \"localhost\", ports = [1, 2] }}\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("key `stages.p.proxy.listen`"),
            "{err}"
        );
    }

    #[test]
    fn proxy_limits_default_and_bad_ones_point_at_their_key() {
        let base =
            format!("{MINIMAL}[proxy]\nlisten = \"127.0.0.1:8080\"\nports = [18081, 18082]\n");
        let ok = load(&base).unwrap();
        let proxy = ok.config.proxy.as_ref().unwrap();
        assert_eq!(proxy.header_timeout, Millis(30_000));
        assert_eq!(proxy.idle_timeout, Millis(60_000));
        assert_eq!(proxy.upstream_timeout, None);
        assert_eq!(*proxy.max_connections.get_ref(), 512);
        assert!(proxy.trusted_proxies.is_empty());
        let ok = load(&format!(
            "{base}header_timeout = \"2s\"\nupstream_timeout = \"1m\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n"
        ))
        .unwrap();
        let spec = crate::protocol::manifest::ProxySpec::from(ok.config.proxy.as_ref().unwrap());
        assert_eq!(spec.header_timeout_ms, 2_000);
        assert_eq!(spec.upstream_timeout_ms, Some(60_000));
        assert_eq!(spec.trusted_proxies.len(), 2);
        assert_eq!(
            (
                spec.max_request_body,
                spec.max_response_body,
                spec.access_log
            ),
            (None, None, false),
            "no body limits and no access log by default"
        );
        let ok = load(&format!(
            "{base}max_request_body = \"10MB\"\nmax_response_body = 4096\naccess_log = true\n"
        ))
        .unwrap();
        let spec = crate::protocol::manifest::ProxySpec::from(ok.config.proxy.as_ref().unwrap());
        assert_eq!(spec.max_request_body, Some(10_000_000));
        assert_eq!(spec.max_response_body, Some(4096));
        assert!(spec.access_log);
        for (extra, key, says) in [
            (
                "trusted_proxies = [\"10.0.0.0/8\",\n  \"10.0.0.1/8\"]\n",
                "proxy.trusted_proxies`: `10.0.0.1/8",
                "shipjar.toml:8:3:",
            ),
            (
                "trusted_proxies = [\"proxy.example\"]\n",
                "proxy.trusted_proxies",
                "not an IP address",
            ),
            (
                "header_timeout = \"0s\"\n",
                "proxy.header_timeout",
                "longer than 0s",
            ),
            (
                "idle_timeout = \"0s\"\n",
                "proxy.idle_timeout",
                "longer than 0s",
            ),
            (
                "upstream_timeout = \"0s\"\n",
                "proxy.upstream_timeout",
                "no limit",
            ),
            (
                "max_connections = 0\n",
                "proxy.max_connections",
                "at least 1",
            ),
            (
                "max_request_body = 0\n",
                "proxy.max_request_body",
                "at least 1 byte",
            ),
            (
                "max_response_body = \"10 parsecs\"\n",
                "proxy.max_response_body",
                "invalid size",
            ),
        ] {
            let err = load(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(err.contains(&format!("key `{key}")), "{extra}: {err}");
            assert!(err.contains(says), "{extra}: {err}");
        }
    }

    #[test]
    fn a_jar_named_like_a_file_shipjar_writes_in_a_release_is_refused() {
        for name in ["RELEASE", "config", "cds.jsa"] {
            let err = load(&format!("[service]\nname = \"a\"\njar = \"{name}\"\n")).unwrap_err();
            assert!(
                err.message.contains("shipjar.toml:3:7: key `service.jar`")
                    && err
                        .message
                        .contains("a name shipjar writes in every release"),
                "{}",
                err.message
            );
        }
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
    fn cds_with_a_command_is_a_config_error_at_its_key() {
        let err = load("[service]\nname = \"a\"\ncommand = [\"x\"]\ncds = true\n").unwrap_err();
        assert!(
            err.message.contains("shipjar.toml:4:7: key `service.cds`"),
            "{}",
            err.message
        );
        assert!(load("[service]\nname = \"a\"\njar = \"a.jar\"\ncds = true\n").is_ok());
    }

    #[test]
    fn the_repl_is_for_a_plain_jvm_service_on_loopback_only() {
        let jvm = "[service]\nname = \"a\"\njar = \"a.jar\"\n";
        let project = load(&format!("{jvm}repl = {{ port = 5555 }}\n")).unwrap();
        assert_eq!(
            project.config.service.repl.unwrap().java_opt(),
            "-Dclojure.server.repl={:port 5555 :address \"127.0.0.1\" :accept clojure.core.server/repl}"
        );
        for (bad, says) in [
            (
                format!("{jvm}repl = {{ port = 5555, address = \"0.0.0.0\" }}\n"),
                "address",
            ),
            (format!("{jvm}repl = {{ port = 0 }}\n"), "service.repl"),
            (
                "[service]\nname = \"a\"\ncommand = [\"x\"]\nrepl = { port = 5555 }\n".to_string(),
                "a JVM service",
            ),
            (
                format!(
                    "{jvm}repl = {{ port = 5555 }}\n[proxy]\nlisten = \"127.0.0.1:8080\"\nports = [8081, 8082]\n"
                ),
                "not with `[proxy]`",
            ),
            (
                format!(
                    "{jvm}java_opts = [\"-Dclojure.server.r={{:port 1 :address \\\"0.0.0.0\\\" :accept clojure.core.server/repl}}\"]\n"
                ),
                "service.java_opts",
            ),
            (
                format!("{jvm}env = {{ JAVA_TOOL_OPTIONS = \"-Dclojure.server.x={{}}\" }}\n"),
                "service.env.JAVA_TOOL_OPTIONS",
            ),
            (
                format!(
                    "{jvm}[stages.p.roles.web]\nhosts = [\"a1\"]\njava_opts = [\"-Dclojure.server.x={{}}\"]\n"
                ),
                "stages.p.roles.web.java_opts",
            ),
        ] {
            let err = load(&bad).unwrap_err();
            assert!(err.message.contains(says), "{bad}: {}", err.message);
        }
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
    fn a_command_secret_has_an_argv_and_a_timeout_only_with_a_command() {
        let stage = |secret: &str| {
            format!("{MINIMAL}[stages.prod]\nhosts = [\"app1\"]\nsecrets = {{ pw = {secret} }}\n")
        };
        let project = load(&stage("{ command = [\"op\", \"read\", \"op://p/db\"] }")).unwrap();
        let resolved = project.stage("prod").unwrap();
        match &resolved.secrets["pw"].from {
            crate::operator::config::SecretFrom::Command {
                argv, timeout_ms, ..
            } => {
                assert_eq!(argv, &["op", "read", "op://p/db"]);
                assert_eq!(*timeout_ms, 30_000);
            }
            other => panic!("{other:?}"),
        }
        let project = load(&stage("{ command = [\"op\"], timeout = \"5s\" }")).unwrap();
        assert!(matches!(
            project.stage("prod").unwrap().secrets["pw"].from,
            crate::operator::config::SecretFrom::Command {
                timeout_ms: 5_000,
                ..
            }
        ));
        for (bad, says) in [
            ("{ command = [] }", "stages.prod.secrets.pw.command"),
            ("{ command = [\"\"] }", "stages.prod.secrets.pw.command"),
            ("{ env = \"X\", command = [\"op\"] }", "exactly one of"),
            (
                "{ env = \"X\", timeout = \"5s\" }",
                "only to a `command` secret",
            ),
            (
                "{ command = [\"op\"], timeout = \"0s\" }",
                "must be above 0",
            ),
        ] {
            let err = load(&stage(bad)).unwrap_err();
            assert!(err.message.contains(says), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn a_nul_in_what_becomes_argv_or_env_is_a_config_error_at_its_key() {
        let text = MINIMAL.replace(
            "[service]",
            "[service]\njava_opts = [\"-Xa\", \"-Xb\\u0000\"]",
        );
        let err = load(&text).unwrap_err();
        assert!(
            err.message
                .contains("key `service.java_opts`: contains a NUL byte"),
            "{}",
            err.message
        );
        assert!(err.message.contains("shipjar.toml:"), "{}", err.message);
    }

    #[test]
    fn a_lock_lease_under_ten_seconds_is_rejected() {
        let text = format!("{MINIMAL}[stages.prod]\nhosts = [\"a\"]\nlock_lease = \"1ms\"\n");
        let err = load(&text).unwrap_err();
        assert!(
            err.message
                .contains("shipjar.toml:6:14: key `stages.prod.lock_lease`: must be at least 10s"),
            "{}",
            err.message
        );
        let text = format!("{MINIMAL}[stages.prod]\nhosts = [\"a\"]\nlock_lease = \"10s\"\n");
        assert!(load(&text).is_ok());
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
    fn auto_revert_defaults_off_with_a_15m_window_and_a_bad_window_is_named() {
        let project = load(MINIMAL).unwrap();
        let r = &project.config.restart;
        assert!(!r.auto_revert);
        assert_eq!(r.revert_window, Millis(15 * 60_000));
        let project = load(&format!(
            "{MINIMAL}[restart]\nauto_revert = true\nrevert_window = \"5m\"\n"
        ))
        .unwrap();
        let spec = crate::protocol::manifest::RestartSpec::from(&project.config.restart);
        assert!(spec.auto_revert);
        assert_eq!(spec.revert_window_ms, 300_000);

        let err = load(&format!(
            "{MINIMAL}[restart]\nauto_revert = true\nrevert_window = \"soon\"\n"
        ))
        .unwrap_err();
        assert!(
            err.message.contains(
                "shipjar.toml:6:17: key `restart.revert_window`: invalid duration `soon`"
            ),
            "{}",
            err.message
        );
        let err = load(&format!(
            "{MINIMAL}[restart]\nauto_revert = true\nrevert_window = \"0s\"\n"
        ))
        .unwrap_err();
        assert!(
            err.message
                .contains("shipjar.toml:6:17: key `restart.revert_window`: must be longer than 0s"),
            "{}",
            err.message
        );
        let err = load(&format!("{MINIMAL}[restart]\nauto_revert = \"yes\"\n")).unwrap_err();
        assert!(
            err.message
                .contains("shipjar.toml:5:15: key `restart.auto_revert`"),
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
    fn the_console_log_file_is_one_name_in_the_log_dir() {
        let project = load(MINIMAL).unwrap();
        assert_eq!(project.config.logs.file.get_ref(), "console.log");
        let project = load(&format!("{MINIMAL}[logs]\nfile = \"stdout.log\"\n")).unwrap();
        assert_eq!(project.config.logs.file.get_ref(), "stdout.log");
        for bad in ["../etc/passwd", "a/b.log", "", ".."] {
            let err = load(&format!("{MINIMAL}[logs]\nfile = \"{bad}\"\n")).unwrap_err();
            assert!(
                err.message.contains("key `logs.file`") && err.message.contains("log dir"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn liveness_settings() {
        let project = load(MINIMAL).unwrap();
        assert_eq!(*project.config.health.failures.get_ref(), 3);
        assert_eq!(project.config.health.probe_timeout.0, 2_000);
        let project = load(&format!(
            "{MINIMAL}[health]\ninterval = \"1s\"\nfailures = 5\nprobe_timeout = \"500ms\"\n"
        ))
        .unwrap();
        assert_eq!(*project.config.health.failures.get_ref(), 5);
        assert_eq!(project.config.health.probe_timeout.0, 500);
        // The default probe timeout is capped at a short interval, not refused.
        assert!(load(&format!("{MINIMAL}[health]\ninterval = \"1s\"\n")).is_ok());
        let err = load(&format!(
            "{MINIMAL}[health]\ninterval = \"1s\"\nprobe_timeout = \"3s\"\n"
        ))
        .unwrap_err();
        assert!(
            err.message.contains("key `health.probe_timeout`")
                && err.message.contains("longer than `interval`"),
            "{}",
            err.message
        );
        let err = load(&format!(
            "{MINIMAL}[health]\ninterval = \"1m\"\nprobe_timeout = \"30s\"\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("at most 10s"), "{}", err.message);
        let err = load(&format!("{MINIMAL}[health]\nfailures = 0\n")).unwrap_err();
        assert!(err.message.contains("health.failures"), "{}", err.message);
        let err = load(&format!("{MINIMAL}[health]\ninterval = \"10ms\"\n")).unwrap_err();
        assert!(err.message.contains("health.interval"), "{}", err.message);
    }

    #[test]
    fn settle_defaults_to_none_and_is_bounded() {
        let project = load(MINIMAL).unwrap();
        assert_eq!(project.config.health.settle, Millis(0));
        let project = load(&format!("{MINIMAL}[health]\nsettle = \"30s\"\n")).unwrap();
        assert_eq!(project.config.health.settle, Millis(30_000));
        let spec = crate::protocol::manifest::HealthSpec::from(&project.config.health);
        assert_eq!(spec.settle_ms, 30_000);
        let err = load(&format!("{MINIMAL}[health]\nsettle = \"2h\"\n")).unwrap_err();
        assert!(
            err.message.contains("key `health.settle`") && err.message.contains("at most 30m"),
            "{}",
            err.message
        );
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
