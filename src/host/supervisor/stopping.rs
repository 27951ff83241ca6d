//! A graceful stop and its escalation: the optional hook, SIGTERM to the
//! process group, one SIGQUIT at half the timeout (a JVM writes a thread
//! dump to stdout, so into the log, and carries on), SIGKILL of the group at
//! the timeout. Says how the service ended and whether that was clean.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::host::probe;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::StopHook;

use super::human_duration;
use super::logpipe::LogPipe;
use super::release::Release;
use super::spawn;
use crate::host::os::process::{self, Credentials, ExitInfo, Signals};
use crate::host::os::procfs;

/// How long a SIGKILLed process may take to be gone.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// How a stop ended.
#[derive(Debug, Clone)]
pub struct Ending {
    /// How the main process ended, if it did.
    pub exit: Option<ExitInfo>,
    /// One line, e.g. "exited 143 after SIGTERM".
    pub how: String,
    /// Ended on SIGTERM alone, with 0, 143 or death by SIGTERM.
    pub clean: bool,
    /// A SIGQUIT was sent for a thread dump.
    pub thread_dump: bool,
    /// From the hook (or SIGTERM) to the end.
    pub took: Duration,
}

/// What a stop needs from the supervisor.
pub struct StopContext<'a> {
    /// The service's layout.
    pub layout: &'a Layout,
    /// The release it runs.
    pub release: &'a Release,
    /// Its user, when dropped.
    pub creds: Option<&'a Credentials>,
    /// Where events go.
    pub log: &'a LogPipe,
    /// SIGCHLD wakes the waits.
    pub signals: &'a Signals,
}

/// Stops the service whose main process is `pid` (our child, leader of its
/// group). `drain`: run the hook first (only for a service that was serving).
pub fn stop(ctx: &StopContext, pid: i32, drain: bool) -> Ending {
    let spec = &ctx.release.manifest.stop;
    let began = Instant::now();
    if drain && let Some(hook) = &spec.hook {
        run_hook(ctx, hook, Duration::from_millis(spec.hook_timeout_ms));
    }
    let timeout = Duration::from_millis(spec.timeout_ms);
    let term_at = Instant::now();
    let deadline = term_at + timeout;
    ctx.log.event("stopping (SIGTERM)");
    let _ = process::signal_group(pid, Signal::SIGTERM);
    // A stopped process (SIGSTOP, a debugger) handles SIGTERM only once continued.
    let _ = process::signal_group(pid, Signal::SIGCONT);

    // The main process first, then the rest of its group: a wrapper script
    // may exit at once while its JVM is still shutting down.
    let mut thread_dump = false;
    let mut leader = None;
    if spec.thread_dump {
        let half = term_at + timeout / 2;
        leader = wait_exit(ctx.signals, pid, half);
        if leader.is_none() {
            ctx.log.event(&format!(
                "still running {} after SIGTERM: SIGQUIT for a thread dump",
                human_duration(timeout / 2)
            ));
            let _ = process::signal_pid(pid, Signal::SIGQUIT);
            thread_dump = true;
        }
    }
    if leader.is_none() {
        leader = wait_exit(ctx.signals, pid, deadline);
    }
    let (how, clean) = if leader.is_some() && wait_group_empty(ctx.signals, pid, deadline) {
        (after_sigterm(leader), is_clean(leader))
    } else {
        ctx.log.event(&format!(
            "still running {} after SIGTERM: sending SIGKILL",
            human_duration(timeout)
        ));
        let _ = process::signal_group(pid, Signal::SIGKILL);
        let stop_timeout = human_duration(timeout);
        let how = match leader {
            None => {
                leader = wait_exit(ctx.signals, pid, Instant::now() + KILL_WAIT);
                format!("killed by SIGKILL after the {stop_timeout} stop timeout")
            }
            Some(_) => format!(
                "{}; the rest of its process group killed by SIGKILL after the {stop_timeout} stop timeout",
                after_sigterm(leader)
            ),
        };
        (how, false)
    };
    let took = began.elapsed();
    ctx.log
        .event(&format!("stopped: {how} in {} ms", took.as_millis()));
    Ending {
        exit: leader,
        how,
        clean,
        thread_dump,
        took,
    }
}

