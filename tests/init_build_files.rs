//! `shipjar init` reads the build files exactly: fixture projects under
//! `tests/fixtures/init/` each give the exact artifact path, and on copies of
//! `examples/clojure-jetty` (Maven and Leiningen) `shipjar build` with the
//! written config finds exactly that file after a real offline build. As
//! root, `init` → `build` → `deploy local` works unedited (each deploy in a
//! network namespace of its own) on the Maven example, on a copy of
//! examples/hello with a bash `build.sh`, and on one that reads its config
//! path from `SERVICE_PROPERTIES`.

mod common;
use common::exited_saying;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use common::{shipjar_bin, text};

/// Maven builds share `~/.m2`, which Maven does not lock: one build at a time.
static BUILDS: Mutex<()> = Mutex::new(());

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/init")
}

/// A copy of `dir` in a fresh temp dir (outside any git work tree).
fn copy_of(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("shipjar-init-")
        .tempdir()
        .expect("tempdir");
    common::copy_tree(dir, tmp.path());
    tmp
}

fn shipjar(dir: &Path, args: &[&str]) -> Output {
    Command::new(shipjar_bin())
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("run shipjar")
}

/// Runs `init` in `dir` and returns the parsed project file and the output.
fn init(dir: &Path) -> (toml::Table, String) {
    let out = shipjar(dir, &["init"]);
    assert!(out.status.success(), "init failed: {}", text(&out));
    let written = std::fs::read_to_string(dir.join("shipjar.toml")).expect("shipjar.toml");
    (written.parse().expect("valid TOML"), text(&out))
}

fn build_key(config: &toml::Table, key: &str) -> String {
    config["build"][key]
        .as_str()
        .unwrap_or_else(|| panic!("[build] {key} missing"))
        .to_string()
}

#[test]
fn each_fixture_gives_the_exact_artifact_name_and_command() {
    // (fixture, service name, artifact, build command)
    let cases = [
        (
            "assembly-descriptor",
            "orders",
            "target/orders-api-standalone.jar",
            "mvn -q package -DskipTests",
        ),
        (
            "jar-with-dependencies",
            "billing",
            "target/billing-2.0.0-SNAPSHOT-jar-with-dependencies.jar",
            "mvn -o -s settings.xml -Daether.offline.protocols=file -q package",
        ),
        (
            "shade-classifier",
            "search",
            "target/search-1.2.0-all.jar",
            "./mvnw -q package -DskipTests",
        ),
        (
            "shade-final-name",
            "gateway",
            "target/gateway.jar",
            "mvn -q package -DskipTests",
        ),
        (
            "plain-jar",
            "plain-service",
            "target/Plain_Service-1.0.jar",
            "mvn -q package -DskipTests",
        ),
        (
            "lein-default",
            "reports",
            "target/reports-0.4.0-standalone.jar",
            "lein uberjar",
        ),
        (
            "lein-profile",
            "ledger",
            "target/uberjar/ledger-standalone.jar",
            "lein uberjar",
        ),
        (
            "tools-build",
            "catalog",
            "target/catalog-5.0.2-standalone.jar",
            "clojure -T:build uber",
        ),
    ];
    for (fixture, name, artifact, command) in cases {
        let dir = copy_of(&fixtures().join(fixture));
        let (config, out) = init(dir.path());
        assert_eq!(build_key(&config, "artifact"), artifact, "{fixture}: {out}");
        assert_eq!(build_key(&config, "command"), command, "{fixture}");
        assert_eq!(config["service"]["name"].as_str(), Some(name), "{fixture}");
        assert!(
            !build_key(&config, "artifact").contains('*'),
            "{fixture}: no glob when the build file tells the name"
        );
        // The written file is valid as a whole.
        let check = shipjar(dir.path(), &["check", "local"]);
        assert!(check.status.success(), "{fixture}: {}", text(&check));
    }
}

