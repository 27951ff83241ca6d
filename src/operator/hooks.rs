//! Deploy hooks on the operator's machine (`after_deploy`, `after_failure`,
//! `after_rollback`: notifications) and the hook that runs once per run on
//! the stage's first host (`before_switch`, `before_rollback`: migrations).
//!
//! A hook is an argv (no shell unless the user writes `sh -c`). On this
//! machine it runs in the project directory without the variables that hold
//! secrets; what it prints goes through the reporter, which masks secrets.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::operator::output::{Reporter, StepStatus};
use crate::operator::render::without_secret_variables;
use crate::protocol::hook_wait;
use crate::protocol::manifest::HookSpec;
use crate::protocol::{HookPoint, HookRun};

/// The name hooks on this machine are reported under, in place of a host.
pub const OPERATOR: &str = "operator";

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
    let child = match spawned {
        Ok(child) => child,
        Err(e) => return outcome(false, format!("could not run {program}: {e}"), Vec::new()),
    };
    let ended = hook_wait::wait(child, reader, Duration::from_millis(hook.timeout_ms));
    outcome(ended.ok, ended.how, ended.output)
}
