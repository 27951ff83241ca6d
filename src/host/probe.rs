//! HTTP and TCP probes against the service on this host.

use std::time::Duration;

/// Result of one HTTP GET.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Body as text (lossy UTF-8), at most 64 KiB.
    pub body: String,
}

/// GETs `url` with an overall timeout; any status code is an answer.
pub fn http_get(_url: &str, _timeout: Duration) -> Result<HttpAnswer, String> {
    todo!("probe::http_get")
}

/// Connects to 127.0.0.1:`port` within `timeout`.
pub fn tcp_connect(_port: u16, _timeout: Duration) -> Result<(), String> {
    todo!("probe::tcp_connect")
}