/// Asks the service to drain before any signal; whatever the hook says, the
/// stop goes on.
fn run_hook(ctx: &StopContext, hook: &StopHook, timeout: Duration) {
    let began = Instant::now();
    let said = match hook {
        StopHook::Http { url } => {
            ctx.log.event(&format!("stop hook: POST {url}"));
            match probe::http_post(url, timeout) {
                Ok(status) => format!("answered {status}"),
                Err(e) => format!("failed: {e}"),
            }
        }
        StopHook::Command { argv } => {
            ctx.log.event(&format!("stop hook: {}", argv.join(" ")));
            run_hook_command(ctx, argv, timeout)
        }
    };
    ctx.log.event(&format!(
        "stop hook {said} after {} ms",
        began.elapsed().as_millis()
    ));
}

fn run_hook_command(ctx: &StopContext, argv: &[String], timeout: Duration) -> String {
    let (stdout, stderr) = ctx.log.service_stdio().unwrap_or_else(|e| {
        ctx.log.event(&format!("stop hook output is lost: {e}"));
        (Stdio::null(), Stdio::null())
    });
    let mut release = ctx.release.clone();
    release.manifest.run.argv = argv.to_vec();
    let mut child: Child = match spawn::spawn(ctx.layout, &release, ctx.creds, stdout, stderr) {
        Ok(child) => child,
        Err(e) => return format!("could not run: {e}"),
    };
    let pid = child.id() as i32;
    let exit = wait_exit(ctx.signals, pid, Instant::now() + timeout);
    let said = match exit {
        Some(exit) => exit.to_string(),
        None => {
            let _ = process::signal_group(pid, Signal::SIGKILL);
            format!("timed out after {}; killed", human_duration(timeout))
        }
    };
    // Its own group: whatever it left behind goes too.
    let _ = process::signal_group(pid, Signal::SIGKILL);
    let _ = child.wait();
    said
}

/// Ended the way a stop asks: 0 or 143 (a JVM after SIGTERM), or killed by SIGTERM.
fn is_clean(exit: Option<ExitInfo>) -> bool {
    matches!(
        exit,
        Some(ExitInfo::Code(0 | 143)) | Some(ExitInfo::Signal(libc::SIGTERM))
    )
}

/// How the main process ended after SIGTERM: "exited 143 after SIGTERM",
/// "killed by SIGTERM" (it did not handle it).
fn after_sigterm(exit: Option<ExitInfo>) -> String {
    match exit {
        Some(ExitInfo::Code(code)) => format!("exited {code} after SIGTERM"),
        Some(exit) => exit.to_string(),
        None => "ended after SIGTERM".to_string(),
    }
}

/// Waits until child `pid` exits (without reaping it), at most until `deadline`.
pub fn wait_exit(signals: &Signals, pid: i32, deadline: Instant) -> Option<ExitInfo> {
    loop {
        match process::exited_child(pid) {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) => {}
            // ECHILD: not ours any more (cannot happen unless reaped elsewhere).
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        // Wakes on SIGCHLD; a repeated SIGTERM changes nothing here.
        signals.wait(Some(deadline - now));
    }
}

/// Waits until no live process is left in group `pgid`, at most until
/// `deadline`. Group members are not our children: no signal tells us
/// they left, so this polls `/proc`.
fn wait_group_empty(signals: &Signals, pgid: i32, deadline: Instant) -> bool {
    loop {
        if procfs::live_group_members(pgid).is_empty() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // A short wait that still keeps a watchdog fed; signals are re-checked by the caller.
        signals.wait(Some(Duration::from_millis(20).min(deadline - now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_means_what_a_stop_asks_for() {
        assert!(is_clean(Some(ExitInfo::Code(143))));
        assert!(is_clean(Some(ExitInfo::Code(0))));
        assert!(is_clean(Some(ExitInfo::Signal(libc::SIGTERM))));
        assert!(!is_clean(Some(ExitInfo::Code(1))));
        assert!(!is_clean(Some(ExitInfo::Signal(libc::SIGKILL))));
        assert!(!is_clean(None));
        assert_eq!(
            after_sigterm(Some(ExitInfo::Code(143))),
            "exited 143 after SIGTERM"
        );
    }
}
