//! The restart policy: exponential back-off between restarts, a reset after
//! a long enough healthy run, and a burst limit after which the supervisor
//! gives up. Pure: time comes in as arguments, so every rule is unit-tested.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::manifest::RestartSpec;

/// What to do after the service failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart after this delay.
    RestartIn(Duration),
    /// Too many failures within the window: stop trying.
    GiveUp {
        /// Failures counted within the window (including this one).
        failures: u32,
        /// The window.
        window: Duration,
    },
}

/// Back-off state across the restarts of one supervisor.
#[derive(Debug, Clone)]
pub struct Backoff {
    spec: RestartSpec,
    /// When each failure still inside the window happened, oldest first.
    failures: VecDeque<Instant>,
    /// Delay the next restart will wait.
    next_delay: Duration,
}

impl Backoff {
    /// A fresh back-off for `spec`.
    pub fn new(spec: &RestartSpec) -> Self {
        Backoff {
            spec: spec.clone(),
            failures: VecDeque::new(),
            next_delay: Duration::from_millis(spec.initial_delay_ms),
        }
    }

    /// The service ended on its own at `now`. `healthy_for` is how long it had
    /// been healthy (`None`: it never became healthy, a failed restart).
    pub fn on_failure(&mut self, now: Instant, healthy_for: Option<Duration>) -> Decision {
        let reset_after = Duration::from_millis(self.spec.reset_after_ms);
        // A long healthy run: this crash starts a new story, and an isolated
        // crash is restarted at once (waiting only pays off in a crash loop).
        let isolated = healthy_for.is_some_and(|h| h >= reset_after);
        if isolated {
            self.failures.clear();
            self.next_delay = Duration::from_millis(self.spec.initial_delay_ms);
        }
        let window = Duration::from_millis(self.spec.window_ms);
        self.failures.push_back(now);
        while let Some(first) = self.failures.front() {
            if now.saturating_duration_since(*first) >= window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        let failures = self.failures.len() as u32;
        if !self.spec.enabled || failures >= self.spec.max_failures {
            return Decision::GiveUp { failures, window };
        }
        if isolated {
            return Decision::RestartIn(Duration::ZERO);
        }
        let delay = self.next_delay;
        let max = Duration::from_millis(self.spec.max_delay_ms);
        // The factor is validated to 1.0..=100.0; min() keeps the float in range.
        self.next_delay = delay.mul_f64(self.spec.factor).min(max);
        Decision::RestartIn(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RestartSpec {
        RestartSpec {
            enabled: true,
            initial_delay_ms: 100,
            max_delay_ms: 1_000,
            factor: 2.0,
            reset_after_ms: 10_000,
            max_failures: 5,
            window_ms: 60_000,
            ..RestartSpec::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_grow_by_the_factor_up_to_the_maximum() {
        let mut spec = spec();
        spec.max_failures = 100;
        let mut b = Backoff::new(&spec);
        let t0 = Instant::now();
        let delays: Vec<Decision> = (0..6)
            .map(|i| b.on_failure(t0 + ms(i * 10), Some(ms(5))))
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1_000, 1_000].map(|d| Decision::RestartIn(ms(d)))
        );
    }

    #[test]
    fn gives_up_after_max_failures_within_the_window() {
        let mut b = Backoff::new(&spec());
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(matches!(
                b.on_failure(t0 + ms(i * 100), None),
                Decision::RestartIn(_)
            ));
        }
        assert_eq!(
            b.on_failure(t0 + ms(500), None),
            Decision::GiveUp {
                failures: 5,
                window: ms(60_000)
            }
        );
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let mut b = Backoff::new(&spec());
        let t0 = Instant::now();
        for i in 0..4 {
            b.on_failure(t0 + ms(i), None);
        }
        // A minute later the four old failures have left the window.
        assert!(matches!(
            b.on_failure(t0 + ms(61_000), None),
            Decision::RestartIn(_)
        ));
    }

    #[test]
    fn an_isolated_crash_after_a_long_healthy_run_restarts_at_once_and_resets_the_count() {
        let mut b = Backoff::new(&spec());
        let t0 = Instant::now();
        for i in 0..4 {
            b.on_failure(t0 + ms(i), Some(ms(1)));
        }
        assert_eq!(
            b.on_failure(t0 + ms(20_000), Some(ms(15_000))),
            Decision::RestartIn(Duration::ZERO)
        );
        // Crashing again soon is a loop again: the back-off starts over.
        assert_eq!(
            b.on_failure(t0 + ms(20_100), Some(ms(50))),
            Decision::RestartIn(ms(100))
        );
        assert_eq!(
            b.on_failure(t0 + ms(20_300), Some(ms(50))),
            Decision::RestartIn(ms(200))
        );
    }

    #[test]
    fn disabled_gives_up_at_once() {
        let mut spec = spec();
        spec.enabled = false;
        let mut b = Backoff::new(&spec);
        assert!(matches!(
            b.on_failure(Instant::now(), Some(ms(1))),
            Decision::GiveUp { failures: 1, .. }
        ));
    }
}
