//! Health checks: one probe and what it found, the start gate (poll until
//! the check passes, the service exits, a stop is requested, or the start
//! timeout runs out), and the schedule of the gate's probes.
//!
//! The gate reads the kernel's socket table (cheap, and nothing the service
//! sees) to learn when something listens on the check's port; until then it
//! probes only once a second. Once the port listens it probes every 25 ms for
//! a second, then backs off to one probe every 500 ms, so a service that is
//! ready when it listens is noticed at once and one that takes its time is
//! not flooded with requests.

use std::fmt;
use std::time::{Duration, Instant};

use crate::host::probe::{self, NoAnswer};
use crate::protocol::manifest::HealthCheck;

use super::human_duration;
use crate::host::os::listener::{self, Holder};
use crate::host::os::process::{ExitInfo, Signals, exited_child};

/// Pause between two looks at the socket table while the port is not
/// listening yet (and before the first look).
const SOCKET_POLL: Duration = Duration::from_millis(10);

/// Pause between HTTP probes while nothing listens on the check's port: a
/// safety net for a socket the table does not show (another network
/// namespace), not the way readiness is noticed.
const UNLISTENED_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Pause between probes during the first [`FAST_FOR`] after the port began
/// listening: most services are ready when they listen, or soon after.
const FAST_PAUSE: Duration = Duration::from_millis(25);

/// How long the probes stay fast once the port listens.
const FAST_FOR: Duration = Duration::from_secs(1);

/// Longest pause between probes during start: readiness of a slow starter is
/// noticed within this.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Longest single probe during start.
const GATE_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a failed probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer: refused, timed out (after the given timeout) or an error.
    NoAnswer(NoAnswer, Duration),
    /// An HTTP answer outside 2xx, with the start of its body.
    Status {
        /// The status code.
        code: u16,
        /// The start of the body ([`probe::said`]).
        said: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoAnswer(NoAnswer::TimedOut, after) => {
                write!(f, "timed out after {}", human_duration(*after))
            }
            Failure::NoAnswer(why, _) => write!(f, "{why}"),
            Failure::Status { code, said } if said.is_empty() => write!(f, "HTTP {code}"),
            Failure::Status { code, said } => write!(f, "HTTP {code}: {said}"),
        }
    }
}

/// How the gate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The check passed this long after the spawn.
    Healthy(Duration),
    /// The service exited first (not yet reaped).
    Exited(ExitInfo),
    /// The start timeout ran out; what the last probe found, if one ran.
    TimedOut(Option<Failure>),
    /// SIGTERM or SIGINT arrived.
    StopRequested(i32),
    /// The check passed, but what answered is not this start's process.
    NotOurs(String),
}

/// One probe, at most `timeout` long.
pub fn probe_once(check: &HealthCheck, timeout: Duration) -> Result<(), Failure> {
    match check {
        HealthCheck::Http { url } => {
            let answer =
                probe::http_get_answer(url, timeout).map_err(|e| Failure::NoAnswer(e, timeout))?;
            if (200..300).contains(&answer.status) {
                Ok(())
            } else {
                Err(Failure::Status {
                    code: answer.status,
                    said: probe::said(&answer.body),
                })
            }
        }
        HealthCheck::Tcp { port } => {
            probe::tcp_connect(*port, timeout).map_err(|e| Failure::NoAnswer(e, timeout))
        }
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
        Holder::Other(pid, comm) => Err(format!(
            "port {port} already in use by pid {pid} ({comm}); shipjar never signals a process \
             it cannot prove is its own: if this is the service under the init script or unit \
             it ran under before shipjar, `shipjar provision STAGE --take-over` stops it through \
             that script or unit"
        )),
        Holder::Ours(pid) => Err(format!("port {port} already in use by pid {pid}")),
        Holder::Unseen => Err(format!(
            "port {port} already in use (by a process not visible to this user)"
        )),
    }
}

/// Why a start that timed out was not healthy, for its failure message:
/// what the last probe got and, when nothing listens on the check's port
/// but the service listens elsewhere, where.
pub fn why_unready(check: &HealthCheck, leader: i32, last: Option<&Failure>) -> String {
    let got = match last {
        Some(failure) => format!("the last health check got {failure}"),
        None => "no health check ran".to_string(),
    };
    let Some(port) = listener::check_port(check) else {
        return got;
    };
    if listener::holder(port, &[]) != Holder::Nobody {
        return got;
    }
    let ours = listener::service_processes(leader);
    let theirs: Vec<String> = listener::ports_held_by(&ours)
        .into_iter()
        .filter(|p| *p != port)
        .map(|p| p.to_string())
        .collect();
    if theirs.is_empty() {
        format!("{got}; nothing listens on port {port}")
    } else {
        format!(
            "{got}; the service listens on {}, the health check asks {port}",
            theirs.join(", ")
        )
    }
}

