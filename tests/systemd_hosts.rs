//! Hosts that boot Debian's systemd as PID 1 (tests/support/systemd_host.rs)
//! and shipjar's systemd path on them: the unit provision installs, and a
//! deploy whose service the unit runs, under the unit's sandbox. One fleet
//! per test binary, booted by the first test and torn down when the binary
//! exits; each test has a host of its own, but the tests that only look at
//! one service deployed under the hardened unit share theirs. Root only
//! (`./run-tests` as root includes them).

mod common;
use common::{exited_saying, ok};
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/keep_alive.rs"]
mod keep_alive;
#[path = "support/lifecycle.rs"]
mod lifecycle;
#[path = "support/systemd_host.rs"]
mod systemd_host;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::last_json;
use common::{hello_jar, shipjar_bin, text};
use lifecycle::{StageProject, resource_statuses};
use systemd_host::{Stopped, SystemState, SystemdFleet};

/// One host per test, but the tests that look at one deployed service
/// under the hardened unit share theirs.
const HOSTS: usize = 8;
const BOOT_HOST: &str = "app1";
const REBOOT_HOST: &str = "app2";
const PROVISION_HOST: &str = "app3";
const DEPLOY_HOST: &str = "app4";
const LIFECYCLE_HOST: &str = "app5";
const WATCHDOG_HOST: &str = "app6";
const PROXY_HOST: &str = "app7";
const HARDENED_HOST: &str = "app8";
/// The hello service's port (the example's), inside each host's own network.
const PORT: u16 = 18080;
/// The proxy's listen port: below 1024, so binding it needs the unit to
/// keep CAP_NET_BIND_SERVICE.
const PROXY_PORT: u16 = 80;
/// The unit's `WatchdogSec`.
const WATCHDOG: Duration = Duration::from_secs(60);

