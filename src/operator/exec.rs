//! `shipjar exec`: a command on each host of a stage, as the service runs it
//! (its user, environment, config files and `current`), output prefixed by
//! host and masked, each host's exit in a summary; or, with `-i`, on one host
//! with this terminal (`ssh -t`).

use std::process::{Command, Stdio};

use serde::Serialize;

use crate::cli::ExecArgs;
use crate::error::{Error, Result};
use crate::operator::config::{HostSpec, Project, ResolvedStage};
use crate::operator::fleet::{self, Fleet};
use crate::operator::output::{Reporter, StepStatus};
use crate::operator::{render, select, ssh};
use crate::protocol::{ExecRun, Request, Response};

/// One host's run.
#[derive(Debug, Serialize)]
struct HostExec {
    host: String,
    /// Its exit code, when it exited by itself.
    code: Option<i32>,
    /// How it ended, or why it could not run.
    how: String,
    took_ms: Option<u64>,
}

/// `shipjar exec STAGE -- CMD…`: exit 0 when it exited 0 everywhere; on a single host its own
/// exit code; else 1.
pub fn exec(project: &Project, args: &ExecArgs, reporter: &Reporter) -> Result<i32> {
    let (stage, selection) = select::stage(project, &args.stage, &args.fleet.hosts)?;
    let timeout = humantime::parse_duration(&args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            Error::config(format!(
                "--timeout {}: expected a duration above 0 such as 90s, 10m, 1h",
                args.timeout
            ))
        })?;
    // What the command prints may hold a secret: mask what can be read (each host masks too).
    render::mask_available_secrets(&stage.secrets);
    if args.interactive {
        return interactive(project, &stage, args);
    }
    let hosts = run_on_hosts(project, &stage, args, timeout, reporter)?;
    Ok(report(&stage, selection.as_ref(), &hosts, reporter))
}

/// Runs the command on every host of the stage, `--parallel` at a time.
fn run_on_hosts(
    project: &Project,
    stage: &ResolvedStage,
    args: &ExecArgs,
    timeout: std::time::Duration,
    reporter: &Reporter,
) -> Result<Vec<HostExec>> {
    let fleet = Fleet::for_stage(project, stage, &args.fleet)?;
    let request = Request::Exec {
        argv: args.command.clone(),
        timeout_ms: timeout.as_millis() as u64,
    };
    let mut rows: Vec<(String, HostSpec, Option<HostExec>)> = stage
        .hosts
        .iter()
        .map(|(h, s)| (h.clone(), s.clone(), None))
        .collect();
    fleet::each(&mut rows, fleet.parallel, |(host, spec, done)| {
        let result = fleet.open(host, spec).and_then(|mut session| {
            let mut on_event = |step: &str, line: &str| {
                if step == "out" {
                    reporter.log_line(host, line);
                }
            };
            let r = session.call(request.clone(), &mut on_event);
            let _ = session.close();
            r
        });
        let (code, how, took_ms) = match result {
            Ok(Response::Executed(ExecRun { code, how, took_ms })) => (code, how, Some(took_ms)),
            Ok(Response::Error(e)) => (None, e.message, None),
            Ok(other) => (None, format!("unexpected answer: {other:?}"), None),
            Err(e) => (None, e.message, None),
        };
        *done = Some(HostExec {
            host: host.clone(),
            code,
            how,
            took_ms,
        });
    });
    Ok(rows.into_iter().filter_map(|(_, _, r)| r).collect())
}

/// Prints each host's end and the summary; the exit code: 0 when every host exited 0, a single
/// host's own code, else 1.
fn report(
    stage: &ResolvedStage,
    selection: Option<&select::Selection>,
    hosts: &[HostExec],
    reporter: &Reporter,
) -> i32 {
    let mut text = String::new();
    for h in hosts {
        let status = if h.code == Some(0) {
            StepStatus::Ok
        } else {
            StepStatus::Failed
        };
        reporter.step(&h.host, "exec", status, &h.how);
        text.push_str(&format!("{:<24} {}\n", h.host, h.how));
    }
    let failed = hosts.iter().filter(|h| h.code != Some(0)).count();
    text.push_str(&format!(
        "exec: {} of {} host{} exited 0\n",
        hosts.len() - failed,
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" }
    ));
    if let Some(s) = selection {
        text.push_str(&format!("ran on: {}\n", s.describe()));
    }
    let code = match hosts {
        [only] => only
            .code
            .map_or(1, |c| if c == 0 { 0 } else { c.clamp(1, 255) }),
        _ if failed == 0 => 0,
        _ => 1,
    };
    #[derive(Serialize)]
    struct ExecResult<'a> {
        ok: bool,
        stage: &'a str,
        hosts: &'a [HostExec],
    }
    reporter.result(
        &ExecResult {
            ok: failed == 0,
            stage: &stage.name,
            hosts,
        },
        &text,
    );
    code
}

/// `exec -i`: the host-side `service exec` on this terminal; its exit code is ours.
fn interactive(project: &Project, stage: &ResolvedStage, args: &ExecArgs) -> Result<i32> {
    let [(host, spec)] = stage.hosts.as_slice() else {
        return Err(Error::config(format!(
            "-i runs on one host; stage `{}` has {}",
            stage.name,
            stage.hosts.len()
        ))
        .hint("choose one host with --hosts"));
    };
    let fleet = Fleet::for_stage(project, stage, &args.fleet)?;
    let service = &project.config.service.name.0;
    let root = fleet.reach.root.to_string_lossy().to_string();
    let mut words: Vec<&str> = vec!["service", "exec", service, "--root", &root, "--"];
    words.extend(args.command.iter().map(String::as_str));
    let mut command = match spec {
        HostSpec::Local => {
            let exe = std::env::current_exe()
                .map_err(|e| Error::failed(format!("cannot find the shipjar binary: {e}")))?;
            let mut command = Command::new(exe);
            command.args(&words);
            command
        }
        HostSpec::Ssh { .. } => {
            let mut remote_words = vec![fleet.reach.agent_path.as_str()];
            remote_words.extend(&words);
            let remote = ssh::remote_command(&fleet.reach, &remote_words);
            let mut ssh_args =
                ssh::ssh_args_with(spec, &fleet.reach, &remote, ssh::Multiplex::Yours);
            // A terminal on the host: a shell, a console, a pager work there.
            ssh_args.insert(0, "-t".into());
            let mut command = Command::new("ssh");
            command.args(ssh_args);
            command
        }
    };
    render::without_secret_variables(&mut command)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let status = command
        .status()
        .map_err(|e| Error::failed(format!("[{host}] cannot start: {e}")))?;
    // Exit codes pass through; a signal reads as 128+N, as a shell says it.
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}