#[test]
fn outside_git_the_version_falls_back_to_the_build_files_and_says_so() {
    let dir = copy_of(&fixtures().join("jar-with-dependencies"));
    let (config, out) = init(dir.path());
    assert!(
        out.contains(
            "not a git repository: the version falls back to 2.0.0-SNAPSHOT, from pom.xml"
        ),
        "{out}"
    );
    let written = std::fs::read_to_string(dir.path().join("shipjar.toml")).unwrap();
    assert!(written.contains("# not a git repository: the version falls back to 2.0.0-SNAPSHOT"));
    let command = build_key(&config, "version_command");
    assert_eq!(
        command,
        "git describe --always --dirty 2>/dev/null || echo 2.0.0-SNAPSHOT"
    );
    // The command works without git in the folder.
    let version = Command::new("sh")
        .args(["-c", &command])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        "2.0.0-SNAPSHOT"
    );

    // Inside a git work tree: git describe, no fallback message.
    let dir = copy_of(&fixtures().join("jar-with-dependencies"));
    let git = Command::new("git")
        .args(["init", "-q"])
        .current_dir(dir.path())
        .status()
        .expect("git is installed");
    assert!(git.success());
    let (config, out) = init(dir.path());
    assert_eq!(
        build_key(&config, "version_command"),
        "git describe --always --dirty"
    );
    assert!(!out.contains("not a git repository"), "{out}");
}

#[test]
fn init_writes_config_templates_only_where_absent_and_health_and_version_defaults() {
    let dir = copy_of(&fixtures().join("lein-default"));
    std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
    std::fs::write(dir.path().join("deploy/database.properties"), "mine\n").unwrap();
    let (config, out) = init(dir.path());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("deploy/database.properties")).unwrap(),
        "mine\n",
        "an existing template is never overwritten"
    );
    for written in ["deploy/logback-local.xml", "deploy/logback-production.xml"] {
        assert!(dir.path().join(written).is_file(), "{written}: {out}");
        assert!(out.contains(&format!("wrote {written}")), "{out}");
    }
    assert!(!out.contains("wrote deploy/database.properties"));
    assert_eq!(
        config["health"]["url"].as_str(),
        Some("http://127.0.0.1:8080/health")
    );
    assert_eq!(config["version_check"]["key"].as_str(), Some("version"));
    let written = std::fs::read_to_string(dir.path().join("shipjar.toml")).unwrap();
    for entry in [
        "# template = \"deploy/logback-{{ stage }}.xml\"",
        "# template = \"deploy/database.properties\"",
        "# secret = true",
        "builtin = \"service-properties\"",
    ] {
        assert!(written.contains(entry), "missing {entry}");
    }
    // A second init changes nothing and says so.
    let again = shipjar(dir.path(), &["init"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
}

#[test]
fn a_broken_build_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pom.xml"),
        "<project><artifactId>x</artifactId>",
    )
    .unwrap();
    let out = shipjar(dir.path(), &["init"]);
    exited_saying(&out, 2, "pom.xml");
    assert!(!dir.path().join("shipjar.toml").exists());
}

/// What the real builds need, as (path that must exist, Debian package).
const NEEDS: [(&str, &str); 4] = [
    ("/usr/bin/mvn", "maven"),
    ("/usr/bin/lein", "leiningen"),
    (
        "/usr/share/maven-repo/com/theoryinpractise/clojure-maven-plugin",
        "libclojure-maven-plugin-java",
    ),
    (
        "/usr/share/maven-repo/ring/ring-jetty-adapter/1.8.2",
        "libring-jetty-adapter-clojure",
    ),
];

/// Fails the test with the list of missing Debian packages, if any.
fn require_packages() {
    common::require_packages("the clojure-jetty builds", &NEEDS);
}

/// A copy of examples/clojure-jetty without its shipjar.toml.
fn clojure_copy() -> tempfile::TempDir {
    let dir = copy_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clojure-jetty"));
    std::fs::remove_file(dir.path().join("shipjar.toml")).unwrap();
    dir
}

/// `shipjar build --json` in `dir`: the artifact it recorded.
fn build(dir: &Path) -> PathBuf {
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let out = shipjar(dir, &["--json", "build"]);
    assert!(out.status.success(), "build failed: {}", text(&out));
    let result = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("artifact").is_some())
        .expect("a build result");
    PathBuf::from(result["artifact"].as_str().expect("artifact path"))
}

