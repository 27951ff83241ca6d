//! A service under a temporary host root, driven through the real
//! `shipjar service` commands: hand-made releases (shell, python, or the
//! `examples/hello` JVM), and clean-up of every process a test learned about.
//!
//! Every test owns a [`Host`] whose `Drop` stops the service and, as a last
//! resort, SIGKILLs the processes named in its pidfile and state file (only
//! while they still have the start time seen), so a failing test leaves
//! nothing running.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The shipjar binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shipjar");

/// Longest any single shipjar invocation may take in these tests.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

pub use super::free_port;

/// Start time of `pid` (field 22 of /proc/PID/stat), `None` if gone or a zombie.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

pub fn alive(pid: i32) -> bool {
    start_ticks(pid).is_some()
}

/// SIGKILL to the process group a pidfile names on its first line, if any.
pub fn kill_recorded_group(pidfile: &Path) {
    if let Some(pid) = fs::read_to_string(pidfile)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// SIGKILL to `pid`, whatever became of it.
pub fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Waits until `pid` is gone or a zombie; panics after `limit`.
pub fn wait_gone(pid: i32, limit: Duration) {
    assert!(
        eventually(limit, || !alive(pid)),
        "pid {pid} still lives after {limit:?}"
    );
}

/// Waits until `cond` holds, at most `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion, killing it after [`COMMAND_LIMIT`].
pub fn run_limited(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn shipjar");
    let until = Instant::now() + COMMAND_LIMIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shipjar did not finish within {COMMAND_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect output")
}

/// Fails the test unless it runs as root (the tests that need it are
/// `#[ignore]`d; `./run-tests` runs them as root).
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (run-tests does)"
    );
}

/// Release settings for one test.
pub struct Spec {
    /// `run.argv`.
    pub argv: Vec<String>,
    /// `run.env` (besides `FROM_RELEASE`).
    pub env: Vec<(String, String)>,
    /// `health.check`.
    pub health: Value,
    /// `health.start_timeout_ms`.
    pub start_timeout_ms: u64,
    /// `stop.timeout_ms`.
    pub stop_timeout_ms: u64,
    /// `run.user`.
    pub user: Option<String>,
    /// Extra top-level manifest keys (`restart`, `logs`, …), merged over the base.
    pub extra: Value,
}

impl Spec {
    /// python's http.server on `port`.
    pub fn http_server(port: u16) -> Spec {
        Spec {
            argv: python_http(port),
            health: json!({"kind": "http", "url": format!("http://127.0.0.1:{port}/")}),
            start_timeout_ms: 10_000,
            stop_timeout_ms: 5_000,
            user: None,
            env: Vec::new(),
            extra: json!({}),
        }
    }

    /// `sh -c SCRIPT`.
    pub fn shell(script: &str, health: Value, start_timeout_ms: u64) -> Spec {
        Spec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            health,
            start_timeout_ms,
            stop_timeout_ms: 5_000,
            user: None,
            env: Vec::new(),
            extra: json!({}),
        }
    }
}

/// Extra JVM options that make the example start fast.
pub const HELLO_JAVA_OPTS: [&str; 3] = ["-Xmx64m", "-XX:TieredStopAtLevel=1", "-Xshare:auto"];

impl Spec {
    /// The `examples/hello` JVM on `port`, healthy on `/health`, with extra
    /// environment knobs (`CRASH_AFTER_S`, `IGNORE_SIGTERM`, …).
    pub fn hello(port: u16, knobs: &[(&str, &str)]) -> Spec {
        let mut argv = vec!["java".to_string()];
        argv.extend(HELLO_JAVA_OPTS.iter().map(|s| s.to_string()));
        argv.push("-jar".into());
        argv.push(super::hello_jar().to_string_lossy().into_owned());
        let mut env = vec![
            ("PORT".to_string(), port.to_string()),
            ("BIND".to_string(), "127.0.0.1".to_string()),
        ];
        env.extend(knobs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Spec {
            argv,
            env,
            health: json!({"kind": "http", "url": format!("http://127.0.0.1:{port}/health")}),
            start_timeout_ms: 20_000,
            stop_timeout_ms: 5_000,
            user: None,
            extra: json!({}),
        }
    }
}

impl Spec {
    /// `sh -c SCRIPT`, healthy once something listens on `port`.
    pub fn shell_on_port(script: &str, port: u16, start_timeout_ms: u64) -> Spec {
        Spec::shell(
            script,
            json!({"kind": "tcp", "port": port}),
            start_timeout_ms,
        )
    }

    /// A service that sleeps, with no health check.
    pub fn sleeper() -> Spec {
        Spec::shell("exec sleep 600", json!({"kind": "none"}), 5_000)
    }

