//! The phases of a deploy or rollback across the fleet: lock every host,
//! upload and prepare everywhere, switch in rolling batches, put earlier
//! batches back when the run stops (with `on_failure = "revert"`), finish.
//! Until the first switch, any failure stops the run with no host changed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::host_run::{Run, activate_host, close, lock_host, revert_host, upload_and_prepare};
use super::identity::deployer;
use crate::operator::build::BuildManifest;
use crate::operator::config::{OnFailure, Project, ResolvedStage};
use crate::operator::fleet::{self, Fleet};
use crate::operator::hooks;
use crate::operator::output::{Reporter, StepStatus};
use crate::operator::select::Selection;
use crate::operator::transport::Canceller;
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
}

/// Runs every phase over `runs`; each host's result is left in its outcome.
pub(super) fn execute(ctx: &Ctx, runs: &mut [Run]) -> Executed {
    fleet::catch_interrupts();
    ctx.reporter.start_progress(runs.len());
    let mut phases = Phases::new();
    let stopped = run_phases(ctx, runs, &mut phases);
    fleet::set_phase(fleet::Phase::Idle);
    run_operator_hook(ctx, runs, stopped.as_deref());
    Executed {
        stopped,
        interrupted: fleet::interrupted(),
        phases,
    }
}

/// The phases in order; returns why the run stopped early, if it did.
fn run_phases(ctx: &Ctx, runs: &mut [Run], phases: &mut Phases) -> Option<String> {
    // Phase 1: connect and lock every host; nothing changes unless all are locked.
    fleet::set_phase(fleet::Phase::BeforeChange);
    timed(phases, "lock", || lock_all(ctx, runs));
    check_agents_and_choose(ctx, runs);
    if let Some(why) = stop_before_change(runs, "lock", ctx.reporter) {
        release_all(ctx, runs, Some(&why));
        return Some(why);
    }
    // Phase 2: upload what is missing and prepare the release on ALL hosts.
    if let Some(build) = ctx.build {
        timed(phases, "prepare", || prepare_all(ctx, runs, build));
        if let Some(why) = stop_before_change(runs, "prepare", ctx.reporter) {
            release_all(ctx, runs, Some(&why));
            return Some(why);
        }
    }
    // The once-per-run hook (migrations): on the first host, before any switch.
    if let Some(why) = run_once_before_switch(ctx, runs) {
        release_all(ctx, runs, Some(&why));
        return Some(why);
    }
    // Phase 3: switch in batches.
    let stopped = timed(phases, "switch", || switch_in_batches(ctx, runs));
    fleet::set_phase(fleet::Phase::Finishing);
    // On a failed deploy, switched hosts go back so the fleet runs one version.
    // An interrupt is the user's choice: hosts switched so far stay (and say so).
    // A restart has no other release to revert to: hosts restarted earlier
    // run what they ran, and the batch rules have stopped the rest.
    if stopped.is_some()
        && !fleet::interrupted()
        && ctx.stage.on_failure == OnFailure::Revert
        && ctx.action != Action::Restart
    {
        // Only when this step put hosts back: a host whose own switch failed was
        // reverted by its agent, and that time is part of `switch`.
        let started = Instant::now();
        if revert_switched(ctx, runs) > 0 {
            phases.insert("revert", started.elapsed().as_millis() as u64);
        }
    }
    // Phase 4: prune and unlock.
    timed(phases, "finish", || {
        finish_all(ctx, runs, stopped.as_deref())
    });
    stopped
}

/// `before_switch` (deploy) or `before_rollback` (rollback), once, on the
/// stage's first host, in the release it goes to; a failure stops the run
/// before any host switches.
fn run_once_before_switch(ctx: &Ctx, runs: &mut [Run]) -> Option<String> {
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
        scope.spawn(|| {
            let mut renewed = Instant::now();
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if renewed.elapsed() >= every {
                    for other in others.iter_mut() {
                        if let Some(session) = other.session.as_mut() {
                            let _ = session.notify(Request::Renew);
                        }
                    }
                    renewed = Instant::now();
                }
            }
        });
        let answer = run.call(step, request, ctx.reporter);
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
            lock_host(run, ctx.fleet, ctx.stage, ctx.build, ctx.reporter);
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
    fleet::each(runs, ctx.fleet.parallel, |run| {
        let t = Instant::now();
        upload_and_prepare(run, build, ctx.remote, ctx.reporter);
        run.time("prepare", t);
    });
}

/// Switches the hosts batch by batch; returns why it stopped early, if it did.
fn switch_in_batches(ctx: &Ctx, runs: &mut [Run]) -> Option<String> {
    let batch_size = ctx.stage.rolling.batch.hosts(runs.len());
    let max_failed = ctx.stage.rolling.max_failed;
    let order: Vec<usize> = (0..runs.len()).collect();
    for (n, batch) in order.chunks(batch_size).enumerate() {
        if fleet::interrupted() {
            return Some(interrupted_before(runs, n));
        }
        if let Some(why) = renew_waiting(runs, ctx.reporter) {
            return Some(why);
        }
        let failed = switch_batch(ctx, runs, n, batch);
        if fleet::aborted() {
            return Some(format!(
                "aborted (Ctrl-C twice) during batch {}: its hosts were put back",
                n + 1
            ));
        }
        if failed > max_failed {
            return Some(format!(
                "batch {} had {failed} failed host{} (max_failed = {max_failed})",
                n + 1,
                if failed == 1 { "" } else { "s" }
            ));
        }
    }
    None
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

/// Renews the lease of hosts waiting for their batch; a host lost before its
/// switch stops the run.
fn renew_waiting(runs: &mut [Run], reporter: &Reporter) -> Option<String> {
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
    (!lost.is_empty()).then(|| format!("lost {} before switching it", lost.join(", ")))
}

/// Switches batch `n` (indices into `runs`) in parallel; returns how many of it failed.
fn switch_batch(ctx: &Ctx, runs: &mut [Run], n: usize, batch: &[usize]) -> usize {
    ctx.reporter.note(&format!(
        "batch {}: {}",
        n + 1,
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
    let cancellers: Vec<Canceller> = batch_runs
        .iter()
        .filter_map(|r| r.session.as_ref().map(|s| s.canceller()))
        .collect();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // A second Ctrl-C cancels the activations in flight at once.
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if fleet::aborted() {
                    for canceller in &cancellers {
                        canceller.cancel();
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        fleet::each(&mut batch_runs, ctx.fleet.parallel, |run| {
            let t = Instant::now();
            let partial = ctx
                .selection
                .filter(|s| s.selected < s.of)
                .map(|s| s.describe());
            activate_host(
                run,
                ctx.action.clone(),
                &deployer,
                partial.as_deref(),
                ctx.reporter,
            );
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
            revert_host(run, &deployer, ctx.reporter);
        }
    });
    count
}

/// On every host still answering: prune old releases and release the lock;
/// a host the stopped run never switched records why.
fn finish_all(ctx: &Ctx, runs: &mut [Run], stopped: Option<&str>) {
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
        let request = Request::Finish {
            // A restart leaves the releases on the host as they are.
            keep: (ctx.action != Action::Restart).then_some(keep),
            not_switched,
        };
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
        let request = Request::Finish {
            keep: None,
            not_switched: why.and_then(|why| not_switched(ctx, run, &deployer, why)),
        };
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
