//! The one masking sink for secret values, shared by the operator (everything
//! it prints) and the host (every answer the agent sends, `revisions.log`, the
//! supervisor's state file).
//!
//! A [`Masker`] is built from the secret values and masks, in bytes, every
//! occurrence of each value in each of the forms it is likely to be written
//! in: raw; for a multi-line value, each of its lines; JSON-escaped (serde's
//! form and the ASCII-only `\uXXXX` form); shell-quoted; standard and
//! URL-safe base64 at each of the three alignments a value can have inside a
//! longer base64 stream (the characters at its edges, which mix its bits with
//! its neighbours', are masked too), padded or not; any run of base64
//! characters that decodes to 8 bytes of a value in a row (each line of
//! `base64`'s wrapped output, a blob holding part of a key); and URL-encoded,
//! found by decoding the text (`%XX` in either case, `+` read both as `+`
//! and as a space) so that any choice of escaped characters is caught. Not
//! caught: fewer than 8 bytes of a value at the edge of a wrapped base64
//! line, and encodings of encodings.
//!
//! Every match of every form is found (overlapping too) and the union of the
//! matched ranges is masked, which masks a value containing another whole.
//! A value (or line) shorter than [`MIN_SECRET_CHARS`] is masked only where it
//! stands as a whole word; a line that short is masked only when its secret
//! has `allow_short` (alone it is a fragment that would blank ordinary text).
//!
//! It masks whole texts (a message, a line, a record), not a stream: a
//! caller masks before it cuts a text short, never after, so no prefix of a
//! secret survives the cut.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::{Deserialize, Serialize};

/// What replaces a secret value in any output.
pub const MASK: &str = "********";

/// Shortest secret value masked everywhere it occurs; shorter values would
/// blank ordinary text (a `1` in every timestamp) and so reveal themselves.
pub const MIN_SECRET_CHARS: usize = 8;

/// One secret value to mask, as the operator sends it and the host keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// The value itself.
    pub value: String,
    /// The user accepted a short value (and short lines): masked as whole words.
    pub allow_short: bool,
}

/// Where a base64 needle may have a character on each side that mixes the
/// value's bits with its neighbours'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alphabet {
    Standard,
    UrlSafe,
}

/// How one needle is matched.
#[derive(Debug, Clone, Copy)]
struct Rule {
    /// Only where no letter or digit touches it.
    whole_word: bool,
    /// A base64 needle: its alphabet, and whether to take one more
    /// character on the left and on the right.
    base64: Option<(Alphabet, bool, bool)>,
}

/// Masks secret values in every form; cheap to apply, built once per set of values.
pub struct Masker {
    automaton: Option<AhoCorasick>,
    rules: Vec<Rule>,
    /// Every run of [`MIN_SECRET_CHARS`] bytes of each value long enough to
    /// be masked anywhere: looked for in decoded base64 blobs, which may
    /// hold any piece of a value (`base64` wraps its output at 76 columns).
    fragments: Option<AhoCorasick>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the needles: they are the secrets.
        write!(f, "Masker({} needles)", self.rules.len())
    }
}

