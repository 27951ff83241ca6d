//! `deploy`, `rollback` and `unlock` across a stage.
//!
//! Deploy: plan everything first; then lock every host, upload and prepare the
//! release on ALL hosts; only then switch in rolling batches, each host gated
//! on health and reported version (the agent reverts a host that fails). A
//! batch with more failures than `max_failed` stops the deploy; with
//! `on_failure = "revert"` hosts switched earlier go back too, so the fleet
//! ends on one version. Hosts not yet switched are never touched. With
//! `rolling.canary` the canary hosts switch first and are watched for
//! `rolling.pause`, or left waiting for `deploy --continue`/`--abort`
//! (resume.rs).

mod archive;
mod canary;
mod host_run;
mod identity;
mod orchestrate;
mod resume;
mod summary;
mod unlock;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::{DeployArgs, RestartArgs, RollbackArgs};
use crate::error::{Error, Result};
use crate::operator::args::{parse_pairs, parse_wait};
use crate::operator::build::{self, BuildManifest};
use crate::operator::config::artifact::{ArtifactSource, Fetch};
use crate::operator::config::{Project, ResolvedStage};
use crate::operator::fleet::Fleet;
use crate::operator::output::Reporter;
use crate::operator::plan::{self, DeployInputs, DeployPlan};
use crate::operator::render;
use crate::operator::repository::{self, Remote};
use crate::operator::select::Selection;
use crate::protocol::clock::now_rfc3339;
use crate::protocol::{Action, Activation, RevisionOutcome};
use host_run::{Run, Sessions};
use orchestrate::{Canary, Ctx, Executed, execute};

pub use identity::deployer;
pub use unlock::unlock;

/// Where a host ended after a deploy or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalState {
    /// On the target release, healthy and reporting its version.
    Updated,
    /// Switched, then put back on the release it ran before: by its own agent
    /// because the switch failed, or because a later batch failed.
    Reverted,
    /// Switched, the switch failed, and there was no earlier release to go
    /// back to: the service is stopped.
    Stopped,
    /// Never switched: still on the release it ran before.
    Unchanged,
    /// Stopped answering during the switch (its agent completes or reverts
    /// the switch on its own), or could not be put back during a revert.
    Unknown,
    /// `restart`: the current release restarted, healthy and verified.
    Restarted,
    /// `restart`: the restart failed its gate; the host is left as it is
    /// (there is no other release to go back to).
    Failed,
    /// Not switched yet: waits for `deploy --continue` after its canary.
    Waiting,
}

impl FinalState {
    /// The word in the summary and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FinalState::Updated => "updated",
            FinalState::Reverted => "reverted",
            FinalState::Stopped => "stopped",
            FinalState::Unchanged => "unchanged",
            FinalState::Unknown => "unknown",
            FinalState::Restarted => "restarted",
            FinalState::Failed => "failed",
            FinalState::Waiting => "waiting",
        }
    }
}

impl std::fmt::Display for FinalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so the summary table's column widths apply.
        f.pad(self.as_str())
    }
}

/// The result of a deploy or rollback on one host.
#[derive(Debug, Serialize)]
pub struct HostOutcome {
    /// Host as written in the stage.
    pub host: String,
    /// True when the target release is current, healthy and verified.
    pub ok: bool,
    /// Where the host ended.
    pub state: FinalState,
    /// Release current before the deploy.
    pub previous: Option<String>,
    /// The lock was taken, so `previous` is what the host reported.
    pub locked: bool,
    /// Step that failed, if any.
    pub failed_step: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Bytes of the artifact uploaded to this host (a shared class-data
    /// archive's are in its `class-data` step's line).
    pub uploaded_bytes: u64,
    /// Requests answered by the agent.
    pub round_trips: u32,
    /// Milliseconds per phase.
    pub timings_ms: BTreeMap<&'static str, u64>,
    /// The agent's report of the activation.
    pub activation: Option<Activation>,
    /// How the host got an artifact from the repository: `downloaded`,
    /// `pushed` (by the operator) or `already stored`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<&'static str>,
}

/// The result of a whole deploy or rollback.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// True when every host succeeded.
    pub ok: bool,
    /// Deploy or rollback.
    pub action: Action,
    /// Stage name.
    pub stage: String,
    /// Release id activated.
    pub release: String,
    /// Version of that release.
    pub version: String,
    /// Why the deploy stopped early, if it did.
    pub stopped: Option<String>,
    /// Ctrl-C stopped it: the exit code is 130.
    pub interrupted: bool,
    /// Milliseconds per phase, whole fleet.
    pub phases_ms: BTreeMap<&'static str, u64>,
    /// Per host, in the stage's order.
    pub hosts: Vec<HostOutcome>,
    /// Only the hosts `--hosts` named: the others were not touched.
    pub selection: Option<Selection>,
    /// The canary this deploy left waiting for `--continue` (`pause = "confirm"`).
    pub pending_canary: Option<crate::protocol::canary::PendingCanary>,
    /// `--abort`: the run put a waiting canary back.
    pub aborted: bool,
}

