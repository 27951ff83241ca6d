//! What `status` says when the supervisor dies, while a start is in its
//! health gate, and after a crash: each state named as it is, with its LSB
//! code, and `start`/`deploy` replacing a service left unsupervised.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::exited_saying;
use crate::common::host::{
    Helper, Host, Spec, alive, code, eventually, free_port, stdout_starting, text,
};
use crate::common::{Project, http_get};

/// SIGKILLs `pid` (a supervisor this test started) and waits until it is gone.
fn kill9(pid: i32) {
    // SAFETY: kill(2) on a supervisor this test started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "pid {pid} survived SIGKILL"
    );
}

/// The supervisor pid from a host root's state file.
fn supervisor_pid(run_dir: &std::path::Path) -> i32 {
    let text = std::fs::read_to_string(run_dir.join("supervisor.json")).expect("supervisor.json");
    let state: Value = serde_json::from_str(&text).expect("state json");
    state["supervisor"]["pid"].as_i64().expect("supervisor pid") as i32
}

#[test]
fn a_killed_supervisor_is_named_and_start_replaces_its_orphan() {
    let port = free_port();
    let (host, pid) = Host::running("orphaned", &Spec::hello(port, &[]));
    let supervisor = supervisor_pid(&host.run_dir());

    kill9(supervisor);
    // The JVM lives on and still answers: only status can tell.
    assert!(alive(pid), "the service died with its supervisor");
    assert_eq!(http_get(port, "/health").map(|r| r.0), Some(200));

    let out = host.run("status", false);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected = format!(
        "dead: supervisor pid {supervisor} is gone; the service pid {pid} runs unsupervised since "
    );
    assert!(said.starts_with(&expected), "{said}");
    let (rc, status) = host.status_json();
    assert_eq!(rc, 1, "{status}");
    assert_eq!(status["state"], "dead", "{status}");
    assert_eq!(status["lsb_code"], 1, "{status}");
    assert_eq!(status["pid"], pid, "{status}");
    assert_eq!(status["release"], "r1", "{status}");
    let since = status["unsupervised_since"].as_str().expect("since");
    assert!(said.trim_end().ends_with(since), "{said} / {since}");
    assert!(humantime::parse_rfc3339(since).is_ok(), "{since}");

    // start stops the orphan first (the port is free again) and says so.
    let status = host.start_replacing(pid, "started: pid ");
    assert_eq!(status["state"], "running", "{status}");
    assert_ne!(status["pid"], pid);
}

#[test]
fn the_fleet_status_flags_a_dead_supervisor_and_deploy_replaces_the_orphan() {
    let project = Project::new();
    let out = project.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::common::text(&out));
    let run_dir = project.root().join("run/hello");
    let supervisor = supervisor_pid(&run_dir);
    let pid: i32 = std::fs::read_to_string(run_dir.join("hello.pid"))
        .expect("pidfile")
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("pid");
    kill9(supervisor);
    assert_eq!(project.served_version().as_deref(), Some("1.0.0"));

    let out = project.run(&["status", "local"]);
    let said = exited_saying(
        &out,
        1,
        &format!(
            "  ! dead: supervisor pid {supervisor} is gone; the service pid {pid} runs unsupervised since "
        ),
    );
    assert!(said.contains(", UNSUPERVISED\n"), "{said}");
    assert!(!said.contains("  ok\n"), "{said}");
    let (rc, result) = project.status_json();
    assert_eq!(rc, 1, "{result}");
    let flags = &result["hosts"][0]["flags"];
    assert!(
        flags.as_array().is_some_and(|f| f.iter().any(|f| f
            .as_str()
            .is_some_and(|f| f.starts_with("dead: supervisor pid")))),
        "{result}"
    );

    let out = project.deploy("1.0.1", &[]);
    exited_saying(
        &out,
        0,
        &format!("replaced an unsupervised service pid {pid}: terminated after SIGTERM in "),
    );
    assert!(!alive(pid));
    let (rc, result) = project.status_json();
    assert_eq!(rc, 0, "{result}");
    assert_eq!(project.served_version().as_deref(), Some("1.0.1"));
}

