//! Deploy hooks on the operator's machine (`after_deploy`, `after_failure`,
//! `after_rollback`: notifications) and the hook that runs once per run on
//! the stage's first host (`before_switch`, `before_rollback`: migrations).
//!
//! A hook is an argv (no shell unless the user writes `sh -c`). On this
//! machine it runs in the project directory without the variables that hold
//! secrets; what it prints goes through the reporter, which masks secrets.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::operator::output::{Reporter, StepStatus};
use crate::operator::render::without_secret_variables;
use crate::protocol::manifest::HookSpec;
use crate::protocol::{HookPoint, HookRun};

/// The name hooks on this machine are reported under, in place of a host.
pub const OPERATOR: &str = "operator";

/// Lines of a hook's output kept for the report.
const OUTPUT_LINES: usize = 40;

/// Runs `hook` in `dir` with `env` added; reports its output line by line
/// (masked) and how it ended.
pub fn run_local(
    dir: &Path,
    point: &HookPoint,
    hook: &HookSpec,
    env: &[(&str, String)],
    reporter: &Reporter,
) -> HookRun {
    let started = Instant::now();
    let step = point.as_str();
    reporter.step(
        OPERATOR,
        step,
        StepStatus::Info,
        &format!("running {}", hook.argv.join(" ")),
    );
    let ran = spawn_and_wait(dir, hook, env, started);
    for line in &ran.output {
        reporter.step(OPERATOR, step, StepStatus::Info, line);
    }
    let status = if ran.ok {
        StepStatus::Ok
    } else {
        StepStatus::Warning
    };
    reporter.step(
        OPERATOR,
        step,
        status,
        &format!("hook {} ({} ms)", ran.how, ran.took_ms),
    );
    ran
}

fn spawn_and_wait(
    dir: &Path,
    hook: &HookSpec,
    env: &[(&str, String)],
    started: Instant,
) -> HookRun {
    let outcome = |ok: bool, how: String, output: Vec<String>| HookRun {
        ok,
        how,
        took_ms: started.elapsed().as_millis() as u64,
        output,
    };
    let Some((program, args)) = hook.argv.split_first() else {
        return outcome(
            false,
            "could not run: the command is empty".into(),
            Vec::new(),
        );
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(pair) => pair,
        Err(e) => return outcome(false, format!("could not run: pipe: {e}"), Vec::new()),
    };
    let stderr = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return outcome(false, format!("could not run: {e}"), Vec::new()),
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        // Its own group: a timeout kills whatever it started, never us.
        .process_group(0);
    without_secret_variables(&mut cmd);
    let spawned = cmd.spawn();
    // Only the child holds the write end now: its exit closes the pipe.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return outcome(false, format!("could not run {program}: {e}"), Vec::new()),
    };
    let (lines_tx, lines_rx) = mpsc::channel::<VecDeque<String>>();
    std::thread::spawn(move || {
        let mut kept = VecDeque::new();
        for line in BufReader::new(reader).split(b'\n') {
            let Ok(line) = line else { break };
            if kept.len() == OUTPUT_LINES {
                kept.pop_front();
            }
            kept.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        let _ = lines_tx.send(kept);
    });
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let kill_group = || {
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    };
    let deadline = started + Duration::from_millis(hook.timeout_ms);
    let (ok, how) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.success(), describe(status)),
            Ok(None) if Instant::now() >= deadline => {
                kill_group();
                let _ = child.wait();
                break (
                    false,
                    format!(
                        "timed out after {}; killed",
                        humantime::format_duration(Duration::from_millis(hook.timeout_ms))
                    ),
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break (false, format!("could not wait for it: {e}")),
        }
    };
    // Whatever it left running in its group goes too, so the pipe closes.
    kill_group();
    let output = lines_rx
        .recv_timeout(Duration::from_secs(5))
        .map(Vec::from)
        .unwrap_or_default();
    outcome(ok, how, output)
}

/// `exited with code N` or `killed by signal N`.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_string(),
    }
}
