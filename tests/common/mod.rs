//! Test harness: a temporary copy of `examples/hello` on a free port, the real
//! `shipjar` binary, and clean-up of every process a test started.

#![allow(dead_code)]

pub mod host;
pub mod proxied;
pub mod repository;
pub mod secret_forms;
pub mod tls;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The shipjar binary under test.
pub fn shipjar_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shipjar")
}

/// The agent protocol version this build speaks (read from its source, so
/// a test that talks to the agent directly follows every bump).
pub fn protocol_version() -> u32 {
    let source = include_str!("../../src/protocol/mod.rs");
    source
        .lines()
        .find_map(|l| l.strip_prefix("pub const PROTOCOL_VERSION: u32 = "))
        .and_then(|rest| rest.trim_end_matches(';').trim().parse().ok())
        .expect("PROTOCOL_VERSION in src/protocol/mod.rs")
}

/// The repository's `examples/hello`.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello")
}

/// The hello jar, built once per test process into its own directory.
pub fn hello_jar() -> &'static Path {
    static JAR: OnceLock<PathBuf> = OnceLock::new();
    JAR.get_or_init(|| {
        let build_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("hello-build-{}", std::process::id()));
        let status = Command::new("sh")
            .arg(example_dir().join("build.sh"))
            .env("BUILD_DIR", &build_dir)
            .status()
            .expect("run examples/hello/build.sh");
        assert!(status.success(), "building examples/hello failed");
        build_dir.join("hello.jar")
    })
}

/// Writes a copy of the hello project into `dir` with an extra stage `stage`
/// for `hosts` reached through `ssh_config`; `edit` changes the example's config first.
pub fn write_fleet_project(
    dir: &Path,
    stage: &str,
    hosts: &[String],
    ssh_config: &Path,
    stage_extra: &str,
    edit: impl FnOnce(String) -> String,
) {
    let example = example_dir();
    std::fs::create_dir_all(dir.join("deploy")).expect("mkdir deploy");
    for entry in std::fs::read_dir(example.join("deploy")).expect("read deploy/") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join("deploy").join(entry.file_name()))
            .expect("copy template");
    }
    // The stage picks deploy/logging-<stage>.properties.
    std::fs::copy(
        dir.join("deploy/logging-production.properties"),
        dir.join(format!("deploy/logging-{stage}.properties")),
    )
    .expect("copy logging config");
    let hosts = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = edit(
        std::fs::read_to_string(example.join("shipjar.toml")).expect("example config"),
    ) + &format!(
        "\n[stages.{stage}]\nhosts = [{hosts}]\nssh_config = \"{}\"\nvars = {{ db_url = \"jdbc:postgresql://db/hello\", db_user = \"hello\" }}\nsecrets = {{ db_password = {{ env = \"HELLO_DB_PASSWORD\" }} }}\n{stage_extra}\n",
        ssh_config.display()
    );
    std::fs::write(dir.join("shipjar.toml"), config).expect("write config");
}

/// `shipjar -C DIR ARGS…` with `secret` as the database password in its
/// environment and no stdin, not yet run.
pub fn shipjar_in(dir: &Path, secret: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(shipjar_bin());
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .env("HELLO_DB_PASSWORD", secret)
        .stdin(Stdio::null());
    cmd
}

/// A new temp dir (named `prefix`…) holding a copy of the hello project
/// with a stage as [`write_fleet_project`] writes it.
pub fn new_fleet_project(
    prefix: &str,
    stage: &str,
    hosts: &[String],
    ssh_config: &Path,
    stage_extra: &str,
    edit: impl FnOnce(String) -> String,
) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir");
    write_fleet_project(dir.path(), stage, hosts, ssh_config, stage_extra, edit);
    dir
}

/// Copies `from` into `to`, recursively, skipping build output and deploy
/// roots (`target`, `.shipjar`).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == "target" || name == ".shipjar" {
            continue;
        }
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name)).expect("copy file");
        }
    }
}

/// Fails the test naming the Debian packages `what` needs that are not
/// installed: `needs` is (a path that must exist, the package that has it).
pub fn require_packages(what: &str, needs: &[(&str, &str)]) {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    assert!(
        missing.is_empty(),
        "{what} needs Debian packages that are not installed: {m}\n\
         install them (apt-get install {m}) or run ./run-tests as root, which installs them",
        m = missing.join(" ")
    );
}

