//! `shipjar check STAGE`: everything a deploy would need, checked without
//! changing anything — the project file, every template rendered for every
//! host (secrets masked), and, on each host it can reach, the program the
//! service runs, disk space, the service's port and what `provision` left.

use serde::Serialize;

use crate::cli::CheckArgs;
use crate::error::Result;
use crate::operator::args;
use crate::operator::build::{self, BuildManifest};
use crate::operator::config::Project;
use crate::operator::deploy;
use crate::operator::fleet::Fleet;
use crate::operator::inspect;
use crate::operator::output::Reporter;
use crate::operator::plan::DeployPlan;
use crate::operator::render;
use crate::protocol::{
    FindingStatus, HostCheckSpec, HostFinding, ProvisionSpec, Request, Response,
};

/// What one host said.
#[derive(Debug, Serialize)]
struct HostReport {
    host: String,
    /// Findings, when the host was reached.
    findings: Vec<HostFinding>,
    /// Why the host could not be asked.
    error: Option<String>,
}

/// `shipjar check STAGE`.
pub fn check(project: &Project, args: &CheckArgs, reporter: &Reporter) -> Result<i32> {
    let (stage, _) = crate::operator::select::stage(project, &args.stage, &args.fleet.hosts)?;
    let secrets = render::load_secrets(&stage.secrets, &|var| std::env::var(var).ok())?;
    // `check` does not build: the last build when there is one, else a stand-in.
    let build = build::last_build(project).unwrap_or_else(|_| BuildManifest {
        artifact: "(not built)".into(),
        sha256: "0".repeat(64),
        size: 0,
        version: "(version)".into(),
        git_commit: None,
        build_time: String::new(),
    });
    let plan = deploy::plan_release(
        project,
        &stage,
        &build,
        secrets,
        args::parse_pairs("--set", &args.set)?,
        args::parse_pairs("--env", &args.env)?,
        reporter,
    )?;
    let mut text = rendered_files(&plan);
    text.push_str(&format!(
        "{}: stage `{}` is valid\n",
        project.file.display(),
        stage.name
    ));
    let hosts = if args.no_hosts {
        Vec::new()
    } else {
        let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
        ask_hosts(project, &fleet, &stage.hosts, &plan, &build)
    };
    text.push_str(&hosts_text(&hosts));
    let ok = hosts
        .iter()
        .all(|h| h.error.is_none() && h.findings.iter().all(|f| f.status == FindingStatus::Ok));
    #[derive(Serialize)]
    struct CheckResult<'a> {
        ok: bool,
        stage: &'a str,
        hosts: Vec<HostReport>,
    }
    reporter.result(
        &CheckResult {
            ok,
            stage: &stage.name,
            hosts,
        },
        &text,
    );
    Ok(if ok { 0 } else { 1 })
}

/// Each host's command line and rendered files (secret files masked).
fn rendered_files(plan: &DeployPlan) -> String {
    let mut text = String::new();
    for host in &plan.hosts {
        text.push_str(&format!(
            "{}: runs {:?}\n",
            host.host, host.manifest.run.argv
        ));
        for file in &host.files {
            text.push_str(&format!(
                "--- config/{}{}\n",
                file.dest,
                if file.secret { " (secret)" } else { "" }
            ));
            text.push_str(&inspect::masked(&file.content, file.secret));
        }
    }
    text
}

/// Asks every host of the stage what a deploy would meet there.
fn ask_hosts(
    project: &Project,
    fleet: &Fleet,
    hosts: &[(String, crate::operator::config::HostSpec)],
    plan: &DeployPlan,
    build: &BuildManifest,
) -> Vec<HostReport> {
    let Some(manifest) = plan.hosts.first().map(|h| &h.manifest) else {
        return Vec::new();
    };
    let service = &project.config.service;
    let spec = HostCheckSpec {
        program: manifest.run.argv.first().cloned().unwrap_or_default(),
        health: manifest.health.check.clone(),
        artifact_bytes: build.size,
        provision: ProvisionSpec {
            user: service.unix_user(),
            agent_path: fleet.reach.agent_path.clone(),
            dry_run: true,
            take_over: false,
        },
        proxy: manifest.proxy.clone(),
    };
    let ours = env!("CARGO_PKG_VERSION");
    inspect::query_all(fleet, hosts, Request::CheckHost { spec })
        .into_iter()
        .map(|(host, answer)| match answer {
            Ok(Response::HostChecked {
                agent_version,
                mut findings,
            }) => {
                findings.insert(0, agent_finding(&agent_version, ours));
                HostReport {
                    host,
                    findings,
                    error: None,
                }
            }
            Ok(other) => HostReport {
                host,
                findings: Vec::new(),
                error: Some(format!("unexpected answer: {other:?}")),
            },
            Err(e) => HostReport {
                host,
                findings: Vec::new(),
                error: Some(e),
            },
        })
        .collect()
}

fn agent_finding(theirs: &str, ours: &str) -> HostFinding {
    let (status, detail) = if theirs == ours {
        (FindingStatus::Ok, format!("shipjar {theirs}"))
    } else {
        (
            FindingStatus::Problem,
            format!("shipjar {theirs} on the host, {ours} here: run `shipjar provision`"),
        )
    };
    HostFinding {
        what: "agent".into(),
        status,
        detail,
    }
}

fn hosts_text(hosts: &[HostReport]) -> String {
    let mut text = String::new();
    for host in hosts {
        if let Some(e) = &host.error {
            text.push_str(&format!(
                "{}: NOT CHECKED: cannot reach it: {e}\n",
                host.host
            ));
            continue;
        }
        for f in &host.findings {
            let mark = match f.status {
                FindingStatus::Ok => "ok",
                _ => "PROBLEM",
            };
            text.push_str(&format!(
                "{}: {:<8} {:<10} {}\n",
                host.host, mark, f.what, f.detail
            ));
        }
    }
    text
}
