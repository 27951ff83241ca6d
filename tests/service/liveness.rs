//! Liveness: once healthy, the supervisor checks the hello JVM every
//! `[health] interval`; `failures` failed checks in a row (an HTTP 500, a
//! hung JVM) restart it through the crash path, a single failure does not.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::common::host::{Host, Spec, alive, code, eventually, free_port, text};

/// Check interval in these tests.
const INTERVAL_MS: u64 = 1_000;
/// Failed checks in a row before a restart.
const FAILURES: u64 = 3;

/// hello on a free port with `knobs`, checked every second, restarted after
/// three failures with a short back-off.
fn spec(knobs: &[(&str, &str)]) -> Spec {
    let mut spec = Spec::hello(free_port(), knobs);
    spec.extra = json!({
        "health": {
            "check": spec.health,
            "start_timeout_ms": spec.start_timeout_ms,
            "interval_ms": INTERVAL_MS,
            "failures": FAILURES,
            "probe_timeout_ms": 2_000
        },
        "restart": {
            "enabled": true,
            "initial_delay_ms": 200,
            "max_delay_ms": 10_000,
            "factor": 2.0,
            "reset_after_ms": 60_000,
            "max_failures": 5,
            "window_ms": 300_000
        }
    });
    spec
}

/// The time of the first event starting with `prefix`.
fn when(host: &Host, prefix: &str) -> Option<SystemTime> {
    host.timed_events()
        .into_iter()
        .find(|(_, e)| e.starts_with(prefix))
        .map(|(t, _)| t)
}

/// How many events start with `prefix`.
fn count(host: &Host, prefix: &str) -> usize {
    host.events()
        .iter()
        .filter(|e| e.starts_with(prefix))
        .count()
}

#[test]
fn a_service_answering_500_is_restarted() {
    let (host, first_pid) = Host::running("sickly", &spec(&[("UNHEALTHY_AFTER_S", "2")]));

    // While failing, `status` says since when and what the check got.
    let mut last = Value::Null;
    let seen = eventually(Duration::from_secs(15), || {
        let (_, status) = host.status_json();
        last = status;
        last["unhealthy_since"].is_string()
    });
    assert!(seen, "never unhealthy in status: {last}\n{}", host.log());
    assert!(
        last["last_probe"]
            .as_str()
            .is_some_and(|p| p.starts_with("HTTP 500: unhealthy")),
        "{last}"
    );

    let restarted = eventually(Duration::from_secs(30), || {
        host.remember();
        count(&host, "healthy after") >= 2
    });
    assert!(restarted, "never restarted:\n{}", host.log());
    let events = host.events();
    for n in 1..=FAILURES {
        assert!(
            events.iter().any(|e| e.starts_with(&format!(
                "health check failed ({n}/{FAILURES}): HTTP 500: unhealthy (UNHEALTHY_AFTER_S=2)"
            ))),
            "failure {n} not logged:\n{}",
            host.log()
        );
    }
    assert!(
        events.iter().any(|e| e
            .starts_with("unhealthy: 3 health checks failed in a row, the last: HTTP 500")
            && e.ends_with("; restarting")),
        "{}",
        host.log()
    );
    assert_ne!(
        host.service_pid(),
        Some(first_pid),
        "same pid after a restart"
    );
    assert!(!alive(first_pid), "the unhealthy JVM is still alive");

    // Found within interval × (failures + 1) of hello turning unhealthy
    // (2 s after it became healthy); a second of slack for a loaded machine.
    let healthy = when(&host, "healthy after").expect("healthy");
    let given_up = when(&host, "unhealthy: ").expect("unhealthy event");
    let took = given_up
        .duration_since(healthy + Duration::from_secs(2))
        .unwrap_or_default();
    let bound = Duration::from_millis(INTERVAL_MS * (FAILURES + 1) + 1_000);
    assert!(took <= bound, "{took:?} > {bound:?}\n{}", host.log());

    // The restart is counted like a crash's, and says why.
    let (_, status) = host.status_json();
    assert!(status["restarts"].as_u64() >= Some(1), "{status}");
}

#[test]
fn a_hung_jvm_is_killed_and_restarted() {
    let host = Host::new("hung");
    host.release("r1", &spec(&[]));
    let out = host.start();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let pid = host.service_pid().expect("pid");
    // SAFETY: kill(2) on the JVM this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);

    let restarted = eventually(Duration::from_secs(40), || {
        host.remember();
        count(&host, "healthy after") >= 2
    });
    assert!(restarted, "never restarted:\n{}", host.log());
    assert!(
        host.events()
            .iter()
            .any(|e| e == "health check failed (1/3): timed out after 1s"),
        "{}",
        host.log()
    );
    // Continued after SIGTERM, it shut down gracefully.
    assert!(!alive(pid), "the stopped JVM is still alive");
    assert!(
        host.events()
            .iter()
            .any(|e| e.starts_with("stopped: exited 143 after SIGTERM")),
        "{}",
        host.log()
    );
    let new_pid = host.service_pid().expect("new pid");
    assert_ne!(new_pid, pid);
    let (rc, status) = host.status_json();
    assert_eq!(rc, 0, "{status}");
    assert_eq!(status["healthy"], true, "{status}");
}

#[test]
fn a_single_failed_check_does_not_restart() {
    let host = Host::new("blip");
    // One /health answer is a 500, two seconds after start-up; then healthy again.
    host.release(
        "r1",
        &spec(&[("UNHEALTHY_AFTER_S", "2"), ("UNHEALTHY_CHECKS", "1")]),
    );
    let out = host.start();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let pid = host.service_pid().expect("pid");
    let recovered = eventually(Duration::from_secs(15), || {
        count(&host, "health check passed again after 1 failed check") == 1
    });
    assert!(recovered, "{}", host.log());
    assert_eq!(count(&host, "health check failed (1/3): HTTP 500"), 1);
    // A few more checks pass, and nothing restarts.
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
    assert_eq!(count(&host, "health check failed"), 1, "{}", host.log());
    assert_eq!(count(&host, "started pid"), 1, "{}", host.log());
    assert_eq!(host.service_pid(), Some(pid));
    let (rc, status) = host.status_json();
    assert_eq!(rc, 0, "{status}");
    assert!(status["unhealthy_since"].is_null(), "{status}");
    assert!(status["last_probe"].is_null(), "{status}");
}
