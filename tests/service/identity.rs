//! Nothing is signalled because a file names it: a forged state file, a
//! stale pid-only pidfile and files owned by the service user name pids
//! that are proven against `/proc` first; a service started by hand with a
//! legacy pidfile is taken over only when it proves to be the service.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::common::host::{
    Helper, Host, Spec, code, eventually, free_port, start_ticks, stdout_starting, text,
};
use crate::common::http_get;

/// A `sleep` that is not the service, killed on drop.
fn sleeper() -> (Helper, i32, u64) {
    let child = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let pid = child.id() as i32;
    let ticks = start_ticks(pid).expect("sleep alive");
    (Helper(child), pid, ticks)
}

/// A state file that claims `pid` is the running supervisor and its service.
fn forge_state(host: &Host, pid: i32, ticks: u64) {
    fs::create_dir_all(host.run_dir()).expect("run dir");
    host.write_state(
        "running",
        json!({
            "supervisor": {"pid": pid, "start_ticks": ticks},
            "service": {"pid": pid, "start_ticks": ticks},
        }),
    );
    fs::write(host.pidfile(), format!("{pid}\n{ticks}\n")).expect("pidfile");
}

/// Stop must not have signalled `pid`: it is still there a moment later.
fn survives(pid: i32, ticks: u64) {
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(start_ticks(pid), Some(ticks), "pid {pid} was signalled");
}

#[test]
fn a_forged_state_file_gets_no_process_signalled() {
    let host = Host::new("forged");
    host.release("r1", &Spec::hello(free_port(), &[]));
    let (_sleep, pid, ticks) = sleeper();
    forge_state(&host, pid, ticks);

    let status = host.run("status", false);
    // The stop first: what matters most is that nothing was signalled.
    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    survives(pid, ticks);

    assert_ne!(code(&status), 0, "{}", text(&status));
    stdout_starting(
        &status,
        &format!(
            "dead: supervisor pid {pid} is not this service's supervisor: sleep (it does not hold the supervisor lock)"
        ),
    );
}

#[test]
#[ignore = "needs root"]
fn state_files_of_the_service_user_do_not_make_root_signal() {
    let host = Host::new("userfiles");
    host.release("r1", &Spec::hello(free_port(), &[]));
    // A root process the service user would like to see killed.
    let (_sleep, pid, ticks) = sleeper();
    forge_state(&host, pid, ticks);
    // As systemd's RuntimeDirectory= with User= leaves them: the user's.
    for path in [
        host.run_dir(),
        host.run_dir().join("supervisor.json"),
        host.pidfile(),
    ] {
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown to nobody");
    }
    let status = host.run("status", false);
    let out = host.run("reload", false);
    assert_ne!(code(&out), 0, "{}", text(&out));
    survives(pid, ticks);
    let out = host.run("stop", false);
    assert_eq!(code(&out), 0, "{}", text(&out));
    survives(pid, ticks);
    assert_ne!(code(&status), 0, "{}", text(&status));
}

#[test]
fn a_stale_pid_only_pidfile_naming_a_sleep_is_not_the_service() {
    let host = Host::new("pidonly");
    host.release("r1", &Spec::hello(free_port(), &[]));
    let (_sleep, pid, ticks) = sleeper();
    fs::create_dir_all(host.run_dir()).expect("run dir");
    fs::write(host.pidfile(), format!("{pid}\n")).expect("pidfile");

    let out = host.run("status", false);
    let (_, status) = host.status_json();
    // The stop first: what matters most is that nothing was signalled.
    let stop = host.run("stop", true);
    assert_eq!(code(&stop), 0, "{}", text(&stop));
    survives(pid, ticks);
    let report: serde_json::Value = serde_json::from_slice(&stop.stdout).expect("json");
    assert_eq!(report["was_running"], false, "{report}");

    assert_eq!(code(&out), 1, "{}", text(&out));
    let said = stdout_starting(
        &out,
        &format!(
            "not running: stale pidfile: pid {pid} is another process (sleep: its working directory "
        ),
    );
    assert!(
        said.trim_end().ends_with("is not a release of pidonly)"),
        "{said}"
    );
    assert_eq!(status["state"], "dead", "{status}");
    assert_eq!(status["pid"], serde_json::Value::Null, "{status}");
}

#[test]
fn a_hello_started_by_hand_with_a_legacy_pidfile_is_proven_and_replaced() {
    let host = Host::new("legacy");
    let port = free_port();
    let spec = Spec::hello(port, &[]);
    let dir = host.release("r1", &spec);
    // As an old init script would: the release's command, in the release
    // directory, its own process group, a pidfile with only the pid.
    let mut java = Command::new(&spec.argv[0]);
    java.args(&spec.argv[1..])
        .current_dir(&dir)
        .envs(spec.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let legacy = Helper(java.spawn().expect("spawn java"));
    let pid = legacy.0.id() as i32;
    host.track(pid);
    fs::create_dir_all(host.run_dir()).expect("run dir");
    fs::write(host.pidfile(), format!("{pid}\n")).expect("pidfile");
    assert!(
        eventually(Duration::from_secs(30), || http_get(port, "/health")
            .is_some_and(|r| r.0 == 200)),
        "the hand-started hello never became healthy"
    );

    let out = host.run("status", false);
    assert_eq!(code(&out), 1, "{}", text(&out));
    stdout_starting(
        &out,
        &format!("dead: no supervisor; the service pid {pid} runs unsupervised since "),
    );
    let (_, status) = host.status_json();
    assert_eq!(status["release"], "r1", "{status}");
    assert_eq!(status["healthy"], true, "{status}");

    let status = host.start_replacing(pid, "");
    assert_ne!(status["pid"], pid, "{status}");
}
