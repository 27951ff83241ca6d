//! Everything the operator prints goes through here, so secrets are masked in
//! one place: plain lines for people, JSON lines with `--json`.
//!
//! Masking works on values, before anything is encoded: a secret with `"`,
//! `\` or a control character would no longer match once JSON escaped it.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::error::Error;
use crate::protocol::{ResourceStatus, wire_enum};

pub use crate::protocol::mask::MASK;
use crate::protocol::mask::{Masker, SecretValue};

/// The secrets registered so far and the masker built from them.
struct Registry {
    secrets: Vec<SecretValue>,
    masker: Masker,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Mutex::new(Registry {
            secrets: Vec::new(),
            masker: Masker::new(&[]),
        })
    })
}

/// Registers a secret value: from now on it is masked, in every form, in
/// everything printed (see `protocol::mask`).
pub fn register_secret(value: &str, allow_short: bool) {
    if value.is_empty() {
        return;
    }
    let mut registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    let secret = SecretValue {
        value: value.to_string(),
        allow_short,
    };
    if !registry.secrets.contains(&secret) {
        registry.secrets.push(secret);
        registry.masker = Masker::new(&registry.secrets);
    }
}

/// `text` with every registered secret value masked.
pub fn redact(text: &str) -> String {
    let registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    registry.masker.mask(text).into_owned()
}

/// `bytes` masked (any bytes, not only UTF-8).
pub fn redact_bytes(bytes: &[u8]) -> Vec<u8> {
    let registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    registry.masker.mask_bytes(bytes).into_owned()
}

/// `value` with every string in it (keys too) masked: done before encoding.
pub fn redact_value(value: serde_json::Value) -> serde_json::Value {
    let registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    registry.masker.mask_json(value)
}

/// One JSON line, masked before it is encoded.
fn json_text(value: &serde_json::Value) -> String {
    serde_json::to_string(&redact_value(value.clone())).unwrap_or_default()
}

/// Prints an error to stderr (masked); with `--json` also as a result object on stdout.
pub fn print_error(err: &Error, json: bool) {
    eprintln!("error: {}", redact(&err.to_string()));
    if json {
        let value = json!({
            "event": "result", "ok": false, "error": err.message,
            "hints": err.hints, "exit_code": err.exit_code(),
        });
        let _ = writeln!(std::io::stdout().lock(), "{}", json_text(&value));
    }
}

wire_enum! {
    /// How one step of one host went, as shown in step events.
    pub enum StepStatus {
        /// Done, or already as wanted.
        Ok => "ok",
        /// Could not be done; the host's run fails here.
        Failed => "failed",
        /// Progress worth showing, not a verdict.
        Info => "info",
        /// Done, but with something the operator should know.
        Warning => "warning",
        /// A provisioned resource was changed to what is wanted.
        Changed => "changed",
        /// A provisioned resource would change (dry run).
        WouldChange => "would_change",
    }
}

impl From<ResourceStatus> for StepStatus {
    fn from(status: ResourceStatus) -> Self {
        match status {
            ResourceStatus::Ok => StepStatus::Ok,
            ResourceStatus::Changed => StepStatus::Changed,
            ResourceStatus::WouldChange => StepStatus::WouldChange,
            ResourceStatus::Failed => StepStatus::Failed,
            // A newer agent's word is shown as it came.
            ResourceStatus::Unknown(word) => StepStatus::Unknown(word),
        }
    }
}

/// Progress and results of one operator command.
pub struct Reporter {
    json: bool,
    started: Instant,
    terminal: bool,
    progress: Mutex<Option<Progress>>,
}

/// The live view on a terminal: one overall bar, and the hosts in flight with
/// their current step as its message.
struct Progress {
    bar: indicatif::ProgressBar,
    in_flight: Vec<(String, String)>,
}

impl Reporter {
    /// A reporter printing JSON lines or plain text.
    pub fn new(json: bool) -> Self {
        Reporter {
            json,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            progress: Mutex::new(None),
        }
    }

    /// On a terminal, shows a live view for `hosts` hosts until the result.
    pub fn start_progress(&self, hosts: usize) {
        if self.json || !self.terminal {
            return;
        }
        let bar = indicatif::ProgressBar::new(hosts as u64);
        let style = indicatif::ProgressStyle::with_template(
            "[{elapsed}] {bar:24} {pos}/{len} hosts  {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        if let Ok(mut p) = self.progress.lock() {
            *p = Some(Progress {
                bar,
                in_flight: Vec::new(),
            });
        }
    }

    /// Counts a host as done in the live view.
    pub fn host_done(&self, host: &str) {
        if let Ok(mut guard) = self.progress.lock()
            && let Some(p) = guard.as_mut()
        {
            p.in_flight.retain(|(h, _)| h != host);
            p.bar.inc(1);
            p.bar.set_message(redact(&in_flight_message(&p.in_flight)));
        }
    }