/// When the gate probes: sparsely until the check's port listens, then
/// fast, then backing off. Pure, so the schedule can be tested as such.
#[derive(Debug, Clone)]
struct Pacing {
    /// When the check's port was first seen listening.
    listening_since: Option<Instant>,
    /// When the last probe ran.
    last_probe: Option<Instant>,
    /// The pause after the last probe.
    pause: Duration,
}

impl Pacing {
    fn new() -> Pacing {
        Pacing {
            listening_since: None,
            last_probe: None,
            pause: FAST_PAUSE,
        }
    }

    /// Records that the port listens (from `now` on, when first seen).
    fn listening(&mut self, now: Instant) {
        if self.listening_since.is_none() {
            self.listening_since = Some(now);
            // The first probe after the socket appears goes out at once.
            self.last_probe = None;
        }
    }

    /// When the next probe is due.
    fn next_probe(&self) -> Option<Instant> {
        match self.listening_since {
            None => Some(self.last_probe? + UNLISTENED_PROBE_EVERY),
            Some(_) => Some(self.last_probe? + self.pause),
        }
    }

    /// Whether a probe is due at `now`.
    fn due(&self, now: Instant) -> bool {
        self.next_probe().is_none_or(|at| now >= at)
    }

    /// Records a probe at `now` and sets the pause after it.
    fn probed(&mut self, now: Instant) {
        self.last_probe = Some(now);
        if let Some(since) = self.listening_since
            && now.duration_since(since) >= FAST_FOR
        {
            self.pause = (self.pause * 3 / 2).min(MAX_PAUSE);
        }
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
    let port = listener::check_port(check);
    let mut pacing = Pacing::new();
    if port.is_none() {
        // Nothing to watch in the socket table: pace as if it listened.
        pacing.listening(spawned);
    }
    let mut last = None;
    loop {
        // An exit seen here wins over a probe: a port answered by some other
        // process must not make a dead service look healthy.
        if let Ok(Some(exit)) = exited_child(pid) {
            return Gate::Exited(exit);
        }
        let now = Instant::now();
        if now >= deadline {
            return Gate::TimedOut(last);
        }
        if let Some(port) = port
            && pacing.listening_since.is_none()
            && listener::listening(port)
        {
            pacing.listening(now);
        }
        if pacing.due(now) {
            let probe_timeout = GATE_PROBE_TIMEOUT.min(deadline - now);
            match probe_once(check, probe_timeout) {
                Ok(()) => {
                    let after = spawned.elapsed();
                    if let Ok(Some(exit)) = exited_child(pid) {
                        return Gate::Exited(exit);
                    }
                    if let Err(why) = answered_by_us(check, pid) {
                        return Gate::NotOurs(why);
                    }
                    return Gate::Healthy(after);
                }
                // A probe the start's deadline cut short (a few ms left)
                // says less than the full answer before it: that one stays
                // what a timed-out start reports.
                Err(failure) if probe_timeout < GATE_PROBE_TIMEOUT && last.is_some() => {
                    drop(failure)
                }
                Err(failure) => last = Some(failure),
            }
            pacing.probed(Instant::now());
        }
        let now = Instant::now();
        if now < deadline {
            // Until the next probe, or the next look at the socket table;
            // wakes at once when the child exits (SIGCHLD) or a stop arrives.
            let mut pause = pacing
                .next_probe()
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
            if pacing.listening_since.is_none() {
                pause = pause.min(SOCKET_POLL);
            }
            if let Some(sig @ (libc::SIGTERM | libc::SIGINT)) =
                signals.wait(Some(pause.min(deadline - now)))
            {
                return Gate::StopRequested(sig);
            }
        }
    }
}

/// Consecutive failed checks of a running service, and what one more
/// result means. Pure, so the rules can be tested as such.
#[derive(Debug, Clone)]
pub struct Streak {
    /// Failures in a row that make the supervisor restart the service.
    pub allowed: u32,
    /// Failures in a row so far.
    failed: u32,
    /// When the first of them happened.
    since: Option<Instant>,
}

/// What one more check result means for a running service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passed, as the one before.
    Fine,
    /// Passed after this many failures in a row.
    Recovered(u32),
    /// The `n`th failure in a row, fewer than allowed.
    Failing(u32),
    /// The `n`th failure in a row, as many as allowed: restart.
    Unhealthy(u32),
}

