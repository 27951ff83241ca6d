//! PURE: a netrc-style credentials file (`machine HOST login USER password
//! PASS`, `default …`), and the host part of a URL it is matched against.

use crate::protocol::Credentials;

/// The credentials for `host` in netrc `text`: its `machine` entry, else
/// `default`; `None` when neither names both a login and a password.
pub fn credentials_for(text: &str, host: &str) -> Option<Credentials> {
    let mut tokens = tokens(text);
    let mut found: Option<Credentials> = None;
    let mut default: Option<Credentials> = None;
    let mut current: Option<(bool, Option<String>, Option<String>)> = None;
    let finish = |entry: Option<(bool, Option<String>, Option<String>)>,
                  found: &mut Option<Credentials>,
                  default: &mut Option<Credentials>| {
        if let Some((matched_or_default, Some(login), Some(password))) = entry {
            let creds = Credentials { login, password };
            match matched_or_default {
                true if found.is_none() => *found = Some(creds),
                false if default.is_none() => *default = Some(creds),
                _ => {}
            }
        }
    };
    while let Some(token) = tokens.next() {
        match token.as_str() {
            "machine" => {
                finish(current.take(), &mut found, &mut default);
                let name = tokens.next().unwrap_or_default();
                // Only a matching machine's fields are kept; others are read past.
                if name.eq_ignore_ascii_case(host) {
                    current = Some((true, None, None));
                } else {
                    skip_entry(&mut tokens);
                }
            }
            "default" => {
                finish(current.take(), &mut found, &mut default);
                current = Some((false, None, None));
            }
            "login" => {
                let value = tokens.next();
                if let Some(entry) = current.as_mut() {
                    entry.1 = value;
                }
            }
            "password" => {
                let value = tokens.next();
                if let Some(entry) = current.as_mut() {
                    entry.2 = value;
                }
            }
            "account" => {
                tokens.next();
            }
            "macdef" => {
                finish(current.take(), &mut found, &mut default);
                tokens.next();
            }
            _ => {}
        }
    }
    finish(current.take(), &mut found, &mut default);
    found.or(default)
}

/// Reads past the fields of a machine entry that does not match.
fn skip_entry(tokens: &mut std::iter::Peekable<std::vec::IntoIter<String>>) {
    while let Some(next) = tokens.peek() {
        if matches!(next.as_str(), "machine" | "default" | "macdef") {
            return;
        }
        tokens.next();
    }
}

/// Whitespace-separated words; `"…"` quotes a word holding spaces, `#` starts a comment line.
fn tokens(text: &str) -> std::iter::Peekable<std::vec::IntoIter<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut chars = line.chars().peekable();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else if c == '"' {
                chars.next();
                let mut word = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
                out.push(word);
            } else {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(word);
            }
        }
    }
    out.into_iter().peekable()
}

/// The host name of an `http(s)://` URL (no user info, no port).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    let host = authority.split(':').next()?;
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETRC: &str = "# repository credentials\n\
        machine other.example.com login bob password bobs-secret\n\
        machine repo.example.com\n  login deployer\n  password \"s3cret word\"\n\
        default login anon password anon-pass\n";

    #[test]
    fn the_matching_machine_wins() {
        let c = credentials_for(NETRC, "repo.example.com").expect("an entry");
        assert_eq!(c.login, "deployer");
        assert_eq!(c.password, "s3cret word");
        let c = credentials_for(NETRC, "OTHER.example.com").expect("an entry");
        assert_eq!(c.login, "bob");
    }

    #[test]
    fn default_is_the_fallback_and_nothing_without_it() {
        let c = credentials_for(NETRC, "unknown.example.com").expect("default");
        assert_eq!(c.login, "anon");
        assert!(credentials_for("machine a login x password y", "b").is_none());
        assert!(credentials_for("machine a login x", "a").is_none());
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://repo.example.com/releases"),
            Some("repo.example.com")
        );
        assert_eq!(url_host("http://u:p@10.1.2.3:8081/x"), Some("10.1.2.3"));
        assert_eq!(url_host("http://[::1]:80/x"), Some("::1"));
        assert_eq!(url_host("repo"), None);
    }
}
