//! How the service finds the config files `init` declares: the names of
//! environment variables its code reads a config path from, matched to the
//! files by name (`SERVICE_PROPERTIES` → `service.properties`,
//! `DATABASE_CONFIG` → `database.properties`), and whether it logs with
//! logback (then `-Dlogback.configurationFile`). A light heuristic: what it
//! cannot tell is written as a commented line to complete.

use std::collections::BTreeMap;
use std::path::Path;

/// Source files the scan reads, by extension.
const SOURCE_EXTENSIONS: [&str; 7] = ["java", "kt", "scala", "groovy", "clj", "cljc", "cljs"];
/// Folders that hold build output, tools' state or templates, not code.
const SKIPPED_DIRS: [&str; 9] = [
    "target",
    "build",
    "out",
    "node_modules",
    "deploy",
    ".git",
    ".shipjar",
    ".gradle",
    ".cpcache",
];
/// Bounds on the scan: files read, bytes per file, folder depth.
const MAX_FILES: usize = 5000;
const MAX_FILE_BYTES: u64 = 1024 * 1024;
const MAX_DEPTH: usize = 16;

/// Last words of a variable name that holds a path to a config file.
const PATH_WORDS: [&str; 14] = [
    "CONFIG",
    "CONF",
    "CFG",
    "PROPERTIES",
    "PROPS",
    "FILE",
    "PATH",
    "YAML",
    "YML",
    "JSON",
    "XML",
    "EDN",
    "TOML",
    "INI",
];

/// Environment variables the code reads that look like config paths, each
/// with the first source file (relative to the project) that reads it.
pub fn scan(dir: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut budget = MAX_FILES;
    walk(dir, dir, 0, &mut budget, &mut found);
    found
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    budget: &mut usize,
    found: &mut BTreeMap<String, String>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    // A stable order: the first file named for a variable is the same each run.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        // file_type does not follow symlinks: a link out of the project is not read.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        if kind.is_dir() {
            let skipped = SKIPPED_DIRS.iter().any(|s| name == *s);
            if !skipped && depth < MAX_DEPTH {
                walk(root, &path, depth + 1, budget, found);
            }
        } else if kind.is_file()
            && path
                .extension()
                .is_some_and(|x| SOURCE_EXTENSIONS.iter().any(|s| x == *s))
        {
            if *budget == 0 {
                return;
            }
            *budget -= 1;
            let small = entry.metadata().is_ok_and(|m| m.len() <= MAX_FILE_BYTES);
            let Some(text) = small.then(|| std::fs::read_to_string(&path).ok()).flatten() else {
                continue;
            };
            let shown = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            for var in env_names_in(&text) {
                if looks_like_config_path(&var) {
                    found.entry(var).or_insert_with(|| shown.clone());
                }
            }
        }
    }
}