impl Masker {
    /// A masker for `secrets` (empty values are ignored).
    pub fn new(secrets: &[SecretValue]) -> Masker {
        let mut needles: Vec<(Vec<u8>, Rule)> = Vec::new();
        let mut fragments: std::collections::BTreeSet<&[u8]> = Default::default();
        for secret in secrets {
            for (unit, whole_word) in units(secret) {
                add_forms(&mut needles, &unit, whole_word);
            }
            if secret.value.chars().count() >= MIN_SECRET_CHARS {
                fragments.extend(secret.value.as_bytes().windows(MIN_SECRET_CHARS));
            }
        }
        let mut patterns = Vec::with_capacity(needles.len());
        let mut rules = Vec::with_capacity(needles.len());
        for (needle, rule) in needles {
            patterns.push(needle);
            rules.push(rule);
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(&patterns)
                .ok()
        };
        let fragments = if fragments.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new().build(&fragments).ok()
        };
        Masker {
            automaton,
            rules,
            fragments,
        }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// `bytes` with every form of every secret replaced by [`MASK`].
    pub fn mask_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(automaton) = &self.automaton else {
            return Cow::Borrowed(bytes);
        };
        let mut ranges = Vec::new();
        self.find(automaton, bytes, None, &mut ranges);
        // URL-encoded forms: the decoded text, `+` kept and `+` as a space.
        if bytes.contains(&b'%') {
            let view = percent_decoded(bytes, false);
            self.find(automaton, &view.bytes, Some(&view.spans), &mut ranges);
        }
        if bytes.contains(&b'+') {
            let view = percent_decoded(bytes, true);
            self.find(automaton, &view.bytes, Some(&view.spans), &mut ranges);
        }
        if let Some(fragments) = &self.fragments {
            base64_blobs_holding(fragments, bytes, &mut ranges);
        }
        if ranges.is_empty() {
            return Cow::Borrowed(bytes);
        }
        ranges.sort_unstable();
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        for (start, end) in ranges {
            if end <= at {
                continue;
            }
            if start >= at {
                out.extend_from_slice(&bytes[at..start]);
                out.extend_from_slice(MASK.as_bytes());
            }
            // An overlap with the range before extends the mask already written.
            at = end;
        }
        out.extend_from_slice(&bytes[at..]);
        Cow::Owned(out)
    }

    /// `text` masked (a match never splits a character, so it stays UTF-8).
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.mask_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// `value` with every string in it (keys too) masked: done before
    /// encoding, so a value JSON would escape is still found.
    pub fn mask_json(&self, value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.mask(&s).into_owned()),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.mask_json(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.mask(&k).into_owned(), self.mask_json(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// `value` with its string values masked, but not its keys nor the
    /// values of the keys in `words` (a message's tags: protocol words, never
    /// text from elsewhere, which a short secret must not make unreadable).
    pub fn mask_json_values(&self, value: serde_json::Value, words: &[&str]) -> serde_json::Value {
        use serde_json::Value;
        if self.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.mask(&s).into_owned()),
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|v| self.mask_json_values(v, words))
                    .collect(),
            ),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = if words.contains(&k.as_str()) && v.is_string() {
                            v
                        } else {
                            self.mask_json_values(v, words)
                        };
                        (k, v)
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    /// Collects the ranges (of the original bytes) of every valid match in `hay`.
    fn find(
        &self,
        automaton: &AhoCorasick,
        hay: &[u8],
        spans: Option<&[(usize, usize)]>,
        ranges: &mut Vec<(usize, usize)>,
    ) {
        for m in automaton.find_overlapping_iter(hay) {
            let rule = self.rules[m.pattern().as_usize()];
            let (mut start, mut end) = (m.start(), m.end());
            if rule.whole_word && (word_char_before(hay, start) || word_char_after(hay, end)) {
                continue;
            }
            if let Some((alphabet, left, right)) = rule.base64 {
                if left && start > 0 && in_alphabet(alphabet, hay[start - 1]) {
                    start -= 1;
                }
                if right && end < hay.len() && in_alphabet(alphabet, hay[end]) {
                    end += 1;
                }
                // Padding after the last character belongs to the encoding.
                let mut pad = 0;
                while pad < 2 && end < hay.len() && hay[end] == b'=' {
                    end += 1;
                    pad += 1;
                }
            }
            ranges.push(match spans {
                None => (start, end),
                Some(spans) => (spans[start].0, spans[end - 1].1),
            });
        }
    }
}

/// The parts of a secret matched on their own, each with whether only as a
/// whole word: the whole value, and each line of a multi-line value.
fn units(secret: &SecretValue) -> Vec<(String, bool)> {
    let value = secret.value.as_str();
    if value.is_empty() {
        return Vec::new();
    }
    let short = |s: &str| s.chars().count() < MIN_SECRET_CHARS;
    let mut units = vec![(value.to_string(), short(value))];
    if value.contains('\n') || value.contains('\r') {
        for line in value.split(['\n', '\r']) {
            if line.trim().is_empty() || units.iter().any(|(u, _)| u == line) {
                continue;
            }
            if !short(line) {
                units.push((line.to_string(), false));
            } else if secret.allow_short {
                units.push((line.to_string(), true));
            }
        }
    }
    units
}

/// Adds the needles of every written form of `unit`.
fn add_forms(needles: &mut Vec<(Vec<u8>, Rule)>, unit: &str, whole_word: bool) {
    let plain = Rule {
        whole_word,
        base64: None,
    };
    let mut push = |needle: Vec<u8>, rule: Rule| {
        if !needle.is_empty() && !needles.iter().any(|(n, _)| *n == needle) {
            needles.push((needle, rule));
        }
    };
    push(unit.as_bytes().to_vec(), plain);
    let json = serde_json::to_string(unit).unwrap_or_default();
    if json.len() >= 2 {
        push(json.as_bytes()[1..json.len() - 1].to_vec(), plain);
    }
    push(json_ascii(unit).into_bytes(), plain);
    push(crate::protocol::shell::quote(unit).into_bytes(), plain);
    for alphabet in [Alphabet::Standard, Alphabet::UrlSafe] {
        if whole_word {
            // A short value only standing alone, padded or not.
            let full = base64(alphabet, unit.as_bytes());
            push(full.clone().into_bytes(), plain);
            push(full.trim_end_matches('=').as_bytes().to_vec(), plain);
            continue;
        }
        for offset in 0..3 {
            let (needle, left, right) = base64_aligned(alphabet, unit.as_bytes(), offset);
            push(
                needle.into_bytes(),
                Rule {
                    whole_word: false,
                    base64: Some((alphabet, left, right)),
                },
            );
        }
    }
}

