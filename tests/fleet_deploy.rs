//! Deploying to a fleet of real sshd hosts (network namespaces on this
//! machine, reached with the real OpenSSH client) running real hello JVMs.
//! Root only: as another user these tests are ignored (skipped).

mod common;
use common::{exited, exited_saying, ok};
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{hello_jar, text};
use common::{host_field, last_json};
use lifecycle::FleetStage;

/// Port the hello service uses inside every host (each host has its own network).
const PORT: u16 = 18080;

/// A project whose `fleet` stage is the test fleet.
struct FleetProject(FleetStage);

impl std::ops::Deref for FleetProject {
    type Target = FleetStage;
    fn deref(&self) -> &FleetStage {
        &self.0
    }
}

impl FleetProject {
    fn new(hosts: usize, stage_extra: &str) -> FleetProject {
        FleetProject(FleetStage::new(hosts, stage_extra, |c| {
            lifecycle::reachable(c.replace("18080", &PORT.to_string()))
        }))
    }

    /// A new project, provisioned, with 1.0.0 deployed to every host.
    fn on_1_0_0(hosts: usize, stage_extra: &str) -> FleetProject {
        let p = FleetProject::new(hosts, stage_extra);
        p.provision_and_deploy_1_0_0();
        p
    }

    /// Provisions the stage and deploys 1.0.0 to every host; both must succeed.
    fn provision_and_deploy_1_0_0(&self) -> Output {
        self.provision();
        ok(self.deploy_with("1.0.0", &[]))
    }

    /// Runs `--json provision fleet`, which must succeed: each host with the
    /// resources it reported.
    fn provision_resources(&self) -> Vec<(String, Vec<serde_json::Value>)> {
        let result = last_json(&ok(self.run(&["--json", "provision", "fleet"])));
        self.fleet
            .hosts()
            .into_iter()
            .map(|host| {
                let resources = host_field(&result, &host)["resources"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                (host, resources)
            })
            .collect()
    }

    /// Asserts every host serves `version`.
    #[track_caller]
    fn assert_served_everywhere(&self, version: &str) {
        let all = vec![Some(version.to_string()); self.fleet.hosts().len()];
        assert_eq!(self.served_everywhere(), all);
    }

    /// The version `host`'s service reports over HTTP, from outside the host.
    fn served(&self, host: &str) -> Option<String> {
        lifecycle::served(&self.fleet.ip(host), PORT)
    }

    fn served_everywhere(&self) -> Vec<Option<String>> {
        self.fleet.hosts().iter().map(|h| self.served(h)).collect()
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn provision_is_idempotent_and_dry_run_changes_nothing() {
    let p = FleetProject::new(3, "");
    let dry = ok(p.run(&["--json", "provision", "fleet", "--dry-run"]));
    assert!(!text(&dry).contains(&p.secret));
    let dry = last_json(&dry);
    assert_eq!(dry["dry_run"], true);
    let out = p.fleet.ssh(
        "app1",
        "test -e /usr/local/bin/shipjar && echo present || echo absent; ls /tmp; getent passwd hello || true; ls /var/log",
    );
    let seen = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        seen.starts_with("absent\n"),
        "dry run installed the agent: {seen}"
    );
    assert!(
        !seen.contains("shipjar-dry-run"),
        "the temporary agent was left: {seen}"
    );
    assert!(!seen.contains("hello"), "dry run changed the host: {seen}");
    // A fresh host shows every change it would get, not a promise to look later.
    let resources = host_field(&dry, "app1")["resources"].clone();
    let find = |name: &str| {
        resources
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["resource"] == name).cloned())
            .unwrap_or_else(|| panic!("no resource {name}: {resources}"))
    };
    assert_eq!(find("user hello")["status"], "would_change");
    assert_eq!(find("group hello")["status"], "would_change");
    let log_dir = find("directory /var/log/hello");
    assert_eq!(log_dir["status"], "would_change");
    assert_eq!(log_dir["detail"], "create hello:hello 0750");
    let init = find("file /etc/init.d/hello");
    assert_eq!(init["status"], "would_change");
    assert!(
        init["diff"]
            .as_str()
            .is_some_and(|d| d.contains("+#!/bin/sh")),
        "{init}"
    );