/// A port nobody listens on right now, not handed out before in this test process.
pub fn free_port() -> u16 {
    // The kernel may hand out a port just released again: a test that asks
    // for several (a proxy's `listen` and its two instances) must get
    // distinct ones, and so must tests running side by side.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("find a free port");
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A secret value unique to one test, to scan output for.
pub fn unique_secret() -> String {
    format!("pw-{}-{}", std::process::id(), free_port())
}

/// Starts `cmd` (a deploy) with its stdout and stderr piped.
pub fn spawn_piped(mut cmd: Command) -> std::process::Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn deploy")
}

/// A copy of the hello project in a temp dir, deployed to its own `local` root.
pub struct Project {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// Port the service listens on.
    pub port: u16,
    /// The database password secret.
    pub secret: String,
}

impl Project {
    /// A project with the example's config, on a free port, with short timeouts.
    pub fn new() -> Project {
        Self::with_config(|c| c)
    }

    /// Like `new`, with the config text changed by `edit`.
    pub fn with_config(edit: impl FnOnce(String) -> String) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("shipjar-test-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let example = example_dir();
        std::fs::create_dir_all(dir.path().join("deploy")).expect("mkdir deploy");
        for entry in std::fs::read_dir(example.join("deploy")).expect("read deploy/") {
            let entry = entry.expect("entry");
            std::fs::copy(
                entry.path(),
                dir.path().join("deploy").join(entry.file_name()),
            )
            .expect("copy template");
        }
        let config = std::fs::read_to_string(example.join("shipjar.toml"))
            .expect("read example config")
            .replace("18080", &port.to_string())
            .replace("start_timeout = \"30s\"", "start_timeout = \"20s\"")
            .replace("timeout = \"15s\"", "timeout = \"5s\"");
        std::fs::write(dir.path().join("shipjar.toml"), edit(config)).expect("write config");
        Project {
            dir,
            port,
            secret: unique_secret(),
        }
    }

    /// The project directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The `local` stage's host root.
    pub fn root(&self) -> PathBuf {
        self.path().join(".shipjar/local")
    }

    /// `<root>/var/lib/hello`.
    pub fn lib(&self) -> PathBuf {
        self.root().join("var/lib/hello")
    }

    /// Replaces `@DIR@` in shipjar.toml with the project's directory.
    pub fn fill_in_dir(&self) {
        let file = self.path().join("shipjar.toml");
        let config = std::fs::read_to_string(&file).expect("read config");
        std::fs::write(
            &file,
            config.replace("@DIR@", &self.path().display().to_string()),
        )
        .expect("write config");
    }

    /// A `shipjar` command in this project with the secret in the environment.
    pub fn command(&self, args: &[&str]) -> Command {
        shipjar_in(self.path(), &self.secret, args)
    }