/// JSON-escaped, with every character outside ASCII as `\uXXXX` (Python's default).
fn json_ascii(unit: &str) -> String {
    let mut out = String::new();
    for c in unit.chars() {
        if c.is_ascii() {
            let quoted = serde_json::to_string(&c.to_string()).unwrap_or_default();
            out.push_str(
                quoted
                    .get(1..quoted.len().saturating_sub(1))
                    .unwrap_or_default(),
            );
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn table(alphabet: Alphabet) -> &'static [u8; 64] {
    match alphabet {
        Alphabet::Standard => STANDARD,
        Alphabet::UrlSafe => URL_SAFE,
    }
}

fn in_alphabet(alphabet: Alphabet, byte: u8) -> bool {
    table(alphabet).contains(&byte)
}

/// Standard padded base64 of `bytes` (HTTP basic credentials use it).
pub fn base64_standard(bytes: &[u8]) -> String {
    base64(Alphabet::Standard, bytes)
}

/// Padded base64 of `bytes`.
fn base64(alphabet: Alphabet, bytes: &[u8]) -> String {
    let table = table(alphabet);
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The characters of the base64 of `bytes` that depend on nothing else when
/// `bytes` start `offset` bytes into a 3-byte group of a longer stream, and
/// whether a character mixing its bits with a neighbour's sits on the left
/// and on the right.
fn base64_aligned(alphabet: Alphabet, bytes: &[u8], offset: usize) -> (String, bool, bool) {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(bytes);
    let encoded = base64(alphabet, &padded);
    let first_bit = 8 * offset;
    let end_bit = 8 * (offset + bytes.len());
    // Characters wholly inside [first_bit, end_bit): 6-bit groups.
    let first = first_bit.div_ceil(6);
    let last = end_bit / 6;
    let needle = encoded
        .get(first..last.max(first))
        .unwrap_or_default()
        .to_string();
    (
        needle,
        !first_bit.is_multiple_of(6),
        !end_bit.is_multiple_of(6),
    )
}

/// Shortest run of base64 characters decoded in search of a piece of a
/// secret: enough for [`MIN_SECRET_CHARS`] bytes at any alignment.
const MIN_BLOB_CHARS: usize = 4 * MIN_SECRET_CHARS.div_ceil(3) + 3;

/// Adds the range of every run of base64 characters (either alphabet, with
/// its padding) that decodes, at one of the four character alignments, to
/// bytes holding a run of a secret.
fn base64_blobs_holding(fragments: &AhoCorasick, bytes: &[u8], ranges: &mut Vec<(usize, usize)>) {
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b"+/-_".contains(&b);
    let mut at = 0;
    while at < bytes.len() {
        if !is_b64(bytes[at]) {
            at += 1;
            continue;
        }
        let start = at;
        while at < bytes.len() && is_b64(bytes[at]) {
            at += 1;
        }
        let run = &bytes[start..at];
        let mut end = at;
        while end < bytes.len() && end - at < 2 && bytes[end] == b'=' {
            end += 1;
        }
        if run.len() >= MIN_BLOB_CHARS
            && (0..4).any(|skip| fragments.is_match(&base64_decoded(&run[skip..])))
        {
            ranges.push((start, end));
        }
    }
}

/// Bytes of base64 characters (both alphabets), a partial last group included.
fn base64_decoded(chars: &[u8]) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        _ => 63,
    };
    let mut out = Vec::with_capacity(chars.len() * 3 / 4);
    for group in chars.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in group.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..group.len().saturating_sub(1)]);
    }
    out
}

/// Text with `%XX` escapes decoded, and where each byte of it came from.
struct View {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

fn percent_decoded(bytes: &[u8], plus_is_space: bool) -> View {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut view = View {
        bytes: Vec::with_capacity(bytes.len()),
        spans: Vec::with_capacity(bytes.len()),
    };
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            view.bytes.push(hi << 4 | lo);
            view.spans.push((i, i + 3));
            i += 3;
            continue;
        }
        view.bytes.push(if plus_is_space && bytes[i] == b'+' {
            b' '
        } else {
            bytes[i]
        });
        view.spans.push((i, i + 1));
        i += 1;
    }
    view
}

