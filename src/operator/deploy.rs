//! Orchestration of `deploy` and `rollback`: plan first, then drive each
//! host's agent through lock → upload → prepare → activate → finish.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::{DeployArgs, RollbackArgs};
use crate::error::{Error, Result};
use crate::host::activate::now_rfc3339;
use crate::operator::build::{self, BuildManifest};
use crate::operator::config::{Project, ResolvedStage};
use crate::operator::output::Reporter;
use crate::operator::plan::{self, DeployInputs, DeployPlan, HostPlan};
use crate::operator::render;
use crate::operator::transport::AgentSession;
use crate::protocol::{Action, Activation, LockHolder, Request, Response};

/// The result of a deploy or rollback on one host.
#[derive(Debug, Serialize)]
pub struct HostOutcome {
    /// Host as written in the stage.
    pub host: String,
    /// True when the new release is current, healthy and verified.
    pub ok: bool,
    /// Step that failed, if any.
    pub failed_step: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Bytes uploaded to this host.
    pub uploaded_bytes: u64,
    /// Requests sent to the agent.
    pub round_trips: u32,
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
    /// Per host.
    pub hosts: Vec<HostOutcome>,
}

/// `shipjar deploy STAGE`.
pub fn deploy(project: &Project, args: &DeployArgs, reporter: &Reporter) -> Result<i32> {
    let stage = project.stage(&args.stage)?;
    let secrets = render::load_secrets(&stage.secrets, &|var| std::env::var(var).ok())?;
    let sets = parse_pairs("--set", &args.set)?;
    let env = parse_pairs("--env", &args.env)?;
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
    let hosts: Vec<HostOutcome> = plan
        .hosts
        .iter()
        .map(|host| {
            deploy_host(
                project,
                &stage,
                &plan,
                host,
                &build,
                &inputs.deployer,
                reporter,
            )
        })
        .collect();
    finish(
        reporter,
        Outcome {
            ok: hosts.iter().all(|h| h.ok),
            action: "deploy",
            stage: stage.name.clone(),
            release: plan.release_id.clone(),
            version: build.version.clone(),
            hosts,
        },
    )
}

fn deploy_host(
    project: &Project,
    stage: &ResolvedStage,
    plan: &DeployPlan,
    host: &HostPlan,
    build: &BuildManifest,
    deployer: &str,
    reporter: &Reporter,
) -> HostOutcome {
    let outcome = HostOutcome {
        host: host.host.clone(),
        ok: false,
        failed_step: None,
        reason: None,
        uploaded_bytes: 0,
        round_trips: 0,
        activation: None,
    };
    let name = &project.config.service.name.0;
    let mut session = match AgentSession::open(&host.host, &host.spec, &stage.root, name) {
        Ok(s) => s,
        Err(e) => return failed(outcome, "connect", e.message, reporter),
    };
    let mut on_event = |step: &str, message: &str| reporter.step(&host.host, step, "info", message);
    let state = match session.call(
        Request::Begin {
            holder: holder(),
            artifact_sha256: Some(build.sha256.clone()),
        },
        &mut on_event,
    ) {
        Ok(Response::Begun(state)) => state,
        Ok(other) => return failed(outcome, "lock", unexpected(other), reporter),
        Err(e) => return failed(outcome, "lock", e.message, reporter),
    };
    for path in &state.cleaned_up {
        reporter.step(
            &host.host,
            "lock",
            "info",
            &format!("removed leftover of an interrupted run: {path}"),
        );
    }
    reporter.step(
        &host.host,
        "lock",
        "ok",
        &format!(
            "locked; current release {}",
            state.current.as_deref().unwrap_or("(none)")
        ),
    );
    if state.has_artifact {
        reporter.step(
            &host.host,
            "upload",
            "ok",
            "artifact already on the host, nothing to upload",
        );
    } else {
        match session.put_artifact(&build.sha256, &build.artifact, &mut on_event) {
            Ok(Response::Stored { bytes }) => reporter.step(
                &host.host,
                "upload",
                "ok",
                &format!("{bytes} bytes, sha256 verified"),
            ),
            Ok(other) => {
                return failed_session(outcome, session, "upload", unexpected(other), reporter);
            }
            Err(e) => return failed_session(outcome, session, "upload", e.message, reporter),
        }
    }
    match session.call(
        Request::Prepare {
            manifest: Box::new(host.manifest.clone()),
            files: host.files.clone(),
        },
        &mut on_event,
    ) {
        Ok(Response::Prepared { .. }) => reporter.step(
            &host.host,
            "prepare",
            "ok",
            &format!("release {} complete", plan.release_id),
        ),
        Ok(other) => {
            return failed_session(outcome, session, "prepare", unexpected(other), reporter);
        }
        Err(e) => return failed_session(outcome, session, "prepare", e.message, reporter),
    }
    activate_and_finish(
        outcome,
        session,
        &plan.release_id,
        Action::Deploy,
        deployer,
        project,
        reporter,
    )
}

