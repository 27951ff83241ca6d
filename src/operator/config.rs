//! `shipjar.toml`: parsing with spans, validation.

/// Checks a service name: `[a-z][a-z0-9-]*`, at most 32 characters.
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