    /// Runs `shipjar ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run shipjar")
    }

    /// Runs `shipjar service VERB hello --root ROOT` with `extra` arguments after.
    pub fn service(&self, verb: &str, extra: &[&str]) -> Output {
        let root = self.root().to_string_lossy().into_owned();
        let mut args = vec!["service", verb, "hello", "--root", &root];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Deploys the prebuilt jar as `version`, with extra arguments.
    pub fn deploy(&self, version: &str, extra: &[&str]) -> Output {
        let jar = hello_jar().to_string_lossy().into_owned();
        let mut args = vec!["deploy", "local", "--artifact", &jar, "--version", version];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Starts a deploy of the prebuilt jar as `version`, with extra
    /// arguments, its output piped.
    pub fn spawn_deploy(&self, version: &str, extra: &[&str]) -> std::process::Child {
        let jar = hello_jar().to_string_lossy().into_owned();
        let mut args = vec!["deploy", "local", "--artifact", &jar, "--version", version];
        args.extend_from_slice(extra);
        spawn_piped(self.command(&args))
    }

    /// Starts a deploy of `version` whose service starts slowly, and returns
    /// once that deploy holds the lock.
    pub fn spawn_slow_deploy(&self, version: &str, startup_delay_ms: u32) -> std::process::Child {
        let delay = format!("STARTUP_DELAY_MS={startup_delay_ms}");
        let child = self.spawn_deploy(version, &["--env", &delay]);
        let lock = self.root().join("run/hello/deploy.lock");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&lock)
            .map(|t| t.is_empty())
            .unwrap_or(true)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the deploy never took the lock"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Like `deploy`, with `--json` output.
    pub fn deploy_json(&self, version: &str, extra: &[&str]) -> Output {
        let jar = hello_jar().to_string_lossy().into_owned();
        let mut args = vec![
            "--json",
            "deploy",
            "local",
            "--artifact",
            &jar,
            "--version",
            version,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// GETs a path of the service.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// The version the service reports, if it answers.
    pub fn served_version(&self) -> Option<String> {
        let (status, body) = self.get("/version")?;
        if status != 200 {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(&body).ok()?;
        value.get("version")?.as_str().map(str::to_string)
    }

    /// `revisions.log` lines.
    pub fn revisions(&self) -> Vec<String> {
        std::fs::read_to_string(self.lib().join("revisions.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Release ids on disk, oldest first.
    pub fn release_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.lib().join("releases"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// The release `current` points to.
    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.lib().join("current"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// `shipjar status local --json` parsed, with its exit code.
    pub fn status_json(&self) -> (i32, serde_json::Value) {
        let out = self.run(&["--json", "status", "local"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or("null");
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_str(last).unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Stop whatever this test started, even when it failed.
        let _ = Command::new(shipjar_bin())
            .args(["service", "stop", "hello", "--root"])
            .arg(self.root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Last resort: the pid the supervisor recorded, if it is still alive.
        host::kill_recorded_group(&self.root().join("run/hello/hello.pid"));
    }
}

/// A minimal HTTP GET against 127.0.0.1:port.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_at(([127, 0, 0, 1], port).into(), path, Duration::from_secs(10))
}

/// A minimal HTTP/1.0 GET of `path` on `addr`, waiting at most `read_timeout`
/// for the answer: its status and body.
pub fn http_get_at(
    addr: std::net::SocketAddr,
    path: &str,
    read_timeout: Duration,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(read_timeout)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.ip()
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The last JSON line of a run's stdout (the result of a `--json` command), or null.
pub fn last_json(out: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The entry of `host` in a result's `hosts`, or null.
pub fn host_field<'a>(result: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    result["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == host))
        .unwrap_or(&serde_json::Value::Null)
}

/// Writes a line to stderr past the test harness's capture (a suite's seed
/// and counts show in every run, passing or not).
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Fails listing every violation a suite recorded, `context` first.
pub fn assert_no_violations(context: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{context}{} violation(s):\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}

/// Whether the suite runs the scenario `name`: the environment variable
/// `only_var`, when set, is a comma-separated list of parts of names.
pub fn selected(only_var: &str, name: &str) -> bool {
    let only = std::env::var(only_var).unwrap_or_default();
    only.is_empty() || only.split(',').any(|o| name.contains(o))
}

/// The message of a caught panic.
pub fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// stdout and stderr of a run, for assertions and scans.
pub fn text(out: &Output) -> String {
    format!(
        "--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `out` when the run exited 0; otherwise the test fails showing its output.
#[track_caller]
pub fn ok(out: Output) -> Output {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    out
}

/// The text of a run (as [`text`] shows it) that exited `code`; otherwise
/// the test fails showing that text.
#[track_caller]
pub fn exited(out: &Output, code: i32) -> String {
    let said = text(out);
    assert_eq!(out.status.code(), Some(code), "{said}");
    said
}

/// The text of a run (as [`text`] shows it) that exited `code` and said
/// `needle`; otherwise the test fails showing that text.
#[track_caller]
pub fn exited_saying(out: &Output, code: i32, needle: &str) -> String {
    let said = exited(out, code);
    assert!(said.contains(needle), "{said}");
    said
}

/// Every regular file under `dir`, links not followed and the directories
/// named in `skip_dirs` not entered: its path, its name and its metadata.
pub fn files_under(dir: &Path, skip_dirs: &[&str]) -> Vec<(PathBuf, String, std::fs::Metadata)> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_dir() {
            if !skip_dirs.contains(&name.as_str()) {
                files.extend(files_under(&path, skip_dirs));
            }
        } else if meta.is_file() {
            files.push((path, name, meta));
        }
    }
    files
}

/// Reads lines until one contains `wanted`: what was read, that line
/// included. Only for a process that ends (and with it its stderr) within
/// deadlines of its own, which bound this wait.
pub fn wait_for_line(stderr: &mut impl std::io::BufRead, wanted: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "no line with {wanted:?} before the end:\n{seen}");
        seen.push_str(&line);
        if line.contains(wanted) {
            return seen;
        }
    }
}

/// The trimmed stdout of `out`, `command` run over SSH on `host`, which
/// must have succeeded; else the test fails showing its output and
/// `context()` (the host's logs).
#[track_caller]
pub fn ssh_succeeded(
    out: &Output,
    host: &str,
    command: &str,
    context: impl FnOnce() -> String,
) -> String {
    assert!(
        out.status.success(),
        "ssh {host} {command:?}: {}\n{}",
        text(out),
        context()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
