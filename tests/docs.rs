//! The documentation holds together: every relative link and `#anchor` in
//! README.md, ARCHITECTURE.md and docs/*.md resolves, and the configuration
//! reference (docs/configuration.md) documents exactly the keys the parser
//! accepts.
//!
//! The accepted keys are read from the serde structs in `src/operator/config/`
//! as text (the binary is not a library), with a small parser that knows the
//! serde attributes that change key names: `rename`, `rename_all`, `alias`,
//! `flatten`, `skip`/`skip_deserializing`. The parser has its own tests below.
//!
//! How the reference is read: a heading naming one or more tables in
//! backticks (`` `[health]` ``, `` `[[config]]` ``, `` `[proxy]` and
//! `[stages.NAME.proxy]` ``) opens a section; in it, every table row whose
//! first cell holds backticked names documents those keys, relative to the
//! section's tables (`` `rolling.batch` `` under `[stages.NAME]` is
//! `stages.NAME.rolling.batch`). An upper-case segment (`NAME`, `HOOK`) is a
//! placeholder: it stands for a name the user chooses (a map key) or for any
//! one key at that place.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A markdown file by its path relative to the repository, with its text.
struct Doc {
    name: String,
    text: String,
}

fn read_docs() -> Vec<Doc> {
    let root = repo();
    let mut names = vec!["README.md".to_string(), "ARCHITECTURE.md".to_string()];
    let mut docs: Vec<String> = fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| {
            format!(
                "docs/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|name| {
            let text = fs::read_to_string(root.join(&name))
                .unwrap_or_else(|e| panic!("cannot read {name}: {e}"));
            Doc { name, text }
        })
        .collect()
}

// ---------------------------------------------------------------- markdown

/// The lines of a markdown text with fenced code blocks blanked and the
/// contents of inline code spans replaced by `x` (so neither is read as a
/// link), keeping line numbers and the span's place.
fn prose_lines(text: &str) -> Vec<String> {
    let mut fence: Option<String> = None;
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if let Some(open) = &fence {
                if trimmed.starts_with(open.as_str()) {
                    fence = None;
                }
                return String::new();
            }
            for marker in ["```", "~~~"] {
                if trimmed.starts_with(marker) {
                    fence = Some(marker.to_string());
                    return String::new();
                }
            }
            mask_code_spans(line)
        })
        .collect()
}

fn mask_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(c);
        } else if in_code {
            out.push('x');
        } else {
            out.push(c);
        }
    }
    out
}

/// A heading: its level, its raw text and its line (1-based).
struct Heading {
    level: usize,
    text: String,
    line: usize,
}

fn headings(text: &str) -> Vec<Heading> {
    let prose = prose_lines(text);
    text.lines()
        .zip(prose.iter())
        .enumerate()
        .filter_map(|(i, (raw, prose))| {
            // A heading is a prose line; its text is taken from the raw line.
            let level = prose.chars().take_while(|&c| c == '#').count();
            let rest = raw.get(level..)?;
            ((1..=6).contains(&level) && rest.starts_with(' ')).then(|| Heading {
                level,
                text: rest.trim().trim_end_matches('#').trim().to_string(),
                line: i + 1,
            })
        })
        .collect()
}

/// GitHub's anchor for a heading: the rendered text, lower-cased, with
/// everything but letters, digits, spaces, `-` and `_` dropped and spaces
/// turned into `-`.
fn slug(heading: &str) -> String {
    // Render the inline markup that GitHub drops: links keep their text,
    // code spans and emphasis lose their markers.
    let mut rendered = String::new();
    let mut rest = heading;
    while let Some(start) = rest.find('[') {
        let (before, from) = rest.split_at(start);
        rendered.push_str(before);
        match (from.find("]("), from.find(')')) {
            (Some(mid), Some(end)) if mid < end && !from[..mid].contains('`') => {
                rendered.push_str(&from[1..mid]);
                rest = &from[end + 1..];
            }
            _ => {
                rendered.push('[');
                rest = &from[1..];
            }
        }
    }
    rendered.push_str(rest);
    rendered
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a markdown text has, duplicates numbered as GitHub does.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for h in headings(text) {
        let base = slug(&h.text);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// Every link target in a markdown text with its line: inline links
/// `[text](target)` and reference definitions `[label]: target`.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in prose_lines(text).iter().enumerate() {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((i + 1, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end..];
        }
        let t = line.trim_start();
        if let (true, Some(close)) = (t.starts_with('['), t.find("]:")) {
            let target = t[close + 2..].split_whitespace().next().unwrap_or("");
            if !target.is_empty() {
                out.push((i + 1, target.to_string()));
            }
        }
    }
    out
}

