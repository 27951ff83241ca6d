//! The artifact repository as the operator sees it: the credentials from the
//! netrc file (registered as secrets), the sha256 of a version resolved
//! without building, the operator's own copy when it must push, and HTTP PUT
//! for `publish`.

pub mod metadata;
pub mod netrc;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::operator::config::Project;
use crate::operator::config::artifact::{ArtifactSource, Fetch, is_coordinate};
use crate::operator::output;
use crate::protocol::digest::{hex, is_sha256};
use crate::protocol::http;
use crate::protocol::mask::base64_standard;
use crate::protocol::{Credentials, FetchSpec};

/// Longest a small request (a `.sha256`, the metadata, a PUT's answer) may take.
const SMALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An artifact resolved in the repository: what each host is asked to fetch.
#[derive(Debug)]
pub struct Remote {
    /// The jar's URL, without credentials.
    pub url: String,
    /// Its sha256.
    pub sha256: String,
    /// Who downloads it.
    pub fetch: Fetch,
    /// The repository's credentials and trusted CAs.
    pub access: Access,
    /// Largest size a host accepts.
    pub max_size: u64,
    /// A host's download deadline.
    pub timeout_ms: u64,
    /// The operator's own copy, downloaded on first need (a push).
    pub local: PathBuf,
    /// One download of the operator's copy at a time.
    downloading: Mutex<()>,
}

impl Remote {
    /// What a host is sent.
    pub fn fetch_spec(&self) -> FetchSpec {
        FetchSpec {
            url: self.url.clone(),
            sha256: self.sha256.clone(),
            max_size: self.max_size,
            timeout_ms: self.timeout_ms,
            credentials: self.access.credentials.clone(),
            ca: self.access.ca.clone(),
        }
    }

    /// The operator's copy, downloaded and checked if it is not there yet.
    pub fn ensure_local(&self) -> std::result::Result<&Path, String> {
        let _one = self.downloading.lock().unwrap_or_else(|e| e.into_inner());
        if !self.local.is_file() {
            download(self, &self.local, None)?;
        }
        Ok(&self.local)
    }
}

/// What a request to the repository needs besides its URL.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `[artifact] netrc`'s login and password for the repository's host.
    pub credentials: Option<Credentials>,
    /// `[artifact] ca`'s PEM text: the only authorities trusted for `https://`.
    pub ca: Option<String>,
}

