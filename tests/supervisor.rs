//! End-to-end tests of `shipjar service start|stop|status`: the real binary,
//! real processes, a hand-made release under a temporary root.

mod common;
use common::exited_saying;

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::host::{
    Helper, Host, Spec, alive, code, eventually, free_port, run_limited, start_ticks, text,
};

#[test]
fn start_status_stop() {
    let host = Host::new("web");
    let port = free_port();
    host.release("r1", &Spec::http_server(port));

    let out = host.start();
    exited_saying(&out, 0, "started: pid");
    let pid = host.service_pid().expect("pidfile written");
    assert!(alive(pid));

    let (rc, status) = host.status_json();
    assert_eq!(rc, 0, "{status}");
    assert_eq!(status["state"], "running");
    assert_eq!(status["lsb_code"], 0);
    assert_eq!(status["pid"], pid);
    assert_eq!(status["release"], "r1");
    assert_eq!(status["healthy"], true);
    assert!(
        status["supervisor_pid"].as_i64().is_some_and(|p| p > 0),
        "{status}"
    );
    assert!(status["uptime_s"].as_u64().is_some(), "{status}");
    let started_at = status["started_at"].as_str().expect("started_at");
    assert!(
        started_at.ends_with('Z') && started_at.contains('T'),
        "{started_at}"
    );
    let detail = status["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with(&format!("running: pid {pid}, release r1")),
        "{detail}"
    );

    let log = host.log();
    assert!(
        log.contains(&format!("[shipjar] started pid {pid} from release r1")),
        "{log}"
    );
    assert!(log.contains("[shipjar] healthy after"), "{log}");

    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("stop --json");
    assert_eq!(report["was_running"], true);
    // python's http.server does not handle SIGTERM: it dies by it.
    assert_eq!(report["how"], "killed by SIGTERM", "{report}");
    assert!(!alive(pid), "service still alive after stop");
    assert!(!host.pidfile().exists());

    let out = host.run("status", false);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("not running"));
    assert!(
        host.log()
            .contains("[shipjar] stopped: killed by SIGTERM in")
    );

    // Stopping a stopped service succeeds.
    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("stop --json");
    assert_eq!(report["was_running"], false);
}

#[test]
fn start_when_running_is_already_running() {
    let host = Host::new("twice");
    host.release("r1", &Spec::http_server(free_port()));
    assert_eq!(code(&host.start()), 0);
    let pid = host.service_pid().expect("pid");

    let out = host.run("start", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["already_running"], true);
    assert_eq!(report["pid"], pid);
    assert_eq!(report["release"], "r1");

    // A second supervisor for the same service refuses to run.
    let out = host.run("supervise", false);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("FAILED "), "{said}");
    assert!(
        said.contains("another supervisor is already running"),
        "{said}"
    );
    assert_eq!(
        host.service_pid(),
        Some(pid),
        "the refused supervisor touched the pidfile"
    );
    assert!(alive(pid));
}

#[test]
fn exit_at_start_fails_with_log_tail() {
    let host = Host::new("boom");
    let port = free_port();
    host.release(
        "r1",
        &Spec::shell_on_port(
            "echo starting up; echo boom: no config >&2; exit 1",
            port,
            10_000,
        ),
    );
    let began = Instant::now();
    let out = host.start();
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: exited with code 1 before becoming healthy"),
        "{err}"
    );
    assert!(err.contains("last lines of the service log:"), "{err}");
    assert!(err.contains("boom: no config"), "{err}");
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "took {:?}",
        began.elapsed()
    );

    let out = host.run("start", true);
    assert_eq!(code(&out), 1);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["message"],
        "exited with code 1 before becoming healthy"
    );
    let tail = report["log_tail"].as_array().expect("log_tail");
    assert!(!tail.is_empty() && tail.len() <= 20, "{report}");

    let out = host.run("status", false);
    exited_saying(&out, 3, "last start failed");
}

#[test]
fn never_healthy_is_killed_after_start_timeout() {
    let host = Host::new("slow");
    let marker = host.root().join("service.pid");
    let unused = free_port();
    host.release(
        "r1",
        &Spec::shell(
            &format!("echo $$ > {}; exec sleep 600", marker.display()),
            json!({"kind": "tcp", "port": unused}),
            2_000,
        ),
    );
    let began = Instant::now();
    let out = host.start();
    let took = began.elapsed();
    exited_saying(&out, 1, "error: not healthy after 2s");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "took {took:?}"
    );

    let pid: i32 = host.marker_pid(&marker);
    assert!(!alive(pid), "service pid {pid} survived a failed start");
    assert!(!host.pidfile().exists());
    host.assert_logged("killing process group");
}

