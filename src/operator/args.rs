//! Values of command-line options that clap hands over as text: `KEY=VALUE`
//! pairs and durations, checked here so their errors are config errors.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};

/// Parses `--wait DURATION` (e.g. `30s`, `5m`).
pub fn parse_wait(wait: Option<&str>) -> Result<Option<Duration>> {
    wait.map(|w| {
        humantime::parse_duration(w)
            .map_err(|e| Error::config(format!("--wait {w}: {e}: expected e.g. 30s or 5m")))
    })
    .transpose()
}

/// Parses `--since WHEN` as of `now`: a duration ago (`30m`, `2h`) or a
/// time (RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` in UTC); the instant as RFC 3339.
pub fn since(when: &str, now: std::time::SystemTime) -> Result<String> {
    let at = match humantime::parse_duration(when) {
        Ok(ago) => now.checked_sub(ago).ok_or_else(|| {
            Error::config(format!("--since {when}: further back than this clock goes"))
        })?,
        Err(_) => {
            let padded = match when.len() {
                16 => format!("{when}:00"),
                _ => when.to_string(),
            };
            humantime::parse_rfc3339_weak(&padded).map_err(|_| {
                Error::config(format!(
                    "--since {when}: expected a duration ago (30m, 2h) or a UTC time \
                     (2026-12-06T12:00:00Z, 2026-12-06 12:00)"
                ))
            })?
        }
    };
    Ok(humantime::format_rfc3339_seconds(at).to_string())
}

/// Parses repeated `KEY=VALUE` options.
pub fn parse_pairs(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::config(format!("{flag} {pair}: expected KEY=VALUE")));
        };
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::config(format!(
                "{flag} {k}=…: `{k}` is not a valid name (letters, digits, `_`)"
            )));
        }
        if v.contains('\0') {
            return Err(Error::config(format!(
                "{flag} {k}=…: the value contains a NUL byte"
            )));
        }
        map.insert(k.to_string(), v.to_string());
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_duration_ago_or_a_utc_time() {
        let now = humantime::parse_rfc3339("2026-12-06T12:00:00Z").unwrap();
        assert_eq!(since("30m", now).unwrap(), "2026-12-06T11:30:00Z");
        assert_eq!(
            since("2026-12-06T10:00:00Z", now).unwrap(),
            "2026-12-06T10:00:00Z"
        );
        assert_eq!(
            since("2026-12-06 10:05", now).unwrap(),
            "2026-12-06T10:05:00Z"
        );
        let err = since("yesterday", now).unwrap_err();
        assert!(err.message.contains("--since yesterday"), "{}", err.message);
    }

    #[test]
    fn pairs_need_a_name_and_an_equals_sign() {
        let ok = parse_pairs("--set", &["a_1=x=y".into(), "B=".into()]).unwrap();
        assert_eq!(ok["a_1"], "x=y");
        assert_eq!(ok["B"], "");
        assert!(parse_pairs("--env", &["novalue".into()]).is_err());
        assert!(parse_pairs("--env", &["1a=x".into()]).is_err());
        assert!(parse_pairs("--env", &["a-b=x".into()]).is_err());
    }

    #[test]
    fn wait_is_a_human_duration() {
        assert_eq!(parse_wait(None).unwrap(), None);
        assert_eq!(
            parse_wait(Some("5m")).unwrap(),
            Some(Duration::from_secs(300))
        );
        assert!(parse_wait(Some("soon")).is_err());
    }
}
