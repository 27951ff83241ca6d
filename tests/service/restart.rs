//! Crash restarts: back-off, the burst limit and the `failed` state.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::common::host::{Host, Spec, alive, code, eventually, free_port, text};

/// A restart policy with short delays, for tests.
fn policy(initial_ms: u64, max_failures: u32, reset_after_ms: u64) -> Value {
    json!({"restart": {
        "enabled": true,
        "initial_delay_ms": initial_ms,
        "max_delay_ms": 10_000,
        "factor": 2.0,
        "reset_after_ms": reset_after_ms,
        "max_failures": max_failures,
        "window_ms": 300_000
    }})
}

/// Seconds between two log timestamps.
fn between(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

#[test]
fn crash_loop_backs_off_and_ends_failed() {
    let host = Host::new("loop");
    // Two seconds: a loaded machine may take a while to notice it healthy.
    let mut spec = Spec::hello(free_port(), &[("CRASH_AFTER_S", "2")]);
    spec.extra = policy(300, 4, 60_000);
    host.release("r1", &spec);
    let out = host.start();
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), host.log());

    let mut last = Value::Null;
    let failed = eventually(Duration::from_secs(60), || {
        host.remember();
        let (_, status) = host.status_json();
        last = status;
        last["state"] == "failed"
    });
    assert!(failed, "never failed: {last}\n{}", host.log());
    let (rc, status) = host.status_json();
    assert_eq!(rc, 1, "{status}");
    assert_eq!(status["lsb_code"], 1);
    assert_eq!(status["last_exit_code"], 3, "{status}");
    assert_eq!(status["restarts"], 3, "{status}");
    let reason = status["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("4 failures within 5m; the last: exited with code 3"),
        "{reason}"
    );
    assert!(
        status["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("failed: 4 failures")),
        "{status}"
    );

    // Exactly four runs, each restart later than the one before by the back-off.
    let events = host.timed_events();
    let starts: Vec<SystemTime> = events
        .iter()
        .filter(|(_, e)| e.starts_with("started pid"))
        .map(|(t, _)| *t)
        .collect();
    let exits: Vec<SystemTime> = events
        .iter()
        .filter(|(_, e)| e == "exited with code 3")
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(starts.len(), 4, "{}", host.log());
    assert_eq!(exits.len(), 4, "{}", host.log());
    for (i, delay_ms) in [300u64, 600, 1_200].into_iter().enumerate() {
        let gap = between(exits[i], starts[i + 1]);
        let delay = Duration::from_millis(delay_ms);
        assert!(
            gap >= delay && gap < delay + Duration::from_secs(2),
            "restart {} came {gap:?} after the crash, expected {delay:?}\n{}",
            i + 1,
            host.log()
        );
    }
    let said: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
    for line in [
        "restarting in 300ms (restart 1)",
        "restarting in 600ms (restart 2)",
        "restarting in 1s 200ms (restart 3)",
    ] {
        assert!(said.contains(&line), "no `{line}` in {said:?}");
    }
    assert!(
        said.iter().any(|e| e.starts_with("giving up: 4 failures")),
        "{said:?}"
    );

    // Given up means given up: nothing starts any more.
    std::thread::sleep(Duration::from_secs(2));
    let starts_later = host
        .events()
        .iter()
        .filter(|e| e.starts_with("started pid"))
        .count();
    assert_eq!(starts_later, 4);

    // stop clears the failed state; start begins afresh.
    let out = host.run("stop", false);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(code(&host.run("status", false)), 3);
}

#[test]
fn crash_after_healthy_uptime_restarts_and_is_healthy_again() {
    let host = Host::new("phoenix");
    let port = free_port();
    let mut spec = Spec::hello(port, &[("CRASH_AFTER_S", "2")]);
    // Healthy for 2 s counts as a good run: the back-off starts over each time.
    spec.extra = policy(200, 2, 1_000);
    host.release("r1", &spec);
    let out = host.start();
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), host.log());
    let first = host.service_pid().expect("pid");

    let mut last = Value::Null;
    let back = eventually(Duration::from_secs(30), || {
        host.remember();
        let (rc, status) = host.status_json();
        last = status;
        rc == 0 && last["restarts"].as_u64() >= Some(2) && last["healthy"] == true
    });
    assert!(
        back,
        "not healthy again after two crashes: {last}\n{}",
        host.log()
    );
    assert_ne!(last["pid"], first);
    assert_eq!(last["last_exit_code"], 3, "{last}");
    assert!(
        last["detail"]
            .as_str()
            .is_some_and(|d| d.contains("restarted 2 times after crashes")),
        "{last}"
    );
    // Two failures would have given up, had the healthy runs not reset the count.
    assert!(
        !host.events().iter().any(|e| e.starts_with("giving up")),
        "{}",
        host.log()
    );
}

#[test]
fn jvm_killed_behind_the_supervisors_back_is_restarted() {
    let host = Host::new("killed");
    let port = free_port();
    let mut spec = Spec::hello(port, &[]);
    spec.extra = policy(100, 3, 60_000);
    host.release("r1", &spec);
    let out = host.start();
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), host.log());
    let pid = host.service_pid().expect("pid");

    // SAFETY: kill(2) on the JVM this test started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let mut last = Value::Null;
    let back = eventually(Duration::from_secs(30), || {
        host.remember();
        let (rc, status) = host.status_json();
        last = status;
        rc == 0 && last["pid"] != pid && last["healthy"] == true
    });
    assert!(back, "not restarted: {last}\n{}", host.log());
    assert!(!alive(pid));
    assert_eq!(last["restarts"], 1, "{last}");
    assert_eq!(last["last_exit_signal"], "SIGKILL", "{last}");
    assert!(
        host.events().contains(&"killed by SIGKILL".to_string()),
        "{}",
        host.log()
    );
    let (status, body) = crate::common::http_get(port, "/health").expect("health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}
