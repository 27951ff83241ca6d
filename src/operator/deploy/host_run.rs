//! The conversation with one host during a deploy or rollback: lock (and
//! prepare when the artifact is there), upload and prepare, activate, revert,
//! and closing the session; each records its result in the host's outcome.
//! With more hosts than `--parallel`, a host's session lasts one phase: its
//! lock is detached at the phase's end and attached again by token when
//! its next phase starts ([`Sessions`], [`attach`], [`detach`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::identity::holder;
use super::{FinalState, HostOutcome};
use crate::error::Result;
use crate::operator::build::BuildManifest;
use crate::operator::config::artifact::Fetch;
use crate::operator::config::{HostSpec, ResolvedStage};
use crate::operator::fleet::{Fleet, StartupLimit};
use crate::operator::output::{Reporter, StepStatus};
use crate::operator::plan::HostPlan;
use crate::operator::repository::Remote;
use crate::operator::transport::AgentSession;
use crate::protocol::{Action, ErrorKind, HostState, PrepareSpec, Request, Response};

/// One host during a run.
pub(super) struct Run<'p> {
    /// Host as written in the stage.
    pub host: String,
    /// How to reach it.
    pub spec: HostSpec,
    /// What to prepare on it; `None` for a rollback.
    pub plan: Option<&'p HostPlan>,
    /// The open session, while the host is locked and answering.
    pub session: Option<AgentSession>,
    /// The host's state as reported when it was locked.
    pub state: Option<HostState>,
    /// Release to activate on this host.
    pub target: Option<String>,
    /// True once an activation was sent to the host.
    pub switched: bool,
    /// Kind of the agent's error that failed this host, when it was one.
    pub error_kind: Option<ErrorKind>,
    /// Queueing with `--wait`: a lock held by another deploy is not a failure to print.
    pub waiting: bool,
    /// What is reported for this host at the end.
    pub outcome: HostOutcome,
    /// The last request's host already reported (and we printed) a failed step.
    pub failure_shown: bool,
    /// The host's lock while no session holds it (detached).
    pub lease: Option<Lease>,
    /// The host's agent refused a request (its own failure): nothing is
    /// pruned at the end, as an agent does after a failure in its session.
    pub agent_failed: bool,
}

/// A deploy lock detached from its session; while it exists, a hard stop
/// names its host as locked with no connection open.
#[derive(Debug)]
pub(super) struct Lease {
    host: String,
    /// What `attach` takes it back with.
    pub token: String,
    /// When it runs out (as seen here: counted from before the `detach` was sent).
    pub until: Instant,
}

impl Lease {
    fn new(host: &str, token: String, until: Instant) -> Lease {
        crate::operator::fleet::set_detached(host, Some(until));
        Lease {
            host: host.to_string(),
            token,
            until,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        crate::operator::fleet::set_detached(&self.host, None);
    }
}

/// The sessions of a run: at most `--parallel` at once (a place is taken
/// before a session opens and freed once its `ssh` is reaped); with more
/// hosts than that, each host's session lasts one phase, its lock detached
/// between phases for `lease_ms` and renewed by short sessions while it waits.
pub(super) struct Sessions {
    places: Arc<StartupLimit>,
    /// Sessions close between phases, their locks detached.
    pub detach: bool,
    /// The lease of a lock, held or detached (`[stages] lock_lease`): one
    /// step of a live deploy fits in it.
    pub lease_ms: u64,
}

impl Sessions {
    /// The sessions of a run over `hosts` hosts.
    pub fn new(fleet: &Fleet, stage: &ResolvedStage, hosts: usize) -> Sessions {
        Sessions {
            // The same counting limit as ssh set-ups, here counting whole sessions.
            places: StartupLimit::new(fleet.parallel),
            detach: hosts > fleet.parallel,
            lease_ms: stage.lock_lease_ms,
        }
    }

    /// Opens `host`'s session once a place is free.
    pub fn open(&self, fleet: &Fleet, host: &str, spec: &HostSpec) -> Result<AgentSession> {
        let place = self.places.acquire();
        let mut session = fleet.open(host, spec)?;
        session.occupy(Box::new(place));
        Ok(session)
    }

