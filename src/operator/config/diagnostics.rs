//! Turning config errors into `file:line:col: key `a.b`: message`, followed
//! by the offending line and a caret under the value.
//!
//! Positions come from the TOML parser's spans (an [`Outline`] of the
//! document), never from searching the file's text.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    /// A key of a table.
    Key(&'a str),
    /// An element of an array (or array of tables).
    Index(usize),
}

/// A dotted key path as a list of steps: `"restart.max_delay"` → two keys.
pub fn keys(dotted: &str) -> Vec<Seg<'_>> {
    dotted.split('.').map(Seg::Key).collect()
}

/// The path as the user writes keys: `stages.prod.hosts` (array indices left out).
pub fn display_path(path: &[Seg<'_>]) -> String {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(*k),
            Seg::Index(_) => None,
        })
        .collect();
    keys.join(".")
}

/// Where each key and value of a parsed document is.
#[derive(Debug, Clone, Default)]
pub struct Outline {
    root: Node,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// The key naming this node; none for the root and for array elements.
    key: Option<Range<usize>>,
    /// The value; for a `[table]` or `[[array]]` element, its header.
    value: Range<usize>,
    children: Children,
}

#[derive(Debug, Clone, Default)]
enum Children {
    #[default]
    Leaf,
    Table(Vec<(String, Node)>),
    Array(Vec<Node>),
}

impl Outline {
    /// The outline of a document as the parser returned it.
    pub fn new(doc: &Spanned<DeTable<'_>>) -> Outline {
        Outline {
            root: Node {
                key: None,
                value: doc.span(),
                children: table_children(doc.get_ref()),
            },
        }
    }

    /// Where to point for `path`: its value, or, when the path is missing from
    /// the file, the key of its nearest ancestor that is there.
    pub fn value_span(&self, path: &[Seg<'_>]) -> Range<usize> {
        let mut node = &self.root;
        for seg in path {
            match node.child(*seg) {
                Some(child) => node = child,
                None => return node.key.clone().unwrap_or_else(|| node.value.clone()),
            }
        }
        node.value.clone()
    }

    /// Whether the file sets `path`.
    pub fn contains(&self, path: &[Seg<'_>]) -> bool {
        path.iter()
            .try_fold(&self.root, |node, seg| node.child(*seg))
            .is_some()
    }

    /// Where the key of `path` is (for errors about a key's name).
    pub fn key_span(&self, path: &[Seg<'_>]) -> Range<usize> {
        let node = path
            .iter()
            .try_fold(&self.root, |node, seg| node.child(*seg));
        match node.and_then(|n| n.key.clone()) {
            Some(key) => key,
            None => self.value_span(path),
        }
    }

    /// The key path of the innermost key or value at byte `offset`.
    pub fn path_at(&self, offset: usize) -> Option<String> {
        let mut best = Best::default();
        let mut path = Vec::new();
        self.root.children.visit(&mut path, offset, &mut best);
        best.path.map(|p| p.join("."))
    }
}

/// The narrowest span found so far that contains the offset, and its key path.
#[derive(Default)]
struct Best {
    width: usize,
    path: Option<Vec<String>>,
}

impl Node {
    fn child(&self, seg: Seg<'_>) -> Option<&Node> {
        match (&self.children, seg) {
            (Children::Table(entries), Seg::Key(key)) => {
                entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
            }
            (Children::Array(items), Seg::Index(i)) => items.get(i),
            _ => None,
        }
    }

    fn visit(&self, path: &mut Vec<String>, offset: usize, best: &mut Best) {
        for span in self.key.iter().chain([&self.value]) {
            let inside = span.contains(&offset) || (span.is_empty() && span.start == offset);
            // `<=`: on a tie the deeper node, visited later, wins.
            if inside && (best.path.is_none() || span.len() <= best.width) {
                best.width = span.len();
                best.path = Some(path.clone());
            }
        }
        self.children.visit(path, offset, best);
    }
}

impl Children {
    // A `[table]`'s span is only its header, so every child is visited, not
    // just those inside the parent's span.
    fn visit(&self, path: &mut Vec<String>, offset: usize, best: &mut Best) {
        match self {
            Children::Leaf => {}
            Children::Table(entries) => {
                for (key, node) in entries {
                    path.push(key.clone());
                    node.visit(path, offset, best);
                    path.pop();
                }
            }
            Children::Array(items) => {
                for node in items {
                    node.visit(path, offset, best);
                }
            }
        }
    }
}

fn node(key: Option<Range<usize>>, value: &Spanned<DeValue<'_>>) -> Node {
    let children = match value.get_ref() {
        DeValue::Table(table) => table_children(table),
        DeValue::Array(items) => Children::Array(items.iter().map(|v| node(None, v)).collect()),
        _ => Children::Leaf,
    };
    Node {
        key,
        value: value.span(),
        children,
    }
}

fn table_children(table: &DeTable<'_>) -> Children {
    Children::Table(
        table
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), node(Some(k.span()), v)))
            .collect(),
    )
}

