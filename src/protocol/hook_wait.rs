//! Waiting for a deploy hook, the same way on both sides: the last lines of
//! its output kept, its whole process group killed at the timeout (and at its
//! end, so a pipe it left open closes), and how it ended in words.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Lines of a hook's output kept for the report.
pub const OUTPUT_LINES: usize = 40;

/// How a hook ended.
pub struct Ended {
    /// It exited 0 within its timeout.
    pub ok: bool,
    /// "exited with code 3", "timed out after 5m; killed", …
    pub how: String,
    /// Its last [`OUTPUT_LINES`] lines of output (stdout and stderr together).
    pub output: Vec<String>,
}

/// Waits for `child` (the leader of its own process group), reading its
/// output from `output`, killing the group once `timeout` has passed.
pub fn wait(mut child: Child, output: impl Read + Send + 'static, timeout: Duration) -> Ended {
    let started = Instant::now();
    let (lines_tx, lines_rx) = mpsc::channel::<VecDeque<String>>();
    std::thread::spawn(move || {
        let mut kept = VecDeque::new();
        for line in BufReader::new(output).split(b'\n') {
            let Ok(line) = line else { break };
            if kept.len() == OUTPUT_LINES {
                kept.pop_front();
            }
            kept.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        let _ = lines_tx.send(kept);
    });
    let pgid = Pid::from_raw(child.id() as i32);
    let (ok, how) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.success(), describe(status)),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = child.wait();
                let limit =
                    humantime::format_duration(Duration::from_millis(timeout.as_millis() as u64));
                break (false, format!("timed out after {limit}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break (false, format!("could not wait for it: {e}")),
        }
    };
    // Whatever it left running in its group goes too, so the pipe closes.
    let _ = killpg(pgid, Signal::SIGKILL);
    let output = lines_rx
        .recv_timeout(Duration::from_secs(5))
        .map(Vec::from)
        .unwrap_or_default();
    Ended { ok, how, output }
}

/// "exited with code 3", "killed by SIGTERM".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!(
            "killed by {}",
            Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.as_str().to_string())
        ),
        _ => "ended".to_string(),
    }
}
