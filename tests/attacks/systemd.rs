//! The same attacks on a host where systemd is PID 1 and the service runs
//! under its unit: a FIFO as `console.log` before `systemctl restart` and
//! `shipjar logs`, and `nobody` holding (or waiting for) a flock on every
//! entry of `/run/hello` during a deploy and `systemctl restart`.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, hello_jar};
use crate::systemd_host::{SystemdFleet, require_root};
use crate::{DECOY, contains, http_get, limited, say, text, wait_until};

const HOST: &str = "app1";

/// One systemd host, its project and the counts.
struct Sd {
    f: SystemdFleet,
    dir: tempfile::TempDir,
    secret: String,
    marker: String,
    attacks: u32,
    hangs: u32,
    leaks: u32,
    false_reports: u32,
    failures: Vec<String>,
}

#[test]
#[ignore = "needs root"]
fn systemd_attacks() {
    require_root();
    let started = Instant::now();
    let mut s = Sd::new();
    let guarded = s.guarded();
    fifo_log(&mut s);
    nobody_flocks(&mut s);
    let changed = u32::from(s.guarded() != guarded);
    if changed > 0 {
        s.fail(format!("root's files changed: {guarded} → {}", s.guarded()));
    }
    say(&format!(
        "attacks (systemd): attacks tried: {}, root files changed: {changed}, hangs: {}, leaks: {}, \
         false reports: {} ({} violations, {} s)",
        s.attacks,
        s.hangs,
        s.leaks,
        s.false_reports,
        s.failures.len(),
        started.elapsed().as_secs()
    ));
    let failures = std::mem::take(&mut s.failures);
    drop(s);
    common::assert_no_violations("", &failures);
}

impl Sd {
    fn new() -> Sd {
        let f = SystemdFleet::new(1);
        let dir = common::new_fleet_project(
            "shipjar-attacks-sd-",
            "sd",
            &[HOST.to_string()],
            f.ssh_config(),
            "lock_lease = \"10s\"",
            |c| {
                c.replace("BIND = \"127.0.0.1\"", "BIND = \"0.0.0.0\"")
                    .replace("start_timeout = \"30s\"", "start_timeout = \"20s\"")
                    .replace("timeout = \"15s\"", "timeout = \"5s\"")
            },
        );
        let mut s = Sd {
            f,
            dir,
            secret: common::unique_secret(),
            marker: format!("DECOY-SYSTEMD-{}", std::process::id()),
            attacks: 0,
            hangs: 0,
            leaks: 0,
            false_reports: 0,
            failures: Vec::new(),
        };
        let out = s.op(&["provision", "sd"], Duration::from_secs(120));
        assert_eq!(out.status.code(), Some(0), "provision: {}", text(&out));
        let out = s.deploy();
        assert_eq!(out.status.code(), Some(0), "first deploy: {}", text(&out));
        let script = format!("umask 077; printf '%s\\n' '{}' > {DECOY}", s.marker);
        let out = s.f.exec(HOST, &["sh", "-c", &script]);
        assert!(out.status.success(), "decoy: {}", text(&out));
        s
    }

    fn fail(&mut self, what: String) {
        say(&format!("attacks (systemd): VIOLATION {what}"));
        self.failures.push(what);
    }

