//! `examples/clojure-jetty`, the Clojure reference service, for real: built
//! offline with Maven and with Leiningen from Debian's packaged libraries, run
//! by hand, and deployed through the whole `shipjar deploy local` pipeline.
//!
//! The Debian packages these need are installed by `./run-tests` when it runs
//! as root (as CI does); elsewhere a missing one fails the test, naming it.

mod common;
use common::{exited_saying, ok};
#[path = "support/fleet.rs"]
mod fleet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{free_port, http_get, shipjar_bin, text, unique_secret};

/// The service name in the example's `shipjar.toml`.
const NAME: &str = "inventory";
/// The example's fixed port, replaced by a free one in each copy.
const EXAMPLE_PORT: &str = "18090";
/// Where Maven's assembly puts the uberjar.
const MAVEN_JAR: &str = "target/inventory-1.0.0-standalone.jar";
/// Where Leiningen puts the uberjar (`:target-path "target/lein"`).
const LEIN_JAR: &str = "target/lein/inventory-1.0.0-standalone.jar";
/// The AOT classes of the app's main namespace, `inventory.main`.
const MAIN_CLASSES: [&str; 2] = ["inventory/main.class", "inventory/main__init.class"];

/// Builds share `~/.m2`, which Maven does not lock: one build at a time.
static BUILDS: Mutex<()> = Mutex::new(());

/// What the example's builds need, as (path that must exist, Debian package).
const NEEDS: [(&str, &str); 12] = [
    ("/usr/bin/java", "default-jdk-headless"),
    ("/usr/bin/mvn", "maven"),
    ("/usr/bin/lein", "leiningen"),
    (
        "/usr/share/maven-repo/com/theoryinpractise/clojure-maven-plugin",
        "libclojure-maven-plugin-java",
    ),
    (
        "/usr/share/maven-repo/org/apache/maven/plugins/maven-assembly-plugin/3.4.2",
        "libmaven-assembly-plugin-java",
    ),
    (
        "/usr/share/maven-repo/org/apache/maven/plugins/maven-jar-plugin/3.3.0",
        "libmaven-jar-plugin-java",
    ),
    (
        "/usr/share/maven-repo/org/clojure/clojure/1.11.1",
        "libclojure-java",
    ),
    (
        "/usr/share/maven-repo/ring/ring-jetty-adapter/1.8.2",
        "libring-jetty-adapter-clojure",
    ),
    (
        "/usr/share/maven-repo/ring/ring-core/1.8.2",
        "libring-core-clojure",
    ),
    (
        "/usr/share/maven-repo/org/clojure/tools.logging/1.2.4",
        "libtools-logging-clojure",
    ),
    (
        "/usr/share/maven-repo/org/clojure/data.json/2.4.0",
        "libdata-json-clojure",
    ),
    (
        "/usr/share/maven-repo/ch/qos/logback/logback-classic/1.2.11",
        "liblogback-java",
    ),
];

/// What `mvn deploy` needs besides the build, as (path, Debian package).
const DEPLOY_NEEDS: [(&str, &str); 2] = [
    (
        "/usr/share/maven-repo/org/apache/maven/plugins/maven-install-plugin/3.1.0",
        "libmaven-install-plugin-java",
    ),
    (
        "/usr/share/maven-repo/org/apache/maven/plugins/maven-deploy-plugin/3.0.0",
        "libmaven-deploy-plugin-java",
    ),
];

/// Fails the test with the list of missing Debian packages, if any.
fn require_packages() {
    common::require_packages("examples/clojure-jetty", &NEEDS);
}

/// The repository's `examples/clojure-jetty`.
fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clojure-jetty")
}

/// A fresh copy of the example in a temp dir.
fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("shipjar-clojure-")
        .tempdir()
        .expect("tempdir");
    common::copy_tree(&example_dir(), dir.path());
    dir
}

