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
    /// Its exit code, when it exited (not killed by a signal, not timed out).
    pub code: Option<i32>,
    /// Its last [`OUTPUT_LINES`] lines of output (stdout and stderr together).
    pub output: Vec<String>,
}

/// Waits for `child` (the leader of its own process group), reading its
/// output from `output`, killing the group once `timeout` has passed.
pub fn wait(child: Child, output: impl Read + Send + 'static, timeout: Duration) -> Ended {
    wait_streaming(child, output, timeout, &mut |_| {}, &|| false)
}

/// As [`wait`], handing each line of output to `on_line` as it comes, and
/// killing the group as soon as `cancelled` says so.
pub fn wait_streaming(
    mut child: Child,
    output: impl Read + Send + 'static,
    timeout: Duration,
    on_line: &mut dyn FnMut(&str),
    cancelled: &dyn Fn() -> bool,
) -> Ended {
    let started = Instant::now();
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(output).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if lines_tx.send(text).is_err() {
                break;
            }
        }
    });
    let mut kept = VecDeque::new();
    let mut take = |line: String, kept: &mut VecDeque<String>| {
        on_line(&line);
        if kept.len() == OUTPUT_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    };
    let (ok, how, code) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.success(), describe(status), status.code()),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                let limit =
                    humantime::format_duration(Duration::from_millis(timeout.as_millis() as u64));
                break (false, format!("timed out after {limit}; killed"), None);
            }
            Ok(None) if cancelled() => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                break (
                    false,
                    "cancelled: the operator went away; killed".to_string(),
                    None,
                );
            }
            Ok(None) => {
                if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(20)) {
                    take(line, &mut kept);
                }
            }
            Err(e) => break (false, format!("could not wait for it: {e}"), None),
        }
    };
    // Whatever it left running in its group goes too, so the pipe closes.
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let drained_by = Instant::now() + Duration::from_secs(5);
    while let Some(left) = drained_by.checked_duration_since(Instant::now()) {
        match lines_rx.recv_timeout(left) {
            Ok(line) => take(line, &mut kept),
            Err(_) => break,
        }
    }
    Ended {
        ok,
        how,
        code,
        output: Vec::from(kept),
    }
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