/// Whether the character ending at `at` is a letter or digit.
fn word_char_before(hay: &[u8], at: usize) -> bool {
    (at.saturating_sub(4)..at)
        .rev()
        .find_map(|start| std::str::from_utf8(&hay[start..at]).ok())
        .and_then(|s| s.chars().next_back())
        .is_some_and(char::is_alphanumeric)
}

/// Whether the character starting at `at` is a letter or digit.
fn word_char_after(hay: &[u8], at: usize) -> bool {
    (at + 1..=(at + 4).min(hay.len()))
        .find_map(|end| std::str::from_utf8(&hay[at..end]).ok())
        .and_then(|s| s.chars().next())
        .is_some_and(char::is_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(values: &[&str]) -> Masker {
        Masker::new(
            &values
                .iter()
                .map(|v| SecretValue {
                    value: v.to_string(),
                    allow_short: false,
                })
                .collect::<Vec<_>>(),
        )
    }

    fn masked(m: &Masker, text: &str) -> String {
        m.mask(text).into_owned()
    }

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n\
        VJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDu\n\
        Zw==\n\
        -----END PRIVATE KEY-----";

    #[test]
    fn raw_values_are_masked_longest_first_and_overlapping() {
        let m = masker(&["hunter2-pass", "hunter2-pass-extra"]);
        assert_eq!(
            masked(&m, "pw=hunter2-pass-extra and hunter2-pass."),
            "pw=******** and ********."
        );
        assert_eq!(masked(&m, "nothing here"), "nothing here");
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn each_line_of_a_multi_line_secret_is_masked_alone() {
        let m = masker(&[PEM]);
        for line in PEM.lines().filter(|l| l.len() >= MIN_SECRET_CHARS) {
            let out = masked(&m, &format!("hook said: {line} (end)"));
            assert_eq!(out, "hook said: ******** (end)", "{line}");
        }
        // The whole value at once, and with CRLF line ends.
        assert_eq!(masked(&m, &format!("<{PEM}>")), "<********>");
        let crlf = PEM.replace('\n', "\r\n");
        assert!(!masked(&m, &crlf).contains("MIIE"), "{}", masked(&m, &crlf));
        // A line under the minimum is a fragment: left alone without allow_short.
        assert_eq!(masked(&m, "Zw=="), "Zw==");
    }

    #[test]
    fn short_lines_follow_allow_short() {
        let secret = SecretValue {
            value: "first-line-long\nab1\nlast-line-long".into(),
            allow_short: true,
        };
        let m = Masker::new(&[secret]);
        assert_eq!(masked(&m, "x ab1 y ab12 zab1"), "x ******** y ab12 zab1");
        assert_eq!(masked(&m, "first-line-long"), "********");
    }

    #[test]
    fn a_value_with_newline_escapes_in_json_is_masked() {
        let secret = "new\nline-secret\r\nend\"q\\ü";
        let m = masker(&[secret]);
        let json = serde_json::to_string(secret).unwrap();
        assert_eq!(
            masked(&m, &format!("{{\"pw\":{json}}}")),
            "{\"pw\":\"********\"}"
        );
        let python = "new\\nline-secret\\r\\nend\\\"q\\\\\\u00fc";
        assert_eq!(json_ascii(secret), python);
        assert_eq!(masked(&m, &format!("[{python}]")), "[********]");
    }

    #[test]
    fn url_encoded_forms_are_masked_in_any_case_and_spelling() {
        let m = masker(&["p@ss word/ü+1"]);
        for encoded in [
            "p%40ss%20word%2F%C3%BC%2B1",
            "p%40ss+word%2f%c3%bc%2b1",
            "p%40ss%20word/%C3%BC+1",
            "p@ss%20word/%c3%BC%2B1",
        ] {
            assert_eq!(
                masked(&m, &format!("GET /login?pw={encoded}&x=1 HTTP/1.1")),
                "GET /login?pw=********&x=1 HTTP/1.1",
                "{encoded}"
            );
        }
    }

    #[test]
    fn base64_forms_are_masked_at_every_alignment() {
        let secret = "s3cr3t-value?>~";
        let m = masker(&[secret]);
        for alphabet in [Alphabet::Standard, Alphabet::UrlSafe] {
            for prefix in ["", "a", "ab", "abc", "abcd"] {
                for suffix in ["", "x", "xy", "xyz"] {
                    let stream = format!("{prefix}{secret}{suffix}");
                    let encoded = base64(alphabet, stream.as_bytes());
                    let out = masked(&m, &format!("data: {encoded} ."));
                    // Only characters that depend on the prefix or suffix alone are left.
                    let inner = out.trim_start_matches("data: ").trim_end_matches(" .");
                    let (left, right) = inner
                        .split_once(MASK)
                        .unwrap_or_else(|| panic!("{alphabet:?} {stream:?}: {out}"));
                    assert!(left.len() <= 8 * prefix.len() / 6, "{stream:?}: {out}");
                    assert!(
                        right.len() <= (8 * suffix.len()).div_ceil(6) + 2,
                        "{stream:?}: {out}"
                    );
                    assert!(!right.contains(MASK), "{stream:?}: {out}");
                }
            }
        }
        // Unpadded, standing alone.
        let bare = base64(Alphabet::UrlSafe, secret.as_bytes());
        let bare = bare.trim_end_matches('=');
        assert_eq!(masked(&m, &format!("t={bare};")), "t=********;");
    }

    #[test]
    fn wrapped_base64_lines_holding_a_piece_of_a_secret_are_masked() {
        let m = masker(&[PEM]);
        let file = format!("url=jdbc:x\nuser=app\npassword={PEM}\n");
        let encoded = base64(Alphabet::Standard, file.as_bytes());
        // As `base64` prints it: 76 columns, each line masked on its own.
        let lines: Vec<String> = encoded
            .as_bytes()
            .chunks(76)
            .map(|l| masked(&m, std::str::from_utf8(l).unwrap()))
            .collect();
        assert!(lines.iter().any(|l| l == MASK), "{lines:#?}");
        for line in lines.iter().filter(|l| *l != MASK) {
            let bytes = base64_decoded(line.trim_end_matches('=').as_bytes());
            assert!(
                !bytes
                    .windows(MIN_SECRET_CHARS)
                    .any(|w| PEM.as_bytes().windows(MIN_SECRET_CHARS).any(|s| s == w)),
                "{line} holds a piece of the secret"
            );
        }
        // Ordinary long words and hashes are left alone.
        let text = "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 ok";
        assert_eq!(masked(&m, text), text);
    }

    #[test]
    fn shell_quoted_forms_are_masked() {
        let m = masker(&["it's-a-secret"]);
        let quoted = crate::protocol::shell::quote("it's-a-secret");
        assert_eq!(quoted, "'it'\\''s-a-secret'");
        assert_eq!(masked(&m, &format!("sh -c {quoted}")), "sh -c ********");
    }

    #[test]
    fn a_short_value_is_masked_only_as_a_whole_word() {
        let m = Masker::new(&[SecretValue {
            value: "x9".into(),
            allow_short: true,
        }]);
        assert_eq!(
            masked(&m, "pw=x9; id x9x9, ax9 x9b (x9) éx9"),
            "pw=********; id x9x9, ax9 x9b (********) éx9"
        );
        // Its standalone base64 too ("eDk=").
        assert_eq!(masked(&m, "b=eDk= c=eDkz"), "b=******** c=eDkz");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_masked_too() {
        let m = masker(&["binary-secret"]);
        let mut hay = vec![0xff, 0xfe, b' '];
        hay.extend_from_slice(b"binary-secret");
        hay.push(0x80);
        assert_eq!(
            m.mask_bytes(&hay).into_owned(),
            [&[0xff, 0xfe, b' '][..], MASK.as_bytes(), &[0x80]].concat()
        );
    }

    #[test]
    fn json_values_are_masked_before_encoding_keys_too() {
        let secret = "s3\"cr\\et\n\u{1}ü-9f1e";
        let m = masker(&[secret]);
        let value = serde_json::json!({"line": format!("pw={secret}"), secret: [secret]});
        let text = serde_json::to_string(&m.mask_json(value)).unwrap();
        assert_eq!(
            text,
            "{\"********\":[\"********\"],\"line\":\"pw=********\"}"
        );
    }

    #[test]
    fn message_tags_and_keys_stay_readable() {
        let m = Masker::new(&[SecretValue {
            value: "status".into(),
            allow_short: true,
        }]);
        let value = serde_json::json!({"type": "status", "status": {"detail": "status ok"}});
        assert_eq!(
            m.mask_json_values(value, &["type"]),
            serde_json::json!({"type": "status", "status": {"detail": "******** ok"}})
        );
    }

    #[test]
    fn an_empty_masker_changes_nothing() {
        let m = Masker::new(&[]);
        assert!(m.is_empty());
        assert_eq!(masked(&m, "abc %41 +"), "abc %41 +");
        assert_eq!(format!("{m:?}"), "Masker(0 needles)");
    }
}
