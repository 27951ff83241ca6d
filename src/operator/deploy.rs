//! Orchestration of `deploy`, `rollback` and `unlock` across a stage.
//!
//! Deploy: plan everything first; then lock every host, upload and prepare the
//! release on ALL hosts; only then switch in rolling batches, each host gated
//! on health and reported version (the agent reverts a host that fails). A
//! batch with more failures than `max_failed` stops the deploy; with
//! `on_failure = "revert"` hosts switched earlier go back too, so the fleet
//! ends on one version. Hosts not yet switched are never touched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::{DeployArgs, FleetArgs, RollbackArgs};
use crate::error::{Error, Result};
use crate::operator::build::{self, BuildManifest};
use crate::operator::config::{OnFailure, Project, ResolvedStage};
use crate::operator::fleet::{self, Fleet};
use crate::operator::output::Reporter;
use crate::operator::plan::{self, DeployInputs, HostPlan};
use crate::operator::render;
use crate::operator::transport::AgentSession;
use crate::protocol::clock::now_rfc3339;
use crate::protocol::{
    Action, Activation, ErrorKind, HostState, LockHolder, PrepareSpec, Request, Response,
    RevisionOutcome,
};

/// The result of a deploy or rollback on one host.
#[derive(Debug, Serialize)]
pub struct HostOutcome {
    /// Host as written in the stage.
    pub host: String,
    /// True when the target release is current, healthy and verified.
    pub ok: bool,
    /// Where the host ended: `updated`, `reverted`, `unchanged`, `unknown`.
    pub state: &'static str,
    /// Release current before the deploy.
    pub previous: Option<String>,
    /// Step that failed, if any.
    pub failed_step: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Bytes uploaded to this host.
    pub uploaded_bytes: u64,
    /// Requests answered by the agent.
    pub round_trips: u32,
    /// Milliseconds per phase.
    pub timings_ms: BTreeMap<&'static str, u64>,
    /// The agent's report of the activation.
    pub activation: Option<Activation>,
}

/// The result of a whole deploy or rollback.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// True when every host succeeded.
    pub ok: bool,
    /// `deploy` or `rollback`.
    pub action: &'static str,
    /// Stage name.
    pub stage: String,
    /// Release id activated.
    pub release: String,
    /// Version of that release.
    pub version: String,
    /// Why the deploy stopped early, if it did.
    pub stopped: Option<String>,
    /// Milliseconds per phase, whole fleet.
    pub phases_ms: BTreeMap<&'static str, u64>,
    /// Per host, in the stage's order.
    pub hosts: Vec<HostOutcome>,
}

/// One host during a run.
struct Run<'p> {
    host: String,
    spec: crate::operator::config::HostSpec,
    plan: Option<&'p HostPlan>,
    session: Option<AgentSession>,
    state: Option<HostState>,
    /// Release to activate on this host.
    target: Option<String>,
    switched: bool,
    /// Kind of the agent's error that failed this host, when it was one.
    error_kind: Option<ErrorKind>,
    outcome: HostOutcome,
}

impl<'p> Run<'p> {
    fn new(
        host: &str,
        spec: &crate::operator::config::HostSpec,
        plan: Option<&'p HostPlan>,
    ) -> Self {
        Run {
            host: host.to_string(),
            spec: spec.clone(),
            plan,
            session: None,
            state: None,
            target: None,
            switched: false,
            error_kind: None,
            outcome: HostOutcome {
                host: host.to_string(),
                ok: false,
                state: "unchanged",
                previous: None,
                failed_step: None,
                reason: None,
                uploaded_bytes: 0,
                round_trips: 0,
                timings_ms: BTreeMap::new(),
                activation: None,
            },
        }
    }

    fn fail(&mut self, step: &str, reason: impl Into<String>, reporter: &Reporter) {
        let reason = reason.into();
        reporter.step(&self.host, step, "failed", &reason);
        if self.outcome.failed_step.is_none() {
            self.outcome.failed_step = Some(step.to_string());
            self.outcome.reason = Some(reason);
        }
    }

