//! The service log: where the service's output goes, where the supervisor
//! writes its events, and how the last lines are read back for a failed start.
//!
//! Today the service writes straight into the file (opened `O_APPEND`); a
//! rotating pipe reader will replace [`service_output`] later.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::SystemTime;

/// Lines a failed start shows from the log.
pub const TAIL_LINES: usize = 20;

/// Longest log line shown in a tail; the rest is cut.
const MAX_TAIL_LINE: usize = 500;

/// Opens (creating) the log for appending, creating its directory too.
pub fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// Stdout and stderr for the service process.
pub fn service_output(log: &File) -> io::Result<(Stdio, Stdio)> {
    Ok((Stdio::from(log.try_clone()?), Stdio::from(log.try_clone()?)))
}

/// Current UTC time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Writes supervisor events into the service log, one line each, prefixed so
/// they stand out from the service's own output.
pub struct EventLog {
    file: Option<File>,
}

impl EventLog {
    /// An event log appending to `file`; `None` writes nowhere (log not openable).
    pub fn new(file: Option<File>) -> Self {
        EventLog { file }
    }

    /// Appends `2026-11-26T14:03:01.123Z [shipjar] MESSAGE`.
    pub fn event(&mut self, message: &str) {
        if let Some(file) = &mut self.file {
            let line = format!("{} [shipjar] {message}\n", now_rfc3339());
            // One write per line: with O_APPEND it lands whole between the
            // service's own writes. A full disk must not stop supervision.
            let _ = file.write_all(line.as_bytes());
        }
    }

    /// The underlying file, to hand to the service.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }
}

/// The last `n` lines of the log (lossy UTF-8, long lines cut), oldest first.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    // Reading the end is enough: 20 lines of a sane log fit in 64 KiB.
    const WINDOW: u64 = 64 * 1024;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if file.take(WINDOW).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    // A window starting mid-line would show a fragment.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    lines[skip..]
        .iter()
        .map(|line| {
            let line = line.trim_end_matches('\r');
            match line.char_indices().nth(MAX_TAIL_LINE) {
                Some((cut, _)) => format!("{}…", &line[..cut]),
                None => line.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        assert!(tail(&path, 3).is_empty());
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, text).expect("write");
        assert_eq!(tail(&path, 3), vec!["line 28", "line 29", "line 30"]);
        assert_eq!(tail(&path, 100).len(), 30);
    }

    #[test]
    fn tail_of_huge_log_skips_partial_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut text = "x".repeat(100_000);
        text.push_str("\nlast\n");
        fs::write(&path, text).expect("write");
        assert_eq!(tail(&path, 5), vec!["last"]);
    }
}
