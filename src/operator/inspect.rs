//! Read-only commands: `status`, `releases` and `check`.

use serde::Serialize;

use crate::cli::{FleetStageArgs, LogsArgs};
use crate::error::{Error, Result};
use crate::operator::config::{HostSpec, Project};
use crate::operator::fleet::{self, Fleet};
use crate::operator::output::{MASK, Reporter, StepStatus};
use crate::protocol::digest::short;
use crate::protocol::keep::{self, Standing};
use crate::protocol::status::{ProxyState, ProxyStatus, ServiceState};
use crate::protocol::{Action, HostStatus, ReleaseInfo, Request, Response, RevisionOutcome};

/// One host's row in `status`.
#[derive(Debug, Serialize)]
pub struct HostReport {
    /// Host as written in the stage.
    pub host: String,
    /// What the agent reported; None when unreachable.
    pub status: Option<HostStatus>,
    /// Every mismatch found; empty means consistent and healthy.
    pub flags: Vec<String>,
}

/// Mismatches worth a flag, derived from one host's status (pure).
pub fn flags(status: &HostStatus) -> Vec<String> {
    let mut flags = Vec::new();
    let current = status.current.as_ref();
    let service = &status.service;
    // Behind the proxy the whole is judged on the host: each missing part
    // (runner, keeper, worker, active instance) is a flag of its own.
    let whole = status.proxy.as_ref().and_then(|p| p.service_state.as_ref());
    match (current, &service.state) {
        (None, ServiceState::Running) => flags.push("running, but no release is current".into()),
        (None, ServiceState::Stopped) => flags.push("no release deployed".into()),
        (None, _) => {
            flags.push("no release deployed".into());
            flags.push(service.detail.clone());
        }
        (Some(_), _) if whole == Some(&ServiceState::Stopped) => {
            flags.push("stopped: the proxy and both instances".into())
        }
        // The active instance is a missing part, named with its port.
        (Some(_), _) if whole.is_some() => {}
        (Some(_), ServiceState::Running) => {}
        // The detail says it all: "dead: supervisor pid 4242 is gone; …",
        // "starting: pid …", "not running (last start failed: …)".
        (Some(_), _) => flags.push(service.detail.clone()),
    }
    if let (Some(current), Some(running)) = (current, &service.release)
        && &current.id != running
    {
        flags.push(format!(
            "process runs release {running}, but current is {}",
            current.id
        ));
    }
    // A starting service is not healthy yet, which is no finding of its own;
    // an unhealthy active instance is a missing part.
    if service.healthy == Some(false) && service.state != ServiceState::Starting && whole.is_none()
    {
        flags.push("unhealthy".into());
    }
    match (&status.running_version, &status.reported_version) {
        (Some(expected), Some(reported)) if expected != reported => flags.push(format!(
            "service reports version {reported}, its release says {expected}"
        )),
        _ => {}
    }
    if let Some(e) = &status.version_error
        && service.state == ServiceState::Running
    {
        flags.push(format!("version check failed: {e}"));
    }
    if let Some(proxy) = &status.proxy {
        flags.extend(proxy_flags(proxy));
    }
    // The supervisor went back by itself (`[restart] auto_revert`): the host
    // runs what it went back to, not what the stage last deployed, until the
    // next deploy or rollback.
    if let Some(r) = &status.last_revision
        && r.action == Action::AutoRevert
    {
        flags.push(format!(
            "drifted from the stage's last deploy: now on release {} (version {}), {}",
            r.release, r.version, r.detail
        ));
    }
    flags
}

/// Each missing part of a proxied service, judged on the host; from an
/// older agent: a proxy that is not serving, or one that takes traffic to
/// no instance.
fn proxy_flags(proxy: &ProxyStatus) -> Vec<String> {
    if proxy.service_state.is_some() {
        return proxy.missing.iter().map(|m| m.line()).collect();
    }
    let mut flags = Vec::new();
    if proxy.state != ProxyState::Running {
        flags.push(format!("proxy {}", proxy.state));
    }
    if proxy.active.is_none() {
        flags.push("the proxy sends traffic to no instance".into());
    }
    flags
}

