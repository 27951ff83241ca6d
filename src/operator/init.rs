//! `shipjar init`: a starting `shipjar.toml` for the service in this
//! directory, read exactly from its build files: the service name, the
//! version, the build command (offline when the project is set up for it)
//! and the exact path of the runnable jar.

mod clj;
mod config_paths;
mod edn;
mod maven;
mod script;

use std::path::Path;

use crate::error::{Error, Result};
use crate::protocol::validate_service_name;

/// The build tool whose files were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `pom.xml`.
    Maven,
    /// `project.clj`.
    Leiningen,
    /// `deps.edn` with a tools.build `build.clj`.
    ToolsBuild,
    /// `build.gradle` / `build.gradle.kts`.
    Gradle,
    /// None recognised.
    Unknown,
}

impl Tool {
    /// The build file it was read from.
    fn file(self) -> &'static str {
        match self {
            Tool::Maven => "pom.xml",
            Tool::Leiningen => "project.clj",
            Tool::ToolsBuild => "build.clj",
            Tool::Gradle => "build.gradle",
            Tool::Unknown => "(no build file)",
        }
    }
}

/// What the build files say.
#[derive(Debug, Clone)]
pub struct Detected {
    /// Which tool.
    pub tool: Tool,
    /// The project's name, if the build file has one.
    pub name: Option<String>,
    /// The project's version, if the build file has one.
    pub version: Option<String>,
    /// `[build] command`.
    pub command: String,
    /// `[build] artifact`: an exact path whenever the build file tells it.
    pub artifact: String,
    /// What was read and decided, said in the output and written as comments.
    pub notes: Vec<String>,
}

/// Reads the build files of `dir`. With both `pom.xml` and `project.clj`,
/// the one `build.sh` runs wins (else `pom.xml`), and the other is offered
/// as a commented alternative.
pub fn detect(dir: &Path) -> Result<(Detected, Option<Detected>)> {
    let has = |f: &str| dir.join(f).is_file();
    let wrap = |tool: Tool, r: std::result::Result<Detected, String>| {
        r.map_err(|e| {
            Error::config(e).hint(format!("fix {} or write [build] by hand", tool.file()))
        })
    };
    let maven = || wrap(Tool::Maven, maven::detect(dir));
    let lein = || wrap(Tool::Leiningen, clj::detect_lein(dir));
    Ok(match (has("pom.xml"), has("project.clj")) {
        (true, true) if clj::mentions(dir, "build.sh", "lein") => (lein()?, maven().ok()),
        (true, true) => (maven()?, lein().ok()),
        (true, false) => (maven()?, None),
        (false, true) => (lein()?, None),
        _ if has("deps.edn") => (wrap(Tool::ToolsBuild, clj::detect_tools_build(dir))?, None),
        _ if has("build.gradle") || has("build.gradle.kts") => (
            Detected {
                tool: Tool::Gradle,
                name: None,
                version: None,
                command: "./gradlew -q shadowJar".into(),
                artifact: "build/libs/*-all.jar".into(),
                notes: vec!["Gradle: the shadow plugin's jar; check [build] artifact".into()],
            },
            None,
        ),
        _ if has("build.sh") => {
            let (command, note) = script::command(dir, "build.sh");
            (
                Detected {
                    tool: Tool::Unknown,
                    name: None,
                    version: None,
                    command,
                    artifact: "build/*.jar".into(),
                    notes: vec![
                        note,
                        "no build file found: check [build] artifact (where build.sh writes the jar)".into(),
                    ],
                },
                None,
            )
        }
        _ => (
            Detected {
                tool: Tool::Unknown,
                name: None,
                version: None,
                command: "sh build.sh".into(),
                artifact: "build/*.jar".into(),
                notes: vec!["no build file found: set [build] command and artifact".into()],
            },
            None,
        ),
    })
}

/// True when `dir` is inside a git work tree (a `.git` here or above).
fn in_git_repository(dir: &Path) -> bool {
    dir.ancestors().any(|d| d.join(".git").exists())
}

/// A service name from a directory name: lower case, `-` for anything else.
pub fn name_from_dir(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').to_string();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name = format!("svc-{name}");
    }
    name.chars()
        .take(32)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// Writes `file` (and the config templates it mentions, where absent);
