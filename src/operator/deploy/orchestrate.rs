//! The phases of a deploy or rollback across the fleet: lock every host,
//! upload and prepare everywhere, switch in rolling batches, put earlier
//! batches back when the run stops (with `on_failure = "revert"`), finish.
//! Until the first switch, any failure stops the run with no host changed.
//! With a canary, its hosts switch first and are watched for the pause (or
//! the run pauses until `--continue`); a canary that fails is put back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::FinalState;
use super::archive;
use super::canary;
use super::host_run::{
    Run, Sessions, activate_host, attach, close, detach, lock_host, revert_host, upload_and_prepare,
};
use super::identity::deployer;
use crate::operator::build::BuildManifest;
use crate::operator::config::{BatchSize, OnFailure, Pause, Project, ResolvedStage};
use crate::operator::fleet::{self, Fleet};
use crate::operator::hooks;
use crate::operator::output::{Reporter, StepStatus};
use crate::operator::select::Selection;
use crate::operator::transport::Canceller;
use crate::protocol::canary::PendingCanary;
use crate::protocol::clock::now_rfc3339;
use crate::protocol::{Action, Activation, ErrorKind, HookPoint, NotSwitched, Request, Response};

/// Picks the release a host goes to, or says why it cannot.
pub(super) type Choose<'a> = dyn Fn(&Run) -> Result<String, String> + Sync + 'a;

/// Everything a run needs that stays the same through all its phases.
pub(super) struct Ctx<'a> {
    /// The project (for `releases.keep`).
    pub project: &'a Project,
    /// The stage being deployed.
    pub stage: &'a ResolvedStage,
    /// How hosts are reached, and how many at once.
    pub fleet: &'a Fleet,
    /// Deploy or rollback, as recorded by each host.
    pub action: Action,
    /// The artifact to upload; `None` for a rollback (nothing to upload).
    pub build: Option<&'a BuildManifest>,
    /// Where hosts download it themselves, when it comes from a repository.
    pub remote: Option<&'a crate::operator::repository::Remote>,
    /// How long to queue behind another deploy's lock (`--wait`).
    pub wait: Option<Duration>,
    /// Where progress goes.
    pub reporter: &'a Reporter,
    /// The release each host goes to, chosen once it is locked.
    pub choose: &'a Choose<'a>,
    /// Only the hosts `--hosts`/`--roles` named: each host records it.
    pub selection: Option<&'a Selection>,
    /// The canary: planned by this deploy, or the pending one continued or aborted.
    pub canary: Canary<'a>,
    /// The sessions held at once (at most `--parallel`), and whether locks detach between phases.
    pub sessions: Sessions,
}

impl Ctx<'_> {
    /// How to open a host's session.
    fn reach(&self) -> (&Fleet, &Sessions) {
        (self.fleet, &self.sessions)
    }

    /// Runs `work` on `run` in a session of its own holding its lock (see
    /// [`attach`]); with sessions closing between phases, the lock is
    /// detached and the session closed after. False when the host could not
    /// be reached or its lock was lost (the host's failure says which).
    pub(super) fn in_session(&self, run: &mut Run, work: impl FnOnce(&mut Run)) -> bool {
        if !attach(run, self.reach(), self.reporter) {
            return false;
        }
        work(run);
        detach(run, &self.sessions, self.reporter);
        true
    }
}

/// A run's canary.
#[derive(Clone, Copy)]
pub(super) enum Canary<'a> {
    /// No canary: batches only.
    None,
    /// This deploy's: `size` hosts first, then `pause`.
    Plan { size: BatchSize, pause: Pause },
    /// `deploy --continue`: the rest of the hosts, to the canary's release.
    Continue(&'a PendingCanary),
    /// `deploy --abort`: the canary hosts back on their previous release.
    Abort(&'a PendingCanary),
}

impl<'a> Canary<'a> {
    /// The pending canary this run resumes, if it resumes one.
    pub fn resumed(self) -> Option<&'a PendingCanary> {
        match self {
            Canary::Continue(p) | Canary::Abort(p) => Some(p),
            _ => None,
        }
    }
}

/// Milliseconds per phase, whole fleet.
pub(super) type Phases = BTreeMap<&'static str, u64>;

/// How a run went across the fleet.
pub(super) struct Executed {
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// Ctrl-C stopped it (the command then exits 130).
    pub interrupted: bool,
    /// Milliseconds per phase.
    pub phases: Phases,
    /// The canary now waiting for `--continue` (`pause = "confirm"`).
    pub pending: Option<PendingCanary>,
}

/// How the switch phase ended.
#[derive(Default)]
struct Switched {
    /// Why the run stopped early, if it did.
    stopped: Option<String>,
    /// The canary failed (or was interrupted): its hosts go back, whatever `on_failure` says.
    canary_failed: bool,
    /// The canary is healthy and waits for `--continue`.
    pending: Option<PendingCanary>,
}

