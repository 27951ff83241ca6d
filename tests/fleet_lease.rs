//! A deploy of more hosts than `--parallel` holds at most `--parallel` ssh
//! sessions at once, each host's lock detached between its phases; a lock
//! a killed operator left detached outlives it and expires with its lease.
//! Root only: as another user these tests are ignored (skipped).

mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{exited_saying, host_field, last_json, ok, text};
use lifecycle::{FleetStage, short_timeouts};

/// The `ssh` processes whose parent is `pid`.
fn ssh_children_of(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let ppid = stat[close + 2..].split_whitespace().nth(1);
            &stat[open + 1..close] == "ssh" && ppid == Some(pid.to_string().as_str())
        })
        .count()
}

/// Runs `args` on the project, sampling its `ssh` children every few ms
/// until it exits (within `limit`): its output and the most seen at once.
fn run_sampling_ssh(p: &FleetStage, args: &[String], limit: Duration) -> (Output, usize) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = common::spawn_piped(p.command(&args));
    let pid = child.id();
    // Read the output meanwhile: a full pipe must not stall the deploy.
    let output = std::thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + limit;
    let mut most = 0;
    while !output.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the deploy did not end within {limit:?}"
        );
        most = most.max(ssh_children_of(pid));
        std::thread::sleep(Duration::from_millis(3));
    }
    let out = output.join().expect("reader").expect("deploy output");
    (out, most)
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_deploy_of_8_hosts_with_parallel_2_never_holds_more_than_2_ssh_sessions() {
    let p = FleetStage::new(8, "rolling = { batch = 3 }", short_timeouts);
    p.provision();
    let args = p.deploy_args("1.0.0", &["--parallel", "2"]);
    let (out, most) = run_sampling_ssh(&p, &args, Duration::from_secs(600));
    assert_eq!(out.status.code(), Some(0), "deploy: {}", text(&out));
    let result = last_json(&out);
    for host in p.fleet.hosts() {
        assert_eq!(host_field(&result, &host)["state"], "updated", "{result}");
    }
    assert!(most <= 2, "{most} ssh sessions at once with --parallel 2");
    assert!(
        most >= 1,
        "no ssh session was ever seen: the sampling missed them"
    );
    // No host keeps a lock: each was released at its finish.
    for host in p.fleet.hosts() {
        let lock = p.fleet.exec(&host, &["cat", "/run/hello/deploy.lock"]);
        assert!(
            lock.stdout.is_empty(),
            "{host} still locked: {}",
            text(&lock)
        );
    }
}

/// The deploy lock record on `host` (empty when there is none).
/// 4 hosts switched one at a time, with a 10 s lock lease, on 1.0.0.
fn four_hosts_one_session_at_a_time() -> FleetStage {
    let p = FleetStage::new(
        4,
        "rolling = { batch = 1 }\nlock_lease = \"10s\"",
        short_timeouts,
    );
    p.provision();
    ok(p.deploy("1.0.0", &[]));
    p
}

