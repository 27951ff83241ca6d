//! Settling: a release that passed its gate must stay up, and pass every
//! liveness probe, for `[health] settle` before its activation counts. A
//! crash (a restart by the supervisor included) or a failed probe inside the
//! window fails the activation like a failed start, so it is reverted.

use std::time::{Duration, Instant};

use super::cancelled;
use crate::host::error::HostError;
use crate::host::supervisor::{self, RunEnd, logfile};
use crate::protocol::layout::Layout;
use crate::protocol::manifest::HealthSpec;

/// How often the supervisor's record of the run is read.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// How long to wait for the supervisor to record how a run ended.
const RECORD_WAIT: Duration = Duration::from_secs(1);

/// Longest pause between two liveness probes while settling.
const PROBE_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// Watches the run of `pid` (the service of `layout`, an instance's layout
/// behind the proxy) until `health.settle_ms` after `healthy_at`.
pub fn settle(
    layout: &Layout,
    health: &HealthSpec,
    pid: i32,
    healthy_at: Instant,
    emit: &dyn Fn(&str, &str),
) -> Result<(), HostError> {
    let window = Duration::from_millis(health.settle_ms);
    stay_healthy(layout, health, pid, healthy_at, window, &SETTLE, emit)
}

/// Watches the run of `pid` for `window` from now, by the same rules as
/// settling (a canary's pause): a crash, a restart or a failed probe fails
/// step `watch`.
pub fn watch(
    layout: &Layout,
    health: &HealthSpec,
    pid: i32,
    window: Duration,
    emit: &dyn Fn(&str, &str),
) -> Result<(), HostError> {
    stay_healthy(layout, health, pid, Instant::now(), window, &WATCH, emit)
}

/// The words of one kind of watch: its step and what its times count from.
struct Words {
    step: &'static str,
    since: &'static str,
}

const SETTLE: Words = Words {
    step: "settle",
    since: "after becoming healthy",
};

const WATCH: Words = Words {
    step: "watch",
    since: "into the canary's pause",
};

/// The run of `pid` must stay up and pass every probe until `window` after `from`.
fn stay_healthy(
    layout: &Layout,
    health: &HealthSpec,
    pid: i32,
    healthy_at: Instant,
    window: Duration,
    words: &Words,
    emit: &dyn Fn(&str, &str),
) -> Result<(), HostError> {
    if window.is_zero() {
        return Ok(());
    }
    // The check as this run's supervisor probes it (an instance's port).
    let check = supervisor::release::current(layout)
        .map(|r| r.manifest.health.check)
        .unwrap_or_else(|_| health.check.clone());
    let interval = Duration::from_millis(health.interval_ms).min(PROBE_AT_LEAST_EVERY);
    let probe_timeout = Duration::from_millis(health.probe_timeout_ms.min(health.interval_ms));
    emit(
        words.step,
        &format!(
            "pid {pid}: must stay healthy for {}",
            seconds(window.saturating_sub(healthy_at.elapsed()))
        ),
    );
    let tail = || logfile::service_tail(layout, logfile::TAIL_LINES);
    let failed = |what: &str, since: Duration, why: String| {
        HostError::at(
            words.step,
            format!("{what} {} {}: {why}", seconds(since), words.since),
        )
        .with_log_tail(tail())
    };
    let mut next_probe = Instant::now() + interval;
    loop {
        cancelled(words.step)?;
        let since = healthy_at.elapsed();
        if let Some(end) = supervisor::run_ended(layout, pid) {
            return Err(failed("crashed", since, recorded(layout, pid, end)));
        }
        let done = since >= window;
        if done || Instant::now() >= next_probe {
            if let Err(found) = supervisor::probe_health(&check, probe_timeout) {
                // A probe that failed because the process is dying is a
                // crash: a JVM closes its sockets during its exit, before the
                // pid is gone, so give the end a moment to show.
                let since = healthy_at.elapsed();
                return Err(match ended_within(layout, pid, RECORD_WAIT) {
                    Some(end) => failed("crashed", since, recorded(layout, pid, end)),
                    None => failed("unhealthy", since, found),
                });
            }
            next_probe = Instant::now() + interval;
        }
        if done {
            emit(
                words.step,
                &format!("pid {pid} stayed healthy for {}", seconds(since)),
            );
            return Ok(());
        }
        std::thread::sleep(LOOK_EVERY.min(window.saturating_sub(since)));
    }
}

/// The end of the run of `pid`, if it comes within `wait`.
fn ended_within(layout: &Layout, pid: i32, wait: Duration) -> Option<RunEnd> {
    let until = Instant::now() + wait;
    loop {
        if let Some(end) = supervisor::run_ended(layout, pid) {
            return Some(end);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How the run ended, once its supervisor recorded it (it notices a moment
/// after the process is gone), or what was seen.
fn recorded(layout: &Layout, pid: i32, mut end: RunEnd) -> String {
    let until = Instant::now() + RECORD_WAIT;
    while !end.recorded && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(later) = supervisor::run_ended(layout, pid) {
            end = later;
        }
    }
    end.how
}

/// `2.1 s`: settle windows are seconds long, tenths say enough.
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
