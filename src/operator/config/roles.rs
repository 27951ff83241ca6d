//! `[stages.NAME.roles.ROLE]`: a stage's hosts grouped by what they do, each
//! group with its own `env`, `java_opts` and `[health]` keys over the
//! service's. A `roles` table rather than `hosts = { web = [...] }`: a
//! role's hosts and its overrides are written in one place, and `hosts`
//! keeps one type (a list), so existing files and their errors stay as
//! they are.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use super::Project;
use super::diagnostics::Seg;
use super::hosts::HostSpec;
use super::schema::{Health, Stage};
use super::values::Millis;
use crate::error::Result;

/// `[stages.NAME.roles.ROLE]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// The hosts of this role, `[user@]host[:port]`.
    pub hosts: Vec<Spanned<String>>,
    /// Environment over `[service] env` (values are templates).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// JVM options after `[service] java_opts` (a later `-Xmx` wins in the JVM).
    #[serde(default)]
    pub java_opts: Vec<String>,
    /// `[health]` keys for this role's hosts; the rest from `[health]`.
    #[serde(default)]
    pub health: RoleHealth,
}

/// `[health]` keys a role may set; each one unset is `[health]`'s.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleHealth {
    /// HTTP URL that answers 2xx when healthy (in place of `[health]`'s `url` or `tcp`).
    pub url: Option<Spanned<String>>,
    /// TCP port on 127.0.0.1 (in place of `[health]`'s `url` or `tcp`).
    pub tcp: Option<u16>,
    /// How long a start may take.
    pub start_timeout: Option<Millis>,
    /// How often to check once running.
    pub interval: Option<Millis>,
    /// Consecutive failed checks of a running service before a restart.
    pub failures: Option<Spanned<u32>>,
    /// Longest single check of a running service.
    pub probe_timeout: Option<Millis>,
    /// How long a new release must stay healthy after its gate.
    pub settle: Option<Millis>,
}

impl RoleHealth {
    /// `base` with this role's keys over it; `url` and `tcp` replace each other.
    pub fn over(&self, base: &Health) -> Health {
        let mut h = base.clone();
        if let Some(url) = &self.url {
            h.url = Some(url.clone());
            h.tcp = None;
        }
        if let Some(tcp) = self.tcp {
            h.tcp = Some(tcp);
            h.url = None;
        }
        if let Some(t) = self.start_timeout {
            h.start_timeout = t;
        }
        if let Some(t) = self.interval {
            h.interval = t;
        }
        if let Some(n) = &self.failures {
            h.failures = n.clone();
        }
        if let Some(t) = self.probe_timeout {
            h.probe_timeout = t;
        }
        if let Some(t) = self.settle {
            h.settle = t;
        }
        h
    }
}

/// A role of a resolved stage.
#[derive(Debug, Clone)]
pub struct ResolvedRole {
    /// Role name.
    pub name: String,
    /// Its hosts, as written.
    pub hosts: Vec<String>,
    /// What it sets over the service's settings.
    pub role: Role,
}

/// The stage's hosts: those of `hosts` (when written, or when there are no
/// roles: the default), then each role's, roles in name order.
pub(super) fn stage_hosts<'a>(
    project: &Project,
    name: &str,
    stage: &'a Stage,
) -> Vec<&'a Spanned<String>> {
    let plain = stage.roles.is_empty() || hosts_written(project, name);
    let plain = stage.hosts.iter().filter(|_| plain);
    plain
        .chain(stage.roles.values().flat_map(|r| r.get_ref().hosts.iter()))
        .collect()
}

/// Whether `[stages.NAME] hosts` is in the file (it defaults to `local`).
fn hosts_written(project: &Project, name: &str) -> bool {
    project
        .outline
        .contains(&[Seg::Key("stages"), Seg::Key(name), Seg::Key("hosts")])
}