/// `shipjar status STAGE`: exit 0 only when every host is consistent and healthy.
pub fn status(project: &Project, args: &FleetStageArgs, reporter: &Reporter) -> Result<i32> {
    let (stage, selection) =
        crate::operator::select::stage(project, &args.stage, &args.fleet.hosts)?;
    // A service may report a secret (in a version string, a log line): mask what can be read.
    crate::operator::render::mask_available_secrets(&stage.secrets);
    let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
    let answers = query_all(&fleet, &stage.hosts, Request::Status);
    let mut rows: Vec<HostReport> = answers
        .into_iter()
        .map(|(host, answer)| match answer {
            Ok(Response::Status(status)) => HostReport {
                host,
                flags: flags(&status),
                status: Some(*status),
            },
            Ok(other) => unreachable_row(&host, format!("unexpected answer: {other:?}")),
            Err(e) => unreachable_row(&host, e),
        })
        .collect();
    flag_minority_versions(&mut rows);
    let pending = pending_canary(&mut rows);
    let ok = rows.iter().all(|r| r.flags.is_empty());
    let mut text = String::new();
    for row in &rows {
        text.push_str(&format_row(row));
    }
    if let Some(p) = &pending {
        text.push_str(&format!(
            "pending canary: {}; {}\n",
            p.describe(),
            p.how_to_go_on()
        ));
    }
    let versions = versions_by_host(&rows);
    if versions.len() > 1 {
        text.push_str(&versions_line(&versions));
    }
    if rows.len() > 1 {
        let bad = rows.iter().filter(|r| !r.flags.is_empty()).count();
        text.push_str(&format!(
            "{} hosts, {} ok, {bad} flagged\n",
            rows.len(),
            rows.len() - bad
        ));
    }
    if let Some(s) = &selection {
        text.push_str(&format!("shown: {}\n", s.describe()));
    }
    #[derive(Serialize)]
    struct StatusResult<'a> {
        ok: bool,
        stage: &'a str,
        hosts: &'a [HostReport],
        /// Each version current somewhere, with its hosts.
        versions: &'a [(String, Vec<String>)],
        selection: Option<&'a crate::operator::select::Selection>,
        /// A canary waiting for `deploy --continue` or `--abort`.
        pending_canary: Option<&'a crate::protocol::canary::PendingCanary>,
    }
    reporter.result(
        &StatusResult {
            ok,
            stage: &stage.name,
            hosts: &rows,
            versions: &versions,
            selection: selection.as_ref(),
            pending_canary: pending.as_ref(),
        },
        &text,
    );
    Ok(if ok { 0 } else { 1 })
}

/// The canary waiting on the stage, as its hosts' locks hold it; a canary
/// host running the canary's release is where it should be, not a drift.
fn pending_canary(rows: &mut [HostReport]) -> Option<crate::protocol::canary::PendingCanary> {
    let pending = rows
        .iter()
        .find_map(|r| r.status.as_ref().and_then(|s| s.pending_canary.clone()))?;
    for row in rows.iter_mut() {
        let on_canary = pending.canary.contains_key(&row.host)
            && row
                .status
                .as_ref()
                .and_then(|s| s.current.as_ref())
                .is_some_and(|c| c.id == pending.release);
        let waiting = pending.hosts.contains(&row.host) && !pending.canary.contains_key(&row.host);
        if on_canary || waiting {
            row.flags.retain(|f| !f.starts_with("runs version "));
        }
    }
    Some(pending)
}