#[test]
fn starting_is_a_state_with_its_own_code_and_no_verdict_on_health() {
    let host = Host::new("slowstart");
    host.release(
        "r1",
        &Spec::hello(free_port(), &[("STARTUP_DELAY_MS", "4000")]),
    );
    let mut start = host.spawn_start();

    let mut last = Value::Null;
    let mut rc = -1;
    let seen = eventually(Duration::from_secs(20), || {
        host.remember();
        (rc, last) = host.status_json();
        last["state"] == "starting" && last["pid"].is_i64()
    });
    assert!(seen, "never starting: {last}\n{}", host.log());
    assert_eq!(rc, 3, "{last}");
    assert_eq!(last["lsb_code"], 3, "{last}");
    assert_eq!(last["healthy"], false, "{last}");
    let detail = last["detail"].as_str().expect("detail");
    let pid = last["pid"].as_i64().expect("pid");
    assert!(
        detail.starts_with(&format!(
            "starting: pid {pid}, release r1, in the health gate for "
        )),
        "{detail}"
    );
    assert!(!detail.contains("healthy"), "{detail}");

    // Once healthy: running, and started_at is the supervisor's own record,
    // to the millisecond.
    let done = start.0.wait().expect("start finishes");
    assert_eq!(done.code(), Some(0), "{}", host.log());
    let (rc, status) = host.status_json();
    assert_eq!(rc, 0, "{status}");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(host.run_dir().join("supervisor.json")).expect("state"),
    )
    .expect("state json");
    assert_eq!(status["started_at"], state["started_at"], "{status}");
    let at = status["started_at"].as_str().expect("started_at");
    assert!(
        at.len() == "2026-01-01T00:00:00.000Z".len() && at.ends_with('Z'),
        "{at}"
    );
}

#[test]
fn a_restart_in_its_health_gate_is_starting_and_says_why() {
    let host = Host::new("regate");
    let mut spec = Spec::hello(
        free_port(),
        &[("STARTUP_DELAY_MS", "2500"), ("CRASH_AFTER_S", "1")],
    );
    spec.extra = json!({"restart": {"initial_delay_ms": 100}});
    host.release("r1", &spec);
    host.started();
    let mut last = Value::Null;
    let mut rc = -1;
    let seen = eventually(Duration::from_secs(20), || {
        host.remember();
        (rc, last) = host.status_json();
        last["state"] == "starting" && last["restarts"] == 1 && last["pid"].is_i64()
    });
    assert!(seen, "never starting again: {last}\n{}", host.log());
    assert_eq!(rc, 3, "{last}");
    assert_eq!(last["healthy"], false, "{last}");
    let detail = last["detail"].as_str().expect("detail");
    assert!(
        detail.ends_with(", restart 1 after: the service exited with code 3"),
        "{detail}"
    );
}

#[test]
fn a_service_killed_by_sigkill_is_said_so_while_restarting() {
    let mut spec = Spec::hello(free_port(), &[]);
    spec.extra = json!({"restart": {"initial_delay_ms": 5_000}});
    let (host, pid) = Host::running("sigkilled", &spec);
    kill9(pid);
    let mut last = String::new();
    let said = eventually(Duration::from_secs(5), || {
        let out = host.run("status", false);
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        code(&out) == 3 && last.starts_with("restarting:")
    });
    assert!(said, "{last}");
    assert!(
        last.starts_with("restarting: the service was killed by SIGKILL; restart 1 due at "),
        "{last}"
    );
}

#[test]
fn the_fleet_status_of_a_starting_service_is_not_unhealthy() {
    let project = Project::new();
    let out = project.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::common::text(&out));
    let mut deploy = Helper(project.spawn_slow_deploy("1.0.1", 6_000));
    let mut last = String::new();
    let seen = eventually(Duration::from_secs(30), || {
        let out = project.run(&["status", "local"]);
        last = crate::common::text(&out);
        last.contains("  health:    starting: the health gate has not passed yet\n")
    });
    assert!(seen, "{last}");
    assert!(!last.contains("UNHEALTHY"), "{last}");
    assert!(!last.contains("unhealthy"), "{last}");
    assert!(!last.contains("not running: not running"), "{last}");
    assert!(!last.contains(": -\n"), "{last}");
    assert!(last.contains("  ! starting: "), "{last}");
    // Its output is small: the pipes it writes to do not fill up.
    let done = deploy.0.wait().expect("deploy finishes");
    assert_eq!(done.code(), Some(0));
    // Stopped: flagged once, in the service's own words.
    let out = Command::new(crate::common::shipjar_bin())
        .args(["service", "stop", "hello", "--root"])
        .arg(project.root())
        .output()
        .expect("stop");
    assert_eq!(out.status.code(), Some(0));
    let out = project.run(&["status", "local"]);
    let said = exited_saying(&out, 1, "  process:   not running\n");
    assert!(said.contains("  ! not running\n"), "{said}");
    assert!(!said.contains("not running: not running"), "{said}");
}

#[test]
fn a_killed_supervisor_whose_service_died_too_is_dead_and_start_begins_afresh() {
    let (host, pid) = Host::running("bothgone", &Spec::hello(free_port(), &[]));
    let supervisor = supervisor_pid(&host.run_dir());
    kill9(supervisor);
    kill9(pid);

    let out = host.run("status", false);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("dead: supervisor pid {supervisor} is gone; the service pid {pid} is gone too\n")
    );
    let out = host.start();
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), host.log());
    stdout_starting(&out, "started: pid ");
    assert_eq!(host.status_json().1["state"], "running");
}