/// Runs a build command in `dir`, one at a time, and asserts it succeeded.
fn build(dir: &Path, program: &str, args: &[&str]) -> Duration {
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed:\n{}",
        args.join(" "),
        text(&out)
    );
    started.elapsed()
}

/// The entry names of a jar, listed by the JDK's `jar` tool.
fn jar_entries(jar: &Path) -> Vec<String> {
    let out = Command::new("jar")
        .arg("tf")
        .arg(jar)
        .output()
        .expect("run jar tf");
    assert!(
        out.status.success(),
        "jar tf {}: {}",
        jar.display(),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The app's class files with Clojure's generated numbers taken out
/// (`main$fn__1060.class` -> `main$fn__.class`), so that two compilations compare.
fn app_classes(entries: &[String]) -> Vec<String> {
    let mut classes: Vec<String> = entries
        .iter()
        .filter(|e| e.starts_with("inventory/") && e.ends_with(".class"))
        .map(|e| {
            let mut out = String::with_capacity(e.len());
            let mut chars = e.chars().peekable();
            while let Some(c) = chars.next() {
                out.push(c);
                if c == '_' && out.ends_with("__") {
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                }
            }
            out
        })
        .collect();
    classes.sort();
    classes.dedup();
    classes
}

/// A JVM started by a test; killed on drop if the test did not stop it.
struct Jvm(Child);

impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Starts `java -jar JAR` with a config dir holding `service.properties`, checks
/// that it becomes healthy and reports its version, then stops it with SIGTERM
/// during a slow request and checks that the request is answered and the JVM
/// exits as it does after a clean SIGTERM (143). Returns the start-to-healthy time.
fn run_by_hand(jar: &Path, work: &Path) -> Duration {
    let config = work.join("config");
    std::fs::create_dir_all(&config).expect("mkdir config");
    std::fs::write(
        config.join("service.properties"),
        "name=inventory\nversion=by-hand-1\n",
    )
    .expect("write service.properties");
    let port = free_port();
    let started = Instant::now();
    let mut jvm = Jvm(Command::new("java")
        .arg("-jar")
        .arg(jar)
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .env("SHIPJAR_CONFIG_DIR", &config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start java"));
    let healthy = wait_for(Duration::from_secs(60), || {
        matches!(http_get(port, "/health"), Some((200, _)))
    });
    let took = started.elapsed();
    assert!(healthy, "{} never became healthy", jar.display());
    let (status, body) = http_get(port, "/version").expect("/version answers");
    assert_eq!(status, 200, "{body}");
    let version: serde_json::Value = serde_json::from_str(&body).expect("/version is JSON");
    assert_eq!(version["version"], "by-hand-1", "{body}");
    // A request in flight when SIGTERM arrives still gets its answer.
    let in_flight = std::thread::spawn(move || http_get(port, "/slow?ms=1500"));
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jvm.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("send SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = jvm.0.try_wait().expect("wait for java") {
            break status;
        }
        assert!(Instant::now() < deadline, "java did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(143), "exit after SIGTERM");
    let answer = in_flight.join().expect("slow request thread");
    assert_eq!(answer, Some((200, "slept 1500 ms\n".to_string())));
    took
}

#[test]
fn maven_and_leiningen_build_working_uberjars_with_the_same_aot_classes() {
    require_packages();
    let dir = example_copy();
    let maven = build(dir.path(), "sh", &["build.sh"]);
    let lein = build(dir.path(), "lein", &["-o", "uberjar"]);
    eprintln!("build times: maven {maven:?}, leiningen {lein:?}");

    let mut classes = Vec::new();
    for jar in [MAVEN_JAR, LEIN_JAR] {
        let path = dir.path().join(jar);
        let entries = jar_entries(&path);
        for class in MAIN_CLASSES {
            assert!(entries.iter().any(|e| e == class), "{jar} lacks {class}");
        }
        let sources: Vec<&String> = entries
            .iter()
            .filter(|e| e.starts_with("inventory/") && !e.ends_with(".class"))
            .filter(|e| !e.ends_with('/'))
            .collect();
        assert!(
            sources.is_empty(),
            "{jar} holds the app's sources beside its AOT classes: {sources:?}"
        );
        // Loading a namespace from source would mean it was not AOT-compiled.
        assert!(
            entries
                .iter()
                .any(|e| e == "ring/adapter/jetty__init.class"),
            "{jar}: Ring's Jetty adapter is not AOT-compiled"
        );
        classes.push(app_classes(&entries));
        let size = std::fs::metadata(&path).expect("jar size").len();
        let work = tempfile::tempdir().expect("tempdir");
        let healthy = run_by_hand(&path, work.path());
        eprintln!("{jar}: {size} bytes, healthy {healthy:?} after `java -jar`");
    }
    assert_eq!(
        classes[0], classes[1],
        "Maven and Leiningen compiled different app classes"
    );
    assert!(classes[0].len() > 10, "{:?}", classes[0]);
}

/// A copy of the example on a free port, deployed to its own `local` root.
struct Deployed {
    dir: tempfile::TempDir,
    port: u16,
    secret: String,
}

impl Deployed {
    fn new() -> Deployed {
        let dir = example_copy();
        let port = free_port();
        let path = dir.path().join("shipjar.toml");
        let config = std::fs::read_to_string(&path)
            .expect("read config")
            .replace(EXAMPLE_PORT, &port.to_string())
            .replace("timeout = \"20s\"", "timeout = \"10s\"");
        std::fs::write(&path, config).expect("write config");
        Deployed {
            dir,
            port,
            secret: unique_secret(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join(".shipjar/local")
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.root().join("var/lib").join(NAME).join("current"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(shipjar_bin())
            .arg("-C")
            .arg(self.dir.path())
            .args(args)
            .env("INVENTORY_DB_PASSWORD", &self.secret)
            .stdin(Stdio::null())
            .output()
            .expect("run shipjar")
    }

    /// `/version`'s `version`, if the service answers.
    fn served_version(&self) -> Option<String> {
        let (status, body) = http_get(self.port, "/version")?;
        if status != 200 {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(&body).ok()?;
        value["version"].as_str().map(str::to_string)
    }
}

impl Drop for Deployed {
    fn drop(&mut self) {
        // Stop whatever this test started, even when it failed.
        let _ = Command::new(shipjar_bin())
            .args(["service", "stop", NAME, "--root"])
            .arg(self.root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let pidfile = self
            .root()
            .join("run")
            .join(NAME)
            .join(format!("{NAME}.pid"));
        common::host::kill_recorded_group(&pidfile);
    }
}

/// The last line of a `--json` run: its result object.
fn json_result(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("null");
    serde_json::from_str(last).unwrap_or(serde_json::Value::Null)
}

#[test]
fn deploy_builds_serves_its_version_and_a_failing_release_is_reverted() {
    require_packages();
    let p = Deployed::new();
    let first = {
        let _one_build_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        p.run(&["--json", "deploy", "local"])
    };
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let result = json_result(&first);
    let version = result["version"]
        .as_str()
        .unwrap_or_else(|| panic!("no version in {result}"))
        .to_string();
    assert_eq!(
        result["hosts"][0]["activation"]["reported_version"],
        version.as_str()
    );
    assert_eq!(http_get(p.port, "/health"), Some((200, "ok\n".to_string())));
    assert_eq!(p.served_version().as_deref(), Some(version.as_str()));
    let good = p.current().expect("current release");

    // The database config reached the service; the password did not leave it.
    let (status, config) = http_get(p.port, "/config").expect("/config answers");
    assert_eq!(status, 200, "{config}");
    assert!(
        config.contains("jdbc:postgresql://127.0.0.1:5432/inventory"),
        "{config}"
    );
    assert!(config.contains("\"db_password_set\":true"), "{config}");
    assert!(!config.contains(&p.secret), "/config leaks the password");

    // The stage's logging config is in the release and in use: requests are logged at DEBUG.
    let logback = p
        .root()
        .join("var/lib")
        .join(NAME)
        .join("releases")
        .join(&good)
        .join("config/logback.xml");
    let logback = std::fs::read_to_string(&logback).expect("logback.xml in the release");
    assert!(logback.contains("logging for stage local"), "{logback}");
    let log_file = p.root().join("var/log").join(NAME).join("console.log");
    let logged = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&log_file).is_ok_and(|l| l.contains("GET /config -> 200"))
    });
    assert!(
        logged,
        "{}",
        std::fs::read_to_string(&log_file).unwrap_or_default()
    );

    // A release that fails at start is reverted; the good one keeps serving.
    let failed = p.run(&[
        "deploy",
        "local",
        "--skip-build",
        "--env",
        "FAIL_ON_START=1",
    ]);
    let all = exited_saying(&failed, 1, "FAILED at step `health`");
    assert!(all.contains("FAIL_ON_START is set"), "{all}");
    assert!(
        all.contains(&format!(
            "back on release {good} (version {version}), healthy"
        )),
        "{all}"
    );
    assert_eq!(p.current().as_deref(), Some(good.as_str()));
    assert_eq!(http_get(p.port, "/health"), Some((200, "ok\n".to_string())));
    assert_eq!(p.served_version().as_deref(), Some(version.as_str()));

    let status = p.run(&["--json", "status", "local"]);
    let status_json = json_result(&status);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let host = &status_json["hosts"][0];
    assert_eq!(host["flags"], serde_json::json!([]), "{status_json}");
    assert_eq!(host["status"]["current"]["id"], good.as_str());
    assert_eq!(host["status"]["reported_version"], version.as_str());

    for out in [&first, &failed, &status] {
        assert!(
            !text(out).contains(&p.secret),
            "secret printed:\n{}",
            text(out)
        );
    }
}

/// `/version`'s `version` from `ip:port`, from outside the host.
fn version_at(ip: &str, port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /version HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value["version"].as_str().map(str::to_string)
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn the_full_pipeline_deploys_to_three_hosts_and_a_failing_release_is_reverted_everywhere() {
    fleet::require_root();
    require_packages();
    let hosts = fleet::Fleet::new(3);
    let dir = example_copy();
    let secret = unique_secret();
    let path = dir.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&path)
        .expect("read config")
        .replace("BIND = \"127.0.0.1\"", "BIND = \"0.0.0.0\"")
        + &format!(
            "\n[stages.fleet]\nhosts = [{}]\nssh_config = \"{}\"\nvars = {{ db_url = \"jdbc:postgresql://db/inventory\", db_user = \"inventory\" }}\nsecrets = {{ db_password = {{ env = \"INVENTORY_DB_PASSWORD\" }} }}\n",
            hosts
                .hosts()
                .iter()
                .map(|h| format!("\"{h}\""))
                .collect::<Vec<_>>()
                .join(", "),
            hosts.ssh_config().display()
        );
    std::fs::write(&path, config).expect("write config");
    // The stage picks deploy/logback-<stage>.xml.
    std::fs::copy(
        dir.path().join("deploy/logback-production.xml"),
        dir.path().join("deploy/logback-fleet.xml"),
    )
    .expect("copy logging config");
    let run = |args: &[&str]| {
        Command::new(shipjar_bin())
            .arg("-C")
            .arg(dir.path())
            .args(args)
            .env("INVENTORY_DB_PASSWORD", &secret)
            .stdin(Stdio::null())
            .output()
            .expect("run shipjar")
    };
    ok(run(&["provision", "fleet"]));
    let out = {
        let _one_build_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        run(&["--json", "deploy", "fleet"])
    };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let version = json_result(&out)["version"]
        .as_str()
        .expect("version")
        .to_string();
    for host in hosts.hosts() {
        assert_eq!(
            version_at(&hosts.ip(&host), 18090).as_deref(),
            Some(version.as_str()),
            "{host}"
        );
    }
    let failed = run(&[
        "deploy",
        "fleet",
        "--skip-build",
        "--env",
        "FAIL_ON_START=1",
    ]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    for host in hosts.hosts() {
        assert_eq!(
            version_at(&hosts.ip(&host), 18090).as_deref(),
            Some(version.as_str()),
            "{host} after the failed release"
        );
    }
    let all = text(&failed);
    assert!(!all.contains(&secret), "the secret was printed");
    assert!(all.contains("is now back on release"), "{all}");
}

/// `config` with `[service] repl` on `port`.
fn with_repl(config: &str, port: u16) -> String {
    config.replacen(
        "[service]\n",
        &format!("[service]\nrepl = {{ port = {port} }}\n"),
        1,
    )
}

/// Runs `shipjar ARGS` in `dir` with `input` on its stdin (then closed); its output.
fn run_with_input(dir: &Path, secret: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(shipjar_bin())
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("INVENTORY_DB_PASSWORD", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shipjar");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write input");
    }
    let pid = child.id() as i32;
    // Every wait has a deadline: a REPL that never answers must not hang the suite.
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let out = child.wait_with_output().expect("wait for shipjar");
    drop(watchdog);
    out
}

const REPL_INPUT: &str = "(+ 1 2)\n(System/getProperty \"user.name\")\n";

#[test]
fn repl_on_local_answers_as_the_service_on_loopback() {
    require_packages();
    let p = Deployed::new();
    let repl_port = free_port();
    let path = p.dir.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, with_repl(&config, repl_port)).expect("write config");
    let out = {
        let _one_build_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        p.run(&["deploy", "local"])
    };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run_with_input(p.dir.path(), &p.secret, &["repl", "local"], REPL_INPUT);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(said.contains("user=> 3\n"), "{said}");
    // On `local` the service runs as whoever runs shipjar.
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .expect("this user")
        .name;
    assert!(said.contains(&format!("user=> \"{me}\"")), "{said}");
    // Bound to loopback only: the socket the JVM listens on for the REPL.
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    let hex = format!(":{repl_port:04X} ");
    let lines: Vec<&str> = listening
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").contains(&hex))
        })
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .collect();
    assert!(!lines.is_empty(), "nothing listens on {repl_port}");
    for line in lines {
        let local = line.split_whitespace().nth(1).unwrap_or_default();
        // 127.0.0.1, or the same as an IPv4-mapped IPv6 address.
        assert!(
            local.starts_with("0100007F:")
                || local.starts_with("0000000000000000FFFF00000100007F:"),
            "REPL bound beyond loopback: {line}"
        );
    }
    // --port on local: nothing to forward, it says where to connect.
    let out = ok(p.run(&["repl", "local", "--port", "7888"]));
    assert!(
        text(&out).contains(&format!("127.0.0.1:{repl_port}")),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn repl_on_a_host_goes_through_an_ssh_forward_and_answers_as_the_service_user() {
    fleet::require_root();
    require_packages();
    let hosts = fleet::Fleet::new(1);
    let dir = example_copy();
    let secret = unique_secret();
    let repl_port = 5555;
    let path = dir.path().join("shipjar.toml");
    let config = with_repl(
        &std::fs::read_to_string(&path).expect("read config"),
        repl_port,
    ) + &format!(
        "\n[stages.fleet]\nhosts = [\"{}\"]\nssh_config = \"{}\"\nvars = {{ db_url = \"jdbc:postgresql://db/inventory\", db_user = \"inventory\" }}\nsecrets = {{ db_password = {{ env = \"INVENTORY_DB_PASSWORD\" }} }}\n",
        hosts.hosts()[0],
        hosts.ssh_config().display()
    );
    std::fs::write(&path, config).expect("write config");
    std::fs::copy(
        dir.path().join("deploy/logback-production.xml"),
        dir.path().join("deploy/logback-fleet.xml"),
    )
    .expect("copy logging config");
    let run = |args: &[&str]| {
        Command::new(shipjar_bin())
            .arg("-C")
            .arg(dir.path())
            .args(args)
            .env("INVENTORY_DB_PASSWORD", &secret)
            .stdin(Stdio::null())
            .output()
            .expect("run shipjar")
    };
    ok(run(&["provision", "fleet"]));
    let out = {
        let _one_build_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        run(&["deploy", "fleet"])
    };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let host = hosts.hosts()[0].clone();
    // Not reachable from outside the host: it listens on its loopback only.
    assert!(
        std::net::TcpStream::connect((hosts.ip(&host).as_str(), repl_port)).is_err(),
        "the REPL answers on the host's network address"
    );

    let out = run_with_input(dir.path(), &secret, &["repl", "fleet"], REPL_INPUT);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(said.contains("user=> 3\n"), "{said}");
    assert!(said.contains("user=> \"inventory\""), "{said}");

    // --port: the forward held open for an editor, which connects on its own.
    let local_port = free_port();
    let mut held = Command::new(shipjar_bin())
        .arg("-C")
        .arg(dir.path())
        .args(["repl", "fleet", "--port", &local_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run shipjar repl --port");
    let answered = (|| {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", local_port)) {
                break s;
            }
            if Instant::now() > deadline {
                return String::from("(no forward)");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
        let _ = stream.write_all(b"(* 6 7)\n");
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })();
    let _ = held.kill();
    let _ = held.wait();
    assert!(answered.contains("user=> 42"), "{answered}");
}

/// The CI flow: `mvn deploy` publishes the uberjar to a Maven repository
/// (nginx with WebDAV; Maven writes `.sha1`/`.md5` companions, no
/// `.sha256`), then a checkout with no build in it deploys that exact jar
/// with `deploy local --version`, the host downloading it itself.
#[test]
fn mvn_deploy_publishes_and_a_checkout_without_the_build_deploys_that_version() {
    require_packages();
    common::require_packages("examples/clojure-jetty", &DEPLOY_NEEDS);
    let repo = common::repository::Repository::start("127.0.0.1");
    let ci = example_copy();
    // Online only so that Maven may deploy: every download is still
    // mirrored to Debian's system repository (file://), as offline.
    let settings = std::fs::read_to_string(ci.path().join("settings.xml"))
        .expect("settings.xml")
        .replace("<offline>true</offline>", "<offline>false</offline>");
    std::fs::write(ci.path().join("settings-ci.xml"), settings).expect("settings-ci.xml");
    let target = format!(
        "-DaltDeploymentRepository=repo::default::{}/open",
        repo.base
    );
    build(
        ci.path(),
        "mvn",
        &["-s", "settings-ci.xml", "-q", "deploy", &target],
    );
    let published = repo.file("open/example/inventory/1.0.0/inventory-1.0.0-standalone.jar");
    assert_eq!(
        std::fs::read(&published).expect("the published uberjar"),
        std::fs::read(ci.path().join(MAVEN_JAR)).expect("the built uberjar"),
    );

    let d = Deployed::new();
    let _ = std::fs::remove_dir_all(d.dir.path().join("target"));
    let config = d.dir.path().join("shipjar.toml");
    let mut toml = std::fs::read_to_string(&config).expect("config");
    toml.push_str(&format!(
        "\n[artifact]\nrepository = \"{}/open\"\ngroup = \"example\"\n\
         artifact = \"inventory\"\nclassifier = \"standalone\"\n",
        repo.base
    ));
    std::fs::write(&config, toml).expect("config");
    let out = ok(d.run(&["--json", "deploy", "local", "--version", "1.0.0"]));
    let result = json_result(&out);
    let host = common::host_field(&result, "local");
    assert_eq!(host["artifact"], "downloaded", "{}", text(&out));
    assert!(
        !d.dir.path().join("target").exists(),
        "the deploy built the project"
    );
    assert_eq!(d.served_version().as_deref(), Some("1.0.0"));
}
