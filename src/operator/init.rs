//! `shipjar init`: a starting `shipjar.toml` for the service in this directory,
//! with the build command guessed from the build files found.

use std::path::Path;

use crate::error::{Error, Result};
use crate::protocol::validate_service_name;

/// Build command and artifact glob for the build tool whose file is present.
fn guess_build(dir: &Path) -> (&'static str, &'static str) {
    if dir.join("project.clj").exists() {
        ("lein uberjar", "target/uberjar/*-standalone.jar")
    } else if dir.join("deps.edn").exists() {
        ("clojure -T:build uber", "target/*-standalone.jar")
    } else if dir.join("pom.xml").exists() {
        (
            "mvn -q package -DskipTests",
            "target/*-jar-with-dependencies.jar",
        )
    } else if dir.join("build.gradle").exists() || dir.join("build.gradle.kts").exists() {
        ("./gradlew -q shadowJar", "build/libs/*-all.jar")
    } else {
        ("sh build.sh", "build/*.jar")
    }
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

/// Writes `file`; refuses to overwrite an existing one.
pub fn init(file: &Path, name: Option<&str>) -> Result<String> {
    if file.exists() {
        return Err(Error::config(format!(
            "{} exists already; nothing was changed",
            file.display()
        )));
    }
    let dir = crate::operator::config::project_dir(file)?;
    let name = match name {
        Some(n) => n.to_string(),
        None => name_from_dir(&dir),
    };
    validate_service_name(&name).map_err(|e| Error::config(e).hint("pass --name NAME"))?;
    let (command, artifact) = guess_build(&dir);
    let text = TEMPLATE
        .replace("@NAME@", &name)
        .replace("@COMMAND@", command)
        .replace("@ARTIFACT@", artifact)
        .replace(
            "@SECRET_ENV@",
            &format!("{}_DB_PASSWORD", name.to_uppercase().replace('-', "_")),
        );
    std::fs::write(file, &text)
        .map_err(|e| Error::failed(format!("cannot write {}: {e}", file.display())))?;
    Ok(format!(
        "wrote {} for service `{name}` (build: `{command}`); check it with `shipjar check local`\n",
        file.display()
    ))
}

const TEMPLATE: &str = r#"# shipjar project file. Every key is described in shipjar's README.

[service]
name = "@NAME@"                     # also the unix user on the hosts
jar = "@NAME@.jar"                  # the artifact's name inside a release
java_opts = ["-Xmx512m", "-XX:+ExitOnOutOfMemoryError"]
env = { PORT = "8080" }

[build]
command = "@COMMAND@"
artifact = "@ARTIFACT@"
version_command = "git describe --always --dirty"

[health]
url = "http://127.0.0.1:8080/health"
start_timeout = "90s"

# [version_check]                    # the service's own "which version am I" endpoint
# url = "http://127.0.0.1:8080/version"
# key = "version"

[stop]
timeout = "30s"

# [[config]]                         # files rendered into each release's config/
# template = "deploy/logback-{{ stage }}.xml"
# dest = "logback.xml"

[[config]]
builtin = "service-properties"
dest = "service.properties"

[stages.local]
hosts = ["local"]

# [stages.production]
# hosts = ["app1.example.com", "deploy@app2.example.com:2222"]
# rolling = { batch = "25%", max_failed = 0 }
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
        std::fs::write(project.join("project.clj"), "").unwrap();
        let file = project.join("shipjar.toml");
        init(&file, None).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("name = \"orders\"") && text.contains("lein uberjar"));
        let loaded = crate::operator::config::Project::load(&file).unwrap();
        assert_eq!(loaded.config.service.name.0, "orders");
        assert_eq!(init(&file, None).unwrap_err().exit_code(), 2);
    }
}