/// `prefix` then `rest`: a key path.
fn join<'a>(prefix: &[Seg<'a>], rest: &[Seg<'a>]) -> Vec<Seg<'a>> {
    prefix.iter().chain(rest).copied().collect()
}

/// The stage's roles, resolved.
pub(super) fn resolve(stage: &Stage) -> Vec<ResolvedRole> {
    stage
        .roles
        .iter()
        .map(|(name, role)| ResolvedRole {
            name: name.clone(),
            hosts: role
                .get_ref()
                .hosts
                .iter()
                .map(|h| h.get_ref().clone())
                .collect(),
            role: role.get_ref().clone(),
        })
        .collect()
}

impl Project {
    /// A stage's hosts (its own and its roles'): each parses and is listed
    /// once; each role has a name, a host, and settings that make sense.
    pub(super) fn validate_stage_hosts(&self, name: &str, stage: &Stage) -> Result<()> {
        let base = [Seg::Key("stages"), Seg::Key(name)];
        let mut seen = BTreeSet::new();
        let mut check = |host: &Spanned<String>, path: &[Seg<'_>]| -> Result<()> {
            if !seen.insert(host.get_ref().clone()) {
                let message = format!("`{}` is listed twice in the stage", host.get_ref());
                return Err(self.fail(path, &message));
            }
            HostSpec::parse(host.get_ref()).map_err(|m| self.fail(path, &m))?;
            Ok(())
        };
        if stage.roles.is_empty() || hosts_written(self, name) {
            if stage.hosts.is_empty() {
                return Err(self.fail(
                    &join(&base, &[Seg::Key("hosts")]),
                    "needs at least one host",
                ));
            }
            for (i, host) in stage.hosts.iter().enumerate() {
                check(host, &join(&base, &[Seg::Key("hosts"), Seg::Index(i)]))?;
            }
        }
        for (role_name, role) in &stage.roles {
            let role_base = join(&base, &[Seg::Key("roles"), Seg::Key(role_name)]);
            if !super::validate::is_identifier(role_name) {
                return Err(self.fail_key(
                    &join(&role_base, &[]),
                    "a role name must be [a-z][a-z0-9_-]*",
                ));
            }
            let role = role.get_ref();
            if role.hosts.is_empty() {
                return Err(self.fail(
                    &join(&role_base, &[Seg::Key("hosts")]),
                    "needs at least one host",
                ));
            }
            for (i, host) in role.hosts.iter().enumerate() {
                check(host, &join(&role_base, &[Seg::Key("hosts"), Seg::Index(i)]))?;
            }
            for (key, value) in &role.env {
                if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                    return Err(self.fail(
                        &join(&role_base, &[Seg::Key("env"), Seg::Key(key)]),
                        "expected a variable name without `=` and a value without a NUL byte",
                    ));
                }
            }
            if !role.java_opts.is_empty() && self.config.service.jar.is_none() {
                return Err(self.fail(
                    &join(&role_base, &[Seg::Key("java_opts")]),
                    "java_opts needs `[service] jar` (a `command` service takes no JVM options)",
                ));
            }
            if let Some(i) = role.java_opts.iter().position(|o| o.contains('\0')) {
                return Err(self.fail(
                    &join(&role_base, &[Seg::Key("java_opts"), Seg::Index(i)]),
                    "contains a NUL byte",
                ));
            }
            self.validate_role_health(&join(&role_base, &[Seg::Key("health")]), &role.health)?;
        }
        Ok(())
    }

    /// A role's `[health]` keys, by the rules of `[health]`.
    fn validate_role_health(&self, at: &[Seg<'_>], h: &RoleHealth) -> Result<()> {
        let key = |k: &'static str| {
            let mut path = at.to_vec();
            path.push(Seg::Key(k));
            path
        };
        if h.url.is_some() && h.tcp.is_some() {
            return Err(self.fail(&key("url"), "set either `url` or `tcp`, not both"));
        }
        if let Some(url) = &h.url
            && !url.get_ref().starts_with("http://")
        {
            return Err(self.fail(
                &key("url"),
                "expected an http:// URL on this host, e.g. \"http://127.0.0.1:8080/health\"",
            ));
        }
        let merged = h.over(&self.config.health);
        if merged.interval.0 < 100 {
            return Err(self.fail(&key("interval"), "must be at least 100ms"));
        }
        if *merged.failures.get_ref() == 0 {
            return Err(self.fail(&key("failures"), "must be at least 1"));
        }
        let max = crate::protocol::defaults::HEALTH_PROBE_TIMEOUT_MAX;
        if let Some(t) = h.probe_timeout
            && (t.0 == 0 || t.0 > max.as_millis() as u64 || t.0 > merged.interval.0)
        {
            return Err(self.fail(
                &key("probe_timeout"),
                &format!(
                    "must be longer than 0s, at most {}s and not longer than `interval` ({}ms)",
                    max.as_secs(),
                    merged.interval.0
                ),
            ));
        }
        if merged.settle.0 > super::defaults::SETTLE_MAX_MS {
            return Err(self.fail(
                &key("settle"),
                &format!(
                    "must be at most {}m",
                    super::defaults::SETTLE_MAX_MS / 60_000
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MINIMAL, load_str as load};
    use crate::operator::config::Millis;

    const ROLES: &str = "[stages.prod]\nhosts = [\"edge1\"]\n\
        [stages.prod.roles.web]\nhosts = [\"web1\", \"web2\"]\n\
        env = { ROLE = \"web\" }\njava_opts = [\"-Xmx2g\"]\n\
        health = { url = \"http://127.0.0.1:9000/ready\", settle = \"5s\" }\n\
        [stages.prod.roles.worker]\nhosts = [\"worker1\"]\nhealth = { tcp = 9090 }\n";

    #[test]
    fn a_stage_has_its_own_hosts_then_each_roles() {
        let project = load(&format!("{MINIMAL}{ROLES}")).unwrap();
        let stage = project.stage("prod").unwrap();
        let hosts: Vec<&str> = stage.hosts.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hosts, ["edge1", "web1", "web2", "worker1"]);
        assert_eq!(stage.role_of("web2").map(|r| r.name.as_str()), Some("web"));
        assert_eq!(stage.role_of("edge1").map(|r| r.name.as_str()), None);
        let web = stage.role_of("web1").unwrap();
        let health = web.role.health.over(&project.config.health);
        assert_eq!(
            health.url.map(|u| u.into_inner()),
            Some("http://127.0.0.1:9000/ready".to_string())
        );
        assert_eq!(health.settle, Millis(5_000));
        assert_eq!(health.start_timeout, project.config.health.start_timeout);
        let worker = stage.role_of("worker1").unwrap();
        let health = worker.role.health.over(&project.config.health);
        assert_eq!((health.url, health.tcp), (None, Some(9090)));
    }

    #[test]
    fn a_stage_of_roles_alone_is_not_the_local_host() {
        let text = format!("{MINIMAL}[stages.prod]\n[stages.prod.roles.web]\nhosts = [\"web1\"]\n");
        let stage = load(&text).unwrap().stage("prod").unwrap();
        let hosts: Vec<&str> = stage.hosts.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hosts, ["web1"]);
    }

    #[test]
    fn role_errors_name_the_file_line_and_key() {
        let cases = [
            (
                "[stages.prod.roles.web]\nhosts = [\"a\"]\n[stages.prod.roles.worker]\nhosts = [\"a\"]\n",
                "shipjar.toml:8:10: key `stages.prod.roles.worker.hosts`: `a` is listed twice in the stage",
            ),
            (
                "hosts = [\"a\"]\n[stages.prod.roles.web]\nhosts = [\"a\"]\n",
                "key `stages.prod.roles.web.hosts`: `a` is listed twice",
            ),
            (
                "[stages.prod.roles.web]\nhosts = []\n",
                "key `stages.prod.roles.web.hosts`: needs at least one host",
            ),
            (
                "[stages.prod.roles.Web]\nhosts = [\"a\"]\n",
                "key `stages.prod.roles.Web`: a role name must be",
            ),
            (
                "[stages.prod.roles.web]\nhosts = [\"a\"]\nhealth = { url = \"http://x/\", tcp = 1 }\n",
                "key `stages.prod.roles.web.health.url`: set either `url` or `tcp`, not both",
            ),
            (
                "[stages.prod.roles.web]\nhosts = [\"a\"]\nhealth = { failures = 0 }\n",
                "key `stages.prod.roles.web.health.failures`: must be at least 1",
            ),
            (
                "[stages.prod.roles.web]\nhosts = [\"a\"]\nhealth = { port = 1 }\n",
                "stages.prod.roles.web.health",
            ),
        ];
        for (stage, expected) in cases {
            let text = format!("{MINIMAL}[stages.prod]\n{stage}");
            let err = load(&text).unwrap_err();
            assert!(err.message.contains(expected), "{stage}\n{}", err.message);
        }
    }

    #[test]
    fn role_java_opts_need_a_jar_service() {
        let text = "[service]\nname = \"hello\"\ncommand = [\"./run\"]\n\
            [stages.prod.roles.web]\nhosts = [\"a\"]\njava_opts = [\"-Xmx1g\"]\n";
        let err = load(text).unwrap_err();
        assert!(
            err.message
                .contains("key `stages.prod.roles.web.java_opts`: java_opts needs `[service] jar`"),
            "{}",
            err.message
        );
    }
}
