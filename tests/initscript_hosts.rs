//! Hosts without systemd (tests/support/fleet.rs: sshd is their PID 1) and
//! shipjar's LSB init script on them: provision installs `/etc/init.d/hello`
//! and its rc links, a boot starts the service through the link as an
//! rc script would, and deploys, rollbacks, a failed deploy and the script's
//! own restart/status/stop agree with `shipjar status` and the service.
//! Root only (`./run-tests` as root includes them).

mod common;
use common::{exited_saying, ok};
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/keep_alive.rs"]
mod keep_alive;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::text;
use fleet::Fleet;
use lifecycle::{StageProject, poll};

/// The hello service's port, inside the host's own network.
const PORT: u16 = 18080;
const HOST: &str = "app1";

/// A hello project whose stage `lsb` is the one host without systemd, with
/// `stage_extra` lines in the stage's table.
fn lsb_project(f: &Fleet, stage_extra: &str) -> StageProject {
    StageProject::one_host(
        "lsb",
        HOST,
        f.ssh_config(),
        stage_extra,
        lifecycle::reachable,
    )
}

fn ssh(f: &Fleet, command: &str) -> Output {
    f.ssh(HOST, command)
}

fn ssh_ok(f: &Fleet, command: &str) -> String {
    let out = ssh(f, command);
    assert!(
        out.status.success(),
        "ssh {HOST} {command:?}: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The version the service reports over HTTP, asked from outside the host.
fn served(f: &Fleet) -> Option<String> {
    lifecycle::served(&f.ip(HOST), PORT)
}

/// What the test expects the host to run.
#[derive(Clone, Copy, Debug)]
enum Expect<'a> {
    /// Healthy on this version.
    Running(&'a str),
    /// Nothing runs (the release is still current).
    Stopped,
}

/// Asserts that `/etc/init.d/hello status` (its exit code and the pid it
/// names), `shipjar status` and the service's own answer agree; for a
/// running service, that the supervisor runs as root and the JVM is its
/// child, running as hello. Returns the service's pid.
fn agree(f: &Fleet, p: &StageProject, expect: Expect) -> i32 {
    let script = ssh(f, "/etc/init.d/hello status");
    let said = String::from_utf8_lossy(&script.stdout).trim().to_string();
    let seen = p.observe();
    let served = served(f);
    let context = || {
        format!(
            "init script: {:?} {said:?}\n{seen:?}\nserved {served:?}\n{}",
            script.status.code(),
            ssh(f, "tail -n 30 /var/log/hello/console.log")
                .stdout
                .escape_ascii()
        )
    };
    match expect {
        Expect::Running(version) => {
            assert_eq!(script.status.code(), Some(0), "{}", context());
            assert!(
                said.contains(&format!("pid {}", seen.service_pid)),
                "{}",
                context()
            );
            assert_eq!(seen.code, 0, "{}", context());
            assert!(seen.flags.is_empty(), "{}", context());
            assert_eq!(seen.state, "running", "{}", context());
            assert_eq!(seen.healthy, Some(true), "{}", context());
            assert!(seen.versions.iter().all(|v| v == version), "{}", context());
            assert_eq!(served.as_deref(), Some(version), "{}", context());
            let procs = ssh_ok(
                f,
                &format!(
                    "ps -o user=,args= -p {}; ps -o user=,ppid=,comm= -p {}",
                    seen.supervisor_pid, seen.service_pid
                ),
            );
            lifecycle::assert_root_supervisor_and_hello_jvm(
                &procs,
                seen.supervisor_pid,
                &["service", "supervise", "hello"],
                &context(),
            );
            seen.service_pid
        }
        Expect::Stopped => {
            // LSB: 3, program is not running.
            assert_eq!(script.status.code(), Some(3), "{}", context());
            assert_eq!(seen.state, "stopped", "{}", context());
            assert_eq!(seen.service_pid, 0, "{}", context());
            assert_ne!(seen.code, 0, "a stopped service is flagged: {}", context());
            assert_eq!(served, None, "{}", context());
            0
        }
    }
}

/// A provision now reports every resource `ok`.
fn assert_provision_changes_nothing(f: &Fleet, p: &StageProject) {
    let again = p.provision();
    lifecycle::assert_nothing_changed(
        &again,
        &ssh_ok(
            f,
            "stat -c '%n %U:%G %a' /var/log/hello /var/lib/hello/shared /run/hello",
        ),
    );
}

#[test]
#[ignore = "needs root"]
fn initscript_lifecycle_status_agrees_with_the_script_at_every_step() {
    let mut f = Fleet::new(1);
    let p = lsb_project(&f, "");

    // Provision: the init script and its rc links, no unit.
    p.provision();
    let installed = ssh_ok(
        &f,
        "stat -c '%a %U' /etc/init.d/hello; ls /etc/rc2.d /etc/rc0.d | grep hello; \
         test -e /etc/systemd/system/hello.service && echo unit; true",
    );
    let lines: Vec<&str> = installed.lines().collect();
    assert!(
        lines.first() == Some(&"755 root")
            && lines
                .iter()
                .any(|l| l.starts_with('S') && l.ends_with("hello"))
            && lines
                .iter()
                .any(|l| l.starts_with('K') && l.ends_with("hello"))
            && !lines.contains(&"unit"),
        "{installed}"
    );
    // The generated script passes shellcheck.
    let script = ssh_ok(&f, "cat /etc/init.d/hello");
    let checked_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(checked_file.path(), format!("{script}\n")).expect("write script");
    let checked = Command::new("shellcheck")
        .arg(checked_file.path())
        .output()
        .expect("run shellcheck");
    assert!(checked.status.success(), "{}", text(&checked));

    p.deployed("1.0.0", &[]);
    agree(&f, &p, Expect::Running("1.0.0"));
    assert_provision_changes_nothing(&f, &p);

    // A reboot: nothing runs until the boot runs the rc2.d link's `start`.
    f.reboot(HOST);
    agree(&f, &p, Expect::Stopped);
    let link = ssh_ok(&f, "ls /etc/rc2.d | grep '^S[0-9]*hello$'");
    ok(ssh(&f, &format!("/etc/rc2.d/{link} start")));
    let first = agree(&f, &p, Expect::Running("1.0.0"));
    // The supervisor made the emptied /run/hello as provision does.
    assert_provision_changes_nothing(&f, &p);

    // Deploy, rollback, a failing deploy (reverted).
    p.deployed("1.0.1", &[]);
    agree(&f, &p, Expect::Running("1.0.1"));
    ok(p.run(&["--json", "rollback", "lsb"]));
    let rolled = agree(&f, &p, Expect::Running("1.0.0"));
    assert_ne!(rolled, first);
    let failing = p.deploy("1.0.2", &["FAIL_ON_START=1"]);
    assert_ne!(failing.status.code(), Some(0), "{}", text(&failing));
    let reverted = agree(&f, &p, Expect::Running("1.0.0"));
    assert_ne!(reverted, rolled);

    // The script's restart: a new process, same release.
    ok(ssh(&f, "/etc/init.d/hello restart"));
    let restarted = agree(&f, &p, Expect::Running("1.0.0"));
    assert_ne!(restarted, reverted);

    // The JVM killed: its supervisor starts a new one.
    ssh_ok(&f, &format!("kill -KILL {restarted}"));
    p.wait_for_new_healthy(restarted, Duration::from_secs(30));
    agree(&f, &p, Expect::Running("1.0.0"));
    assert_eq!(p.observe().restarts, 1);

    // stop, then start again; stop and start are idempotent, as LSB asks.
    for _ in 0..2 {
        ok(ssh(&f, "/etc/init.d/hello stop"));
        agree(&f, &p, Expect::Stopped);
    }
    for _ in 0..2 {
        ok(ssh(&f, "/etc/init.d/hello start"));
        agree(&f, &p, Expect::Running("1.0.0"));
    }
    assert_provision_changes_nothing(&f, &p);
}

/// A value of a JSON file on the host.
fn host_json(f: &Fleet, path: &str) -> serde_json::Value {
    serde_json::from_str(&ssh_ok(f, &format!("cat {path}"))).unwrap_or_default()
}

/// The runner's pid and the proxy worker's uid, on the host.
fn runner_and_worker_uid(f: &Fleet) -> (i64, String) {
    let runner = host_json(f, "/run/hello/proxy/runner.json")["pid"]
        .as_i64()
        .unwrap_or(0);
    let worker = host_json(f, "/run/hello/proxy/keeper.json")["worker"]["pid"]
        .as_i64()
        .unwrap_or(0);
    let uid = ssh_ok(
        f,
        &format!("awk '/^Uid:/ {{ print $2 }}' /proc/{worker}/status"),
    );
    (runner, uid)
}

fn wait_served(f: &Fleet, limit: Duration) -> Option<String> {
    poll(limit, Duration::from_millis(200), || served(f))
}

/// A proxied hello under its init script: the deploy leaves a runner; the
/// script's restart and reload drop no request of a keep-alive client from
/// outside; after a power cycle the rc link's `start` brings the runner, the
/// proxy and the instance back; a killed proxy keeper comes back by itself
/// and `status` names it; `stop` stops it all.
#[test]
#[ignore = "needs root"]
fn initscript_proxied_service_boots_restarts_without_downtime_and_stops() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut f = Fleet::new(1);
    let p = lsb_project(
        &f,
        &format!("proxy = {{ listen = \"0.0.0.0:{PORT}\", ports = [18081, 18082] }}"),
    );
    p.provision();
    p.deployed("1.0.0", &[]);
    assert_eq!(served(&f).as_deref(), Some("1.0.0"));
    let hello_uid = ssh_ok(&f, "id -u hello");
    let (runner, uid) = runner_and_worker_uid(&f);
    assert!(runner > 0);
    assert_eq!(uid, hello_uid, "the proxy worker runs as hello");
    ok(ssh(&f, "/etc/init.d/hello status"));

    let stop = Arc::new(AtomicBool::new(false));
    let addr: std::net::SocketAddr = format!("{}:{PORT}", f.ip(HOST)).parse().expect("address");
    let client = keep_alive::spawn(addr, stop.clone());
    for action in ["restart", "reload"] {
        let out = ssh(&f, &format!("/etc/init.d/hello {action}"));
        assert_eq!(out.status.code(), Some(0), "{action}: {}", text(&out));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let seen = client.join().expect("client");
    assert!(seen.errors.is_empty(), "errors: {:?}", seen.errors);
    assert_eq!(seen.versions, ["1.0.0"]);
    assert!(seen.answered > 10, "{seen:?}");

    // Power cycle; the rc link's start, as at boot.
    f.reboot(HOST);
    assert_eq!(served(&f), None);
    let link = ssh_ok(&f, "ls /etc/rc2.d | grep '^S[0-9]*hello$'");
    ok(ssh(&f, &format!("/etc/rc2.d/{link} start")));
    assert_eq!(served(&f).as_deref(), Some("1.0.0"));
    let (runner, uid) = runner_and_worker_uid(&f);
    assert!(runner > 0);
    assert_eq!(uid, hello_uid);

    // The keeper killed: the runner starts it again, status says so.
    let keeper = host_json(&f, "/run/hello/proxy/keeper.json")["keeper"]["pid"]
        .as_i64()
        .unwrap_or(0);
    ssh_ok(&f, &format!("kill -KILL {keeper}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut said = String::new();
    while Instant::now() < deadline {
        said = String::from_utf8_lossy(&ssh(&f, "/etc/init.d/hello status").stdout).into_owned();
        if said.contains("restarted") && served(&f).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        said.contains(&format!("(last: keeper pid {keeper} died)")),
        "{said}"
    );
    assert_eq!(
        wait_served(&f, Duration::from_secs(5)).as_deref(),
        Some("1.0.0")
    );

    ok(ssh(&f, "/etc/init.d/hello stop"));
    assert_eq!(served(&f), None);
    let status = ssh(&f, "/etc/init.d/hello status");
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
}

/// Under the init script, a release that crash-loops after its deploy is
/// replaced by the previous one by its (detached) supervisor: the script's
/// `status` says running (and the revert), and `shipjar status` flags the drift.
#[test]
#[ignore = "needs root"]
fn initscript_auto_revert_goes_back_and_the_service_stays_running() {
    let f = Fleet::new(1);
    let p = lsb_project(&f, "");
    p.append_config(lifecycle::QUICK_AUTO_REVERT);
    p.provision();
    p.deployed("1.0.0", &[]);
    p.deployed("2.0.0", &["CRASH_AFTER_S=2"]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let out = ssh(&f, "/etc/init.d/hello status");
        let said = text(&out);
        if out.status.code() == Some(0) && said.contains("auto-reverted at ") {
            break said;
        }
        assert!(
            Instant::now() < deadline,
            "no auto-revert within 60 s:\n{said}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(said.contains("(version 2.0.0)"), "{said}");
    // The revert is recorded when the previous release's start begins: it
    // serves once that start passes its health gate.
    let deadline = Instant::now() + Duration::from_secs(30);
    while served(&f).as_deref() != Some("1.0.0") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served(&f).as_deref(), Some("1.0.0"), "{said}");
    let revisions = ssh_ok(&f, "grep -c '\tauto-revert\t' /var/lib/hello/revisions.log");
    assert_eq!(revisions, "2");
    p.assert_drifted();
}

/// The seed's situation: the service runs under its own init script.
/// `provision` names it and changes nothing; `provision --take-over` stops it
/// through that script (keeping a copy), installs shipjar's, and a deploy
/// gets the port.
#[test]
#[ignore = "needs root"]
fn initscript_provision_takes_over_a_service_running_under_its_own_script() {
    let f = Fleet::new(1);
    let p = lsb_project(&f, "");
    let jar = common::hello_jar().to_string_lossy().into_owned();
    let theirs = format!(
        "#!/bin/sh\n# hello, the way it ran before\nPIDFILE=/run/hello-old.pid\ncase \"$1\" in\n\
         start) VERSION=0.9.0 PORT={PORT} BIND=0.0.0.0 nohup java -jar /var/lib/hello-old/hello.jar \
         >/var/log/hello-old.log 2>&1 & echo $! > $PIDFILE ;;\n\
         stop) [ -f $PIDFILE ] || exit 0; kill \"$(cat $PIDFILE)\"; \
         while kill -0 \"$(cat $PIDFILE)\" 2>/dev/null; do sleep 0.1; done; rm -f $PIDFILE ;;\n\
         status) [ -f $PIDFILE ] && kill -0 \"$(cat $PIDFILE)\" 2>/dev/null ;;\nesac\n"
    );
    // Where the host can read it (it sees no /tmp of this machine).
    let script = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hello-old-{}", std::process::id()));
    std::fs::write(&script, &theirs).expect("write the old script");
    ssh_ok(
        &f,
        &format!(
            "mkdir -p /var/lib/hello-old && cp {jar} /var/lib/hello-old/hello.jar && \
             cp {} /etc/init.d/hello && chmod 755 /etc/init.d/hello && /etc/init.d/hello start",
            script.display()
        ),
    );
    let _ = std::fs::remove_file(&script);
    let deadline = Instant::now() + Duration::from_secs(30);
    while served(&f).is_none() {
        assert!(Instant::now() < deadline, "the old service never answered");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Refused, naming the script and the way on; nothing changed.
    let provision = p.run(&["provision", "lsb"]);
    let said = exited_saying(&provision, 1, "/etc/init.d/hello");
    assert!(said.contains("--take-over"), "{said}");
    assert_eq!(ssh_ok(&f, "cat /etc/init.d/hello") + "\n", theirs);
    assert!(served(&f).is_some(), "the old service still runs");

    // Taken over: stopped through its script, a copy kept, ours installed.
    let provision = p.run(&["provision", "lsb", "--take-over"]);
    exited_saying(&provision, 0, "/etc/init.d/hello stop");
    assert!(ssh_ok(&f, "head -3 /etc/init.d/hello").contains("Generated by"));
    assert_eq!(
        ssh_ok(&f, "cat /var/lib/hello/pre-shipjar/init.d-hello") + "\n",
        theirs
    );
    assert!(ssh(&f, "test -e /run/hello-old.pid").status.code() != Some(0));
    p.deployed("1.0.0", &[]);
    assert_eq!(served(&f).as_deref(), Some("1.0.0"));
    // A second provision changes nothing and is not blocked by the copy.
    ok(p.run(&["provision", "lsb"]));
}