fn fleet() -> Arc<SystemdFleet> {
    systemd_host::shared(HOSTS)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a command over SSH that must succeed; its trimmed stdout.
fn ssh_ok(f: &SystemdFleet, host: &str, command: &str) -> String {
    common::ssh_succeeded(&f.ssh(host, command), host, command, || f.diagnostics(host))
}

/// Asserts the host booted to `running`, naming the failed units otherwise.
fn assert_running(f: &SystemdFleet, host: &str) {
    let state = f.state(host);
    assert_eq!(
        state,
        Some(SystemState::Running),
        "{host} did not boot cleanly: {state:?}\n{}",
        f.diagnostics(host)
    );
}

/// The shared fleet, with `host` booted to `running`.
#[track_caller]
fn booted(host: &str) -> Arc<SystemdFleet> {
    let f = fleet();
    assert_running(&f, host);
    f
}

/// The shared fleet with `host` booted, and a project whose stage is `host`
/// (see [`systemd_project`]), provisioned.
#[track_caller]
fn provisioned(host: &str, stage_extra: &str) -> (Arc<SystemdFleet>, StageProject) {
    let f = booted(host);
    let p = systemd_project(&f, host, stage_extra);
    p.provision();
    (f, p)
}

/// A fleet of its own (for a test that ends it or changes the whole host):
/// one host, booted to `running`, and its name.
#[track_caller]
fn own_host() -> (SystemdFleet, &'static str) {
    let f = SystemdFleet::new(1);
    let host = "app1";
    assert_running(&f, host);
    (f, host)
}

/// A project whose stage is `host` (see [`systemd_project`]) with `config`
/// appended to its shipjar.toml, provisioned.
fn provisioned_with(f: &SystemdFleet, host: &str, config: &str) -> StageProject {
    let p = systemd_project(f, host, "");
    p.append_config(config);
    p.provision();
    p
}

/// Polls `probe` until it answers `Ok`; fails at `deadline` with its last
/// `Err` (what it saw) and the host's diagnostics.
#[track_caller]
fn until<T>(
    f: &SystemdFleet,
    host: &str,
    deadline: Instant,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    loop {
        match probe() {
            Ok(done) => return done,
            Err(seen) => assert!(Instant::now() < deadline, "{seen}\n{}", f.diagnostics(host)),
        }
        std::thread::sleep(every);
    }
}

/// The integer `key` of a JSON object, as text ("" when there is none).
fn json_number(json: &str, key: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v[key].as_i64())
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// Prints what the host costs, for the record.
fn report(f: &SystemdFleet, host: &str) {
    eprintln!(
        "{host}: booted in {} ms, PSS of its processes {} KiB",
        f.boot_time(host).map_or(0, |d| d.as_millis()),
        f.pss_kib(host)
    );
}

#[test]
#[ignore = "needs root"]
fn systemd_host_boots_and_answers_ssh_with_strict_host_keys() {
    let host = BOOT_HOST;
    let f = booted(host);
    report(&f, host);

    // Through the real ssh client, checking the host key.
    let seen = ssh_ok(
        &f,
        host,
        "cat /proc/1/comm; hostname; systemctl is-system-running; \
         systemd-detect-virt --container; tr '\\0' '\\n' </proc/1/environ | grep '^container='; \
         systemctl show -p ActiveState --value ssh.service",
    );
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [
            "systemd",
            host,
            "running",
            "container-other",
            "container=shipjar-test",
            "active"
        ],
        "{seen}"
    );
    // A client that does not know the key is refused, not asked.
    let stranger = Command::new("ssh")
        .arg("-F")
        .arg(f.ssh_config())
        .args(["-o", "UserKnownHostsFile=/dev/null", host, "true"])
        .stdin(Stdio::null())
        .output()
        .expect("run ssh");
    assert!(!stranger.status.success(), "{}", text(&stranger));
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("Host key verification failed"),
        "{}",
        text(&stranger)
    );

    // Its /tmp, /run and /dev are its own: markers do not cross, either way.
    let tag = format!("shipjar-systemd-{}", std::process::id());
    let machine_tmp = Path::new("/tmp").join(format!("{tag}-machine"));
    let machine_run = Path::new("/run").join(format!("{tag}-machine"));
    fs::write(&machine_tmp, "machine").expect("write machine /tmp marker");
    fs::write(&machine_run, "machine").expect("write machine /run marker");
    let check = format!(
        "for f in /tmp/{tag}-machine /run/{tag}-machine; do test -e $f && echo \"sees $f\"; done; \
         echo host >/tmp/{tag}-host; echo host >/run/{tag}-host; \
         test -e /dev/vda && echo 'sees /dev/vda'; test -e /dev/tty1 && echo 'sees /dev/tty1'; \
         findmnt -n -o FSTYPE /tmp; findmnt -n -o FSTYPE /run; findmnt -n -o FSTYPE /dev"
    );
    let seen = f.ssh(host, &check);
    let _ = fs::remove_file(&machine_tmp);
    let _ = fs::remove_file(&machine_run);
    assert_eq!(stdout(&seen), "tmpfs\ntmpfs\ntmpfs", "{}", text(&seen));
    for leaked in [format!("/tmp/{tag}-host"), format!("/run/{tag}-host")] {
        assert!(
            !Path::new(&leaked).exists(),
            "the host's {leaked} is the machine's"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn systemd_host_reboot_keeps_disk_state_and_starts_with_empty_run_and_tmp() {
    let host = REBOOT_HOST;
    let f = booted(host);
    let before = f.init(host).expect("PID 1 runs");
    ssh_ok(
        &f,
        host,
        "mkdir -p /var/lib/reboot-test && echo kept >/var/lib/reboot-test/marker && \
         echo kept >/etc/reboot-test-marker && echo gone >/tmp/marker && \
         echo gone >/run/marker && echo gone >/var/tmp/marker",
    );

    let stopped = f.reboot(host);
    eprintln!(
        "{host}: stopped {stopped:?}, booted again in {} ms",
        f.boot_time(host).map_or(0, |d| d.as_millis())
    );
    assert!(
        matches!(stopped, Stopped::PoweredOff(_)),
        "systemctl poweroff did not end the host: {stopped:?}"
    );
    assert_running(&f, host);
    let after = f.init(host).expect("PID 1 runs again");
    assert_ne!(before, after, "the same PID 1 still runs");

    // Same host key: strict checking still lets the client in.
    let seen = ssh_ok(
        &f,
        host,
        "cat /var/lib/reboot-test/marker /etc/reboot-test-marker; \
         for f in /tmp/marker /run/marker /var/tmp/marker; do test -e $f && echo \"kept $f\"; done; \
         systemctl is-system-running",
    );
    assert_eq!(seen, "kept\nkept\nrunning", "{seen}");
    // Written to the host's upper dir, not to the machine's disk.
    for path in ["/var/lib/reboot-test", "/etc/reboot-test-marker"] {
        assert!(
            !Path::new(path).exists(),
            "the host wrote the machine's {path}"
        );
    }
}

/// A hello project whose stage `systemd` is one systemd host, with
/// `stage_extra` lines in the stage's table. The service logs every request
/// with a millisecond UTC timestamp, so its own log says when it first
/// answered healthy.
fn systemd_project(f: &SystemdFleet, host: &str, stage_extra: &str) -> StageProject {
    systemd_project_in(f, host, stage_extra, lifecycle::temp_dir("systemd"))
}

/// The same in `dir`.
fn systemd_project_in(
    f: &SystemdFleet,
    host: &str,
    stage_extra: &str,
    dir: tempfile::TempDir,
) -> StageProject {
    let p = StageProject::new(
        dir,
        "systemd",
        &[host.to_string()],
        f.ssh_config(),
        stage_extra,
        |c| {
            // Reachable from the test (outside the host) on the host's address.
            lifecycle::short_timeouts(
                c.replace("BIND = \"127.0.0.1\"", "BIND = \"0.0.0.0\", TZ = \"UTC\""),
            )
        },
    );
    // FINE: hello logs each request it answered.
    fs::copy(
        p.path().join("deploy/logging-local.properties"),
        p.path().join("deploy/logging-systemd.properties"),
    )
    .expect("logging config");
    p
}

#[test]
#[ignore = "needs root"]
fn systemd_provision_installs_and_enables_the_unit() {
    let host = PROVISION_HOST;
    let f = booted(host);
    let p = systemd_project(&f, host, "");

    let first = p.provision();
    assert!(!text(&first).contains(&p.secret));
    let statuses = resource_statuses(&first);
    assert!(
        statuses.iter().all(|(_, s)| s != "failed")
            && statuses
                .iter()
                .any(|(r, s)| r == "enabled hello.service" && s == "changed"),
        "{statuses:?}"
    );
    // The unit, not the init script: this host runs systemd.
    let seen = ssh_ok(
        &f,
        host,
        "systemctl is-enabled hello.service; test -e /etc/init.d/hello && echo 'init script'; \
         systemd-analyze verify /etc/systemd/system/hello.service 2>&1; \
         systemctl show -p LoadState,UnitFileState,FragmentPath hello.service",
    );
    let mut lines: Vec<&str> = seen.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "FragmentPath=/etc/systemd/system/hello.service",
            "LoadState=loaded",
            "UnitFileState=enabled",
            "enabled",
        ],
        "{seen}"
    );

    let second = p.provision();
    let statuses = resource_statuses(&second);
    assert!(
        !statuses.is_empty() && statuses.iter().all(|(_, s)| s == "ok"),
        "second provision changed something: {statuses:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn systemd_deploy_survives_a_reboot_under_its_unit() {
    let host = DEPLOY_HOST;
    let (f, p) = provisioned(host, "");

    p.deployed_else("1.0.0", &[], || f.diagnostics(host));
    agree(&f, host, &p, Expect::Running("1.0.0"));
    report(&f, host);

    // The unit is enabled: systemd starts the service again at boot, on
    // the current release, and the directories come back as provisioned
    // (the host's /var/log and /run are empty after a boot).
    let stopped = f.reboot(host);
    assert!(matches!(stopped, Stopped::PoweredOff(_)), "{stopped:?}");
    assert_running(&f, host);
    agree(&f, host, &p, Expect::Running("1.0.0"));
    assert_provision_changes_nothing(&f, host, &p);
}

/// provision → deploy → provision → deploy, rollback → a failing deploy →
/// `systemctl restart` → the JVM killed → `systemctl stop` → a deploy while
/// a supervisor started by hand runs outside the unit, with `shipjar
/// status`, `systemctl show` and the service itself agreeing at each step.
#[test]
#[ignore = "needs root"]
fn systemd_lifecycle_status_agrees_with_systemctl_at_every_step() {
    let host = LIFECYCLE_HOST;
    let (f, p) = provisioned(host, "");
    let unit_before = ssh_ok(&f, host, "cat /etc/systemd/system/hello.service");
    assert!(
        unit_before.contains("TimeoutStartSec=100000ms"),
        "no release yet: the default start timeout\n{unit_before}"
    );

    // Deploy: READY=1 only once hello answers its health check.
    let deploy = p.deployed_else("1.0.0", &["STARTUP_DELAY_MS=1500"], || f.diagnostics(host));
    let first = agree(&f, host, &p, Expect::Running("1.0.0"));
    assert_ready_after_healthy(&f, host, Duration::from_millis(1500));
    assert_healthy_after_is_the_supervisors(&f, host, &deploy);
    // The release's timeouts reached the unit (20s + 10s grace, 5s + 10s).
    let unit = ssh_ok(&f, host, "cat /etc/systemd/system/hello.service");
    for line in ["TimeoutStartSec=30000ms", "TimeoutStopSec=15000ms"] {
        assert!(unit.lines().any(|l| l == line), "no {line} in\n{unit}");
    }

    // Provision again: nothing to change, nothing taken from the supervisor.
    assert_provision_changes_nothing(&f, host, &p);
    let after = agree(&f, host, &p, Expect::Running("1.0.0"));
    assert_eq!(after, first, "provision restarted something");

    // A second release, then a rollback to the first.
    p.deployed("1.0.1", &[]);
    let second = agree(&f, host, &p, Expect::Running("1.0.1"));
    assert_ne!(
        second.main_pid, first.main_pid,
        "the unit was not restarted"
    );
    ok(p.run(&["--json", "rollback", "systemd"]));
    let rolled = agree(&f, host, &p, Expect::Running("1.0.0"));

    // A release that fails at start: reverted, the unit active on the old one.
    let failing = p.deploy("1.0.2", &["FAIL_ON_START=1"]);
    assert_ne!(failing.status.code(), Some(0), "{}", text(&failing));
    let reverted = agree(&f, host, &p, Expect::Running("1.0.0"));
    assert_ne!(reverted.service_pid, rolled.service_pid);
    let revisions = ssh_ok(&f, host, "tail -n 1 /var/lib/hello/revisions.log");
    assert!(revisions.contains("failed"), "{revisions}");

    // A release that never gets healthy, cancelled with a second Ctrl-C
    // while the unit is activating: the start job is stopped at once and
    // the host goes back, well before the 20 s start timeout.
    let cancelled = cancel_a_hung_deploy(&f, host, &p);
    assert!(cancelled < Duration::from_secs(15), "took {cancelled:?}");
    let reverted = agree(&f, host, &p, Expect::Running("1.0.0"));

    // systemctl restart: a new supervisor, a new JVM, same release.
    ssh_ok(&f, host, "systemctl restart hello");
    let before_reload = agree(&f, host, &p, Expect::Running("1.0.0"));
    assert_ne!(before_reload.main_pid, reverted.main_pid);

    // systemctl reload (no reload signal configured): the same supervisor
    // restarts the JVM through the gate, the reload returns at once, and the
    // unit stays active (systemd used to stop it when the reload ended).
    let reload_began = Instant::now();
    ssh_ok(&f, host, "timeout 30 systemctl reload hello");
    assert!(
        reload_began.elapsed() < Duration::from_secs(10),
        "systemctl reload took {:?}",
        reload_began.elapsed()
    );
    // Whatever systemd does at the end of a reload, it has done by now.
    std::thread::sleep(Duration::from_secs(2));
    let restarted = agree(&f, host, &p, Expect::Running("1.0.0"));
    assert_eq!(restarted.main_pid, before_reload.main_pid);
    assert_ne!(restarted.service_pid, before_reload.service_pid);

    // The JVM killed: the supervisor (still MainPID) starts a new one.
    ssh_ok(&f, host, &format!("kill -KILL {}", restarted.service_pid));
    let deadline = Instant::now() + Duration::from_secs(30);
    let recovered = until(&f, host, deadline, Duration::from_millis(300), || {
        let seen = p.observe();
        // Running again once healthy (while it starts, status says so).
        if seen.healthy == Some(true) && seen.service_pid != restarted.service_pid {
            return Ok(agree(&f, host, &p, Expect::Running("1.0.0")));
        }
        Err(format!("no new JVM 30 s after SIGKILL: {seen:?}"))
    });
    assert_eq!(
        recovered.main_pid, restarted.main_pid,
        "systemd restarted it"
    );
    let status = p.observe().json;
    assert_eq!(
        status["hosts"][0]["status"]["service"]["restarts"], 1,
        "{status}"
    );

    // systemctl stop: everything says stopped.
    ssh_ok(&f, host, "systemctl stop hello");
    agree(&f, host, &p, Expect::Stopped);
    assert_provision_changes_nothing(&f, host, &p);

    // Started by hand outside the unit: the next deploy stops that
    // supervisor and hands the service back to the unit.
    ssh_ok(&f, host, "/usr/local/bin/shipjar service start hello");
    let outside = p.observe();
    assert_eq!(outside.state, "running", "{outside:?}");
    assert_eq!(systemctl_show(&f, host).active, "inactive");
    let deploy = p.deployed_else("1.0.4", &[], || f.diagnostics(host));
    let adopted = agree(&f, host, &p, Expect::Running("1.0.4"));
    assert_ne!(adopted.main_pid, outside.supervisor_pid);
    let result = last_json(&deploy);
    assert!(
        result["hosts"][0]["activation"]["stopped_after_ms"].is_u64(),
        "the supervisor outside the unit was stopped: {result}"
    );
}

/// Deploys a release that hangs at start, interrupts the operator twice
/// once the unit is activating; how long from the second Ctrl-C to the
/// deploy's exit (130, the host back on its release).
fn cancel_a_hung_deploy(f: &SystemdFleet, host: &str, p: &StageProject) -> Duration {
    use std::io::BufRead;
    let jar = hello_jar().to_string_lossy().into_owned();
    let mut child = Command::new(shipjar_bin())
        .arg("-C")
        .arg(p.dir.path())
        .args([
            "deploy",
            "systemd",
            "--artifact",
            &jar,
            "--version",
            "1.0.3",
        ])
        .args(["--env", "HANG_ON_START=1"])
        .env("HELLO_DB_PASSWORD", &p.secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn deploy");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = ssh_ok(f, host, "systemctl show -p ActiveState --value hello");
        let hung = ssh_ok(
            f,
            host,
            "grep -c HANG_ON_START /var/lib/hello/current/RELEASE || true",
        );
        if state == "activating" && hung == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hung release never started: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id() as i32;
    let interrupt = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
    };
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    interrupt();
    let mut said = String::new();
    while !said.contains("Ctrl-C again") {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        said.push_str(&line);
    }
    let sent = Instant::now();
    interrupt();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    let out = child.wait_with_output().expect("wait for deploy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        sent.elapsed() < Duration::from_millis(2500),
        "the second interrupt took {:?} to end the operator",
        sent.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}{said}{rest}\n{}",
        f.diagnostics(host)
    );
    // Either the revert was quick enough for the summary, or the operator
    // ended first and said where the host was left; the agent goes back by itself.
    assert!(
        stdout.contains("cancelled by the operator")
            || rest.contains(&format!(
                "[{host}] its switch was in flight and was asked to cancel"
            )),
        "{stdout}{said}{rest}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    until(f, host, deadline, Duration::from_millis(200), || {
        let show = systemctl_show(f, host);
        let seen = p.observe();
        if (show.active.as_str(), show.sub.as_str()) == ("active", "running")
            && seen.code == 0
            && seen.state == "running"
        {
            return Ok(());
        }
        Err(format!("not back on its release: {show:?} {seen:?}"))
    });
    let took = sent.elapsed();
    eprintln!(
        "{host}: cancelled deploy back on its release {} ms after the second Ctrl-C",
        took.as_millis()
    );
    took
}

