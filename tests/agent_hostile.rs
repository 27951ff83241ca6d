//! The agent is the only code that changes a host, so it must refuse hostile
//! requests on its own: these tests talk to `shipjar agent` directly, as a
//! compromised or buggy operator would.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

mod common;
use sha2::{Digest, Sha256};

struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Agent {
    fn start(root: &Path) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shipjar"))
            .args(["agent", "--root"])
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Agent {
            child,
            stdin,
            stdout,
            next_id: 1,
        }
    }

    /// Sends one request (plus raw bytes after it) and returns the result's response.
    fn call(&mut self, request: Value, bytes: &[u8]) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let envelope = json!({"protocol": common::protocol_version(), "id": id, "service": "demo", "request": request});
        writeln!(self.stdin, "{envelope}").expect("write request");
        self.stdin.write_all(bytes).expect("write bytes");
        self.stdin.flush().expect("flush");
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read answer");
            assert!(n > 0, "the agent closed its output");
            let message: Value = serde_json::from_str(&line).expect("answers are JSON");
            if message["kind"] == "result" {
                assert_eq!(message["id"], id);
                return message["response"].clone();
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn manifest(sha: &str, jar: &str, dest: &str) -> Value {
    json!({
        "format": 1, "id": "20261130-010000-000", "service": "demo", "version": "1",
        "artifact_sha256": sha, "jar": jar, "git_commit": null, "build_time": "t",
        "deployed_at": "t", "deployer": "me@box", "stage": "test", "host": "local",
        "run": {"argv": ["java", "-jar", "demo.jar"], "env": {}, "user": null},
        "health": {"check": {"kind": "none"}, "start_timeout_ms": 1000, "interval_ms": 1000},
        "version_check": null,
        "stop": {"timeout_ms": 1000},
        "files": [{"dest": dest, "secret": false, "sha256": null}],
    })
}

/// Begins a session holding the lock, with an artifact stored.
fn locked_session(root: &Path) -> (Agent, String) {
    let mut agent = Agent::start(root);
    let holder = json!({"deployer": "me@box", "pid": 1, "command": "test", "since": "t"});
    let begun = agent.call(
        json!({"type": "begin", "holder": holder, "artifact_sha256": null, "lease_ms": 60000, "prepare": null}),
        b"",
    );
    assert_eq!(begun["type"], "begun", "{begun}");
    let bytes = b"not really a jar";
    let sha: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stored = agent.call(
        json!({"type": "put_artifact", "sha256": sha, "size": bytes.len()}),
        bytes,
    );
    assert_eq!(stored["type"], "stored", "{stored}");
    (agent, sha)
}

#[test]
fn hostile_paths_in_a_manifest_are_refused_and_nothing_lands_outside_the_release() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let outside = base.path().join("planted");
    let cases = [
        (
            outside.to_string_lossy().into_owned(),
            "app.properties".to_string(),
        ),
        (
            "../../../../planted".to_string(),
            "app.properties".to_string(),
        ),
        ("lib/demo.jar".to_string(), "app.properties".to_string()),
        // Names shipjar writes in the release: the link would redirect the
        // RELEASE write into the artifact store.
        ("RELEASE".to_string(), "app.properties".to_string()),
        ("cds.json".to_string(), "app.properties".to_string()),
        (
            "demo.jar".to_string(),
            outside.to_string_lossy().into_owned(),
        ),
        ("demo.jar".to_string(), "../../../../planted".to_string()),
        ("demo.jar".to_string(), "a/./b".to_string()),
        ("demo.jar".to_string(), "a\u{0}b".to_string()),
        ("demo.jar".to_string(), String::new()),
    ];
    for (jar, dest) in cases {
        let (mut agent, sha) = locked_session(&root);
        let files = json!([{"dest": dest, "secret": false, "content": "x=1\n"}]);
        let answer = agent.call(
            json!({"type": "prepare", "manifest": manifest(&sha, &jar, &dest), "files": files}),
            b"",
        );
        assert_eq!(
            answer["type"], "error",
            "jar {jar:?}, dest {dest:?}: {answer}"
        );
        assert_eq!(answer["step"], "prepare", "{answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("invalid jar name") || message.contains("invalid config file path"),
            "{message}"
        );
        assert!(
            !outside.exists(),
            "jar {jar:?}, dest {dest:?} planted a file outside"
        );
        let stored = root.join(format!("var/lib/demo/artifacts/{sha}.jar"));
        assert_eq!(
            std::fs::read(&stored).expect("the stored artifact"),
            b"not really a jar",
            "jar {jar:?}: the stored artifact was overwritten"
        );
        let releases = root.join("var/lib/demo/releases");
        let left: Vec<_> = std::fs::read_dir(&releases)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "a refused release left {left:?}");
        let finished = agent.call(json!({"type": "finish", "keep": null}), b"");
        assert_eq!(finished["type"], "finished", "{finished}");
    }
}

