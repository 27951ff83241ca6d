//! `[artifact]`: deploy a jar from a Maven repository instead of building it.
//! Either `repository` plus Maven coordinates (`group`, `artifact`, optional
//! `classifier`; the version comes from `deploy --version`), or a full `url`
//! template holding `{{ version }}`.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::Project;
use super::diagnostics::Seg;
use super::values::{Bytes, Millis};
use crate::error::Result;

/// Default longest a host may take to download the artifact.
const DEFAULT_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Default largest artifact a host accepts.
const DEFAULT_MAX_SIZE: u64 = 2 * 1024 * 1024 * 1024;

/// `[artifact]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// The repository's base URL, e.g. `https://repo.example.com/releases`.
    pub repository: Option<Spanned<String>>,
    /// Maven groupId, e.g. `com.example`.
    pub group: Option<Spanned<String>>,
    /// Maven artifactId.
    pub artifact: Option<Spanned<String>>,
    /// Maven classifier, e.g. `standalone`.
    pub classifier: Option<Spanned<String>>,
    /// A full URL template with `{{ version }}`, in place of the coordinates.
    pub url: Option<Spanned<String>>,
    /// Who downloads the artifact.
    pub fetch: Option<Fetch>,
    /// A netrc-style file on the operator (relative to the project) with the repository's credentials.
    pub netrc: Option<PathBuf>,
    /// A PEM file on the operator (relative to the project): the only CAs trusted for `https://`.
    pub ca: Option<PathBuf>,
    /// Largest artifact a host downloads.
    #[serde(default = "default_max_size")]
    pub max_size: Bytes,
    /// Longest one host's download may take, retries included.
    #[serde(default = "default_timeout")]
    pub timeout: Millis,
}

fn default_max_size() -> Bytes {
    Bytes(DEFAULT_MAX_SIZE)
}

fn default_timeout() -> Millis {
    Millis(DEFAULT_TIMEOUT_MS)
}

/// `fetch`: who downloads the artifact from the repository.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Fetch {
    /// Each host downloads it; a host that cannot fails.
    Host,
    /// The operator downloads it once and pushes it to each host (as a local build).
    Operator,
    /// Each host downloads it; one that cannot gets it pushed by the operator.
    #[default]
    HostThenOperator,
}

impl std::fmt::Display for Fetch {
    /// As the config spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fetch::Host => "host",
            Fetch::Operator => "operator",
            Fetch::HostThenOperator => "host-then-operator",
        })
    }
}

/// Maven coordinates without the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinates {
    /// The repository's base URL, no trailing slash.
    pub repository: String,
    /// groupId.
    pub group: String,
    /// artifactId.
    pub artifact: String,
    /// Classifier, if any.
    pub classifier: Option<String>,
}

impl Coordinates {
    /// The directory of all versions: `REPO/com/example/app`.
    pub fn artifact_dir(&self) -> String {
        format!(
            "{}/{}/{}",
            self.repository,
            self.group.replace('.', "/"),
            self.artifact
        )
    }

    /// The jar of `version`: `REPO/com/example/app/1.4.2/app-1.4.2[-classifier].jar`.
    pub fn jar_url(&self, version: &str) -> String {
        let classifier = self
            .classifier
            .as_deref()
            .map(|c| format!("-{c}"))
            .unwrap_or_default();
        format!(
            "{}/{version}/{}-{version}{classifier}.jar",
            self.artifact_dir(),
            self.artifact
        )
    }

    /// `maven-metadata.xml` at the artifact level.
    pub fn metadata_url(&self) -> String {
        format!("{}/maven-metadata.xml", self.artifact_dir())
    }
}

/// What the rest of the operator needs of `[artifact]`.
#[derive(Debug, Clone)]
pub struct ArtifactSource {
    /// Coordinates, when given (publish needs them).
    pub coordinates: Option<Coordinates>,
    /// The URL template, when given.
    pub url: Option<String>,
    /// Who downloads.
    pub fetch: Fetch,
    /// The credentials file, absolute.
    pub netrc: Option<PathBuf>,
    /// The trusted CAs' PEM file, absolute.
    pub ca: Option<PathBuf>,
    /// Largest artifact accepted.
    pub max_size: u64,
    /// A host's download deadline.
    pub timeout_ms: u64,
}

impl ArtifactSource {
    /// The URL of the artifact of `version`.
    pub fn url_of(&self, version: &str) -> String {
        match (&self.url, &self.coordinates) {
            (Some(template), _) => fill_version(template, version),
            (None, Some(c)) => c.jar_url(version),
            // Validation requires one of them.
            (None, None) => String::new(),
        }
    }
}

/// `template` with each `{{ version }}` (spaces optional) replaced.
pub fn fill_version(template: &str, version: &str) -> String {
    template
        .replace("{{ version }}", version)
        .replace("{{version}}", version)
}

