//! Which releases `[releases] keep = N` keeps, and why: the host's prune and
//! `shipjar releases` plan with this one function. Kept are `current`, the
//! rollback target (the newest other release that was healthy), then the
//! newest healthy ones until N healthy are kept, plus at most one more: the
//! newest release that failed or never switched (to look into).

/// How a release's last activation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its last activation passed the gate (and settled).
    Healthy,
    /// Its last activation failed.
    Failed,
    /// It was never activated (no line in `revisions.log`).
    NeverSwitched,
}

/// Why a release stays, or that the next prune removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// `current` points to it.
    Current,
    /// The newest other release that was healthy: what a rollback goes to.
    RollbackTarget,
    /// One of the newest `keep` healthy releases.
    Healthy,
    /// The newest release that failed or never switched.
    NewestFailed,
    /// Beyond `keep`: removed by the next successful deploy.
    Pruned,
}

impl Kept {
    /// The words `shipjar releases` shows.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kept::Current => "current",
            Kept::RollbackTarget => "rollback target",
            Kept::Healthy => "healthy, within keep",
            Kept::NewestFailed => "newest failed, to look into",
            Kept::Pruned => "beyond keep: pruned by the next deploy",
        }
    }
}

/// PURE: for `releases` (oldest first: is it current, how it stands), why
/// each is kept under `keep`.
pub fn plan(releases: &[(bool, Standing)], keep: usize) -> Vec<Kept> {
    let target = releases
        .iter()
        .rposition(|(current, standing)| !current && *standing == Standing::Healthy);
    let mut kept: Vec<Option<Kept>> = releases
        .iter()
        .enumerate()
        .map(|(i, (current, _))| {
            if *current {
                Some(Kept::Current)
            } else if Some(i) == target {
                Some(Kept::RollbackTarget)
            } else {
                None
            }
        })
        .collect();
    let mut healthy = releases
        .iter()
        .zip(&kept)
        .filter(|((_, s), k)| k.is_some() && *s == Standing::Healthy)
        .count();
    // A current release that is not healthy (its revert failed) is the one failed kept.
    let mut failed = releases
        .iter()
        .zip(&kept)
        .filter(|((_, s), k)| k.is_some() && *s != Standing::Healthy)
        .count();
    for (i, (_, standing)) in releases.iter().enumerate().rev() {
        if kept[i].is_some() {
            continue;
        }
        kept[i] = Some(if *standing == Standing::Healthy && healthy < keep {
            healthy += 1;
            Kept::Healthy
        } else if *standing != Standing::Healthy && failed == 0 {
            failed += 1;
            Kept::NewestFailed
        } else {
            Kept::Pruned
        });
    }
    kept.into_iter()
        .map(|k| k.unwrap_or(Kept::Pruned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kept::{Current, NewestFailed, Pruned, RollbackTarget};
    use Standing::{Failed, NeverSwitched};
    const UP: Standing = Standing::Healthy;
    const KEPT: Kept = Kept::Healthy;

    #[test]
    fn keeps_exactly_n_healthy_plus_the_newest_failed() {
        // 1.0.0 … 1.0.6 healthy, two failed between them, 1.0.6 current.
        let releases = [
            (false, UP),
            (false, UP),
            (false, Failed),
            (false, UP),
            (false, UP),
            (false, Failed),
            (false, UP),
            (true, UP),
        ];
        assert_eq!(
            plan(&releases, 5),
            [
                Pruned,
                KEPT,
                Pruned,
                KEPT,
                KEPT,
                NewestFailed,
                RollbackTarget,
                Current
            ]
        );
    }

    #[test]
    fn after_a_rollback_the_current_and_the_target_count_first() {
        // Rolled back to the oldest: it and the newest healthy stay, keep = 2 in all.
        let releases = [(true, UP), (false, UP), (false, UP), (false, NeverSwitched)];
        assert_eq!(
            plan(&releases, 2),
            [Current, Pruned, RollbackTarget, NewestFailed]
        );
    }

    #[test]
    fn a_failed_current_is_the_one_failed_kept() {
        let releases = [(false, UP), (false, Failed), (true, Failed)];
        assert_eq!(plan(&releases, 2), [RollbackTarget, Pruned, Current]);
    }
}
