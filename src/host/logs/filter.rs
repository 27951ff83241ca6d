//! Which log lines `shipjar logs --since/--grep` shows. Pure: a line's time
//! is read from the timestamp it starts with; a line without one (a stack
//! trace's) goes with the line before it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::Regex;

/// What a line must meet to be shown.
#[derive(Debug, Default)]
pub struct Filter {
    /// Only lines from this time on.
    pub since: Option<SystemTime>,
    /// The same, as the operator sent it (RFC 3339).
    pub since_text: Option<String>,
    /// Only lines this matches.
    pub grep: Option<Regex>,
}

/// A filter's state along one stream of lines: the time of the last line
/// that had one.
#[derive(Debug, Default)]
pub struct Reading {
    last_time: Option<SystemTime>,
}

impl Filter {
    /// Reads `since` (RFC 3339) and `grep` (a regular expression) as the
    /// operator sent them; the error names the one that is wrong.
    pub fn new(since: Option<&str>, grep: Option<&str>) -> Result<Filter, String> {
        let since = since
            .map(|s| humantime::parse_rfc3339_weak(s).map_err(|e| format!("--since `{s}`: {e}")))
            .transpose()?;
        let grep = grep
            .map(|g| Regex::new(g).map_err(|e| format!("--grep `{g}`: {e}")))
            .transpose()?;
        Ok(Filter {
            since,
            since_text: since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            grep,
        })
    }

    /// Whether the filter lets every line through.
    pub fn is_open(&self) -> bool {
        self.since.is_none() && self.grep.is_none()
    }

    /// Whether `line` is shown; `reading` carries the time of lines before it.
    pub fn keeps(&self, line: &str, reading: &mut Reading) -> bool {
        if let Some(t) = line_time(line) {
            reading.last_time = Some(t);
        }
        if let Some(since) = self.since {
            // A line before any timestamp is of unknown time: not shown.
            match reading.last_time {
                Some(t) if t >= since => {}
                _ => return false,
            }
        }
        self.grep.as_ref().is_none_or(|g| g.is_match(line))
    }
}

/// The time a log line starts with: RFC 3339 (`2026-12-06T12:27:46.327Z`,
/// an offset, or none), or `2026-12-06 12:27:43.257`; without a zone it is
/// the host's local time.
pub fn line_time(line: &str) -> Option<SystemTime> {
    let b = line.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let s = line.get(from..from + n)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') || b.get(at) == Some(&b',') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let frac = &line[start..at];
        let padded: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = padded.parse().ok()?;
    }
    let offset_s: Option<i64> = match b.get(at) {
        Some(b'Z') | Some(b'z') => Some(0),
        Some(sign @ (b'+' | b'-')) if b.get(at + 3) == Some(&b':') => {
            let (h, m) = (digits(at + 1, 2)? as i64, digits(at + 4, 2)? as i64);
            let s = h * 3600 + m * 60;
            Some(if *sign == b'+' { s } else { -s })
        }
        _ => None,
    };
    let civil = Civil {
        year: year as i64,
        month,
        day,
        hour,
        minute,
        second,
    };
    let secs = match offset_s {
        Some(offset) => civil.unix_utc() - offset,
        None => civil.unix_local()?,
    };
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// A date and time without a zone.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    /// Seconds since the epoch, were it UTC (days from civil, Howard Hinnant's algorithm).
    fn unix_utc(&self) -> i64 {
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = self.month as i64;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + self.day as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + (self.hour * 3600 + self.minute * 60 + self.second) as i64
    }

    /// Seconds since the epoch in the host's local time zone (`mktime`).
    fn unix_local(&self) -> Option<i64> {
        // SAFETY: a zeroed tm is valid; mktime reads and normalises it.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        tm.tm_year = (self.year - 1900) as libc::c_int;
        tm.tm_mon = self.month as libc::c_int - 1;
        tm.tm_mday = self.day as libc::c_int;
        tm.tm_hour = self.hour as libc::c_int;
        tm.tm_min = self.minute as libc::c_int;
        tm.tm_sec = self.second as libc::c_int;
        tm.tm_isdst = -1;
        // SAFETY: tm is a valid, initialised struct owned by this frame.
        let t = unsafe { libc::mktime(&mut tm) };
        (t != -1).then_some(t as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).expect("a time")
    }

    #[test]
    fn timestamps_with_a_zone_are_read_exactly() {
        assert_eq!(
            line_time("2026-12-06T12:27:46.327Z [shipjar] started"),
            Some(at("2026-12-06T12:27:46.327Z"))
        );
        assert_eq!(
            line_time("2026-12-06T14:27:46+02:00 x"),
            Some(at("2026-12-06T12:27:46Z"))
        );
        assert_eq!(
            line_time("2000-02-29T00:00:00Z"),
            Some(at("2000-02-29T00:00:00Z"))
        );
        assert_eq!(line_time("hello: crashing on purpose"), None);
        assert_eq!(line_time("\tat clojure.core$eval.invoke"), None);
        assert_eq!(line_time("2026-13-06 12:00:00 bad month"), None);
    }

    #[test]
    fn a_zoneless_timestamp_is_local_time() {
        let t = line_time("2026-12-06 12:27:43.257 FINE [hello] GET /health").expect("a time");
        let civil = Civil {
            year: 2026,
            month: 12,
            day: 6,
            hour: 12,
            minute: 27,
            second: 43,
        };
        let local = civil.unix_local().expect("mktime");
        assert_eq!(t, UNIX_EPOCH + Duration::new(local as u64, 257_000_000));
    }

    #[test]
    fn since_keeps_later_lines_and_their_continuations_and_grep_matches() {
        let filter =
            Filter::new(Some("2026-12-06T12:00:00Z"), Some("ERROR|Caused")).expect("filter");
        let mut r = Reading::default();
        let lines = [
            "no time yet ERROR",
            "2026-12-06T11:59:59Z ERROR too early",
            "\tCaused by: still too early",
            "2026-12-06T12:00:00Z ERROR on time",
            "\tCaused by: goes with it",
            "2026-12-06T12:00:01Z INFO not matching",
        ];
        let kept: Vec<&str> = lines
            .into_iter()
            .filter(|l| filter.keeps(l, &mut r))
            .collect();
        assert_eq!(
            kept,
            [
                "2026-12-06T12:00:00Z ERROR on time",
                "\tCaused by: goes with it"
            ]
        );
        assert!(Filter::new(Some("yesterday"), None).is_err());
        assert!(
            Filter::new(None, Some("("))
                .unwrap_err()
                .starts_with("--grep `(`")
        );
        assert!(Filter::default().is_open());
    }
}
