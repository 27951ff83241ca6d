//! Every `service` action prints one report: with `--json` one JSON object
//! that matches what runs, and with stdout closed (`| head -0`) it still
//! ends with its own exit code, never a panic.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::host::{Host, Spec, alive, code, text};

/// The one JSON object an action printed.
fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object: {e}\n{}", text(out)))
}

#[test]
fn every_action_of_a_plain_service_prints_a_json_report_that_matches_what_runs() {
    let host = Host::new("reported");
    host.release("r1", &Spec::sleeper());

    let out = host.run("start", true);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), host.log());
    let started = report(&out);
    let pid = started["pid"].as_i64().expect("pid") as i32;
    assert_eq!(host.service_pid(), Some(pid), "{started}");
    assert!(alive(pid), "{started}");
    assert_eq!(started["release"], "r1", "{started}");
    assert_eq!(started["already_running"], false, "{started}");

    let (rc, status) = host.status_json();
    assert_eq!(rc, 0, "{status}");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["pid"], pid, "{status}");

    let out = host.run("restart", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let restarted = report(&out);
    let second = restarted["pid"].as_i64().expect("pid") as i32;
    assert_ne!(second, pid, "{restarted}");
    assert!(!alive(pid), "the first run is gone");
    assert_eq!(host.service_pid(), Some(second), "{restarted}");

    let out = host.run("reload", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let reloaded = report(&out);
    let third = host.service_pid().expect("pid");
    assert_ne!(third, second);
    let how = reloaded["how"].as_str().expect("how");
    assert!(
        how.starts_with(&format!("restarted: pid {third} from release r1")),
        "{reloaded}"
    );
    assert!(reloaded["took_ms"].is_u64(), "{reloaded}");

    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let stopped = report(&out);
    assert_eq!(stopped["was_running"], true, "{stopped}");
    assert!(!alive(third), "{stopped}");
    let (rc, status) = host.status_json();
    assert_eq!(rc, 3, "{status}");
    assert_eq!(status["state"], "stopped", "{status}");
    assert_eq!(status["pid"], Value::Null, "{status}");

    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let again = report(&out);
    assert_eq!(again["was_running"], false, "{again}");
    assert_eq!(again["how"], "not running", "{again}");

    let out = host.run("install-initscript", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let wrote = report(&out);
    let script = host.root().join("etc/init.d/reported");
    assert_eq!(wrote["wrote"], script.to_string_lossy().as_ref(), "{wrote}");
    assert!(script.is_file(), "{wrote}");
}

/// Runs `service VERB` with its stdout a pipe nobody reads any more; its
/// exit code and stderr.
fn with_stdout_closed(host: &Host, verb: &str, json: bool) -> (i32, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut cmd = host.command(verb, json);
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn shipjar");
    // The command holds the only writer now: no reader, no writer here.
    drop(cmd);
    let until = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("service {verb} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    host.remember();
    (
        code(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_action_with_its_stdout_closed_ends_with_its_own_code_not_a_panic() {
    let host = Host::new("headless");
    host.release("r1", &Spec::sleeper());
    for (verb, json, expected) in [
        ("start", false, 0),
        ("status", false, 0),
        ("status", true, 0),
        ("restart", false, 0),
        ("reload", true, 0),
        ("stop", false, 0),
        ("status", false, 3),
        ("stop", true, 0),
    ] {
        let (rc, stderr) = with_stdout_closed(&host, verb, json);
        assert!(!stderr.contains("internal error"), "{verb}: {stderr}");
        assert_eq!(rc, expected, "{verb} (json {json}): {stderr}");
    }
}
