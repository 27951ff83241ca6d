//! The health gate: poll the service's health check until it passes, the
//! service exits, a stop is requested, or the start timeout runs out.

use std::time::{Duration, Instant};

use crate::host::probe;
use crate::protocol::manifest::HealthCheck;

use super::listener::{self, Holder};
use super::process::{ExitInfo, Signals, exited_child};

/// First pause between probes: a JVM is rarely up this fast, a small
/// service often is.
const FIRST_PAUSE: Duration = Duration::from_millis(10);

/// Longest pause between probes during start: readiness is noticed within
/// this (plus one probe) of the service answering. A refused connect or a
/// 503 costs well under a millisecond, so polling this often is cheap.
const MAX_PAUSE: Duration = Duration::from_millis(25);

/// Longest single probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How the gate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The check passed this long after the start of the gate.
    Healthy(Duration),
    /// The service exited first (not yet reaped).
    Exited(ExitInfo),
    /// The start timeout ran out.
    TimedOut,
    /// SIGTERM or SIGINT arrived.
    StopRequested(i32),
    /// The check passed, but what answered is not this start's process.
    NotOurs(String),
}

/// One probe, at most `timeout` long.
pub fn probe_once(check: &HealthCheck, timeout: Duration) -> Result<(), String> {
    match check {
        HealthCheck::Http { url } => {
            let answer = probe::http_get(url, timeout)?;
            if (200..300).contains(&answer.status) {
                Ok(())
            } else {
                // The start of the body often says what is wrong.
                let said: String = answer
                    .body
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(100)
                    .collect();
                Err(format!("{url} answered {}: {said}", answer.status))
            }
        }
        HealthCheck::Tcp { port } => probe::tcp_connect(*port, timeout),
        HealthCheck::None => Ok(()),
    }
}

/// Checks that the socket the check reached belongs to the processes of
/// this start (the group `leader` leads, or its descendants).
fn answered_by_us(check: &HealthCheck, leader: i32) -> Result<(), String> {
    let Some(port) = listener::check_port(check) else {
        return Ok(());
    };
    match listener::holder(port, &listener::service_processes(leader)) {
        Holder::Ours(_) => Ok(()),
        Holder::Other(pid, comm) => Err(format!(
            "port {port} already in use by pid {pid} ({comm}): the health check was answered by it"
        )),
        Holder::Unseen => Err(format!(
            "the health check was answered on port {port} by a process this start did not launch"
        )),
        Holder::Nobody => Err(format!(
            "the health check was answered, but nothing on this host listens on port {port}"
        )),
    }
}

/// Fails when something listens on the check's port before the service is
/// even started: typically an old instance that never went away.
pub fn port_free(check: &HealthCheck) -> Result<(), String> {
    let Some(port) = listener::check_port(check) else {
        return Ok(());
    };
    match listener::holder(port, &[]) {
        Holder::Nobody => Ok(()),
        Holder::Other(pid, comm) => {
            Err(format!("port {port} already in use by pid {pid} ({comm})"))
        }
        Holder::Ours(pid) => Err(format!("port {port} already in use by pid {pid}")),
        Holder::Unseen => Err(format!(
            "port {port} already in use (by a process not visible to this user)"
        )),
    }
}

/// Waits for child `pid` to become healthy. `spawned` is when it was
/// spawned, `timeout` the start timeout measured from then.
pub fn wait_healthy(
    check: &HealthCheck,
    pid: i32,
    spawned: Instant,
    timeout: Duration,
    signals: &Signals,
) -> Gate {
    let deadline = spawned + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        // An exit seen here wins over a probe: a port answered by some other
        // process must not make a dead service look healthy.
        if let Ok(Some(exit)) = exited_child(pid) {
            return Gate::Exited(exit);
        }
        let now = Instant::now();
        if now >= deadline {
            return Gate::TimedOut;
        }
        let probe_timeout = PROBE_TIMEOUT.min(deadline - now);
        if probe_once(check, probe_timeout).is_ok() {
            let after = spawned.elapsed();
            if let Ok(Some(exit)) = exited_child(pid) {
                return Gate::Exited(exit);
            }
            if let Err(why) = answered_by_us(check, pid) {
                return Gate::NotOurs(why);
            }
            return Gate::Healthy(after);
        }
        let now = Instant::now();
        if now < deadline {
            // Sleeps until the next probe, but wakes at once when the child
            // exits (SIGCHLD) or a stop arrives.
            if let Some(sig @ (libc::SIGTERM | libc::SIGINT)) =
                signals.wait(Some(pause.min(deadline - now)))
            {
                return Gate::StopRequested(sig);
            }
        }
        pause = (pause * 3 / 2).min(MAX_PAUSE);
    }
}
