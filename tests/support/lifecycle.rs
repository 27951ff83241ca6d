//! The lifecycle harness: a copy of the hello project with one stage of test
//! hosts of any kind (plain or init-script hosts from tests/support/fleet.rs,
//! systemd hosts from tests/support/systemd_host.rs), the real shipjar run on
//! it, and what the lifecycle tests read back (the last JSON result, `status`,
//! provision's resources, the version a host serves), so that each test
//! states only what differs. Needs `mod common;` and `mod fleet;` beside it.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{self, hello_jar, last_json, text};
use crate::fleet::Fleet;

/// The example's config with the shorter timeouts the host tests use.
pub fn short_timeouts(config: String) -> String {
    config
        .replace("start_timeout = \"30s\"", "start_timeout = \"20s\"")
        .replace("timeout = \"15s\"", "timeout = \"5s\"")
}

/// The example's config with the service reachable from the test (outside
/// the hosts) on each host's own address, and the shorter timeouts.
pub fn reachable(config: String) -> String {
    short_timeouts(config.replace("BIND = \"127.0.0.1\"", "BIND = \"0.0.0.0\""))
}

/// A new temp dir for a project of `stage`.
pub fn temp_dir(stage: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("shipjar-{stage}-"))
        .tempdir()
        .expect("tempdir")
}

/// A hello project with one stage of test hosts.
pub struct StageProject {
    /// Keeps the project directory alive.
    pub dir: tempfile::TempDir,
    /// The stage the hosts are in.
    pub stage: String,
    /// The database password secret.
    pub secret: String,
}

impl StageProject {
    /// A project in `dir` (see [`temp_dir`]) whose stage `stage` is
    /// `hosts`, reached through `ssh_config`, with `stage_extra` lines in the
    /// stage's table; `edit` changes the example's config first.
    pub fn new(
        dir: tempfile::TempDir,
        stage: &str,
        hosts: &[String],
        ssh_config: &Path,
        stage_extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> StageProject {
        common::write_fleet_project(dir.path(), stage, hosts, ssh_config, stage_extra, edit);
        StageProject {
            dir,
            stage: stage.to_string(),
            secret: common::unique_secret(),
        }
    }

    /// A project in a new temp dir whose stage `stage` is the one host
    /// `host`; the rest as for [`StageProject::new`].
    pub fn one_host(
        stage: &str,
        host: &str,
        ssh_config: &Path,
        stage_extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> StageProject {
        let hosts = [host.to_string()];
        StageProject::new(
            temp_dir(stage),
            stage,
            &hosts,
            ssh_config,
            stage_extra,
            edit,
        )
    }

    /// Asserts that `status` of the stage exits 1, flagging that a host
    /// drifted from the stage's last deploy.
    #[track_caller]
    pub fn assert_drifted(&self) {
        let status = self.run(&["status", &self.stage]);
        common::exited_saying(&status, 1, "! drifted from the stage's last deploy");
    }

    /// The project directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Appends `text` to shipjar.toml.
    pub fn append_config(&self, text: &str) {
        let file = self.path().join("shipjar.toml");
        let config = std::fs::read_to_string(&file).expect("read config");
        std::fs::write(&file, config + text).expect("write config");
    }

    /// Rewrites shipjar.toml with `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let file = self.path().join("shipjar.toml");
        let config = std::fs::read_to_string(&file).expect("read config");
        std::fs::write(&file, edit(config)).expect("write config");
    }

    /// `shipjar -C DIR ARGS…` with the secret in its environment, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        common::shipjar_in(self.path(), &self.secret, args)
    }