/// A supervisor that stops answering (SIGSTOP) is killed by systemd's
/// watchdog and started again, with its service.
#[test]
#[ignore = "needs root"]
fn systemd_watchdog_restarts_a_hung_supervisor() {
    let host = WATCHDOG_HOST;
    let (f, p) = provisioned(host, "");
    p.deployed("1.0.0", &[]);
    let before = agree(&f, host, &p, Expect::Running("1.0.0"));
    let watchdog = ssh_ok(&f, host, "systemctl show -p WatchdogUSec --value hello");
    assert_eq!(watchdog, "1min", "WatchdogSec");

    ssh_ok(&f, host, &format!("kill -STOP {}", before.main_pid));
    let stopped_at = Instant::now();
    // It pings every half period: the watchdog fires within one period.
    let deadline = stopped_at + WATCHDOG + Duration::from_secs(30);
    let after = until(&f, host, deadline, Duration::from_millis(500), || {
        let show = systemctl_show(&f, host);
        if show.main_pid != 0 && show.main_pid != before.main_pid && show.active == "active" {
            return Ok(agree(&f, host, &p, Expect::Running("1.0.0")));
        }
        Err(format!("the hung supervisor was not replaced: {show:?}"))
    });
    let took = stopped_at.elapsed();
    eprintln!(
        "{host}: watchdog replaced the supervisor {} ms after SIGSTOP",
        took.as_millis()
    );
    assert!(
        took <= WATCHDOG + Duration::from_secs(25),
        "took {took:?} for a {WATCHDOG:?} watchdog"
    );
    assert_ne!(after.service_pid, before.service_pid);
    let journal = ssh_ok(
        &f,
        host,
        "journalctl -b -u hello.service --no-pager -o cat | grep -c 'Watchdog timeout' || true",
    );
    assert_eq!(journal, "1", "systemd's journal names no watchdog timeout");
    // The old service went with its supervisor: one JVM of hello left.
    let jvms = ssh_ok(&f, host, "pgrep -c -u hello java || true");
    assert_eq!(jvms, "1");
}

