//! `deploy STAGE --continue` and `--abort`: the canary a `pause = "confirm"`
//! deploy left waiting. Every host of that deploy holds the same record in
//! its deploy lock; both read it with `status`, check that the hosts agree,
//! then take the lock over by the canary's release id. `--continue` switches
//! the other hosts to that release — prepared on every host before the
//! canary switched, so the same artifact and rendered config, nothing built
//! — in the stage's batches; `--abort` puts the canary hosts back.

use super::canary;
use super::host_run::{Run, Sessions};
use super::orchestrate::{Canary, Ctx, execute};
use super::{FinalState, Outcome, summary};
use crate::cli::DeployArgs;
use crate::error::{Error, Result};
use crate::operator::args::parse_wait;
use crate::operator::config::{Project, ResolvedStage};
use crate::operator::fleet::Fleet;
use crate::operator::inspect::query_all;
use crate::operator::output::Reporter;
use crate::operator::render;
use crate::protocol::canary::PendingCanary;
use crate::protocol::{Action, Request, Response};

/// The pending canary every host of its deploy holds, as `status` reads it.
fn read_pending(fleet: &Fleet, stage: &ResolvedStage) -> Result<PendingCanary> {
    let answers: Vec<_> = query_all(fleet, &stage.hosts, Request::Status)
        .into_iter()
        .map(|(host, answer)| {
            let record = match answer {
                Ok(Response::Status(status)) => Ok(status.pending_canary),
                Ok(other) => Err(format!("unexpected answer: {other:?}")),
                Err(e) => Err(e),
            };
            (host, record)
        })
        .collect();
    canary::agreed(&stage.name, &answers).map_err(Error::failed)
}

/// `deploy STAGE --continue` or `--abort`.
pub(super) fn resume(project: &Project, args: &DeployArgs, reporter: &Reporter) -> Result<i32> {
    let (stage, selection) =
        crate::operator::select::stage(project, &args.stage, &args.fleet.hosts)?;
    // Hooks and a failed health check may print what the service said.
    render::mask_available_secrets(&stage.secrets);
    let wait = parse_wait(args.wait.as_deref())?;
    let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
    let pending = read_pending(&fleet, &stage)?;
    let verb = if args.abort { "aborting" } else { "continuing" };
    reporter.note(&format!(
        "{verb} the canary of {} (stage {})",
        pending.describe(),
        stage.name
    ));
    let mut runs: Vec<Run> = stage
        .hosts
        .iter()
        .filter(|(h, _)| pending.hosts.contains(h))
        .map(|(h, spec)| Run::new(h, spec, None))
        .collect();
    let release = pending.release.clone();
    // The release was prepared everywhere before the canary switched.
    let choose = |run: &Run| {
        let here = run
            .state
            .as_ref()
            .is_some_and(|s| s.releases.iter().any(|r| r.id == release));
        if here {
            Ok(release.clone())
        } else {
            Err(format!(
                "release {release} is no longer on this host: `shipjar deploy {} --abort`, then deploy again",
                stage.name
            ))
        }
    };
    let ctx = Ctx {
        project,
        stage: &stage,
        fleet: &fleet,
        action: Action::Deploy,
        build: None,
        wait,
        reporter,
        choose: &choose,
        selection: selection.as_ref(),
        remote: None,
        canary: if args.abort {
            Canary::Abort(&pending)
        } else {
            Canary::Continue(&pending)
        },
        sessions: Sessions::new(&fleet, &stage, runs.len()),
    };
    let executed = execute(&ctx, &mut runs);
    let aborted_ok = args.abort
        && !runs.is_empty()
        && runs.iter().all(|r| match r.outcome.state {
            FinalState::Reverted => r.outcome.failed_step.as_deref() == Some("revert"),
            FinalState::Unchanged => r.outcome.locked,
            _ => false,
        });
    let mut outcome = Outcome::of(
        Action::Deploy,
        &stage.name,
        pending.release.clone(),
        pending.version.clone(),
        executed,
        runs,
    );
    outcome.selection = selection;
    if args.abort {
        outcome.ok = aborted_ok;
        outcome.aborted = true;
    }
    summary::finish(reporter, outcome)
}