    /// Runs shipjar on the project.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run shipjar")
    }

    /// The arguments of `--json deploy STAGE` of the hello jar as `version`, then `extra`.
    pub fn deploy_args(&self, version: &str, extra: &[&str]) -> Vec<String> {
        let jar = hello_jar().to_string_lossy().into_owned();
        let mut args: Vec<String> = ["--json", "deploy", &self.stage, "--artifact", &jar]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(["--version".to_string(), version.to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// `--json deploy` of the hello jar as `version`, then the `extra` arguments.
    pub fn deploy_with(&self, version: &str, extra: &[&str]) -> Output {
        let args = self.deploy_args(version, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    /// `--json deploy` of the hello jar as `version`, with `env` for this release.
    pub fn deploy(&self, version: &str, env: &[&str]) -> Output {
        let extra: Vec<&str> = env.iter().flat_map(|e| ["--env", e]).collect();
        self.deploy_with(version, &extra)
    }

    /// Starts `--json deploy` of the hello jar as `version`, then the
    /// `extra` arguments, its output piped.
    pub fn spawn_deploy(&self, version: &str, extra: &[&str]) -> std::process::Child {
        let args = self.deploy_args(version, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::spawn_piped(self.command(&args))
    }

    /// Starts `--json deploy` of `version` whose service takes
    /// `startup_delay_ms` to get healthy, its output piped.
    pub fn spawn_slow_deploy(&self, version: &str, startup_delay_ms: u32) -> std::process::Child {
        let delay = format!("STARTUP_DELAY_MS={startup_delay_ms}");
        self.spawn_deploy(version, &["--env", &delay])
    }

    /// A deploy that must succeed.
    pub fn deployed(&self, version: &str, env: &[&str]) -> Output {
        self.deployed_else(version, env, String::new)
    }

    /// A deploy that must succeed, else shows `context()` (the host's diagnostics).
    pub fn deployed_else(
        &self,
        version: &str,
        env: &[&str],
        context: impl Fn() -> String,
    ) -> Output {
        let out = self.deploy(version, env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "deploy {version}: {}\n{}",
            text(&out),
            context()
        );
        out
    }

    /// `--json provision STAGE`, which must succeed.
    pub fn provision(&self) -> Output {
        let out = self.run(&["--json", "provision", &self.stage]);
        assert_eq!(out.status.code(), Some(0), "provision: {}", text(&out));
        out
    }

    /// `--json status STAGE`: its exit code and its result.
    pub fn status_json(&self) -> (i32, serde_json::Value) {
        let out = self.run(&["--json", "status", &self.stage]);
        (out.status.code().unwrap_or(-1), last_json(&out))
    }

    /// What `status` says of the stage's first host.
    pub fn observe(&self) -> Observed {
        let (code, json) = self.status_json();
        let h = &json["hosts"][0];
        let st = &h["status"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let pid = |v: &serde_json::Value| v.as_i64().map_or(0, |p| p as i32);
        Observed {
            code,
            state: text(&st["service"]["state"]),
            service_pid: pid(&st["service"]["pid"]),
            supervisor_pid: pid(&st["service"]["supervisor_pid"]),
            healthy: st["service"]["healthy"].as_bool(),
            versions: [
                text(&st["running_version"]),
                text(&st["reported_version"]),
                text(&st["current"]["version"]),
            ],
            flags: h["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect(),
            restarts: st["service"]["restarts"].as_u64().unwrap_or(0),
            json,
        }
    }

    /// Waits until `status` shows a healthy process other than `old`.
    pub fn wait_for_new_healthy(&self, old: i32, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.observe();
            if seen.healthy == Some(true) && seen.service_pid != old && seen.service_pid != 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no new healthy process after {limit:?}: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A fleet of plain hosts of its own (tests/support/fleet.rs) and a project
/// whose stage `fleet` is all of them; derefs to the project.
pub struct FleetStage {
    /// First, so that its teardown (which kills every process in every
    /// host, services included) comes before the project directory goes.
    pub fleet: Fleet,
    pub project: StageProject,
}

impl FleetStage {
    /// `hosts` new hosts; `stage_extra` and `edit` as for [`StageProject::new`].
    pub fn new(hosts: usize, stage_extra: &str, edit: impl FnOnce(String) -> String) -> FleetStage {
        let fleet = Fleet::new(hosts);
        let project = StageProject::new(
            temp_dir("fleet"),
            "fleet",
            &fleet.hosts(),
            fleet.ssh_config(),
            stage_extra,
            edit,
        );
        FleetStage { fleet, project }
    }
}

impl std::ops::Deref for FleetStage {
    type Target = StageProject;
    fn deref(&self) -> &StageProject {
        &self.project
    }
}

/// What shipjar's `status` says of one host.
#[derive(Debug)]
pub struct Observed {
    /// The exit code of `status`.
    pub code: i32,
    pub state: String,
    pub service_pid: i32,
    pub supervisor_pid: i32,
    pub healthy: Option<bool>,
    /// The running, reported and current versions.
    pub versions: [String; 3],
    pub flags: Vec<String>,
    pub restarts: u64,
    /// The whole result.
    pub json: serde_json::Value,
}

/// Statuses of the resources a `--json provision` reports, on every host.
pub fn resource_statuses(out: &Output) -> Vec<(String, String)> {
    last_json(out)["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["resources"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["resource"].as_str().unwrap_or_default().to_string(),
                r["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Asserts a `--json provision` reported resources and changed none of them;
/// `context` is shown when it did.
pub fn assert_nothing_changed(out: &Output, context: &str) {
    let statuses = resource_statuses(out);
    let changed: Vec<&(String, String)> = statuses.iter().filter(|(_, s)| s != "ok").collect();
    assert!(
        !statuses.is_empty() && changed.is_empty(),
        "provision changed: {changed:?}\n{context}\n{}",
        text(out)
    );
}

/// A `[restart]` table that gives up in seconds, with `auto_revert` on.
pub const QUICK_AUTO_REVERT: &str = "\n[restart]\ninitial_delay = \"200ms\"\nmax_failures = 2\n\
    window = \"2m\"\nauto_revert = true\nrevert_window = \"15m\"\n";

/// The version the service answers on `ip:port`, asked from outside the host.
pub fn served(ip: &str, port: u16) -> Option<String> {
    let addr = format!("{ip}:{port}").parse().ok()?;
    let (_, body) = common::http_get_at(addr, "/version", Duration::from_secs(5))?;
    let value: serde_json::Value = serde_json::from_str(&body).ok()?;
    value["version"].as_str().map(str::to_string)
}

/// Asserts `ps` output of two lines, the supervisor's `user ppid args…` then
/// the service's `user ppid comm`: the supervisor runs as root with
/// `supervisor_args` first, and the service is its child JVM, running as hello.
pub fn assert_root_supervisor_and_hello_jvm(
    procs: &str,
    supervisor_pid: i32,
    supervisor_args: &[&str],
    context: &str,
) {
    let lines: Vec<Vec<&str>> = procs
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        lines.len() == 2
            && lines[0].first() == Some(&"root")
            && lines[0]
                .get(2..)
                .is_some_and(|a| a.starts_with(supervisor_args))
            && lines[1].len() == 3
            && lines[1][0] == "hello"
            && lines[1][1] == supervisor_pid.to_string()
            && lines[1][2] == "java",
        "not a root supervisor with the JVM its child as hello:\n{procs}\n{context}"
    );
}

/// Polls `probe` until it returns something or `limit` passes; the last answer.
pub fn poll<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        let seen = probe();
        if seen.is_some() || Instant::now() >= deadline {
            return seen;
        }
        std::thread::sleep(every);
    }
}