impl Outcome {
    /// The outcome of `action` from the finished runs.
    fn of(
        action: Action,
        stage: &str,
        release: String,
        version: String,
        executed: Executed,
        runs: Vec<Run>,
    ) -> Outcome {
        Outcome {
            // Hosts waiting for `--continue` are not a failure of this run.
            ok: executed.stopped.is_none()
                && runs
                    .iter()
                    .all(|r| r.outcome.ok || r.outcome.state == FinalState::Waiting),
            action,
            stage: stage.to_string(),
            release,
            version,
            stopped: executed.stopped,
            interrupted: executed.interrupted,
            phases_ms: executed.phases,
            hosts: runs.into_iter().map(|r| r.outcome).collect(),
            selection: None,
            pending_canary: executed.pending,
            aborted: false,
        }
    }
}

/// `shipjar deploy STAGE`.
pub fn deploy(project: &Project, args: &DeployArgs, reporter: &Reporter) -> Result<i32> {
    if args.resume || args.abort {
        return resume::resume(project, args, reporter);
    }
    let (stage, selection) =
        crate::operator::select::stage(project, &args.stage, &args.fleet.hosts)?;
    let sets = parse_pairs("--set", &args.set)?;
    let env = parse_pairs("--env", &args.env)?;
    let wait = parse_wait(args.wait.as_deref())?;
    // Secrets first: a missing one should not cost a build.
    let secrets = render::load_secrets(&stage.secrets, &|var| std::env::var(var).ok())?;
    let (build, remote) = match project
        .artifact_source()
        .filter(|_| args.artifact.is_none() && !args.skip_build)
    {
        Some(source) => {
            let (build, remote) = from_repository(project, &source, args, reporter)?;
            (build, Some(remote))
        }
        None => (the_build(project, args, reporter)?, None),
    };
    // Every template for every host is rendered before any host is touched.
    let plan = plan_release(project, &stage, &build, secrets, sets, env, reporter)?;
    reporter.note(&format!(
        "deploying {} {} (release {}) to {} ({})",
        project.config.service.name,
        build.version,
        plan.release_id,
        stage.name,
        hosts_count(plan.hosts.len(), selection.as_ref())
    ));
    let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
    let mut runs: Vec<Run> = plan
        .hosts
        .iter()
        .map(|h| Run::new(&h.host, &h.spec, Some(h)))
        .collect();
    for run in &mut runs {
        run.target = Some(plan.release_id.clone());
    }
    let choose = |run: &Run| {
        run.target
            .clone()
            .ok_or_else(|| "no release chosen".to_string())
    };
    let ctx = Ctx {
        project,
        stage: &stage,
        fleet: &fleet,
        action: Action::Deploy,
        build: Some(&build),
        remote: remote.as_ref(),
        wait,
        reporter,
        choose: &choose,
        selection: selection.as_ref(),
        canary: match (stage.rolling.canary, stage.rolling.pause) {
            (Some(size), Some(pause)) => Canary::Plan { size, pause },
            _ => Canary::None,
        },
        sessions: Sessions::new(&fleet, &stage, runs.len()),
    };
    let executed = execute(&ctx, &mut runs);
    let release = plan.release_id.clone();
    let mut outcome = Outcome::of(
        Action::Deploy,
        &stage.name,
        release,
        build.version.clone(),
        executed,
        runs,
    );
    outcome.selection = selection;
    summary::finish(reporter, outcome)
}

