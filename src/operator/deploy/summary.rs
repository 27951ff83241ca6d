//! The end of a deploy or rollback: one result line per host (with the service
//! log's tail and where the host is now when it failed), the per-host timings
//! table, the fleet counts, and the exit code.

use super::{FinalState, HostOutcome, Outcome};
use crate::error::Result;
use crate::operator::output::Reporter;
use crate::operator::select::Selection;
use crate::protocol::Action;

/// Prints the summary and returns the exit code.
pub(super) fn finish(reporter: &Reporter, outcome: Outcome) -> Result<i32> {
    let mut text = String::new();
    for host in &outcome.hosts {
        if host.ok {
            text.push_str(&succeeded_line(&outcome, host));
        } else if host.state == FinalState::Waiting {
            text.push_str(&format!(
                "{}: waiting for the canary to be confirmed, still on release {}\n",
                host.host,
                host.previous.as_deref().unwrap_or("(none)")
            ));
        } else if outcome.aborted && host.state == FinalState::Reverted {
            text.push_str(&format!(
                "{}: canary put back — {}\n",
                host.host,
                where_now(host)
            ));
        } else if outcome.aborted && host.state == FinalState::Unchanged && host.locked {
            text.push_str(&format!("{}: {}\n", host.host, where_now(host)));
        } else {
            text.push_str(&failed_lines(&outcome, host));
        }
    }
    match (&outcome.stopped, &outcome.pending_canary) {
        (Some(why), _) if outcome.aborted && outcome.ok => {
            text.push_str(&format!("{why}; the stage is unlocked\n"));
        }
        (Some(why), _) => text.push_str(&format!("{} stopped: {why}\n", outcome.action)),
        (None, Some(pending)) => text.push_str(&format!(
            "canary of release {} healthy on {}: waiting for `shipjar deploy {} --continue` (or `--abort`); the stage stays locked until then (at most 24 h, or `shipjar unlock`)\n",
            pending.release,
            pending.canary.keys().cloned().collect::<Vec<_>>().join(", "),
            outcome.stage
        )),
        (None, None) => {}
    }
    text.push_str(&timings_table(&outcome.hosts));
    if outcome.hosts.len() > 1 {
        text.push_str(&counts_line(&outcome));
    }
    if let Some(selection) = &outcome.selection {
        text.push_str(&selection_line(&outcome, selection));
    }
    reporter.result(&outcome, &text);
    Ok(match (outcome.interrupted, outcome.ok) {
        // Like a shell: interrupted by SIGINT, whatever got done.
        (true, _) => 130,
        (false, true) => 0,
        (false, false) => 1,
    })
}

/// `5 hosts: 4 updated, 1 reverted, 0 unchanged, 0 unknown`.
fn counts_line(outcome: &Outcome) -> String {
    let count = |s: FinalState| outcome.hosts.iter().filter(|h| h.state == s).count();
    if outcome.action == Action::Restart {
        return format!(
            "{} hosts: {} restarted, {} failed, {} unchanged, {} unknown\n",
            outcome.hosts.len(),
            count(FinalState::Restarted),
            count(FinalState::Failed),
            count(FinalState::Unchanged),
            count(FinalState::Unknown)
        );
    }
    let waiting = match count(FinalState::Waiting) {
        0 => String::new(),
        n => format!(", {n} waiting"),
    };
    // A stopped host went back as far as it could: it counts as reverted.
    format!(
        "{} hosts: {} updated, {} reverted, {} unchanged, {} unknown{waiting}\n",
        outcome.hosts.len(),
        count(FinalState::Updated),
        count(FinalState::Reverted) + count(FinalState::Stopped),
        count(FinalState::Unchanged),
        count(FinalState::Unknown)
    )
}

/// A run on some of the stage's hosts says so: `deployed to 2 of 5 hosts
/// (--hosts web1,web2); the other 3 were not touched`.
fn selection_line(outcome: &Outcome, selection: &Selection) -> String {
    let done = match outcome.action {
        Action::Deploy => "deployed to",
        Action::Rollback => "rolled back on",
        Action::Restart => "restarted on",
        _ => "ran on",
    };
    let others = selection.of - selection.selected;
    let rest = match others {
        0 => String::new(),
        1 => "; the other host was not touched".to_string(),
        n => format!("; the other {n} were not touched"),
    };
    let partly = if outcome.ok { "" } else { "attempted: " };
    format!("{partly}{done} {}{rest}\n", selection.describe())
}

