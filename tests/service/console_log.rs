//! The service's output goes to a file of its own (`console.log`, or
//! `[logs] file`), so a service whose own logging writes `NAME.log` in the
//! log dir keeps that file to itself, owner and mode included.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use serde_json::json;

use crate::common::exited_saying;
use crate::common::host::{Host, Spec, code, free_port, text};

#[test]
fn the_services_own_log_file_is_left_alone() {
    let host = Host::new("selflog");
    let log_dir = host.root().join("var/log/selflog");
    let own = log_dir.join("selflog.log");
    let spec = Spec::hello(
        free_port(),
        &[("OWN_LOG_FILE", own.to_str().expect("utf-8 path"))],
    );
    host.release("r1", &spec);
    let out = host.start();
    assert_eq!(code(&out), 0, "{}", text(&out));
    // Its own file, as its logging config wants it.
    fs::set_permissions(&own, fs::Permissions::from_mode(0o604)).expect("chmod");
    let before = fs::metadata(&own).expect("own log");

    let out = host.run("restart", false);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let after = fs::metadata(&own).expect("own log");
    assert_eq!(
        (after.uid(), after.gid(), after.mode() & 0o777),
        (before.uid(), before.gid(), 0o604),
        "the service's own log changed owner or mode"
    );
    let own_text = fs::read_to_string(&own).expect("read own log");
    assert_eq!(
        own_text.matches("starting hello version").count(),
        2,
        "{own_text}"
    );
    assert!(!own_text.contains("[shipjar]"), "{own_text}");

    // Output and events are in console.log, which shipjar created 0640.
    let console = log_dir.join("console.log");
    let meta = fs::metadata(&console).expect("console.log");
    assert_eq!(meta.mode() & 0o777 & !0o040, 0o600, "{:o}", meta.mode());
    assert_eq!(
        host.events()
            .iter()
            .filter(|e| e.starts_with("started pid"))
            .count(),
        2
    );
    host.assert_logged("listening on 127.0.0.1:");
}

#[test]
fn a_failed_start_shows_the_last_lines_of_the_configured_file() {
    let host = Host::new("failing");
    let mut spec = Spec::hello(free_port(), &[("FAIL_ON_START", "1")]);
    spec.extra = json!({"logs": {"file": "stdout.log"}, "restart": {"enabled": false}});
    host.release("r1", &spec);
    let out = host.start();
    exited_saying(&out, 1, "hello: FAIL_ON_START is set, exiting");
    let log_dir = host.root().join("var/log/failing");
    let file = fs::read_to_string(log_dir.join("stdout.log")).expect("stdout.log");
    assert!(file.contains("FAIL_ON_START is set"), "{file}");
    assert!(!log_dir.join("console.log").exists());
}

#[test]
fn a_log_file_name_that_leaves_the_log_dir_is_refused() {
    let host = Host::new("escape");
    let mut spec = Spec::sleeper();
    spec.extra = json!({"logs": {"file": "../../../etc/escape.log"}});
    host.release("r1", &spec);
    let out = host.start();
    exited_saying(&out, 1, "logs.file");
    assert!(!host.root().join("etc/escape.log").exists());
    assert!(host.service_pid().is_none());
}

/// A FIFO planted in place of `console.log` (the log dir is the service
/// user's): `service start` used to block in `open` for ever. Now the FIFO
/// is moved aside, a new file started, and an event says so.
#[test]
fn a_fifo_in_place_of_console_log_is_moved_aside_and_start_does_not_block() {
    let host = Host::new("fifolog");
    let spec = Spec::sleeper();
    host.release("r1", &spec);
    let log_dir = host.root().join("var/log/fifolog");
    fs::create_dir_all(&log_dir).expect("mkdir");
    let console = log_dir.join("console.log");
    nix::unistd::mkfifo(&console, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    let started = std::time::Instant::now();
    // run_limited fails the test if start hangs.
    let out = host.start();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(
        fs::symlink_metadata(&console)
            .expect("console.log")
            .is_file()
    );
    let aside = fs::symlink_metadata(log_dir.join("console.log.refused-1")).expect("aside");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&aside.file_type()));
    assert!(
        host.events()
            .iter()
            .any(|e| e.contains("is a FIFO, not a regular file")
                && e.contains("moved it aside to console.log.refused-1")),
        "{}",
        host.log()
    );
}
