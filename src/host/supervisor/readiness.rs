//! The readiness channel: how the supervisor tells whoever started it that
//! the service is ready (or why not) and what it is doing. Detached, one line
//! on stdout to the waiting `service start`; in the foreground (`service run`),
//! sd_notify messages to systemd and errors on stderr.

use crate::host::error::HostError;
use std::fs;
use std::io::{self, Write};
use std::rc::Rc;

use crate::protocol::layout::Layout;

use super::StartReport;
use super::logfile;
use crate::host::os::notify::Notifier;

/// Prefix of the readiness line on success.
pub use crate::host::os::detached::READY;

/// Prefix of the readiness line on failure.
pub use crate::host::os::detached::FAILED;

/// Where readiness and state go: to `service start` or to the process manager.
pub enum ReadinessChannel {
    /// `service start` reads one line from our stdout.
    Detached {
        /// The line went out already.
        sent: bool,
    },
    /// `service run`: sd_notify when `NOTIFY_SOCKET` is set.
    Foreground {
        /// The notification socket, if any.
        notifier: Option<Rc<Notifier>>,
    },
}

impl ReadinessChannel {
    /// The channel of a detached process (one line to `service start`) or
    /// of one in the foreground (sd_notify, when systemd gave a socket),
    /// with the notifier for the watchdog.
    pub fn open(foreground: bool) -> (ReadinessChannel, Option<Rc<Notifier>>) {
        if !foreground {
            return (ReadinessChannel::Detached { sent: false }, None);
        }
        let notifier = Notifier::from_env().map(Rc::new);
        (
            ReadinessChannel::Foreground {
                notifier: notifier.clone(),
            },
            notifier,
        )
    }

    /// The service is healthy for the first time.
    pub fn ready(&mut self, report: &StartReport) {
        match self {
            ReadinessChannel::Detached { .. } => match serde_json::to_string(report) {
                Ok(json) => self.send_line(&format!("{READY}{json}")),
                Err(e) => self.send_line(&format!("{FAILED}cannot encode report: {e}")),
            },
            ReadinessChannel::Foreground { notifier } => {
                if let Some(n) = notifier {
                    n.send(&format!(
                        "READY=1\nSTATUS=healthy: pid {}, release {}\nMAINPID={}",
                        report.pid,
                        report.release,
                        std::process::id()
                    ));
                }
            }
        }
    }

    /// The first start failed: say why, with the end of the log.
    pub fn failed(&mut self, message: &str, layout: &Layout) {
        let err = HostError::new(message)
            .with_log_tail(logfile::service_tail(layout, logfile::TAIL_LINES));
        match self {
            ReadinessChannel::Detached { .. } => match serde_json::to_string(&err) {
                Ok(json) => self.send_line(&format!("{FAILED}{json}")),
                Err(_) => self.send_line(&format!("{FAILED}{message}")),
            },
            ReadinessChannel::Foreground { notifier } => {
                if let Some(n) = notifier {
                    n.send(&format!("STATUS=failed: {message}"));
                }
                let mut err_out = io::stderr().lock();
                let _ = writeln!(err_out, "error: {}", err.message);
                if !err.log_tail.is_empty() {
                    let _ = writeln!(err_out, "last lines of the service log:");
                    for line in &err.log_tail {
                        let _ = writeln!(err_out, "  {line}");
                    }
                }
            }
        }
    }

    /// A one-line state for `systemctl status`.
    pub fn status(&self, text: &str) {
        if let ReadinessChannel::Foreground {
            notifier: Some(n), ..
        } = self
        {
            n.send(&format!("STATUS={text}"));
        }
    }

    /// A stop has begun.
    pub fn stopping(&self) {
        if let ReadinessChannel::Foreground {
            notifier: Some(n), ..
        } = self
        {
            n.send("STOPPING=1\nSTATUS=stopping");
        }
    }

    /// Writes the line once, then points stdout at /dev/null so `start` sees
    /// EOF and nothing we do later can block on, or die from, a closed pipe.
    fn send_line(&mut self, line: &str) {
        let ReadinessChannel::Detached { sent } = self else {
            return;
        };
        if *sent {
            return;
        }
        *sent = true;
        let mut out = io::stdout().lock();
        // `start` may have given up already; the supervisor carries on regardless.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        drop(out);
        #[allow(clippy::disallowed_methods)] // root-only: /dev/null
        let null = fs::OpenOptions::new().write(true).open("/dev/null");
        if let Ok(null) = null {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto fd 1, which we own as our stdout.
            unsafe {
                libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
            }
        }
    }
}
