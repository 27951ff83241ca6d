//! Hosts that boot Debian's systemd as PID 1 (tests/support/systemd_host.rs)
//! and shipjar's systemd path on them: the unit provision installs, and a
//! deploy whose service the unit runs. One fleet per test binary, booted by
//! the first test and torn down when the binary exits; each test has a host
//! of its own. Root only (`./run-tests` as root includes them).

mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/systemd_host.rs"]
mod systemd_host;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use common::{hello_jar, shipjar_bin, text};
use systemd_host::{Stopped, SystemState, SystemdFleet, require_root};

/// One host per test.
const HOSTS: usize = 5;
const BOOT_HOST: &str = "app1";
const REBOOT_HOST: &str = "app2";
const PROVISION_HOST: &str = "app3";
const DEPLOY_HOST: &str = "app4";
const REPROVISION_HOST: &str = "app5";
/// The hello service's port (the example's), inside each host's own network.
const PORT: u16 = 18080;

fn fleet() -> Arc<SystemdFleet> {
    systemd_host::shared(HOSTS)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a command over SSH that must succeed; its trimmed stdout.
fn ssh_ok(f: &SystemdFleet, host: &str, command: &str) -> String {
    let out = f.ssh(host, command);
    assert!(
        out.status.success(),
        "ssh {host} {command:?}: {}\n{}",
        text(&out),
        f.diagnostics(host)
    );
    stdout(&out)
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
    require_root();
    let f = fleet();
    let host = BOOT_HOST;
    assert_running(&f, host);
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
    require_root();
    let f = fleet();
    let host = REBOOT_HOST;
    assert_running(&f, host);
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

/// A hello project whose stage `systemd` is one systemd host.
struct SystemdProject {
    dir: tempfile::TempDir,
    secret: String,
}

impl SystemdProject {
    fn new(f: &SystemdFleet, host: &str) -> SystemdProject {
        let dir = tempfile::Builder::new()
            .prefix("shipjar-systemd-")
            .tempdir()
            .expect("tempdir");
        common::write_fleet_project(
            dir.path(),
            "systemd",
            &[host.to_string()],
            f.ssh_config(),
            "",
            |c| {
                // Reachable from the test (outside the host) on the host's address.
                c.replace("BIND = \"127.0.0.1\"", "BIND = \"0.0.0.0\"")
                    .replace("start_timeout = \"30s\"", "start_timeout = \"20s\"")
                    .replace("timeout = \"15s\"", "timeout = \"5s\"")
            },
        );
        SystemdProject {
            dir,
            secret: common::unique_secret(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(shipjar_bin())
            .arg("-C")
            .arg(self.dir.path())
            .args(args)
            .env("HELLO_DB_PASSWORD", &self.secret)
            .stdin(Stdio::null())
            .output()
            .expect("run shipjar")
    }
}

fn last_json(out: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Statuses of the resources a `--json provision` reports.
fn resource_statuses(out: &Output) -> Vec<(String, String)> {
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

#[test]
#[ignore = "needs root"]
fn systemd_provision_installs_and_enables_the_unit() {
    require_root();
    let f = fleet();
    let host = PROVISION_HOST;
    assert_running(&f, host);
    let p = SystemdProject::new(&f, host);

    let first = p.run(&["--json", "provision", "systemd"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
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

    let second = p.run(&["--json", "provision", "systemd"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    let statuses = resource_statuses(&second);
    assert!(
        !statuses.is_empty() && statuses.iter().all(|(_, s)| s == "ok"),
        "second provision changed something: {statuses:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn systemd_deploy_runs_the_service_under_its_unit() {
    require_root();
    let f = fleet();
    let host = DEPLOY_HOST;
    assert_running(&f, host);
    let p = SystemdProject::new(&f, host);
    let provision = p.run(&["--json", "provision", "systemd"]);
    assert_eq!(provision.status.code(), Some(0), "{}", text(&provision));

    let jar = hello_jar().to_string_lossy().into_owned();
    let deploy = p.run(&[
        "--json",
        "deploy",
        "systemd",
        "--artifact",
        &jar,
        "--version",
        "1.0.0",
    ]);
    assert_eq!(
        deploy.status.code(),
        Some(0),
        "{}\n{}",
        text(&deploy),
        f.diagnostics(host)
    );
    assert_supervised_by_unit(&f, host);
    assert_eq!(served(&f.ip(host)).as_deref(), Some("1.0.0"));
    report(&f, host);

    // The unit is enabled: systemd starts the service again at boot.
    let stopped = f.reboot(host);
    assert!(matches!(stopped, Stopped::PoweredOff(_)), "{stopped:?}");
    assert_running(&f, host);
    assert_supervised_by_unit(&f, host);
    assert_eq!(served(&f.ip(host)).as_deref(), Some("1.0.0"));
}

/// `systemctl show` says hello.service runs, and its main process is
/// shipjar's supervisor (`shipjar service run hello`).
fn assert_supervised_by_unit(f: &SystemdFleet, host: &str) {
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
    assert_eq!(
        (field("ActiveState"), field("SubState")),
        ("active".to_string(), "running".to_string()),
        "{shown}\n{}",
        f.diagnostics(host)
    );
    let main_pid = field("MainPID");
    let cmdline = ssh_ok(f, host, &format!("tr '\\0' ' ' </proc/{main_pid}/cmdline"));
    assert!(
        cmdline.starts_with("/usr/local/bin/shipjar service run hello"),
        "MainPID {main_pid} is not the supervisor: {cmdline:?}\n{shown}"
    );
}

/// The version the service reports over HTTP, asked from outside the host.
fn served(ip: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:{PORT}").parse().ok()?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(stream, "GET /version HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value["version"].as_str().map(str::to_string)
}

/// Provisioning again after a deploy must change nothing, and must not take
/// from the running supervisor what it writes.
#[test]
#[ignore = "shipjar bug, needs root: provision and the unit fight over directories. After a \
            deploy, provision changes /run/hello hello:hello -> root:root (the unit's \
            RuntimeDirectory gives it to hello), /var/log/hello and /var/lib/hello/shared \
            0755 -> 0750 (the unit's ExecStartPre runs install -d -m 0755), and rewrites the \
            unit (provision before the first deploy renders default timeouts, 100000ms/40000ms; \
            deploy never re-renders it). The running supervisor then logs `cannot write \
            /run/hello/supervisor.json: Permission denied` until its next restart"]
fn systemd_provision_after_a_deploy_changes_nothing() {
    require_root();
    let f = fleet();
    let host = REPROVISION_HOST;
    assert_running(&f, host);
    let p = SystemdProject::new(&f, host);
    let provision = p.run(&["--json", "provision", "systemd"]);
    assert_eq!(provision.status.code(), Some(0), "{}", text(&provision));
    let jar = hello_jar().to_string_lossy().into_owned();
    let deploy = p.run(&[
        "deploy",
        "systemd",
        "--artifact",
        &jar,
        "--version",
        "1.0.0",
    ]);
    assert_eq!(deploy.status.code(), Some(0), "{}", text(&deploy));

    let again = p.run(&["--json", "provision", "systemd"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let changed: Vec<(String, String)> = resource_statuses(&again)
        .into_iter()
        .filter(|(_, s)| s != "ok")
        .collect();
    let dirs = ssh_ok(
        &f,
        host,
        "stat -c '%n %U:%G %a' /var/log/hello /var/lib/hello/shared /run/hello",
    );
    assert!(
        changed.is_empty(),
        "provision after a deploy changed: {changed:?}\n{dirs}"
    );
    // The supervisor still owns its state: a restart through the unit
    // stops it without complaints.
    let restart = p.run(&[
        "deploy",
        "systemd",
        "--artifact",
        &jar,
        "--version",
        "1.0.1",
    ]);
    assert_eq!(restart.status.code(), Some(0), "{}", text(&restart));
    let complaints = ssh_ok(
        &f,
        host,
        "journalctl -b -u hello.service --no-pager | grep -c 'Permission denied' || true",
    );
    assert_eq!(complaints, "0", "the supervisor lost its run directory");
}

#[test]
#[ignore = "needs root"]
fn systemd_host_teardown_kills_a_host_that_ignores_poweroff_and_leaves_nothing() {
    require_root();
    // A fleet of its own: this test ends it.
    let f = SystemdFleet::new(1);
    let host = "app1";
    assert_running(&f, host);
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