#[test]
fn stale_pidfile_of_another_process_is_dead() {
    let host = Host::new("stale");
    host.release("r1", &Spec::http_server(free_port()));
    let sleeper = Helper(
        Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = sleeper.0.id() as i32;
    let ticks = start_ticks(pid).expect("sleep alive");
    fs::create_dir_all(host.run_dir()).expect("run dir");
    fs::write(host.pidfile(), format!("{pid}\n{}\n", ticks + 1)).expect("pidfile");

    let out = host.run("status", false);
    exited_saying(
        &out,
        1,
        &format!(
            "not running: stale pidfile: pid {pid} is another process (sleep, started after the pidfile was written)"
        ),
    );

    // stop must not touch a process that is not the service.
    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["was_running"], false);
    assert!(alive(pid), "stop killed an unrelated process");
    assert!(!host.pidfile().exists(), "stale pidfile not cleaned up");

    // A pidfile whose pid is gone is dead too.
    fs::write(host.pidfile(), "999999999\n1\n").expect("pidfile");
    let out = host.run("status", false);
    exited_saying(&out, 1, "stale pidfile");
}

#[test]
fn service_ignoring_sigterm_is_killed_after_stop_timeout() {
    let host = Host::new("stubborn");
    // SIG_IGN survives exec: python inherits "ignore SIGTERM".
    let mut spec = Spec::http_script("trap '' TERM; exec {server}");
    spec.stop_timeout_ms = 1_000;
    host.release("r1", &spec);
    let pid = host.started();

    let began = Instant::now();
    let out = host.run("stop", true);
    let took = began.elapsed();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["how"], "killed by SIGKILL after the 1s stop timeout",
        "{report}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "took {took:?}"
    );
    assert!(!alive(pid));
    host.assert_logged("sending SIGKILL");
}

#[test]
fn crash_after_healthy_leaves_status_dead() {
    let host = Host::new("crashy");
    // The main process exits 3 after a while; its server child must not linger.
    let mut spec = Spec::http_script(&format!(
        "{{server}} & echo $! > {}; sleep 2; exit 3",
        host.root().join("child.pid").display()
    ));
    spec.extra = json!({"restart": {"enabled": false}});
    host.release("r1", &spec);
    let out = host.start();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let pid = host.service_pid().expect("pid");
    let child: i32 = host.marker_pid(&host.root().join("child.pid"));

    let expected = format!("not running: stale pidfile: pid {pid} exited with code 3");
    let mut last = Value::Null;
    let dead = eventually(Duration::from_secs(10), || {
        let (rc, status) = host.status_json();
        last = status;
        rc == 1 && last["detail"] == expected.as_str()
    });
    assert!(dead, "status never became dead: {last}\n{}", host.log());
    assert_eq!(last["state"], "dead");
    assert_eq!(last["lsb_code"], 1);
    assert!(!alive(child), "the crashed service's child lingers");
    host.assert_logged("[shipjar] exited with code 3");

    let out = host.run("stop", true);
    assert_eq!(code(&out), 0);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["was_running"], false);
    assert_eq!(code(&host.run("status", false)), 3);
}