/// Pure: the environment variables `text` reads by a literal name:
/// `System.getenv("X")` (Java, Kotlin, Groovy), `(System/getenv "X")`
/// (Clojure), `sys.env("X")` / `sys.env.get("X")` (Scala) and environ's
/// `(env :x-y)` (→ `X_Y`).
pub fn env_names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for marker in ["getenv", "sys.env.get(", "sys.env("] {
        for (at, _) in text.match_indices(marker) {
            let rest = text[at + marker.len()..]
                .trim_start_matches(|c: char| c == '(' || c.is_whitespace());
            if let Some(name) = rest
                .strip_prefix('"')
                .and_then(|r| r.split_once('"'))
                .map(|(n, _)| n)
                && is_env_name(name)
            {
                names.push(name.to_string());
            }
        }
    }
    for (at, _) in text.match_indices("(env :") {
        let keyword: String = text[at + "(env :".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let name = keyword.to_ascii_uppercase().replace('-', "_");
        if is_env_name(&name) {
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    names
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// Pure: a variable whose name ends in a word like `CONFIG`, `PROPERTIES` or
/// `FILE`; shipjar's own `SHIPJAR_*` are not the project's.
pub fn looks_like_config_path(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    !upper.starts_with("SHIPJAR_")
        && upper
            .rsplit('_')
            .next()
            .is_some_and(|last| PATH_WORDS.contains(&last))
}

/// Pure: `name` names the file `dest` once its path words are dropped:
/// `DATABASE_CONFIG` and `DATABASE_PROPERTIES_FILE` name `database.properties`.
pub fn names_file(name: &str, dest: &str) -> bool {
    let mut words: Vec<String> = name
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    while words
        .last()
        .is_some_and(|w| PATH_WORDS.contains(&w.to_ascii_uppercase().as_str()))
    {
        words.pop();
    }
    let file = Path::new(dest)
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let stem: Vec<&str> = file
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    !words.is_empty() && words == stem
}

/// Where the project shows it logs with logback, if it does: a `logback.xml`
/// among its resources or logback in its build file.
pub fn logback_evidence(dir: &Path) -> Option<String> {
    for file in [
        "src/main/resources/logback.xml",
        "resources/logback.xml",
        "logback.xml",
    ] {
        if dir.join(file).is_file() {
            return Some(file.to_string());
        }
    }
    [
        "pom.xml",
        "project.clj",
        "deps.edn",
        "build.gradle",
        "build.gradle.kts",
    ]
    .into_iter()
    .find(|f| std::fs::read_to_string(dir.join(f)).is_ok_and(|t| t.contains("logback")))
    .map(str::to_string)
}

/// A config file `init` declares: its `dest` in the release's `config/`,
/// and whether its `[[config]]` entry is enabled or left commented.
pub struct Declared {
    /// File name under `{{ config_dir }}`.
    pub dest: &'static str,
    /// The entry is written enabled.
    pub enabled: bool,
}

/// Pure: the `[service.env]` lines that point the service at its config
/// files, and what to say about them. A variable the code reads is enabled
/// when its file's entry is; a file no variable names gets a commented line
/// to complete (`wired` ones are reached otherwise, e.g. by a `-D`); a
/// config-path variable that names no declared file gets one too.
pub fn env_lines(
    declared: &[Declared],
    reads: &BTreeMap<String, String>,
    wired: &[&str],
) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut notes = Vec::new();
    let mut used = Vec::new();
    for file in declared {
        let value = format!("\"{{{{ config_dir }}}}/{}\"", file.dest);
        let readers: Vec<(&String, &String)> = reads
            .iter()
            .filter(|(name, _)| names_file(name, file.dest))
            .collect();
        for (name, source) in &readers {
            used.push(name.as_str());
            let mark = if file.enabled { "" } else { "# " };
            let with = if file.enabled {
                String::new()
            } else {
                format!("; enable it with the {} [[config]] below", file.dest)
            };
            lines.push(format!("{mark}{name} = {value}   # read in {source}{with}"));
            notes.push(format!(
                "config: {source} reads {name}: {}pointed at {{{{ config_dir }}}}/{}",
                if file.enabled { "" } else { "(commented) " },
                file.dest
            ));
        }
        if readers.is_empty() && !wired.contains(&file.dest) {
            let guess = file
                .dest
                .to_ascii_uppercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            lines.push(format!(
                "# {guess} = {value}   # the variable your service reads {}'s path from",
                file.dest
            ));
        }
    }
    for (name, source) in reads {
        if !used.contains(&name.as_str()) {
            lines.push(format!(
                "# {name} = \"{{{{ config_dir }}}}/…\"   # read in {source}: declare its [[config]] and name the file"
            ));
            notes.push(format!(
                "config: {source} reads {name}, which names no file init declares: complete its line in [service.env]"
            ));
        }
    }
    (lines, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_the_code_reads_point_at_their_files() {
        let declared = [
            Declared {
                dest: "logback.xml",
                enabled: true,
            },
            Declared {
                dest: "database.properties",
                enabled: false,
            },
            Declared {
                dest: "service.properties",
                enabled: true,
            },
        ];
        let reads: BTreeMap<String, String> = [
            ("SERVICE_PROPERTIES", "src/App.java"),
            ("DATABASE_CONFIG", "src/App.java"),
            ("CACHE_CONFIG", "src/Cache.java"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let (lines, notes) = env_lines(&declared, &reads, &["logback.xml"]);
        assert_eq!(
            lines,
            [
                "# DATABASE_CONFIG = \"{{ config_dir }}/database.properties\"   # read in src/App.java; enable it with the database.properties [[config]] below",
                "SERVICE_PROPERTIES = \"{{ config_dir }}/service.properties\"   # read in src/App.java",
                "# CACHE_CONFIG = \"{{ config_dir }}/…\"   # read in src/Cache.java: declare its [[config]] and name the file",
            ]
        );
        assert_eq!(notes.len(), 3);
        // Nothing read: a commented line to complete for each file not otherwise reached.
        let (lines, _) = env_lines(&declared, &BTreeMap::new(), &["logback.xml"]);
        assert_eq!(
            lines,
            [
                "# DATABASE_PROPERTIES = \"{{ config_dir }}/database.properties\"   # the variable your service reads database.properties's path from",
                "# SERVICE_PROPERTIES = \"{{ config_dir }}/service.properties\"   # the variable your service reads service.properties's path from",
            ]
        );
    }

    #[test]
    fn env_reads_are_found_in_java_clojure_scala_and_environ() {
        let java =
            r#"String p = System.getenv("SERVICE_PROPERTIES"); x = System.getenv( "PORT" );"#;
        assert_eq!(env_names_in(java), ["PORT", "SERVICE_PROPERTIES"]);
        let clj =
            r#"(io/file (System/getenv "DATABASE_CONFIG")) (env :app-config) (System/getenv name)"#;
        assert_eq!(env_names_in(clj), ["APP_CONFIG", "DATABASE_CONFIG"]);
        let scala = r#"sys.env("A_FILE"); sys.env.get("B_PATH")"#;
        assert_eq!(env_names_in(scala), ["A_FILE", "B_PATH"]);
        assert!(env_names_in(r#"getenv("not a name") getenv("1X") getenv("")"#).is_empty());
    }

    #[test]
    fn config_path_names_end_in_a_path_word() {
        for yes in [
            "SERVICE_PROPERTIES",
            "DATABASE_CONFIG",
            "LOGBACK_FILE",
            "app_conf",
        ] {
            assert!(looks_like_config_path(yes), "{yes}");
        }
        for no in [
            "PORT",
            "DB_PASSWORD",
            "SHIPJAR_CONFIG_DIR",
            "CONFIG_DIR",
            "HOME",
        ] {
            assert!(!looks_like_config_path(no), "{no}");
        }
    }

    #[test]
    fn a_name_names_the_file_with_that_stem() {
        assert!(names_file("SERVICE_PROPERTIES", "service.properties"));
        assert!(names_file("DATABASE_CONFIG", "database.properties"));
        assert!(names_file(
            "DATABASE_PROPERTIES_FILE",
            "database.properties"
        ));
        assert!(names_file("LOGBACK_CONFIG", "logback.xml"));
        assert!(!names_file("DATABASE_CONFIG", "service.properties"));
        assert!(!names_file("CONFIG_FILE", "config.properties"));
        assert!(!names_file("APP_DATABASE_CONFIG", "database.properties"));
    }

    #[test]
    fn the_scan_reads_sources_but_not_build_output() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src/main/clojure/app");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("core.clj"),
            r#"(System/getenv "DATABASE_CONFIG") (System/getenv "PORT")"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("target/classes")).unwrap();
        std::fs::write(
            dir.path().join("target/classes/Gen.java"),
            r#"System.getenv("GENERATED_CONFIG")"#,
        )
        .unwrap();
        let found = scan(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found["DATABASE_CONFIG"], "src/main/clojure/app/core.clj");
    }
}
