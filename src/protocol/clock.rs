//! Wall-clock time as both sides write it (RFC 3339, UTC, milliseconds).

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
