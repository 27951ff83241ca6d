//! `fetch_artifact`: the host downloads an artifact from a repository
//! itself, into the store's temp area through the guarded file layer;
//! resumed with `Range` after a cut, its size capped, its sha256 checked
//! before it is renamed under its name. A failure leaves nothing behind and
//! says why, the URL without credentials.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use sha2::{Digest, Sha256};

use crate::host::fs::{GuardedDir, NewFile};
use crate::host::store;
use crate::protocol::digest::{hex, is_sha256};
use crate::protocol::http;
use crate::protocol::layout::Layout;
use crate::protocol::mask::base64_standard;
use crate::protocol::{Credentials, FetchSpec, Fetched};

/// Attempts after a cut before the download is given up.
const ATTEMPTS: u32 = 4;
/// Longest the connection itself may take: a repository that does not
/// answer this soon is unreachable from here.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Downloads `spec` into the store unless it is there already.
pub fn fetch(layout: &Layout, spec: &FetchSpec, emit: &dyn Fn(&str, &str)) -> Fetched {
    let failed = |bytes: u64, error: String| Fetched {
        ok: false,
        already_stored: false,
        bytes,
        error: Some(error),
    };
    if !is_sha256(&spec.sha256) {
        return failed(0, format!("`{}` is not a sha256 in hex", spec.sha256));
    }
    if store::has_verified_artifact(layout, &spec.sha256) {
        return Fetched {
            ok: true,
            already_stored: true,
            bytes: 0,
            error: None,
        };
    }
    emit("download", &format!("from {}", spec.url));
    let mut download = match Download::start(layout, spec) {
        Ok(d) => d,
        Err(e) => return failed(0, e),
    };
    let result = download.run(emit).and_then(|()| download.commit(layout));
    let bytes = download.received;
    match result {
        Ok(()) => Fetched {
            ok: true,
            already_stored: false,
            bytes,
            error: None,
        },
        Err(e) => {
            download.discard();
            failed(bytes, e)
        }
    }
}

/// One download in progress: the temp file, what was hashed so far.
struct Download<'s> {
    spec: &'s FetchSpec,
    dir: GuardedDir,
    tmp: String,
    file: File,
    hasher: Sha256,
    /// Bytes in the temp file.
    written: u64,
    /// Bytes received over every attempt.
    received: u64,
    deadline: Instant,
}

/// Why one attempt ended.
enum Stop {
    /// Give up: the message says why and what to do.
    Fatal(String),
    /// The connection broke; another attempt may resume.
    Cut(String),
}

impl<'s> Download<'s> {
    fn start(layout: &Layout, spec: &'s FetchSpec) -> Result<Self, String> {
        let dir = GuardedDir::open(&layout.artifacts_dir()).map_err(|e| e.to_string())?;
        let tmp = store::artifact_temp_name(&spec.sha256);
        let new = NewFile {
            mode: 0o644,
            owner: None,
        };
        let file = dir
            .create_new(&tmp, new, OFlag::empty())
            .map_err(|e| format!("cannot create the download's temp file: {e}"))?;
        Ok(Download {
            spec,
            dir,
            tmp,
            file,
            hasher: Sha256::new(),
            written: 0,
            received: 0,
            deadline: Instant::now() + Duration::from_millis(spec.timeout_ms),
        })
    }

    /// Attempts until the body is complete, a fatal answer, or the deadline.
    fn run(&mut self, emit: &dyn Fn(&str, &str)) -> Result<(), String> {
        let mut last_cut = String::new();
        for attempt in 1..=ATTEMPTS {
            if Instant::now() >= self.deadline {
                return Err(self.too_slow());
            }
            match self.attempt() {
                Ok(()) => return Ok(()),
                Err(Stop::Fatal(e)) => return Err(e),
                Err(Stop::Cut(e)) if Instant::now() >= self.deadline => {
                    return Err(format!("{}; {e}", self.too_slow()));
                }
                Err(Stop::Cut(e)) => {
                    if attempt < ATTEMPTS {
                        emit(
                            "download",
                            &format!(
                                "{e}; resuming at byte {} (attempt {})",
                                self.written,
                                attempt + 1
                            ),
                        );
                    }
                    last_cut = e;
                }
            }
        }
        Err(format!(
            "{last_cut}, {ATTEMPTS} times: the link to the repository keeps breaking; \
             try again, or set [artifact] fetch = \"operator\" to push it from the operator"
        ))
    }

    fn too_slow(&self) -> String {
        format!(
            "download from {} did not finish within {} ({} bytes received): a slow link? \
             raise [artifact] timeout, or set fetch = \"operator\"",
            self.spec.url,
            humantime::format_duration(Duration::from_millis(self.spec.timeout_ms)),
            self.received
        )
    }

