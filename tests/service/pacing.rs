//! The start gate's probes: sparing while the JVM starts, and a timed-out
//! start says what the last probe got and where the service listens instead.

use serde_json::json;

use crate::common::exited_saying;
use crate::common::host::{Host, Spec, free_port};

/// The requests hello logged (ACCESS_LOG=1) for `path`.
fn requests(log: &str, path: &str) -> usize {
    let needle = format!("GET {path} -> ");
    log.lines().filter(|l| l.contains(&needle)).count()
}

#[test]
fn a_never_healthy_start_is_probed_sparingly() {
    let host = Host::new("patient");
    let mut spec = Spec::hello(free_port(), &[("HANG_ON_START", "1"), ("ACCESS_LOG", "1")]);
    spec.start_timeout_ms = 20_000;
    host.release("r1", &spec);
    let out = host.start();
    exited_saying(
        &out,
        1,
        "not healthy after 20s: the last health check got HTTP 503: starting",
    );
    let log = host.log();
    let probes = requests(&log, "/health");
    eprintln!("{probes} probes in a 20 s start");
    // 25 ms apart for a second once the port listens, then backing off to
    // 500 ms: about 85 in 20 s (the old gate sent one every 25 ms: ~800).
    assert!((20..=90).contains(&probes), "{probes} probes\n{log}");
}

#[test]
fn a_start_that_listens_on_another_port_says_so() {
    let host = Host::new("elsewhere");
    let (listens, asked) = (free_port(), free_port());
    let mut spec = Spec::hello(listens, &[]);
    spec.health = json!({"kind": "http", "url": format!("http://127.0.0.1:{asked}/health")});
    spec.start_timeout_ms = 5_000;
    host.release("r1", &spec);
    let out = host.start();
    exited_saying(
        &out,
        1,
        &format!(
            "not healthy after 5s: the last health check got connection refused; \
             the service listens on {listens}, the health check asks {asked}"
        ),
    );
}

#[test]
fn a_start_that_never_listens_names_the_port() {
    let host = Host::new("deaf");
    let port = free_port();
    host.release("r1", &Spec::shell_on_port("exec sleep 600", port, 3_000));
    let out = host.start();
    exited_saying(
        &out,
        1,
        &format!(
            "not healthy after 3s: the last health check got connection refused; nothing listens on port {port}"
        ),
    );
}