/// refuses to overwrite an existing project file. Returns what it says.
pub fn init(file: &Path, name: Option<&str>) -> Result<String> {
    if file.exists() {
        return Err(Error::config(format!(
            "{} exists already; nothing was changed",
            file.display()
        )));
    }
    let dir = crate::operator::config::project_dir(file)?;
    let (found, alternative) = detect(&dir)?;
    let name = match (name, &found.name) {
        (Some(n), _) => n.to_string(),
        (None, Some(n)) if validate_service_name(n).is_ok() => n.clone(),
        (None, Some(n)) => name_from_dir(Path::new(n)),
        (None, None) => name_from_dir(&dir),
    };
    validate_service_name(&name).map_err(|e| Error::config(e).hint("pass --name NAME"))?;
    let mut said = Vec::new();
    let mut comments = Vec::new();
    said.push(describe_found(&found));
    for note in &found.notes {
        said.push(note.clone());
        comments.push(format!("# {note}"));
    }
    let (version_line, note) = version_command(&dir, &found);
    if let Some(note) = note {
        said.push(note.clone());
        comments.push(format!("# {note}"));
    }
    let (logback_opt, logging_config, env_lines) = config_wiring(&dir, &mut said);
    let alternative = alternative
        .map(|alt| alternative_lines(&alt))
        .unwrap_or_default();
    let repository = artifact_section(&dir, &mut said);
    let text = TEMPLATE
        .replace("@NAME@", &name)
        .replace("@REPOSITORY@", &repository)
        .replace(
            "@NOTES@",
            &comments
                .iter()
                .map(|c| format!("{c}\n"))
                .collect::<String>(),
        )
        .replace("@COMMAND@", &toml_string(&found.command))
        .replace("@ARTIFACT@", &toml_string(&found.artifact))
        .replace("@VERSION@", &version_line)
        .replace("@ALTERNATIVE@", &alternative)
        .replace("@LOGBACK_OPT@", &logback_opt)
        .replace("@LOGGING_CONFIG@", logging_config)
        .replace(
            "@ENV@",
            &env_lines
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )
        .replace(
            "@SECRET_ENV@",
            &format!("{}_DB_PASSWORD", name.to_uppercase().replace('-', "_")),
        );
    std::fs::write(file, &text)
        .map_err(|e| Error::failed(format!("cannot write {}: {e}", file.display())))?;
    said.extend(write_templates(&dir, &name));
    let mut out = String::new();
    for line in &said {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str(&format!(
        "wrote {} for service `{name}` (build: `{}`, artifact: {}); check it with `shipjar check local`\n",
        file.display(),
        found.command,
        found.artifact
    ));
    Ok(out)
}

/// "read pom.xml: name cart, version 1.4.2".
fn describe_found(found: &Detected) -> String {
    format!(
        "read {}: {}{}",
        found.tool.file(),
        found
            .name
            .as_deref()
            .map(|n| format!("name {n}"))
            .unwrap_or_else(|| "no name".into()),
        found
            .version
            .as_deref()
            .map(|v| format!(", version {v}"))
            .unwrap_or_default()
    )
}

/// The other build tool the project could use, as commented lines.
fn alternative_lines(alt: &Detected) -> String {
    format!(
        "# or with {}:\n# command = {}\n# artifact = {}\n",
        alt.tool.file(),
        toml_string(&alt.command),
        toml_string(&alt.artifact)
    )
}

/// How the service finds its config files: the logback `-D` option and
/// `[[config]]` (enabled when the project uses logback) and the `env` lines
/// for what the code reads; what was found goes to `said`.
fn config_wiring(dir: &Path, said: &mut Vec<String>) -> (String, &'static str, Vec<String>) {
    let logback = config_paths::logback_evidence(dir);
    let (logback_opt, logging_config) = match &logback {
        Some(evidence) => {
            let note = format!(
                "logging: logback ({evidence}): the logging [[config]] is enabled, found with -Dlogback.configurationFile"
            );
            said.push(note);
            (
                format!("    \"-Dlogback.configurationFile={{{{ config_dir }}}}/logback.xml\",   # logback: {evidence}"),
                "[[config]]                           # logging, per stage\ntemplate = \"deploy/logback-{{ stage }}.xml\"\ndest = \"logback.xml\"\n",
            )
        }
        None => (
            "    # \"-Dlogback.configurationFile={{ config_dir }}/logback.xml\",   # with the logging [[config]] below".to_string(),
            "# [[config]]                         # logging, per stage\n# template = \"deploy/logback-{{ stage }}.xml\"\n# dest = \"logback.xml\"\n",
        ),
    };
    let declared = [
        config_paths::Declared {
            dest: "logback.xml",
            enabled: logback.is_some(),
        },
        config_paths::Declared {
            dest: "database.properties",
            enabled: false,
        },
        config_paths::Declared {
            dest: "service.properties",
            enabled: true,
        },
    ];
    let (env_lines, env_notes) =
        config_paths::env_lines(&declared, &config_paths::scan(dir), &["logback.xml"]);
    said.extend(env_notes);
    (logback_opt, logging_config, env_lines)
}

/// The `version_command` line, and what to tell about it: `git describe`
/// in a git work tree, else with the build file's version as fallback.
fn version_command(dir: &Path, found: &Detected) -> (String, Option<String>) {
    if in_git_repository(dir) {
        return (
            "version_command = \"git describe --always --dirty\"".to_string(),
            None,
        );
    }
    match &found.version {
        Some(v) => (
            format!(
                "version_command = \"git describe --always --dirty 2>/dev/null || echo {}\"",
                crate::protocol::shell::quote(v)
            ),
            Some(format!(
                "not a git repository: the version falls back to {v}, from {}; keep the two in step, or `git init`",
                found.tool.file()
            )),
        ),
        None => (
            "# version_command = \"git describe --always --dirty\"".to_string(),
            Some("not a git repository and no version in the build file: each build's version is sha-<its sha256>".to_string()),
        ),
    }
}

/// Writes each template file that is not there yet; what was done, a line each.
fn write_templates(dir: &Path, name: &str) -> Vec<String> {
    let mut said = Vec::new();
    for (path, content) in TEMPLATES {
        let target = dir.join(path);
        if target.exists() {
            continue;
        }
        let written = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&target, content.replace("@NAME@", name)));
        match written {
            Ok(()) => said.push(format!(
                "wrote {path} (a template for a commented [[config]] entry)"
            )),
            Err(e) => said.push(format!("could not write {path}: {e}")),
        }
    }
    said
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// Templates for the commented `[[config]]` entries, written only where absent.
const TEMPLATES: [(&str, &str); 3] = [
    (
        "deploy/logback-local.xml",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Logging on the local stage: to stdout, which shipjar writes to the service log. -->
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%d{yyyy-MM-dd HH:mm:ss.SSS} %-5level [@NAME@] %logger{36} - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"#,
    ),
    (
        "deploy/logback-production.xml",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Logging on {{ host }} ({{ stage }}): to stdout, which shipjar writes to the rotated service log. -->
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%d{yyyy-MM-dd HH:mm:ss.SSS} %-5level [@NAME@ {{ version }}] %logger{36} - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"#,
    ),
    (
        "deploy/database.properties",
        r#"# Rendered per host by shipjar into the release's config/; secret = true:
# mode 0600 (0640 root:<service group> as root), never printed.
db.url={{ db_url }}
db.user={{ db_user }}
db.password={{ secrets.db_password }}
"#,
    ),
];

