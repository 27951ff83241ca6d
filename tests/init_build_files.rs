//! `shipjar init` reads the build files exactly: fixture projects under
//! `tests/fixtures/init/` each give the exact artifact path, and on copies of
//! `examples/clojure-jetty` (Maven and Leiningen) `shipjar build` with the
//! written config finds exactly that file after a real offline build.

mod common;

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
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("pom.xml"), "{}", text(&out));
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
    assert_eq!(build_key(&config, "command"), "sh build.sh");
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