/// What `systemctl show` says of hello.service.
#[derive(Debug)]
struct Shown {
    active: String,
    sub: String,
    main_pid: i32,
}

fn systemctl_show(f: &SystemdFleet, host: &str) -> Shown {
    let shown = ssh_ok(
        f,
        host,
        "systemctl show -p ActiveState,SubState,MainPID hello.service",
    );
    let field = |name: &str| {
        shown
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_string()
    };
    Shown {
        active: field("ActiveState"),
        sub: field("SubState"),
        main_pid: field("MainPID").parse().unwrap_or(-1),
    }
}

/// What a test expects the host to run.
#[derive(Clone, Copy, Debug)]
enum Expect<'a> {
    /// The unit is active and the service healthy on this version.
    Running(&'a str),
    /// The unit is stopped and nothing answers.
    Stopped,
}

/// The pids everyone agreed on.
#[derive(Debug, PartialEq)]
struct Agreed {
    main_pid: i32,
    service_pid: i32,
}

/// Asserts that `systemctl show`, `shipjar status` and the service's own
/// answer over HTTP say the same thing; for a running service, that the
/// unit's main process is shipjar's supervisor, running as root, and the
/// JVM its child, running as hello.
fn agree(f: &SystemdFleet, host: &str, p: &StageProject, expect: Expect) -> Agreed {
    let show = systemctl_show(f, host);
    let seen = p.observe();
    let served = served(&f.ip(host));
    let context = || {
        format!(
            "{show:?}\n{seen:?}\nserved {served:?}\n{}",
            f.diagnostics(host)
        )
    };
    match expect {
        Expect::Running(version) => {
            assert_eq!(
                (show.active.as_str(), show.sub.as_str()),
                ("active", "running"),
                "{}",
                context()
            );
            assert_eq!(seen.code, 0, "status flags something: {}", context());
            assert!(seen.flags.is_empty(), "{}", context());
            assert_eq!(seen.state, "running", "{}", context());
            assert_eq!(seen.supervisor_pid, show.main_pid, "{}", context());
            assert_eq!(seen.healthy, Some(true), "{}", context());
            for v in &seen.versions {
                assert_eq!(v, version, "{}", context());
            }
            assert_eq!(served.as_deref(), Some(version), "{}", context());
            let procs = ssh_ok(
                f,
                host,
                &format!(
                    "ps -o user=,ppid=,args= -p {}; ps -o user=,ppid=,comm= -p {}",
                    show.main_pid, seen.service_pid
                ),
            );
            lifecycle::assert_root_supervisor_and_hello_jvm(
                &procs,
                show.main_pid,
                &["/usr/local/bin/shipjar", "service", "run", "hello"],
                &format!("MainPID is not the supervisor\n{}", context()),
            );
            Agreed {
                main_pid: show.main_pid,
                service_pid: seen.service_pid,
            }
        }
        Expect::Stopped => {
            assert_eq!(
                (show.active.as_str(), show.sub.as_str(), show.main_pid),
                ("inactive", "dead", 0),
                "{}",
                context()
            );
            assert_eq!(seen.state, "stopped", "{}", context());
            assert_eq!(seen.service_pid, 0, "{}", context());
            assert_ne!(seen.code, 0, "a stopped service is flagged: {}", context());
            assert_eq!(served, None, "{}", context());
            let lsb = f.ssh(host, "/usr/local/bin/shipjar service status hello");
            assert_eq!(lsb.status.code(), Some(3), "{}", text(&lsb));
            Agreed {
                main_pid: 0,
                service_pid: 0,
            }
        }
    }
}