/// Activates a prepared release, then prunes and unlocks.
fn activate_and_finish(
    mut outcome: HostOutcome,
    mut session: AgentSession,
    release: &str,
    action: Action,
    deployer: &str,
    project: &Project,
    reporter: &Reporter,
) -> HostOutcome {
    let host = outcome.host.clone();
    let mut on_event = |step: &str, message: &str| reporter.step(&host, step, "info", message);
    let activation = match session.call(
        Request::Activate {
            release: release.to_string(),
            action,
            deployer: deployer.to_string(),
        },
        &mut on_event,
    ) {
        Ok(Response::Activated(a)) => *a,
        Ok(other) => {
            return failed_session(outcome, session, "activate", unexpected(other), reporter);
        }
        Err(e) => return failed_session(outcome, session, "activate", e.message, reporter),
    };
    outcome.ok = activation.ok;
    if !activation.ok {
        outcome.failed_step = activation.failed_step.clone();
        outcome.reason = activation.reason.clone();
        reporter.step(
            &host,
            activation.failed_step.as_deref().unwrap_or("activate"),
            "failed",
            activation.reason.as_deref().unwrap_or("unknown"),
        );
    }
    outcome.activation = Some(activation);
    let keep = *project.config.releases.keep.get_ref();
    match session.call(Request::Finish { keep }, &mut on_event) {
        Ok(Response::Finished { pruned }) if !pruned.is_empty() => reporter.step(
            &host,
            "prune",
            "ok",
            &format!("removed {}", pruned.join(", ")),
        ),
        Ok(Response::Finished { .. }) => {}
        Ok(other) => reporter.step(&host, "prune", "failed", &unexpected(other)),
        Err(e) => reporter.step(&host, "prune", "failed", &e.message),
    }
    outcome.uploaded_bytes = session.uploaded_bytes;
    outcome.round_trips = session.round_trips;
    if let Err(e) = session.close() {
        reporter.step(&host, "unlock", "failed", &e.message);
    }
    outcome
}

