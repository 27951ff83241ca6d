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

/// Longest path we accept from a manifest, in bytes.
const MAX_PATH: usize = 1024;
/// Longest name in a path (the file systems' NAME_MAX).
const MAX_NAME: usize = 255;

/// A path inside a release: relative, only plain components (no `..`, `.`,
/// root or empty parts), no NUL, at most 1 KiB. The one rule for every
/// path-like field a manifest carries.
pub fn relative_path(path: &str) -> Result<&std::path::Path, String> {
    let shown: String = path
        .chars()
        .take(60)
        .collect::<String>()
        .escape_debug()
        .to_string();
    let shown = if path.chars().count() > 60 {
        format!("{shown}…")
    } else {
        shown
    };
    let p = std::path::Path::new(path);
    let plain = p
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if path.contains('\0') {
        return Err(format!(
            "`{shown}` contains a NUL byte, which no path may hold"
        ));
    }
    if path.len() > MAX_PATH || path.split('/').any(|part| part.len() > MAX_NAME) {
        return Err(format!(
            "`{shown}` is too long: at most {MAX_NAME} bytes a name and {MAX_PATH} in all"
        ));
    }
    if path.is_empty()
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        || !plain
    {
        return Err(format!(
            "`{shown}` must be a relative path of plain names (no `..`, `.`, leading `/` or empty parts)"
        ));
    }
    Ok(p)
}

/// A single file name: a relative path of exactly one plain component.
pub fn file_name(name: &str) -> Result<&std::path::Path, String> {
    let p = relative_path(name)?;
    if p.components().count() != 1 {
        return Err(format!(
            "`{}` must be a file name without `/`",
            name.escape_debug()
        ));
    }
    Ok(p)
}

/// Names shipjar itself writes in a release directory; `[service] jar`
/// (the artifact's link there) must not take one of them, or writing the
/// release would go through the link into the artifact store.
pub const RESERVED_IN_RELEASE: [&str; 5] = [
    super::manifest::MANIFEST_FILE,
    "config",
    super::layout::CDS_ARCHIVE,
    super::layout::CDS_IDENTITY,
    super::layout::RELEASE_SECRETS,
];

/// The name of the artifact's link in a release (`[service] jar`): one plain
/// file name, not hidden, and none of [`RESERVED_IN_RELEASE`].
pub fn jar_name(name: &str) -> Result<(), String> {
    file_name(name)?;
    if name.starts_with('.') {
        return Err(format!(
            "`{}` must not start with `.` (hidden names are shipjar's temporary files)",
            name.escape_debug()
        ));
    }
    if RESERVED_IN_RELEASE.contains(&name) {
        return Err(format!(
            "`{name}` is a name shipjar writes in every release ({}); name the jar e.g. \"{}.jar\"",
            RESERVED_IN_RELEASE.join(", "),
            name.to_ascii_lowercase()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jar_name_is_plain_and_not_one_shipjar_writes() {
        assert!(jar_name("hello.jar").is_ok());
        for bad in [
            "RELEASE", "config", "cds.jsa", "cds.json", "SECRETS", ".x.jar", "a/b.jar", "",
        ] {
            assert!(jar_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn paths_from_a_manifest_stay_inside_the_release() {
        for good in ["app.jar", "conf/logback.xml", "a-b_c.d"] {
            assert!(relative_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            ".",
            "..",
            "a\0b",
        ] {
            assert!(relative_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(relative_path(&"a".repeat(2000)).is_err());
        assert!(file_name("app.jar").is_ok());
        assert!(file_name("lib/app.jar").is_err());
        assert!(file_name("/usr/bin/java").is_err());
    }
}