#[test]
fn maven_clojure_example_init_then_build_finds_exactly_the_written_artifact() {
    require_packages();
    let dir = clojure_copy();
    let (config, out) = init(dir.path());
    assert_eq!(
        build_key(&config, "artifact"),
        "target/inventory-1.0.0-standalone.jar"
    );
    assert_eq!(build_key(&config, "command"), "/bin/sh build.sh");
    assert!(out.contains("assembly `standalone`"), "{out}");
    let built = build(dir.path());
    assert_eq!(
        built,
        dir.path().join("target/inventory-1.0.0-standalone.jar")
    );
    // The plain jar Maven also makes sits beside it: an exact path never picks it.
    assert!(dir.path().join("target/inventory-1.0.0.jar").is_file());
}

#[test]
fn leiningen_clojure_example_init_then_build_finds_exactly_the_written_artifact() {
    require_packages();
    for (variant, expected) in [
        // As shipped: `:target-path "target/lein"`.
        ("as shipped", "target/lein/inventory-1.0.0-standalone.jar"),
        // Without :target-path, Debian's Leiningen 2.10 writes to target/.
        (
            "default target path",
            "target/inventory-1.0.0-standalone.jar",
        ),
    ] {
        let dir = clojure_copy();
        for maven_file in ["pom.xml", "build.sh", "settings.xml"] {
            std::fs::remove_file(dir.path().join(maven_file)).unwrap();
        }
        if variant == "default target path" {
            let project = dir.path().join("project.clj");
            let text = std::fs::read_to_string(&project).unwrap();
            let edited: String = text
                .lines()
                .filter(|l| !l.contains(":target-path"))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_ne!(edited, text);
            std::fs::write(&project, edited).unwrap();
        }
        let (config, out) = init(dir.path());
        assert_eq!(build_key(&config, "artifact"), expected, "{variant}: {out}");
        assert_eq!(
            build_key(&config, "command"),
            "lein -o uberjar",
            "{variant}"
        );
        let built = build(dir.path());
        assert_eq!(built, dir.path().join(expected), "{variant}");
    }
}

/// A copy of examples/hello without its shipjar.toml: a project with no
/// build file, only `build.sh`.
fn hello_copy() -> tempfile::TempDir {
    let dir = copy_of(&common::example_dir());
    std::fs::remove_file(dir.path().join("shipjar.toml")).unwrap();
    dir
}

/// The service `init` named after the copy's directory, deployed on the
/// local stage: stopped when dropped, even when the test failed.
struct Deployed {
    dir: PathBuf,
    name: String,
}

impl Deployed {
    fn new(dir: &Path, config: &toml::Table) -> Deployed {
        let name = config["service"]["name"]
            .as_str()
            .expect("[service] name")
            .to_string();
        Deployed {
            dir: dir.to_path_buf(),
            name,
        }
    }

    /// `shipjar deploy local` in a network namespace of its own with only
    /// a loopback, so the port `init` writes (8080) cannot meet another
    /// test's service; the supervisor stays in it after the deploy.
    fn deploy(&self) -> Output {
        Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec \"$@\"",
                "sh",
            ])
            .arg(shipjar_bin())
            .arg("-C")
            .arg(&self.dir)
            .args(["deploy", "local"])
            .output()
            .expect("run unshare")
    }
}

impl Deployed {
    /// The service deployed (see [`Deployed::deploy`]), which must succeed.
    #[track_caller]
    fn deploy_ok(dir: &Path, config: &toml::Table) -> Deployed {
        let running = Deployed::new(dir, config);
        let deployed = running.deploy();
        assert!(
            deployed.status.success(),
            "deploy failed: {}",
            text(&deployed)
        );
        running
    }
}

