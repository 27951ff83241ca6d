//! journald, for `[logs] to = "journal"`: entries sent over its native
//! socket (identifier the service's name, so `journalctl -t NAME` finds
//! them from any process — a supervisor a deploy started over ssh too), and
//! read back with `journalctl` for `shipjar logs` and the tail of a failed
//! start.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// journald's socket for native entries.
const SOCKET: &str = "/run/systemd/journal/socket";

/// Longest message sent as one entry; a longer line is cut (journald's
/// datagrams are bounded by the socket's buffer).
const MAX_MESSAGE: usize = 48 * 1024;

/// A connection to journald for one service's entries.
pub struct Journal {
    socket: UnixDatagram,
    identifier: String,
    /// Extra `KEY=value` fields every entry carries (an instance's port).
    fields: Vec<(String, String)>,
}

impl Journal {
    /// Connects; the error says journald is not there.
    pub fn connect(identifier: &str, fields: Vec<(String, String)>) -> Result<Journal, String> {
        if !Path::new(SOCKET).exists() {
            return Err(format!(
                "[logs] to = \"journal\" needs journald on the host ({SOCKET} is missing): \
                 use `to = \"file\"` here"
            ));
        }
        let socket = UnixDatagram::unbound().map_err(|e| format!("journald: {e}"))?;
        socket
            .connect(SOCKET)
            .map_err(|e| format!("journald ({SOCKET}): {e}"))?;
        Ok(Journal {
            socket,
            identifier: identifier.to_string(),
            fields,
        })
    }

    /// Sends one entry with `message` (priority 6, info; 3, err, for
    /// `error`); an error is the socket's.
    pub fn send(&self, message: &[u8], error: bool) -> std::io::Result<()> {
        let message = &message[..message.len().min(MAX_MESSAGE)];
        let mut entry = Vec::with_capacity(message.len() + 128);
        field(&mut entry, "SYSLOG_IDENTIFIER", self.identifier.as_bytes());
        field(&mut entry, "PRIORITY", if error { b"3" } else { b"6" });
        for (key, value) in &self.fields {
            field(&mut entry, key, value.as_bytes());
        }
        field(&mut entry, "MESSAGE", message);
        self.socket.send(&entry).map(|_| ())
    }
}

/// Appends `KEY=value\n`, or the binary form when the value holds a newline.
fn field(entry: &mut Vec<u8>, key: &str, value: &[u8]) {
    entry.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value);
    entry.push(b'\n');
}

/// What to read from the journal.
#[derive(Debug, Default, Clone)]
pub struct Query<'a> {
    /// The service's identifier.
    pub identifier: &'a str,
    /// Only one instance's entries (behind the proxy).
    pub instance: Option<u16>,
    /// The last this many entries (of those matching).
    pub lines: Option<usize>,
    /// From this time on (RFC 3339).
    pub since: Option<&'a str>,
    /// Only messages this regular expression matches.
    pub grep: Option<&'a str>,
    /// Keep reading new entries.
    pub follow: bool,
}

impl Query<'_> {
    /// `journalctl` with this query's arguments; messages only, one a line.
    fn command(&self) -> Command {
        let mut c = Command::new("journalctl");
        c.args([
            "--no-pager",
            "--quiet",
            "-o",
            "short-iso",
            "-t",
            self.identifier,
        ]);
        if let Some(port) = self.instance {
            c.arg(format!("SHIPJAR_INSTANCE={port}"));
        }
        if let Some(n) = self.lines {
            c.arg("-n").arg(n.to_string());
        } else if self.since.is_none() && self.grep.is_none() {
            c.arg("-n").arg("all");
        }
        if let Some(since) = self.since {
            c.arg("--since").arg(journal_time(since));
        }
        if let Some(grep) = self.grep {
            c.arg("--grep").arg(grep);
        }
        if self.follow {
            c.arg("-f");
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

/// journalctl takes `YYYY-MM-DD HH:MM:SS UTC`, not RFC 3339's `T…Z`.
fn journal_time(rfc3339: &str) -> String {
    match humantime::parse_rfc3339_weak(rfc3339) {
        Ok(at) => {
            let text = humantime::format_rfc3339_seconds(at).to_string();
            format!("{} UTC", text.trim_end_matches('Z').replace('T', " "))
        }
        Err(_) => rfc3339.to_string(),
    }
}

/// How long a read that does not follow may take: journald that does not
/// answer must not hold up `logs`, or a failed start's message.
const READ_WITHIN: Duration = Duration::from_secs(20);

/// Sends each line `journalctl` prints for `query` to `emit`, until it ends
/// or (following) `emit` returns false; an empty line is sent every 200 ms
/// of quiet, as a check that the reader is still there. A read that does
/// not follow ends at [`READ_WITHIN`] with an error.
pub fn read(query: &Query, emit: &dyn Fn(&str) -> bool) -> Result<(), String> {
    let until = (!query.follow).then(|| std::time::Instant::now() + READ_WITHIN);
    let mut child = query
        .command()
        .spawn()
        .map_err(|e| format!("cannot run journalctl: {e}"))?;
    let Some(out) = child.stdout.take() else {
        return Err("journalctl has no output pipe".into());
    };
    let (tx, rx) = mpsc::channel();
    // A thread, because a pipe read has no timeout of its own.
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stop = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    loop {
        if until.is_some_and(|t| std::time::Instant::now() >= t) {
            stop(&mut child);
            return Err(format!(
                "journalctl did not finish within {} s",
                READ_WITHIN.as_secs()
            ));
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("-- ") => {} // journalctl's own notes
            Ok(line) => {
                if !emit(&line) {
                    stop(&mut child);
                    return Ok(());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !emit("") {
                    stop(&mut child);
                    return Ok(());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("journalctl: {e}"))?;
    // Exit 1 with nothing printed is "no entries" for some versions.
    if !output.status.success() && !output.stderr.is_empty() {
        return Err(format!(
            "journalctl: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// The last `n` lines of the service's entries, for a failed start's message.
pub fn tail(identifier: &str, instance: Option<u16>, n: usize) -> Vec<String> {
    let query = Query {
        identifier,
        instance,
        lines: Some(n),
        ..Query::default()
    };
    let lines = std::cell::RefCell::new(Vec::new());
    let read = read(&query, &|line| {
        if !line.is_empty() {
            lines.borrow_mut().push(line.to_string());
        }
        true
    });
    match read {
        Ok(()) => lines.into_inner(),
        Err(e) => vec![format!("(log not shown: {e})")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_with_a_newline_takes_the_binary_form() {
        let mut entry = Vec::new();
        field(&mut entry, "MESSAGE", b"one line");
        assert_eq!(entry, b"MESSAGE=one line\n");
        let mut entry = Vec::new();
        field(&mut entry, "MESSAGE", b"a\nb");
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(entry, want);
    }

    #[test]
    fn since_is_given_to_journalctl_in_its_own_format() {
        assert_eq!(
            journal_time("2026-12-06T12:00:00Z"),
            "2026-12-06 12:00:00 UTC"
        );
        let q = Query {
            identifier: "hello",
            instance: None,
            lines: None,
            since: Some("2026-12-06T12:00:00Z"),
            grep: Some("ERROR"),
            follow: true,
        };
        let args: Vec<String> = q
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--no-pager",
                "--quiet",
                "-o",
                "short-iso",
                "-t",
                "hello",
                "--since",
                "2026-12-06 12:00:00 UTC",
                "--grep",
                "ERROR",
                "-f"
            ]
        );
    }
}