/// A provision now reports every resource `ok` and changes no directory.
fn assert_provision_changes_nothing(f: &SystemdFleet, host: &str, p: &StageProject) {
    let again = p.provision();
    let statuses = resource_statuses(&again);
    let changed: Vec<&(String, String)> = statuses.iter().filter(|(_, s)| s != "ok").collect();
    let dirs = ssh_ok(
        f,
        host,
        "stat -c '%n %U:%G %a' /var/log/hello /var/lib/hello/shared /run/hello /run/hello/* /var/log/hello/*",
    );
    assert!(
        !statuses.is_empty() && changed.is_empty(),
        "provision changed: {changed:?}\n{dirs}\n{}",
        text(&again)
    );
    // The supervisor's records are root's; the service's dirs and its log
    // (created by the root supervisor) hello's.
    for line in dirs.lines() {
        let owner = line.split_whitespace().nth(1).unwrap_or_default();
        let want = if line.starts_with("/var/") {
            "hello:hello"
        } else {
            "root:root"
        };
        assert_eq!(owner, want, "{line}\n{dirs}");
    }
    let complaints = ssh_ok(
        f,
        host,
        "journalctl -b -u hello.service --no-pager | grep -c 'Permission denied' || true",
    );
    assert_eq!(complaints, "0", "the supervisor could not write somewhere");
}

/// Milliseconds since the epoch of `YYYY-MM-DD HH:MM:SS.fff…` (UTC).
fn epoch_ms(date: &str, time: &str) -> Option<i64> {
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + ms)
}

/// Asserts that systemd saw the unit active (READY=1) only after hello
/// answered its health check: after every `503` it logged, no earlier than
/// its first `200` (which it logs once the answer is sent: 250 ms leeway),
/// and at least `delay` after systemd started the supervisor.
fn assert_ready_after_healthy(f: &SystemdFleet, host: &str, delay: Duration) {
    let shown = ssh_ok(
        f,
        host,
        "systemctl show --timestamp=us+utc -p ActiveEnterTimestamp,ExecMainStartTimestamp hello",
    );
    let stamp = |name: &str| {
        let value = shown
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_default();
        // `Mon 2026-11-30 02:10:11.123456 UTC`
        let words: Vec<&str> = value.split_whitespace().collect();
        words
            .get(1)
            .zip(words.get(2))
            .and_then(|(d, t)| epoch_ms(d, t))
            .unwrap_or_else(|| panic!("no {name} in {shown}"))
    };
    let (active, exec_start) = (
        stamp("ActiveEnterTimestamp"),
        stamp("ExecMainStartTimestamp"),
    );
    let log = ssh_ok(f, host, "cat /var/log/hello/console.log");
    let answers: Vec<(i64, bool)> = log
        .lines()
        .filter(|l| l.contains("GET /health -> "))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = epoch_ms(words.first()?, words.get(1)?)?;
            Some((at, l.contains("-> 200")))
        })
        .collect();
    let last_unhealthy = answers.iter().filter(|(_, ok)| !ok).map(|(t, _)| *t).max();
    let first_healthy = answers.iter().filter(|(_, ok)| *ok).map(|(t, _)| *t).min();
    let (Some(last_unhealthy), Some(first_healthy)) = (last_unhealthy, first_healthy) else {
        panic!("hello logged no 503 then 200 for /health:\n{log}");
    };
    eprintln!(
        "{host}: supervisor started {exec_start}, last 503 {last_unhealthy}, first 200 {first_healthy}, \
         unit active {active} (ms since the epoch)"
    );
    assert!(
        active > last_unhealthy,
        "READY=1 at {active} before hello's last unhealthy answer at {last_unhealthy}\n{shown}\n{log}"
    );
    assert!(
        active + 250 >= first_healthy,
        "READY=1 at {active}, hello first healthy at {first_healthy}\n{shown}\n{log}"
    );
    assert!(
        active - exec_start >= delay.as_millis() as i64,
        "active {} ms after start, the service needs {delay:?}\n{shown}",
        active - exec_start
    );
}

