//! Stage resolution: a declared `[stages.NAME]`, or the built-in `local`
//! stage, with defaults applied and paths made absolute.

use std::collections::BTreeMap;
use std::path::PathBuf;

use toml::Spanned;

use super::Project;
use super::defaults;
use super::hosts::{HostSpec, LOCAL_HOST};
use super::roles::ResolvedRole;
use super::schema::{OnFailure, Rolling, SecretSource, Stage};
use crate::error::{Error, Result};

/// Name of the stage every project has without declaring it.
pub const LOCAL_STAGE: &str = "local";

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
    pub secrets: BTreeMap<String, StageSecret>,
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
    /// How long a host may stay silent on a request before it is given up.
    pub answer_timeout_ms: u64,
    /// `[stages.NAME.roles.*]`, in name order (empty without roles).
    pub roles: Vec<ResolvedRole>,
}

impl ResolvedStage {
    /// The role `host` (as written) belongs to, if any.
    pub fn role_of(&self, host: &str) -> Option<&ResolvedRole> {
        self.roles
            .iter()
            .find(|r| r.hosts.iter().any(|h| h == host))
    }
}

/// A stage's secret, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSecret {
    /// Where the value comes from.
    pub from: SecretFrom,
    /// A value under 8 characters is accepted (and masked as a whole word only).
    pub allow_short: bool,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFrom {
    /// An environment variable of the operator.
    Env(String),
    /// A file on the operator's machine.
    File(PathBuf),
    /// A command run on the operator's machine: argv, run in the project directory.
    Command {
        /// Program and arguments, no shell.
        argv: Vec<String>,
        /// The project directory, where it runs.
        dir: PathBuf,
        /// Killed (with its process group) after this long.
        timeout_ms: u64,
    },
}

impl Project {
    /// The named stage; `local` exists even when not declared.
    pub fn stage(&self, name: &str) -> Result<ResolvedStage> {
        let declared = self.config.stages.get(name).map(Spanned::get_ref);
        if declared.is_none() && name != LOCAL_STAGE {
            return Err(self.no_such_stage(name));
        }
        let hosts = match declared {
            Some(stage) => super::roles::stage_hosts(self, name, stage)
                .into_iter()
                .map(|h| Ok((h.get_ref().clone(), HostSpec::parse(h.get_ref())?)))
                .collect::<Result<Vec<_>, String>>()
                .map_err(Error::config)?,
            None => vec![(LOCAL_HOST.to_string(), HostSpec::Local)],
        };
        let is_local = hosts.iter().all(|(_, spec)| *spec == HostSpec::Local);
        Ok(ResolvedStage {
            name: name.to_string(),
            root: self.stage_root(name, declared, is_local),
            hosts,
            vars: declared.map(|s| s.vars.clone()).unwrap_or_default(),
            secrets: declared.map_or_else(BTreeMap::new, |s| self.secret_sources(&s.secrets)),
            ssh_config: declared
                .and_then(|s| s.ssh_config.as_ref())
                .map(|p| self.dir.join(p)),
            sudo: declared.is_some_and(|s| s.sudo),
            agent_path: declared.map_or_else(
                || defaults::AGENT_PATH.to_string(),
                |s| s.agent_path.get_ref().clone(),
            ),
            agent_binary: declared
                .and_then(|s| s.agent_binary.as_ref())
                .map(|p| self.dir.join(p)),
            rolling: declared.map(|s| s.rolling).unwrap_or_default(),
            on_failure: declared.map(|s| s.on_failure).unwrap_or_default(),
            lock_lease_ms: self.lock_lease_ms(declared),
            answer_timeout_ms: declared
                .and_then(|s| s.answer_timeout)
                .map_or(defaults::ANSWER_TIMEOUT_MS, |t| t.0),
            roles: declared.map(super::roles::resolve).unwrap_or_default(),
        })
    }

    fn no_such_stage(&self, name: &str) -> Error {
        let mut known: Vec<&str> = self.config.stages.keys().map(String::as_str).collect();
        if !known.contains(&LOCAL_STAGE) {
            known.insert(0, LOCAL_STAGE);
        }
        Error::config(format!("{}: no stage `{name}`", self.file.display()))
            .hint(format!("stages are: {}", known.join(", ")))
    }

    /// The stage's `root`, absolute; an all-local stage defaults to a directory of the project.
    fn stage_root(&self, name: &str, declared: Option<&Stage>, is_local: bool) -> PathBuf {
        match declared.and_then(|s| s.root.clone()) {
            Some(root) if root.is_absolute() => root,
            Some(root) => self.dir.join(root),
            None if is_local => self.dir.join(defaults::LOCAL_ROOT_DIR).join(name),
            None => PathBuf::from(defaults::REMOTE_ROOT),
        }
    }

    /// The lease: as set, or long enough that a killed deploy's lock outlives
    /// any single step of a live one.
    fn lock_lease_ms(&self, declared: Option<&Stage>) -> u64 {
        let step_ms = self.config.health.start_timeout.0
            + self.config.health.settle.0
            + self.config.stop.timeout.0;
        declared.and_then(|s| s.lock_lease).map_or(
            (defaults::LOCK_LEASE_STEPS * step_ms).max(defaults::LOCK_LEASE_MIN_MS),
            |l| l.0,
        )
    }

    fn secret_sources(
        &self,
        secrets: &BTreeMap<String, Spanned<SecretSource>>,
    ) -> BTreeMap<String, StageSecret> {
        let mut sources = BTreeMap::new();
        for (key, source) in secrets {
            let s = source.get_ref();
            let from = match (&s.env, &s.file, &s.command) {
                (Some(var), _, _) => SecretFrom::Env(var.clone()),
                (None, Some(file), _) => SecretFrom::File(self.dir.join(file)),
                (None, None, Some(argv)) => SecretFrom::Command {
                    argv: argv.clone(),
                    dir: self.dir.clone(),
                    timeout_ms: s
                        .timeout
                        .map_or(defaults::SECRET_COMMAND_TIMEOUT_MS, |t| t.0),
                },
                (None, None, None) => unreachable!("validated: a secret has one source"),
            };
            let secret = StageSecret {
                from,
                allow_short: s.allow_short,
            };
            sources.insert(key.clone(), secret);
        }
        sources
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MINIMAL, load_str as load};
    use super::*;
    use crate::operator::config::{BatchSize, Millis};

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
    fn undeclared_stage_lists_known_stages() {
        let project = load(&format!("{MINIMAL}[stages.prod]\nhosts = [\"app1\"]\n")).unwrap();
        let err = project.stage("staging").unwrap_err();
        assert!(err.to_string().contains("stages are: local, prod"), "{err}");
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
}
