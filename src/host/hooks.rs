//! Deploy hooks on this host: a command run in a release's directory with
//! that release's config files and environment, as the service user (when
//! the agent runs as root), in its own process group, killed at its timeout.
//! Its output is kept (the last lines) for the operator, which masks secrets
//! before printing anything.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::host::store;
use crate::host::supervisor::{release, spawn};
use crate::protocol::HookPoint;
use crate::protocol::HookRun;
use crate::protocol::hook_wait;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::HookSpec;

/// Runs `hook` in release `release` (the host's `current` is named to it as the previous release).
pub fn run(
    layout: &Layout,
    release: &str,
    point: &HookPoint,
    hook: &HookSpec,
    emit: &dyn Fn(&str, &str),
) -> HookRun {
    let started = Instant::now();
    let outcome = |ok: bool, how: String, output: Vec<String>| HookRun {
        ok,
        how,
        took_ms: started.elapsed().as_millis() as u64,
        output,
    };
    let mut target = match release::load(&layout.release_dir(release)) {
        Ok(r) => r,
        Err(e) => return outcome(false, format!("could not run: {e}"), Vec::new()),
    };
    let creds = match spawn::credentials(&target) {
        Ok(c) => c,
        Err(e) => return outcome(false, format!("could not run: {e}"), Vec::new()),
    };
    // The service's own environment, plus what tells the hook where it runs.
    let manifest = &mut target.manifest;
    let previous = store::current(layout).filter(|p| p != release);
    let mut extra = vec![
        ("SHIPJAR_HOOK", point.as_str().to_string()),
        ("SHIPJAR_VERSION", manifest.version.clone()),
        ("SHIPJAR_STAGE", manifest.stage.clone()),
        ("SHIPJAR_HOST", manifest.host.clone()),
    ];
    if let Some(previous) = previous {
        extra.push((
            "SHIPJAR_PREVIOUS_RELEASE_DIR",
            layout.release_dir(&previous).display().to_string(),
        ));
        extra.push(("SHIPJAR_PREVIOUS_RELEASE", previous));
    }
    for (key, value) in extra {
        manifest.run.env.insert(key.to_string(), value);
    }
    manifest.run.argv = hook.argv.clone();
    let (reader, writer) = match nix::unistd::pipe() {
        Ok(pair) => pair,
        Err(e) => return outcome(false, format!("could not run: pipe: {e}"), Vec::new()),
    };
    let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
    let (stdout, stderr) = match (stdio(&writer), stdio(&writer)) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => {
            return outcome(false, format!("could not run: {e}"), Vec::new());
        }
    };
    emit(point.as_str(), &format!("running {}", hook.argv.join(" ")));
    let spawned = spawn::spawn(layout, &target, creds.as_ref(), stdout, stderr);
    // Only the child holds the write end now: its exit closes the pipe.
    drop(writer);
    let child = match spawned {
        Ok(child) => child,
        Err(e) => return outcome(false, format!("could not run: {e}"), Vec::new()),
    };
    let ended = hook_wait::wait(
        child,
        std::fs::File::from(reader),
        Duration::from_millis(hook.timeout_ms),
    );
    for line in &ended.output {
        emit(point.as_str(), line);
    }
    outcome(ended.ok, ended.how, ended.output)
}
