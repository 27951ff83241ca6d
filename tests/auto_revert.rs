//! `[restart] auto_revert` on the `local` stage with examples/hello and its
//! fault knobs: a release that deploys fine and then crash-loops is replaced
//! by the previous healthy one once its supervisor gives up, exactly once;
//! the records and `status` say so; outside `revert_window`, or without
//! `auto_revert`, the supervisor ends `failed` on the bad release as before.

mod common;
use common::{exited_saying, ok};

use std::time::{Duration, Instant};

use common::{Project, shipjar_bin, text};

/// The example's config with a back-off that gives up in seconds: two
/// failures, 200 ms apart.
fn project(auto_revert: bool, revert_window: &str) -> Project {
    let restart = format!(
        "\n[restart]\ninitial_delay = \"200ms\"\nmax_failures = 2\nwindow = \"2m\"\n\
         auto_revert = {auto_revert}\nrevert_window = \"{revert_window}\"\n"
    );
    Project::with_config(move |c| c + &restart)
}

/// A [`project`] where 1.0.0 was deployed, then 2.0.0, which crashes 2 s
/// after each start: the project, and the releases of 1.0.0 and 2.0.0.
fn on_a_crash_looping_release(auto_revert: bool, revert_window: &str) -> (Project, String, String) {
    let p = project(auto_revert, revert_window);
    ok(p.deploy("1.0.0", &[]));
    let good = p.current().expect("current");
    ok(p.deploy("2.0.0", &["--env", "CRASH_AFTER_S=2"]));
    let bad = p.current().expect("current");
    (p, good, bad)
}

/// `shipjar service status hello`: its exit code and output.
fn service_status(p: &Project) -> (i32, String) {
    let out = std::process::Command::new(shipjar_bin())
        .args(["service", "status", "hello", "--root"])
        .arg(p.root())
        .output()
        .expect("run service status");
    (out.status.code().unwrap_or(-1), text(&out))
}

/// Waits (at most `within`) until `service status` exits `code` and says `words`.
fn wait_for_status(p: &Project, code: i32, words: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (got, said) = service_status(p);
        if got == code && said.contains(words) {
            return said;
        }
        assert!(
            Instant::now() < deadline,
            "no status {code} with {words:?} in {within:?}; the last:\n{said}\nrevisions:\n{}",
            p.revisions().join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The service log, for failure messages and its events.
fn service_log(p: &Project) -> String {
    std::fs::read_to_string(p.root().join("var/log/hello/console.log")).unwrap_or_default()
}

fn auto_revert_lines(p: &Project) -> Vec<String> {
    p.revisions()
        .into_iter()
        .filter(|l| l.contains("\tauto-revert\t"))
        .collect()
}

#[test]
fn a_release_crash_looping_after_its_deploy_is_replaced_by_the_previous_one_once() {
    let (p, good, bad) = on_a_crash_looping_release(true, "15m");
    assert_ne!(bad, good);

    // Two crashes ~3 s apart, then one start of 1.0.0: well within 40 s.
    let said = wait_for_status(&p, 0, "auto-reverted at ", Duration::from_secs(40));
    assert!(
        said.contains(&format!("from release {bad} (version 2.0.0)")),
        "{said}"
    );
    assert!(said.contains(&format!("release {good}")), "{said}");
    assert_eq!(p.current().as_deref(), Some(good.as_str()));
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));

    let lines = auto_revert_lines(&p);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains(&format!(
            "\t{bad}\t2.0.0\tsupervisor\tfailed\tauto-reverted: given up on "
        )),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("2 failures within 2m"), "{}", lines[0]);
    assert!(
        lines[1].contains(&format!(
            "\t{good}\t1.0.0\tsupervisor\tsuccess\tauto-reverted: from release {bad}"
        )),
        "{}",
        lines[1]
    );
    let log = service_log(&p);
    assert!(log.contains("[shipjar] auto-revert: release "), "{log}");
    assert!(log.contains("healthy again"), "{log}");

    // `shipjar status` shows it and flags the host as drifted.
    let out = p.run(&["status", "local"]);
    let said = exited_saying(&out, 1, "last:      auto-revert success of ");
    assert!(
        said.contains("! drifted from the stage's last deploy: now on release "),
        "{said}"
    );
    assert!(said.contains("auto-reverted: from release "), "{said}");

    // Exactly once: it stays on 1.0.0, healthy, with no further revert.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(auto_revert_lines(&p).len(), 2);
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));

    // The next deploy settles it: no drift.
    ok(p.deploy("3.0.0", &[]));
    ok(p.run(&["status", "local"]));
}

#[test]
fn when_the_previous_release_fails_too_it_ends_failed_after_one_auto_revert() {
    let p = project(true, "15m");
    // 1.0.0 deploys fine and crashes 8 s after each start.
    ok(p.deploy("1.0.0", &["--env", "CRASH_AFTER_S=8"]));
    let first = p.current().expect("current");
    ok(p.deploy("2.0.0", &["--env", "CRASH_AFTER_S=2"]));

    let said = wait_for_status(&p, 1, "failed: ", Duration::from_secs(90));
    let lines = auto_revert_lines(&p);
    assert_eq!(lines.len(), 2, "{lines:#?}\n{said}");
    assert!(
        lines[1].contains(&format!("\t{first}\t1.0.0\tsupervisor\tsuccess\t")),
        "{}",
        lines[1]
    );
    assert_eq!(p.current().as_deref(), Some(first.as_str()));
    let log = service_log(&p);
    assert!(
        log.contains("not auto-reverting: it was activated by an auto-revert, not a deploy"),
        "{log}"
    );
    // It stays failed: no third line comes.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(auto_revert_lines(&p).len(), 2);
}

#[test]
fn without_auto_revert_a_crash_looping_release_ends_failed_where_it_is() {
    let (p, _, bad) = on_a_crash_looping_release(false, "15m");
    let said = wait_for_status(
        &p,
        1,
        "failed: 2 failures within 2m",
        Duration::from_secs(40),
    );
    assert!(!said.contains("auto-reverted"), "{said}");
    assert_eq!(p.current().as_deref(), Some(bad.as_str()));
    assert!(auto_revert_lines(&p).is_empty());
    assert!(!service_log(&p).contains("auto-revert"));
}

#[test]
fn outside_revert_window_nothing_is_reverted() {
    let (p, _, bad) = on_a_crash_looping_release(true, "1s");
    wait_for_status(
        &p,
        1,
        "failed: 2 failures within 2m",
        Duration::from_secs(40),
    );
    assert_eq!(p.current().as_deref(), Some(bad.as_str()));
    assert!(auto_revert_lines(&p).is_empty());
    let log = service_log(&p);
    assert!(log.contains("not auto-reverting: its deploy was "), "{log}");
    assert!(log.contains("longer than revert_window (1s)"), "{log}");
}
