//! `[restart] auto_revert`: when the supervisor gives up on a release soon
//! after a deploy activated it, whether to go back, and to which release.
//! Pure: the history (`revisions.log`), the time and what can run come in
//! as arguments, so every rule is unit-tested.
//!
//! The history is the honest source of "activated by a deploy, when": the
//! deploy's own line, written once its activation passed the gate. One
//! auto-revert per activation follows from it: the release gone back to is
//! recorded as activated by the auto-revert, never by a deploy.

use std::time::{Duration, SystemTime};

use crate::protocol::clock::now_rfc3339;
use crate::protocol::{Action, Revision, RevisionOutcome};

/// How every record of a run that stopped before its host switched ends:
/// such a line changed nothing that runs.
const NOT_SWITCHED: &str = "; not switched";

/// Where to go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The release to go back to: the one that ran, healthy, before the deploy.
    pub target: String,
    /// How long ago the deploy activated the release given up on.
    pub deployed_ago: Duration,
}

/// Whether a line records an activation (a switch), as opposed to a run
/// that stopped before it switched.
fn switched(line: &Revision) -> bool {
    !(line.outcome == RevisionOutcome::Failed && line.detail.ends_with(NOT_SWITCHED))
}

/// PURE: whether to auto-revert release `current` given up on at `now`,
/// with `history` oldest first; `runnable` says whether a release is on
/// this host and can be run by this supervisor. `Err` says why not.
pub fn plan(
    history: &[Revision],
    current: &str,
    now: SystemTime,
    window: Duration,
    runnable: &dyn Fn(&str) -> bool,
) -> Result<Plan, String> {
    let Some(at) = history
        .iter()
        .rposition(|r| r.release == current && switched(r))
    else {
        return Err(format!(
            "revisions.log has no record of release {current} being activated"
        ));
    };
    if let Some(later) = history[at + 1..].iter().find(|r| switched(r)) {
        return Err(format!(
            "its activation is not the last one recorded (then: {} of {})",
            later.action, later.release
        ));
    }
    let activation = &history[at];
    match (&activation.action, &activation.outcome) {
        (Action::Deploy, RevisionOutcome::Success) => {}
        (Action::AutoRevert, _) => {
            return Err(
                "it was activated by an auto-revert, not a deploy (one auto-revert per deploy)"
                    .into(),
            );
        }
        (Action::Deploy, _) => return Err("its deploy failed".into()),
        (other, _) => return Err(format!("it was activated by a {other}, not a deploy")),
    }
    let deployed_at = humantime::parse_rfc3339_weak(&activation.time).map_err(|e| {
        format!(
            "cannot read when its deploy was (`{}`: {e})",
            activation.time
        )
    })?;
    // A clock set back since the deploy: it was just now.
    let deployed_ago = now.duration_since(deployed_at).unwrap_or_default();
    if deployed_ago > window {
        return Err(format!(
            "its deploy was {} ago, longer than revert_window ({})",
            super::human_duration(Duration::from_secs(deployed_ago.as_secs())),
            super::human_duration(window)
        ));
    }
    // Newest first, before the deploy: the first release seen whose last
    // activation was healthy. One whose last activation failed is passed over.
    let mut seen: Vec<&str> = vec![current];
    for line in history[..at].iter().rev().filter(|r| switched(r)) {
        if seen.contains(&line.release.as_str()) {
            continue;
        }
        seen.push(&line.release);
        if line.outcome == RevisionOutcome::Success && runnable(&line.release) {
            return Ok(Plan {
                target: line.release.clone(),
                deployed_ago,
            });
        }
    }
    Err("no release that was healthy before it is left on this host".into())
}