impl Switched {
    fn stop(why: String) -> Switched {
        Switched {
            stopped: Some(why),
            ..Switched::default()
        }
    }

    fn canary_failed(why: String) -> Switched {
        Switched {
            stopped: Some(why),
            canary_failed: true,
            pending: None,
        }
    }
}

/// Runs every phase over `runs`; each host's result is left in its outcome.
pub(super) fn execute(ctx: &Ctx, runs: &mut [Run]) -> Executed {
    fleet::catch_interrupts();
    ctx.reporter.start_progress(runs.len());
    let mut phases = Phases::new();
    let switched = run_phases(ctx, runs, &mut phases);
    fleet::set_phase(fleet::Phase::Idle);
    // Paused or aborted, the deploy has not ended: no operator hook.
    if switched.pending.is_none() && !matches!(ctx.canary, Canary::Abort(_)) {
        run_operator_hook(ctx, runs, switched.stopped.as_deref());
    }
    Executed {
        stopped: switched.stopped,
        interrupted: fleet::interrupted(),
        phases,
        pending: switched.pending,
    }
}

/// The phases in order; returns why the run stopped early, if it did, or
/// the canary it left waiting.
fn run_phases(ctx: &Ctx, runs: &mut [Run], phases: &mut Phases) -> Switched {
    // Phase 1: connect and lock every host; nothing changes unless all are locked.
    fleet::set_phase(fleet::Phase::BeforeChange);
    timed(phases, "lock", || lock_all(ctx, runs));
    check_agents_and_choose(ctx, runs);
    adopt_canary(ctx, runs);
    if let Some(why) = stop_before_change(runs, "lock", ctx.reporter) {
        release_all(ctx, runs, Some(&why));
        return Switched::stop(why);
    }
    // Phase 2: upload what is missing and prepare the release on ALL hosts.
    if let Some(build) = ctx.build {
        timed(phases, "prepare", || prepare_all(ctx, runs, build));
        if let Some(why) = stop_before_change(runs, "prepare", ctx.reporter) {
            release_all(ctx, runs, Some(&why));
            return Switched::stop(why);
        }
    }
    // The once-per-run hook (migrations): on the first host, before any switch.
    if let Some(why) = run_once_before_switch(ctx, runs) {
        release_all(ctx, runs, Some(&why));
        return Switched::stop(why);
    }
    // Phase 3: switch in batches (the canary first), or put an aborted canary back.
    let switched = match ctx.canary {
        Canary::Abort(pending) => timed(phases, "revert", || abort_canary(ctx, runs, pending)),
        _ => timed(phases, "switch", || switch_in_batches(ctx, runs)),
    };
    fleet::set_phase(fleet::Phase::Finishing);
    let started = Instant::now();
    // A canary that failed goes back, whatever `on_failure` says: it was not
    // proven, and no other host has switched.
    if switched.canary_failed && revert_canary(ctx, runs) > 0 {
        phases.insert("revert", started.elapsed().as_millis() as u64);
    }
    // On a failed deploy, switched hosts go back so the fleet runs one version.
    // An interrupt is the user's choice: hosts switched so far stay (and say so).
    // A restart has no other release to revert to: hosts restarted earlier
    // run what they ran, and the batch rules have stopped the rest.
    if switched.stopped.is_some()
        && !switched.canary_failed
        && !matches!(ctx.canary, Canary::Abort(_))
        && !fleet::interrupted()
        && ctx.stage.on_failure == OnFailure::Revert
        && ctx.action != Action::Restart
    {
        // Only when this step put hosts back: a host whose own switch failed was
        // reverted by its agent, and that time is part of `switch`.
        if revert_switched(ctx, runs) > 0 {
            phases.insert("revert", started.elapsed().as_millis() as u64);
        }
    }
    // Phase 4: prune and unlock (or keep the lock for a canary left waiting).
    timed(phases, "finish", || {
        finish_all(
            ctx,
            runs,
            switched.stopped.as_deref(),
            switched.pending.as_ref(),
        )
    });
    switched
}

/// `--continue`/`--abort`: the canary hosts count as switched in this run,
/// from the release they ran before the canary (as the record says).
fn adopt_canary(ctx: &Ctx, runs: &mut [Run]) {
    let Some(pending) = ctx.canary.resumed() else {
        return;
    };
    for run in runs.iter_mut().filter(|r| !r.failed()) {
        if let Some(previous) = pending.canary.get(&run.host) {
            run.outcome.previous = previous.clone();
            run.switched = true;
            run.outcome.ok = true;
            run.outcome.state = FinalState::Updated;
        }
    }
}

