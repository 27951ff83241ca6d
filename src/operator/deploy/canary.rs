//! PURE: the order a deploy switches its hosts in — the canary first, as a
//! batch of its own, then the rest in rolling batches — and whether the
//! hosts of a stage agree on the pending canary `--continue`/`--abort` acts on.

use crate::operator::config::BatchSize;
use crate::protocol::canary::PendingCanary;

/// Hosts (indices into the deploy's hosts) in the order they switch.
#[derive(Debug, PartialEq, Eq)]
pub struct SwitchPlan {
    /// Switched first and watched; empty without a canary.
    pub canary: Vec<usize>,
    /// The other hosts, batch by batch.
    pub batches: Vec<Vec<usize>>,
}

/// Plans the switch of `todo` (the hosts still to switch, of `total` in the
/// deploy): `canary` hosts first when given, then batches of `batch`, sized
/// on the whole deploy so a `--continue` batches as the first run would.
pub fn plan(
    todo: &[usize],
    total: usize,
    batch: BatchSize,
    canary: Option<BatchSize>,
) -> SwitchPlan {
    let canary_size = canary.map_or(0, |c| c.hosts(total).min(todo.len()));
    let (canary, rest) = todo.split_at(canary_size);
    SwitchPlan {
        canary: canary.to_vec(),
        batches: rest
            .chunks(batch.hosts(total))
            .map(<[usize]>::to_vec)
            .collect(),
    }
}

/// The pending canary every host of it holds, from each host's answer (its
/// record, or why it could not be asked); else why `--continue`/`--abort`
/// cannot go on, naming the hosts.
pub fn agreed(
    stage: &str,
    answers: &[(String, Result<Option<PendingCanary>, String>)],
) -> Result<PendingCanary, String> {
    let records: Vec<(&str, &PendingCanary)> = answers
        .iter()
        .filter_map(|(host, a)| match a {
            Ok(Some(p)) => Some((host.as_str(), p)),
            _ => None,
        })
        .collect();
    let Some((_, first)) = records.first() else {
        let unreachable: Vec<String> = answers
            .iter()
            .filter_map(|(host, a)| a.as_ref().err().map(|e| format!("{host}: {e}")))
            .collect();
        let also = if unreachable.is_empty() {
            String::new()
        } else {
            format!(" (not asked: {})", unreachable.join("; "))
        };
        return Err(format!(
            "nothing is pending on stage {stage}: no host holds a canary waiting for `--continue`{also}; `shipjar status {stage}` shows what runs where"
        ));
    };
    if let Some((host, other)) = records.iter().find(|(_, p)| p != first) {
        return Err(format!(
            "the hosts disagree on the pending canary: {} holds release {}, {host} release {}; `shipjar status {stage}` shows each host's",
            records[0].0, first.release, other.release
        ));
    }
    let missing: Vec<String> = first
        .hosts
        .iter()
        .filter(|h| !records.iter().any(|(r, _)| r == h))
        .map(|h| match answers.iter().find(|(a, _)| a == h) {
            Some((_, Err(e))) => format!("{h} (not reachable: {e})"),
            Some(_) => format!("{h} (holds no pending canary: rebooted or unlocked?)"),
            None => format!("{h} (not in this run: check --hosts)"),
        })
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the pending canary of release {} is not held by every host of its deploy: {}; `shipjar unlock {stage}` clears it on the others, then `shipjar rollback {stage} --hosts {}` puts the canary back",
            first.release,
            missing.join(", "),
            first.canary.keys().cloned().collect::<Vec<_>>().join(",")
        ));
    }
    Ok((*first).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_is_a_number_or_a_percentage_of_the_deploy_first() {
        let all: Vec<usize> = (0..10).collect();
        let p = plan(&all, 10, BatchSize::Hosts(4), Some(BatchSize::Hosts(1)));
        assert_eq!(p.canary, vec![0]);
        assert_eq!(p.batches, vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9]]);
        let p = plan(
            &all,
            10,
            BatchSize::Percent(50),
            Some(BatchSize::Percent(25)),
        );
        assert_eq!(p.canary, vec![0, 1, 2], "25% of 10 rounds up to 3");
        assert_eq!(p.batches, vec![vec![3, 4, 5, 6, 7], vec![8, 9]]);
        // 10% of 3 hosts is still one host.
        let p = plan(
            &[0, 1, 2],
            3,
            BatchSize::Hosts(1),
            Some(BatchSize::Percent(10)),
        );
        assert_eq!(p.canary, vec![0]);
        assert_eq!(p.batches, vec![vec![1], vec![2]]);
    }

    #[test]
    fn without_a_canary_or_after_it_only_batches_remain() {
        let p = plan(&[0, 1, 2], 3, BatchSize::Hosts(2), None);
        assert!(p.canary.is_empty());
        assert_eq!(p.batches, vec![vec![0, 1], vec![2]]);
        // `--continue`: the canary (host 0) is done; batches keep the first run's size.
        let p = plan(&[1, 2, 3], 4, BatchSize::Percent(50), None);
        assert_eq!(p.batches, vec![vec![1, 2], vec![3]]);
        // A canary as large as the deploy leaves nothing after it.
        let p = plan(&[0, 1], 2, BatchSize::Hosts(1), Some(BatchSize::Hosts(5)));
        assert_eq!(p.canary, vec![0, 1]);
        assert!(p.batches.is_empty());
    }

    fn pending(release: &str) -> PendingCanary {
        PendingCanary {
            stage: "prod".into(),
            release: release.into(),
            version: "2".into(),
            artifact_sha256: "00".repeat(32),
            hosts: vec!["a".into(), "b".into(), "c".into()],
            canary: [("a".to_string(), Some("r1".to_string()))].into(),
            deployer: "me@box".into(),
            since: "t".into(),
        }
    }

    #[test]
    fn every_host_of_the_deploy_must_hold_the_same_pending_canary() {
        let held = |r: &str| Ok(Some(pending(r)));
        let ok = agreed(
            "prod",
            &[
                ("a".into(), held("r2")),
                ("b".into(), held("r2")),
                ("c".into(), held("r2")),
            ],
        );
        assert_eq!(ok.map(|p| p.release), Ok("r2".into()));
        let none = agreed("prod", &[("a".into(), Ok(None)), ("b".into(), Ok(None))]).unwrap_err();
        assert!(
            none.starts_with("nothing is pending on stage prod"),
            "{none}"
        );
        assert!(none.contains("`shipjar status prod`"), "{none}");
        let split = agreed(
            "prod",
            &[
                ("a".into(), held("r2")),
                ("b".into(), held("r3")),
                ("c".into(), held("r2")),
            ],
        )
        .unwrap_err();
        assert!(
            split.contains("a holds release r2, b release r3"),
            "{split}"
        );
        let gone = agreed(
            "prod",
            &[
                ("a".into(), held("r2")),
                ("b".into(), Ok(None)),
                ("c".into(), Err("cut".into())),
            ],
        )
        .unwrap_err();
        assert!(gone.contains("b (holds no pending canary"), "{gone}");
        assert!(gone.contains("c (not reachable: cut)"), "{gone}");
        assert!(gone.contains("shipjar rollback prod --hosts a"), "{gone}");
    }
}
