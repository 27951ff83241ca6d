//! The host side's one error: what kind, which step, why, and the lines that
//! show it. Supervisor actions, activation steps and service commands all
//! fail with it; the agent turns it into the protocol's `AgentError`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::protocol::ErrorKind;

/// A failure on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostError {
    /// What kind of failure, for the operator to act on without reading the text.
    #[serde(default = "failed")]
    pub kind: ErrorKind,
    /// The step that failed (`start`, `settle`, `before_start`, …); empty
    /// where the caller names the step.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
    /// One line: why.
    pub message: String,
    /// The lines that show it: the last lines of the service log (at most
    /// 20) or a hook's output.
    #[serde(default)]
    pub log_tail: Vec<String>,
}

fn failed() -> ErrorKind {
    ErrorKind::Failed
}

impl HostError {
    /// A failure saying `message`, in no particular step yet.
    pub fn new(message: impl Into<String>) -> Self {
        HostError {
            kind: ErrorKind::Failed,
            step: String::new(),
            message: message.into(),
            log_tail: Vec::new(),
        }
    }

    /// The failure of `step`.
    pub fn at(step: &str, message: impl Into<String>) -> Self {
        HostError::new(message).in_step(step)
    }

    /// The same failure, as `step`'s.
    pub fn in_step(mut self, step: &str) -> Self {
        self.step = step.to_string();
        self
    }

    /// The same failure, shown by `lines`.
    pub fn with_log_tail(mut self, lines: Vec<String>) -> Self {
        self.log_tail = lines;
        self
    }
}

impl From<String> for HostError {
    fn from(message: String) -> Self {
        HostError::new(message)
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.step, self.message)
        }
    }
}

impl std::error::Error for HostError {}
