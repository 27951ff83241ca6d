//! `shipjar exec`: a command on each host as the service runs it — in
//! `current`, with its environment and config files, output prefixed by host
//! and masked, each host's exit in the summary; `-i` on one host with this
//! terminal. On `local` with examples/hello, and on a two-host fleet as the
//! service user over real ssh.

mod common;
use common::{exited_saying, ok};
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Project, hello_jar, shipjar_bin, text};
use lifecycle::FleetStage;

#[test]
fn exec_runs_in_current_with_the_service_environment_masked_and_passes_the_exit_code() {
    let project = Project::new();
    assert!(project.deploy("v1", &[]).status.success());
    let current = project.current().unwrap();
    let out = project.run(&[
        "exec",
        "local",
        "--",
        "sh",
        "-c",
        "echo in ${PWD##*/} port=$PORT version=$SHIPJAR_VERSION; cat config/database.properties; echo to stderr >&2; exit 3",
    ]);
    let said = exited_saying(
        &out,
        3,
        &format!("[local] in {current} port={} version=v1", project.port),
    );
    assert!(said.contains("[local] to stderr"), "{said}");
    // It read the secret file as the service does; the value is masked.
    assert!(said.contains("[local] password=********"), "{said}");
    assert!(!said.contains(&project.secret), "the secret leaked: {said}");
    assert!(said.contains("exited with code 3"), "{said}");
    assert!(said.contains("exec: 0 of 1 host exited 0"), "{said}");

    let out = ok(project.run(&["--json", "exec", "local", "--", "true"]));
    let result = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result")
        .expect("a result line");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["hosts"][0]["host"], "local", "{result}");
    assert_eq!(result["hosts"][0]["code"], 0, "{result}");
}

#[test]
fn exec_before_any_deploy_says_so() {
    let project = Project::new();
    let out = project.run(&["exec", "local", "--", "true"]);
    exited_saying(&out, 1, "no release is current here");
}

#[test]
fn exec_kills_the_command_and_its_children_at_the_timeout() {
    let project = Project::new();
    assert!(project.deploy("v1", &[]).status.success());
    let pidfile = project.path().join("child.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let started = Instant::now();
    let out = project.run(&[
        "exec",
        "local",
        "--timeout",
        "1s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let said = exited_saying(&out, 1, "timed out after 1s; killed");
    assert!(started.elapsed() < Duration::from_secs(20), "{said}");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive =
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(), "the command's child {pid} still runs");
}

#[test]
fn an_operator_that_goes_away_takes_its_command_with_it() {
    let project = Project::new();
    assert!(project.deploy("v1", &[]).status.success());
    let pidfile = project.path().join("cmd.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pidfile.display());
    let mut operator = project
        .command(&["exec", "local", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    // As Ctrl-C would end it: the operator is gone, its agent's input ends.
    operator.kill().unwrap();
    operator.wait().unwrap();
    let alive =
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let still = alive();
    if still {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(!still, "the command {pid} outlived its operator");
}

#[test]
fn exec_i_runs_on_this_terminal_in_current() {
    let project = Project::new();
    assert!(project.deploy("v1", &[]).status.success());
    let current = project.current().unwrap();
    let mut child = project
        .command(&[
            "exec",
            "local",
            "-i",
            "--",
            "sh",
            "-c",
            "read line; echo got $line in ${PWD##*/} port=$PORT; exit 4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello-from-stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    exited_saying(
        &out,
        4,
        &format!("got hello-from-stdin in {current} port={}", project.port),
    );
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn on_a_fleet_exec_runs_as_the_service_user_on_every_host_and_i_wants_one_host() {
    let p = FleetStage::new(2, "", |c| {
        c.replace("start_timeout = \"30s\"", "start_timeout = \"20s\"")
    });
    p.provision();
    let jar = hello_jar().to_string_lossy().into_owned();
    let out = p.run(&["deploy", "fleet", "--artifact", &jar, "--version", "v1"]);
    assert!(out.status.success(), "deploy: {}", text(&out));

    let out = p.run(&[
        "exec",
        "fleet",
        "--",
        "sh",
        "-c",
        "echo as $(id -un) on $SHIPJAR_HOST; cat config/database.properties; [ $SHIPJAR_HOST = app1 ]",
    ]);
    let said = text(&out);
    // app2's test fails: one host not 0 → 1.
    assert_eq!(out.status.code(), Some(1), "{said}");
    for host in ["app1", "app2"] {
        for line in [
            format!("[{host}] as hello on {host}"),
            format!("[{host}] password=********"),
        ] {
            assert!(said.contains(&line), "{said}");
        }
    }
    assert!(!said.contains(&p.secret), "the secret leaked: {said}");
    assert!(said.contains("exec: 1 of 2 hosts exited 0"), "{said}");
    assert!(said.contains("exited with code 1"), "{said}");

    // --hosts: only the hosts named.
    let out = p.run(&[
        "exec",
        "fleet",
        "--hosts",
        "app2",
        "--",
        "sh",
        "-c",
        "echo on $SHIPJAR_HOST",
    ]);
    let said = exited_saying(&out, 0, "[app2] on app2");
    assert!(!said.contains("[app1]"), "{said}");

    let out = p.run(&["exec", "fleet", "-i", "--", "sh"]);
    exited_saying(&out, 2, "-i runs on one host; stage `fleet` has 2");

    // -i over ssh: the command gets this process's stdin and output (no terminal here,
    // so ssh says it allocates none), runs as the service user in current, and its
    // exit code is shipjar's.
    let mut child = std::process::Command::new(shipjar_bin())
        .arg("-C")
        .arg(p.path())
        .args([
            "exec",
            "fleet",
            "--hosts",
            "app1",
            "-i",
            "--",
            "sh",
            "-c",
            "read line; echo got $line as $(id -un) in ${PWD##*/}; exit 5",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shipjar exec -i");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"over-ssh\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(5), "{said}");
    let current = String::from_utf8_lossy(
        &p.fleet
            .ssh("app1", "readlink /var/lib/hello/current")
            .stdout,
    )
    .trim()
    .rsplit('/')
    .next()
    .unwrap_or_default()
    .to_string();
    assert!(!current.is_empty());
    assert!(
        said.contains(&format!("got over-ssh as hello in {current}")),
        "{said}"
    );

    // An operator that goes away over ssh takes the command on the host with it.
    let mut operator = std::process::Command::new(shipjar_bin())
        .arg("-C")
        .arg(p.path())
        .args([
            "exec",
            "fleet",
            "--hosts",
            "app1",
            "--",
            "sh",
            "-c",
            "echo $$ > /tmp/exec-test.pid; exec sleep 300",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run shipjar exec");
    let on_host = |command: &str| {
        String::from_utf8_lossy(&p.fleet.ssh("app1", command).stdout)
            .trim()
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let pid = on_host("cat /tmp/exec-test.pid 2>/dev/null");
        if !pid.is_empty() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    operator.kill().unwrap();
    operator.wait().unwrap();
    let alive = || on_host(&format!("kill -0 {pid} 2>/dev/null && echo alive")) == "alive";
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!alive(), "the command {pid} on app1 outlived its operator");
}