/// The artifact to deploy: given with `--artifact`, the last build with
/// `--skip-build`, else built now.
fn the_build(project: &Project, args: &DeployArgs, reporter: &Reporter) -> Result<BuildManifest> {
    match (&args.artifact, args.skip_build) {
        (Some(path), _) => build::describe_artifact(project, path, args.version.as_deref()),
        (None, true) => {
            let mut last = build::last_build(project)?;
            if let Some(v) = &args.version {
                last.version = v.clone();
            }
            Ok(last)
        }
        (None, false) => build::build(project, args.version.as_deref(), reporter),
    }
}

/// The artifact of `--version` in `[artifact]`'s repository, resolved
/// without building; with `fetch = "operator"` downloaded here now.
fn from_repository(
    project: &Project,
    source: &ArtifactSource,
    args: &DeployArgs,
    reporter: &Reporter,
) -> Result<(BuildManifest, Remote)> {
    let Some(version) = args.version.as_deref() else {
        return Err(Error::config(
            "[artifact] deploys from the repository: say which version with --version V",
        )
        .hint("or deploy a local build with --artifact PATH or --skip-build"));
    };
    let remote = repository::resolve(project, source, version, args.sha256.as_deref())?;
    if remote.fetch == Fetch::Operator {
        remote.ensure_local().map_err(|e| {
            Error::failed(format!("the operator cannot download the artifact: {e}"))
        })?;
    }
    let size = std::fs::metadata(&remote.local).map_or(0, |m| m.len());
    reporter.note(&format!(
        "artifact: {} (sha256 {}) from the repository",
        remote.url,
        &remote.sha256[..12]
    ));
    let build = BuildManifest {
        artifact: remote.local.clone(),
        sha256: remote.sha256.clone(),
        size,
        version: version.to_string(),
        git_commit: None,
        build_time: now_rfc3339(),
    };
    Ok((build, remote))
}

/// Plans a release of `build` for every host of `stage`: gathers what the pure
/// planner needs from the clock, this machine and the project directory, then
/// renders every template for every host. Deploy and `check` both plan here.
pub fn plan_release(
    project: &Project,
    stage: &ResolvedStage,
    build: &BuildManifest,
    secrets: BTreeMap<String, String>,
    sets: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    reporter: &Reporter,
) -> Result<DeployPlan> {
    // A secret in a setting that is not secret is already in the clear.
    let settings = render::settings(&project.source, stage, &[("--set", &sets), ("--env", &env)]);
    for warning in render::check_secrets_against_settings(&settings, &stage.secrets, &secrets)? {
        reporter.note(&format!("warning: {warning}"));
    }
    let deployed_at = now_rfc3339();
    let inputs = DeployInputs {
        release_id: plan::release_id(&deployed_at),
        deployed_at,
        deployer: deployer(),
        sets,
        env,
        secrets,
    };
    let template = |path: &str| read_template(project, path);
    plan::plan_deploy(&project.config, stage, build, &inputs, &template)
}

/// A template's text, from a path relative to the project directory.
fn read_template(project: &Project, path: &str) -> Result<String> {
    std::fs::read_to_string(project.dir.join(path)).map_err(|e| {
        Error::config(format!(
            "template {path}: cannot read {}: {e}",
            project.dir.join(path).display()
        ))
    })
}

