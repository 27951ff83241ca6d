//! A supervisor started by a shipjar binary at another path (issue item 5):
//! `service status` run by the installed binary must call it running, and
//! `service stop` must stop it, not only its JVM.

use std::time::Duration;

use crate::{HOST, ROOT_LIMIT, Suite, text, wait_until};

pub fn other_binary(s: &mut Suite) {
    s.counts.attacks += 1;
    let out = s.fleet.sh(
        HOST,
        "mkdir -p /opt/other && cp /usr/local/bin/shipjar /opt/other/shipjar",
    );
    assert!(out.status.success(), "copy shipjar: {}", text(&out));
    let _ = s.root(&["shipjar", "service", "stop", "hello"], ROOT_LIMIT);
    let out = s.root(
        &["/opt/other/shipjar", "service", "start", "hello"],
        ROOT_LIMIT,
    );
    if !out.status.success() {
        s.fail(format!(
            "`service start` by a copy of shipjar failed: {}",
            text(&out)
        ));
        return;
    }
    s.check_truth("a supervisor started from /opt/other/shipjar");
    let out = s.root(
        &["shipjar", "service", "stop", "hello"],
        Duration::from_secs(30),
    );
    let stopped = wait_until(Duration::from_secs(5), || {
        s.supervisor_pids().is_empty() && s.pids_of("java").is_empty()
    });
    if !stopped {
        s.counts.false_reports += u32::from(out.status.success());
        s.fail(format!(
            "`service stop` left {} supervisor(s) and {} JVM(s) of a supervisor started from \
             another path: {}",
            s.supervisor_pids().len(),
            s.pids_of("java").len(),
            text(&out)
        ));
    }
    // The copy's supervisor and its JVM, which the old code cannot stop: by pid.
    let strays: Vec<i32> = s
        .supervisor_pids()
        .into_iter()
        .chain(s.pids_of("java"))
        .collect();
    for pid in strays {
        let _ = s.fleet.exec(HOST, &["kill", "-9", &pid.to_string()]);
    }
    let _ = s.fleet.exec(HOST, &["rm", "-rf", "/opt/other"]);
}