/// Each version current on some host, with those hosts in stage order; the
/// most common version first (a partial deploy reads as its few hosts).
pub fn versions_by_host(rows: &[HostReport]) -> Vec<(String, Vec<String>)> {
    let mut versions: Vec<(String, Vec<String>)> = Vec::new();
    for row in rows {
        let Some(c) = row.status.as_ref().and_then(|s| s.current.as_ref()) else {
            continue;
        };
        match versions.iter_mut().find(|(v, _)| *v == c.version) {
            Some((_, hosts)) => hosts.push(row.host.clone()),
            None => versions.push((c.version.clone(), vec![row.host.clone()])),
        }
    }
    // Stable: among equally common versions, the one seen first stays first.
    versions.sort_by_key(|(_, hosts)| std::cmp::Reverse(hosts.len()));
    versions
}

/// `versions: 1.0 on web3, web4, web5; 1.1 on web1, web2`.
fn versions_line(versions: &[(String, Vec<String>)]) -> String {
    let parts: Vec<String> = versions
        .iter()
        .map(|(v, hosts)| format!("{v} on {}", hosts.join(", ")))
        .collect();
    format!("versions: {}\n", parts.join("; "))
}

/// Flags hosts whose current version is not the stage's majority version.
pub fn flag_minority_versions(rows: &mut [HostReport]) {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for row in rows.iter() {
        if let Some(c) = row.status.as_ref().and_then(|s| s.current.as_ref()) {
            *counts.entry(c.version.as_str()).or_default() += 1;
        }
    }
    if counts.len() < 2 {
        return;
    }
    let majority = counts
        .iter()
        .max_by_key(|(v, n)| (**n, std::cmp::Reverse(*v)))
        .map(|(v, _)| v.to_string())
        .unwrap_or_default();
    for row in rows.iter_mut() {
        let version = row
            .status
            .as_ref()
            .and_then(|s| s.current.as_ref())
            .map(|c| c.version.clone());
        if let Some(v) = version
            && v != majority
        {
            row.flags.push(format!(
                "runs version {v}, the stage's majority runs {majority}"
            ));
        }
    }
}

fn unreachable_row(host: &str, why: String) -> HostReport {
    HostReport {
        host: host.to_string(),
        status: None,
        flags: vec![format!("unreachable: {why}")],
    }
}

fn format_row(row: &HostReport) -> String {
    let mut out = format!("{}\n", row.host);
    if let Some(s) = &row.status {
        let current = s.current.as_ref().map_or("(none)".to_string(), |c| {
            format!("{} (version {})", c.id, c.version)
        });
        out.push_str(&format!("  current:   {current}\n"));
        let svc = &s.service;
        out.push_str(&format!(
            "  process:   {}\n",
            match (svc.pid, &svc.release) {
                (Some(pid), Some(rel)) => format!(
                    "pid {pid}, from release {rel}{}, up {}s{}",
                    s.running_version
                        .as_ref()
                        .map_or(String::new(), |v| format!(" (version {v})")),
                    svc.uptime_s.unwrap_or(0),
                    match svc.state {
                        ServiceState::Starting => ", starting",
                        ServiceState::Dead => ", UNSUPERVISED",
                        _ => "",
                    }
                ),
                _ => svc.detail.clone(),
            }
        ));
        if let Some(v) = &s.reported_version {
            out.push_str(&format!("  reports:   version {v}\n"));
        }
        if let Some(p) = &s.proxy {
            out.push_str(&format!("  proxy:     {}\n", p.line()));
            if let Some(pid) = p.runner_pid {
                let since = p
                    .runner_started_at
                    .as_deref()
                    .map(|t| format!(", started at {t}"))
                    .unwrap_or_default();
                out.push_str(&format!("  runner:    pid {pid}{since}\n"));
            }
            for line in p.instance_lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        let health = match (&svc.state, svc.healthy) {
            (ServiceState::Starting, _) => Some("starting: the health gate has not passed yet"),
            (_, Some(true)) => Some("healthy"),
            (_, Some(false)) => Some("UNHEALTHY"),
            (_, None) => None,
        };
        if let Some(h) = health {
            out.push_str(&format!("  health:    {h}\n"));
        }
        if let Some(r) = &s.last_revision {
            let detail = if r.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", r.detail)
            };
            out.push_str(&format!(
                "  last:      {} {} of {} by {} at {}{detail}\n",
                r.action, r.outcome, r.release, r.deployer, r.time
            ));
        }
    }
    if row.flags.is_empty() {
        out.push_str("  ok\n");
    }
    for flag in &row.flags {
        out.push_str(&format!("  ! {flag}\n"));
    }
    out
}

