//! Names that become paths or users on a host, checked the same way on both sides.

/// Checks a service name: `[a-z][a-z0-9-]*`, at most 32 characters.
/// Part of the protocol because it becomes paths and a unix user on the host.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
        && name.len() <= 32;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid service name `{name}`: expected [a-z][a-z0-9-]*, at most 32 characters"
        ))
    }
}

/// Whether `id` is a safe release id (no path tricks).
pub fn is_release_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