    /// Whether `run`'s detached lease runs out within `horizon`.
    pub fn due(&self, run: &Run, horizon: Duration) -> bool {
        run.session.is_none()
            && run
                .lease
                .as_ref()
                .is_some_and(|l| l.until <= Instant::now() + horizon)
    }
}

impl<'p> Run<'p> {
    /// A host not yet contacted: unchanged, no failure.
    pub fn new(host: &str, spec: &HostSpec, plan: Option<&'p HostPlan>) -> Self {
        Run {
            host: host.to_string(),
            spec: spec.clone(),
            plan,
            session: None,
            state: None,
            target: None,
            switched: false,
            error_kind: None,
            waiting: false,
            outcome: HostOutcome {
                host: host.to_string(),
                ok: false,
                state: FinalState::Unchanged,
                previous: None,
                locked: false,
                failed_step: None,
                reason: None,
                uploaded_bytes: 0,
                round_trips: 0,
                timings_ms: BTreeMap::new(),
                activation: None,
                artifact: None,
            },
            failure_shown: false,
            lease: None,
            agent_failed: false,
        }
    }

    /// Reports a failure at `step`; the first failure is the one the outcome keeps.
    pub fn fail(&mut self, step: &str, reason: impl Into<String>, reporter: &Reporter) {
        let reason = reason.into();
        if !(self.waiting && self.error_kind == Some(ErrorKind::LockHeld)) {
            reporter.step(&self.host, step, StepStatus::Failed, &reason);
        }
        self.record_failure(step, reason);
    }

    /// Records a failure at `step` without printing it (the host's own
    /// failure event printed it when it happened).
    pub fn record_failure(&mut self, step: &str, reason: String) {
        if self.outcome.failed_step.is_none() {
            self.outcome.failed_step = Some(step.to_string());
            self.outcome.reason = Some(reason);
        }
    }

    /// True once any step failed on this host.
    pub fn failed(&self) -> bool {
        self.outcome.failed_step.is_some()
    }

    /// It holds its deploy lock: in an open session, or detached between
    /// phases (with sessions closed between phases, a detached lock counts).
    pub fn holds_lock(&self) -> bool {
        self.session.is_some() || self.lease.is_some()
    }