/// `shipjar releases STAGE`.
pub fn releases(project: &Project, args: &FleetStageArgs, reporter: &Reporter) -> Result<i32> {
    let (stage, _) = crate::operator::select::stage(project, &args.stage, &args.fleet.hosts)?;
    crate::operator::render::mask_available_secrets(&stage.secrets);
    let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
    let keep = *project.config.releases.keep.get_ref();
    let mut rows = Vec::new();
    let mut text = String::new();
    for (host, answer) in query_all(&fleet, &stage.hosts, Request::Releases) {
        let unreachable = |error: String| HostReleases {
            host: host.clone(),
            releases: vec![],
            foreign: vec![],
            error: Some(error),
        };
        let row = match answer {
            Ok(Response::Releases { releases, foreign }) => HostReleases {
                host: host.clone(),
                releases: listed(releases, keep),
                foreign,
                error: None,
            },
            Ok(other) => unreachable(format!("{other:?}")),
            Err(e) => unreachable(e),
        };
        text.push_str(&releases_text(&row));
        rows.push(row);
    }
    let ok = rows.iter().all(|r| r.error.is_none());
    #[derive(Serialize)]
    struct ReleasesResult {
        ok: bool,
        hosts: Vec<HostReleases>,
    }
    reporter.result(&ReleasesResult { ok, hosts: rows }, &text);
    Ok(if ok { 0 } else { 1 })
}

/// A release as `releases` lists it.
#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    release: ReleaseInfo,
    /// Why `[releases] keep` keeps it (or that the next deploy prunes it).
    kept: &'static str,
}

/// One host's releases, or why they could not be had.
#[derive(Serialize)]
struct HostReleases {
    host: String,
    releases: Vec<Listed>,
    foreign: Vec<String>,
    error: Option<String>,
}

/// `releases`, each with why `keep` keeps it (the host's prune's own plan).
fn listed(releases: Vec<ReleaseInfo>, keep: usize) -> Vec<Listed> {
    let standings: Vec<(bool, Standing)> = releases
        .iter()
        .map(|r| {
            let standing = match r.outcome {
                Some(RevisionOutcome::Success) => Standing::Healthy,
                Some(_) => Standing::Failed,
                None => Standing::NeverSwitched,
            };
            (r.current, standing)
        })
        .collect();
    releases
        .into_iter()
        .zip(keep::plan(&standings, keep))
        .map(|(release, kept)| Listed {
            release,
            kept: kept.as_str(),
        })
        .collect()
}

/// One host's part of the `releases` text, newest first.
fn releases_text(row: &HostReleases) -> String {
    let mut text = format!("{}\n", row.host);
    if let Some(e) = &row.error {
        text.push_str(&format!("  ! unreachable: {e}\n"));
    }
    for Listed { release: r, kept } in row.releases.iter().rev() {
        text.push_str(&format!(
            "  {} {:<20} {:<12} {:<12} {:<14} {} {}  ({kept})\n",
            if r.current { "*" } else { " " },
            r.id,
            r.version,
            short(&r.artifact_sha256),
            r.outcome.as_ref().map_or("never switched", |o| o.as_str()),
            r.deployed_at,
            r.deployer
        ));
    }
    for name in &row.foreign {
        text.push_str(&format!(
            "    {name:<20} (foreign: not made by shipjar; left alone, not counted toward keep)\n"
        ));
    }
    text
}