    fn stop_progress(&self) {
        if let Ok(mut guard) = self.progress.lock()
            && let Some(p) = guard.take()
        {
            p.bar.finish_and_clear();
        }
    }

    /// One step of one host: `[host] step: message`.
    pub fn step(&self, host: &str, step: &str, status: StepStatus, message: &str) {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        if self.json {
            self.json_line(&json!({
                "event": "step", "host": host, "step": step, "status": status,
                "message": message, "elapsed_ms": elapsed_ms,
            }));
            return;
        }
        if let Ok(mut guard) = self.progress.lock()
            && let Some(p) = guard.as_mut()
        {
            // Failures and warnings stay on screen; the rest only moves the view.
            if matches!(status, StepStatus::Failed | StepStatus::Warning) {
                p.bar.println(redact(&format!(
                    "[{host}] {step} {}: {message}",
                    status.as_str().to_uppercase()
                )));
            }
            match p.in_flight.iter_mut().find(|(h, _)| h == host) {
                Some(entry) => entry.1 = step.to_string(),
                None => p.in_flight.push((host.to_string(), step.to_string())),
            }
            p.bar.set_message(redact(&in_flight_message(&p.in_flight)));
            return;
        }
        {
            let stamp = if !self.terminal {
                format!("{} ", crate::protocol::clock::now_rfc3339())
            } else {
                String::new()
            };
            let mark = match status {
                StepStatus::Failed => " FAILED",
                _ => "",
            };
            self.text_err(&format!("{stamp}[{host}] {step}{mark}: {message}"));
        }
    }

    /// One line of a host's service log: `[host] line` on stdout.
    pub fn log_line(&self, host: &str, line: &str) {
        if self.json {
            self.json_line(&json!({"event": "log", "host": host, "line": line}));
        } else {
            // The host name too: a secret may be anything, a host name included.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", redact(&format!("[{host}] {line}")));
        }
    }

    /// A note not tied to a host.
    pub fn note(&self, message: &str) {
        if let Ok(guard) = self.progress.lock()
            && let Some(p) = guard.as_ref()
        {
            p.bar.println(redact(message));
            return;
        }
        if self.json {
            self.json_line(&json!({"event": "note", "message": message}));
        } else {
            self.text_err(message);
        }
    }

    /// The final result: a JSON object with `--json`, else the given text on stdout.
    pub fn result<T: Serialize>(&self, value: &T, text: &str) {
        self.stop_progress();
        if self.json {
            let mut value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
            if let Some(obj) = value.as_object_mut() {
                obj.insert("event".into(), "result".into());
            }
            self.json_line(&value);
        } else {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{}", redact(text));
            let _ = out.flush();
        }
    }

    fn json_line(&self, value: &serde_json::Value) {
        let text = json_text(value);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    fn text_err(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}", redact(line));
    }
}

/// "app1: health, app2: upload (+3 more)".
fn in_flight_message(in_flight: &[(String, String)]) -> String {
    let shown: Vec<String> = in_flight
        .iter()
        .take(4)
        .map(|(h, s)| format!("{h}: {s}"))
        .collect();
    let more = in_flight.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} (+{more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_statuses_keep_their_words_in_json() {
        let words: Vec<String> = [
            StepStatus::Ok,
            StepStatus::Failed,
            StepStatus::Info,
            StepStatus::Warning,
            StepStatus::Changed,
            StepStatus::WouldChange,
            StepStatus::from(ResourceStatus::Unknown("drifted".into())),
        ]
        .iter()
        .map(|s| json!({ "status": s })["status"].to_string())
        .collect();
        assert_eq!(
            words,
            [
                "\"ok\"",
                "\"failed\"",
                "\"info\"",
                "\"warning\"",
                "\"changed\"",
                "\"would_change\"",
                "\"drifted\""
            ]
        );
        assert_eq!(
            StepStatus::from(ResourceStatus::WouldChange),
            StepStatus::WouldChange
        );
    }

    #[test]
    fn registered_secrets_are_masked_longest_first() {
        register_secret("hunter2-pass", false);
        register_secret("hunter2-pass-extra", false);
        assert_eq!(
            redact("pw=hunter2-pass-extra and hunter2-pass"),
            "pw=******** and ********"
        );
    }

    #[test]
    fn secrets_that_json_would_escape_are_masked_before_encoding() {
        let secret = "s3\"cr\\et\n\u{1}ü-9f1e";
        register_secret(secret, false);
        let value = json!({"line": format!("pw={secret}"), secret: [secret]});
        let text = json_text(&value);
        let back: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(back["line"], "pw=********");
        assert_eq!(back[MASK][0], MASK);
        assert!(!text.contains("cr\\\\et"), "{text}");
    }

    #[test]
    fn a_short_secret_is_masked_only_as_a_whole_word() {
        register_secret("x9", true);
        assert_eq!(
            redact("pw=x9; id x9x9, ax9 x9b (x9)"),
            "pw=********; id x9x9, ax9 x9b (********)"
        );
    }
}