    /// Sends a request, recording errors as this host's failure at `step`.
    pub fn call(&mut self, step: &str, request: Request, reporter: &Reporter) -> Option<Response> {
        let host = self.host.clone();
        let session = self.session.as_mut()?;
        let mut shown = false;
        let mut on_event = |s: &str, m: &str, failed: bool| {
            shown |= failed;
            let status = if failed {
                StepStatus::Failed
            } else {
                StepStatus::Info
            };
            reporter.step(&host, s, status, m)
        };
        let answer = session.call_with_failures(request, &mut on_event);
        self.failure_shown = shown;
        match answer {
            Ok(Response::Error(e)) => {
                if !self.failed() {
                    self.error_kind = Some(e.kind);
                }
                self.agent_failed = true;
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

    /// Adds the time since `started` to this host's `phase`.
    pub fn time(&mut self, phase: &'static str, started: Instant) {
        *self.outcome.timings_ms.entry(phase).or_default() += started.elapsed().as_millis() as u64;
    }
}

/// Connects (unless connected) and takes the deploy lock; prepares the release
/// in the same round trip when the host has the artifact already. With
/// `resume`, takes over the lock of the pending canary of that release.
pub(super) fn lock_host(
    run: &mut Run,
    (fleet, sessions): (&Fleet, &Sessions),
    stage: &ResolvedStage,
    (build, resume): (Option<&BuildManifest>, Option<&str>),
    reporter: &Reporter,
) {
    if run.session.is_none() {
        match sessions.open(fleet, &run.host, &run.spec) {
            Ok(session) => run.session = Some(session),
            Err(e) => return run.fail("connect", e.message, reporter),
        }
    }
    let prepare = run.plan.map(|plan| {
        Box::new(PrepareSpec {
            manifest: plan.manifest.clone(),
            files: plan.files.clone(),
            secrets: plan.secrets.clone(),
        })
    });
    let request = Request::Begin {
        holder: holder(),
        artifact_sha256: build.map(|b| b.sha256.clone()),
        lease_ms: stage.lock_lease_ms,
        prepare,
        resume: resume.map(str::to_string),
    };
    let Some(response) = run.call("lock", request, reporter) else {
        say_how_to_get_past_the_lock(run, &stage.name);
        return;
    };
    let Response::Begun(state) = response else {
        return run.fail("lock", format!("unexpected answer: {response:?}"), reporter);
    };
    report_locked(&run.host, &state, reporter);
    run.outcome.previous = state.current.clone();
    run.outcome.locked = true;
    run.state = Some(*state);
}

/// A lock held by another deploy: how to get past it (a pending canary's
/// lock says that itself).
fn say_how_to_get_past_the_lock(run: &mut Run, stage: &str) {
    if run.error_kind == Some(ErrorKind::LockHeld)
        && let Some(reason) = run.outcome.reason.as_mut()
        && !reason.contains("a pending canary of")
    {
        let wait = if run.waiting {
            "the --wait time ran out"
        } else {
            "use --wait DURATION to queue behind it"
        };
        reason.push_str(&format!(
            "; {wait}, or `shipjar unlock {stage}` if that deploy is dead"
        ));
    }
}

/// What taking the lock found: leftovers removed, a canary or an expired
/// lease taken over, the current release.
fn report_locked(host: &str, state: &HostState, reporter: &Reporter) {
    for path in &state.cleaned_up {
        reporter.step(
            host,
            "lock",
            StepStatus::Info,
            &format!("removed leftover of an interrupted run: {path}"),
        );
    }
    if let Some(pending) = &state.resumed {
        reporter.step(
            host,
            "lock",
            StepStatus::Info,
            &format!(
                "took over the lock of the pending canary of {}",
                pending.describe()
            ),
        );
    }
    if let Some(previous) = &state.took_over {
        reporter.step(
            host,
            "lock",
            StepStatus::Warning,
            &format!("took over an expired lock: {previous}"),
        );
    }
    reporter.step(
        host,
        "lock",
        StepStatus::Ok,
        &format!(
            "locked; current release {}",
            state.current.as_deref().unwrap_or("(none)")
        ),
    );
}

/// How a host's own download ended.
enum Download {
    /// The artifact is in its store (downloaded, or there already).
    Stored(&'static str),
    /// It could not download it (the reason was reported).
    Failed(String),
    /// The session is gone or failed otherwise (recorded as the host's failure).
    Gone,
}

/// Asks the host to download the artifact from the repository itself.
fn download_on_host(run: &mut Run, remote: &Remote, reporter: &Reporter) -> Download {
    match run.call(
        "download",
        Request::FetchArtifact(Box::new(remote.fetch_spec())),
        reporter,
    ) {
        Some(Response::Fetched(f)) if f.ok && f.already_stored => {
            Download::Stored("already stored")
        }
        Some(Response::Fetched(f)) if f.ok => {
            reporter.step(
                &run.host,
                "download",
                StepStatus::Ok,
                &format!("{} bytes from the repository, sha256 verified", f.bytes),
            );
            Download::Stored("downloaded")
        }
        Some(Response::Fetched(f)) => Download::Failed(f.error.unwrap_or_default()),
        Some(other) => {
            run.fail(
                "download",
                format!("unexpected answer: {other:?}"),
                reporter,
            );
            Download::Gone
        }
        None => Download::Gone,
    }
}

/// With a repository: the host downloads the artifact, or (host-then-operator)
/// the operator pushes it when it cannot. True when the upload path follows.
fn fetch_first(run: &mut Run, remote: &Remote, reporter: &Reporter) -> bool {
    if remote.fetch == Fetch::Operator {
        return true;
    }
    let why = match download_on_host(run, remote, reporter) {
        Download::Stored(via) => {
            run.outcome.artifact = Some(via);
            prepare_only(run, reporter);
            return false;
        }
        Download::Gone => return false,
        Download::Failed(why) => why,
    };
    if remote.fetch == Fetch::Host {
        run.fail(
            "download",
            format!("{why} (fetch = \"host\": the operator does not push it)"),
            reporter,
        );
        return false;
    }
    reporter.step(
        &run.host,
        "download",
        StepStatus::Warning,
        &format!("{why}; the operator pushes it instead"),
    );
    if let Err(e) = remote.ensure_local() {
        run.fail(
            "upload",
            format!("the host could not download it ({why}), nor could the operator: {e}"),
            reporter,
        );
        return false;
    }
    true
}

/// `prepare` once the artifact is in the host's store.
fn prepare_only(run: &mut Run, reporter: &Reporter) {
    let Some(plan) = run.plan else { return };
    let request = Request::Prepare(Box::new(PrepareSpec {
        manifest: plan.manifest.clone(),
        files: plan.files.clone(),
        secrets: plan.secrets.clone(),
    }));
    if let Some(response) = run.call("prepare", request, reporter) {
        match response {
            Response::Prepared { .. } => reporter.step(
                &run.host,
                "prepare",
                StepStatus::Ok,
                &format!("release {} complete", plan.manifest.id),
            ),
            other => run.fail("prepare", format!("unexpected answer: {other:?}"), reporter),
        }
    }
}

/// Uploads the artifact unless the host has it (or downloads it from the
/// repository itself), and prepares the release.
pub(super) fn upload_and_prepare(
    run: &mut Run,
    build: &BuildManifest,
    remote: Option<&Remote>,
    reporter: &Reporter,
) {
    let Some(plan) = run.plan else { return };
    if run.state.as_ref().is_some_and(|s| s.prepared) {
        if remote.is_some() {
            run.outcome.artifact = Some("already stored");
        }
        reporter.step(
            &run.host,
            "upload",
            StepStatus::Ok,
            "artifact already on the host, nothing to upload",
        );
        reporter.step(
            &run.host,
            "prepare",
            StepStatus::Ok,
            &format!("release {} complete", plan.manifest.id),
        );
        return;
    }
    if let Some(remote) = remote
        && !fetch_first(run, remote, reporter)
    {
        return;
    }
    let host = run.host.clone();
    let Some(session) = run.session.as_mut() else {
        return;
    };
    let mut on_event = |s: &str, m: &str| reporter.step(&host, s, StepStatus::Info, m);
    let prepare = Request::Prepare(Box::new(PrepareSpec {
        manifest: plan.manifest.clone(),
        files: plan.files.clone(),
        secrets: plan.secrets.clone(),
    }));
    let result = session.put_and_prepare(&build.sha256, &build.artifact, prepare, &mut on_event);
    // One upload per session: a run's sessions add up.
    run.outcome.uploaded_bytes += session.uploaded_bytes;
    match result {
        Ok(Response::Prepared { .. }) => {
            if remote.is_some() {
                run.outcome.artifact = Some("pushed");
            }
            reporter.step(
                &run.host,
                "upload",
                StepStatus::Ok,
                &format!("{} bytes, sha256 verified", build.size),
            );
            reporter.step(
                &run.host,
                "prepare",
                StepStatus::Ok,
                &format!("release {} complete", plan.manifest.id),
            );
        }
        Ok(Response::Error(e)) => {
            run.agent_failed = true;
            run.fail(&e.step, e.message, reporter);
        }
        Ok(other) => run.fail("prepare", format!("unexpected answer: {other:?}"), reporter),
        Err(e) => {
            run.session = None;
            run.fail("upload", e.message, reporter);
        }
    }
}

/// Switches the host to its target release; its agent gates on health and
/// version, and reverts on failure.
pub(super) fn activate_host(
    run: &mut Run,
    action: Action,
    deployer: &str,
    partial: Option<&str>,
    reporter: &Reporter,
) {
    let Some(target) = run.target.clone() else {
        return;
    };
    run.switched = true;
    let restart = action == Action::Restart;
    let step = if restart { "restart" } else { "activate" };
    let request = Request::Activate {
        release: target,
        action,
        deployer: deployer.to_string(),
        partial: partial.map(str::to_string),
    };
    match run.call(step, request, reporter) {
        Some(Response::Activated(activation)) => {
            run.outcome.ok = activation.ok;
            if activation.ok {
                run.outcome.state = if restart {
                    FinalState::Restarted
                } else {
                    FinalState::Updated
                };
                reporter.step(
                    &run.host,
                    step,
                    StepStatus::Ok,
                    &format!("healthy on {}", activation.release),
                );
            } else {
                run.outcome.state = if restart {
                    // Nothing to go back to: the host stays as its restart left it.
                    FinalState::Failed
                } else if activation
                    .now_running
                    .as_ref()
                    .is_some_and(|n| n.release.is_some())
                {
                    FinalState::Reverted
                } else {
                    FinalState::Stopped
                };
                let step = activation.failed_step.as_deref().unwrap_or(step);
                let reason = activation.reason.clone().unwrap_or_default();
                if run.failure_shown {
                    run.record_failure(step, reason);
                } else {
                    run.fail(step, reason, reporter);
                }
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
            run.outcome.state = FinalState::Unknown;
        }
    }
}

/// Puts a host switched in an earlier batch (or a canary) back on its
/// previous release; `why` is its reason when it had no failure of its own.
pub(super) fn revert_host(run: &mut Run, deployer: &str, why: &str, reporter: &Reporter) {
    let Some(previous) = run.outcome.previous.clone() else {
        return;
    };
    reporter.step(
        &run.host,
        "revert",
        StepStatus::Info,
        &format!("going back to {previous} so the fleet runs one version"),
    );
    let request = Request::Activate {
        release: previous.clone(),
        action: Action::Rollback,
        deployer: deployer.to_string(),
        partial: None,
    };
    match run.call("revert", request, reporter) {
        Some(Response::Activated(a)) if a.ok => {
            run.outcome.ok = false;
            run.outcome.state = FinalState::Reverted;
            if run.outcome.failed_step.is_none() {
                run.outcome.failed_step = Some("revert".into());
                run.outcome.reason = Some(why.into());
            }
            reporter.step(
                &run.host,
                "revert",
                StepStatus::Ok,
                &format!("back on {previous}, healthy"),
            );
        }
        Some(Response::Activated(a)) => {
            run.outcome.ok = false;
            run.outcome.state = FinalState::Unknown;
            let reason = a.reason.unwrap_or_default();
            if run.failure_shown {
                run.record_failure("revert", reason);
            } else {
                run.fail("revert", reason, reporter);
            }
        }
        _ => {
            run.outcome.ok = false;
            run.outcome.state = FinalState::Unknown;
        }
    }
}

/// Opens a session for a host whose lock is detached and takes the lock
/// back; true when the host has a session holding its lock. A lock taken
/// over meanwhile (its lease ran out, another deploy took it) fails the
/// host at `lock`, naming the holder.
pub(super) fn attach(
    run: &mut Run,
    (fleet, sessions): (&Fleet, &Sessions),
    reporter: &Reporter,
) -> bool {
    if run.session.is_some() {
        return true;
    }
    let Some(lease) = run.lease.take() else {
        return false;
    };
    match sessions.open(fleet, &run.host, &run.spec) {
        Ok(session) => run.session = Some(session),
        Err(e) => {
            run.fail("connect", e.message, reporter);
            return false;
        }
    }
    let request = Request::Attach {
        token: lease.token.clone(),
        lease_ms: sessions.lease_ms,
    };
    match run.call("lock", request, reporter) {
        Some(Response::Renewed { .. }) => true,
        other => {
            if let Some(other) = other {
                run.fail("lock", format!("unexpected answer: {other:?}"), reporter);
            }
            close(run, reporter);
            false
        }
    }
}

/// At the end of a host's phase, when sessions close between phases: the
/// lock detached (kept for the lease) and the session closed, its `ssh`
/// reaped. A host that never took the lock just closes.
pub(super) fn detach(run: &mut Run, sessions: &Sessions, reporter: &Reporter) {
    if !sessions.detach || run.session.is_none() {
        return;
    }
    if run.outcome.locked {
        let sent = Instant::now();
        let request = Request::Detach {
            lease_ms: sessions.lease_ms,
        };
        match run.call("lock", request, reporter) {
            Some(Response::Detached { token, .. }) => {
                let until = sent + Duration::from_millis(sessions.lease_ms);
                run.lease = Some(Lease::new(&run.host, token, until));
            }
            Some(other) => run.fail("lock", format!("unexpected answer: {other:?}"), reporter),
            None => {}
        }
    }
    close(run, reporter);
}

/// Closes the session (which releases a lock it holds) and counts its round trips.
pub(super) fn close(run: &mut Run, reporter: &Reporter) {
    if let Some(session) = run.session.take() {
        run.outcome.round_trips += session.round_trips;
        if let Err(e) = session.close() {
            reporter.step(&run.host, "unlock", StepStatus::Warning, &e.message);
        }
    }
}