/// Asks every host the same read-only question, in parallel; answers in stage order.
pub fn query_all(
    fleet: &Fleet,
    hosts: &[(String, HostSpec)],
    request: Request,
) -> Vec<(String, Result<Response, String>)> {
    let mut rows: Vec<(String, HostSpec, Result<Response, String>)> = hosts
        .iter()
        .map(|(h, s)| (h.clone(), s.clone(), Err("not asked".to_string())))
        .collect();
    fleet::each(&mut rows, fleet.parallel, |(host, spec, answer)| {
        *answer = query(fleet, host, spec, request.clone());
    });
    rows.into_iter().map(|(h, _, a)| (h, a)).collect()
}

fn query(fleet: &Fleet, host: &str, spec: &HostSpec, request: Request) -> Result<Response, String> {
    let mut session = fleet.open(host, spec).map_err(|e| e.message)?;
    let response = session
        .call(request, &mut |_, _| {})
        .map_err(|e| e.message)?;
    let _ = session.close();
    match response {
        Response::Error(e) => Err(format!("{}: {}", e.step, e.message)),
        other => Ok(other),
    }
}

/// `shipjar logs STAGE`: each host's service log, lines prefixed by host.
pub fn logs(project: &Project, args: &LogsArgs, reporter: &Reporter) -> Result<i32> {
    let (stage, _) = crate::operator::select::stage(project, &args.stage, &args.fleet.hosts)?;
    // Service logs may print secrets too: mask them like everything else.
    crate::operator::render::mask_available_secrets(&stage.secrets);
    let hosts: Vec<(String, HostSpec)> = stage.hosts.clone();
    // Following needs every host at once; a bounded pool would starve some.
    let parallel = if args.follow {
        hosts.len()
    } else {
        args.fleet.parallel.unwrap_or(fleet::DEFAULT_PARALLEL)
    };
    let fleet = Fleet::new(
        &stage,
        &project.config.service.name.0,
        args.fleet.ssh_config.as_deref(),
        Some(parallel),
    )?;
    let since = args
        .since
        .as_deref()
        .map(|w| crate::operator::args::since(w, std::time::SystemTime::now()))
        .transpose()?;
    if let Some(grep) = &args.grep {
        regex::Regex::new(grep).map_err(|e| Error::config(format!("--grep `{grep}`: {e}")))?;
    }
    let default_lines = (since.is_none() && args.grep.is_none()).then_some(50);
    let request = Request::Logs {
        lines: args.lines.or(default_lines),
        follow: args.follow,
        since,
        grep: args.grep.clone(),
    };
    let mut rows: Vec<(String, HostSpec, Option<String>)> =
        hosts.into_iter().map(|(h, s)| (h, s, None)).collect();
    fleet::each(&mut rows, fleet.parallel, |(host, spec, error)| {
        let result = fleet.open(host, spec).and_then(|mut session| {
            let mut on_event = |step: &str, line: &str| {
                if step == "log" && !line.is_empty() {
                    reporter.log_line(host, line);
                }
            };
            let r = session.call(request.clone(), &mut on_event);
            let _ = session.close();
            r
        });
        *error = match result {
            Ok(Response::LogsDone) => None,
            Ok(Response::Error(e)) => Some(e.message),
            Ok(other) => Some(format!("unexpected answer: {other:?}")),
            Err(e) => Some(e.message),
        };
    });
    let mut ok = true;
    for (host, _, error) in &rows {
        if let Some(e) = error {
            ok = false;
            reporter.step(host, "logs", StepStatus::Failed, e);
        }
    }
    Ok(if ok { 0 } else { 1 })
}