#[test]
fn service_starts_clean_and_keeps_its_release() {
    let host = Host::new("clean");
    let spec = Spec::sleeper();
    let r1 = host.release("r1", &spec);

    // A caller with SIGHUP ignored (nohup) and a stray variable.
    let mut cmd = host.command("start", false);
    cmd.env("LEAKED_SECRET", "x");
    // SAFETY: signal(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = run_limited(cmd);
    host.remember();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let pid = host.service_pid().expect("pid");

    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        field("SigBlk:"),
        "0000000000000000",
        "blocked signals leaked"
    );
    assert_eq!(
        field("SigIgn:"),
        "0000000000000000",
        "ignored signals leaked"
    );

    let environ = fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let r1_real = fs::canonicalize(&r1).expect("canonical");
    for expected in [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "LANG=C.UTF-8".to_string(),
        "FROM_RELEASE=r1".to_string(),
        "SHIPJAR_SERVICE=clean".to_string(),
        "SHIPJAR_RELEASE=r1".to_string(),
        format!("SHIPJAR_RELEASE_DIR={}", r1_real.display()),
        format!("SHIPJAR_CONFIG_DIR={}", r1_real.join("config").display()),
    ] {
        assert!(vars.contains(&expected), "missing {expected} in {vars:?}");
    }
    assert!(
        !vars.iter().any(|v| v.starts_with("LEAKED_SECRET")),
        "{vars:?}"
    );
    assert!(vars.iter().any(|v| v.starts_with("HOME=")), "{vars:?}");
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
        r1_real
    );

    // Its own process group and no terminal.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect(")") + 1..]
        .split_whitespace()
        .collect();
    assert_eq!(fields[2], pid.to_string(), "not its own process group");
    assert_eq!(fields[4], "0", "has a controlling terminal");
    // Nothing but stdio is open in the service.
    let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        fds.iter().all(|fd| ["0", "1", "2"].contains(&fd.as_str())),
        "{fds:?}"
    );

    // `current` moves on; the running process keeps its release.
    host.release("r2", &spec);
    let (rc, status) = host.status_json();
    assert_eq!(rc, 0);
    assert_eq!(status["release"], "r1");
    assert_eq!(status["pid"], pid);

    // restart picks up the new release.
    let out = host.run("restart", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["release"], "r2");
    assert_eq!(report["already_running"], false);
    assert!(!alive(pid));
}

#[test]
fn health_check_answered_by_someone_else_fails_start() {
    let host = Host::new("taken");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    host.release("r1", &Spec::shell_on_port("exec sleep 600", port, 5_000));
    let out = host.start();
    assert_eq!(code(&out), 1, "{}", text(&out));
    let expected = format!("port {port} already in use by pid {}", std::process::id());
    assert!(text(&out).contains(&expected), "{}", text(&out));
    assert_eq!(code(&host.run("status", false)), 3);
    drop(listener);
}

/// Releases a service that records its pid in a marker file and never
/// gets healthy, and starts it in the background: the marker file and the
/// start.
fn start_a_service_never_healthy(host: &Host) -> (std::path::PathBuf, Helper) {
    let marker = host.root().join("service.pid");
    host.release(
        "r1",
        &Spec::shell_on_port(
            &format!("echo $$ > {}; exec sleep 600", marker.display()),
            free_port(),
            30_000,
        ),
    );
    (marker, host.spawn_start())
}

#[test]
fn stop_while_starting_aborts_the_start() {
    let host = Host::new("abort");
    let (marker, mut start) = start_a_service_never_healthy(&host);
    assert!(
        eventually(Duration::from_secs(10), || host.service_pid().is_some()),
        "service never spawned"
    );
    host.remember();

    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["was_running"], true);

    let (code, err) = start.finish();
    assert_eq!(code, Some(1));
    assert!(err.contains("stopped while starting"), "{err}");
    let pid: i32 = host.marker_pid(&marker);
    assert!(!alive(pid));
}

#[test]
fn missing_release_fails_fast() {
    let host = Host::new("empty");
    let out = host.start();
    exited_saying(&out, 1, "no current release");
}

#[test]
#[ignore = "needs root"]
fn runs_as_the_release_user_when_root() {
    common::host::require_root();
    let Some(nobody_uid) = fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines()
            .find(|l| l.starts_with("nobody:"))
            .and_then(|l| l.split(':').nth(2).map(str::to_string))
    }) else {
        panic!("this test needs the user `nobody` (Debian has it)");
    };
    let host = Host::new("dropped");
    let mut spec = Spec::sleeper();
    spec.user = Some("nobody".into());
    host.release("r1", &spec);
    let out = host.start();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let pid = host.service_pid().expect("pid");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert!(
        uids.split_whitespace().all(|u| u == nobody_uid),
        "uids {uids}, expected all {nobody_uid}"
    );
}

#[test]
fn clean_exit_after_sigterm_is_reported() {
    let host = Host::new("graceful");
    // What a JVM does: handle SIGTERM, exit 143.
    let spec = Spec::http_script("trap 'exit 143' TERM; {server} & wait");
    host.release("r1", &spec);
    host.started();
    let out = host.run("stop", false);
    exited_saying(&out, 0, "stopped: exited 143 after SIGTERM");
    host.assert_logged("[shipjar] stopped: exited 143 after SIGTERM in ");
}

