//! The dependency rule the source tree promises (ARCHITECTURE.md): `protocol`
//! at the bottom; `operator` and `host` each use it and never each other.

use std::fs;
use std::path::{Path, PathBuf};

/// Which top-level modules a layer must not name.
const RULES: &[(&str, &[&str])] = &[
    ("protocol", &["host", "operator"]),
    ("host", &["operator"]),
    ("operator", &["host"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("source dir is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Code of a file without `//` comments, so prose may name other layers.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `path` occurs in `code` as a whole path segment (`crate::host`
/// but not `crate::hostname`).
fn contains_path(code: &str, path: &str) -> bool {
    code.match_indices(path).any(|(at, _)| {
        let next = code[at + path.len()..].chars().next();
        !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Every way a file could reach module `layer`: a `crate::layer` path, a
/// `crate::{…, layer, …}` group, or enough `super::` to climb out of its own layer.
fn reaches(code: &str, layer: &str, depth: usize) -> Vec<String> {
    let mut found = Vec::new();
    let squeezed: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
    if contains_path(&squeezed, &format!("crate::{layer}")) {
        found.push(format!("crate::{layer}"));
    }
    let mut rest = squeezed.as_str();
    while let Some(at) = rest.find("crate::{") {
        let group = &rest[at + "crate::{".len()..];
        let end = group.find('}').unwrap_or(group.len());
        if group[..end]
            .split(',')
            .any(|item| item.trim().split("::").next() == Some(layer))
        {
            found.push(format!("crate::{{{layer}, …}}"));
        }
        rest = &group[end..];
    }
    let climb = "super::".repeat(depth + 1);
    if contains_path(&squeezed, &format!("{climb}{layer}")) {
        found.push(format!("{climb}{layer}"));
    }
    found
}

#[test]
fn protocol_host_and_operator_import_only_what_the_layering_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (layer, forbidden) in RULES {
        let root = src.join(layer);
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        assert!(!files.is_empty(), "no sources under {}", root.display());
        for file in files {
            let text = fs::read_to_string(&file).expect("source is readable");
            let relative = file.strip_prefix(&root).expect("under root");
            // A file at src/LAYER/a/b.rs is `depth` modules below the layer.
            let mut depth = relative.components().count() - 1;
            if file.file_name().is_some_and(|n| n == "mod.rs") {
                depth = depth.saturating_sub(1);
            }
            let code = code_of(&text);
            for other in *forbidden {
                for how in reaches(&code, other, depth) {
                    violations.push(format!("{} uses {how}", file.display()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken (protocol ← operator, protocol ← host; never operator ↔ host):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_check_sees_each_way_of_reaching_another_layer() {
    assert_eq!(reaches("use crate::host::store;", "host", 0).len(), 1);
    assert_eq!(
        reaches(
            "use crate::{\n    error::Error,\n    host::agent,\n};",
            "host",
            0
        )
        .len(),
        1
    );
    assert_eq!(
        reaches("use super::super::operator::x;", "operator", 1).len(),
        1
    );
    assert!(reaches("use super::operator_like;", "operator", 1).is_empty());
    assert!(reaches("use crate::hostname;", "host", 0).is_empty());
    assert!(code_of("// crate::host is fine in prose").trim().is_empty());
}
