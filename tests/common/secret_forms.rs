//! The forms a secret can be written in, to search output and files for (the
//! leak search of the fault suite and of the secrets tests): raw, each line
//! of a multi-line value, JSON-escaped, URL-encoded (upper and lower hex,
//! `%20` and `+`), standard and URL-safe base64 at each alignment inside a
//! longer stream, shell-quoted; and any base64 blob (a line of wrapped
//! `base64` output) that decodes to 8 bytes of it in a row. Written here
//! independently of shipjar's masker, so a form it forgets is still looked for.

/// Shortest part of a secret searched for on its own (shipjar's minimum).
pub const MIN_CHARS: usize = 8;

/// `(what, bytes)` for every form of `secret` worth searching for.
pub fn forms(secret: &str) -> Vec<(String, Vec<u8>)> {
    let mut units = vec![("value".to_string(), secret.to_string())];
    if secret.contains('\n') {
        for (i, line) in secret.split('\n').enumerate() {
            let line = line.trim_end_matches('\r');
            if line.chars().count() >= MIN_CHARS {
                units.push((format!("line {}", i + 1), line.to_string()));
            }
        }
    }
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |what: String, bytes: Vec<u8>| {
        if bytes.len() >= MIN_CHARS && !out.iter().any(|(_, b)| *b == bytes) {
            out.push((what, bytes));
        }
    };
    for (name, unit) in &units {
        add(format!("{name} raw"), unit.as_bytes().to_vec());
        let json = serde_json::to_string(unit).expect("a string encodes");
        add(
            format!("{name} JSON-escaped"),
            json.as_bytes()[1..json.len() - 1].to_vec(),
        );
        add(
            format!("{name} shell-quoted"),
            format!("'{}'", unit.replace('\'', "'\\''")).into_bytes(),
        );
        for (how, upper, plus) in [
            ("URL-encoded", true, false),
            ("URL-encoded, lower hex", false, false),
            ("form-encoded", true, true),
        ] {
            add(
                format!("{name} {how}"),
                url_encode(unit, upper, plus).into_bytes(),
            );
        }
        for (alphabet, table) in [("base64", STANDARD), ("URL-safe base64", URL_SAFE)] {
            for offset in 0..3 {
                add(
                    format!("{name} {alphabet} at offset {offset}"),
                    base64_inner(table, unit.as_bytes(), offset).into_bytes(),
                );
            }
        }
    }
    out
}

/// The names of the forms of `secret` that occur in `hay`.
pub fn found(hay: &[u8], secret: &str) -> Vec<String> {
    let forms = forms(secret);
    let mut seen = vec![false; forms.len()];
    // One pass for every form: the haystack may be a class-data archive of several MiB.
    if let Ok(matcher) = aho_corasick::AhoCorasick::new(forms.iter().map(|(_, n)| n)) {
        for m in matcher.find_overlapping_iter(hay) {
            seen[m.pattern().as_usize()] = true;
        }
    }
    let mut found: Vec<String> = forms
        .into_iter()
        .zip(seen)
        .filter(|(_, seen)| *seen)
        .map(|((what, _), _)| what)
        .collect();
    if base64_blob_holds_a_piece(hay, secret) {
        found.push(format!("{MIN_CHARS} bytes in a row in a base64 blob"));
    }
    found
}

/// Whether a run of base64 characters in `hay` decodes (at any of the
/// four character alignments, either alphabet) to bytes holding
/// `MIN_CHARS` bytes of `secret` in a row.
pub fn base64_blob_holds_a_piece(hay: &[u8], secret: &str) -> bool {
    if secret.len() < MIN_CHARS {
        return false;
    }
    let pieces: std::collections::HashSet<&[u8]> = secret.as_bytes().windows(MIN_CHARS).collect();
    let sextet = |c: u8| {
        STANDARD
            .iter()
            .position(|&x| x == c)
            .or_else(|| URL_SAFE.iter().position(|&x| x == c))
    };
    hay.split(|&b| sextet(b).is_none())
        .filter(|run| run.len() >= 12)
        .any(|run| {
            (0..4).any(|skip| {
                let mut bits = 0u32;
                let mut count = 0;
                let mut bytes = Vec::new();
                for &c in &run[skip..] {
                    bits = (bits << 6) | sextet(c).unwrap_or(0) as u32;
                    count += 6;
                    if count >= 8 {
                        count -= 8;
                        bytes.push((bits >> count) as u8);
                    }
                }
                bytes.windows(MIN_CHARS).any(|w| pieces.contains(w))
            })
        })
}

/// Percent-encoding of everything but `A-Za-z0-9-._~`.
pub fn url_encode(text: &str, upper: bool, plus_for_space: bool) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else if b == b' ' && plus_for_space {
            out.push('+');
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Padded standard base64.
pub fn base64(bytes: &[u8]) -> String {
    encode(STANDARD, bytes)
}

fn encode(table: &[u8; 64], bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut n = 0u32;
        for i in 0..3 {
            n = (n << 8) | u32::from(chunk.get(i).copied().unwrap_or(0));
        }
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

/// The characters of the base64 of `bytes`, placed `offset` bytes into a
/// 3-byte group of a longer stream, that depend on `bytes` alone.
fn base64_inner(table: &[u8; 64], bytes: &[u8], offset: usize) -> String {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(bytes);
    let encoded = encode(table, &padded);
    let first = (8 * offset).div_ceil(6);
    let last = 8 * (offset + bytes.len()) / 6;
    encoded
        .get(first..last.max(first))
        .unwrap_or("")
        .to_string()
}

/// What a careless service prints with `secret` in it: raw, inside JSON,
/// URL-encoded in a request line and base64-encoded.
pub fn careless_output(secret: &str) -> String {
    format!(
        "connecting with key:\n{secret}\nconfig {}\nGET /login?key={}&x=1\nblob {}\n",
        serde_json::json!({ "key": secret }),
        url_encode(secret, false, true),
        base64(format!("key={secret};").as_bytes()),
    )
}