#[test]
fn stop_waits_for_and_kills_the_whole_group() {
    let host = Host::new("family");
    let marker = host.root().join("helper.pid");
    // The main process exits on SIGTERM at once; a helper in its group
    // ignores it and must still be gone after the stop timeout.
    let mut spec = Spec::http_script(&format!(
        "sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 600' & exec {{server}}",
        marker.display()
    ));
    spec.stop_timeout_ms = 1_000;
    host.release("r1", &spec);
    host.started();
    assert!(eventually(Duration::from_secs(5), || marker.exists()));
    let helper: i32 = host.marker_pid(&marker);
    assert!(alive(helper));

    let began = Instant::now();
    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "did not wait for the group"
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["how"],
        "killed by SIGTERM; the rest of its process group killed by SIGKILL after the 1s stop timeout",
        "{report}"
    );
    assert!(!alive(helper), "helper survived the stop");
}

#[test]
fn service_without_supervisor_is_still_tracked_and_stopped() {
    let (host, pid) = Host::running("orphan", &Spec::http_server(free_port()));
    let (_, status) = host.status_json();
    let supervisor = status["supervisor_pid"].as_i64().expect("supervisor") as i32;

    // SAFETY: kill(2) on the supervisor this test started.
    unsafe {
        libc::kill(supervisor, libc::SIGKILL);
    }
    assert!(eventually(Duration::from_secs(5), || !alive(supervisor)));
    assert!(alive(pid), "the service died with its supervisor");

    // Running, answering, and still dead: nothing supervises it.
    let (rc, status) = host.status_json();
    assert_eq!(rc, 1, "{status}");
    assert_eq!(status["state"], "dead", "{status}");
    assert_eq!(status["pid"], pid);
    assert_eq!(status["supervisor_pid"], Value::Null);
    let detail = status["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with(&format!(
            "dead: supervisor pid {supervisor} is gone; the service pid {pid} runs unsupervised since "
        )),
        "{status}"
    );

    // stop stops the proven service, and says it ran unsupervised.
    let out = host.run("stop", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["was_running"], true);
    assert_eq!(report["how"], "terminated after SIGTERM", "{report}");
    assert_eq!(report["unsupervised_pid"], pid, "{report}");
    assert!(!alive(pid));
    assert_eq!(code(&host.run("status", false)), 3);
}

#[test]
fn supervisor_dying_during_start_fails_the_start_and_kills_the_service() {
    let host = Host::new("sudden");
    let (marker, mut start) = start_a_service_never_healthy(&host);
    // Once the state names the service; before that, a supervisor killed
    // right after spawning leaves nothing to find the service by.
    let state_file = host.run_dir().join("supervisor.json");
    assert!(
        eventually(Duration::from_secs(10), || {
            fs::read_to_string(&state_file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["service"]["pid"].is_i64())
        }),
        "service never spawned"
    );
    host.remember();
    let state: Value = serde_json::from_str(
        &fs::read_to_string(host.run_dir().join("supervisor.json")).expect("state"),
    )
    .expect("json");
    let supervisor = state["supervisor"]["pid"].as_i64().expect("pid") as i32;
    let began = Instant::now();
    // SAFETY: kill(2) on the supervisor this test started.
    unsafe {
        libc::kill(supervisor, libc::SIGKILL);
    }
    let (code, err) = start.finish();
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "start noticed late"
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("supervisor exited before reporting"), "{err}");
    let pid: i32 = host.marker_pid(&marker);
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "service outlived its failed start"
    );
}

#[test]
fn start_during_a_restart_waits_for_its_outcome() {
    let host = Host::new("rejoin");
    let marker = host.root().join("crashed-once");
    let mut spec = Spec::shell(
        &format!(
            "if [ -e {m} ]; then exec sleep 600; else touch {m}; sleep 0.5; exit 4; fi",
            m = marker.display()
        ),
        json!({"kind": "none"}),
        5_000,
    );
    spec.extra = json!({"restart": {"initial_delay_ms": 1_500}});
    host.release("r1", &spec);
    let first = host.started();
    assert!(
        eventually(Duration::from_secs(5), || host.status_json().1["state"]
            == "restarting"),
        "{}",
        host.log()
    );
    let (rc, status) = host.status_json();
    assert_eq!(rc, 3, "restarting is not running: {status}");
    assert_eq!(status["last_exit_code"], 4, "{status}");
    assert!(status["next_restart_at"].is_string(), "{status}");

    let out = host.run("start", true);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["already_running"], true, "{report}");
    assert_ne!(report["pid"], first);
    assert_eq!(
        Some(report["pid"].as_i64().unwrap_or(0) as i32),
        host.service_pid()
    );
}
