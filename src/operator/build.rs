//! `shipjar build`: run the build command, find the one artifact, hash it,
//! settle the version, and record a build manifest in `.shipjar/build.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::operator::config::Project;
use crate::operator::output::Reporter;
use crate::operator::render;
use crate::protocol::digest::{is_sha256, sha256_file, short};
use crate::protocol::files::write_synced;

/// What a build produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildManifest {
    /// Absolute path of the artifact.
    pub artifact: PathBuf,
    /// sha256 of the artifact, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The version the release will report.
    pub version: String,
    /// `git rev-parse HEAD` of the project, if it is a git checkout.
    pub git_commit: Option<String>,
    /// When the artifact was built (RFC 3339, UTC).
    pub build_time: String,
}

/// Where the last build is recorded.
pub fn manifest_path(project: &Project) -> PathBuf {
    project.dir.join(".shipjar").join("build.json")
}

/// Runs the build command and records the result.
pub fn build(
    project: &Project,
    version: Option<&str>,
    reporter: &Reporter,
) -> Result<BuildManifest> {
    let Some(build) = &project.config.build else {
        return Err(Error::config(format!(
            "{}: no [build] section, so there is nothing to build",
            project.file.display()
        ))
        .hint("add [build] with `command` and `artifact`, or deploy with --artifact PATH"));
    };
    reporter.note(&format!("build: running `{}`", build.command));
    let started = std::time::Instant::now();
    // The build's own output goes to stderr so stdout stays clean for --json.
    let status = render::without_secret_variables(&mut Command::new("sh"))
        .arg("-c")
        .arg(&build.command)
        .current_dir(&project.dir)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| Error::failed(format!("build: cannot run `{}`: {e}", build.command)))?;
    if !status.success() {
        return Err(Error::failed(format!(
            "build: `{}` failed ({status})",
            build.command
        )));
    }
    let artifact = find_artifact(project, build.artifact.get_ref())?;
    let manifest = describe_artifact(project, &artifact, version)?;
    record(project, &manifest)?;
    reporter.note(&format!(
        "build: {} ({} bytes, sha256 {}), version {} in {} ms",
        manifest.artifact.display(),
        manifest.size,
        short(&manifest.sha256),
        manifest.version,
        started.elapsed().as_millis()
    ));
    Ok(manifest)
}

/// Hashes an artifact and settles its version, without building.
pub fn describe_artifact(
    project: &Project,
    artifact: &Path,
    version: Option<&str>,
) -> Result<BuildManifest> {
    let artifact = std::path::absolute(artifact)
        .map_err(|e| Error::config(format!("{}: {e}", artifact.display())))?;
    let meta = std::fs::metadata(&artifact)
        .map_err(|e| Error::config(format!("artifact {}: {e}", artifact.display())))?;
    if !meta.is_file() {
        return Err(Error::config(format!(
            "artifact {} is not a file",
            artifact.display()
        )));
    }
    let sha256 = sha256_file(&artifact)
        .map_err(|e| Error::failed(format!("cannot hash {}: {e}", artifact.display())))?;
    let git_commit = git_commit(&project.dir);
    let version = match version {
        Some(v) => v.to_string(),
        None => resolve_version(project, &sha256)?,
    };
    if version.is_empty() || version.chars().any(char::is_control) {
        return Err(Error::config(format!("invalid version `{version}`")));
    }
    let build_time = meta
        .modified()
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    Ok(BuildManifest {
        artifact,
        size: meta.len(),
        sha256,
        version,
        git_commit,
        build_time,
    })
}

/// The last recorded build, checked against the file it names.
pub fn last_build(project: &Project) -> Result<BuildManifest> {
    let path = manifest_path(project);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::config(format!("no recorded build at {}: {e}", path.display()))
            .hint("run `shipjar build` first, or drop --skip-build")
    })?;
    let manifest: BuildManifest = serde_json::from_str(&text).map_err(|e| {
        Error::config(format!("{} is damaged: {e}", path.display()))
            .hint("run `shipjar build` again")
    })?;
    if !is_sha256(&manifest.sha256) {
        return Err(Error::config(format!(
            "{} is damaged: `sha256` is not 64 lower-case hex digits",
            path.display()
        ))
        .hint("run `shipjar build` again"));
    }
    let actual = sha256_file(&manifest.artifact).map_err(|e| {
        Error::config(format!(
            "recorded artifact {}: {e}",
            manifest.artifact.display()
        ))
        .hint("run `shipjar build` again")
    })?;
    if actual != manifest.sha256 {
        return Err(Error::config(format!(
            "{} changed since it was built (sha256 {} now, {} recorded)",
            manifest.artifact.display(),
            short(&actual),
            short(&manifest.sha256)
        ))
        .hint("run `shipjar build` again"));
    }
    Ok(manifest)
}

fn record(project: &Project, manifest: &BuildManifest) -> Result<()> {
    let path = manifest_path(project);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let text = serde_json::to_string_pretty(manifest).map_err(|e| Error::failed(e.to_string()))?;
    write_synced(&path, format!("{text}\n").as_bytes(), 0o644)
        .map_err(|e| Error::failed(format!("cannot write {}: {e}", path.display())))
}

/// The one file matching the artifact glob.
fn find_artifact(project: &Project, pattern: &str) -> Result<PathBuf> {
    let full = project.dir.join(pattern);
    let matches: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
        .map_err(|e| {
            Error::config(format!(
                "{}: [build] artifact `{pattern}` is not a valid glob: {e}",
                project.file.display()
            ))
        })?
        .filter_map(|entry| entry.ok())
        .filter(|p| p.is_file())
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::failed(format!(
            "build: no file matches the artifact pattern `{pattern}` in {}",
            project.dir.display()
        ))
        .hint("check [build] artifact, or that the build command wrote its output there")),
        many => Err(Error::failed(format!(
            "build: the artifact pattern `{pattern}` matches {} files: {}",
            many.len(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .hint("make [build] artifact match exactly one file")),
    }
}

fn resolve_version(project: &Project, sha256: &str) -> Result<String> {
    let build = project.config.build.as_ref();
    if let Some(v) = build.and_then(|b| b.version.clone()) {
        return Ok(v);
    }
    if let Some(cmd) = build.and_then(|b| b.version_command.as_deref()) {
        let out = render::without_secret_variables(&mut Command::new("sh"))
            .arg("-c")
            .arg(cmd)
            .current_dir(&project.dir)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| Error::failed(format!("version: cannot run `{cmd}`: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.lines().next().unwrap_or("").trim();
        if !out.status.success() || version.is_empty() {
            return Err(Error::failed(format!(
                "version: `{cmd}` failed or printed nothing ({})",
                out.status
            ))
            .hint("fix [build] version_command, or pass --version V"));
        }
        return Ok(version.to_string());
    }
    // No version configured: the artifact's own identity is the most honest answer.
    Ok(format!("sha-{}", short(sha256)))
}

fn git_commit(dir: &Path) -> Option<String> {
    let out = render::without_secret_variables(&mut Command::new("git"))
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
