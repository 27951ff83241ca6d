//! Faults in the processes: concurrent deploys, a SIGKILLed supervisor, a
//! SIGSTOPped JVM, a stale pidfile naming an unrelated live process.

use std::time::Duration;

use crate::{Suite, check, text};

/// The pid in the host's pidfile.
fn service_pid(s: &Suite, host: &str) -> Option<i32> {
    let out = s
        .fleet
        .exec(host, &["head", "-n", "1", "/run/hello/hello.pid"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Java processes running in the host.
fn java_pids(s: &Suite, host: &str) -> Vec<i32> {
    check::host_procs(s, host)
        .into_iter()
        .filter(|(_, c)| c.split(' ').next().is_some_and(|a| a.ends_with("java")))
        // A class-data dump beside the service (`cds`, on by default) is not a service.
        .filter(|(_, c)| !c.contains(" -Xshare:dump "))
        .map(|(p, _)| p)
        .collect()
}

fn parent_of(s: &Suite, host: &str, pid: i32) -> Option<i32> {
    let out = s.fleet.exec(host, &["cat", &format!("/proc/{pid}/status")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// After a fault and a deploy, exactly one JVM may run on the host.
fn one_jvm(s: &mut Suite, host: &str, what: &str) {
    let jvms = java_pids(s, host);
    if jvms.len() != 1 {
        s.counts.leaks += jvms.len().saturating_sub(1) as u32;
        s.fail(format!("{what}: {host} runs {} JVMs: {jvms:?}", jvms.len()));
    }
}

pub fn concurrent_deploys(s: &mut Suite) {
    let (a, b) = (s.next_version(), s.next_version());
    let mut first = Suite::deploy_args("fleet", &a, None);
    first.extend(["--env".into(), "STARTUP_DELAY_MS=500".into()]);
    let second = Suite::deploy_args("all", &b, None);
    // Started together, or the second a random moment after the first.
    let gap = Duration::from_millis(s.rng.below(1500));
    let one = s.spawn(&first);
    std::thread::sleep(gap);
    let two = s.spawn(&second);
    s.counts.faults += 1;
    let one = s.finish(one, Duration::from_secs(120));
    let two = s.finish(two, Duration::from_secs(120));
    let codes = (one.status.code(), two.status.code());
    eprintln!(
        "faults: concurrent deploys {} ms apart: exits {codes:?}",
        gap.as_millis()
    );
    if codes == (Some(0), Some(0)) {
        s.fail(format!(
            "two deploys both succeeded at once:\n{}\n{}",
            text(&one),
            text(&two)
        ));
    }
    for out in [&one, &two] {
        if out.status.code() != Some(0) && !text(out).contains("lock") {
            s.fail(format!(
                "a deploy that lost the race must name the lock: {}",
                text(out)
            ));
        }
    }
    check::settle(s);
    check::invariant(s, "concurrent deploys", None, true);
    let winner = match codes {
        (Some(0), _) => Some(a),
        (_, Some(0)) => Some(b),
        _ => None,
    };
    if let Some(v) = winner {
        for host in s.fleet.hosts() {
            let served = check::real(s, &host).served;
            if served.as_deref() != Some(v.as_str()) {
                s.fail(format!(
                    "{host} serves {served:?}, the successful deploy was {v}"
                ));
            }
        }
    }
}

pub fn supervisor_killed(s: &mut Suite) {
    let host = "app1";
    let pid = service_pid(s, host).expect("service pid");
    let sup = parent_of(s, host, pid).expect("supervisor pid");
    let kill = s.fleet.exec(host, &["kill", "-KILL", &sup.to_string()]);
    assert!(
        kill.status.success(),
        "kill the supervisor: {}",
        text(&kill)
    );
    s.counts.faults += 1;
    std::thread::sleep(Duration::from_millis(500));
    let survives = s.proc_start(host, pid).is_some();
    eprintln!(
        "faults: supervisor {sup} SIGKILLed on {host}; the JVM {pid} {}",
        if survives {
            "keeps running"
        } else {
            "died too"
        }
    );
    // `status` must tell the truth about what runs now.
    check::invariant(s, "supervisor killed", None, false);
    let status = s.run(&["--json", "status", "all"]);
    let row = crate::host_field(&crate::last_json(&status), host).clone();
    // The service still answers, but nothing supervises it: a `status`
    // that exits 0, or does not call the host's service dead, is a false report.
    let state = row["status"]["service"]["state"].as_str().unwrap_or("?");
    if status.status.code() == Some(0) || state != "dead" {
        s.counts.hosts_broken += 1;
        s.fail(format!(
            "status exits {:?} and says {host}'s service is {state} although its supervisor {sup} is dead: {}",
            status.status.code(),
            row["status"]["service"]["detail"]
        ));
    }
    s.deploy_next("after the supervisor was killed");
    one_jvm(s, host, "supervisor killed, then a deploy");
    if survives && s.proc_start(host, pid).is_some() {
        s.fail(format!(
            "the orphaned JVM {pid} still runs on {host} after the next deploy"
        ));
        let _ = s.fleet.exec(host, &["kill", "-KILL", &pid.to_string()]);
    }
}

pub fn jvm_stopped(s: &mut Suite) {
    let host = "app2";
    let pid = service_pid(s, host).expect("service pid");
    let stop = s.fleet.exec(host, &["kill", "-STOP", &pid.to_string()]);
    assert!(stop.status.success(), "SIGSTOP: {}", text(&stop));
    s.counts.faults += 1;
    // `status` must see a hung service as unhealthy.
    check::invariant(s, "JVM stopped", None, false);
    s.deploy_next("over a stopped JVM");
    if s.proc_start(host, pid).is_some() {
        s.fail(format!(
            "the stopped JVM {pid} still exists on {host} after the deploy"
        ));
        s.counts.leaks += 1;
        let _ = s.fleet.exec(host, &["kill", "-CONT", &pid.to_string()]);
        let _ = s.fleet.exec(host, &["kill", "-KILL", &pid.to_string()]);
    }
    one_jvm(s, host, "JVM stopped, then a deploy");
}

pub fn stale_pidfile(s: &mut Suite) {
    let host = "app3";
    let service = "/usr/local/bin/shipjar";
    let sentinel = s
        .sentinels
        .iter()
        .find(|x| x.host == host)
        .map(|x| (x.pid, x.start.clone()))
        .expect("sentinel");
    let stop = s.fleet.exec(host, &[service, "service", "stop", "hello"]);
    assert!(stop.status.success(), "service stop: {}", text(&stop));
    let wrong_start: u64 = sentinel.1.parse::<u64>().unwrap_or(1) + 12345;
    for (what, content) in [
        (
            "pid and another start time",
            format!("{}\n{wrong_start}\n", sentinel.0),
        ),
        ("a pid alone", format!("{}\n", sentinel.0)),
    ] {
        let write = s.fleet.exec(
            host,
            &[
                "sh",
                "-c",
                "mkdir -p /run/hello && printf %s \"$1\" > /run/hello/hello.pid",
                "sh",
                &content,
            ],
        );
        assert!(write.status.success(), "{}", text(&write));
        s.counts.faults += 1;
        let status = s.fleet.exec(host, &[service, "service", "status", "hello"]);
        let code = status.status.code();
        eprintln!(
            "faults: stale pidfile ({what}) naming sleep {}: service status exits {code:?}",
            sentinel.0
        );
        if code == Some(0) {
            s.fail(format!(
                "service status says running for a pidfile ({what}) naming an unrelated sleep: {}",
                text(&status)
            ));
        }
        let stop = s.fleet.exec(host, &[service, "service", "stop", "hello"]);
        s.check_sentinels();
        let start = s.fleet.exec(host, &["/etc/init.d/hello", "start"]);
        if !start.status.success() {
            s.fail(format!(
                "start with a stale pidfile ({what}) failed: {}\n(stop said: {})",
                text(&start),
                text(&stop)
            ));
        }
        check::invariant(s, &format!("stale pidfile ({what})"), None, true);
        s.check_sentinels();
        let stop = s.fleet.exec(host, &[service, "service", "stop", "hello"]);
        assert!(stop.status.success(), "service stop: {}", text(&stop));
    }
    let start = s.fleet.exec(host, &["/etc/init.d/hello", "start"]);
    assert!(start.status.success(), "{}", text(&start));
}