/// `shipjar rollback STAGE [--to ID]`.
pub fn rollback(project: &Project, args: &RollbackArgs, reporter: &Reporter) -> Result<i32> {
    let (stage, selection) =
        crate::operator::select::stage(project, &args.stage, &args.fleet.hosts)?;
    // Hooks and a failed health check may print what the service said: mask what can be read.
    render::mask_available_secrets(&stage.secrets);
    let wait = parse_wait(args.wait.as_deref())?;
    let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
    let mut runs: Vec<Run> = stage
        .hosts
        .iter()
        .map(|(h, spec)| Run::new(h, spec, None))
        .collect();
    let to = args.to.clone();
    let choose = |run: &Run| choose_rollback_target(run, to.as_deref());
    let ctx = Ctx {
        project,
        stage: &stage,
        fleet: &fleet,
        action: Action::Rollback,
        build: None,
        remote: None,
        wait,
        reporter,
        choose: &choose,
        selection: selection.as_ref(),
        canary: Canary::None,
        sessions: Sessions::new(&fleet, &stage, runs.len()),
    };
    let executed = execute(&ctx, &mut runs);
    let release = runs
        .iter()
        .find_map(|r| r.target.clone())
        .unwrap_or_default();
    let version = runs
        .iter()
        .filter_map(|r| r.state.as_ref())
        .flat_map(|s| s.releases.iter())
        .find(|r| r.id == release)
        .map(|r| r.version.clone())
        .unwrap_or_default();
    let mut outcome = Outcome::of(
        Action::Rollback,
        &stage.name,
        release,
        version,
        executed,
        runs,
    );
    outcome.selection = selection;
    summary::finish(reporter, outcome)
}

/// `5 hosts`, or `2 of 5 hosts (--hosts web1,web2)`.
fn hosts_count(n: usize, selection: Option<&Selection>) -> String {
    match selection {
        Some(s) => s.describe(),
        None => format!("{n} host{}", if n == 1 { "" } else { "s" }),
    }
}

/// `shipjar restart STAGE`: the current release of each host restarted
/// through the health gate, in the stage's rolling batches, under the deploy
/// lock; a batch with more failures than `max_failed` stops the restart.
/// Nothing is reverted: a host that failed its restart has no other release
/// to go back to, and hosts restarted earlier run the release they ran.
pub fn restart(project: &Project, args: &RestartArgs, reporter: &Reporter) -> Result<i32> {
    let (stage, selection) =
        crate::operator::select::stage(project, &args.stage, &args.fleet.hosts)?;
    // A failed health check may print what the service said: mask what can be read.
    render::mask_available_secrets(&stage.secrets);
    let wait = parse_wait(args.wait.as_deref())?;
    let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
    reporter.note(&format!(
        "restarting {} on {} ({})",
        project.config.service.name,
        stage.name,
        hosts_count(stage.hosts.len(), selection.as_ref())
    ));
    let mut runs: Vec<Run> = stage
        .hosts
        .iter()
        .map(|(h, spec)| Run::new(h, spec, None))
        .collect();
    let choose = |run: &Run| {
        run.state
            .as_ref()
            .and_then(|s| s.current.clone())
            .ok_or_else(|| "no release is current: nothing to restart".to_string())
    };
    let ctx = Ctx {
        project,
        stage: &stage,
        fleet: &fleet,
        action: Action::Restart,
        build: None,
        remote: None,
        wait,
        reporter,
        choose: &choose,
        selection: selection.as_ref(),
        canary: Canary::None,
        sessions: Sessions::new(&fleet, &stage, runs.len()),
    };
    let executed = execute(&ctx, &mut runs);
    // Hosts may run different releases: the summary names each host's own.
    let mut outcome = Outcome::of(
        Action::Restart,
        &stage.name,
        String::new(),
        String::new(),
        executed,
        runs,
    );
    outcome.selection = selection;
    summary::finish(reporter, outcome)
}

/// The release a rollback goes to on one host.
fn choose_rollback_target(run: &Run, to: Option<&str>) -> Result<String, String> {
    let state = run.state.as_ref().ok_or("no state")?;
    let target = match to {
        Some(id) => state
            .releases
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| format!("release {id} is not on this host"))?,
        None => {
            let current = state
                .releases
                .iter()
                .position(|r| r.current)
                .unwrap_or(state.releases.len());
            state.releases[..current]
                .iter()
                .rev()
                .find(|r| r.outcome == Some(RevisionOutcome::Success))
                .ok_or("no earlier good release to roll back to")?
        }
    };
    if target.current {
        return Err(format!("release {} is already current", target.id));
    }
    Ok(target.id.clone())
}