/// `host: deploy ok — release … running as pid …, healthy after … ms`.
fn succeeded_line(outcome: &Outcome, host: &HostOutcome) -> String {
    let a = host.activation.as_ref();
    if a.is_none() && outcome.action == Action::Deploy {
        // `--continue`: a canary host switched in the run before this one.
        return format!(
            "{}: deploy ok — release {} (version {}), the canary\n",
            host.host, outcome.release, outcome.version
        );
    }
    // A restart names each host's own release (hosts may run different ones).
    let release = match a {
        Some(a) if outcome.release.is_empty() => a.release.as_str(),
        _ => outcome.release.as_str(),
    };
    let version = if outcome.version.is_empty() {
        String::new()
    } else {
        format!(" (version {})", outcome.version)
    };
    format!(
        "{}: {} ok — release {release}{version} running as pid {}, healthy after {} ms{}{}\n",
        host.host,
        outcome.action,
        a.and_then(|a| a.pid).map_or("?".into(), |p| p.to_string()),
        a.and_then(|a| a.healthy_after_ms).unwrap_or(0),
        a.and_then(|a| a.reported_version.as_ref())
            .map_or(String::new(), |v| format!(", reports version {v}")),
        host.artifact
            .map_or(String::new(), |via| format!("; artifact {via}")),
    )
}

/// The failed step and reason, the service log's last lines, and where the host is now.
fn failed_lines(outcome: &Outcome, host: &HostOutcome) -> String {
    let a = host.activation.as_ref();
    let mut text = format!(
        "{}: {} FAILED at step `{}`: {}\n",
        host.host,
        outcome.action,
        host.failed_step.as_deref().unwrap_or("?"),
        host.reason.as_deref().unwrap_or("unknown")
    );
    if let Some(a) = a
        && !a.log_tail.is_empty()
    {
        // A failed hook's output stands where the service log would.
        let hook = host
            .failed_step
            .as_deref()
            .is_some_and(|s| s.starts_with("before_") || s.starts_with("after_"));
        text.push_str(if hook {
            "  output of the hook:\n"
        } else {
            "  last lines of the service log:\n"
        });
        for line in &a.log_tail {
            text.push_str(&format!("    {line}\n"));
        }
    }
    text.push_str(&format!("  {} is now {}\n", host.host, where_now(host)));
    text
}

/// Where a failed host is now, from the agent's report when there is one.
fn where_now(host: &HostOutcome) -> String {
    let now = host
        .activation
        .as_ref()
        .and_then(|a| a.now_running.as_ref());
    match (host.state, now) {
        // A restart goes back nowhere: it says how the host was left.
        (FinalState::Failed, Some(now)) => match (&now.release, now.healthy) {
            (Some(r), true) => format!(
                "still on release {r}, healthy (its previous process or instance kept running)"
            ),
            (Some(r), false) => format!(
                "left on release {r}, NOT healthy: {}",
                now.problem.as_deref().unwrap_or("unknown")
            ),
            (None, _) => "not running a release".into(),
        },
        (_, Some(now)) => match (&now.release, now.healthy) {
            (Some(r), true) => format!(
                "back on release {r} (version {}), healthy",
                now.version.as_deref().unwrap_or("?")
            ),
            (Some(r), false) => format!(
                "back on release {r}, but NOT healthy: {}",
                now.problem.as_deref().unwrap_or("unknown")
            ),
            (None, _) => "no earlier release to go back to: the service is stopped".into(),
        },
        (FinalState::Reverted, None) => format!(
            "back on release {}, healthy",
            host.previous.as_deref().unwrap_or("(none)")
        ),
        // A canary with no earlier release to go back to.
        (FinalState::Updated, None) => "still on the new release: no release ran here before it, so there is nothing to go back to".into(),
        (FinalState::Unknown, _) => "in an unknown state: it stopped answering during the switch; its agent completes or reverts the switch on its own — check with `shipjar status`".into(),
        _ => match &host.previous {
            Some(release) => format!("not changed (still on release {release})"),
            // Locked and asked: nothing was current. Not locked: not asked, so not known.
            None if host.locked => "not changed (no release was current)".into(),
            None => "not changed (this run did not get to ask which release it runs)".into(),
        },
    }
}