    for (host, resources) in p.provision_resources() {
        assert!(
            resources.iter().any(|r| r["status"] == "changed"),
            "{host}: {resources:?}"
        );
        assert!(
            resources.iter().all(|r| r["status"] != "failed"),
            "{host}: {resources:?}"
        );
    }
    // `check` now finds every host ready: agent, java, disk, free port, provisioned.
    let check = ok(p.run(&["check", "fleet"]));
    let said = String::from_utf8_lossy(&check.stdout);
    for host in p.fleet.hosts() {
        for what in ["agent", "java", "disk", "provision"] {
            assert!(
                said.contains(&format!("{host}: ok       {what}")),
                "{host} {what}: {said}"
            );
        }
    }
    assert!(
        said.contains("user, directories and init integration in place"),
        "{said}"
    );
    let passwd = p.fleet.exec("app2", &["getent", "passwd", "hello"]);
    let line = String::from_utf8_lossy(&passwd.stdout).to_string();
    assert!(line.ends_with(":/usr/sbin/nologin\n"), "{line}");
    let modes = p.fleet.exec(
        "app2",
        &[
            "stat",
            "-c",
            "%U %a",
            "/var/log/hello",
            "/var/lib/hello/releases",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&modes.stdout),
        "hello 750\nroot 755\n"
    );
    // No systemd in these hosts: the LSB init script, enabled at boot, delegating to shipjar.
    let script = p.fleet.exec("app2", &["cat", "/etc/init.d/hello"]);
    let script = String::from_utf8_lossy(&script.stdout).to_string();
    assert!(
        script.contains("### BEGIN INIT INFO") && script.contains("/usr/local/bin/shipjar"),
        "{script}"
    );
    let links = p.fleet.sh("app2", "ls /etc/rc2.d | grep -x 'S..hello'");
    assert!(links.status.success(), "init script not enabled at boot");

    // Someone edited the script on app1, even pasting the password into it: a
    // dry run shows the change as a diff, with the secret masked.
    let edit = format!("echo '# db password {}' >> /etc/init.d/hello", p.secret);
    assert!(p.fleet.sh("app1", &edit).status.success());
    let dry = p.run(&["provision", "fleet", "--dry-run"]);
    let shown = exited_saying(&dry, 0, "-# db password ********");
    assert!(!shown.contains(&p.secret), "{shown}");
    ok(p.run(&["provision", "fleet"]));