/// A commented `[artifact]` from pom.xml's `<distributionManagement>`:
/// commented, because with it `deploy` stops building and wants `--version`.
fn artifact_section(dir: &Path, said: &mut Vec<String>) -> String {
    let Some((url, group, artifact)) = maven::distribution(dir) else {
        return String::new();
    };
    said.push(format!(
        "pom.xml publishes to {url}: [artifact] is written commented (uncomment to deploy from it with --version)"
    ));
    format!(
        "# [artifact]                       # deploy from the repository pom.xml publishes to (<distributionManagement>)\n\
         # repository = {}\n# group = {}\n# artifact = {}\n# netrc = \"repo.netrc\"           # credentials, if it needs them\n\n",
        toml_string(&url),
        toml_string(&group),
        toml_string(&artifact)
    )
}

const TEMPLATE: &str = r#"# shipjar project file. Every key is described in shipjar's README.
@NOTES@
[service]
name = "@NAME@"                     # also the unix user on the hosts
jar = "@NAME@.jar"                  # the artifact's name inside a release
java_opts = [
    "-Xmx512m",
    "-XX:+ExitOnOutOfMemoryError",
@LOGBACK_OPT@
]

[service.env]                        # config files are rendered into {{ config_dir }} ($SHIPJAR_CONFIG_DIR to the service)
PORT = "8080"
@ENV@
[build]
command = @COMMAND@
artifact = @ARTIFACT@
@VERSION@
@ALTERNATIVE@
@REPOSITORY@[health]                             # checked on the host by the supervisor
url = "http://127.0.0.1:8080/health" # or: tcp = 8080
start_timeout = "90s"
# settle = "30s"                     # stay up and healthy this long after the gate, or be reverted

