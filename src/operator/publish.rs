//! `shipjar publish`: a local build uploaded to the `[artifact]` repository
//! in Maven's layout (HTTP PUT of the jar, its `.sha256` and `.sha1`, then
//! the artifact-level `maven-metadata.xml` with the version added), for
//! teams whose CI does not publish.

use std::time::SystemTime;

use sha1::Digest;

use crate::cli::PublishArgs;
use crate::error::{Error, Result};
use crate::operator::build;
use crate::operator::config::Project;
use crate::operator::config::artifact::{Coordinates, is_coordinate};
use crate::operator::output::Reporter;
use crate::operator::repository::{self, metadata};
use crate::protocol::digest::hex;

/// `shipjar publish`.
pub fn publish(project: &Project, args: &PublishArgs, reporter: &Reporter) -> Result<i32> {
    let Some(mut source) = project.artifact_source() else {
        return Err(Error::config(format!(
            "{}: no [artifact] section, so there is no repository to publish to",
            project.file.display()
        ))
        .hint("add [artifact] with `repository`, `group` and `artifact`"));
    };
    if let (Some(repository), Some(c)) = (&args.repository, source.coordinates.as_mut()) {
        c.repository = repository.trim_end_matches('/').to_string();
    }
    let Some(coordinates) = source.coordinates.clone() else {
        return Err(Error::config(
            "publish needs [artifact] `repository`, `group` and `artifact` (Maven's layout), not only a `url`",
        ));
    };
    let build = match (&args.artifact, args.skip_build) {
        (Some(path), _) => build::describe_artifact(project, path, args.version.as_deref())?,
        (None, true) => build::last_build(project)?,
        (None, false) => build::build(project, args.version.as_deref(), reporter)?,
    };
    let version = args.version.clone().unwrap_or(build.version.clone());
    if !is_coordinate(&version) {
        return Err(Error::config(format!(
            "version `{version}`: expected letters, digits, `.`, `-` or `_` (it is part of the URL)"
        )));
    }
    let jar = std::fs::read(&build.artifact)
        .map_err(|e| Error::failed(format!("cannot read {}: {e}", build.artifact.display())))?;
    let url = coordinates.jar_url(&version);
    let access = repository::access(&source, &url)?;
    let creds = &access;
    let sha1 = hex(&sha1::Sha1::digest(&jar));
    let failed = |e: String| Error::failed(format!("publish: {e}"));
    repository::put(&url, &jar, creds).map_err(failed)?;
    repository::put(&format!("{url}.sha256"), build.sha256.as_bytes(), creds).map_err(failed)?;
    repository::put(&format!("{url}.sha1"), sha1.as_bytes(), creds).map_err(failed)?;
    update_metadata(&coordinates, &version, creds).map_err(failed)?;
    reporter.result(
        &serde_json::json!({
            "ok": true,
            "url": url,
            "version": version,
            "sha256": build.sha256,
            "bytes": jar.len(),
        }),
        &format!(
            "published {url} ({} bytes, sha256 {}); deploy it with `shipjar deploy STAGE --version {version}`\n",
            jar.len(),
            build.sha256
        ),
    );
    Ok(0)
}

/// Reads the artifact-level metadata (none yet is fine), adds `version`, writes it back.
fn update_metadata(
    c: &Coordinates,
    version: &str,
    creds: &repository::Access,
) -> std::result::Result<(), String> {
    let url = c.metadata_url();
    let existing = match repository::get(&url, creds)? {
        Some(text) => Some(metadata::parse(&text).map_err(|e| format!("{url}: {e}"))?),
        None => None,
    };
    let xml = metadata::with_version(existing, &c.group, &c.artifact, version, &timestamp());
    repository::put(&url, xml.as_bytes(), creds)?;
    let sha1 = hex(&sha1::Sha1::digest(xml.as_bytes()));
    repository::put(&format!("{url}.sha1"), sha1.as_bytes(), creds)
}

/// `yyyyMMddHHmmss` in UTC, as Maven writes `lastUpdated`.
fn timestamp() -> String {
    let text = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    text.chars().filter(char::is_ascii_digit).take(14).collect()
}