#[test]
fn a_stored_artifact_that_no_longer_matches_its_sha256_is_uploaded_again() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let (mut agent, sha) = locked_session(&root);
    let _ = agent.call(json!({"type": "finish", "keep": null}), b"");
    let stored = root.join(format!("var/lib/demo/artifacts/{sha}.jar"));
    std::fs::write(&stored, b"{\"format\": 1}").expect("corrupt the stored artifact");
    let mut agent = Agent::start(&root);
    let holder = json!({"deployer": "me@box", "pid": 1, "command": "test", "since": "t"});
    let begun = agent.call(
        json!({"type": "begin", "holder": holder, "artifact_sha256": sha, "lease_ms": 60000, "prepare": null}),
        b"",
    );
    assert_eq!(begun["type"], "begun", "{begun}");
    assert_eq!(begun["has_artifact"], false, "{begun}");
    assert!(!stored.exists(), "the corrupt artifact was kept");
}

#[test]
fn a_hostile_release_id_is_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let (mut agent, sha) = locked_session(&root);
    for id in ["../../x", "/tmp/x", ".hidden", "a/b", ""] {
        let mut m = manifest(&sha, "demo.jar", "app.properties");
        m["id"] = json!(id);
        let answer = agent.call(json!({"type": "prepare", "manifest": m, "files": []}), b"");
        assert_eq!(answer["type"], "error", "id {id:?}: {answer}");
        // A failed request stops the session; start a new one for the next case.
        let _ = agent.call(json!({"type": "finish", "keep": null}), b"");
        agent = locked_session(&root).0;
    }
}

#[test]
fn a_lease_lost_while_a_request_runs_turns_its_answer_into_an_error() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let mut agent = Agent::start(&root);
    let holder = json!({"deployer": "me@box", "pid": 1, "command": "test", "since": "t"});
    // A short lease: the agent renews it every 100 ms while a request runs.
    let begun = agent.call(
        json!({"type": "begin", "holder": holder, "artifact_sha256": null, "lease_ms": 300, "prepare": null}),
        b"",
    );
    assert_eq!(begun["type"], "begun", "{begun}");
    let bytes = vec![7u8; 4096];
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let envelope = json!({"protocol": common::protocol_version(), "id": 99, "service": "demo",
        "request": {"type": "put_artifact", "sha256": sha, "size": bytes.len()}});
    writeln!(agent.stdin, "{envelope}").unwrap();
    agent.stdin.write_all(&bytes[..100]).unwrap();
    agent.stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    // Meanwhile another deploy takes the lock over, under the same mutex the
    // agent uses, as another agent would.
    let run_dir = std::fs::File::open(root.join("run/demo/locks/deploy.lock")).unwrap();
    run_dir.lock().unwrap();
    let other = json!({
        "holder": {"deployer": "rival@box", "pid": 2, "command": "shipjar deploy", "since": "t"},
        "token": "rival", "expires_at_ms": u64::MAX / 2,
    });
    let tmp = root.join("run/demo/.rival");
    std::fs::write(&tmp, other.to_string()).unwrap();
    std::fs::rename(&tmp, root.join("run/demo/deploy.lock")).unwrap();
    run_dir.unlock().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    agent.stdin.write_all(&bytes[100..]).unwrap();
    agent.stdin.flush().unwrap();
    let answer = loop {
        let mut line = String::new();
        assert!(
            agent.stdout.read_line(&mut line).unwrap() > 0,
            "agent ended"
        );
        let message: Value = serde_json::from_str(&line).unwrap();
        if message["kind"] == "result" {
            break message["response"].clone();
        }
    };
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["kind"], "not_locked", "{answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(message.contains("taken over by rival@box"), "{message}");
    assert!(message.contains("while this request ran"), "{message}");
}