/// `before_switch` (deploy) or `before_rollback` (rollback), once, on the
/// stage's first host, in the release it goes to; a failure stops the run
/// before any host switches.
fn run_once_before_switch(ctx: &Ctx, runs: &mut [Run]) -> Option<String> {
    // A resumed canary ran its hook before the canary switched.
    if ctx.canary.resumed().is_some() {
        return None;
    }
    let point = match ctx.action {
        Action::Deploy => HookPoint::BeforeSwitch,
        // A restart activates nothing new: no hooks.
        Action::Restart => return None,
        _ => HookPoint::BeforeRollback,
    };
    let hook = ctx.project.config.hooks.spec(&point)?;
    let (run, others) = runs.split_first_mut()?;
    let release = run.target.clone()?;
    let step = point.as_str();
    let request = Request::RunHook {
        release: release.clone(),
        point: point.clone(),
        hook,
    };
    // A migration may outlast the lease: the other hosts' locks are renewed meanwhile.
    let every = Duration::from_millis((ctx.stage.lock_lease_ms / 3).max(50));
    let done = AtomicBool::new(false);
    let answer = std::thread::scope(|scope| {
        scope.spawn(|| keep_renewing(ctx, &done, others.iter_mut(), every));
        let mut answer = None;
        ctx.in_session(run, |run| answer = run.call(step, request, ctx.reporter));
        done.store(true, Ordering::SeqCst);
        answer
    });
    let ran = match answer {
        Some(Response::HookRan(ran)) => ran,
        Some(other) => {
            run.fail(step, format!("unexpected answer: {other:?}"), ctx.reporter);
            return stop_before_change(runs, step, ctx.reporter);
        }
        None => return stop_before_change(runs, step, ctx.reporter),
    };
    let run = &mut runs[0];
    if ran.ok {
        ctx.reporter.step(
            &run.host,
            step,
            StepStatus::Ok,
            &format!("hook {} ({} ms)", ran.how, ran.took_ms),
        );
        return None;
    }
    let reason = format!("hook {}", ran.how);
    run.fail(step, reason.clone(), ctx.reporter);
    // The hook's output goes where a failed switch's service log would.
    run.outcome.activation = Some(Activation {
        failed_step: Some(step.to_string()),
        reason: Some(reason),
        log_tail: ran.output,
        ..Activation::of(&release)
    });
    stop_before_change(runs, step, ctx.reporter)
}

/// Renews the leases of `idle` hosts every `every` until `done`: a long
/// request elsewhere (a migration, a canary's pause) may outlast the lease.
/// A detached lock is renewed by a short session when it would run out
/// before the next round (those sessions count against `--parallel` too).
fn keep_renewing<'r, 'p: 'r>(
    ctx: &Ctx,
    done: &AtomicBool,
    idle: impl Iterator<Item = &'r mut Run<'p>>,
    every: Duration,
) {
    let mut idle: Vec<&mut Run> = idle.collect();
    let mut renewed = Instant::now();
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if renewed.elapsed() >= every {
            for run in idle.iter_mut() {
                if let Some(session) = run.session.as_mut() {
                    let _ = session.notify(Request::Renew);
                }
            }
            // A host lost here is found (and stops the run) before its batch.
            fleet::each(&mut idle, ctx.fleet.parallel, |run| {
                if ctx.sessions.due(run, every * 2) && !done.load(Ordering::SeqCst) {
                    ctx.in_session(run, |_| {});
                }
            });
            renewed = Instant::now();
        }
    }
}