    /// sha256, owner and mode of root's decoy and the files a link could reach.
    fn guarded(&self) -> String {
        let out = self.f.exec(
            HOST,
            &[
                "sh",
                "-c",
                &format!(
                    "cd /etc && for f in {DECOY} passwd group shadow sudoers sudoers.d/* \
                     systemd/system/hello.service; do \
                       [ -e \"$f\" ] && echo \"$f $(stat -c '%U:%G %a' \"$f\") $(sha256sum < \"$f\")\"; done; true"
                ),
            ],
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// shipjar on the operator's side under a deadline; output scanned.
    fn op(&mut self, args: &[&str], limit: Duration) -> Output {
        let cmd = common::shipjar_in(self.dir.path(), &self.secret, args);
        self.run(cmd, &args.join(" "), limit)
    }

    fn deploy(&mut self) -> Output {
        let jar = hello_jar().to_string_lossy().into_owned();
        let v = format!("3.0.{}", self.attacks);
        self.op(
            &[
                "--json",
                "deploy",
                "sd",
                "--artifact",
                &jar,
                "--version",
                &v,
            ],
            Duration::from_secs(90),
        )
    }

    /// A root command inside the host under a deadline; output scanned.
    fn root(&mut self, argv: &[&str], limit: Duration) -> Output {
        let init = self.f.init(HOST).expect("the host runs").pid;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={init}"))
            .args([
                "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--",
            ])
            .args(argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null());
        self.run(cmd, &argv.join(" "), limit)
    }

    fn run(&mut self, cmd: Command, what: &str, limit: Duration) -> Output {
        let (out, hung) = limited(cmd, limit);
        if hung {
            self.hangs += 1;
            self.fail(format!("`{what}` still running after {limit:?}; killed"));
        }
        let mut all = out.stdout.clone();
        all.extend_from_slice(&out.stderr);
        let secret_forms = crate::forms(&self.secret);
        if contains(&all, self.marker.as_bytes())
            || secret_forms
                .iter()
                .any(|(_, f)| contains(&all, f.as_bytes()))
        {
            self.leaks += 1;
            self.fail(format!("`{what}` printed a secret or root-only content"));
        }
        out
    }

    fn healthy(&self) -> bool {
        http_get(&self.f.ip(HOST), "/health").is_some_and(|(c, _)| (200..300).contains(&c))
    }

    /// `systemctl is-active` and `service status` against `/health`.
    fn check_truth(&mut self, when: &str) {
        let active = self.root(
            &["systemctl", "is-active", "hello"],
            Duration::from_secs(20),
        );
        let status = self.root(
            &["shipjar", "service", "status", "hello"],
            Duration::from_secs(20),
        );
        let healthy = wait_until(Duration::from_secs(2), || self.healthy());
        for (what, says) in [
            ("systemctl is-active", active.status.success()),
            ("service status", status.status.success()),
        ] {
            if says != healthy {
                self.false_reports += 1;
                self.fail(format!(
                    "{when}: `{what}` says {} but the service is {}healthy: {}",
                    if says { "running" } else { "not running" },
                    if healthy { "" } else { "not " },
                    text(if what.starts_with("systemctl") {
                        &active
                    } else {
                        &status
                    })
                ));
            }
        }
    }

    /// The service healthy again (a FIFO unblocked and removed first).
    fn recover(&mut self) {
        let script = "for f in /var/log/hello/*; do if [ -p \"$f\" ]; then \
                        timeout 2 sh -c \"exec 3<>'$f'; sleep 0.3\"; rm -f \"$f\"; fi; done; \
                      systemctl reset-failed hello; systemctl restart hello";
        let _ = self.root(&["sh", "-c", script], Duration::from_secs(60));
        if !wait_until(Duration::from_secs(5), || self.healthy()) {
            let _ = self.deploy();
        }
        let _ = self.op(&["unlock", "sd"], Duration::from_secs(30));
    }
}

/// A FIFO as `console.log`: `systemctl restart` and `shipjar logs` return
/// in time, the service is healthy after the restart, and both reports agree.
fn fifo_log(s: &mut Sd) {
    let out = s.f.exec(
        HOST,
        &[
            "setpriv",
            "--reuid",
            "hello",
            "--regid",
            "hello",
            "--init-groups",
            "sh",
            "-c",
            "rm -f /var/log/hello/console.log && mkfifo -m 0660 /var/log/hello/console.log",
        ],
    );
    assert!(out.status.success(), "plant a FIFO: {}", text(&out));
    s.restart_comes_back(
        "with a FIFO as console.log",
        "after systemctl restart with a FIFO as console.log",
    );
    s.attacks += 1;
    let _ = s.op(&["logs", "sd", "-n", "20"], Duration::from_secs(20));
    s.recover();
}

impl Sd {
    /// An attack: `systemctl restart hello` `situation` must leave the
    /// service healthy within 5 s, and `status` true (`truth` names when).
    fn restart_comes_back(&mut self, situation: &str, truth: &str) {
        self.attacks += 1;
        let restart = self.root(&["systemctl", "restart", "hello"], Duration::from_secs(45));
        if !wait_until(Duration::from_secs(5), || self.healthy()) {
            self.fail(format!(
                "`systemctl restart` {situation} left the service down: {}",
                text(&restart)
            ));
        }
        self.check_truth(truth);
    }
}

/// `nobody` flocks every entry of `/run/hello` (waiting for the held ones):
/// a deploy and `systemctl restart` still succeed, in time.
fn nobody_flocks(s: &mut Sd) {
    let script = "for e in $(find /run/hello); do \
                    setpriv --reuid=65534 --regid=65534 --clear-groups flock -x \"$e\" sleep 600 \
                      </dev/null >/dev/null 2>&1 & echo $!; done";
    let out = s.f.exec(HOST, &["sh", "-c", script]);
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    say(&format!(
        "attacks (systemd): nobody flocks {} entries of /run/hello",
        pids.len()
    ));
    std::thread::sleep(Duration::from_millis(500));
    s.attacks += 1;
    let out = s.deploy();
    if !out.status.success() {
        s.fail(format!(
            "a deploy failed while nobody held flocks: {}",
            text(&out)
        ));
    }
    s.restart_comes_back("while nobody held flocks", "with nobody's flocks held");
    // Ours, by pid (inside the host): each flock and the sleep it runs.
    for pid in pids {
        let kill = format!("kill -9 $(cat /proc/{pid}/task/{pid}/children 2>/dev/null) {pid}");
        let _ = s.f.exec(HOST, &["sh", "-c", &kill]);
    }
    s.recover();
}