/// Masks the content of secret files for display.
pub fn masked(content: &str, secret: bool) -> String {
    if secret {
        format!("{MASK}\n")
    } else {
        content.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One host's status: release r1 current, the service as given.
    fn host(service: serde_json::Value, detail: &str) -> HostReport {
        let mut service = service;
        for (k, v) in [
            ("pid", json!(null)),
            ("supervisor_pid", json!(null)),
            ("release", json!(null)),
            ("started_at", json!(null)),
            ("uptime_s", json!(null)),
            ("healthy", json!(null)),
            ("reason", json!(null)),
            ("last_exit", json!(null)),
            ("last_exit_code", json!(null)),
            ("last_exit_signal", json!(null)),
            ("restarts", json!(0)),
            ("next_restart_at", json!(null)),
        ] {
            service
                .as_object_mut()
                .expect("object")
                .entry(k)
                .or_insert(v);
        }
        let status: HostStatus = serde_json::from_value(json!({
            "current": {
                "id": "r1", "version": "1.0", "deployed_at": "t", "deployer": "me@here",
                "artifact_sha256": "00", "current": true, "outcome": "success"
            },
            "service": service,
            "running_version": "1.0",
            "reported_version": null,
            "version_error": null,
            "last_revision": {
                "time": "2026-01-01T00:00:00Z", "action": "deploy", "release": "r1",
                "version": "1.0", "deployer": "me@here", "outcome": "success", "detail": detail
            }
        }))
        .expect("a host status");
        HostReport {
            host: "local".into(),
            flags: flags(&status),
            status: Some(status),
        }
    }

    #[test]
    fn a_partial_deploy_reads_as_its_few_hosts_on_the_new_version() {
        let running = || {
            json!({"state": "running", "lsb_code": 0, "pid": 42, "release": "r1",
                   "uptime_s": 9, "healthy": true, "detail": "running: pid 42"})
        };
        let mut rows: Vec<HostReport> = ["web1", "web2", "web3", "web4", "web5"]
            .iter()
            .map(|name| HostReport {
                host: name.to_string(),
                ..host(running(), "")
            })
            .collect();
        for row in &mut rows[..2] {
            let current = row
                .status
                .as_mut()
                .and_then(|s| s.current.as_mut())
                .unwrap();
            current.id = "r2".into();
            current.version = "1.1".into();
        }
        flag_minority_versions(&mut rows);
        let versions = versions_by_host(&rows);
        assert_eq!(
            versions_line(&versions),
            "versions: 1.0 on web3, web4, web5; 1.1 on web1, web2\n"
        );
        assert_eq!(
            rows[0].flags,
            ["runs version 1.1, the stage's majority runs 1.0"]
        );
        assert!(rows[2].flags.is_empty(), "{:?}", rows[2].flags);
        // One version everywhere: no line.
        assert_eq!(versions_by_host(&rows[2..]).len(), 1);
    }

    #[test]
    fn a_stopped_service_is_flagged_once_and_an_empty_detail_prints_nothing() {
        let row = host(
            json!({"state": "stopped", "lsb_code": 3, "detail": "not running"}),
            "",
        );
        assert_eq!(row.flags, vec!["not running".to_string()]);
        assert_eq!(
            format_row(&row),
            "local\n  current:   r1 (version 1.0)\n  process:   not running\n  \
             last:      deploy success of r1 by me@here at 2026-01-01T00:00:00Z\n  ! not running\n"
        );
    }

    #[test]
    fn a_starting_service_is_not_called_unhealthy() {
        let row = host(
            json!({"state": "starting", "lsb_code": 3, "pid": 42, "release": "r1",
                   "uptime_s": 3, "healthy": false,
                   "detail": "starting: pid 42, release r1, in the health gate for 3s"}),
            "ok",
        );
        assert_eq!(
            row.flags,
            vec!["starting: pid 42, release r1, in the health gate for 3s".to_string()]
        );
        let text = format_row(&row);
        assert!(!text.contains("UNHEALTHY"), "{text}");
        assert!(
            text.contains("  health:    starting: the health gate has not passed yet\n"),
            "{text}"
        );
        assert!(text.contains("at 2026-01-01T00:00:00Z: ok\n"), "{text}");
    }

    #[test]
    fn an_auto_revert_is_flagged_as_drift_until_the_next_deploy() {
        let mut row = host(
            json!({"state": "running", "lsb_code": 0, "pid": 42, "release": "r1",
                   "uptime_s": 9, "healthy": true, "detail": "running: pid 42"}),
            "auto-reverted: from release r2 (version 2.0), given up on 40s after its deploy: 3 failures",
        );
        assert!(row.flags.is_empty(), "{:?}", row.flags);
        let status = row.status.as_mut().expect("a status");
        let last = status.last_revision.as_mut().expect("a revision");
        last.action = Action::AutoRevert;
        last.deployer = "supervisor".into();
        assert_eq!(
            flags(status),
            [
                "drifted from the stage's last deploy: now on release r1 (version 1.0), \
              auto-reverted: from release r2 (version 2.0), given up on 40s after its deploy: 3 failures"
            ]
        );
        let text = format_row(&HostReport {
            host: "local".into(),
            flags: flags(status),
            status: Some(status.clone()),
        });
        assert!(
            text.contains("  last:      auto-revert success of r1 by supervisor at "),
            "{text}"
        );
    }

    #[test]
    fn a_dead_supervisor_is_flagged_even_when_the_service_answers() {
        let detail = "dead: supervisor pid 7 is gone; the service pid 42 runs unsupervised since 2026-01-01T00:00:01.000Z";
        let row = host(
            json!({"state": "dead", "lsb_code": 1, "pid": 42, "release": "r1",
                   "uptime_s": 9, "healthy": true, "detail": detail}),
            "",
        );
        assert_eq!(row.flags, vec![detail.to_string()]);
        let text = format_row(&row);
        assert!(
            text.contains(
                "  process:   pid 42, from release r1 (version 1.0), up 9s, UNSUPERVISED\n"
            ),
            "{text}"
        );
        assert!(text.contains("  health:    healthy\n"), "{text}");
        assert!(!text.contains("  ok\n"), "{text}");
    }

    #[test]
    fn behind_the_proxy_each_missing_part_is_one_flag_and_a_stop_one_more() {
        let with_proxy = |service: serde_json::Value, proxy: serde_json::Value| {
            let mut row = host(service, "");
            let status = row.status.as_mut().expect("a status");
            status.proxy = Some(serde_json::from_value(proxy).expect("a proxy status"));
            flags(status)
        };
        let dead =
            json!({"state": "dead", "lsb_code": 1, "detail": "dead: supervisor pid 7 is gone"});
        let proxy = json!({
            "state": "running", "listen": "127.0.0.1:8080", "active": 18081,
            "keeper_pid": 20, "worker_pid": 21, "restarts": 0, "last_exit": null,
            "inflight": [], "service_state": "dead", "lsb_code": 1,
            "missing": [
                {"part": "runner", "port": null, "detail": "pid 10 is gone"},
                {"part": "active instance", "port": 18081, "detail": "dead: supervisor pid 7 is gone"}
            ]
        });
        assert_eq!(
            with_proxy(dead.clone(), proxy.clone()),
            [
                "missing runner: pid 10 is gone",
                "missing active instance 18081: dead: supervisor pid 7 is gone"
            ]
        );
        let mut stopped = proxy;
        stopped["state"] = json!("stopped");
        stopped["service_state"] = json!("stopped");
        stopped["lsb_code"] = json!(3);
        stopped["missing"] = json!([]);
        let not_running = json!({"state": "stopped", "lsb_code": 3, "detail": "not running"});
        assert_eq!(
            with_proxy(not_running, stopped),
            ["stopped: the proxy and both instances"]
        );
    }
}