impl Streak {
    /// No failure yet; `allowed` is at least 1.
    pub fn new(allowed: u32) -> Streak {
        Streak {
            allowed: allowed.max(1),
            failed: 0,
            since: None,
        }
    }

    /// Records one check at `now`.
    pub fn record(&mut self, passed: bool, now: Instant) -> Verdict {
        if passed {
            let was = std::mem::take(&mut self.failed);
            self.since = None;
            return if was == 0 {
                Verdict::Fine
            } else {
                Verdict::Recovered(was)
            };
        }
        self.failed += 1;
        self.since.get_or_insert(now);
        if self.failed >= self.allowed {
            Verdict::Unhealthy(self.failed)
        } else {
            Verdict::Failing(self.failed)
        }
    }

    /// When the current run of failures began.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_of_failures_ends_in_a_restart_unless_a_check_passes() {
        let t = Instant::now();
        let mut streak = Streak::new(3);
        assert_eq!(streak.record(true, t), Verdict::Fine);
        assert_eq!(streak.record(false, t), Verdict::Failing(1));
        assert_eq!(streak.since(), Some(t));
        assert_eq!(streak.record(true, t), Verdict::Recovered(1));
        assert_eq!(streak.since(), None);
        let later = t + Duration::from_secs(1);
        assert_eq!(streak.record(false, later), Verdict::Failing(1));
        assert_eq!(streak.record(false, t), Verdict::Failing(2));
        assert_eq!(streak.record(false, t), Verdict::Unhealthy(3));
        assert_eq!(streak.since(), Some(later));
        assert_eq!(Streak::new(0).record(false, t), Verdict::Unhealthy(1));
    }

    /// Probes a never-healthy start makes in `span` after its port listens
    /// at `listens_at`, with each probe taking no time.
    fn probes(listens_at: Duration, span: Duration) -> (usize, usize) {
        let t0 = Instant::now();
        let mut pacing = Pacing::new();
        let (mut before, mut after) = (0, 0);
        let mut now = t0;
        while now < t0 + span {
            if now >= t0 + listens_at {
                pacing.listening(now);
            }
            if pacing.due(now) {
                if pacing.listening_since.is_some() {
                    after += 1;
                } else {
                    before += 1;
                }
                pacing.probed(now);
            }
            now += Duration::from_millis(1);
        }
        (before, after)
    }

    #[test]
    fn a_never_healthy_start_is_probed_sparingly() {
        let (before, after) = probes(Duration::from_millis(2500), Duration::from_secs(30));
        // One probe at once, then one a second until the port listens.
        assert_eq!(before, 3);
        // 40 in the fast second, a few while backing off, then 2 a second.
        assert!((80..=100).contains(&after), "{after} probes");
    }

    #[test]
    fn probes_are_fast_right_after_the_port_listens() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new();
        pacing.probed(t0);
        assert_eq!(pacing.next_probe(), Some(t0 + UNLISTENED_PROBE_EVERY));
        let at = t0 + Duration::from_millis(300);
        pacing.listening(at);
        assert!(
            pacing.due(at),
            "the first probe after listening is immediate"
        );
        pacing.probed(at);
        assert_eq!(pacing.next_probe(), Some(at + FAST_PAUSE));
        let late = at + Duration::from_secs(5);
        for _ in 0..20 {
            pacing.probed(late);
        }
        assert_eq!(pacing.next_probe(), Some(late + MAX_PAUSE));
    }

    #[test]
    fn failures_read_like_a_log_line() {
        let t = Duration::from_secs(2);
        assert_eq!(
            Failure::NoAnswer(NoAnswer::Refused, t).to_string(),
            "connection refused"
        );
        assert_eq!(
            Failure::NoAnswer(NoAnswer::TimedOut, t).to_string(),
            "timed out after 2s"
        );
        let status = |code, said: &str| Failure::Status {
            code,
            said: said.to_string(),
        };
        assert_eq!(status(500, "").to_string(), "HTTP 500");
        assert_eq!(status(503, "starting").to_string(), "HTTP 503: starting");
    }
}