    /// `sh -c SCRIPT` where `{server}` in `script` runs python's http.server
    /// on a free port, healthy as [`Spec::http_server`] is.
    pub fn http_script(script: &str) -> Spec {
        let port = free_port();
        let server = python_http(port).join(" ");
        Spec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                script.replace("{server}", &server),
            ],
            ..Spec::http_server(port)
        }
    }

    /// Runs `argv` directly.
    pub fn argv(argv: Vec<String>, health: Value, start_timeout_ms: u64) -> Spec {
        Spec {
            argv,
            ..Spec::shell("", health, start_timeout_ms)
        }
    }
}

/// python's http.server on 127.0.0.1:`port`.
pub fn python_http(port: u16) -> Vec<String> {
    [
        "python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One service under a temporary host root.
pub struct Host {
    dir: tempfile::TempDir,
    name: String,
    /// (pid, start ticks) of every process this test learned about, for the last-resort kill.
    seen: std::cell::RefCell<Vec<(i32, u64)>>,
}

impl Host {
    pub fn new(name: &str) -> Host {
        Host {
            dir: tempfile::tempdir().expect("tempdir"),
            name: name.to_string(),
            seen: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn lib(&self) -> PathBuf {
        self.root().join("var/lib").join(&self.name)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root().join("run").join(&self.name)
    }

    pub fn pidfile(&self) -> PathBuf {
        self.run_dir().join(format!("{}.pid", self.name))
    }

    pub fn log(&self) -> String {
        let path = self
            .root()
            .join("var/log")
            .join(&self.name)
            .join("console.log");
        fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Writes `releases/<id>/RELEASE` and points `current` at it.
    pub fn release(&self, id: &str, spec: &Spec) -> PathBuf {
        let dir = self.lib().join("releases").join(id);
        fs::create_dir_all(dir.join("config")).expect("release dir");
        fs::write(
            dir.join("config/service.properties"),
            format!("version=1.0.0\nrelease={id}\n"),
        )
        .expect("service.properties");
        let mut env = serde_json::Map::new();
        env.insert("FROM_RELEASE".into(), id.into());
        for (k, v) in &spec.env {
            env.insert(k.clone(), v.clone().into());
        }
        let mut manifest = json!({
            "format": 1,
            "id": id,
            "service": self.name,
            "version": "1.0.0",
            "artifact_sha256": "0".repeat(64),
            "jar": format!("{}.jar", self.name),
            "git_commit": null,
            "build_time": "2026-01-01T00:00:00Z",
            "deployed_at": "2026-01-01T00:00:00Z",
            "deployer": "test@localhost",
            "stage": "local",
            "host": "local",
            "run": {"argv": spec.argv, "env": env, "user": spec.user},
            "health": {
                "check": spec.health,
                "start_timeout_ms": spec.start_timeout_ms,
                "interval_ms": 1000
            },
            "version_check": null,
            "stop": {"timeout_ms": spec.stop_timeout_ms},
            "files": []
        });
        if let (Some(base), Some(extra)) = (manifest.as_object_mut(), spec.extra.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        fs::write(
            dir.join("RELEASE"),
            serde_json::to_vec_pretty(&manifest).expect("json"),
        )
        .expect("write RELEASE");
        let link = self.lib().join("current");
        let tmp = self.lib().join("current.tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("releases/{id}"), &tmp).expect("symlink");
        fs::rename(&tmp, &link).expect("switch current");
        dir
    }

    pub fn command(&self, verb: &str, json: bool) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["service", verb, &self.name, "--root"])
            .arg(self.root());
        if json {
            cmd.arg("--json");
        }
        cmd
    }

    pub fn run(&self, verb: &str, json: bool) -> Output {
        let out = run_limited(self.command(verb, json));
        self.remember();
        out
    }

    pub fn start(&self) -> Output {
        self.run("start", false)
    }

    /// Starts the service, which must succeed (else the test fails showing
    /// what the start said and the console log); the service pid.
    #[track_caller]
    pub fn started(&self) -> i32 {
        let out = self.start();
        assert_eq!(code(&out), 0, "{}\n{}", text(&out), self.log());
        self.service_pid().expect("pid")
    }

    /// A host whose service `name` runs `spec` as release `r1`, started
    /// (see [`Host::started`]); the service pid.
    #[track_caller]
    pub fn running(name: &str, spec: &Spec) -> (Host, i32) {
        let host = Host::new(name);
        host.release("r1", spec);
        let pid = host.started();
        (host, pid)
    }

    /// Starts the service where `orphan` runs unsupervised (its supervisor
    /// gone): the start must succeed, saying first that it replaced `orphan`
    /// (then `then`), which must be gone; the status after it, which must
    /// say running.
    #[track_caller]
    pub fn start_replacing(&self, orphan: i32, then: &str) -> Value {
        let out = self.start();
        assert_eq!(code(&out), 0, "{}\n{}", text(&out), self.log());
        stdout_starting(
            &out,
            &format!(
                "replaced an unsupervised service pid {orphan} (its supervisor was gone): \
                 terminated after SIGTERM\n{then}"
            ),
        );
        assert!(
            !alive(orphan),
            "the unsupervised pid {orphan} still runs next to the new service"
        );
        let (rc, status) = self.status_json();
        assert_eq!(rc, 0, "{status}");
        status
    }

    /// `service start` running in the background, its output piped.
    pub fn spawn_start(&self) -> Helper {
        let mut start = self.command("start", false);
        start
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Helper(start.spawn().expect("spawn start"))
    }

    /// Asserts the console log holds `needle`, showing the log otherwise.
    #[track_caller]
    pub fn assert_logged(&self, needle: &str) {
        let log = self.log();
        assert!(log.contains(needle), "{log}");
    }

    pub fn status_json(&self) -> (i32, Value) {
        let out = self.run("status", true);
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (code(&out), value)
    }

    /// Writes the supervisor's state file as a supervisor of this boot
    /// would, for release `r1` in `state`, with `records` (its `supervisor`
    /// and `service` entries) merged in.
    pub fn write_state(&self, state: &str, records: Value) {
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
        let mut file = json!({
            "boot_id": boot.trim(),
            "release": "r1",
            "release_dir": self.lib().join("releases/r1"),
            "state": state,
            "updated_at": "2026-01-01T00:00:00.000Z"
        });
        if let (Some(file), Some(records)) = (file.as_object_mut(), records.as_object()) {
            file.extend(records.clone());
        }
        fs::write(self.run_dir().join("supervisor.json"), file.to_string()).expect("state");
    }

    /// The service pid from the pidfile.
    pub fn service_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pidfile())
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The log's lines written by the supervisor (`[shipjar] …`), without timestamps.
    pub fn events(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once(" [shipjar] ").map(|(_, e)| e.to_string()))
            .collect()
    }

    /// Supervisor events with their timestamps.
    pub fn timed_events(&self) -> Vec<(std::time::SystemTime, String)> {
        self.log()
            .lines()
            .filter_map(|l| {
                let (time, event) = l.split_once(" [shipjar] ")?;
                let time = humantime::parse_rfc3339(time).ok()?;
                Some((time, event.to_string()))
            })
            .collect()
    }

    /// Reads a pid a test service wrote about itself, and tracks it for cleanup.
    pub fn marker_pid(&self, path: &Path) -> i32 {
        let pid = fs::read_to_string(path)
            .expect("marker file")
            .trim()
            .parse()
            .expect("pid in marker file");
        self.track(pid);
        pid
    }

    /// Remembers `pid` (with its start time) for the last-resort kill.
    pub fn track(&self, pid: i32) {
        if let Some(ticks) = start_ticks(pid) {
            let mut seen = self.seen.borrow_mut();
            if !seen.contains(&(pid, ticks)) {
                seen.push((pid, ticks));
            }
        }
    }

    /// Records the processes the pidfile and state file name, while they are ours.
    pub fn remember(&self) {
        let mut pids = Vec::new();
        if let Some(pid) = self.service_pid() {
            pids.push(pid);
        }
        if let Ok(text) = fs::read_to_string(self.run_dir().join("supervisor.json"))
            && let Ok(state) = serde_json::from_str::<Value>(&text)
        {
            for key in ["supervisor", "service"] {
                if let Some(pid) = state[key]["pid"].as_i64() {
                    pids.push(pid as i32);
                }
            }
        }
        for pid in pids {
            self.track(pid);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The polite way first; it also proves stop works after a failure.
        let _ = run_limited(self.command("stop", false));
        for &(pid, ticks) in self.seen.borrow().iter() {
            // Only a process that still has the start time we saw is ours.
            if start_ticks(pid) == Some(ticks) {
                // SAFETY: plain kill(2) on pids this test started.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// A helper process the test starts itself, killed on drop.
pub struct Helper(pub Child);

impl Helper {
    /// Waits for the process to end: its exit code and what it wrote to its
    /// (piped) stderr.
    pub fn finish(&mut self) -> (Option<i32>, String) {
        let status = self.0.wait().expect("the process ends");
        let mut err = String::new();
        if let Some(mut stderr) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        }
        (status.code(), err)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn text(out: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A run's stdout, which must begin with `prefix` (else the test fails showing it).
#[track_caller]
pub fn stdout_starting(out: &Output, prefix: &str) -> String {
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.starts_with(prefix), "{said}");
    said
}