/// The key path a parser or serde error is about: the innermost key or value
/// at its span, plus the field a "missing field" error names.
pub fn error_key(outline: &Outline, span: Option<Range<usize>>, message: &str) -> Option<String> {
    let at = span.and_then(|s| outline.path_at(s.start));
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    match (at, missing) {
        (Some(at), Some(field)) => Some(format!("{at}.{field}")),
        (None, Some(field)) => Some(field.to_string()),
        (at, None) => at,
    }
}

/// Formats `file:line:col: key `k`: message` plus the offending line and a caret.
pub fn describe(
    source: &str,
    file: &Path,
    span: Option<Range<usize>>,
    key: Option<&str>,
    message: &str,
) -> String {
    let message = message.trim_end();
    let key_part = key
        .filter(|k| !k.is_empty())
        .map(|k| format!("key `{k}`: "))
        .unwrap_or_default();
    let Some(span) = span.filter(|s| s.start <= source.len()) else {
        return format!("{}: {key_part}{message}", file.display());
    };
    let (line_no, col, line) = locate(source, span.start);
    let width = span
        .end
        .saturating_sub(span.start)
        .clamp(1, line.len().saturating_sub(col - 1).max(1));
    format!(
        "{}:{line_no}:{col}: {key_part}{message}\n{line_no:>5} | {line}\n      | {}{}",
        file.display(),
        " ".repeat(col - 1),
        "^".repeat(width)
    )
}

/// 1-based line and column of a byte offset, with the line's text.
fn locate(source: &str, offset: usize) -> (usize, usize, &str) {
    let before = &source[..offset.min(source.len())];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = source[line_start..].lines().next().unwrap_or("");
    let col = before[line_start..].chars().count() + 1;
    (line_no, col, line)
}

#[cfg(test)]
mod tests {
    use super::super::{MINIMAL, load_str as load};

