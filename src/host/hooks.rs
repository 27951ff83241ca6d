//! Commands in a release on this host — deploy hooks and `shipjar exec`: run
//! in a release's directory with that release's config files and environment,
//! as the service user (when the agent runs as root), in its own process
//! group, killed at its timeout. A hook's output is kept (the last lines) for
//! the operator; an exec's is streamed. The operator masks secrets before
//! printing anything (and the agent masks what it sends).

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::host::os::process::{self, Credentials};
use crate::host::store;
use crate::host::supervisor::release::Release;
use crate::host::supervisor::{release, spawn};
use crate::protocol::hook_wait::{self, Ended};
use crate::protocol::layout::Layout;
use crate::protocol::manifest::HookSpec;
use crate::protocol::{ExecRun, HookPoint, HookRun};

/// Runs `hook` in release `release` (the host's `current` is named to it as the previous release).
pub fn run(
    layout: &Layout,
    release: &str,
    point: &HookPoint,
    hook: &HookSpec,
    emit: &dyn Fn(&str, &str),
) -> HookRun {
    let started = Instant::now();
    let outcome = |ended: Ended| HookRun {
        ok: ended.ok,
        how: ended.how,
        took_ms: started.elapsed().as_millis() as u64,
        output: ended.output,
    };
    let previous = store::current(layout).filter(|p| p != release);
    let mut extra = vec![("SHIPJAR_HOOK", point.as_str().to_string())];
    if let Some(previous) = previous {
        extra.push((
            "SHIPJAR_PREVIOUS_RELEASE_DIR",
            layout.release_dir(&previous).display().to_string(),
        ));
        extra.push(("SHIPJAR_PREVIOUS_RELEASE", previous));
    }
    emit(point.as_str(), &format!("running {}", hook.argv.join(" ")));
    let ended = run_in_release(
        layout,
        release,
        &hook.argv,
        &extra,
        Duration::from_millis(hook.timeout_ms),
        &mut |_| {},
        &|| false,
    );
    for line in &ended.output {
        emit(point.as_str(), line);
    }
    outcome(ended)
}

/// Runs `argv` in `current` (`shipjar exec`), each line of its output handed to `on_line`.
pub fn exec(
    layout: &Layout,
    argv: &[String],
    timeout_ms: u64,
    on_line: &mut dyn FnMut(&str),
    cancelled: &dyn Fn() -> bool,
) -> ExecRun {
    let started = Instant::now();
    let ended = match store::current(layout) {
        Some(current) => run_in_release(
            layout,
            &current,
            argv,
            &[("SHIPJAR_EXEC", "1".to_string())],
            Duration::from_millis(timeout_ms),
            on_line,
            cancelled,
        ),
        None => not_run("no release is current here: deploy first".into()),
    };
    ExecRun {
        code: ended.code,
        how: ended.how,
        took_ms: started.elapsed().as_millis() as u64,
    }
}

/// Replaces this process with `argv` in `current`, as the service runs, on
/// this terminal (`shipjar exec -i`): returns only when it could not.
pub fn exec_interactive(layout: &Layout, argv: &[String]) -> String {
    let Some(current) = store::current(layout) else {
        return "no release is current here: deploy first".into();
    };
    let (target, creds) = match prepared(layout, &current, argv, &[]) {
        Ok(ready) => ready,
        Err(e) => return e,
    };
    let env = spawn::service_env(layout, &target, creds.as_ref());
    let path = env
        .get(std::ffi::OsStr::new("PATH"))
        .cloned()
        .unwrap_or_default();
    let Some(argv0) = argv.first() else {
        return "the command is empty".into();
    };
    let program = match process::resolve_program(argv0, &path, &target.dir) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut cmd = std::process::Command::new(&program);
    cmd.arg0(argv0)
        .args(&argv[1..])
        .current_dir(&target.dir)
        .env_clear()
        .envs(&env);
    // No new session: the command keeps this terminal as its controlling one.
    process::prepare_child(&mut cmd, false, creds);
    let e = cmd.exec();
    format!("cannot start {}: {e}", program.display())
}

/// The release with `argv` (and `extra` on top of its environment) as what it runs,
/// and who runs it.
fn prepared(
    layout: &Layout,
    release: &str,
    argv: &[String],
    extra: &[(&str, String)],
) -> Result<(Release, Option<Credentials>), String> {
    let mut target = release::load(&layout.release_dir(release))?;
    let creds = spawn::credentials(&target)?;
    let manifest = &mut target.manifest;
    // The service's own environment, plus what tells the command where it runs.
    let mut tells = vec![
        ("SHIPJAR_VERSION", manifest.version.clone()),
        ("SHIPJAR_STAGE", manifest.stage.clone()),
        ("SHIPJAR_HOST", manifest.host.clone()),
    ];
    tells.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    for (key, value) in tells {
        manifest.run.env.insert(key.to_string(), value);
    }
    manifest.run.argv = argv.to_vec();
    Ok((target, creds))
}

/// Runs `argv` in release `release` with `extra` environment, up to `timeout`.
fn run_in_release(
    layout: &Layout,
    release: &str,
    argv: &[String],
    extra: &[(&str, String)],
    timeout: Duration,
    on_line: &mut dyn FnMut(&str),
    cancelled: &dyn Fn() -> bool,
) -> Ended {
    let (target, creds) = match prepared(layout, release, argv, extra) {
        Ok(ready) => ready,
        Err(e) => return not_run(e),
    };
    let (reader, writer) = match nix::unistd::pipe() {
        Ok(pair) => pair,
        Err(e) => return not_run(format!("pipe: {e}")),
    };
    let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
    let (stdout, stderr) = match (stdio(&writer), stdio(&writer)) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => return not_run(e.to_string()),
    };
    let spawned = spawn::spawn(layout, &target, creds.as_ref(), stdout, stderr);
    // Only the child holds the write end now: its exit closes the pipe.
    drop(writer);
    match spawned {
        Ok(child) => hook_wait::wait_streaming(
            child,
            std::fs::File::from(reader),
            timeout,
            on_line,
            cancelled,
        ),
        Err(e) => not_run(e),
    }
}

fn not_run(why: String) -> Ended {
    Ended {
        ok: false,
        how: format!("could not run: {why}"),
        code: None,
        output: Vec::new(),
    }
}