    for (host, resources) in p.provision_resources() {
        assert!(!resources.is_empty());
        assert!(
            resources.iter().all(|r| r["status"] == "ok"),
            "second run changed something on {host}: {resources:?}"
        );
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn rolling_deploy_to_five_hosts_and_redeploy_uploads_nothing() {
    let p = FleetProject::new(5, "rolling = { batch = 2 }");
    let out = p.provision_and_deploy_1_0_0();
    let result = last_json(&out);
    let jar = std::fs::metadata(hello_jar()).expect("jar").len();
    for host in p.fleet.hosts() {
        let h = host_field(&result, &host);
        assert_eq!(h["state"], "updated", "{host}: {h}");
        assert_eq!(h["uploaded_bytes"], jar, "{host}");
        assert!(h["round_trips"].as_u64().unwrap_or(99) <= 5, "{host}: {h}");
    }
    p.assert_served_everywhere("1.0.0");
    // Batches of two: the log shows three batches.
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains("batch 3: app5"), "{events}");

    let again = ok(p.deploy_with("1.0.1", &[]));
    let result = last_json(&again);
    for host in p.fleet.hosts() {
        let h = host_field(&result, &host);
        assert_eq!(
            h["uploaded_bytes"], 0,
            "{host}: the same artifact must not be uploaded again"
        );
        // lock + prepare + activate + finish: no upload round trip.
        assert!(h["round_trips"].as_u64().unwrap_or(99) <= 4, "{host}: {h}");
    }
    p.assert_served_everywhere("1.0.1");
    let (code, status) = p.status_json();
    assert_eq!(code, 0, "{status}");

    // Rolling back the whole fleet uploads nothing and lands on one version.
    let back = ok(p.run(&["--json", "rollback", "fleet"]));
    let result = last_json(&back);
    assert_eq!(result["version"], "1.0.0", "{result}");
    for host in p.fleet.hosts() {
        assert_eq!(host_field(&result, &host)["uploaded_bytes"], 0, "{host}");
    }
    p.assert_served_everywhere("1.0.0");
    ok(p.run(&["releases", "fleet"]));
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn failing_first_batch_stops_and_reverts_leaving_the_rest_untouched() {
    let p = FleetProject::on_1_0_0(5, "rolling = { batch = 2 }");
    let out = p.deploy_with("2.0.0", &["--env", "FAIL_ON_START=1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let result = last_json(&out);
    assert!(
        result["stopped"].as_str().unwrap_or("").contains("batch 1"),
        "{result}"
    );
    for host in ["app1", "app2"] {
        assert_eq!(host_field(&result, host)["state"], "reverted", "{result}");
    }
    for host in ["app3", "app4", "app5"] {
        assert_eq!(host_field(&result, host)["state"], "unchanged", "{result}");
    }
    p.assert_served_everywhere("1.0.0");
    let (code, status) = p.status_json();
    assert_eq!(
        code, 0,
        "status must report one consistent version: {status}"
    );
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn later_batch_failure_reverts_earlier_batches_so_one_version_runs() {
    let p = FleetProject::on_1_0_0(3, "rolling = { batch = 1 }");
    // Version 2.0.0 fails to start on app3 only (env values are templates).
    p.edit_config(|config| config.replace(
        "BIND = \"0.0.0.0\" }",
        "BIND = \"0.0.0.0\", FAIL_ON_START = \"{{ 'yes' if host == 'app3' and version == '2.0.0' else 'no' }}\" }",
    ));
    let out = p.deploy_with("2.0.0", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let result = last_json(&out);
    assert_eq!(host_field(&result, "app1")["state"], "reverted", "{result}");
    assert_eq!(host_field(&result, "app2")["state"], "reverted", "{result}");
    p.assert_served_everywhere("1.0.0");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_crash_inside_settle_in_batch_2_reverts_batch_1_too() {
    let p = FleetProject::new(2, "rolling = { batch = 1 }");
    // 2.0.0 passes its gate on app2, then crashes 2 s later: inside a 6 s settle.
    p.edit_config(|config| {
        config
        .replace(
            "probe_timeout = \"2s\"",
            "probe_timeout = \"2s\"\nsettle = \"6s\"",
        )
        .replace(
            "BIND = \"0.0.0.0\" }",
            "BIND = \"0.0.0.0\", CRASH_AFTER_S = \"{{ '2' if host == 'app2' and version == '2.0.0' else '0' }}\" }",
        )
    });
    p.provision_and_deploy_1_0_0();
    let out = p.deploy_with("2.0.0", &[]);
    exited_saying(&out, 1, "after becoming healthy");
    let result = last_json(&out);
    assert_eq!(host_field(&result, "app1")["state"], "reverted", "{result}");
    assert_eq!(host_field(&result, "app2")["state"], "reverted", "{result}");
    assert_eq!(
        host_field(&result, "app2")["failed_step"],
        "settle",
        "{result}"
    );
    p.assert_served_everywhere("1.0.0");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn host_cut_off_mid_deploy_is_named_and_the_others_end_consistent() {
    let p = FleetProject::on_1_0_0(3, "rolling = { batch = 1 }");
    let child = p.spawn_slow_deploy("2.0.0", 1500);
    wait_for(Duration::from_secs(60), || {
        p.served("app1").as_deref() == Some("2.0.0")
    });
    p.fleet.link_down("app3");
    let out = child.wait_with_output().expect("deploy output");
    p.fleet.link_up("app3");
    let summary = exited(&out, 1);
    assert!(summary.contains("app3"), "{summary}");
    let result = last_json(&out);
    assert_ne!(host_field(&result, "app3")["state"], "updated", "{result}");
    // The default policy reverts the switched hosts: one version remains.
    let served = p.served_everywhere();
    assert_eq!(served[0], served[1], "{served:?}");
    assert_eq!(served[0].as_deref(), Some("1.0.0"), "{served:?}");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn operator_killed_mid_deploy_leaves_healthy_hosts_and_the_next_deploy_succeeds() {
    let p = FleetProject::on_1_0_0(3, "rolling = { batch = 1 }\nlock_lease = \"10s\"");
    let mut child = p.spawn_slow_deploy("2.0.0", 1000);
    wait_for(Duration::from_secs(60), || {
        p.served("app1").as_deref() == Some("2.0.0")
    });
    child.kill().expect("SIGKILL the operator");
    let _ = child.wait();
    // Every host is on a complete release and healthy, whichever it is.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = p.status_json();
        let healthy = p
            .fleet
            .hosts()
            .iter()
            .all(|h| host_field(&status, h)["status"]["service"]["healthy"] == true);
        if healthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hosts not healthy after the operator died: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The lease expires; the next deploy takes over (with a warning) and succeeds.
    std::thread::sleep(Duration::from_secs(11));
    ok(p.deploy_with("3.0.0", &[]));
    p.assert_served_everywhere("3.0.0");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn concurrent_deploys_one_fails_naming_the_other_or_waits() {
    let p = FleetProject::new(2, "");
    p.provision();
    let first = p.spawn_slow_deploy("1.0.0", 3000);
    let first_pid = first.id();
    wait_for(Duration::from_secs(30), || {
        let out = p.fleet.exec("app1", &["cat", "/run/hello/deploy.lock"]);
        !out.stdout.is_empty()
    });
    let second = p.deploy_with("2.0.0", &[]);
    let message = exited(&second, 1);
    assert!(message.contains("deploy lock is held by"), "{message}");
    assert!(message.contains(&format!("pid {first_pid}")), "{message}");
    // A third one queues behind the first with --wait, then runs.
    let third = p.deploy_with("3.0.0", &["--wait", "60s"]);
    ok(first.wait_with_output().expect("first"));
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));
    p.assert_served_everywhere("3.0.0");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn status_flags_a_host_restarted_by_hand_from_an_old_release() {
    let p = FleetProject::on_1_0_0(2, "");
    assert_eq!(p.deploy_with("2.0.0", &[]).status.code(), Some(0));
    let (code, _) = p.status_json();
    assert_eq!(code, 0);
    // By hand on app2: point current at the old release, restart, point it back.
    let script = "set -e; cd /var/lib/hello; new=$(readlink current); old=$(ls releases | sort | head -n 1); \
                  ln -sfn releases/$old current; /usr/local/bin/shipjar service restart hello >/dev/null; \
                  ln -sfn $new current";
    let out = p.fleet.ssh("app2", script);
    assert!(out.status.success(), "{}", text(&out));
    let (code, status) = p.status_json();
    assert_eq!(code, 1, "{status}");
    let flags = host_field(&status, "app2")["flags"].to_string();
    assert!(flags.contains("process runs release"), "{flags}");
    assert_eq!(host_field(&status, "app1")["flags"], serde_json::json!([]));
}

fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_deploy_user_with_passwordless_sudo_can_provision_and_deploy() {
    let p = FleetProject::new(1, "");
    // On app1: a `deploy` login with the fleet's key and passwordless sudo.
    // (`-p '*'`: no password, but not a locked account, which sshd without PAM refuses.)
    let setup = "set -e; useradd --create-home --shell /bin/sh -p '*' deploy; \
                 install -d -m 700 -o deploy -g deploy /home/deploy/.ssh; \
                 install -m 600 -o deploy -g deploy /root/.ssh/authorized_keys /home/deploy/.ssh/; \
                 echo 'deploy ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deploy; chmod 440 /etc/sudoers.d/deploy";
    let out = p.fleet.sh("app1", setup);
    assert!(out.status.success(), "{}", text(&out));
    p.edit_config(|config| {
        config.replace(
            "hosts = [\"app1\"]",
            "hosts = [\"deploy@app1\"]\nsudo = true",
        )
    });
    ok(p.run(&["provision", "fleet"]));
    ok(p.deploy_with("1.0.0", &[]));
    assert_eq!(p.served("app1").as_deref(), Some("1.0.0"));
    let owner = p
        .fleet
        .exec("app1", &["stat", "-c", "%U", "/var/lib/hello/releases"]);
    assert_eq!(String::from_utf8_lossy(&owner.stdout), "root\n");
}

/// Waits for `child` at most `limit`: a hang is the failure of the test
/// that met it, not of the whole suite.
fn finish_within(mut child: std::process::Child, limit: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("still running after {limit:?}: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

/// Replaces `host`'s shipjar with a program that reads its input and never
/// answers: an agent stuck on something it waits for.
fn make_agent_silent(p: &FleetProject, host: &str) {
    let out = p.fleet.sh(
        host,
        "mv /usr/local/bin/shipjar /usr/local/bin/shipjar.real && \
             printf '#!/bin/sh\\nexec cat >/dev/null\\n' >/usr/local/bin/shipjar && \
             chmod 755 /usr/local/bin/shipjar",
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_host_that_never_answers_is_given_up_at_answer_timeout_and_a_second_interrupt_ends_at_once() {
    let p = FleetProject::on_1_0_0(2, "answer_timeout = \"3s\"");
    make_agent_silent(&p, "app2");

    // Given up after answer_timeout, named, the deploy stopped before any switch.
    let started = Instant::now();
    let out = finish_within(p.spawn_slow_deploy("2.0.0", 0), Duration::from_secs(120));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let all = text(&out);
    assert!(
        all.contains("[app2] no answer for 3 s"),
        "the silent host is not named: {all}"
    );
    assert_eq!(p.served("app1").as_deref(), Some("1.0.0"), "{all}");

    // With the default answer timeout (30 s), two interrupts end it at once.
    p.edit_config(|config| config.replace("answer_timeout = \"3s\"", ""));
    let child = p.spawn_slow_deploy("3.0.0", 0);
    std::thread::sleep(Duration::from_secs(2));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("first SIGINT");
    std::thread::sleep(Duration::from_millis(300));
    let second = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("second SIGINT");
    let out = child.wait_with_output().expect("deploy output");
    assert!(
        second.elapsed() < Duration::from_millis(2500),
        "the second interrupt took {:?} to end the operator",
        second.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("[app2] "),
        "where app2 was left is not said: {all}"
    );
    assert_eq!(p.served("app1").as_deref(), Some("1.0.0"), "{all}");
}

/// A user's own persistent ssh master (`ControlMaster auto`, `ControlPersist`,
/// no keep-alives), started as they would by hand; closed on drop.
struct UserMaster {
    config: std::path::PathBuf,
    host: String,
}

impl UserMaster {
    fn start(p: &FleetProject, host: &str) -> UserMaster {
        let config = p.dir.path().join("user_ssh_config");
        let fleet_config = std::fs::read_to_string(p.fleet.ssh_config()).expect("ssh config");
        let control = p.dir.path().join("cm-%C");
        std::fs::write(
            &config,
            format!(
                "Host *\n  ControlMaster auto\n  ControlPath {}\n  ControlPersist 60\n  ServerAliveInterval 0\n\n{fleet_config}",
                control.display()
            ),
        )
        .expect("write user ssh config");
        // -f: ssh goes to the background once connected; it keeps whatever
        // stdout and stderr it has, so give it none to hold open.
        let status = std::process::Command::new("ssh")
            .arg("-F")
            .arg(&config)
            .args(["-o", "ConnectTimeout=10", "-fN", host])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the master");
        assert!(status.success(), "ssh -fN {host}: {status}");
        UserMaster {
            config,
            host: host.to_string(),
        }
    }
}

impl Drop for UserMaster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ssh")
            .arg("-F")
            .arg(&self.config)
            .args(["-O", "exit", &self.host])
            .stdin(Stdio::null())
            .output();
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_link_cut_under_a_users_persistent_master_ends_the_deploy_at_its_deadline_naming_the_host() {
    let p = FleetProject::on_1_0_0(2, "answer_timeout = \"5s\"");
    let master = UserMaster::start(&p, "app2");
    p.edit_config(|config| {
        config.replace(
            &format!("ssh_config = \"{}\"", p.fleet.ssh_config().display()),
            &format!("ssh_config = \"{}\"", master.config.display()),
        )
    });
    p.fleet.link_down("app2");
    let started = Instant::now();
    let out = finish_within(p.spawn_slow_deploy("2.0.0", 0), Duration::from_secs(120));
    let took = started.elapsed();
    p.fleet.link_up("app2");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let all = text(&out);
    assert!(all.contains("[app2] no answer for 5 s"), "{all}");
    assert!(
        all.contains("ssh -O exit"),
        "no hint about the master: {all}"
    );
    assert_eq!(p.served("app1").as_deref(), Some("1.0.0"), "{all}");
    drop(master);
}

/// The pid of the service on each host, as `status` reports it.
fn service_pids(p: &FleetProject) -> Vec<i64> {
    let (code, status) = p.status_json();
    assert_eq!(code, 0, "{status}");
    p.fleet
        .hosts()
        .iter()
        .map(|h| {
            host_field(&status, h)["status"]["service"]["pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("{h}: no pid in {status}"))
        })
        .collect()
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn deploy_with_hosts_touches_only_the_named_hosts_and_status_shows_who_runs_what() {
    let p = FleetProject::on_1_0_0(4, "rolling = { batch = 2 }");

    // An entry that names no host: nothing runs, and the stage's hosts are listed.
    let out = p.deploy_with("1.0.1", &["--hosts", "app1,nope*"]);
    let said = exited(&out, 2);
    assert!(said.contains("--hosts nope* matches no host"), "{said}");
    assert!(
        said.contains("its hosts are: app1, app2, app3, app4"),
        "{said}"
    );
    p.assert_served_everywhere("1.0.0");

    let out = ok(p.deploy_with("1.0.1", &["--hosts", "app1,app2"]));
    let result = last_json(&out);
    let hosts: Vec<&str> = result["hosts"]
        .as_array()
        .map(|hs| hs.iter().filter_map(|h| h["host"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(hosts, ["app1", "app2"], "{result}");
    assert_eq!(
        result["selection"],
        serde_json::json!({"pattern": "app1,app2", "selected": 2, "of": 4}),
        "{result}"
    );
    let one = |v: &str| Some(v.to_string());
    assert_eq!(
        p.served_everywhere(),
        [one("1.0.1"), one("1.0.1"), one("1.0.0"), one("1.0.0")]
    );
    // In text, the summary says it was a partial deploy.
    let out = ok(p.run(&[
        "deploy",
        "fleet",
        "--artifact",
        &hello_jar().to_string_lossy(),
        "--version",
        "1.0.2",
        "--hosts",
        "app[12]",
    ]));
    assert!(
        text(&out)
            .contains("deployed to 2 of 4 hosts (--hosts app[12]); the other 2 were not touched"),
        "{}",
        text(&out)
    );

    // `status` says which hosts run what; `--hosts` shows only those.
    let out = p.run(&["status", "fleet"]);
    let said = text(&out);
    assert!(
        said.contains("versions: 1.0.0 on app3, app4; 1.0.2 on app1, app2")
            || said.contains("versions: 1.0.2 on app1, app2; 1.0.0 on app3, app4"),
        "{said}"
    );
    let out = p.run(&["--json", "status", "fleet", "--hosts", "app3"]);
    let status = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let hosts = status["hosts"].as_array().cloned().unwrap_or_default();
    assert_eq!(hosts.len(), 1, "{status}");
    assert_eq!(hosts[0]["host"], "app3");
    assert_eq!(
        hosts[0]["status"]["current"]["version"], "1.0.0",
        "{status}"
    );
    let detail = |host: &str| {
        let out = p.run(&["--json", "status", "fleet", "--hosts", host]);
        last_json(&out)["hosts"][0]["status"]["last_revision"]["detail"].clone()
    };
    // Each host the partial deploy switched records it as such.
    assert_eq!(detail("app1"), "partial: 2 of 4 hosts (--hosts app[12])");
    assert_eq!(detail("app3"), "");
    let out = p.run(&["status", "fleet", "--hosts", "app9"]);
    exited_saying(&out, 2, "its hosts are: app1, app2, app3, app4");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn restart_restarts_every_host_in_batches_with_new_pids_and_healthy() {
    let p = FleetProject::on_1_0_0(3, "rolling = { batch = 2 }");
    let before = service_pids(&p);

    let out = ok(p.run(&["--json", "restart", "fleet"]));
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains("batch 1: app1, app2"), "{events}");
    assert!(events.contains("batch 2: app3"), "{events}");
    let result = last_json(&out);
    assert_eq!(result["action"], "restart", "{result}");
    for host in p.fleet.hosts() {
        let h = host_field(&result, &host);
        assert_eq!(h["state"], "restarted", "{host}: {h}");
        assert_eq!(h["uploaded_bytes"], 0, "{host}: {h}");
    }
    let after = service_pids(&p);
    for (i, host) in p.fleet.hosts().iter().enumerate() {
        assert_ne!(before[i], after[i], "{host}: the same pid after a restart");
        let reported = host_field(&result, host)["activation"]["pid"].as_i64();
        assert_eq!(reported, Some(after[i]), "{host}");
    }
    p.assert_served_everywhere("1.0.0");
    // A restart is not an activation: the last revision is still the deploy.
    let (_, status) = p.status_json();
    for host in p.fleet.hosts() {
        let last = &host_field(&status, &host)["status"]["last_revision"];
        assert_eq!(last["action"], "deploy", "{host}: {last}");
    }

    // `--hosts` restarts only those hosts.
    ok(p.run(&["--json", "restart", "fleet", "--hosts", "app2"]));
    let again = service_pids(&p);
    assert_eq!(again[0], after[0], "app1 was not named");
    assert_ne!(again[1], after[1], "app2 was named");
    assert_eq!(again[2], after[2], "app3 was not named");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_restart_failing_its_gate_on_a_damaged_host_stops_the_rollout_and_names_it() {
    let p = FleetProject::on_1_0_0(3, "rolling = { batch = 1 }");
    let before = service_pids(&p);
    // The running JVM has its jar open; a fresh one on app2 cannot read it.
    let broke = p
        .fleet
        .ssh("app2", "chmod 000 /var/lib/hello/artifacts/*.jar");
    assert!(broke.status.success(), "{}", text(&broke));

    let out = p.run(&["--json", "restart", "fleet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let result = last_json(&out);
    assert_eq!(
        host_field(&result, "app1")["state"],
        "restarted",
        "{result}"
    );
    assert_eq!(host_field(&result, "app2")["state"], "failed", "{result}");
    assert_eq!(
        host_field(&result, "app3")["state"],
        "unchanged",
        "{result}"
    );
    let stopped = result["stopped"].as_str().unwrap_or_default();
    assert!(stopped.contains("batch 2 had 1 failed host"), "{result}");
    // app3 was never touched: its process is the one from the deploy.
    let (_, status) = p.status_json();
    assert_eq!(
        host_field(&status, "app3")["status"]["service"]["pid"].as_i64(),
        Some(before[2]),
        "{status}"
    );
    // app2 is left failed, and `status` says so.
    let flags = host_field(&status, "app2")["flags"].clone();
    assert_ne!(flags, serde_json::json!([]), "{status}");
    assert_eq!(p.served("app2"), None);
    assert_eq!(p.served("app1"), Some("1.0.0".to_string()));
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_roles_settings_reach_only_its_hosts_and_roles_select_them() {
    let p = FleetProject::new(3, "rolling = { batch = 2 }");
    // app3 leaves the stage's own hosts for the `worker` role.
    let config = p.dir.path().join("shipjar.toml");
    let written = std::fs::read_to_string(&config).expect("config");
    let with_roles = written.replace(
        "hosts = [\"app1\", \"app2\", \"app3\"]",
        "hosts = [\"app1\", \"app2\"]",
    ) + "[stages.fleet.roles.worker]\nhosts = [\"app3\"]\n\
         env = { WORKER_MARK = \"role-{{ role }}\" }\njava_opts = [\"-Dworker.mark=yes\"]\n";
    assert!(
        !with_roles.contains("\"app1\", \"app2\", \"app3\""),
        "{with_roles}"
    );
    std::fs::write(&config, with_roles).expect("write config");
    p.provision_and_deploy_1_0_0();
    let manifest = |host: &str| {
        let out = p.fleet.ssh(host, "cat /var/lib/hello/current/RELEASE");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let worker = manifest("app3");
    assert!(worker.contains("role-worker"), "{worker}");
    assert!(worker.contains("-Dworker.mark=yes"), "{worker}");
    let web = manifest("app1");
    assert!(web.contains("\"id\""), "{web}");
    assert!(
        !web.contains("WORKER_MARK") && !web.contains("worker.mark"),
        "{web}"
    );
    p.assert_served_everywhere("1.0.0");

    ok(p.deploy_with("1.0.1", &["--roles", "worker"]));
    let one = |v: &str| Some(v.to_string());
    assert_eq!(
        p.served_everywhere(),
        [one("1.0.0"), one("1.0.0"), one("1.0.1")]
    );
    let out = p.run(&["status", "fleet", "--roles", "db"]);
    exited_saying(&out, 2, "its roles are: worker");
}
