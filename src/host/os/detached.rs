//! Starting a detached shipjar (a supervisor, a runner, a proxy keeper): its
//! own session, a clean environment, `/` as its directory and an absolute
//! root, so it outlives its caller and pins nothing; and reading the one
//! line it reports when it is ready or has failed.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::process;

/// `PATH` of every clean environment shipjar starts (detached shipjars and
/// the service itself).
pub const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Prefix of a report line saying "ready", followed by JSON.
pub const READY: &str = "READY ";
/// Prefix of a report line saying "failed", followed by JSON (or plain text).
pub const FAILED: &str = "FAILED ";

/// Spawns `shipjar ARGS --root ROOT` detached: a new session, a clean
/// environment (it lives as long as the service and must not carry whatever
/// its caller had, an operator's secrets say), `/` as its directory.
pub fn spawn<S: AsRef<OsStr>>(
    root: &Path,
    args: &[S],
    stdout: Stdio,
    stderr: File,
) -> Result<Child, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the shipjar executable: {e}"))?;
    // It runs in `/`: a relative root would point elsewhere there.
    let root = std::path::absolute(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .env("PATH", CLEAN_PATH)
        .args(args)
        .arg("--root")
        .arg(root)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // Own session: no terminal, no job-control signals from its caller's.
    process::prepare_child(&mut cmd, true, None);
    cmd.spawn().map_err(|e| e.to_string())
}

/// What a detached shipjar said on its stdout.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// `READY {json}`: the JSON.
    Ready(String),
    /// `FAILED {json}`: the rest of the line.
    Failed(String),
    /// A line that is neither.
    Garbled(String),
    /// End of file before a line: it died without a word.
    Eof,
    /// Nothing within the deadline.
    Timeout,
    /// The operator cancelled the request this start belongs to.
    Cancelled,
}

/// Reads the one-line report of `child`, giving up after `deadline` or when
/// the operator cancels.
pub fn read_report(child: &mut Child, deadline: Duration) -> Report {
    let Some(stdout) = child.stdout.take() else {
        return Report::Eof;
    };
    let (tx, rx) = mpsc::channel();
    // A thread, because a pipe read has no timeout of its own.
    std::thread::spawn(move || {
        let mut line = String::new();
        let report = match BufReader::new(stdout).read_line(&mut line) {
            Ok(n) if n > 0 => classify(line.trim_end()),
            _ => Report::Eof,
        };
        let _ = tx.send(report);
    });
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Report::Timeout;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(report) => return report,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Report::Eof,
            Err(mpsc::RecvTimeoutError::Timeout) if crate::host::cancel::requested() => {
                return Report::Cancelled;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Sorts a report line by its prefix.
fn classify(line: &str) -> Report {
    if let Some(json) = line.strip_prefix(READY) {
        Report::Ready(json.to_string())
    } else if let Some(rest) = line.strip_prefix(FAILED) {
        Report::Failed(rest.to_string())
    } else {
        Report::Garbled(line.to_string())
    }
}

/// Waits up to `timeout` for `child` to exit, then kills it.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Leaves `child` running; a thread reaps it when it ends, so a long-lived
/// caller (the agent) collects no zombie.
pub fn let_live(child: Child) {
    let mut child = child;
    std::thread::spawn(move || child.wait());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_are_sorted_by_their_prefix() {
        assert_eq!(classify("READY {}"), Report::Ready("{}".into()));
        assert_eq!(classify("FAILED oops"), Report::Failed("oops".into()));
        assert_eq!(classify("READY"), Report::Garbled("READY".into()));
        assert_eq!(classify("hello"), Report::Garbled("hello".into()));
    }

    #[test]
    fn a_silent_child_times_out_and_a_dead_one_is_eof() {
        let mut silent = Command::new("sleep")
            .arg("5")
            .stdout(Stdio::piped())
            .spawn()
            .expect("sleep");
        assert_eq!(
            read_report(&mut silent, Duration::from_millis(200)),
            Report::Timeout
        );
        wait_or_kill(&mut silent, Duration::ZERO);
        let mut dead = Command::new("true")
            .stdout(Stdio::piped())
            .spawn()
            .expect("true");
        assert_eq!(read_report(&mut dead, Duration::from_secs(5)), Report::Eof);
        let _ = dead.wait();
    }
}
