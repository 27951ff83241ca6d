//! Graceful stop: the hook, SIGTERM, a thread dump at half the timeout,
//! SIGKILL at the timeout, and a report of how the service ended.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::host::{Host, Spec, alive, code, text};

/// Position of the first log line containing `needle`.
fn line_of(log: &str, needle: &str) -> usize {
    log.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}` in the log:\n{log}"))
}

fn stop_json(host: &Host) -> Value {
    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("stop --json")
}

#[test]
fn a_jvm_stops_cleanly_with_143() {
    let (host, pid) = Host::running("polite", &Spec::hello(crate::common::free_port(), &[]));
    let report = stop_json(&host);
    assert_eq!(report["how"], "exited 143 after SIGTERM", "{report}");
    assert_eq!(report["exit_code"], 143);
    assert_eq!(report["clean"], true);
    assert_eq!(report["thread_dump"], false);
    assert!(report["took_ms"].as_u64() < Some(5_000), "{report}");
    assert!(!alive(pid));
    let out = host.run("stop", true);
    let again: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(again["was_running"], false);
}

#[test]
fn a_jvm_ignoring_sigterm_dumps_its_threads_then_is_killed() {
    let mut spec = Spec::hello(crate::common::free_port(), &[("IGNORE_SIGTERM", "1")]);
    spec.stop_timeout_ms = 2_000;
    spec.extra = json!({"stop": {"timeout_ms": 2_000, "thread_dump": true}});
    let (host, pid) = Host::running("deaf", &spec);

    let began = Instant::now();
    let report = stop_json(&host);
    let took = began.elapsed();
    assert_eq!(
        report["how"], "killed by SIGKILL after the 2s stop timeout",
        "{report}"
    );
    assert_eq!(report["signal"], "SIGKILL");
    assert_eq!(report["clean"], false);
    assert_eq!(report["thread_dump"], true);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(7),
        "took {took:?}"
    );
    assert!(!alive(pid));

    // The dump lands in the log between the SIGQUIT and the SIGKILL.
    let log = host.log();
    let quit = line_of(
        &log,
        "[shipjar] still running 1s after SIGTERM: SIGQUIT for a thread dump",
    );
    let dump = line_of(&log, "Full thread dump");
    let kill = line_of(
        &log,
        "[shipjar] still running 2s after SIGTERM: sending SIGKILL",
    );
    assert!(quit < dump && dump < kill, "out of order:\n{log}");
    assert!(
        log.contains("\"hello-http-"),
        "no service thread in the dump"
    );
}

#[test]
fn the_stop_hook_runs_before_sigterm() {
    let host = Host::new("drained");
    let mut spec = Spec::hello(crate::common::free_port(), &[]);
    spec.extra = json!({"stop": {
        "timeout_ms": 5_000,
        "hook": {"kind": "command", "argv": ["sh", "-c", "echo draining $SHIPJAR_SERVICE from $PWD; sleep 0.2"]},
        "hook_timeout_ms": 5_000
    }});
    host.release("r1", &spec);
    host.started();
    let report = stop_json(&host);
    assert_eq!(report["clean"], true, "{report}");
    let log = host.log();
    let hook = line_of(&log, "[shipjar] stop hook: sh -c echo draining");
    let said = line_of(&log, "draining drained from ");
    let done = line_of(&log, "[shipjar] stop hook exited with code 0 after");
    let term = line_of(&log, "[shipjar] stopping (SIGTERM)");
    assert!(
        hook < said && said < done && done < term,
        "out of order:\n{log}"
    );
}

#[test]
fn a_hung_stop_hook_is_killed_and_the_stop_goes_on() {
    let host = Host::new("stuckhook");
    // Accepts connections (the kernel does, into the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let mut spec = Spec::hello(crate::common::free_port(), &[]);
    spec.extra = json!({"stop": {
        "timeout_ms": 5_000,
        "hook": {"kind": "http", "url": format!("http://127.0.0.1:{port}/drain")},
        "hook_timeout_ms": 500
    }});
    host.release("r1", &spec);
    host.started();
    let began = Instant::now();
    let report = stop_json(&host);
    assert!(began.elapsed() < Duration::from_secs(15), "{report}");
    assert_eq!(report["was_running"], true);
    let log = host.log();
    let hook = line_of(&log, "[shipjar] stop hook: POST http://127.0.0.1:");
    let failed = line_of(&log, "[shipjar] stop hook failed:");
    let term = line_of(&log, "[shipjar] stopping (SIGTERM)");
    assert!(hook < failed && failed < term, "out of order:\n{log}");
    assert_eq!(report["clean"], true, "{report}");
    drop(silent);
}
