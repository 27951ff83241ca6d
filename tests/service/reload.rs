//! `service reload`: the configured signal, or a restart through the health
//! gate into the release `current` points to.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::exited_saying;
use crate::common::host::{Host, Spec, alive, code, eventually, free_port, text};

#[test]
fn reload_without_a_signal_restarts_through_the_gate_into_current() {
    let port = free_port();
    let (host, first) = Host::running("refresh", &Spec::hello(port, &[]));

    host.release("r2", &Spec::hello(port, &[]));
    let out = host.run("reload", true);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), host.log());
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    let how = report["how"].as_str().expect("how");
    assert!(
        how.starts_with("restarted: pid ") && how.contains(" from release r2, healthy after "),
        "{how}"
    );
    let second = host.service_pid().expect("pid");
    assert_ne!(first, second);
    assert!(!alive(first));
    let (rc, status) = host.status_json();
    assert_eq!(rc, 0, "{status}");
    assert_eq!(status["release"], "r2");
    assert_eq!(status["restarts"], 0, "a reload is not a crash restart");
    let log = host.log();
    let stopped = log
        .find("[shipjar] stopped: exited 143 after SIGTERM")
        .expect("graceful stop");
    let reloaded = log
        .find("[shipjar] reload: restarted")
        .expect("reload event");
    assert!(stopped < reloaded, "{log}");
}

#[test]
fn reload_with_a_signal_passes_it_to_the_service() {
    let host = Host::new("hupped");
    let mut spec = Spec::shell(
        "trap 'echo reloading config' HUP; while :; do sleep 0.1; done",
        json!({"kind": "none"}),
        5_000,
    );
    spec.extra = json!({"reload": {"signal": "SIGHUP"}});
    host.release("r1", &spec);
    let pid = host.started();

    let out = host.run("reload", false);
    exited_saying(&out, 0, &format!("reloaded: sent SIGHUP to pid {pid}"));
    assert!(
        eventually(Duration::from_secs(5), || host
            .log()
            .contains("\nreloading config\n")),
        "{}",
        host.log()
    );
    assert_eq!(
        host.service_pid(),
        Some(pid),
        "a signal reload keeps the process"
    );
}

#[test]
fn reload_of_a_stopped_service_fails() {
    let host = Host::new("asleep");
    host.release("r1", &Spec::hello(free_port(), &[]));
    let out = host.run("reload", false);
    exited_saying(&out, 1, "not running: nothing to reload");
}