/// `shipjar rollback STAGE [--to ID]`.
pub fn rollback(project: &Project, args: &RollbackArgs, reporter: &Reporter) -> Result<i32> {
    let stage = project.stage(&args.stage)?;
    let name = &project.config.service.name.0;
    let mut hosts = Vec::new();
    let mut target_version = String::new();
    let mut target_release = args.to.clone().unwrap_or_default();
    for (host, spec) in &stage.hosts {
        let mut outcome = HostOutcome {
            host: host.clone(),
            ok: false,
            failed_step: None,
            reason: None,
            uploaded_bytes: 0,
            round_trips: 0,
            activation: None,
        };
        let mut session = match AgentSession::open(host, spec, &stage.root, name) {
            Ok(s) => s,
            Err(e) => {
                hosts.push(failed(outcome, "connect", e.message, reporter));
                continue;
            }
        };
        let mut on_event = |step: &str, message: &str| reporter.step(host, step, "info", message);
        let state = match session.call(
            Request::Begin {
                holder: holder(),
                artifact_sha256: None,
            },
            &mut on_event,
        ) {
            Ok(Response::Begun(state)) => state,
            Ok(other) => {
                hosts.push(failed(outcome, "lock", unexpected(other), reporter));
                continue;
            }
            Err(e) => {
                hosts.push(failed(outcome, "lock", e.message, reporter));
                continue;
            }
        };
        let target = match &args.to {
            Some(id) => state.releases.iter().find(|r| &r.id == id),
            None => {
                // The newest release before `current` that last went well.
                let current_pos = state.releases.iter().position(|r| r.current);
                state.releases[..current_pos.unwrap_or(state.releases.len())]
                    .iter()
                    .rev()
                    .find(|r| r.outcome.as_deref() == Some("success"))
            }
        };
        let Some(target) = target.cloned() else {
            let why = match &args.to {
                Some(id) => format!("release {id} is not on this host"),
                None => "no earlier good release to roll back to".to_string(),
            };
            outcome = failed(outcome, "choose", why, reporter);
            outcome.round_trips = session.round_trips;
            hosts.push(outcome);
            continue;
        };
        if target.current {
            outcome = failed(
                outcome,
                "choose",
                format!("release {} is already current", target.id),
                reporter,
            );
            hosts.push(outcome);
            continue;
        }
        reporter.step(
            host,
            "choose",
            "ok",
            &format!("rolling back to {} (version {})", target.id, target.version),
        );
        target_version = target.version.clone();
        target_release = target.id.clone();
        hosts.push(activate_and_finish(
            outcome,
            session,
            &target.id,
            Action::Rollback,
            &deployer(),
            project,
            reporter,
        ));
    }
    finish(
        reporter,
        Outcome {
            ok: hosts.iter().all(|h| h.ok),
            action: "rollback",
            stage: stage.name.clone(),
            release: target_release,
            version: target_version,
            hosts,
        },
    )
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
        if let Some(a) = a {
            if !a.log_tail.is_empty() {
                text.push_str("  last lines of the service log:\n");
                for line in &a.log_tail {
                    text.push_str(&format!("    {line}\n"));
                }
            }
            if let Some(now) = &a.now_running {
                let state = match (&now.release, now.healthy) {
                    (Some(r), true) => format!(
                        "back on release {r} (version {}), healthy",
                        now.version.as_deref().unwrap_or("?")
                    ),
                    (Some(r), false) => format!(
                        "back on release {r}, but NOT healthy: {}",
                        now.problem.as_deref().unwrap_or("unknown")
                    ),
                    (None, _) => "no earlier release to go back to: the service is stopped".into(),
                };
                text.push_str(&format!("  {} is now {state}\n", host.host));
            }
        } else if host.failed_step.as_deref() == Some("activate") {
            text.push_str(&format!(
                "  the agent on {} did not report the end of the activation; it finishes it on its own (reverting on failure): check with `shipjar status`\n",
                host.host
            ));
        } else {
            text.push_str(&format!("  {} was not changed\n", host.host));
        }
    }
    reporter.result(&outcome, &text);
    Ok(if outcome.ok { 0 } else { 1 })
}

fn failed(
    mut outcome: HostOutcome,
    step: &str,
    reason: String,
    reporter: &Reporter,
) -> HostOutcome {
    reporter.step(&outcome.host, step, "failed", &reason);
    outcome.failed_step = Some(step.to_string());
    outcome.reason = Some(reason);
    outcome
}

fn failed_session(
    outcome: HostOutcome,
    session: AgentSession,
    step: &str,
    reason: String,
    reporter: &Reporter,
) -> HostOutcome {
    let mut outcome = failed(outcome, step, reason, reporter);
    outcome.uploaded_bytes = session.uploaded_bytes;
    outcome.round_trips = session.round_trips;
    let _ = session.close();
    outcome
}

fn unexpected(response: Response) -> String {
    match response {
        Response::Error(e) => e.message,
        other => format!("unexpected answer from the agent: {other:?}"),
    }
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