/// Whether a URL is one a host can download: `http://` or `https://` and a host.
fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

impl Project {
    /// `[artifact]` checked and resolved; `None` without the section.
    pub fn artifact_source(&self) -> Option<ArtifactSource> {
        let a = self.config.artifact.as_ref()?;
        let text = |s: &Option<Spanned<String>>| s.as_ref().map(|v| v.get_ref().clone());
        let coordinates = match (text(&a.repository), text(&a.group), text(&a.artifact)) {
            (Some(repository), Some(group), Some(artifact)) => Some(Coordinates {
                repository: repository.trim_end_matches('/').to_string(),
                group,
                artifact,
                classifier: text(&a.classifier),
            }),
            _ => None,
        };
        Some(ArtifactSource {
            coordinates,
            url: text(&a.url),
            fetch: a.fetch.unwrap_or_default(),
            netrc: a.netrc.as_ref().map(|p| self.dir.join(p)),
            ca: a.ca.as_ref().map(|p| self.dir.join(p)),
            max_size: a.max_size.0,
            timeout_ms: a.timeout.0,
        })
    }

    /// `[artifact]`: a repository with coordinates, or a `url` with `{{ version }}`.
    pub(super) fn validate_artifact(&self) -> Result<()> {
        let Some(a) = &self.config.artifact else {
            return Ok(());
        };
        let at = |key: &'static str| [Seg::Key("artifact"), Seg::Key(key)];
        if let Some(url) = &a.url {
            if !url.get_ref().contains("{{ version }}") && !url.get_ref().contains("{{version}}") {
                return Err(self.fail(&at("url"), "expected a URL holding `{{ version }}`"));
            }
            if !is_http_url(&fill_version(url.get_ref(), "1")) {
                return Err(self.fail(&at("url"), "expected an http:// or https:// URL"));
            }
        } else if a.repository.is_none() {
            return Err(self.fail(
                &[Seg::Key("artifact")],
                "expected `repository` with `group` and `artifact`, or a `url` template",
            ));
        }
        if let Some(repository) = &a.repository
            && !is_http_url(repository.get_ref())
        {
            return Err(self.fail(&at("repository"), "expected an http:// or https:// URL"));
        }
        if a.repository.is_some() {
            for (key, value) in [("group", &a.group), ("artifact", &a.artifact)] {
                match value {
                    None if a.url.is_none() => {
                        return Err(self.fail(
                            &at(key),
                            &format!("`repository` needs `{key}` (the Maven coordinates)"),
                        ));
                    }
                    Some(v) if !is_coordinate(v.get_ref()) => {
                        return Err(
                            self.fail(&at(key), "expected letters, digits, `.`, `-` or `_`")
                        );
                    }
                    _ => {}
                }
            }
        }
        if let Some(c) = &a.classifier
            && !is_coordinate(c.get_ref())
        {
            return Err(self.fail(
                &at("classifier"),
                "expected letters, digits, `.`, `-` or `_`",
            ));
        }
        if a.timeout.0 == 0 {
            return Err(self.fail(&at("timeout"), "expected a duration above 0"));
        }
        if a.max_size.0 == 0 {
            return Err(self.fail(&at("max_size"), "expected a size above 0"));
        }
        Ok(())
    }
}

/// A Maven coordinate part: no slash, no dot-dot, nothing a URL would read otherwise.
pub fn is_coordinate(s: &str) -> bool {
    !s.is_empty()
        && !s.contains("..")
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coords(classifier: Option<&str>) -> Coordinates {
        Coordinates {
            repository: "https://repo.example.com/releases".into(),
            group: "com.example.shop".into(),
            artifact: "cart".into(),
            classifier: classifier.map(String::from),
        }
    }

    #[test]
    fn coordinates_make_maven_layout_urls() {
        assert_eq!(
            coords(None).jar_url("1.4.2"),
            "https://repo.example.com/releases/com/example/shop/cart/1.4.2/cart-1.4.2.jar"
        );
        assert_eq!(
            coords(Some("standalone")).jar_url("1.4.2"),
            "https://repo.example.com/releases/com/example/shop/cart/1.4.2/cart-1.4.2-standalone.jar"
        );
        assert_eq!(
            coords(None).metadata_url(),
            "https://repo.example.com/releases/com/example/shop/cart/maven-metadata.xml"
        );
    }

    #[test]
    fn a_url_template_gets_the_version() {
        assert_eq!(
            fill_version("http://h/app/{{ version }}/app-{{version}}.jar", "2.0"),
            "http://h/app/2.0/app-2.0.jar"
        );
    }

    #[test]
    fn coordinates_refuse_what_a_url_would_read_otherwise() {
        assert!(is_coordinate("com.example"));
        assert!(!is_coordinate("../etc"));
        assert!(!is_coordinate("a/b"));
        assert!(!is_coordinate("a?b"));
        assert!(!is_coordinate(""));
    }
}
