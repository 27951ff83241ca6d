//! `[health] settle` and the records of deploys that stop, on the `local`
//! stage with examples/hello and its fault knobs: a release that crashes
//! inside the window is reverted and the deploy fails naming it; a failure
//! is printed before the revert it causes; a run stopped by a hook is in
//! `revisions.log` and in `status`' last, its unswitched release removed;
//! `releases` says why each release is kept.

mod common;
use common::{exited_saying, ok};

use std::io::BufReader;
use std::time::{Duration, Instant};

use common::host::Helper;
use common::{Project, text};

/// The example's config with `[health] settle` set.
fn settling(settle: &str) -> Project {
    let settle = settle.to_string();
    Project::with_config(move |c| {
        c.replace(
            "probe_timeout = \"2s\"",
            &format!("probe_timeout = \"2s\"\nsettle = \"{settle}\""),
        )
    })
}

/// Index of the first line of `said` containing `needle`.
fn line_of(said: &str, needle: &str) -> usize {
    said.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}` in:\n{said}"))
}

#[test]
fn a_release_crashing_inside_settle_is_reverted_and_the_deploy_fails_naming_it() {
    let p = settling("5s");
    ok(p.deploy("1.0.0", &[]));
    let good = p.current().expect("current");

    let out = p.deploy("2.0.0", &["--env", "CRASH_AFTER_S=2"]);
    let said = exited_saying(&out, 1, "crashed ");
    assert!(said.contains(" s after becoming healthy"), "{said}");
    // The log tail shows why.
    assert!(said.contains("crashing on purpose"), "{said}");
    // The failure is printed when it happened: before the revert it caused.
    assert!(
        line_of(&said, "settle FAILED") < line_of(&said, "revert: back to release"),
        "{said}"
    );
    assert_eq!(p.current().as_deref(), Some(good.as_str()));
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
    let last = p.revisions().pop().expect("a revision");
    assert!(last.contains("\t2.0.0\t"), "{last}");
    assert!(last.contains("\tfailed\tsettle: crashed "), "{last}");
}

#[test]
fn a_release_turning_unhealthy_inside_settle_is_reverted() {
    let p = settling("6s");
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let out = p.deploy("2.0.0", &["--env", "UNHEALTHY_AFTER_S=2"]);
    let said = exited_saying(&out, 1, "settle FAILED: unhealthy ");
    assert!(said.contains(" s after becoming healthy: HTTP 5"), "{said}");
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
}

/// Sends SIGINT to the operator, as a Ctrl-C in its terminal would.
fn interrupt(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT the operator");
}

#[test]
fn a_second_ctrl_c_during_settle_reverts_at_once() {
    let p = settling("0s");
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let first = p.current();
    let file = p.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&file).expect("config");
    std::fs::write(&file, config.replace("settle = \"0s\"", "settle = \"60s\"")).unwrap();
    // The operator, SIGKILLed if the test ends before it does.
    let mut child = Helper(p.spawn_deploy("2.0.0", &[]));
    let mut stderr = BufReader::new(child.0.stderr.take().expect("stderr"));
    common::wait_for_line(&mut stderr, "must stay healthy for");
    interrupt(&child.0);
    common::wait_for_line(&mut stderr, "Ctrl-C again");
    interrupt(&child.0);
    // Back on 1.0.0, and recorded, long before the 60 s window would have ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.revisions().len() < 2 {
        assert!(Instant::now() < deadline, "the stop was never recorded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = p.revisions().pop().expect("a revision");
    assert!(
        last.contains("\tfailed\tsettle: cancelled by the operator"),
        "{last}"
    );
    assert_eq!(p.current(), first);
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
}

#[test]
fn with_settle_0s_a_release_crashing_after_its_gate_counts_as_deployed() {
    let p = settling("0s");
    let out = p.deploy("1.0.0", &["--env", "CRASH_AFTER_S=3"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains("settle"), "{said}");
}

#[test]
fn a_failed_start_is_printed_before_its_revert() {
    let p = Project::new();
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let out = p.deploy("2.0.0", &["--env", "FAIL_ON_START=1"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        line_of(&said, "health FAILED") < line_of(&said, "healthy again"),
        "{said}"
    );
    // Printed once, not again when the answer arrives.
    assert_eq!(said.matches("health FAILED").count(), 1, "{said}");
}

#[test]
fn a_run_stopped_by_a_hook_is_recorded_and_its_release_removed() {
    let hooks = "\n[hooks]\nbefore_switch = { command = [\"sh\", \"-c\", \"exit @SWITCH@\"] }\n\
                 before_start = { command = [\"sh\", \"-c\", \"exit @START@\"] }\n";
    let p = Project::with_config(|c| c + hooks);
    let file = p.path().join("shipjar.toml");
    let template = std::fs::read_to_string(&file).unwrap();
    let hooks_exit = |switch: u8, start: u8| {
        let config = template
            .replace("@SWITCH@", &switch.to_string())
            .replace("@START@", &start.to_string());
        std::fs::write(&file, config).unwrap();
    };
    hooks_exit(0, 0);
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let good = p.current().expect("current");

    for (switch, start, step) in [(3, 0, "before_switch"), (0, 4, "before_start")] {
        hooks_exit(switch, start);
        let out = p.deploy("2.0.0", &[]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let last = p.revisions().pop().expect("a revision");
        assert!(last.contains("\t2.0.0\t"), "{step}: {last}");
        assert!(
            last.contains(&format!("\tfailed\t{step}: hook exited with code")),
            "{last}"
        );
        assert!(last.ends_with("not switched"), "{last}");
        // The release that never switched is gone; the good one stays current.
        assert_eq!(p.release_ids(), std::slice::from_ref(&good), "{step}");
        assert_eq!(p.current().as_deref(), Some(good.as_str()));
        let out = p.run(&["status", "local"]);
        let said = text(&out);
        assert!(
            said.contains("last:      deploy failed of ") && said.contains(step),
            "{said}"
        );
    }
}

#[test]
fn releases_says_why_each_release_is_kept() {
    let p = Project::new();
    for version in ["1.0.0", "1.0.1"] {
        assert_eq!(p.deploy(version, &[]).status.code(), Some(0));
    }
    let out = p.run(&["releases", "local"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let line = |v: &str| {
        said.lines()
            .find(|l| l.contains(&format!(" {v} ")))
            .unwrap_or_else(|| panic!("no {v} in {said}"))
            .to_string()
    };
    assert!(line("1.0.1").ends_with("(current)"), "{said}");
    assert!(line("1.0.0").ends_with("(rollback target)"), "{said}");
}