    fn failed(&self) -> bool {
        self.outcome.failed_step.is_some()
    }

    /// Sends a request, recording errors as this host's failure at `step`.
    fn call(&mut self, step: &str, request: Request, reporter: &Reporter) -> Option<Response> {
        let host = self.host.clone();
        let session = self.session.as_mut()?;
        let mut on_event = |s: &str, m: &str| reporter.step(&host, s, "info", m);
        match session.call(request, &mut on_event) {
            Ok(Response::Error(e)) => {
                if !self.failed() {
                    self.error_kind = Some(e.kind);
                }
                self.fail(step, e.message, reporter);
                None
            }
            Ok(response) => Some(response),
            Err(e) => {
                self.fail(step, e.message, reporter);
                // The transport is gone; nothing more can be asked of this host.
                self.session = None;
                None
            }
        }
    }

    fn time(&mut self, phase: &'static str, started: Instant) {
        *self.outcome.timings_ms.entry(phase).or_default() += started.elapsed().as_millis() as u64;
    }
}

/// Options shared by deploy and rollback.
struct RunOptions {
    wait: Option<Duration>,
}

/// `shipjar deploy STAGE`.
pub fn deploy(project: &Project, args: &DeployArgs, reporter: &Reporter) -> Result<i32> {
    let stage = project.stage(&args.stage)?;
    let secrets = render::load_secrets(&stage.secrets, &|var| std::env::var(var).ok())?;
    let sets = parse_pairs("--set", &args.set)?;
    let env = parse_pairs("--env", &args.env)?;
    let wait = parse_wait(args.wait.as_deref())?;
    let build = match (&args.artifact, args.skip_build) {
        (Some(path), _) => build::describe_artifact(project, path, args.version.as_deref())?,
        (None, true) => {
            let mut last = build::last_build(project)?;
            if let Some(v) = &args.version {
                last.version = v.clone();
            }
            last
        }
        (None, false) => build::build(project, args.version.as_deref(), reporter)?,
    };
    let deployed_at = now_rfc3339();
    let inputs = DeployInputs {
        release_id: plan::release_id(&deployed_at),
        deployed_at,
        deployer: deployer(),
        sets,
        env,
        secrets,
    };
    let read_template = |path: &str| {
        std::fs::read_to_string(project.dir.join(path)).map_err(|e| {
            Error::config(format!(
                "template {path}: cannot read {}: {e}",
                project.dir.join(path).display()
            ))
        })
    };
    // Every template for every host is rendered before any host is touched.
    let plan = plan::plan_deploy(&project.config, &stage, &build, &inputs, &read_template)?;
    reporter.note(&format!(
        "deploying {} {} (release {}) to {} ({} host{})",
        project.config.service.name,
        build.version,
        plan.release_id,
        stage.name,
        plan.hosts.len(),
        if plan.hosts.len() == 1 { "" } else { "s" }
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
    let options = RunOptions { wait };
    let mut phases = BTreeMap::new();
    let stopped = execute(
        project,
        &stage,
        &fleet,
        &mut runs,
        Action::Deploy,
        Some(&build),
        &options,
        &mut phases,
        reporter,
        &|run: &Run| {
            run.target
                .clone()
                .ok_or_else(|| "no release chosen".to_string())
        },
    );
    finish(
        reporter,
        Outcome {
            ok: stopped.is_none() && runs.iter().all(|r| r.outcome.ok),
            action: "deploy",
            stage: stage.name.clone(),
            release: plan.release_id.clone(),
            version: build.version.clone(),
            stopped,
            phases_ms: phases,
            hosts: runs.into_iter().map(|r| r.outcome).collect(),
        },
    )
}

/// `shipjar rollback STAGE [--to ID]`.
pub fn rollback(project: &Project, args: &RollbackArgs, reporter: &Reporter) -> Result<i32> {
    let stage = project.stage(&args.stage)?;
    let wait = parse_wait(args.wait.as_deref())?;
    let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
    let mut runs: Vec<Run> = stage
        .hosts
        .iter()
        .map(|(h, spec)| Run::new(h, spec, None))
        .collect();
    let options = RunOptions { wait };
    let mut phases = BTreeMap::new();
    let to = args.to.clone();
    let stopped = execute(
        project,
        &stage,
        &fleet,
        &mut runs,
        Action::Rollback,
        None,
        &options,
        &mut phases,
        reporter,
        &|run: &Run| choose_rollback_target(run, to.as_deref()),
    );
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
    finish(
        reporter,
        Outcome {
            ok: stopped.is_none() && runs.iter().all(|r| r.outcome.ok),
            action: "rollback",
            stage: stage.name.clone(),
            release,
            version,
            stopped,
            phases_ms: phases,
            hosts: runs.into_iter().map(|r| r.outcome).collect(),
        },
    )
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

/// The phases of a run; returns why it stopped early, if it did.
#[allow(clippy::too_many_arguments)]
fn execute(
    project: &Project,
    stage: &ResolvedStage,
    fleet: &Fleet,
    runs: &mut [Run],
    action: Action,
    build: Option<&BuildManifest>,
    options: &RunOptions,
    phases: &mut BTreeMap<&'static str, u64>,
    reporter: &Reporter,
    choose: &(dyn Fn(&Run) -> Result<String, String> + Sync),
) -> Option<String> {
    fleet::catch_interrupts();
    reporter.start_progress(runs.len());
    let parallel = fleet.parallel;
    let ours = env!("CARGO_PKG_VERSION");

    // Phase 1: connect and lock every host; nothing changes unless all are locked.
    let started = Instant::now();
    let deadline = options.wait.map(|w| Instant::now() + w);
    loop {
        fleet::each(runs, parallel, |run| {
            let t = Instant::now();
            lock_host(run, fleet, stage, build, reporter);
            run.time("lock", t);
        });
        let all_locked = runs.iter().all(|r| !r.failed());
        let only_held = runs
            .iter()
            .filter(|r| r.failed())
            .all(|r| r.error_kind == Some(ErrorKind::LockHeld));
        if all_locked
            || !only_held
            || deadline.is_none_or(|d| Instant::now() >= d)
            || fleet::interrupted()
        {
            break;
        }
        // Queue behind the live holder: give back what we took and try again.
        release_all(runs, parallel, reporter);
        reporter.note("waiting for the deploy lock (--wait)");
        std::thread::sleep(Duration::from_millis(500));
        for run in runs.iter_mut() {
            run.outcome.failed_step = None;
            run.outcome.reason = None;
            run.error_kind = None;
        }
    }
    phases.insert("lock", started.elapsed().as_millis() as u64);
    for run in runs.iter_mut().filter(|r| !r.failed()) {
        let version = run
            .state
            .as_ref()
            .map(|s| s.agent_version.clone())
            .unwrap_or_default();
        if version != ours {
            run.fail(
                "agent",
                format!("the host runs shipjar {version}, this is {ours}: run `shipjar provision {}` to update it", stage.name),
                reporter,
            );
            continue;
        }
        match choose(run) {
            Ok(target) => run.target = Some(target),
            Err(e) => run.fail("choose", e, reporter),
        }
    }
    if let Some(why) = stop_before_change(runs, "lock", reporter) {
        release_all(runs, parallel, reporter);
        return Some(why);
    }

    // Phase 2: upload what is missing and prepare the release on ALL hosts.
    if let Some(build) = build {
        let started = Instant::now();
        fleet::each(runs, parallel, |run| {
            let t = Instant::now();
            upload_and_prepare(run, build, reporter);
            run.time("prepare", t);
        });
        phases.insert("prepare", started.elapsed().as_millis() as u64);
        if let Some(why) = stop_before_change(runs, "prepare", reporter) {
            release_all(runs, parallel, reporter);
            return Some(why);
        }
    }

    // Phase 3: switch in batches.
    let started = Instant::now();
    let batch_size = stage.rolling.batch.hosts(runs.len());
    let max_failed = stage.rolling.max_failed;
    let mut stopped = None;
    let order: Vec<usize> = (0..runs.len()).collect();
    for (n, batch) in order.chunks(batch_size).enumerate() {
        if fleet::interrupted() {
            stopped = Some("interrupted (Ctrl-C) before batch ".to_string() + &(n + 1).to_string());
            break;
        }
        // Idle sessions renew their lease while other batches switch; no waiting.
        for run in runs.iter_mut().filter(|r| !r.switched && !r.failed()) {
            if let Some(session) = run.session.as_mut()
                && let Err(e) = session.notify(Request::Renew)
            {
                run.session = None;
                run.fail("lock", e.message, reporter);
            }
        }
        let lost: Vec<String> = runs
            .iter()
            .filter(|r| !r.switched && r.failed())
            .map(|r| r.host.clone())
            .collect();
        if !lost.is_empty() {
            stopped = Some(format!("lost {} before switching it", lost.join(", ")));
            break;
        }
        reporter.note(&format!(
            "batch {}: {}",
            n + 1,
            batch
                .iter()
                .map(|i| runs[*i].host.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let deployer = deployer();
        let mut batch_runs: Vec<&mut Run> = runs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| batch.contains(i))
            .map(|(_, r)| r)
            .collect();
        fleet::each(&mut batch_runs, parallel, |run| {
            let t = Instant::now();
            activate_host(run, action.clone(), &deployer, reporter);
            run.time("switch", t);
            if run.switched {
                reporter.host_done(&run.host);
            }
        });
        let failed = batch.iter().filter(|i| runs[**i].failed()).count();
        if failed > max_failed {
            stopped = Some(format!(
                "batch {} had {failed} failed host{} (max_failed = {max_failed})",
                n + 1,
                if failed == 1 { "" } else { "s" }
            ));
            break;
        }
    }
    phases.insert("switch", started.elapsed().as_millis() as u64);

    // On a stopped deploy, switched hosts go back so the fleet runs one version.
    if stopped.is_some() && stage.on_failure == OnFailure::Revert {
        let started = Instant::now();
        let deployer = deployer();
        fleet::each(runs, parallel, |run| {
            if run.switched && run.outcome.ok {
                revert_host(run, &deployer, reporter);
            }
        });
        phases.insert("revert", started.elapsed().as_millis() as u64);
    }

    // Phase 4: prune and unlock.
    let started = Instant::now();
    let keep = *project.config.releases.keep.get_ref();
    fleet::each(runs, parallel, |run| {
        let t = Instant::now();
        if !run.switched {
            reporter.host_done(&run.host);
        }
        if let Some(Response::Finished { pruned }) =
            run.call("finish", Request::Finish { keep: Some(keep) }, reporter)
            && !pruned.is_empty()
        {
            reporter.step(
                &run.host,
                "prune",
                "ok",
                &format!("removed {}", pruned.join(", ")),
            );
        }
        close(run, reporter);
        run.time("finish", t);
    });
    phases.insert("finish", started.elapsed().as_millis() as u64);
    stopped
}

fn lock_host(
    run: &mut Run,
    fleet: &Fleet,
    stage: &ResolvedStage,
    build: Option<&BuildManifest>,
    reporter: &Reporter,
) {
    if run.session.is_none() {
        match fleet.open(&run.host, &run.spec) {
            Ok(session) => run.session = Some(session),
            Err(e) => return run.fail("connect", e.message, reporter),
        }
    }
    // Prepared in the same round trip when the host has the artifact already.
    let prepare = run.plan.map(|plan| {
        Box::new(PrepareSpec {
            manifest: plan.manifest.clone(),
            files: plan.files.clone(),
        })
    });
    let request = Request::Begin {
        holder: holder(),
        artifact_sha256: build.map(|b| b.sha256.clone()),
        lease_ms: stage.lock_lease_ms,
        prepare,
    };
    let Some(response) = run.call("lock", request, reporter) else {
        if run.error_kind == Some(ErrorKind::LockHeld)
            && let Some(reason) = run.outcome.reason.as_mut()
        {
            reason.push_str(&format!(
                "; use --wait DURATION to queue behind it, or `shipjar unlock {}` if that deploy is dead",
                stage.name
            ));
        }
        return;
    };
    let Response::Begun(state) = response else {
        return run.fail("lock", format!("unexpected answer: {response:?}"), reporter);
    };
    for path in &state.cleaned_up {
        reporter.step(
            &run.host,
            "lock",
            "info",
            &format!("removed leftover of an interrupted run: {path}"),
        );
    }
    if let Some(previous) = &state.took_over {
        reporter.step(
            &run.host,
            "lock",
            "warning",
            &format!("took over an expired lock: {previous}"),
        );
    }
    reporter.step(
        &run.host,
        "lock",
        "ok",
        &format!(
            "locked; current release {}",
            state.current.as_deref().unwrap_or("(none)")
        ),
    );
    run.outcome.previous = state.current.clone();
    run.state = Some(*state);
}

fn upload_and_prepare(run: &mut Run, build: &BuildManifest, reporter: &Reporter) {
    let Some(plan) = run.plan else { return };
    if run.state.as_ref().is_some_and(|s| s.prepared) {
        reporter.step(
            &run.host,
            "upload",
            "ok",
            "artifact already on the host, nothing to upload",
        );
        reporter.step(
            &run.host,
            "prepare",
            "ok",
            &format!("release {} complete", plan.manifest.id),
        );
        return;
    }
    let host = run.host.clone();
    let Some(session) = run.session.as_mut() else {
        return;
    };
    let mut on_event = |s: &str, m: &str| reporter.step(&host, s, "info", m);
    let prepare = Request::Prepare(Box::new(PrepareSpec {
        manifest: plan.manifest.clone(),
        files: plan.files.clone(),
    }));
    let result = session.put_and_prepare(&build.sha256, &build.artifact, prepare, &mut on_event);
    run.outcome.uploaded_bytes = session.uploaded_bytes;
    match result {
        Ok(Response::Prepared { .. }) => {
            reporter.step(
                &run.host,
                "upload",
                "ok",
                &format!("{} bytes, sha256 verified", build.size),
            );
            reporter.step(
                &run.host,
                "prepare",
                "ok",
                &format!("release {} complete", plan.manifest.id),
            );
        }
        Ok(Response::Error(e)) => run.fail(&e.step, e.message, reporter),
        Ok(other) => run.fail("prepare", format!("unexpected answer: {other:?}"), reporter),
        Err(e) => {
            run.session = None;
            run.fail("upload", e.message, reporter);
        }
    }
}

fn activate_host(run: &mut Run, action: Action, deployer: &str, reporter: &Reporter) {
    let Some(target) = run.target.clone() else {
        return;
    };
    run.switched = true;
    let request = Request::Activate {
        release: target,
        action,
        deployer: deployer.to_string(),
    };
    match run.call("activate", request, reporter) {
        Some(Response::Activated(activation)) => {
            run.outcome.ok = activation.ok;
            if activation.ok {
                run.outcome.state = "updated";
                reporter.step(
                    &run.host,
                    "activate",
                    "ok",
                    &format!("healthy on {}", activation.release),
                );
            } else {
                run.outcome.state = if activation
                    .now_running
                    .as_ref()
                    .is_some_and(|n| n.release.is_some())
                {
                    "reverted"
                } else {
                    "stopped"
                };
                let step = activation
                    .failed_step
                    .clone()
                    .unwrap_or_else(|| "activate".into());
                let reason = activation.reason.clone().unwrap_or_default();
                run.fail(&step, reason, reporter);
            }
            run.outcome.activation = Some(*activation);
        }
        Some(other) => run.fail(
            "activate",
            format!("unexpected answer: {other:?}"),
            reporter,
        ),
        None => {
            // The host stopped answering mid-activation: its agent finishes on
            // its own (reverting on failure), but we cannot say how it ended.
            run.outcome.state = "unknown";
        }
    }
}

fn revert_host(run: &mut Run, deployer: &str, reporter: &Reporter) {
    let Some(previous) = run.outcome.previous.clone() else {
        return;
    };
    reporter.step(
        &run.host,
        "revert",
        "info",
        &format!("going back to {previous} so the fleet runs one version"),
    );
    let request = Request::Activate {
        release: previous.clone(),
        action: Action::Rollback,
        deployer: deployer.to_string(),
    };
    match run.call("revert", request, reporter) {
        Some(Response::Activated(a)) if a.ok => {
            run.outcome.ok = false;
            run.outcome.state = "reverted";
            if run.outcome.failed_step.is_none() {
                run.outcome.failed_step = Some("revert".into());
                run.outcome.reason = Some("reverted because a later batch failed".into());
            }
            reporter.step(
                &run.host,
                "revert",
                "ok",
                &format!("back on {previous}, healthy"),
            );
        }
        Some(Response::Activated(a)) => {
            run.outcome.ok = false;
            run.outcome.state = "unknown";
            run.fail("revert", a.reason.unwrap_or_default(), reporter);
        }
        _ => {
            run.outcome.ok = false;
            run.outcome.state = "unknown";
        }
    }
}

/// Before any host changed: if something failed, the whole run stops here.
fn stop_before_change(runs: &mut [Run], phase: &str, reporter: &Reporter) -> Option<String> {
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.host.clone())
        .collect();
    if failed.is_empty() && !fleet::interrupted() {
        return None;
    }
    for run in runs.iter_mut().filter(|r| !r.failed()) {
        run.outcome.failed_step = Some(phase.to_string());
        run.outcome.reason = Some("not changed: the run stopped before switching any host".into());
    }
    let why = if fleet::interrupted() {
        "interrupted (Ctrl-C) before any host was switched".to_string()
    } else {
        format!(
            "{} failed on {}; no host was switched",
            phase,
            failed.join(", ")
        )
    };
    reporter.note(&why);
    Some(why)
}

fn release_all(runs: &mut [Run], parallel: usize, reporter: &Reporter) {
    fleet::each(runs, parallel, |run| {
        if let Some(session) = run.session.as_mut() {
            let _ = session.call(Request::Finish { keep: None }, &mut |_, _| {});
        }
        close(run, reporter);
    });
}

fn close(run: &mut Run, reporter: &Reporter) {
    if let Some(session) = run.session.take() {
        run.outcome.uploaded_bytes = session.uploaded_bytes;
        run.outcome.round_trips += session.round_trips;
        if let Err(e) = session.close() {
            reporter.step(&run.host, "unlock", "warning", &e.message);
        }
    }
}

/// `shipjar unlock STAGE`: removes the deploy lock on every host and says whose it was.
pub fn unlock(
    project: &Project,
    stage_name: &str,
    fleet_args: &FleetArgs,
    reporter: &Reporter,
) -> Result<i32> {
    let stage = project.stage(stage_name)?;
    let fleet = Fleet::for_stage(project, &stage, fleet_args)?;
    let rows: Vec<(String, Result<Option<String>, String>)> =
        crate::operator::inspect::query_all(&fleet, &stage.hosts, Request::Unlock)
            .into_iter()
            .map(|(host, answer)| {
                let previous = match answer {
                    Ok(Response::Unlocked { previous }) => Ok(previous),
                    Ok(other) => Err(format!("unexpected answer: {other:?}")),
                    Err(e) => Err(e),
                };
                (host, previous)
            })
            .collect();
    let mut text = String::new();
    #[derive(Serialize)]
    struct Row {
        host: String,
        ok: bool,
        was_held_by: Option<String>,
        error: Option<String>,
    }
    let mut out = Vec::new();
    for (host, result) in rows {
        match result {
            Ok(Some(previous)) => {
                text.push_str(&format!("{host}: removed the lock of {previous}\n"));
                out.push(Row {
                    host,
                    ok: true,
                    was_held_by: Some(previous),
                    error: None,
                });
            }
            Ok(None) => {
                text.push_str(&format!("{host}: was not locked\n"));
                out.push(Row {
                    host,
                    ok: true,
                    was_held_by: None,
                    error: None,
                });
            }
            Err(e) => {
                text.push_str(&format!("{host}: FAILED: {e}\n"));
                out.push(Row {
                    host,
                    ok: false,
                    was_held_by: None,
                    error: Some(e),
                });
            }
        }
    }
    let ok = out.iter().all(|r| r.ok);
    #[derive(Serialize)]
    struct UnlockResult {
        ok: bool,
        hosts: Vec<Row>,
    }
    reporter.result(&UnlockResult { ok, hosts: out }, &text);
    Ok(if ok { 0 } else { 1 })
}

/// Prints the summary and returns the exit code.
fn finish(reporter: &Reporter, outcome: Outcome) -> Result<i32> {
    let mut text = String::new();
    for host in &outcome.hosts {
        let a = host.activation.as_ref();
        if host.ok {
            text.push_str(&format!(
                "{}: {} ok — release {} (version {}) running as pid {}, healthy after {} ms{}\n",
                host.host,
                outcome.action,
                outcome.release,
                outcome.version,
                a.and_then(|a| a.pid).map_or("?".into(), |p| p.to_string()),
                a.and_then(|a| a.healthy_after_ms).unwrap_or(0),
                a.and_then(|a| a.reported_version.as_ref())
                    .map_or(String::new(), |v| format!(", reports version {v}")),
            ));
            continue;
        }
        text.push_str(&format!(
            "{}: {} FAILED at step `{}`: {}\n",
            host.host,
            outcome.action,
            host.failed_step.as_deref().unwrap_or("?"),
            host.reason.as_deref().unwrap_or("unknown")
        ));
        if let Some(a) = a
            && !a.log_tail.is_empty()
        {
            text.push_str("  last lines of the service log:\n");
            for line in &a.log_tail {
                text.push_str(&format!("    {line}\n"));
            }
        }
        let now = a.and_then(|a| a.now_running.as_ref());
        let line = match (host.state, now) {
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
            ("reverted", None) => format!(
                "back on release {}, healthy",
                host.previous.as_deref().unwrap_or("(none)")
            ),
            ("unknown", _) => "in an unknown state: it stopped answering during the switch; its agent completes or reverts the switch on its own — check with `shipjar status`".into(),
            _ => format!(
                "not changed (still on release {})",
                host.previous.as_deref().unwrap_or("(none)")
            ),
        };
        text.push_str(&format!("  {} is now {line}\n", host.host));
    }
    if let Some(why) = &outcome.stopped {
        text.push_str(&format!("{} stopped: {why}\n", outcome.action));
    }
    text.push_str(&timings_table(&outcome.hosts));
    if outcome.hosts.len() > 1 {
        let count = |s: &str| outcome.hosts.iter().filter(|h| h.state == s).count();
        text.push_str(&format!(
            "{} hosts: {} updated, {} reverted, {} unchanged, {} unknown\n",
            outcome.hosts.len(),
            count("updated"),
            count("reverted") + count("stopped"),
            count("unchanged"),
            count("unknown")
        ));
    }
    reporter.result(&outcome, &text);
    Ok(if outcome.ok { 0 } else { 1 })
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

fn parse_wait(wait: Option<&str>) -> Result<Option<Duration>> {
    wait.map(|w| {
        humantime::parse_duration(w)
            .map_err(|e| Error::config(format!("--wait {w}: {e}: expected e.g. 30s or 5m")))
    })
    .transpose()
}

/// Parses repeated `KEY=VALUE` options.
pub fn parse_pairs(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::config(format!("{flag} {pair}: expected KEY=VALUE")));
        };
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::config(format!(
                "{flag} {k}=…: `{k}` is not a valid name (letters, digits, `_`)"
            )));
        }
        map.insert(k.to_string(), v.to_string());
    }
    Ok(map)
}

/// `user@machine` of whoever runs shipjar.
pub fn deployer() -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::current())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

fn holder() -> LockHolder {
    LockHolder {
        deployer: deployer(),
        pid: std::process::id(),
        command: std::env::args()
            .map(|a| crate::operator::output::redact(&a))
            .collect::<Vec<_>>()
            .join(" "),
        since: now_rfc3339(),
    }
}
