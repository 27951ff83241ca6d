//! The end of a deploy or rollback: one result line per host (with the service
//! log's tail and where the host is now when it failed), the per-host timings
//! table, the fleet counts, and the exit code.

use super::{FinalState, HostOutcome, Outcome};
use crate::error::Result;
use crate::operator::output::Reporter;

/// Prints the summary and returns the exit code.
pub(super) fn finish(reporter: &Reporter, outcome: Outcome) -> Result<i32> {
    let mut text = String::new();
    for host in &outcome.hosts {
        if host.ok {
            text.push_str(&succeeded_line(&outcome, host));
        } else {
            text.push_str(&failed_lines(&outcome, host));
        }
    }
    if let Some(why) = &outcome.stopped {
        text.push_str(&format!("{} stopped: {why}\n", outcome.action));
    }
    text.push_str(&timings_table(&outcome.hosts));
    if outcome.hosts.len() > 1 {
        let count = |s: FinalState| outcome.hosts.iter().filter(|h| h.state == s).count();
        // A stopped host went back as far as it could: it counts as reverted.
        text.push_str(&format!(
            "{} hosts: {} updated, {} reverted, {} unchanged, {} unknown\n",
            outcome.hosts.len(),
            count(FinalState::Updated),
            count(FinalState::Reverted) + count(FinalState::Stopped),
            count(FinalState::Unchanged),
            count(FinalState::Unknown)
        ));
    }
    reporter.result(&outcome, &text);
    Ok(match (outcome.interrupted, outcome.ok) {
        // Like a shell: interrupted by SIGINT, whatever got done.
        (true, _) => 130,
        (false, true) => 0,
        (false, false) => 1,
    })
}

/// `host: deploy ok — release … running as pid …, healthy after … ms`.
fn succeeded_line(outcome: &Outcome, host: &HostOutcome) -> String {
    let a = host.activation.as_ref();
    format!(
        "{}: {} ok — release {} (version {}) running as pid {}, healthy after {} ms{}\n",
        host.host,
        outcome.action,
        outcome.release,
        outcome.version,
        a.and_then(|a| a.pid).map_or("?".into(), |p| p.to_string()),
        a.and_then(|a| a.healthy_after_ms).unwrap_or(0),
        a.and_then(|a| a.reported_version.as_ref())
            .map_or(String::new(), |v| format!(", reports version {v}")),
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
    }
}