[version_check]                      # the service's own "which version am I" endpoint: a JSON
url = "http://127.0.0.1:8080/version" # object whose `key` is the deployed version (from
key = "version"                      # config/service.properties); remove the section if it has none

[stop]
timeout = "30s"

# Files rendered into each release's config/ (templates are in deploy/):
@LOGGING_CONFIG@
# [[config]]                         # database settings; the password is a secret
# template = "deploy/database.properties"
# dest = "database.properties"
# secret = true

[[config]]                           # version, git commit, build time, deployed at/by, stage, host, sha256
builtin = "service-properties"
dest = "service.properties"

[stages.local]
hosts = ["local"]
# vars = { db_url = "jdbc:postgresql://127.0.0.1:5432/@NAME@", db_user = "@NAME@" }
# secrets = { db_password = { env = "@SECRET_ENV@" } }

# [stages.production]
# hosts = ["app1.example.com", "deploy@app2.example.com:2222"]
# rolling = { batch = "25%", max_failed = 0 }
# vars = { db_url = "jdbc:postgresql://db1.example.com/@NAME@", db_user = "@NAME@" }
# secrets = { db_password = { env = "@SECRET_ENV@" } }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_directory() {
        assert_eq!(
            name_from_dir(Path::new("/src/Inventory_Service")),
            "inventory-service"
        );
        assert_eq!(name_from_dir(Path::new("/src/42")), "svc-42");
    }

    #[test]
    fn the_generated_file_is_valid_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("orders");
        std::fs::create_dir(&project).unwrap();
        std::fs::write(project.join("project.clj"), "(defproject orders \"1.0\")").unwrap();
        let file = project.join("shipjar.toml");
        init(&file, None).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("name = \"orders\"") && text.contains("lein uberjar"));
        let loaded = crate::operator::config::Project::load(&file).unwrap();
        assert_eq!(loaded.config.service.name.0, "orders");
        assert_eq!(init(&file, None).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn the_written_file_shows_how_the_service_finds_its_config_files() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("inventory");
        std::fs::create_dir_all(project.join("src/inventory")).unwrap();
        std::fs::write(
            project.join("project.clj"),
            "(defproject inventory \"1.0\" :dependencies [[ch.qos.logback/logback-classic \"1.2.11\"]])",
        )
        .unwrap();
        std::fs::write(
            project.join("src/inventory/main.clj"),
            r#"(System/getenv "SERVICE_PROPERTIES") (System/getenv "DATABASE_CONFIG") (System/getenv "PORT")"#,
        )
        .unwrap();
        let file = project.join("shipjar.toml");
        let said = init(&file, None).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let loaded = crate::operator::config::Project::load(&file).unwrap();
        let service = &loaded.config.service;
        assert_eq!(
            service.env.get("SERVICE_PROPERTIES").map(String::as_str),
            Some("{{ config_dir }}/service.properties"),
            "{text}"
        );
        assert!(!service.env.contains_key("DATABASE_CONFIG"), "{text}");
        assert!(text.contains("\n# DATABASE_CONFIG = \"{{ config_dir }}/database.properties\""));
        assert!(
            service
                .java_opts
                .iter()
                .any(|o| o == "-Dlogback.configurationFile={{ config_dir }}/logback.xml"),
            "{text}"
        );
        assert!(text.contains("\n[[config]]                           # logging, per stage\ntemplate = \"deploy/logback-{{ stage }}.xml\""));
        assert!(said.contains("logging: logback (project.clj)"), "{said}");
        let template = std::fs::read_to_string(project.join("deploy/logback-local.xml")).unwrap();
        assert!(template.contains("<root level=\"INFO\">") && !template.contains("DEBUG"));
    }
}