/// `after_deploy` / `after_failure` (deploy) or `after_rollback` (a rollback
/// that completed), on this machine; a failing one is a warning only.
fn run_operator_hook(ctx: &Ctx, runs: &[Run], stopped: Option<&str>) {
    let completed = stopped.is_none() && runs.iter().all(|r| r.outcome.ok);
    let point = match (&ctx.action, completed) {
        (Action::Restart, _) => return,
        (Action::Deploy, true) => HookPoint::AfterDeploy,
        (Action::Deploy, false) => HookPoint::AfterFailure,
        (_, true) => HookPoint::AfterRollback,
        (_, false) => return,
    };
    let Some(hook) = ctx.project.config.hooks.spec(&point) else {
        return;
    };
    let hosts = |ok: bool| {
        runs.iter()
            .filter(|r| r.outcome.ok == ok)
            .map(|r| r.host.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut env = vec![
        ("SHIPJAR_HOOK", point.as_str().to_string()),
        ("SHIPJAR_SERVICE", ctx.project.config.service.name.0.clone()),
        ("SHIPJAR_STAGE", ctx.stage.name.clone()),
        ("SHIPJAR_ACTION", ctx.action.as_str().to_string()),
        (
            "SHIPJAR_RELEASE",
            runs.iter()
                .find_map(|r| r.target.clone())
                .unwrap_or_default(),
        ),
        ("SHIPJAR_HOSTS_OK", hosts(true)),
        ("SHIPJAR_HOSTS_FAILED", hosts(false)),
        ("SHIPJAR_DEPLOYER", deployer()),
    ];
    if let Some(build) = ctx.build {
        env.push(("SHIPJAR_VERSION", build.version.clone()));
    }
    if let Some(why) = stopped {
        env.push(("SHIPJAR_REASON", why.to_string()));
    }
    hooks::run_local(&ctx.project.dir, &point, &hook, &env, ctx.reporter);
}

/// Runs `f`, recording its wall time as `phase`.
fn timed<T>(phases: &mut Phases, phase: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = f();
    phases.insert(phase, started.elapsed().as_millis() as u64);
    result
}

/// Locks every host; with `--wait`, while the only failures are locks held by
/// another deploy, gives back what it took and tries again until the deadline.
fn lock_all(ctx: &Ctx, runs: &mut [Run]) {
    let parallel = ctx.fleet.parallel;
    let deadline = ctx.wait.map(|w| Instant::now() + w);
    for run in runs.iter_mut() {
        run.waiting = ctx.wait.is_some();
    }
    let mut announced = false;
    loop {
        fleet::each(runs, parallel, |run| {
            let t = Instant::now();
            let resume = ctx.canary.resumed().map(|p| p.release.as_str());
            lock_host(
                run,
                ctx.reach(),
                ctx.stage,
                (ctx.build, resume),
                ctx.reporter,
            );
            detach(run, &ctx.sessions, ctx.reporter);
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
            return;
        }
        // Queue behind the live holder: give back what we took and try again.
        release_all(ctx, runs, None);
        if !announced {
            announced = true;
            let held = runs
                .iter()
                .find_map(|r| r.outcome.reason.as_deref())
                .and_then(|reason| reason.split(';').next())
                .unwrap_or_default()
                .to_string();
            ctx.reporter
                .note(&format!("waiting for the deploy lock (--wait): {held}"));
        }
        std::thread::sleep(Duration::from_millis(500));
        for run in runs.iter_mut() {
            run.outcome.failed_step = None;
            run.outcome.reason = None;
            run.outcome.locked = false;
            run.error_kind = None;
        }
    }
}

/// On each locked host: the agent must be this shipjar's version; then the
/// host's target release is chosen.
fn check_agents_and_choose(ctx: &Ctx, runs: &mut [Run]) {
    let ours = env!("CARGO_PKG_VERSION");
    for run in runs.iter_mut().filter(|r| !r.failed()) {
        let version = run
            .state
            .as_ref()
            .map(|s| s.agent_version.clone())
            .unwrap_or_default();
        if version != ours {
            run.fail(
                "agent",
                format!(
                    "the host runs shipjar {version}, this is {ours}: run `shipjar provision {}` to update it",
                    ctx.stage.name
                ),
                ctx.reporter,
            );
            continue;
        }
        match (ctx.choose)(run) {
            Ok(target) => run.target = Some(target),
            Err(e) => run.fail("choose", e, ctx.reporter),
        }
    }
}

/// Uploads and prepares the release on every host, in parallel.
fn prepare_all(ctx: &Ctx, runs: &mut [Run], build: &BuildManifest) {
    let sharing = archive::plan(ctx, runs);
    // The host that dumps the shared archive first: its dump runs while
    // the others upload.
    let mut order: Vec<&mut Run> = runs.iter_mut().collect();
    if let Some(sharing) = &sharing {
        order.sort_by_key(|r| !sharing.dumps(&r.host));
    }
    fleet::each(&mut order, ctx.fleet.parallel, |run| {
        let dumps = sharing.as_ref().is_some_and(|s| s.dumps(&run.host));
        if let Some(sharing) = sharing.as_ref().filter(|_| !dumps) {
            sharing.wait_for_head_start();
        }
        let t = Instant::now();
        // Prepared when it was locked: nothing to say to the host.
        if run.state.as_ref().is_some_and(|s| s.prepared) {
            upload_and_prepare(run, build, ctx.remote, ctx.reporter);
        } else {
            ctx.in_session(run, |run| {
                upload_and_prepare(run, build, ctx.remote, ctx.reporter);
                if let Some(sharing) = &sharing {
                    sharing.after_prepare(run, ctx.reporter);
                }
            });
        }
        if let Some(sharing) = sharing.as_ref().filter(|_| dumps) {
            // Also when it could not be reached or its prepare failed.
            sharing.end_head_start();
        }
        run.time("prepare", t);
    });
    if let Some(sharing) = sharing {
        sharing.finish(ctx, runs);
    }
}

/// Switches the hosts batch by batch, the canary first; says why it
/// stopped early, if it did, or the canary it left waiting.
fn switch_in_batches(ctx: &Ctx, runs: &mut [Run]) -> Switched {
    // `--continue`: the canary hosts switched in the run before.
    let todo: Vec<usize> = (0..runs.len()).filter(|i| !runs[*i].switched).collect();
    let (size, pause) = match ctx.canary {
        Canary::Plan { size, pause } => (Some(size), Some(pause)),
        _ => (None, None),
    };
    let plan = canary::plan(&todo, runs.len(), ctx.stage.rolling.batch, size);
    if let Some(pause) = pause.filter(|_| !plan.canary.is_empty())
        && let Some(ended) = switch_canary(ctx, runs, &plan.canary, pause, plan.batches.is_empty())
    {
        return ended;
    }
    let max_failed = ctx.stage.rolling.max_failed;
    for (n, batch) in plan.batches.iter().enumerate() {
        if fleet::interrupted() {
            return Switched::stop(interrupted_before(runs, n));
        }
        if let Some(why) = renew_waiting(ctx, runs) {
            return Switched::stop(why);
        }
        let failed = switch_batch(ctx, runs, &format!("batch {}", n + 1), batch);
        if fleet::aborted() {
            return Switched::stop(format!(
                "aborted (Ctrl-C twice) during batch {}: its hosts were put back",
                n + 1
            ));
        }
        if failed > max_failed {
            return Switched::stop(format!(
                "batch {} had {failed} failed host{} (max_failed = {max_failed})",
                n + 1,
                if failed == 1 { "" } else { "s" }
            ));
        }
    }
    Switched::default()
}

/// Switches the canary hosts, then watches them for `pause` or leaves them
/// waiting for `--continue`; `None` when the rest may follow now.
fn switch_canary(
    ctx: &Ctx,
    runs: &mut [Run],
    canary: &[usize],
    pause: Pause,
    nothing_after: bool,
) -> Option<Switched> {
    if fleet::interrupted() {
        return Some(Switched::stop(
            "interrupted (Ctrl-C) before the canary: no host was switched".into(),
        ));
    }
    if let Some(why) = renew_waiting(ctx, runs) {
        return Some(Switched::stop(why));
    }
    let names = |runs: &[Run], which: &dyn Fn(&Run) -> bool| {
        canary
            .iter()
            .filter(|i| which(&runs[**i]))
            .map(|i| runs[*i].host.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let failed = switch_batch(ctx, runs, "canary", canary);
    if failed > 0 {
        return Some(Switched::canary_failed(format!(
            "the canary failed on {}: the canary was put back and no other host was switched",
            names(runs, &|r| r.failed())
        )));
    }
    if fleet::interrupted() {
        return Some(Switched::canary_failed(
            "interrupted (Ctrl-C) during the canary: the canary was put back and no other host was switched".into(),
        ));
    }
    match pause {
        Pause::For(window) => {
            watch_canary(ctx, runs, canary, window.0).map(Switched::canary_failed)
        }
        Pause::Confirm if nothing_after => {
            ctx.reporter
                .note("the canary is every host of this deploy: nothing to wait for");
            None
        }
        Pause::Confirm => {
            let pending = pending_record(ctx, runs, canary);
            ctx.reporter.note(&format!(
                "canary healthy on {}: waiting for `shipjar deploy {} --continue` (or `--abort`); the stage stays locked",
                names(runs, &|_| true),
                ctx.stage.name
            ));
            Some(Switched {
                pending: Some(pending),
                ..Switched::default()
            })
        }
    }
}

/// The record every host of the deploy keeps for the canary left waiting.
fn pending_record(ctx: &Ctx, runs: &[Run], canary: &[usize]) -> PendingCanary {
    PendingCanary {
        stage: ctx.stage.name.clone(),
        release: runs
            .iter()
            .find_map(|r| r.target.clone())
            .unwrap_or_default(),
        version: ctx.build.map(|b| b.version.clone()).unwrap_or_default(),
        artifact_sha256: ctx.build.map(|b| b.sha256.clone()).unwrap_or_default(),
        hosts: runs.iter().map(|r| r.host.clone()).collect(),
        canary: canary
            .iter()
            .map(|i| (runs[*i].host.clone(), runs[*i].outcome.previous.clone()))
            .collect(),
        deployer: deployer(),
        since: now_rfc3339(),
    }
}

/// Watches every canary host for `window_ms` (in parallel); one that fails
/// ends the others' watch, and so does Ctrl-C. Says why the canary failed.
fn watch_canary(ctx: &Ctx, runs: &mut [Run], canary: &[usize], window_ms: u64) -> Option<String> {
    let window = humantime::format_duration(Duration::from_millis(window_ms)).to_string();
    let (mut watched, mut others): (Vec<&mut Run>, Vec<&mut Run>) = (Vec::new(), Vec::new());
    for (i, run) in runs.iter_mut().enumerate() {
        if canary.contains(&i) {
            watched.push(run);
        } else {
            others.push(run);
        }
    }
    // A pause may outlast the lease: the other hosts' locks are renewed meanwhile.
    let every = Duration::from_millis((ctx.stage.lock_lease_ms / 3).max(50));
    ctx.reporter.note(&format!(
        "canary: watching {} for {window} before the other hosts",
        watched
            .iter()
            .map(|r| r.host.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    fleet::set_phase(fleet::Phase::CanaryPause {
        hosts: watched.iter().map(|r| r.host.clone()).collect(),
    });
    let cancellers = Cancellers::default();
    let (done, failed) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|scope| {
        // A failed host or Ctrl-C ends every watch at once.
        scope.spawn(|| {
            cancellers.cancel_when(&done, || {
                fleet::interrupted() || failed.load(Ordering::SeqCst)
            })
        });
        scope.spawn(|| keep_renewing(ctx, &done, others.iter_mut().map(|o| &mut **o), every));
        fleet::each(&mut watched, ctx.fleet.parallel, |run| {
            let t = Instant::now();
            let ended_early = failed.load(Ordering::SeqCst);
            let mut ok = true;
            let reached = ctx.in_session(run, |run| {
                cancellers.add(run);
                ok = watch_host(run, window_ms, ended_early, &failed, ctx.reporter);
            });
            if !ok || !reached {
                run.outcome.ok = false;
                failed.store(true, Ordering::SeqCst);
            }
            run.time("switch", t);
        });
        done.store(true, Ordering::SeqCst);
    });
    let failed_hosts: Vec<&str> = watched
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.host.as_str())
        .collect();
    if fleet::interrupted() {
        Some(format!(
            "interrupted (Ctrl-C) during the canary's {window} pause: the canary was put back and no other host was switched"
        ))
    } else if !failed_hosts.is_empty() {
        Some(format!(
            "the canary failed during its {window} pause on {}: the canary was put back and no other host was switched",
            failed_hosts.join(", ")
        ))
    } else {
        None
    }
}

/// One canary host's watch; false when it failed. A watch ended because
/// another host failed first is not this host's failure.
fn watch_host(
    run: &mut Run,
    window_ms: u64,
    ended_early: bool,
    failed: &AtomicBool,
    reporter: &Reporter,
) -> bool {
    let Some(release) = run.target.clone() else {
        return true;
    };
    let request = Request::Watch { release, window_ms };
    match run.call("watch", request, reporter) {
        Some(Response::Watched(w)) if w.ok => {
            reporter.step(
                &run.host,
                "watch",
                StepStatus::Ok,
                "stayed healthy for the pause",
            );
            true
        }
        Some(Response::Watched(w)) => {
            let others_failed = failed.load(Ordering::SeqCst) && !ended_early;
            if others_failed && !fleet::interrupted() {
                reporter.step(
                    &run.host,
                    "watch",
                    StepStatus::Info,
                    "watch ended: the canary failed on another host",
                );
                return true;
            }
            run.outcome.ok = false;
            if let Some(a) = run.outcome.activation.as_mut() {
                a.log_tail = w.log_tail;
            }
            run.fail("watch", w.reason.unwrap_or_default(), reporter);
            false
        }
        Some(other) => {
            run.outcome.ok = false;
            run.fail("watch", format!("unexpected answer: {other:?}"), reporter);
            false
        }
        None => {
            run.outcome.ok = false;
            false
        }
    }
}

/// Puts every canary host that switched back on its previous release (a
/// host whose own switch failed was put back by its agent); returns how many.
fn revert_canary(ctx: &Ctx, runs: &mut [Run]) -> usize {
    let deployer = deployer();
    let back = |r: &Run| r.switched && r.outcome.state == FinalState::Updated;
    let count = runs.iter().filter(|r| back(r)).count();
    fleet::each(runs, ctx.fleet.parallel, |run| {
        if back(run) {
            ctx.in_session(run, |run| {
                revert_canary_host(
                    run,
                    &deployer,
                    "reverted because the canary failed",
                    ctx.reporter,
                )
            });
        }
    });
    count
}

/// A canary host back on its previous release; with none (a first deploy)
/// it stays where it is, and says so.
fn revert_canary_host(run: &mut Run, deployer: &str, why: &str, reporter: &Reporter) {
    if run.outcome.previous.is_none() {
        run.outcome.ok = false;
        run.fail(
            "revert",
            "no release ran here before the canary: nothing to go back to",
            reporter,
        );
        return;
    }
    revert_host(run, deployer, why, reporter);
}

/// `--abort`: every canary host back on the release it ran before the canary.
fn abort_canary(ctx: &Ctx, runs: &mut [Run], pending: &PendingCanary) -> Switched {
    let deployer = deployer();
    fleet::each(runs, ctx.fleet.parallel, |run| {
        if run.switched {
            ctx.in_session(run, |run| {
                revert_canary_host(
                    run,
                    &deployer,
                    "the canary was aborted (--abort)",
                    ctx.reporter,
                )
            });
        }
    });
    Switched::stop(format!(
        "the canary of release {} was aborted (--abort)",
        pending.release
    ))
}

/// The cancellers of one step's sessions, registered as each session opens.
#[derive(Default)]
struct Cancellers(std::sync::Mutex<Vec<(Canceller, bool)>>);

impl Cancellers {
    /// Registers `run`'s session.
    fn add(&self, run: &Run) {
        if let Some(session) = run.session.as_ref() {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((session.canceller(), false));
        }
    }

    /// Until `done`: once `now` says so, cancels the request of every
    /// session registered (and of those registered later).
    fn cancel_when(&self, done: &AtomicBool, now: impl Fn() -> bool) {
        while !done.load(Ordering::SeqCst) {
            if now() {
                for (canceller, sent) in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter_mut()
                {
                    if !*sent {
                        *sent = canceller.cancel();
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Why the run stopped when Ctrl-C came before batch `n`.
fn interrupted_before(runs: &[Run], n: usize) -> String {
    let switched = runs.iter().filter(|r| r.switched && r.outcome.ok).count();
    format!(
        "interrupted (Ctrl-C) before batch {}: {switched} host{} on the new release, {} not switched",
        n + 1,
        if switched == 1 { "" } else { "s" },
        runs.len() - switched
    )
}

/// Renews the lease of hosts waiting for their batch (and of hosts switched
/// already: a `--continue`'s canary is idle from the start); a host lost
/// before its switch stops the run. A detached lock that would run out
/// within half a lease (a batch is one step, which fits in a lease) is
/// renewed by a short session.
fn renew_waiting(ctx: &Ctx, runs: &mut [Run]) -> Option<String> {
    // Idle sessions renew their lease while other batches switch; no waiting.
    for run in runs.iter_mut().filter(|r| !r.failed()) {
        if let Some(session) = run.session.as_mut()
            && let Err(e) = session.notify(Request::Renew)
            && !run.switched
        {
            run.session = None;
            run.fail("lock", e.message, ctx.reporter);
        }
    }
    let horizon = Duration::from_millis(ctx.sessions.lease_ms / 2);
    fleet::each(runs, ctx.fleet.parallel, |run| {
        if ctx.sessions.due(run, horizon) {
            ctx.in_session(run, |_| {});
        }
    });
    let lost: Vec<String> = runs
        .iter()
        .filter(|r| !r.switched && r.failed())
        .map(|r| r.host.clone())
        .collect();
    (!lost.is_empty()).then(|| format!("lost {} before switching it", lost.join(", ")))
}

/// Switches one batch (`label`, indices into `runs`) in parallel; returns how many of it failed.
fn switch_batch(ctx: &Ctx, runs: &mut [Run], label: &str, batch: &[usize]) -> usize {
    ctx.reporter.note(&format!(
        "{label}: {}",
        batch
            .iter()
            .map(|i| runs[*i].host.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let deployer = deployer();
    let earlier = runs.iter().filter(|r| r.switched && r.outcome.ok).count();
    let mut batch_runs: Vec<&mut Run> = runs
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| batch.contains(i))
        .map(|(_, r)| r)
        .collect();
    fleet::set_phase(fleet::Phase::Switching {
        hosts: batch_runs.iter().map(|r| r.host.clone()).collect(),
        earlier,
        restarting: ctx.action == Action::Restart,
    });
    let cancellers = Cancellers::default();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // A second Ctrl-C cancels the activations in flight at once.
        scope.spawn(|| cancellers.cancel_when(&done, fleet::aborted));
        fleet::each(&mut batch_runs, ctx.fleet.parallel, |run| {
            let t = Instant::now();
            let partial = ctx
                .selection
                .filter(|s| s.selected < s.of)
                .map(|s| s.describe());
            ctx.in_session(run, |run| {
                cancellers.add(run);
                activate_host(
                    run,
                    ctx.action.clone(),
                    &deployer,
                    partial.as_deref(),
                    ctx.reporter,
                );
            });
            run.time("switch", t);
            if run.switched {
                ctx.reporter.host_done(&run.host);
            }
        });
        done.store(true, Ordering::SeqCst);
    });
    batch.iter().filter(|i| runs[**i].failed()).count()
}

/// Puts every host that switched successfully back on its previous release;
/// returns how many it tried.
fn revert_switched(ctx: &Ctx, runs: &mut [Run]) -> usize {
    let deployer = deployer();
    let count = runs.iter().filter(|r| r.switched && r.outcome.ok).count();
    fleet::each(runs, ctx.fleet.parallel, |run| {
        if run.switched && run.outcome.ok {
            ctx.in_session(run, |run| {
                revert_host(
                    run,
                    &deployer,
                    "reverted because a later batch failed",
                    ctx.reporter,
                )
            });
        }
    });
    count
}

/// On every host still answering: prune old releases and release the lock;
/// a host the stopped run never switched records why. With `pending`, each
/// host keeps the lock for the canary instead (nothing pruned or recorded).
fn finish_all(ctx: &Ctx, runs: &mut [Run], stopped: Option<&str>, pending: Option<&PendingCanary>) {
    let keep = *ctx.project.config.releases.keep.get_ref();
    let deployer = deployer();
    fleet::each(runs, ctx.fleet.parallel, |run| {
        let t = Instant::now();
        if !run.switched {
            ctx.reporter.host_done(&run.host);
        }
        let not_switched = stopped
            .filter(|_| !run.switched)
            .and_then(|why| not_switched(ctx, run, &deployer, &format!("{why}; not switched")));
        let request = match pending {
            Some(pending) => {
                if !run.switched {
                    run.outcome.state = FinalState::Waiting;
                }
                Request::Finish {
                    keep: None,
                    not_switched: None,
                    pending: Some(Box::new(pending.clone())),
                }
            }
            None => Request::Finish {
                // A restart leaves the releases on the host as they are; after
                // its agent refused a request, a host prunes nothing.
                keep: (ctx.action != Action::Restart && !run.agent_failed).then_some(keep),
                not_switched,
                pending: None,
            },
        };
        attach(run, ctx.reach(), ctx.reporter);
        if let Some(Response::Finished { pruned }) = run.call("finish", request, ctx.reporter)
            && !pruned.is_empty()
        {
            ctx.reporter.step(
                &run.host,
                "prune",
                StepStatus::Ok,
                &format!("removed {}", pruned.join(", ")),
            );
        }
        close(run, ctx.reporter);
        run.time("finish", t);
    });
}

/// The reason of a host that was fine when the run stopped before any switch.
const NOT_CHANGED: &str = "not changed: the run stopped before switching any host";

/// Before any host changed: if something failed, the whole run stops here.
fn stop_before_change(runs: &mut [Run], phase: &str, reporter: &Reporter) -> Option<String> {
    // "choose failed on app1; lock failed on app2, app3": each step as it failed.
    let mut by_step: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.failed()) {
        let step = run.outcome.failed_step.as_deref().unwrap_or(phase);
        by_step.entry(step).or_default().push(&run.host);
    }
    let failed: Vec<String> = by_step
        .iter()
        .map(|(step, hosts)| format!("{step} failed on {}", hosts.join(", ")))
        .collect();
    if failed.is_empty() && !fleet::interrupted() {
        return None;
    }
    for run in runs.iter_mut().filter(|r| !r.failed()) {
        run.outcome.failed_step = Some(phase.to_string());
        run.outcome.reason = Some(NOT_CHANGED.into());
    }
    let why = if fleet::interrupted() {
        "interrupted (Ctrl-C) before any host was switched".to_string()
    } else {
        format!("{}; no host was switched", failed.join("; "))
    };
    reporter.note(&why);
    Some(why)
}

/// Gives back every lock taken so far (no pruning) and closes the sessions;
/// with `why` the run stopped, and each locked host records that.
fn release_all(ctx: &Ctx, runs: &mut [Run], why: Option<&str>) {
    let deployer = deployer();
    fleet::each(runs, ctx.fleet.parallel, |run| {
        // A resumed canary that cannot go on stays pending where it was taken.
        let request = match ctx.canary.resumed() {
            Some(pending) => Request::Finish {
                keep: None,
                not_switched: None,
                pending: Some(Box::new(pending.clone())),
            },
            None => Request::Finish {
                keep: None,
                not_switched: why.and_then(|why| not_switched(ctx, run, &deployer, why)),
                pending: None,
            },
        };
        // A detached lock is taken back to be released (quietly: the run stops anyway).
        if let Some(lease) = run.lease.take()
            && let Ok(mut session) = ctx.sessions.open(ctx.fleet, &run.host, &run.spec)
        {
            let attach = Request::Attach {
                token: lease.token.clone(),
                lease_ms: ctx.sessions.lease_ms,
            };
            if let Ok(Response::Renewed { .. }) = session.call(attach, &mut |_, _| {}) {
                run.session = Some(session);
            }
        }
        if let Some(session) = run.session.as_mut() {
            let _ = session.call(request, &mut |_, _| {});
        }
        close(run, ctx.reporter);
    });
}

/// What `run`'s host records of a run that stopped (`why`) before it switched:
/// its own failure when it had one, else the run's. A restart records
/// nothing (it is not an activation; see `host::activate::restart`).
fn not_switched(ctx: &Ctx, run: &Run, deployer: &str, why: &str) -> Option<NotSwitched> {
    if ctx.action == Action::Restart {
        return None;
    }
    let why = match (&run.outcome.failed_step, &run.outcome.reason) {
        (Some(step), Some(reason)) if reason != NOT_CHANGED => {
            format!("{step}: {reason}; not switched")
        }
        _ => why.to_string(),
    };
    Some(NotSwitched {
        release: run.target.clone(),
        action: ctx.action.clone(),
        deployer: deployer.to_string(),
        why,
    })
}
