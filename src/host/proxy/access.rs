//! Request ids and the access log: every request carries an
//! `X-Request-Id` to the instance and back (the client's own when it sent
//! a sane one, else a new random 128-bit hex id), and with `[proxy]
//! access_log = true` each answered request is one JSON line in
//! `access.log` in the service's log directory, written when its response
//! ended (so bytes and duration are the whole exchange's).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::host::supervisor::logfile::{self, RotatingFile, Rotation};
use crate::protocol::defaults;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The instance a response came from (the router says; none for the
/// proxy's own pages).
#[derive(Debug, Clone, Copy)]
pub struct Instance(pub u16);

/// Makes new request ids: 128 bits from a generator seeded once from the
/// kernel's random source (an id needs to be unique, not secret).
pub struct Ids {
    state: AtomicU64,
    seed: u64,
}

impl Ids {
    /// A generator seeded by getrandom(2) (the time and pid without it): no
    /// path to open, so nothing in the host's /dev can stand in for it.
    pub fn new() -> Ids {
        let mut seed = [0u8; 16];
        // SAFETY: seed is valid for writes of its length.
        let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        if got != seed.len() as isize {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed = (now ^ u128::from(std::process::id()) << 64).to_le_bytes();
        }
        let [a, b] = [&seed[..8], &seed[8..]].map(|half| {
            let mut word = [0u8; 8];
            word.copy_from_slice(half);
            u64::from_le_bytes(word)
        });
        Ids {
            state: AtomicU64::new(a),
            seed: b,
        }
    }

    /// A new id: 32 lower-case hex digits.
    #[cfg(test)]
    fn next(&self) -> String {
        String::from_utf8_lossy(&self.next_digits()).into_owned()
    }

    /// A new id's 32 lower-case hex digits, written by hand: `format!`
    /// costs every request more.
    fn next_digits(&self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let mut digits = [0u8; 32];
        for (half, word) in digits.chunks_mut(16).zip([mix(n), mix(n ^ self.seed)]) {
            for (i, digit) in half.iter_mut().enumerate() {
                *digit = HEX[(word >> (60 - 4 * i) & 0xf) as usize];
            }
        }
        digits
    }
}

/// splitmix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether a client's id is kept: 1 to 128 characters of letters, digits
/// and `-_.:` (anything else could smuggle text into logs).
fn sane(id: &HeaderValue) -> bool {
    let b = id.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// The request's id: the client's when sane, else a new one set in its
/// place (one header line only).
pub fn ensure_id(headers: &mut HeaderMap, ids: &Ids) -> HeaderValue {
    let given = headers.get_all(&REQUEST_ID).iter().collect::<Vec<_>>();
    if let [one] = given.as_slice()
        && sane(one)
    {
        return (*one).clone();
    }
    let id = HeaderValue::from_bytes(&ids.next_digits()).unwrap_or(HeaderValue::from_static("0"));
    headers.insert(REQUEST_ID, id.clone());
    id
}

/// What one access log line says besides the bytes and the duration.
pub struct Entry {
    /// When the request's head came (RFC 3339, ms).
    pub time: String,
    /// The request's method.
    pub method: String,
    /// The path, without the query string (which may hold secrets).
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// The instance's port, `None` for the proxy's own answer.
    pub instance: Option<u16>,
    /// The request id.
    pub request_id: String,
}

impl Entry {
    /// The JSON line (with its newline).
    pub fn line(&self, bytes: u64, duration_ms: u64) -> String {
        let mut line = serde_json::json!({
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "bytes": bytes,
            "duration_ms": duration_ms,
            "instance": self.instance,
            "request_id": self.request_id,
        })
        .to_string();
        line.push('\n');
        line
    }
}

/// The access log file, opened on first use (in the service's log dir, as
/// the user the worker runs as) and rotated as the service's log is (the
/// `[logs]` size, count and compression of the release taking traffic).
pub struct AccessLog {
    path: std::path::PathBuf,
    state: Mutex<LogState>,
}

struct LogState {
    rotation: Rotation,
    file: Option<RotatingFile>,
}

impl AccessLog {
    /// The log at `path`, not opened yet, rotated by `[logs]`' defaults
    /// until a release says otherwise.
    pub fn new(path: std::path::PathBuf) -> Arc<AccessLog> {
        let rotation = Rotation {
            max_size: defaults::LOG_MAX_SIZE,
            keep: defaults::LOG_KEEP,
            compress: defaults::LOG_COMPRESS,
        };
        Arc::new(AccessLog {
            path,
            state: Mutex::new(LogState {
                rotation,
                file: None,
            }),
        })
    }

    /// Rotates by `rotation` from now on (the file opened again with it).
    pub fn set_rotation(&self, rotation: Rotation) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.rotation != rotation {
            state.rotation = rotation;
            if let Some(mut file) = state.file.take() {
                file.finish();
            }
        }
    }

    /// Appends one line; a log that cannot be written is said once per
    /// attempt to open it and otherwise costs the request nothing.
    pub fn write(&self, line: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.file.is_none() {
            match logfile::open_rotating(&self.path, state.rotation) {
                Ok(f) => state.file = Some(f),
                Err(e) => {
                    eprintln!("shipjar proxy: access log {}: {e}", self.path.display());
                    return;
                }
            }
        }
        // One write of the whole line (a chunk is never split by rotation).
        if let Some(f) = state.file.as_mut()
            && f.write_chunk(line.as_bytes()).is_err()
        {
            state.file = None;
        }
    }
}

/// A response body that counts what it sends and writes the request's
/// access log line when it is gone (sent whole, or the client went away).
pub struct Logged<B> {
    inner: B,
    entry: Option<(Entry, Arc<AccessLog>)>,
    started: Instant,
    bytes: u64,
}

impl<B> Logged<B> {
    /// `inner`, logged as `entry` to `log` when it is gone (no log: only passed on).
    pub fn new(inner: B, entry: Option<(Entry, Arc<AccessLog>)>, started: Instant) -> Self {
        Logged {
            inner,
            entry,
            started,
            bytes: 0,
        }
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        if let Some((entry, log)) = self.entry.take() {
            let ms = self.started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
            log.write(&entry.line(self.bytes, ms));
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request target's path without its query string.
pub fn path_only(target: &hyper::Uri) -> String {
    target.path().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let ids = Ids::new();
        let a = ids.next();
        let b = ids.next();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn an_ids_digits_are_its_two_words_in_hex() {
        let ids = Ids {
            state: AtomicU64::new(0x0123_4567_89ab_cdef),
            seed: 42,
        };
        let n = 0x0123_4567_89ab_cdef_u64;
        assert_eq!(ids.next(), format!("{:016x}{:016x}", mix(n), mix(n ^ 42)));
    }

    #[test]
    fn a_sane_client_id_is_kept_and_anything_else_replaced() {
        let ids = Ids::new();
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123.x:y_z"));
        assert_eq!(ensure_id(&mut h, &ids), "abc-123.x:y_z");
        for bad in ["", "has space", "quote\"", &"x".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_ID, HeaderValue::from_str(bad).expect("a value"));
            let id = ensure_id(&mut h, &ids);
            assert_eq!(id.len(), 32, "{bad:?} replaced");
            assert_eq!(h.get_all(&REQUEST_ID).iter().count(), 1);
            assert_eq!(h[&REQUEST_ID], id);
        }
        let mut none = HeaderMap::new();
        let id = ensure_id(&mut none, &ids);
        assert_eq!(none[&REQUEST_ID], id, "set when absent");
    }

    #[test]
    fn a_line_is_one_json_object_with_the_path_and_no_query() {
        let uri: hyper::Uri = "/a/b?token=secret".parse().expect("a target");
        let entry = Entry {
            time: "2026-12-06T15:00:00.000Z".into(),
            method: "GET".into(),
            path: path_only(&uri),
            status: 200,
            instance: Some(18081),
            request_id: "r1".into(),
        };
        let line = entry.line(12, 3);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["path"], "/a/b");
        assert!(!line.contains("secret"));
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["duration_ms"], 3);
        assert_eq!(v["instance"], 18081);
    }
}
