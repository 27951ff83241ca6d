//! What the proxy does with a new request: serve it, hold it (`shipjar
//! pause`: up to `hold`, then 503) or answer it with the maintenance page
//! (`shipjar maintenance`). The mode is recorded in
//! `run/NAME/proxy/traffic.json` (replaced by rename) before the worker is
//! told, so a restarted worker comes back in it.
//!
//! The gate stands at a request's entry, before it is counted against an
//! instance: a held request is in flight on no instance, so a deploy's drain
//! does not wait for it, and it goes to whichever instance is active when it
//! is released.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::files;
use crate::protocol::files::write_atomic;
use crate::protocol::layout::Layout;
use crate::protocol::status::{Traffic, TrafficMode};

/// `Retry-After` of a held request's 503: the pause may end any moment.
const HELD_RETRY_AFTER_S: u64 = 1;

/// `traffic.json`: the mode and, for maintenance, the rendered page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The mode, since when, the message.
    pub traffic: Traffic,
    /// Maintenance: the page (HTML) answered to every request.
    #[serde(default)]
    pub page: Option<String>,
}

impl Record {
    /// Serving, as a proxy with no record starts.
    pub fn serving() -> Record {
        Record {
            traffic: Traffic::serving(),
            page: None,
        }
    }
}

fn path(layout: &Layout) -> std::path::PathBuf {
    layout.proxy_dir().join("traffic.json")
}

/// The recorded mode; serving when nothing is recorded.
pub fn read(layout: &Layout) -> Result<Record, String> {
    let path = path(layout);
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::serving()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Records the mode (by rename: the old record or the new one, never a part).
pub fn write(layout: &Layout, record: &Record) -> Result<(), String> {
    files::ensure_dir(layout)?;
    let text = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    let path = path(layout);
    write_atomic(&path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The mode as the worker applies it.
enum Mode {
    Serving,
    Paused,
    Maintenance { page: Bytes, retry_after_s: u64 },
}

impl Mode {
    fn of(record: &Record) -> Mode {
        match record.traffic.mode {
            TrafficMode::Paused => Mode::Paused,
            TrafficMode::Maintenance => Mode::Maintenance {
                page: Bytes::from(record.page.clone().unwrap_or_else(|| {
                    format!(
                        "Down for maintenance: {}\n",
                        record.traffic.message.as_deref().unwrap_or("back soon")
                    )
                })),
                retry_after_s: record.traffic.retry_after_s.unwrap_or(60),
            },
            // A mode a newer shipjar recorded: serve rather than hold forever.
            TrafficMode::Serving | TrafficMode::Unknown(_) => Mode::Serving,
        }
    }
}

/// The worker's traffic gate, shared by every connection.
pub struct Gate {
    mode: watch::Sender<Arc<Mode>>,
    word: std::sync::Mutex<String>,
    held: AtomicU64,
    held_total: AtomicU64,
    held_expired: AtomicU64,
}

/// What the gate counted, for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    /// Requests held right now.
    pub now: u64,
    /// Requests held since the worker started.
    pub total: u64,
    /// Held requests answered 503 when `hold` ran out.
    pub expired: u64,
}

/// One held request, counted until dropped.
struct Holding<'a>(&'a Gate);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    /// A gate in the recorded mode.
    pub fn new(record: &Record) -> Gate {
        let (mode, _) = watch::channel(Arc::new(Mode::of(record)));
        Gate {
            mode,
            word: std::sync::Mutex::new(record.traffic.mode.to_string()),
            held: AtomicU64::new(0),
            held_total: AtomicU64::new(0),
            held_expired: AtomicU64::new(0),
        }
    }

    /// Takes a new mode; held requests see it at once (released, or
    /// answered with the maintenance page). Returns how many were held.
    pub fn set(&self, record: &Record) -> u64 {
        let held = self.held.load(Ordering::SeqCst);
        *self
            .word
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = record.traffic.mode.to_string();
        self.mode.send_replace(Arc::new(Mode::of(record)));
        held
    }

    /// The mode's word: serving, paused, maintenance.
    pub fn word(&self) -> String {
        self.word
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The counts so far.
    pub fn held(&self) -> Held {
        Held {
            now: self.held.load(Ordering::SeqCst),
            total: self.held_total.load(Ordering::SeqCst),
            expired: self.held_expired.load(Ordering::SeqCst),
        }
    }

    /// Lets a request through (`Ok`), or answers it: the maintenance page,
    /// or 503 when it was held past `deadline` (`hold_ms` after it came).
    pub async fn pass(
        &self,
        name: &str,
        hold_ms: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), Response<Full<Bytes>>> {
        let mut seen = self.mode.subscribe();
        let mut holding = None;
        loop {
            let mode = seen.borrow_and_update().clone();
            match &*mode {
                Mode::Serving => return Ok(()),
                Mode::Maintenance {
                    page,
                    retry_after_s,
                } => return Err(maintenance(page.clone(), *retry_after_s)),
                Mode::Paused => {}
            }
            if holding.is_none() {
                self.held.fetch_add(1, Ordering::SeqCst);
                self.held_total.fetch_add(1, Ordering::SeqCst);
                holding = Some(Holding(self));
            }
            let changed = tokio::time::timeout_at(deadline, seen.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                self.held_expired.fetch_add(1, Ordering::SeqCst);
                return Err(held_too_long(name, hold_ms));
            }
        }
    }
}

/// The maintenance page: 503, HTML, `Retry-After`, never cached.
fn maintenance(page: Bytes, retry_after_s: u64) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(page));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A request held for all of `hold` while paused: 503.
fn held_too_long(name: &str, hold_ms: u64) -> Response<Full<Bytes>> {
    let body = format!(
        "{name}: paused (shipjar pause) for longer than this request may wait \
         (hold = {} ms); try again (shipjar proxy)\n",
        Duration::from_millis(hold_ms).as_millis()
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from(HELD_RETRY_AFTER_S));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(mode: TrafficMode) -> Record {
        Record {
            traffic: Traffic {
                mode,
                since: Some("T".into()),
                message: Some("upgrading the database".into()),
                retry_after_s: Some(120),
            },
            page: Some("<p>upgrading the database</p>".into()),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn a_paused_request_waits_for_resume_and_one_held_past_hold_gets_503() {
        runtime().block_on(async {
            let gate = Arc::new(Gate::new(&record(TrafficMode::Paused)));
            let far = tokio::time::Instant::now() + Duration::from_secs(30);
            let waiting = {
                let gate = gate.clone();
                tokio::spawn(async move { gate.pass("hello", 30_000, far).await.is_ok() })
            };
            while gate.held().now == 0 {
                tokio::task::yield_now().await;
            }
            assert_eq!(gate.set(&Record::serving()), 1, "one was held");
            assert!(waiting.await.expect("the held request"), "released");
            assert_eq!(gate.held().now, 0);

            gate.set(&record(TrafficMode::Paused));
            let soon = tokio::time::Instant::now() + Duration::from_millis(50);
            let answer = gate
                .pass("hello", 50, soon)
                .await
                .expect_err("held too long");
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(gate.held().expired, 1);
            assert_eq!(gate.held().total, 2);
        });
    }

    #[test]
    fn maintenance_answers_its_page_with_retry_after() {
        runtime().block_on(async {
            let gate = Gate::new(&record(TrafficMode::Maintenance));
            let now = tokio::time::Instant::now();
            let answer = gate.pass("hello", 1000, now).await.expect_err("the page");
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(answer.headers()[header::RETRY_AFTER], "120");
            assert_eq!(gate.word(), "maintenance");
        });
    }
}
