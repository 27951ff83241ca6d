//! Deploy hooks on this host: a command run in a release's directory with
//! that release's config files and environment, as the service user (when
//! the agent runs as root), in its own process group, killed at its timeout.
//! Its output is kept (the last lines) for the operator, which masks secrets
//! before printing anything.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::host::store;
use crate::host::supervisor::{release, spawn};
use crate::protocol::HookPoint;
use crate::protocol::HookRun;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::HookSpec;

/// Lines of a hook's output kept for the report.
const OUTPUT_LINES: usize = 40;

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
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return outcome(false, format!("could not run: {e}"), Vec::new()),
    };
    let (lines_tx, lines_rx) = mpsc::channel::<VecDeque<String>>();
    std::thread::spawn(move || {
        let mut kept = VecDeque::new();
        for line in BufReader::new(std::fs::File::from(reader)).split(b'\n') {
            let Ok(line) = line else { break };
            if kept.len() == OUTPUT_LINES {
                kept.pop_front();
            }
            kept.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        let _ = lines_tx.send(kept);
    });
    let pgid = Pid::from_raw(child.id() as i32);
    let deadline = started + Duration::from_millis(hook.timeout_ms);
    let (ok, how) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.success(), describe(status)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = killpg(pgid, Signal::SIGKILL);
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
    let _ = killpg(pgid, Signal::SIGKILL);
    let output: Vec<String> = lines_rx
        .recv_timeout(Duration::from_secs(5))
        .map(Vec::from)
        .unwrap_or_default();
    for line in &output {
        emit(point.as_str(), line);
    }
    outcome(ok, how, output)
}

/// `exited with code N` or `killed by SIGNAME`.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!(
            "killed by {}",
            Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.as_str().to_string())
        ),
        _ => "ended".to_string(),
    }
}
