//! The steps an activation is made of that both ways of switching share
//! (the plain restart in `activate` and the blue/green switch in
//! `proxied`): the operator's cancel, the deploy hooks, the version check,
//! and settling.

use std::time::{Duration, Instant};

use crate::host::error::HostError;
use crate::host::{cancel, hooks, probe, supervisor};
use crate::protocol::HookPoint;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ReleaseManifest;

pub mod settle;

/// How often and how long to ask the version endpoint once the service is healthy.
const VERSION_ATTEMPTS: u32 = 3;
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Fails `step` when the operator cancelled the activation.
pub fn cancelled(step: &str) -> Result<(), HostError> {
    if cancel::requested() {
        Err(HostError::at(step, "cancelled by the operator (Ctrl-C)"))
    } else {
        Ok(())
    }
}

/// Runs a host hook of this activation; its failure fails the step named after it,
/// with its output in place of the service log.
pub fn run_hook(
    layout: &Layout,
    release: &str,
    point: HookPoint,
    hook: &crate::protocol::manifest::HookSpec,
    emit: &dyn Fn(&str, &str),
) -> Result<(), HostError> {
    let step = match point {
        HookPoint::BeforeStart => "before_start",
        _ => "after_switch",
    };
    let ran = hooks::run(layout, release, &point, hook, emit);
    if ran.ok {
        emit(step, &format!("hook {} ({} ms)", ran.how, ran.took_ms));
        Ok(())
    } else {
        Err(HostError::at(step, format!("hook {}", ran.how)).with_log_tail(ran.output))
    }
}

/// "URL has no key `version` (its keys: app, build)": what is there helps fix `key`.
fn missing_key(url: &str, key: &str, answer: &serde_json::Value) -> String {
    match answer.as_object() {
        Some(object) if !object.is_empty() => {
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            format!("{url} has no key `{key}` (its keys: {})", keys.join(", "))
        }
        Some(_) => format!("{url} has no key `{key}` (it answered an empty object)"),
        None => format!("{url} has no key `{key}` (it answered JSON that is not an object)"),
    }
}

/// Asks the service's version endpoint; `Ok(None)` when the manifest has none.
pub fn reported_version(manifest: &ReleaseManifest) -> Result<Option<String>, String> {
    reported_version_at(manifest, None)
}

/// Like [`reported_version`], asking the instance on `port` when given.
pub fn reported_version_at(
    manifest: &ReleaseManifest,
    port: Option<u16>,
) -> Result<Option<String>, String> {
    let Some(check) = &manifest.version_check else {
        return Ok(None);
    };
    let mut check = check.clone();
    if let Some(port) = port {
        check.url = supervisor::release::with_port(&check.url, port);
    }
    let check = &check;
    let mut last_error = String::new();
    let started = Instant::now();
    for attempt in 0..VERSION_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        match probe::http_get(&check.url, VERSION_TIMEOUT) {
            Ok(answer) if (200..300).contains(&answer.status) => {
                let value: serde_json::Value = serde_json::from_str(&answer.body).map_err(|e| {
                    format!(
                        "{} did not answer JSON ({e}): {}",
                        check.url,
                        probe::said(&answer.body)
                    )
                })?;
                return match value.get(&check.key) {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    Some(other) if !other.is_null() => Ok(Some(other.to_string())),
                    _ => Err(missing_key(&check.url, &check.key, &value)),
                };
            }
            Ok(answer) => {
                last_error = format!("{} answered HTTP {}", check.url, answer.status);
                let said = probe::said(&answer.body);
                if !said.is_empty() {
                    last_error.push_str(&format!(": {said}"));
                }
            }
            Err(e) => last_error = format!("{}: {e}", check.url),
        }
        if started.elapsed() > VERSION_TIMEOUT {
            break;
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::missing_key;

    #[test]
    fn a_missing_version_key_lists_the_keys_there() {
        let answer = serde_json::json!({"app": "hello", "build": "1.2"});
        assert_eq!(
            missing_key("http://x/version", "version", &answer),
            "http://x/version has no key `version` (its keys: app, build)"
        );
        assert!(missing_key("u", "v", &serde_json::json!([1])).ends_with("not an object)"));
    }
}