/// The `auto-revert` line of `release` in `revisions.log`, made by `who`
/// (the supervisor of a plain service, the runner behind the proxy).
pub fn revision(
    who: &str,
    release: &str,
    version: &str,
    healthy: bool,
    detail: String,
) -> Revision {
    Revision {
        time: now_rfc3339(),
        action: Action::AutoRevert,
        release: release.to_string(),
        version: version.to_string(),
        deployer: who.to_string(),
        outcome: if healthy {
            RevisionOutcome::Success
        } else {
            RevisionOutcome::Failed
        },
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-12-06T12:00:00.000Z";

    fn line(time: &str, action: Action, release: &str, outcome: RevisionOutcome) -> Revision {
        Revision {
            time: time.into(),
            action,
            release: release.into(),
            version: "v".into(),
            deployer: "me@box".into(),
            outcome,
            detail: String::new(),
        }
    }

    fn at(offset: u64) -> SystemTime {
        humantime::parse_rfc3339(T0).expect("a time") + Duration::from_secs(offset)
    }

    const WINDOW: Duration = Duration::from_secs(900);
    use Action::{AutoRevert, Deploy, Rollback};
    use RevisionOutcome::{Failed, Success};

    fn everything_runs(_: &str) -> bool {
        true
    }

    #[test]
    fn a_deploy_given_up_on_inside_the_window_goes_back_to_the_release_before_it() {
        let history = [
            line("2026-12-06T11:00:00.000Z", Deploy, "r1", Success),
            line("2026-12-06T11:30:00.000Z", Deploy, "r2", Failed),
            line(T0, Deploy, "r3", Success),
        ];
        assert_eq!(
            plan(&history, "r3", at(120), WINDOW, &everything_runs),
            Ok(Plan {
                target: "r1".into(),
                deployed_ago: Duration::from_secs(120)
            })
        );
    }

    #[test]
    fn outside_the_window_nothing_is_reverted() {
        let history = [
            line("2026-12-06T11:00:00.000Z", Deploy, "r1", Success),
            line(T0, Deploy, "r2", Success),
        ];
        let why = plan(&history, "r2", at(901), WINDOW, &everything_runs).unwrap_err();
        assert!(why.contains("longer than revert_window (15m)"), "{why}");
        assert!(plan(&history, "r2", at(900), WINDOW, &everything_runs).is_ok());
    }

    #[test]
    fn once_per_deploy_a_release_an_auto_revert_activated_is_not_reverted_again() {
        let mut gave_up = line(T0, AutoRevert, "r2", Failed);
        gave_up.detail = "auto-reverted: gave up".into();
        let history = [
            line("2026-12-06T11:00:00.000Z", Deploy, "r1", Success),
            line("2026-12-06T11:59:00.000Z", Deploy, "r2", Success),
            gave_up,
            line(T0, AutoRevert, "r1", Success),
        ];
        let why = plan(&history, "r1", at(10), WINDOW, &everything_runs).unwrap_err();
        assert!(why.contains("one auto-revert per deploy"), "{why}");
    }

    #[test]
    fn a_rollback_or_a_later_record_is_not_a_deploy_to_revert() {
        let history = [
            line("2026-12-06T11:00:00.000Z", Deploy, "r1", Success),
            line("2026-12-06T11:10:00.000Z", Deploy, "r2", Success),
            line(T0, Rollback, "r1", Success),
        ];
        let why = plan(&history, "r1", at(10), WINDOW, &everything_runs).unwrap_err();
        assert!(why.contains("activated by a rollback"), "{why}");
        // r3's deploy failed and reverted to r2: r2 now runs by that revert.
        let history = [
            line("2026-12-06T11:00:00.000Z", Deploy, "r1", Success),
            line("2026-12-06T11:59:00.000Z", Deploy, "r2", Success),
            line(T0, Deploy, "r3", Failed),
        ];
        let why = plan(&history, "r2", at(10), WINDOW, &everything_runs).unwrap_err();
        assert!(why.contains("not the last one recorded"), "{why}");
    }

    #[test]
    fn a_run_that_never_switched_changes_nothing() {
        let mut stopped = line(T0, Deploy, "r3", Failed);
        stopped.detail = "lock: busy; not switched".into();
        let history = [
            line("2026-12-06T11:00:00.000Z", Deploy, "r1", Success),
            line("2026-12-06T11:59:00.000Z", Deploy, "r2", Success),
            stopped,
        ];
        assert_eq!(
            plan(&history, "r2", at(10), WINDOW, &everything_runs).map(|p| p.target),
            Ok("r1".into())
        );
    }

    #[test]
    fn a_release_whose_last_activation_failed_or_that_cannot_run_is_passed_over() {
        let history = [
            line("2026-12-06T10:00:00.000Z", Deploy, "r0", Success),
            line("2026-12-06T11:00:00.000Z", Deploy, "r1", Success),
            line("2026-12-06T11:10:00.000Z", Deploy, "r2", Success),
            line("2026-12-06T11:20:00.000Z", Rollback, "r1", Failed),
            line(T0, Deploy, "r3", Success),
        ];
        // r1's last activation failed; r2 is pruned (not on the host).
        let runnable = |id: &str| id != "r2";
        assert_eq!(
            plan(&history, "r3", at(10), WINDOW, &runnable).map(|p| p.target),
            Ok("r0".into())
        );
        let first = [line(T0, Deploy, "r1", Success)];
        let why = plan(&first, "r1", at(10), WINDOW, &everything_runs).unwrap_err();
        assert!(why.contains("no release that was healthy"), "{why}");
        let why = plan(&[], "r1", at(10), WINDOW, &everything_runs).unwrap_err();
        assert!(why.contains("no record"), "{why}");
    }
}