/// Problems with the links of `docs`, each naming file, line and target.
/// `exists` says whether a repository-relative path exists (file or directory).
fn broken_links(docs: &[Doc], exists: &dyn Fn(&str) -> bool) -> Vec<String> {
    let by_name: BTreeMap<&str, &Doc> = docs.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut problems = Vec::new();
    for doc in docs {
        for (line, target) in links(&doc.text) {
            let where_ = format!("{}:{line}: link `{target}`", doc.name);
            if target.is_empty() {
                problems.push(format!("{where_}: empty target"));
                continue;
            }
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                doc.name.clone()
            } else {
                match normalize(&doc.name, path) {
                    Some(p) => p,
                    None => {
                        problems.push(format!("{where_}: leaves the repository"));
                        continue;
                    }
                }
            };
            if !by_name.contains_key(resolved.as_str()) && !exists(&resolved) {
                problems.push(format!("{where_}: `{resolved}` does not exist"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let Some(target_doc) = by_name.get(resolved.as_str()) else {
                if resolved.ends_with(".md") {
                    problems.push(format!(
                        "{where_}: `{resolved}` is not one of the checked markdown files"
                    ));
                }
                continue;
            };
            let known = anchors(&target_doc.text);
            if !known.contains(anchor) {
                let near: Vec<&String> = known
                    .iter()
                    .filter(|a| {
                        let stem = anchor.split('-').next().unwrap_or(anchor);
                        a.contains(stem)
                    })
                    .take(5)
                    .collect();
                problems.push(format!(
                    "{where_}: `{resolved}` has no heading with the anchor `#{anchor}`{}",
                    if near.is_empty() {
                        String::new()
                    } else {
                        format!(" (similar: {near:?})")
                    }
                ));
            }
        }
    }
    problems
}

/// `rel` resolved against the directory of the repository-relative file `from`.
fn normalize(from: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = from.split('/').collect();
    parts.pop();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let docs = read_docs();
    let root = repo();
    let problems = broken_links(&docs, &|p| root.join(p).exists());
    assert!(
        problems.is_empty(),
        "broken links:\n  {}",
        problems.join("\n  ")
    );
}

/// A merge's conflict markers left in a document (they read as prose, so
/// nothing else would notice).
#[test]
fn no_document_holds_a_merge_conflict() {
    let mut found = Vec::new();
    for doc in read_docs() {
        for (i, line) in doc.text.lines().enumerate() {
            let marker = ["<<<<<<< ", ">>>>>>> ", "||||||| "]
                .iter()
                .any(|m| line.starts_with(m))
                || line == "=======";
            if marker {
                found.push(format!("{}:{}: {line}", doc.name, i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "conflict markers:\n  {}",
        found.join("\n  ")
    );
}

// ---------------------------------------------------------------- rust source

/// Source text with comments replaced by spaces (newlines kept), so that
/// offsets still map to lines and no comment is read as code.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = src[i..].find('\n').map_or(b.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = src[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                blank(&mut out, i, end);
                i = end;
            }
            b'"' | b'r' | b'\'' => i = skip_literal(src, i).unwrap_or(i + 1),
            _ => i += 1,
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// If a string, raw string or char literal starts at `i`, the index just
/// past it. A lifetime (`'de`) is not a literal.
fn skip_literal(src: &str, i: usize) -> Option<usize> {
    let b = src.as_bytes();
    match b[i] {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            Some(b.len())
        }
        b'r' if i == 0 || !is_ident(b[i - 1]) => {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                return None;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let from = i + 2 + hashes;
            Some(
                src[from..]
                    .find(&close)
                    .map_or(b.len(), |n| from + n + close.len()),
            )
        }
        b'\'' => {
            if b.get(i + 1) == Some(&b'\\') {
                src[i + 2..].find('\'').map(|n| i + 2 + n + 1)
            } else {
                let c = src[i + 1..].chars().next()?;
                let after = i + 1 + c.len_utf8();
                (b.get(after) == Some(&b'\'')).then_some(after + 1)
            }
        }
        _ => None,
    }
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The index just past the bracket group opening at `i` (`(`, `[`, `{` or
/// `<`), skipping literals inside.
fn skip_group(src: &str, i: usize) -> usize {
    let b = src.as_bytes();
    let (open, close) = match b[i] {
        b'(' => (b'(', b')'),
        b'[' => (b'[', b']'),
        b'<' => (b'<', b'>'),
        _ => (b'{', b'}'),
    };
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        if let Some(next) = skip_literal(src, j).filter(|_| matches!(b[j], b'"' | b'\'' | b'r')) {
            j = next;
            continue;
        }
        if b[j] == open {
            depth += 1;
        } else if b[j] == close {
            depth -= 1;
            if depth == 0 {
                return j + 1;
            }
        }
        j += 1;
    }
    b.len()
}

/// One field of a struct, as serde sees it.
#[derive(Debug, Clone)]
struct Field {
    /// The key names it accepts (its name after renaming, and its aliases).
    keys: Vec<String>,
    ty: String,
    flatten: bool,
    line: usize,
}

/// A type item of the config source.
#[derive(Debug, Clone)]
enum Item {
    /// A struct with named fields deriving `Deserialize`: a table.
    Table { fields: Vec<Field>, file: String },
    /// A type that deserializes from a value, not a table: an enum deriving
    /// `Deserialize`, or a type with its own `impl Deserialize`.
    Value,
    /// A type that does not derive `Deserialize` (not part of the file).
    NotDeserialized,
}

/// The contents of every `serde(…)` in the attributes, split at top-level commas.
fn serde_args(attrs: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for a in attrs {
        let inner = a.trim_start_matches('#').trim_start_matches('[');
        let inner = inner.trim();
        if let Some(args) = inner.strip_prefix("serde") {
            let args = args.trim().trim_end_matches(']').trim();
            let args = args.strip_prefix('(').and_then(|s| s.strip_suffix(')'));
            out.extend(split_top(args.unwrap_or("")));
        }
    }
    out
}

fn split_top(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    let mut in_str = false;
    for c in s.chars() {
        match c {
            '"' => in_str = !in_str,
            '(' | '<' | '[' if !in_str => depth += 1,
            ')' | '>' | ']' if !in_str => depth -= 1,
            ',' if !in_str && depth == 0 => {
                parts.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        parts.push(cur.trim().to_string());
    }
    parts
}

/// The string value of `name = "…"` (or `name(deserialize = "…")`) in a serde argument.
fn serde_value(arg: &str, name: &str) -> Option<String> {
    let rest = arg.strip_prefix(name)?.trim_start();
    let value = if let Some(v) = rest.strip_prefix('=') {
        v.trim().to_string()
    } else {
        let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
        split_top(inner).into_iter().find_map(|p| {
            p.strip_prefix("deserialize")
                .map(|v| v.trim().trim_start_matches('=').trim().to_string())
        })?
    };
    Some(value.trim_matches('"').to_string())
}

/// Adds an item; a table or value definition wins over a same-named type
/// that does not derive `Deserialize` (a newtype with its own impl).
fn add_item(items: &mut BTreeMap<String, Item>, name: String, item: Item) {
    if matches!(item, Item::NotDeserialized) && items.contains_key(&name) {
        return;
    }
    items.insert(name, item);
}

fn rename_all(name: &str, rule: &str) -> String {
    let words: Vec<&str> = name.split('_').filter(|w| !w.is_empty()).collect();
    let cap = |w: &str| {
        let mut c = w.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect::<String>())
            .unwrap_or_default()
    };
    match rule {
        "lowercase" => name.to_lowercase(),
        "UPPERCASE" => name.to_uppercase(),
        "kebab-case" => words.join("-"),
        "SCREAMING_SNAKE_CASE" => name.to_uppercase(),
        "SCREAMING-KEBAB-CASE" => words.join("-").to_uppercase(),
        "camelCase" => words
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 0 { w.to_string() } else { cap(w) })
            .collect(),
        "PascalCase" => words.iter().map(|w| cap(w)).collect(),
        _ => name.to_string(), // snake_case: field names already are
    }
}

/// Every type item in one source file, by name.
fn parse_items(file: &str, src: &str) -> Result<BTreeMap<String, Item>, String> {
    let code = strip_comments(src);
    let b = code.as_bytes();
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    let mut items = BTreeMap::new();
    let mut attrs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            let open = code[i..].find('[').map_or(b.len(), |n| i + n);
            let end = skip_group(&code, open);
            attrs.push(code[i..end].to_string());
            i = end;
            continue;
        }
        if matches!(c, b'"' | b'\'' | b'r')
            && let Some(next) = skip_literal(&code, i)
        {
            i = next;
            continue;
        }
        if !is_ident(c) {
            if matches!(c, b'{' | b'(' | b'[') {
                i = skip_group(&code, i);
            } else {
                i += 1;
            }
            if c == b';' || c == b'}' {
                attrs.clear();
            }
            continue;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        let word = &code[start..i];
        let derives_de = attrs
            .iter()
            .any(|a| a.contains("derive") && a.contains("Deserialize"));
        match word {
            "pub" | "crate" | "super" | "in" => {}
            "struct" | "enum" => {
                let name_start = code[i..]
                    .find(|c: char| !c.is_whitespace())
                    .map_or(i, |n| i + n);
                let mut j = name_start;
                while j < b.len() && is_ident(b[j]) {
                    j += 1;
                }
                let name = code[name_start..j].to_string();
                let body = code[j..].find(['{', '(', ';']).map_or(b.len(), |n| j + n);
                let end = if b.get(body) == Some(&b';') {
                    body + 1
                } else {
                    skip_group(&code, body)
                };
                let item = if !derives_de {
                    Item::NotDeserialized
                } else if word == "struct" && b.get(body) == Some(&b'{') {
                    let fields = parse_fields(&code[body + 1..end - 1], body + 1, &attrs)
                        .into_iter()
                        .map(|(f, pos)| Field {
                            line: line_of(pos),
                            ..f
                        })
                        .collect();
                    Item::Table {
                        fields,
                        file: file.to_string(),
                    }
                } else {
                    Item::Value
                };
                add_item(&mut items, name, item);
                attrs.clear();
                i = end;
            }
            "impl" => {
                let body = code[i..].find('{').map_or(b.len(), |n| i + n);
                let header: String = code[i..body]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                if let Some(rest) = header.split(" for ").nth(1)
                    && header.contains("Deserialize<'de>")
                {
                    add_item(&mut items, rest.trim().to_string(), Item::Value);
                }
                i = skip_group(&code, body);
                attrs.clear();
            }
            "fn" | "mod" | "trait" => {
                let body = code[i..].find(['{', ';']).map_or(b.len(), |n| i + n);
                i = if b.get(body) == Some(&b';') {
                    body + 1
                } else {
                    skip_group(&code, body)
                };
                attrs.clear();
            }
            _ => {}
        }
    }
    Ok(items)
}

/// The fields of a struct body (`offset` is where the body starts in the
/// file), with the position of each field's name.
fn parse_fields(body: &str, offset: usize, struct_attrs: &[String]) -> Vec<(Field, usize)> {
    let rule = serde_args(struct_attrs)
        .iter()
        .find_map(|a| serde_value(a, "rename_all"));
    let b = body.as_bytes();
    let mut out = Vec::new();
    let mut attrs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() || c == b',' {
            i += 1;
            continue;
        }
        if c == b'#' {
            let open = body[i..].find('[').map_or(b.len(), |n| i + n);
            let end = skip_group(body, open);
            attrs.push(body[i..end].to_string());
            i = end;
            continue;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        let word = &body[start..i];
        if word == "pub" {
            if body[i..].trim_start().starts_with('(') {
                let open = body[i..].find('(').map_or(b.len(), |n| i + n);
                i = skip_group(body, open);
            }
            continue;
        }
        if word.is_empty() {
            i += 1;
            continue;
        }
        // `name: Type` up to the next top-level comma.
        let colon = body[i..].find(':').map_or(b.len(), |n| i + n);
        let mut j = colon + 1;
        let mut depth = 0i32;
        while j < b.len() {
            match b[j] {
                b'<' | b'(' | b'[' => depth += 1,
                b'>' | b')' | b']' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        let ty: String = body[(colon + 1).min(j)..j].split_whitespace().collect();
        let args = serde_args(&attrs);
        let skipped = args
            .iter()
            .any(|a| a == "skip" || a == "skip_deserializing");
        if !skipped {
            let name = args
                .iter()
                .find_map(|a| serde_value(a, "rename"))
                .unwrap_or_else(|| match &rule {
                    Some(r) => rename_all(word, r),
                    None => word.to_string(),
                });
            let mut keys = vec![name];
            keys.extend(args.iter().filter_map(|a| serde_value(a, "alias")));
            out.push((
                Field {
                    keys,
                    ty,
                    flatten: args.iter().any(|a| a == "flatten"),
                    line: 0,
                },
                offset + start,
            ));
        }
        attrs.clear();
        i = j + 1;
    }
    out
}

/// What a field's type is, for keys.
#[derive(Debug, PartialEq)]
enum Shape {
    /// A value: the key is a leaf.
    Leaf,
    /// A table of these keys.
    Table(String),
    /// A map from names the user picks to this shape.
    Map(Box<Shape>),
}

/// The generic arguments of `Name<A, B>`, or none.
fn generic_args(ty: &str) -> (String, Vec<String>) {
    match ty.find('<') {
        Some(lt) if ty.ends_with('>') => {
            let name = ty[..lt].rsplit("::").next().unwrap_or("").to_string();
            (name, split_top(&ty[lt + 1..ty.len() - 1]))
        }
        _ => (ty.rsplit("::").next().unwrap_or("").to_string(), Vec::new()),
    }
}

const VALUE_TYPES: &[&str] = &[
    "String",
    "bool",
    "char",
    "u8",
    "u16",
    "u32",
    "u64",
    "u128",
    "usize",
    "i8",
    "i16",
    "i32",
    "i64",
    "i128",
    "isize",
    "f32",
    "f64",
    "PathBuf",
    // Enums the config takes from the protocol as one word.
    "LogTarget",
];

fn shape(ty: &str, items: &BTreeMap<String, Item>) -> Result<Shape, String> {
    let (name, args) = generic_args(ty);
    match (name.as_str(), args.as_slice()) {
        ("Option" | "Spanned" | "Box" | "Vec" | "VecDeque", [inner]) => shape(inner, items),
        ("BTreeMap" | "HashMap" | "IndexMap", [_, value]) => {
            Ok(Shape::Map(Box::new(shape(value, items)?)))
        }
        (n, []) if VALUE_TYPES.contains(&n) => Ok(Shape::Leaf),
        (n, []) => match items.get(n) {
            Some(Item::Table { .. }) => Ok(Shape::Table(n.to_string())),
            Some(Item::Value) => Ok(Shape::Leaf),
            Some(Item::NotDeserialized) => Err(format!("`{n}` does not derive Deserialize")),
            None => Err(format!(
                "`{n}` is not defined in src/operator/config/ (teach tests/docs.rs what it is)"
            )),
        },
        _ => Err(format!("cannot read the type `{ty}`")),
    }
}

/// One accepted key: its path (`*` for a name the user picks) and where it is declared.
#[derive(Debug, Clone)]
struct Key {
    path: Vec<String>,
    origin: String,
}

/// Every key path the parser accepts, walking the tables from `root`.
fn accepted_keys(items: &BTreeMap<String, Item>, root: &str) -> Result<Vec<Key>, String> {
    let mut out = Vec::new();
    walk(items, root, &[], &mut out, 0)?;
    Ok(out)
}

fn walk(
    items: &BTreeMap<String, Item>,
    table: &str,
    prefix: &[String],
    out: &mut Vec<Key>,
    depth: usize,
) -> Result<(), String> {
    if depth > 16 {
        return Err(format!("tables nest too deep at `{table}`"));
    }
    let Some(Item::Table { fields, file }) = items.get(table) else {
        return Err(format!("`{table}` is not a table struct"));
    };
    for f in fields {
        let origin = format!("struct `{table}` field `{}` ({file}:{})", f.keys[0], f.line);
        let s = shape(&f.ty, items).map_err(|e| format!("{origin}: {e}"))?;
        if f.flatten {
            let Shape::Table(inner) = s else {
                return Err(format!("{origin}: flattened but not a table"));
            };
            walk(items, &inner, prefix, out, depth + 1)?;
            continue;
        }
        for key in &f.keys {
            let mut path = prefix.to_vec();
            path.push(key.clone());
            let mut s = &s;
            while let Shape::Map(inner) = s {
                if **inner == Shape::Leaf {
                    break;
                }
                path.push("*".to_string());
                s = inner;
            }
            match s {
                Shape::Table(inner) => walk(items, inner, &path, out, depth + 1)?,
                _ => out.push(Key {
                    path,
                    origin: origin.clone(),
                }),
            }
        }
    }
    Ok(())
}

fn config_items() -> BTreeMap<String, Item> {
    let dir = repo().join("src/operator/config");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("src/operator/config is readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let mut items = BTreeMap::new();
    for path in files {
        let name = rel(&path);
        let src = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let found = parse_items(&name, &src).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (k, v) in found {
            add_item(&mut items, k, v);
        }
    }
    items
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------- the reference

/// A key the reference documents, with its line.
#[derive(Debug)]
struct DocKey {
    path: Vec<String>,
    line: usize,
}

/// The tables a heading names: its backticked `[a.b]` and `[[a]]`.
fn heading_tables(text: &str) -> Vec<Vec<String>> {
    code_spans(text)
        .into_iter()
        .filter_map(|s| {
            let inner = s.strip_prefix('[')?.strip_suffix(']')?;
            let inner = inner
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .unwrap_or(inner);
            is_key_path(inner).then(|| inner.split('.').map(str::to_string).collect())
        })
        .collect()
}

fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

fn is_key_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// Every key the reference documents (rows and table headings), or problems
/// with rows that name something that is not a key.
fn documented_keys(text: &str) -> Result<Vec<DocKey>, Vec<String>> {
    let heads: BTreeMap<usize, Heading> = headings(text).into_iter().map(|h| (h.line, h)).collect();
    let prose = prose_lines(text);
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut section: Option<(usize, Vec<Vec<String>>)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if let Some(h) = heads.get(&line) {
            let tables = heading_tables(&h.text);
            if !tables.is_empty() {
                for t in &tables {
                    out.push(DocKey {
                        path: t.clone(),
                        line,
                    });
                }
                section = Some((h.level, tables));
            } else if section.as_ref().is_some_and(|(level, _)| h.level <= *level) {
                section = None;
            }
            continue;
        }
        let Some((_, tables)) = &section else {
            continue;
        };
        if prose[i].is_empty() || !raw.trim_start().starts_with('|') {
            continue;
        }
        let first = raw.trim_start().trim_start_matches('|');
        let first = first.split(" | ").next().unwrap_or("");
        for name in code_spans(first) {
            if !is_key_path(&name) {
                problems.push(format!(
                    "docs/configuration.md:{line}: the row's first cell names `{name}`, which is not a key (write keys as `name` or `a.b`)"
                ));
                continue;
            }
            for t in tables {
                let mut path = t.clone();
                path.extend(name.split('.').map(str::to_string));
                out.push(DocKey { path, line });
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// An upper-case segment (`NAME`) stands for any name.
fn is_placeholder(seg: &str) -> bool {
    !seg.is_empty() && seg.chars().all(|c| c.is_ascii_uppercase() || c == '_')
}

fn segment_matches(doc: &str, code: &str) -> bool {
    if code == "*" {
        is_placeholder(doc)
    } else {
        doc == code || is_placeholder(doc)
    }
}

fn path_matches(doc: &[String], code: &[String]) -> bool {
    doc.len() == code.len() && doc.iter().zip(code).all(|(d, c)| segment_matches(d, c))
}

fn show(path: &[String]) -> String {
    path.iter()
        .map(|s| if s == "*" { "NAME" } else { s.as_str() })
        .collect::<Vec<_>>()
        .join(".")
}

/// Keys accepted but not documented, and documented keys not accepted.
fn coverage_problems(accepted: &[Key], documented: &[DocKey]) -> Vec<String> {
    let mut problems = Vec::new();
    for key in accepted {
        if !documented.iter().any(|d| path_matches(&d.path, &key.path)) {
            problems.push(format!(
                "undocumented key `{}` ({}): add a row for it to docs/configuration.md",
                show(&key.path),
                key.origin
            ));
        }
    }
    for d in documented {
        // A documented path is a key, or a table some key is under.
        let known = accepted.iter().any(|k| {
            k.path.len() >= d.path.len() && path_matches(&d.path, &k.path[..d.path.len()])
        });
        if !known {
            problems.push(format!(
                "docs/configuration.md:{}: documents `{}`, which the parser does not accept",
                d.line,
                d.path.join(".")
            ));
        }
    }
    problems
}

#[test]
fn the_configuration_reference_documents_exactly_the_keys_the_parser_accepts() {
    let items = config_items();
    let accepted = accepted_keys(&items, "Config").unwrap_or_else(|e| panic!("{e}"));
    // The parser of this test must see the keys everybody knows, or it reads nothing.
    for must in [
        "service.name",
        "stages.*.hosts",
        "config.dest",
        "health.url",
    ] {
        assert!(
            accepted.iter().any(|k| k.path.join(".") == must),
            "tests/docs.rs read no key `{must}` from src/operator/config/: its parser is out of date"
        );
    }
    let text = fs::read_to_string(repo().join("docs/configuration.md"))
        .expect("docs/configuration.md is readable");
    let documented = documented_keys(&text).unwrap_or_else(|p| panic!("{}", p.join("\n")));
    let problems = coverage_problems(&accepted, &documented);
    assert!(
        problems.is_empty(),
        "the configuration reference and the parser disagree:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------- the checks' own tests

const SNIPPET: &str = r##"
use serde::Deserialize;

/// The root. A comment with a brace } and a fake `pub struct Nope {`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// Doc comment: `pub ghost: u8,` is not a field.
    pub plain: Option<Spanned<String>>,
    #[serde(rename = "renamed-key")]
    pub original: u32,
    #[serde(default, alias = "old_name")]
    pub new_name: bool,
    #[serde(skip)]
    pub internal: u8,
    #[serde(skip_deserializing)]
    pub computed: u8,
    #[serde(flatten)]
    pub common: Common,
    pub nested: Nested,
    pub many: Vec<Spanned<Nested>>,
    pub by_name: BTreeMap<String, Spanned<Nested>>,
    pub labels: BTreeMap<String, String>,
    pub(crate) choice: Choice,
    pub custom: Millis,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Common {
    shared_setting: std::path::PathBuf,
}

#[derive(Debug, Deserialize)]
pub struct Nested {
    pub inner_key: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice { OneWay, Other { field: u8 } }

pub struct Millis(pub u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = format!("{}{{", '}');
        let r = r#"} { "#;
        todo!()
    }
}
"##;

fn snippet_keys() -> Vec<String> {
    let items = parse_items("snippet.rs", SNIPPET).expect("the snippet parses");
    let mut keys: Vec<String> = accepted_keys(&items, "Root")
        .expect("the snippet's keys")
        .into_iter()
        .map(|k| k.path.join("."))
        .collect();
    keys.sort();
    keys
}

#[test]
fn the_source_parser_reads_serde_renames_skips_flattening_and_nesting() {
    assert_eq!(
        snippet_keys(),
        [
            "by_name.*.inner_key",
            "choice",
            "custom",
            "labels",
            "many.inner_key",
            "nested.inner_key",
            "new_name",
            "old_name",
            "plain",
            "renamed-key",
            "shared-setting",
        ]
    );
}

#[test]
fn the_source_parser_refuses_a_type_it_does_not_know() {
    let src = "#[derive(Deserialize)]\nstruct Root { a: Mystery }\n";
    let items = parse_items("x.rs", src).expect("parses");
    let err = accepted_keys(&items, "Root").expect_err("Mystery is unknown");
    assert!(err.contains("`Mystery`") && err.contains("x.rs:2"), "{err}");
}

const REFERENCE: &str = "# Reference

## `[table]` and `[maps.NAME.table]`
| key | default | meaning |
|---|---|---|
| `plain` | — | a key |
| `nested.inner`, `other` | — | two keys |

```toml
| `in_a_fence` | is not a row |
```

## Notes
| `after_the_section` | not a key row |
";

#[test]
fn the_reference_reader_takes_rows_under_table_headings_only() {
    let keys: Vec<String> = documented_keys(REFERENCE)
        .expect("reads")
        .into_iter()
        .map(|k| format!("{}@{}", k.path.join("."), k.line))
        .collect();
    assert_eq!(
        keys,
        [
            "table@3",
            "maps.NAME.table@3",
            "table.plain@6",
            "maps.NAME.table.plain@6",
            "table.nested.inner@7",
            "maps.NAME.table.nested.inner@7",
            "table.other@7",
            "maps.NAME.table.other@7",
        ]
    );
}

fn key(path: &str) -> Key {
    Key {
        path: path.split('.').map(str::to_string).collect(),
        origin: "struct `T` field `f` (x.rs:1)".to_string(),
    }
}

#[test]
fn a_missing_row_and_a_row_for_no_key_are_both_reported_with_their_place() {
    let documented = documented_keys(REFERENCE).expect("reads");
    let accepted = [
        key("table.plain"),
        key("table.nested.inner"),
        key("table.other"),
        key("maps.*.table.plain"),
        key("maps.*.table.nested.inner"),
        key("maps.*.table.other"),
        key("table.forgotten"),
    ];
    let problems = coverage_problems(&accepted, &documented);
    assert_eq!(
        problems,
        [
            "undocumented key `table.forgotten` (struct `T` field `f` (x.rs:1)): add a row for it to docs/configuration.md"
        ]
    );
    let without_other: Vec<Key> = accepted
        .iter()
        .filter(|k| !k.path.ends_with(&["other".to_string()]))
        .cloned()
        .collect();
    let problems = coverage_problems(&without_other, &documented);
    assert!(
        problems
            .iter()
            .any(|p| p == "docs/configuration.md:7: documents `table.other`, which the parser does not accept"),
        "{problems:?}"
    );
}

#[test]
fn slugs_follow_githubs_rules_and_number_duplicates() {
    assert_eq!(
        slug("Configuration reference: `shipjar.toml`"),
        "configuration-reference-shipjartoml"
    );
    assert_eq!(
        slug("`[proxy]` and `[stages.NAME.proxy]`"),
        "proxy-and-stagesnameproxy"
    );
    assert_eq!(
        slug("Connections kept between commands are your ssh config's choice"),
        "connections-kept-between-commands-are-your-ssh-configs-choice"
    );
    assert_eq!(
        slug("A JVM service to 1, 10 and 30 hosts, against the floor"),
        "a-jvm-service-to-1-10-and-30-hosts-against-the-floor"
    );
    assert_eq!(
        slug("snake_case and [a link](x.md)"),
        "snake_case-and-a-link"
    );
    let a = anchors("# Intro\n## Setup\n```\n# not a heading\n```\n## Setup\n### Setup\n");
    assert_eq!(
        a.into_iter().collect::<Vec<_>>(),
        ["intro", "setup", "setup-1", "setup-2"]
    );
}

#[test]
fn a_broken_link_or_anchor_is_reported_with_file_and_line() {
    let docs = [
        Doc {
            name: "README.md".to_string(),
            text: "# Top\n\nSee [ok](docs/a.md#setup), [self](#top), [web](https://x.org/#no).\n\
                   [gone](docs/missing.md) and `[code](docs/nope.md)`.\n\
                   Bad anchor: [a](docs/a.md#set-up), [b](#nowhere).\n"
                .to_string(),
        },
        Doc {
            name: "docs/a.md".to_string(),
            text: "# A\n\n## Setup\n\nBack [up](../README.md#top), [out](../../x.md).\n"
                .to_string(),
        },
    ];
    let problems = broken_links(&docs, &|_| false);
    assert_eq!(
        problems,
        [
            "README.md:4: link `docs/missing.md`: `docs/missing.md` does not exist",
            "README.md:5: link `docs/a.md#set-up`: `docs/a.md` has no heading with the anchor `#set-up` (similar: [\"setup\"])",
            "README.md:5: link `#nowhere`: `README.md` has no heading with the anchor `#nowhere`",
            "docs/a.md:5: link `../../x.md`: leaves the repository",
        ]
    );
}