/// Root only (it runs `flock` as `nobody`); skipped with a message otherwise.
#[test]
#[ignore = "needs root"]
fn no_flock_by_another_user_holds_up_the_deploy_lock() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};
    let base = tempfile::tempdir().expect("tempdir");
    // Traversable by all, as `/` is.
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let holder = json!({"deployer": "me@box", "pid": 1, "command": "test", "since": "t"});
    let begin = json!({"type": "begin", "holder": holder, "artifact_sha256": null, "lease_ms": 60000, "prepare": null});
    // A first session makes the run dir and its locks, and lets go.
    let mut agent = Agent::start(&root);
    assert_eq!(agent.call(begin.clone(), b"")["type"], "begun");
    assert_eq!(
        agent.call(json!({"type": "finish", "keep": null}), b"")["type"],
        "finished"
    );
    drop(agent);

    // `nobody` flocks (or waits to flock) the run dir and every lock file
    // it can open, as `flock -x` would.
    let run_dir = root.join("run/demo");
    let mut targets = vec![run_dir.clone()];
    for dir in [run_dir.clone(), run_dir.join("locks")] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            targets.push(entry.path());
        }
    }
    let mut flocks = Vec::new();
    for target in &targets {
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["flock", "-x"])
            .arg(target)
            .args(["sleep", "60"])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("setpriv flock");
        flocks.push(KillOnDrop(child));
    }
    std::thread::sleep(Duration::from_millis(300));

    // The next deploy's `begin` answers at once.
    let (tx, rx) = std::sync::mpsc::channel();
    let root_for_agent = root.clone();
    std::thread::spawn(move || {
        let mut agent = Agent::start(&root_for_agent);
        let answer = agent.call(begin, b"");
        let _ = tx.send(answer);
        drop(agent);
    });
    let began = Instant::now();
    let answer = rx.recv_timeout(Duration::from_secs(10));
    let took = began.elapsed();
    drop(flocks);
    let answer = answer.expect("`begin` still waits on nobody's flock after 10 s");
    assert_eq!(answer["type"], "begun", "{answer}");
    assert!(took < Duration::from_secs(2), "`begin` took {took:?}");
}

/// A helper process killed (and reaped) on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_agent_whose_operator_is_gone_releases_the_lock_at_once() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let mut agent = Agent::start(&root);
    let holder = json!({"deployer": "me@box", "pid": 1, "command": "test", "since": "t"});
    let begun = agent.call(
        json!({"type": "begin", "holder": holder, "artifact_sha256": null, "lease_ms": 60000, "prepare": null}),
        b"",
    );
    assert_eq!(begun["type"], "begun", "{begun}");
    // The operator dies without `finish`: the agent's input ends (its
    // stdin is replaced by a closed one).
    let (_, reader) = std::os::unix::net::UnixStream::pair().expect("pair");
    drop(std::mem::replace(
        &mut agent.stdin,
        ChildStdin::from(std::os::fd::OwnedFd::from(reader)),
    ));
    let status = agent.child.wait().expect("the agent exits");
    assert!(status.success(), "{status}");
    // The next deploy finds the lock free, not a lease to wait out.
    let mut next = Agent::start(&root);
    let holder = json!({"deployer": "next@box", "pid": 2, "command": "test", "since": "t"});
    let begun = next.call(
        json!({"type": "begin", "holder": holder, "artifact_sha256": null, "lease_ms": 60000, "prepare": null}),
        b"",
    );
    assert_eq!(begun["type"], "begun", "{begun}");
    assert_eq!(begun["took_over"], serde_json::Value::Null, "{begun}");
}
