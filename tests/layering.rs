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

/// The child modules of the module in `dir` (files and folders), by name.
fn child_modules(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("a source dir is readable")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_stem()?.to_str()?.to_string();
            let is_module = path.is_dir() || path.extension().is_some_and(|x| x == "rs");
            (is_module && name != "mod").then_some(name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Items named by a `{…}` group that starts at `group` (nested groups kept whole).
fn group_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut level, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => level += 1,
            '}' if level == 0 => {
                items.push(group[start..i].trim());
                return items;
            }
            '}' => level -= 1,
            ',' if level == 0 => {
                items.push(group[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// Which of `modules` (the children of module `parent`) the code of a file
/// `depth` modules below one of them names.
fn modules_named(code: &str, parent: &str, modules: &[String], depth: usize) -> Vec<String> {
    let by_name = format!("{parent}::");
    let squeezed: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
    let squeezed = squeezed.replace(":: ", "::").replace(" ::", "::");
    let climb = "super::".repeat(depth + 1);
    let mut found = Vec::new();
    for prefix in [by_name.clone(), climb] {
        for (at, _) in squeezed.match_indices(&prefix) {
            let before = squeezed[..at].chars().next_back();
            if prefix == by_name && before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if prefix != by_name && squeezed[..at].ends_with("super::") {
                continue;
            }
            let rest = &squeezed[at + prefix.len()..];
            let named: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group_items(group),
                None => vec![rest],
            };
            for item in named {
                let head: String = item
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&head) {
                    found.push(head);
                }
            }
        }
    }
    found
}

/// Every circle among the nodes of `edges` (strongly connected parts of two or more).
fn circles(
    edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Vec<Vec<String>> {
    let reach = |from: &str| {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(node) = todo.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: std::collections::BTreeMap<&String, _> =
        edges.keys().map(|n| (n, reach(n))).collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    for node in edges.keys() {
        let mut part: Vec<String> = edges
            .keys()
            .filter(|other| {
                other != &node && reached[node].contains(*other) && reached[other].contains(node)
            })
            .cloned()
            .collect();
        if part.is_empty() {
            continue;
        }
        part.push(node.clone());
        part.sort();
        if !found.contains(&part) {
            found.push(part);
        }
    }
    found
}

/// The circles among the child modules of the module in `dir`, explained.
fn circles_below(dir: &Path) -> Vec<String> {
    let parent = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a named dir")
        .to_string();
    let modules = child_modules(dir);
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), Default::default()))
        .collect();
    let mut evidence: Vec<(String, String, String)> = Vec::new();
    for file in files {
        let relative = file.strip_prefix(dir).expect("under its dir");
        let parts: Vec<_> = relative.components().collect();
        if parts.len() == 1 && relative == Path::new("mod.rs") {
            continue; // declares the modules
        }
        let first = parts[0].as_os_str().to_string_lossy();
        let own = first.trim_end_matches(".rs").to_string();
        let mut depth = parts.len() - 1;
        if file.file_name().is_some_and(|n| n == "mod.rs") {
            depth = depth.saturating_sub(1);
        }
        let text = fs::read_to_string(&file).expect("source is readable");
        for other in modules_named(&code_of(&text), &parent, &modules, depth) {
            if other != own && edges.entry(own.clone()).or_default().insert(other.clone()) {
                evidence.push((own.clone(), other, file.display().to_string()));
            }
        }
    }
    circles(&edges)
        .iter()
        .map(|part| {
            let uses: Vec<String> = evidence
                .iter()
                .filter(|(from, to, _)| part.contains(from) && part.contains(to))
                .map(|(from, to, file)| format!("  {from} → {to} (first in {file})"))
                .collect();
            format!("circle {}:\n{}", part.join(" ⇄ "), uses.join("\n"))
        })
        .collect()
}

#[test]
fn no_host_module_reaches_back_into_a_module_that_uses_it() {
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/host");
    let mut dirs = vec![host.clone()];
    let mut found = Vec::new();
    while let Some(dir) = dirs.pop() {
        found.extend(circles_below(&dir));
        for entry in fs::read_dir(&dir).expect("a source dir is readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            }
        }
    }
    assert!(
        found.is_empty(),
        "host modules import each other in a circle:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_circle_check_sees_each_way_of_naming_a_host_module() {
    let modules: Vec<String> = ["proxy", "store", "supervisor"].map(String::from).to_vec();
    let named = |code: &str, depth| modules_named(code, "host", &modules, depth);
    assert_eq!(named("use crate::host::store;", 0), ["store"]);
    assert_eq!(
        named("use crate::host::{proxy::x, store};", 1),
        ["proxy", "store"]
    );
    assert_eq!(
        named("crate::host::supervisor::procfs::stat(1)", 2),
        ["supervisor"]
    );
    assert_eq!(named("use super::{store, proxy};", 0), ["store", "proxy"]);
    assert_eq!(named("use super::super::store;", 1), ["store"]);
    // `super::x` from a file inside a module names its own module's child.
    assert!(named("use super::store;", 1).is_empty());
    assert!(named("use crate::hostname::store;", 0).is_empty());
    let children: Vec<String> = ["runner", "switch"].map(String::from).to_vec();
    assert_eq!(
        modules_named("use crate::host::proxied::runner;", "proxied", &children, 0),
        ["runner"]
    );
    let mut edges = std::collections::BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges
            .entry(a.to_string())
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(b.to_string());
        edges.entry(b.to_string()).or_default();
    }
    assert_eq!(circles(&edges), vec![vec!["a", "b", "c"]]);
}