    /// One GET from `written` on; the body appended and hashed.
    fn attempt(&mut self) -> Result<(), Stop> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let agent = http::agent(
            remaining,
            Some(remaining.min(CONNECT_TIMEOUT)),
            self.spec.ca.as_deref(),
        )
        .map_err(Stop::Fatal)?;
        let mut request = agent.get(&self.spec.url);
        if let Some(c) = &self.spec.credentials {
            request = request.header("Authorization", basic(c));
        }
        if self.written > 0 {
            request = request.header("Range", format!("bytes={}-", self.written));
        }
        let response = request.call().map_err(|e| self.call_error(e))?;
        let status = response.status().as_u16();
        let total = match status {
            200 => {
                // The server sends it whole (no Range support): start over.
                self.restart().map_err(Stop::Fatal)?;
                content_length(&response)
            }
            206 if content_range_start(&response) == Some(self.written) => {
                content_length(&response).map(|n| n + self.written)
            }
            206 => {
                self.restart().map_err(Stop::Fatal)?;
                return Err(Stop::Cut("the repository resumed at another byte".into()));
            }
            _ => return Err(Stop::Fatal(self.status_error(status))),
        };
        if let Some(total) = total
            && total > self.spec.max_size
        {
            return Err(Stop::Fatal(self.too_big(total)));
        }
        let mut body = response.into_body().into_reader();
        self.copy(&mut body)?;
        match total {
            Some(total) if self.written < total => Err(Stop::Cut(format!(
                "the connection closed after {} of {total} bytes",
                self.written
            ))),
            _ => Ok(()),
        }
    }

    /// Appends the body to the temp file, hashing it, within the size cap.
    fn copy(&mut self, body: &mut impl Read) -> Result<(), Stop> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Stop::Cut(format!(
                        "the download broke after {} bytes: {}",
                        self.written,
                        reason(&e)
                    )));
                }
            };
            if self.written + n as u64 > self.spec.max_size {
                return Err(Stop::Fatal(self.too_big(self.written + n as u64)));
            }
            self.file
                .write_all(&buf[..n])
                .map_err(|e| Stop::Fatal(format!("cannot write the download: {e}")))?;
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
            self.received += n as u64;
        }
    }

    /// Empties the temp file and the hash: the next bytes are the first.
    fn restart(&mut self) -> Result<(), String> {
        if self.written > 0 {
            self.file
                .set_len(0)
                .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
                .map_err(|e| format!("cannot restart the download: {e}"))?;
            self.hasher = Sha256::new();
            self.written = 0;
        }
        Ok(())
    }

    /// Checks the sha256, syncs, renames into the store.
    fn commit(&mut self, layout: &Layout) -> Result<(), String> {
        let actual = hex(&std::mem::take(&mut self.hasher).finalize());
        if actual != self.spec.sha256 {
            return Err(format!(
                "sha256 mismatch: {} has {actual}, the deploy expects {}; the repository's \
                 artifact is not the one resolved (republished?): check the version, or give --sha256",
                self.spec.url, self.spec.sha256
            ));
        }
        store::set_artifact_mtime(&self.file)?;
        self.file
            .sync_all()
            .map_err(|e| format!("cannot sync the download: {e}"))?;
        self.dir
            .rename(&self.tmp, format!("{}.jar", self.spec.sha256))
            .map_err(|e| format!("cannot move the download into the store: {e}"))?;
        store::sync_artifacts(layout)
    }

    /// Removes the temp file: nothing half-downloaded stays.
    fn discard(&self) {
        let _ = self.dir.remove_file(&self.tmp);
    }

    fn too_big(&self, size: u64) -> String {
        format!(
            "{} is {size} bytes or more, over [artifact] max_size ({} bytes): raise max_size if that is right",
            self.spec.url, self.spec.max_size
        )
    }

    /// An answer that is not the artifact: what it means and what to do.
    fn status_error(&self, status: u16) -> String {
        let url = &self.spec.url;
        match status {
            401 | 403 if self.spec.credentials.is_some() => format!(
                "the repository refused the credentials (HTTP {status}) for {url}: check the \
                 [artifact] netrc entry for its host"
            ),
            401 | 403 => format!(
                "the repository wants credentials (HTTP {status}) for {url}: set [artifact] \
                 netrc to a file with a `machine` entry for its host"
            ),
            404 => format!(
                "not found (HTTP 404): {url}: check the version and [artifact] coordinates, \
                 or publish it first (`shipjar publish`)"
            ),
            _ => format!("the repository answered HTTP {status} for {url}"),
        }
    }

    /// A request that got no answer: unreachable, a timeout, TLS.
    fn call_error(&self, e: ureq::Error) -> Stop {
        let url = &self.spec.url;
        if let Some(why) = http::tls_refusal(&e) {
            return Stop::Fatal(http::untrusted(url, &why));
        }
        match e {
            ureq::Error::Timeout(_) if Instant::now() >= self.deadline => {
                Stop::Fatal(self.too_slow())
            }
            ureq::Error::Io(io) if !unreachable(&io) => {
                Stop::Cut(format!("{url}: {}", reason(&io)))
            }
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed => Stop::Fatal(format!(
                "cannot reach the repository at {url} ({e}): check this host's network and \
                 proxy, or set [artifact] fetch = \"host-then-operator\" to push from the operator"
            )),
            other => Stop::Fatal(format!("downloading {url}: {other}")),
        }
    }
}

/// A connection that could not be made at all: retrying will not help.
fn unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::AddrNotAvailable
    )
}

/// An I/O error as a short reason (never a URL with credentials: none is sent).
fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut => "timed out".to_string(),
        io::ErrorKind::UnexpectedEof => "the connection closed early".to_string(),
        _ => e.to_string(),
    }
}

/// `Authorization: Basic …` for `c`.
fn basic(c: &Credentials) -> String {
    format!(
        "Basic {}",
        base64_standard(format!("{}:{}", c.login, c.password).as_bytes())
    )
}

fn content_length(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    response
        .headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}