    #[test]
    fn unknown_key_names_file_line_column_and_key() {
        let err = load(&format!("{MINIMAL}colour = \"red\"\n")).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.message
                .starts_with("shipjar.toml:4:1: key `service.colour`"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("unknown field `colour`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_duration_says_what_is_expected() {
        let err = load(&format!(
            "{MINIMAL}[health]\ntcp = 8080\nstart_timeout = \"soon\"\n"
        ))
        .unwrap_err();
        assert!(
            err.message
                .contains("shipjar.toml:6:17: key `health.start_timeout`"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("expected e.g. \"90s\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn invalid_service_name_is_rejected() {
        let err = load("[service]\nname = \"Bad_Name\"\njar = \"a.jar\"\n").unwrap_err();
        assert!(
            err.message.contains("shipjar.toml:2:8: key `service.name`"),
            "{}",
            err.message
        );
    }

    /// The first line of a config error: `file:line:col: key `k`: message`.
    fn first_line(text: &str) -> String {
        let err = load(text).expect_err("the file is invalid");
        err.message.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn a_key_written_earlier_under_another_table_is_not_the_one_blamed() {
        let text = "[stages.prod]\nhosts = [\"a\"]\n[stages.prod.vars]\njar = \"x\"\n\
                    [service]\nname = \"a\"\njar = \"lib/a.jar\"\n";
        assert_eq!(
            first_line(text),
            "shipjar.toml:7:7: key `service.jar`: expected a plain file name such as \"hello.jar\""
        );
    }

    #[test]
    fn a_missing_jar_points_at_the_service_table_not_a_secret_named_service() {
        let text = "[stages.prod]\nhosts = [\"a\"]\n[stages.prod.secrets]\nservice = { env = \"T\" }\n\
                    [service]\nname = \"a\"\n";
        assert_eq!(
            first_line(text),
            "shipjar.toml:5:2: key `service`: missing `jar` (a JVM service) or `command` (anything else)"
        );
    }

    #[test]
    fn a_missing_field_names_its_full_key() {
        assert_eq!(
            first_line("[service]\njar = \"a.jar\"\n"),
            "shipjar.toml:1:1: key `service.name`: missing field `name`"
        );
    }

    #[test]
    fn restart_errors_point_at_the_value_not_the_table_header() {
        let both = format!("{MINIMAL}[restart]\ninitial_delay = \"2m\"\nmax_delay = \"1m\"\n");
        assert_eq!(
            first_line(&both),
            "shipjar.toml:6:13: key `restart.max_delay`: must not be shorter than `initial_delay`"
        );
        let initial_only = format!("{MINIMAL}[restart]\nfactor = 3\ninitial_delay = \"2m\"\n");
        assert_eq!(
            first_line(&initial_only),
            "shipjar.toml:6:17: key `restart.initial_delay`: must not be longer than `max_delay` (60000ms unless set)"
        );
        let window = format!("{MINIMAL}[restart]\nenabled = true\nwindow = \"0s\"\n");
        assert_eq!(
            first_line(&window),
            "shipjar.toml:6:10: key `restart.window`: must be longer than 0s"
        );
    }

    #[test]
    fn stage_errors_point_into_the_stage_table() {
        let empty = format!("{MINIMAL}[stages.prod]\nsudo = true\nhosts = []\n");
        assert_eq!(
            first_line(&empty),
            "shipjar.toml:6:9: key `stages.prod.hosts`: needs at least one host"
        );
        let var = format!(
            "{MINIMAL}[stages.prod]\nhosts = [\"a\"]\n[stages.prod.vars]\nport = \"1\"\nservice = \"x\"\n"
        );
        assert!(
            first_line(&var).starts_with("shipjar.toml:8:1: key `stages.prod.vars.service`: "),
            "{}",
            first_line(&var)
        );
        let name = format!("{MINIMAL}[stages.Prod]\nhosts = [\"a\"]\n");
        assert_eq!(
            first_line(&name),
            "shipjar.toml:4:9: key `stages.Prod`: a stage name must be [a-z][a-z0-9_-]*"
        );
    }

    #[test]
    fn a_bad_rolling_batch_names_the_batch_key() {
        let inline =
            format!("{MINIMAL}[stages.prod]\nhosts = [\"a\"]\nrolling = {{ batch = \"0%\" }}\n");
        assert!(
            first_line(&inline).starts_with(
                "shipjar.toml:6:21: key `stages.prod.rolling.batch`: invalid batch `0%`"
            ),
            "{}",
            first_line(&inline)
        );
        let multi_line = format!(
            "{MINIMAL}[stages.prod]\nhosts = [\"a\"]\nrolling = {{\n  max_failed = 1,\n  batch = \"0%\",\n}}\n"
        );
        assert!(
            first_line(&multi_line).starts_with(
                "shipjar.toml:8:11: key `stages.prod.rolling.batch`: invalid batch `0%`"
            ),
            "{}",
            first_line(&multi_line)
        );
        let negative =
            format!("{MINIMAL}[stages.prod]\nhosts = [\"a\"]\nrolling = {{ max_failed = -1 }}\n");
        assert!(
            first_line(&negative)
                .starts_with("shipjar.toml:6:26: key `stages.prod.rolling.max_failed`: "),
            "{}",
            first_line(&negative)
        );
    }

    #[test]
    fn a_canary_and_its_pause_come_together_and_errors_name_the_key() {
        let stage = |rolling: &str| {
            format!("{MINIMAL}[stages.prod]\nhosts = [\"a\", \"b\"]\nrolling = {rolling}\n")
        };
        let lone = first_line(&stage("{ canary = 1 }"));
        assert!(
            lone.starts_with(
                "shipjar.toml:6:22: key `stages.prod.rolling.canary`: a canary needs a `pause`"
            ),
            "{lone}"
        );
        let pause = first_line(&stage("{ pause = \"10m\" }"));
        assert!(
            pause.starts_with(
                "shipjar.toml:6:21: key `stages.prod.rolling.pause`: a pause follows a canary"
            ),
            "{pause}"
        );
        let bad = first_line(&stage("{ canary = \"10%\", pause = \"soon\" }"));
        assert!(
            bad.starts_with(
                "shipjar.toml:6:37: key `stages.prod.rolling.pause`: invalid pause `soon`"
            ),
            "{bad}"
        );
        let zero = first_line(&stage("{ canary = \"0%\", pause = \"confirm\" }"));
        assert!(
            zero.starts_with(
                "shipjar.toml:6:22: key `stages.prod.rolling.canary`: invalid batch `0%`"
            ),
            "{zero}"
        );
    }

    #[test]
    fn a_bad_entry_in_the_second_config_element_is_located() {
        let text = format!(
            "config = [\n  {{ builtin = \"service-properties\", dest = \"a\" }},\n  \
             {{ dest = \"b\", builtin = \"nope\" }},\n]\n{MINIMAL}"
        );
        assert!(
            first_line(&text)
                .starts_with("shipjar.toml:3:27: key `config.builtin`: unknown variant `nope`"),
            "{}",
            first_line(&text)
        );
        let neither = format!(
            "{MINIMAL}[[config]]\nbuiltin = \"service-properties\"\ndest = \"a\"\n\
             [[config]]\ndest = \"b\"\n"
        );
        assert_eq!(
            first_line(&neither),
            "shipjar.toml:7:1: key `config`: each [[config]] needs exactly one of `template` or `builtin`"
        );
    }

    #[test]
    fn a_duration_typo_in_an_inline_table_names_its_key() {
        let text =
            format!("health = {{ start_timeout = \"90s\", interval = \"5 secnds\" }}\n{MINIMAL}");
        assert!(
            first_line(&text).starts_with(
                "shipjar.toml:1:46: key `health.interval`: invalid duration `5 secnds`"
            ),
            "{}",
            first_line(&text)
        );
    }

    #[test]
    fn exclusive_settings_point_at_the_second_one() {
        let build = format!(
            "{MINIMAL}[build]\ncommand = \"x\"\nartifact = \"a.jar\"\nversion = \"1\"\nversion_command = \"y\"\n"
        );
        assert_eq!(
            first_line(&build),
            "shipjar.toml:8:19: key `build.version_command`: set either `version` or `version_command`, not both"
        );
        let stop = format!("{MINIMAL}[stop]\nhook_url = \"http://x/\"\nhook_command = [\"y\"]\n");
        assert_eq!(
            first_line(&stop),
            "shipjar.toml:6:16: key `stop.hook_command`: set either `hook_url` or `hook_command`, not both"
        );
    }

    /// The tree the parser recovers after a syntax error still names the key.
    #[test]
    fn a_syntax_error_names_the_key_it_is_in() {
        let text = format!("{MINIMAL}[health]\ntcp = 80x\n");
        assert!(
            first_line(&text).starts_with("shipjar.toml:5:7: key `health.tcp`: "),
            "{}",
            first_line(&text)
        );
    }
}