/// The credentials and trusted CAs of `[artifact]` for `url`.
pub fn access(source: &ArtifactSource, url: &str) -> Result<Access> {
    let ca = match &source.ca {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::config(format!(
                    "[artifact] ca: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            http::certificates(&text, &format!("[artifact] ca: {}", path.display()))
                .map_err(Error::config)?;
            Some(text)
        }
        None => None,
    };
    Ok(Access {
        credentials: credentials(source, url)?,
        ca,
    })
}

/// The credentials of `[artifact] netrc` for `url`'s host, registered as secrets.
fn credentials(source: &ArtifactSource, url: &str) -> Result<Option<Credentials>> {
    let Some(path) = &source.netrc else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!(
            "[artifact] netrc: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let host = netrc::url_host(url).unwrap_or_default();
    let found = netrc::credentials_for(&text, host);
    match &found {
        Some(c) => {
            output::register_secret(&c.password, true);
            output::register_secret(&c.login, true);
        }
        None => {
            return Err(Error::config(format!(
                "[artifact] netrc: {} has no `machine {host}` (or `default`) entry with a login and password",
                path.display()
            )));
        }
    }
    Ok(found)
}

/// The artifact of `version`: its URL and sha256 (`--sha256`, else the
/// `.sha256` companion, else downloaded once and hashed, checked against the
/// `.sha1` companion when there is one).
pub fn resolve(
    project: &Project,
    source: &ArtifactSource,
    version: &str,
    sha256: Option<&str>,
) -> Result<Remote> {
    if !is_coordinate(version) {
        return Err(Error::config(format!(
            "--version `{version}`: expected letters, digits, `.`, `-` or `_` (it is part of the artifact's URL)"
        )));
    }
    let url = source.url_of(version);
    let access = access(source, &url)?;
    let cache = project.dir.join(".shipjar").join("artifacts");
    let mut remote = Remote {
        url: url.clone(),
        sha256: String::new(),
        fetch: source.fetch,
        access,
        max_size: source.max_size,
        timeout_ms: source.timeout_ms,
        local: PathBuf::new(),
        downloading: Mutex::new(()),
    };
    let sha256 = match sha256 {
        Some(given) if is_sha256(&given.to_ascii_lowercase()) => given.to_ascii_lowercase(),
        Some(given) => {
            return Err(Error::config(format!(
                "--sha256 `{given}` is not 64 hex digits"
            )));
        }
        None => companion_sha256(&remote, &cache)?,
    };
    remote.local = cache.join(format!("{sha256}.jar"));
    remote.sha256 = sha256;
    Ok(remote)
}

/// The `.sha256` companion's hash; without one, the jar downloaded into the
/// cache and hashed (checked against `.sha1` when that exists).
fn companion_sha256(remote: &Remote, cache: &Path) -> Result<String> {
    let failed = |e: String| Error::failed(e).hint("give the artifact's sha256 with --sha256 HEX");
    if let Some(text) = get_text(remote, &format!("{}.sha256", remote.url)).map_err(failed)? {
        let word = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if is_sha256(&word) {
            return Ok(word);
        }
        return Err(failed(format!(
            "{}.sha256 does not hold a sha256",
            remote.url
        )));
    }
    let sha1 = get_text(remote, &format!("{}.sha1", remote.url))
        .map_err(failed)?
        .map(|t| {
            t.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        });
    // No sha256 published: the operator downloads it once (kept for a push) and hashes it.
    std::fs::create_dir_all(cache)
        .map_err(|e| Error::failed(format!("cannot create {}: {e}", cache.display())))?;
    let tmp = cache.join(format!(".download-{}", std::process::id()));
    let sha256 = download(remote, &tmp, sha1.as_deref()).map_err(failed)?;
    let dest = cache.join(format!("{sha256}.jar"));
    std::fs::rename(&tmp, &dest)
        .map_err(|e| Error::failed(format!("cannot keep {}: {e}", dest.display())))?;
    Ok(sha256)
}

/// An agent for the repository with a global deadline.
fn agent(timeout: Duration, access: &Access) -> std::result::Result<ureq::Agent, String> {
    http::agent(timeout, None, access.ca.as_deref())
}

fn authorization(credentials: Option<&Credentials>) -> Option<String> {
    credentials.map(|c| {
        format!(
            "Basic {}",
            base64_standard(format!("{}:{}", c.login, c.password).as_bytes())
        )
    })
}

/// A small text file; `None` when the repository has none (404).
fn get_text(remote: &Remote, url: &str) -> std::result::Result<Option<String>, String> {
    let mut request = agent(SMALL_TIMEOUT, &remote.access)?.get(url);
    if let Some(auth) = authorization(remote.access.credentials.as_ref()) {
        request = request.header("Authorization", auth);
    }
    let mut response = request.call().map_err(|e| http::call_error(url, &e))?;
    match response.status().as_u16() {
        200 => response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .map(Some)
            .map_err(|e| format!("{url}: {e}")),
        404 => Ok(None),
        status => Err(status_error(
            status,
            url,
            remote.access.credentials.is_some(),
        )),
    }
}

/// What an HTTP status from the repository means, and what to do.
pub fn status_error(status: u16, url: &str, with_credentials: bool) -> String {
    match status {
        401 | 403 if with_credentials => format!(
            "the repository refused the credentials (HTTP {status}) for {url}: check the [artifact] netrc entry for its host"
        ),
        401 | 403 => format!(
            "the repository wants credentials (HTTP {status}) for {url}: set [artifact] netrc"
        ),
        404 => format!("not found (HTTP 404): {url}: check the version and [artifact] coordinates"),
        _ => format!("the repository answered HTTP {status} for {url}"),
    }
}

/// Downloads the jar to `dest`, hashing it; checks `sha1` when given and the
/// remote's sha256 when it is known. Returns the sha256.
fn download(
    remote: &Remote,
    dest: &Path,
    sha1: Option<&str>,
) -> std::result::Result<String, String> {
    let url = &remote.url;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut request = agent(Duration::from_millis(remote.timeout_ms), &remote.access)?.get(url);
    if let Some(auth) = authorization(remote.access.credentials.as_ref()) {
        request = request.header("Authorization", auth);
    }
    let response = request
        .call()
        .map_err(|e| format!("downloading {}", http::call_error(url, &e)))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(status_error(
            status,
            url,
            remote.access.credentials.is_some(),
        ));
    }
    let tmp = dest.with_extension("part");
    let result = write_hashed(
        response.into_body().into_reader(),
        &tmp,
        remote.max_size,
        url,
    );
    let checked = result.and_then(|(sha256, sha1_actual)| {
        if let Some(expected) = sha1
            && expected != sha1_actual
        {
            return Err(format!(
                "{url}: its sha1 is {sha1_actual}, the .sha1 file says {expected}"
            ));
        }
        if !remote.sha256.is_empty() && remote.sha256 != sha256 {
            return Err(format!(
                "sha256 mismatch: {url} has {sha256}, the deploy expects {}",
                remote.sha256
            ));
        }
        Ok(sha256)
    });
    match checked {
        Ok(sha256) => {
            std::fs::rename(&tmp, dest)
                .map_err(|e| format!("cannot keep {}: {e}", dest.display()))?;
            Ok(sha256)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Copies `body` to `path` within `max` bytes; its sha256 and sha1.
fn write_hashed(
    mut body: impl Read,
    path: &Path,
    max: u64,
    url: &str,
) -> std::result::Result<(String, String), String> {
    let mut file = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let (mut sha256, mut sha1) = (Sha256::new(), sha1::Sha1::new());
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| format!("downloading {url}: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max {
            return Err(format!("{url} is over [artifact] max_size ({max} bytes)"));
        }
        sha256.update(&buf[..n]);
        sha1.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    file.sync_all()
        .map_err(|e| format!("syncing {}: {e}", path.display()))?;
    Ok((hex(&sha256.finalize()), hex(&sha1.finalize())))
}

/// PUTs `body` at `url`; an error names the URL and the status.
pub fn put(url: &str, body: &[u8], access: &Access) -> std::result::Result<(), String> {
    let mut request = agent(Duration::from_secs(600), access)?.put(url);
    if let Some(auth) = authorization(access.credentials.as_ref()) {
        request = request.header("Authorization", auth);
    }
    let response = request
        .send(body)
        .map_err(|e| format!("PUT {}", http::call_error(url, &e)))?;
    match response.status().as_u16() {
        200..=299 => Ok(()),
        status => Err(format!(
            "PUT {}",
            status_error(status, url, access.credentials.is_some())
        )),
    }
}

/// GETs a small text file for `publish` (the metadata); `None` on 404.
pub fn get(url: &str, access: &Access) -> std::result::Result<Option<String>, String> {
    let remote = Remote {
        url: url.to_string(),
        sha256: String::new(),
        fetch: Fetch::Operator,
        access: access.clone(),
        max_size: 0,
        timeout_ms: 0,
        local: PathBuf::new(),
        downloading: Mutex::new(()),
    };
    get_text(&remote, url)
}
