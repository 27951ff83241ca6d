//! `watch`: the release a canary runs, kept under watch for its pause — it
//! must stay up (no exit, no restart by its supervisor) and pass every
//! liveness probe, by the rules of `[health] settle`.

use std::time::Duration;

use crate::host::steps::settle;
use crate::host::{proxied, proxy, store, supervisor};
use crate::protocol::WatchReport;
use crate::protocol::layout::Layout;

/// Watches the service of `layout` (behind the proxy, the instance taking
/// traffic) run `release` for `window`.
pub fn watch(
    layout: &Layout,
    release: &str,
    window: Duration,
    emit: &dyn Fn(&str, &str),
) -> WatchReport {
    let run_layout = match proxied::spec(layout) {
        Some(_) => layout.with_instance(proxy::active(layout)),
        None => layout.clone(),
    };
    let service = supervisor::status(&run_layout);
    let failed = |reason: String, pid: Option<i32>| WatchReport {
        ok: false,
        pid,
        reason: Some(reason),
        log_tail: crate::host::supervisor::logfile::service_tail(
            &run_layout,
            crate::host::supervisor::logfile::TAIL_LINES,
        ),
    };
    let Some(pid) = service.pid else {
        return failed(
            format!("the service is not running ({})", service.state),
            None,
        );
    };
    if service.release.as_deref() != Some(release) {
        return failed(
            format!(
                "the service runs release {}, not the canary's {release}",
                service.release.as_deref().unwrap_or("(unknown)")
            ),
            Some(pid),
        );
    }
    let manifest = match store::read_manifest(layout, release) {
        Ok(manifest) => manifest,
        Err(e) => return failed(e, Some(pid)),
    };
    match settle::watch(&run_layout, &manifest.health, pid, window, emit) {
        Ok(()) => WatchReport {
            ok: true,
            pid: Some(pid),
            reason: None,
            log_tail: Vec::new(),
        },
        Err(e) => WatchReport {
            ok: false,
            pid: Some(pid),
            reason: Some(e.message),
            log_tail: e.log_tail,
        },
    }
}