/// The release `current` points to on `host`.
fn current_on(p: &FleetStage, host: &str) -> String {
    let out = p.fleet.exec(host, &["readlink", "/var/lib/hello/current"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn lock_on(p: &FleetStage, host: &str) -> String {
    let out = p.fleet.exec(host, &["cat", "/run/hello/deploy.lock"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_detached_lock_of_a_killed_operator_expires_and_the_next_deploy_takes_over() {
    let p = four_hosts_one_session_at_a_time();
    let current = |host: &str| current_on(&p, host);
    let before = current("app1");

    // One session at a time: app2..app4 wait for their batch with their
    // locks detached while app1 switches; the operator dies then.
    let mut child = p.spawn_deploy(
        "2.0.0",
        &["--parallel", "1", "--env", "STARTUP_DELAY_MS=3000"],
    );
    let killed = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    while current("app1") == before {
        assert!(
            Instant::now() < deadline,
            "app1 never switched: {}",
            text(&child.wait_with_output().expect("deploy output"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL the operator");
    let _ = child.wait();

    // Its connections are gone; the waiting hosts' locks are not.
    for host in ["app2", "app3", "app4"] {
        let lock = lock_on(&p, host);
        assert!(
            lock.contains(&format!("\"pid\":{killed}")),
            "{host}: the killed deploy's lock is gone: {lock:?}"
        );
    }
    let refused = p.deploy_with("3.0.0", &[]);
    exited_saying(&refused, 1, &format!("pid {killed}"));

    // Past the lease, the next deploy takes over with the usual warning.
    std::thread::sleep(Duration::from_secs(11));
    let out = ok(p.deploy_with("3.0.0", &[]));
    let said = text(&out);
    assert!(said.contains("took over an expired lock"), "{said}");
    let result = last_json(&out);
    for host in p.fleet.hosts() {
        assert_eq!(host_field(&result, &host)["state"], "updated", "{result}");
    }
}

/// One agent session on `root`: `requests` pipelined, its input closed
/// after them, the agent's exit awaited; the responses in order.
fn agent_session(root: &std::path::Path, requests: &[serde_json::Value]) -> Vec<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(common::shipjar_bin())
        .args(["agent", "--root"])
        .arg(root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the agent");
    let mut stdin = child.stdin.take().expect("stdin");
    for (id, request) in requests.iter().enumerate() {
        let envelope = serde_json::json!({"protocol": common::protocol_version(), "id": id + 1, "service": "demo", "request": request});
        writeln!(stdin, "{envelope}").expect("write request");
    }
    drop(stdin);
    let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .filter(|m| m["kind"] == "result")
        .map(|m| m["response"].clone())
        .collect();
    let status = child.wait().expect("agent exit");
    assert!(status.success(), "agent: {status}; answers {answers:?}");
    answers
}

fn begin(pid: u32, lease_ms: u64) -> serde_json::Value {
    let holder =
        serde_json::json!({"deployer": "me@box", "pid": pid, "command": "test", "since": "t"});
    serde_json::json!({"type": "begin", "holder": holder, "artifact_sha256": null, "lease_ms": lease_ms, "prepare": null})
}

#[test]
fn a_detached_lock_outlives_its_session_and_only_its_token_takes_it_back() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let record = root.join("run/demo/deploy.lock");

    // Detached, the lock stays after the session's input ends.
    let answers = agent_session(
        &root,
        &[
            begin(1, 60_000),
            serde_json::json!({"type": "detach", "lease_ms": 60_000}),
        ],
    );
    assert_eq!(answers[1]["type"], "detached", "{answers:?}");
    let token = answers[1]["token"].as_str().expect("token").to_string();
    assert!(record.exists(), "the detached lock was released");
    let refused = agent_session(&root, &[begin(2, 60_000)]);
    assert_eq!(refused[0]["kind"], "lock_held", "{refused:?}");
    assert!(
        refused[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("pid 1"),
        "{refused:?}"
    );

    // Attached by its token, it is the session's again: released at its end.
    let attach = serde_json::json!({"type": "attach", "token": token, "lease_ms": 60_000});
    let answers = agent_session(&root, &[attach]);
    assert_eq!(answers[0]["type"], "renewed", "{answers:?}");
    assert!(
        !record.exists(),
        "an attached lock is released with its session"
    );

    // Expired and taken over by another deploy, it cannot be taken back.
    let answers = agent_session(
        &root,
        &[
            begin(3, 60_000),
            serde_json::json!({"type": "detach", "lease_ms": 1}),
        ],
    );
    let token = answers[1]["token"].as_str().expect("token").to_string();
    std::thread::sleep(Duration::from_millis(20));
    let answers = agent_session(
        &root,
        &[
            begin(4, 60_000),
            serde_json::json!({"type": "detach", "lease_ms": 60_000}),
        ],
    );
    assert!(
        answers[0]["took_over"]
            .as_str()
            .is_some_and(|t| t.contains("pid 3")),
        "{answers:?}"
    );
    let attach = serde_json::json!({"type": "attach", "token": token, "lease_ms": 60_000});
    let lost = agent_session(&root, &[attach]);
    assert_eq!(lost[0]["kind"], "not_locked", "{lost:?}");
    let message = lost[0]["message"].as_str().unwrap_or("");
    assert!(message.contains("taken over by me@box (pid 4"), "{lost:?}");
}

/// The state of each host in a deploy's result, in the stage's order.
fn states(p: &FleetStage, out: &Output) -> Vec<String> {
    let result = last_json(out);
    p.fleet
        .hosts()
        .iter()
        .map(|h| {
            host_field(&result, h)["state"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn with_sessions_detached_a_confirm_canary_continues_and_a_failed_batch_puts_the_others_back() {
    // 3 hosts, one session at a time: every phase detaches and attaches.
    let p = FleetStage::new(
        3,
        "rolling = { batch = 1, canary = 1, pause = \"confirm\" }",
        |c| {
            short_timeouts(c.replace(
                "BIND = \"127.0.0.1\" }",
                "BIND = \"127.0.0.1\", FAIL_ON_START = \"{{ 'yes' if host == 'app3' and version == '2.0.0' else 'no' }}\" }",
            ))
        },
    );
    p.provision();
    let one = ["--parallel", "1"];
    let first = ok(p.deploy_with("1.0.0", &one));
    assert_eq!(states(&p, &first), ["updated", "waiting", "waiting"]);
    // The canary's lock outlived every session: --continue takes it over.
    let cont = ok(p.run(&["--json", "deploy", "fleet", "--continue", "--parallel", "1"]));
    assert_eq!(states(&p, &cont), ["updated"; 3]);

    ok(p.deploy_with("2.0.0", &one));
    let out = p.run(&["--json", "deploy", "fleet", "--continue", "--parallel", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(states(&p, &out), ["reverted"; 3], "{}", text(&out));
    let (code, status) = p.status_json();
    assert_eq!(code, 0, "{status}");
    assert!(status["pending_canary"].is_null(), "{status}");
    for host in p.fleet.hosts() {
        assert_eq!(
            host_field(&status, &host)["status"]["reported_version"],
            "1.0.0",
            "{status}"
        );
        assert_eq!(lock_on(&p, &host), "", "{host} still locked");
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_second_interrupt_names_the_hosts_whose_detached_locks_it_leaves_behind() {
    let p = four_hosts_one_session_at_a_time();
    let current = |host: &str| current_on(&p, host);
    let before = current("app1");
    let child = p.spawn_deploy(
        "2.0.0",
        &["--parallel", "1", "--env", "STARTUP_DELAY_MS=3000"],
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(120);
    // app1 is switching (its release prepared, the others' locks detached).
    while current("app1") == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..2 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().expect("deploy output");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let said = text(&out);
    // Every waiting host is named: as locked with no connection open, or,
    // when the stop after the first interrupt had already reopened its
    // session to release the lock, by that session's line.
    let mut detached = Vec::new();
    for host in ["app2", "app3", "app4"] {
        if said.contains(&format!("[{host}] locked with no connection open"))
            && said.contains(&format!("`shipjar unlock STAGE --hosts {host}`"))
        {
            detached.push(host);
        } else if !said.contains(&format!("[{host}] ")) {
            // Not named: its lock was already released by the stop.
            assert!(
                !lock_on(&p, host).contains("\"pid\""),
                "{host} is locked and not named:\n{said}"
            );
        }
    }
    // What it said holds: those locks are there until unlocked.
    for host in detached {
        assert!(lock_on(&p, host).contains("\"pid\""), "{host}");
    }
    ok(p.run(&["unlock", "fleet"]));
}
