//! `shipjar unlock STAGE`: removes a stale deploy lock on every host and says whose it was.

use serde::Serialize;

use crate::cli::FleetArgs;
use crate::error::Result;
use crate::operator::config::Project;
use crate::operator::fleet::Fleet;
use crate::operator::inspect::query_all;
use crate::operator::output::Reporter;
use crate::protocol::{Request, Response};

/// One host's answer to the unlock.
#[derive(Serialize)]
struct Row {
    host: String,
    ok: bool,
    was_held_by: Option<String>,
    error: Option<String>,
}

/// The JSON result of `unlock`.
#[derive(Serialize)]
struct UnlockResult {
    ok: bool,
    hosts: Vec<Row>,
}

/// `shipjar unlock STAGE`: removes the deploy lock on every host and says whose it was.
pub fn unlock(
    project: &Project,
    stage_name: &str,
    fleet_args: &FleetArgs,
    reporter: &Reporter,
) -> Result<i32> {
    let (stage, _) = crate::operator::select::stage(project, stage_name, &fleet_args.hosts)?;
    // The lock's record names a deployer, a machine and a command line, any of which may hold a secret.
    crate::operator::render::mask_available_secrets(&stage.secrets);
    let fleet = Fleet::for_stage(project, &stage, fleet_args)?;
    let rows: Vec<(String, Result<Option<String>, String>)> =
        query_all(&fleet, &stage.hosts, Request::Unlock)
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
    let mut out = Vec::new();
    for (host, result) in rows {
        text.push_str(&match &result {
            // The canary stays where it is: say how to make the stage one version again.
            Ok(Some(previous)) if previous.starts_with("a pending canary of") => format!(
                "{host}: removed the lock of {previous}: no longer pending; `shipjar rollback {}` (with --hosts) or a new deploy makes the stage one version again\n",
                stage.name
            ),
            Ok(Some(previous)) => format!("{host}: removed the lock of {previous}\n"),
            Ok(None) => format!("{host}: was not locked\n"),
            Err(e) => format!("{host}: FAILED: {e}\n"),
        });
        out.push(match result {
            Ok(was_held_by) => Row {
                host,
                ok: true,
                was_held_by,
                error: None,
            },
            Err(e) => Row {
                host,
                ok: false,
                was_held_by: None,
                error: Some(e),
            },
        });
    }
    let ok = out.iter().all(|r| r.ok);
    reporter.result(&UnlockResult { ok, hosts: out }, &text);
    Ok(if ok { 0 } else { 1 })
}