/// The deploy reports the supervisor's own spawn-to-healthy time (what its
/// log says), not how long `systemctl start` took.
fn assert_healthy_after_is_the_supervisors(f: &SystemdFleet, host: &str, deploy: &Output) {
    let result = last_json(deploy);
    let reported = result["hosts"][0]["activation"]["healthy_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no healthy_after_ms in {result}"));
    let logged = ssh_ok(
        f,
        host,
        "grep -o 'healthy after [0-9]* ms' /var/log/hello/console.log | tail -n 1",
    );
    assert_eq!(logged, format!("healthy after {reported} ms"), "{result}");
}

/// The version the service reports over HTTP, asked from outside the host.
fn served(ip: &str) -> Option<String> {
    lifecycle::served(ip, PORT)
}

#[test]
#[ignore = "needs root"]
fn systemd_host_teardown_kills_a_host_that_ignores_poweroff_and_leaves_nothing() {
    let (f, host) = own_host();
    let init = f.init(host).expect("PID 1 runs");
    let (netns, cgroup) = (
        f.fleet().netns(host).to_string(),
        f.cgroup(host).to_string(),
    );
    let dir = f.fleet().dir().to_path_buf();
    // poweroff.target masked: `systemctl poweroff` is refused, the host runs on.
    ssh_ok(&f, host, "systemctl mask --quiet poweroff.target");
    let started = std::time::Instant::now();
    assert_eq!(f.power_off(host), Stopped::Killed);
    eprintln!("{host}: killed after {} ms", started.elapsed().as_millis());
    assert!(!init.alive(), "PID 1 {} survived", init.pid);
    drop(f);

    for root in systemd_host::hierarchies() {
        assert!(
            !root.join(&cgroup).exists(),
            "cgroup {cgroup} left in {}",
            root.display()
        );
    }
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "netns {netns} left"
    );
    assert!(!dir.exists(), "{} left", dir.display());
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let dir = dir.to_string_lossy();
    assert!(
        !mounts.contains(dir.as_ref()),
        "mounts of the host left on the machine:\n{mounts}"
    );
}

/// Pids of the proxied service on `host`: (the unit's MainPID, the runner
/// it recorded, the proxy worker) and the worker's uid.
fn proxied_pids(f: &SystemdFleet, host: &str) -> (String, String, String, String) {
    let main = ssh_ok(f, host, "systemctl show -p MainPID --value hello.service");
    let runner = ssh_ok(f, host, "cat /run/hello/proxy/runner.json");
    let runner = json_number(&runner, "pid");
    let status = ssh_ok(
        f,
        host,
        "/usr/local/bin/shipjar --json service status hello",
    );
    let worker = json_number(&status, "worker_pid");
    let uid = ssh_ok(
        f,
        host,
        &format!("awk '/^Uid:/ {{ print $2 }}' /proc/{worker}/status"),
    );
    (main, runner, worker, uid)
}