impl Drop for Deployed {
    fn drop(&mut self) {
        let root = self.dir.join(".shipjar/local");
        let _ = Command::new(shipjar_bin())
            .args(["service", "stop", &self.name, "--root"])
            .arg(&root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        // Last resort: the process group the supervisor recorded.
        let pidfile = root.join(format!("run/{0}/{0}.pid", self.name));
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (run-tests does): deploy local runs in a network namespace of its own"
    );
}

#[test]
#[ignore = "needs root"]
fn a_bash_build_script_runs_with_bash_and_init_build_deploy_works_unedited() {
    require_root();
    let dir = hello_copy();
    // A bash script, not executable: Debian's sh (dash) stops at `set -o
    // pipefail` and cannot read the array.
    std::fs::write(
        dir.path().join("build.sh"),
        r#"#!/usr/bin/env bash
set -euo pipefail
cd -- "$(dirname -- "$0")"
sources=(src/*.java)
rm -rf build && mkdir -p build/classes
javac --release 17 -nowarn -encoding UTF-8 -d build/classes "${sources[@]}" 2>&1 | grep -v '^Note:' >&2 || true
jar --create --file build/hello.jar --main-class Hello -C build/classes .
"#,
    )
    .unwrap();
    let (config, out) = init(dir.path());
    assert_eq!(build_key(&config, "command"), "bash build.sh", "{out}");
    assert!(
        out.contains("run by `/usr/bin/env bash`") || out.contains("run by `bash`"),
        "{out}"
    );
    let built = build(dir.path());
    assert_eq!(built, dir.path().join("build/hello.jar"));
    let _running = Deployed::deploy_ok(dir.path(), &config);
}

/// examples/hello changed to read service.properties only from the path in
/// `SERVICE_PROPERTIES`, answering its version endpoint 404 without it.
const NEEDS_SERVICE_PROPERTIES: &str =
    "SERVICE_PROPERTIES is not set: this service reads its version from the file it names";

#[test]
#[ignore = "needs root"]
fn init_points_a_config_path_variable_at_its_file_and_a_failed_version_check_shows_the_answer() {
    require_root();
    let dir = hello_copy();
    let source = dir.path().join("src/Hello.java");
    let java = std::fs::read_to_string(&source).unwrap();
    let edited = java
        .replace(
            "readProperties(configDir.resolve(\"service.properties\"))",
            "readProperties(Path.of(System.getenv(\"SERVICE_PROPERTIES\") == null ? \"unset\" : System.getenv(\"SERVICE_PROPERTIES\")))",
        )
        .replace(
            "case \"/version\": {",
            &format!(
                "case \"/version\": {{ if (System.getenv(\"SERVICE_PROPERTIES\") == null) {{ return send(ex, 404, TEXT, \"{NEEDS_SERVICE_PROPERTIES}\\n\"); }}"
            ),
        );
    assert_eq!(
        edited.matches("SERVICE_PROPERTIES").count(),
        4,
        "the example changed"
    );
    std::fs::write(&source, edited).unwrap();

    let (config, out) = init(dir.path());
    assert_eq!(
        config["service"]["env"]["SERVICE_PROPERTIES"].as_str(),
        Some("{{ config_dir }}/service.properties"),
        "{out}"
    );
    assert!(
        out.contains("src/Hello.java reads SERVICE_PROPERTIES"),
        "{out}"
    );
    build(dir.path());
    let running = Deployed::new(dir.path(), &config);

    // Without the variable the version check fails, showing what the service said.
    let file = dir.path().join("shipjar.toml");
    let written = std::fs::read_to_string(&file).unwrap();
    let line = written
        .lines()
        .find(|l| l.starts_with("SERVICE_PROPERTIES = "))
        .expect("the SERVICE_PROPERTIES line");
    std::fs::write(&file, written.replace(line, &format!("# {line}"))).unwrap();
    let failed = running.deploy();
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        text(&failed).contains(&format!("answered HTTP 404: {NEEDS_SERVICE_PROPERTIES}")),
        "{}",
        text(&failed)
    );

    // As init wrote it, the deploy works.
    std::fs::write(&file, written).unwrap();
    let deployed = running.deploy();
    assert!(
        deployed.status.success(),
        "deploy failed: {}",
        text(&deployed)
    );
}

#[test]
#[ignore = "needs root"]
fn maven_clojure_example_init_build_deploy_works_unedited_with_its_logback_config() {
    require_root();
    require_packages();
    let dir = clojure_copy();
    let (config, out) = init(dir.path());
    assert!(out.contains("logging: logback"), "{out}");
    build(dir.path());
    let _running = Deployed::deploy_ok(dir.path(), &config);
    // The logging config init enabled is rendered where the -D points.
    let current = dir.path().join(".shipjar/local/var/lib/inventory/current");
    assert!(current.join("config/logback.xml").is_file());
}