/// Per host: final state and milliseconds per phase.
fn timings_table(hosts: &[HostOutcome]) -> String {
    let width = hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<width$}  {:<9} {:>8} {:>8} {:>8} {:>8} {:>7}\n",
        "HOST", "STATE", "LOCK ms", "PREP ms", "SWITCH", "FINISH", "TRIPS"
    );
    for h in hosts {
        let t = |p: &str| {
            h.timings_ms
                .get(p)
                .map_or("-".to_string(), |ms| ms.to_string())
        };
        out.push_str(&format!(
            "{:<width$}  {:<9} {:>8} {:>8} {:>8} {:>8} {:>7}\n",
            h.host,
            h.state,
            t("lock"),
            t("prepare"),
            t("switch"),
            t("finish"),
            h.round_trips
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn host(name: &str, state: FinalState) -> HostOutcome {
        HostOutcome {
            host: name.into(),
            ok: state == FinalState::Updated,
            state,
            previous: Some("r1".into()),
            locked: true,
            failed_step: None,
            reason: None,
            uploaded_bytes: 0,
            artifact: None,
            round_trips: 3,
            timings_ms: BTreeMap::from([("lock", 12)]),
            activation: None,
        }
    }

    #[test]
    fn final_states_keep_their_json_words() {
        let all = [
            FinalState::Updated,
            FinalState::Reverted,
            FinalState::Stopped,
            FinalState::Unchanged,
            FinalState::Unknown,
        ];
        for state in all {
            let json = serde_json::to_value(host("a", state)).unwrap();
            assert_eq!(json["state"], state.as_str());
        }
        let words: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            words,
            ["updated", "reverted", "stopped", "unchanged", "unknown"]
        );
    }

    #[test]
    fn the_timings_table_keeps_its_columns() {
        let table = timings_table(&[
            host("app1", FinalState::Updated),
            host("app2", FinalState::Unchanged),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[1],
            "app1  updated         12        -        -        -       3"
        );
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
    }

    fn outcome(action: Action, hosts: Vec<HostOutcome>) -> Outcome {
        Outcome {
            ok: hosts.iter().all(|h| h.ok),
            action,
            stage: "prod".into(),
            release: String::new(),
            version: String::new(),
            stopped: None,
            interrupted: false,
            phases_ms: BTreeMap::new(),
            hosts,
            selection: None,
            pending_canary: None,
            aborted: false,
        }
    }

    #[test]
    fn a_run_on_some_hosts_says_how_many_of_the_stage_it_touched() {
        let selection = Selection {
            pattern: Some("web1,web2".into()),
            roles: None,
            selected: 2,
            of: 5,
        };
        let deploy = outcome(
            Action::Deploy,
            vec![
                host("web1", FinalState::Updated),
                host("web2", FinalState::Updated),
            ],
        );
        assert_eq!(
            selection_line(&deploy, &selection),
            "deployed to 2 of 5 hosts (--hosts web1,web2); the other 3 were not touched\n"
        );
        let failed = outcome(Action::Deploy, vec![host("web1", FinalState::Reverted)]);
        assert!(selection_line(&failed, &selection).starts_with("attempted: deployed to 2 of 5"));
    }

    #[test]
    fn a_restart_counts_restarted_and_failed_hosts() {
        let restart = outcome(
            Action::Restart,
            vec![
                host("web1", FinalState::Restarted),
                host("web2", FinalState::Failed),
                host("web3", FinalState::Unchanged),
            ],
        );
        assert_eq!(
            counts_line(&restart),
            "3 hosts: 1 restarted, 1 failed, 1 unchanged, 0 unknown\n"
        );
    }

    #[test]
    fn a_failed_host_without_a_report_is_described_by_its_state() {
        assert_eq!(
            where_now(&host("a", FinalState::Reverted)),
            "back on release r1, healthy"
        );
        assert!(where_now(&host("a", FinalState::Unknown)).starts_with("in an unknown state"));
        assert_eq!(
            where_now(&host("a", FinalState::Unchanged)),
            "not changed (still on release r1)"
        );
        let mut first_canary = host("a", FinalState::Updated);
        first_canary.previous = None;
        assert!(where_now(&first_canary).contains("nothing to go back to"));
    }
}