/// A proxied hello under its unit, its proxy on port 80: deployed, the
/// unit active with the runner as its main process and the proxy worker
/// not root; a deploy and
/// `systemctl reload` with a keep-alive client from outside seeing no
/// error; a reboot, after which the service answers through the proxy with
/// no manual step and the runner's records are readable by any user;
/// `systemctl stop` stops it all.
#[test]
#[ignore = "needs root"]
fn systemd_proxied_service_comes_back_after_a_reboot_under_its_unit() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let host = PROXY_HOST;
    let (f, p) = provisioned(
        host,
        &format!("proxy = {{ listen = \"0.0.0.0:{PROXY_PORT}\", ports = [18081, 18082] }}"),
    );
    p.deployed_else("1.0.0", &[], || f.diagnostics(host));
    let ip = f.ip(host);
    assert_eq!(lifecycle::served(&ip, PROXY_PORT).as_deref(), Some("1.0.0"));
    assert_eq!(
        ssh_ok(&f, host, "systemctl is-active hello.service"),
        "active",
        "{}",
        f.diagnostics(host)
    );
    let (main, runner, worker, uid) = proxied_pids(&f, host);
    assert_eq!(main, runner, "the unit's main process is the runner");
    assert!(!worker.is_empty());
    let hello_uid = ssh_ok(&f, host, "id -u hello");
    assert_eq!(uid, hello_uid, "the proxy worker runs as hello");
    assert_ne!(uid, "0");

    // A deploy and a reload, a keep-alive client from outside throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let addr: std::net::SocketAddr = format!("{ip}:{PROXY_PORT}").parse().expect("address");
    let client = keep_alive::spawn(addr, stop.clone());
    let deploy = p.deployed("2.0.0", &[]);
    // The instance the deploy started (from its ssh session) joined the unit.
    assert!(
        text(&deploy).contains("moved into hello.service"),
        "{}",
        text(&deploy)
    );
    let status = ssh_ok(
        &f,
        host,
        "/usr/local/bin/shipjar --json service status hello",
    );
    let jvm = serde_json::from_str::<serde_json::Value>(&status)
        .ok()
        .and_then(|v| {
            v["instances"]
                .as_array()?
                .iter()
                .find(|i| i["active"] == true)?["service"]["pid"]
                .as_i64()
        })
        .unwrap_or(0);
    let cgroup = ssh_ok(&f, host, &format!("cat /proc/{jvm}/cgroup"));
    assert!(cgroup.contains("/system.slice/hello.service"), "{cgroup}");
    let reload = f.ssh(host, "systemctl reload hello.service");
    assert!(
        reload.status.success(),
        "{}\n{}",
        text(&reload),
        f.diagnostics(host)
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let seen = client.join().expect("client");
    assert!(seen.errors.is_empty(), "errors: {:?}", seen.errors);
    assert_eq!(seen.versions, ["1.0.0", "2.0.0"]);
    assert!(seen.answered > 10, "{seen:?}");
    let (main, runner, _, _) = proxied_pids(&f, host);
    assert_eq!(main, runner);

    // Rebooted: the unit brings the runner, the proxy and the instance back.
    let stopped = f.reboot(host);
    assert!(matches!(stopped, Stopped::PoweredOff(_)), "{stopped:?}");
    assert_running(&f, host);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lifecycle::served(&ip, PROXY_PORT).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        lifecycle::served(&ip, PROXY_PORT).as_deref(),
        Some("2.0.0"),
        "{}",
        f.diagnostics(host)
    );
    assert_eq!(
        ssh_ok(&f, host, "systemctl is-active hello.service"),
        "active"
    );
    let (main, runner, _, uid) = proxied_pids(&f, host);
    assert_eq!(main, runner);
    assert_eq!(uid, hello_uid);
    ok(f.ssh(host, "/usr/local/bin/shipjar service status hello"));
    // What the runner recorded under the unit (UMask=0027) is, like the
    // rest of the run dir, readable by any user.
    let records = f.ssh(
        host,
        "setpriv --reuid=nobody --regid=nogroup --clear-groups -- \
         cat /run/hello/proxy/runner.json /run/hello/proxy/active /run/hello/proxy/spec.json",
    );
    assert!(
        records.status.success(),
        "{}\n{}",
        text(&records),
        ssh_ok(&f, host, "ls -la /run/hello /run/hello/proxy")
    );

    // The active instance's supervisor and JVM SIGKILLed: the unit's runner
    // starts it again; a client from outside sees no error, the unit stays.
    let active = |f: &SystemdFleet| -> (i64, i64) {
        // Any exit code: a starting instance is LSB 3.
        let status = stdout(&f.ssh(host, "/usr/local/bin/shipjar --json service status hello"));
        serde_json::from_str::<serde_json::Value>(&status)
            .ok()
            .and_then(|v| {
                let i = v["instances"]
                    .as_array()?
                    .iter()
                    .find(|i| i["active"] == true)?;
                Some((
                    i["service"]["supervisor_pid"].as_i64()?,
                    i["service"]["pid"].as_i64()?,
                ))
            })
            .unwrap_or((0, 0))
    };
    let (supervisor, jvm) = active(&f);
    assert!(supervisor > 0 && jvm > 0, "{}", f.diagnostics(host));
    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_alive::spawn(addr, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    ssh_ok(&f, host, &format!("kill -9 {supervisor} {jvm}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    until(&f, host, deadline, Duration::from_millis(200), || {
        let (s, j) = active(&f);
        if s > 0
            && j > 0
            && j != jvm
            && f.ssh(host, "/usr/local/bin/shipjar service status hello")
                .status
                .code()
                == Some(0)
        {
            return Ok(());
        }
        Err("not back:".to_string())
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let seen = client.join().expect("client");
    assert!(seen.errors.is_empty(), "errors: {:?}", seen.errors);
    assert_eq!(seen.versions, ["2.0.0"]);
    assert_eq!(
        ssh_ok(&f, host, "systemctl is-active hello.service"),
        "active"
    );
    let (main_after, runner_after, _, _) = proxied_pids(&f, host);
    assert_eq!(
        (main_after, runner_after),
        (main.clone(), runner.clone()),
        "the same runner"
    );

    // Stopped by systemd: instances, then the proxy; LSB 3.
    ssh_ok(&f, host, "systemctl stop hello.service");
    assert_eq!(lifecycle::served(&ip, PROXY_PORT), None);
    let status = f.ssh(host, "/usr/local/bin/shipjar service status hello");
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
    let left = f.ssh(host, "systemctl is-active hello.service");
    assert_eq!(stdout(&left), "inactive");
}

/// The hello service on [`HARDENED_HOST`], provisioned and deployed once
/// under the generated (hardened) unit, for the tests that look at it.
struct Hardened {
    /// Kept: the project that deployed it.
    _project: StageProject,
    /// The JVM's pid.
    service_pid: i32,
}

static HARDENED: OnceLock<Hardened> = OnceLock::new();

/// Provisions and deploys hello on [`HARDENED_HOST`] the first time it is
/// called; the service is running and healthy under its unit.
fn hardened(f: &SystemdFleet) -> &'static Hardened {
    HARDENED.get_or_init(|| {
        let host = HARDENED_HOST;
        assert_running(f, host);
        // In the fleet's state directory: the project is kept in a static,
        // which is never dropped; the fleet's teardown removes it.
        let dir = tempfile::Builder::new()
            .prefix("project-")
            .tempdir_in(f.fleet().dir())
            .expect("tempdir");
        let p = systemd_project_in(f, host, "", dir);
        p.provision();
        p.deployed_else("1.0.0", &[], || f.diagnostics(host));
        let agreed = agree(f, host, &p, Expect::Running("1.0.0"));
        Hardened {
            _project: p,
            service_pid: agreed.service_pid,
        }
    })
}

/// The shared fleet, [`HARDENED_HOST`] with hello running under the
/// hardened unit (see [`hardened`]), and the JVM's pid.
fn hardened_host() -> (Arc<SystemdFleet>, &'static str, i32) {
    let f = fleet();
    let pid = hardened(&f).service_pid;
    (f, HARDENED_HOST, pid)
}

/// The overall exposure `systemd-analyze security` prints last:
/// `→ Overall exposure level for hello.service: 3.4 OK 🙂`.
fn exposure(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("Overall exposure level"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `COMMAND` as the service user, as an operator on the host would run it
/// (not a child of the unit, not root).
fn as_hello(command: &str) -> String {
    format!("setpriv --reuid=hello --regid=hello --init-groups -- {command}")
}

/// The unit provision installs scores at most 3.5 ("OK") in `systemd-analyze
/// security`, offline on the file and as the host's systemd loaded it
/// (the unit before the hardening scored 8.3, "EXPOSED").
#[test]
#[ignore = "needs root"]
fn systemd_installed_unit_exposure_is_at_most_3_5() {
    let (f, host, _) = hardened_host();
    for command in [
        "systemd-analyze security --no-pager --offline=true /etc/systemd/system/hello.service",
        "systemd-analyze security --no-pager hello.service",
    ] {
        let out = f.ssh(host, command);
        let said = stdout(&out);
        let score = exposure(&said)
            .unwrap_or_else(|| panic!("{command}: no overall exposure in\n{}", text(&out)));
        eprintln!("{host}: {command}: exposure {score}");
        assert!(score <= 3.5, "{command}: exposure {score} > 3.5\n{said}");
    }
}

/// Under the hardened unit (PrivateTmp off, ptrace between the service
/// user's processes allowed) the service user attaches `jcmd` and `jstack`
/// to the JVM through /tmp.
#[test]
#[ignore = "needs root"]
fn systemd_service_user_attaches_jcmd_and_jstack_under_the_unit() {
    let (f, host, pid) = hardened_host();
    let version = ssh_ok(&f, host, &as_hello(&format!("jcmd {pid} VM.version")));
    assert!(
        version.contains("OpenJDK") || version.contains("JDK"),
        "{version}"
    );
    let threads = ssh_ok(&f, host, &as_hello(&format!("jstack {pid}")));
    assert!(threads.contains("Full thread dump"), "{threads}");
}

/// The JIT compiles under the hardened unit (MemoryDenyWriteExecute stays
/// off): the JVM's code cache holds compiled methods (an interpreted-only
/// JVM, `-Xint`, shows `nmethods=0`).
#[test]
#[ignore = "needs root"]
fn systemd_jit_compiles_under_the_unit() {
    let (f, host, pid) = hardened_host();
    let cache = ssh_ok(
        &f,
        host,
        &as_hello(&format!("jcmd {pid} Compiler.codecache")),
    );
    let nmethods: u64 = cache
        .split_whitespace()
        .find_map(|w| w.strip_prefix("nmethods="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no nmethods= in\n{cache}"));
    assert!(
        nmethods > 0,
        "no compiled method in the code cache:\n{cache}"
    );
}

/// With the unit's `UMask=0027`, what the supervisor records in the run dir
/// stays readable: `service status` as an unprivileged user says running.
#[test]
#[ignore = "needs root"]
fn systemd_status_works_for_any_user_under_the_unit() {
    let (f, host, _) = hardened_host();
    let out = f.ssh(
        host,
        "setpriv --reuid=nobody --regid=nogroup --clear-groups -- \
         /usr/local/bin/shipjar service status hello",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        ssh_ok(&f, host, "ls -la /run/hello /run/hello/*")
    );
}

/// Under its unit, a release that crash-loops after its deploy is replaced
/// by the previous one by the supervisor itself: the unit stays active with
/// the same main process, and `shipjar status` flags the drift.
#[test]
#[ignore = "needs root"]
fn systemd_auto_revert_goes_back_under_the_unit_which_stays_active() {
    let (f, host) = own_host();
    let p = provisioned_with(&f, host, lifecycle::QUICK_AUTO_REVERT);
    p.deployed("1.0.0", &[]);
    p.deployed("2.0.0", &["CRASH_AFTER_S=2"]);
    let main = ssh_ok(&f, host, "systemctl show -p MainPID --value hello.service");

    let ip = f.fleet().ip(host);
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let out = f.ssh(host, "/usr/local/bin/shipjar service status hello");
        let said = text(&out);
        if out.status.code() == Some(0) && said.contains("auto-reverted at ") {
            break said;
        }
        assert!(
            Instant::now() < deadline,
            "no auto-revert within 60 s:\n{said}\n{}",
            f.diagnostics(host)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(said.contains("(version 2.0.0)"), "{said}");
    assert_eq!(served(&ip).as_deref(), Some("1.0.0"));
    assert_eq!(
        ssh_ok(&f, host, "systemctl is-active hello.service"),
        "active"
    );
    assert_eq!(
        ssh_ok(&f, host, "systemctl show -p MainPID --value hello.service"),
        main,
        "the supervisor reverted in place"
    );
    let revisions = ssh_ok(
        &f,
        host,
        "grep -c '\tauto-revert\t' /var/lib/hello/revisions.log",
    );
    assert_eq!(revisions, "2");
    p.assert_drifted();
}

/// `[logs] to = "journal"`: the service's output and the supervisor's
/// events go to journald under the service's name (no console.log);
/// `shipjar logs` reads them there with `-n`, `--grep` and `--since`, and
/// a failed start's message shows the service's last words from it.
#[test]
#[ignore = "needs root"]
fn systemd_journal_takes_the_service_output_and_logs_reads_it_there() {
    let (f, host) = own_host();
    let p = provisioned_with(&f, host, "\n[logs]\nto = \"journal\"\n");
    p.deployed_else("1.0.0", &[], || f.diagnostics(host));
    let journal = ssh_ok(&f, host, "journalctl -t hello --no-pager -o cat");
    assert!(journal.contains("listening on"), "{journal}");
    assert!(journal.contains("[shipjar] healthy after"), "{journal}");
    let files = ssh_ok(&f, host, "ls /var/log/hello");
    assert!(!files.contains("console.log"), "{files}");

    let logs = ok(p.run(&["logs", "systemd", "--grep", "listening on"]));
    assert!(text(&logs).contains("listening on"), "{}", text(&logs));
    assert!(!text(&logs).contains("healthy after"), "{}", text(&logs));
    let logs = ok(p.run(&["logs", "systemd", "--since", "1h", "-n", "3"]));
    let shown = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert!((1..=3).contains(&shown), "{}", text(&logs));

    // A release that fails at start: its own words, from the journal.
    let failed = p.deploy("2.0.0", &["FAIL_ON_START=1"]);
    exited_saying(&failed, 1, "hello: FAIL_ON_START is set, exiting");
    assert_eq!(served(&f.fleet().ip(host)).as_deref(), Some("1.0.0"));
}
