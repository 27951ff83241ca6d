//! The proxy's metrics and the scrape (`[metrics] listen`): the worker
//! counts what it answers (by status class and instance port, the time to
//! the response head), switches and drains; a scrape adds in-flight and
//! held requests, the traffic mode, the keeper's worker restarts and the
//! instances' supervisors ([`crate::host::metrics::service`]). Counters
//! start at 0 with each worker, as Prometheus expects of a restarted process.
//!
//! The keeper binds the address once and hands it to each worker (as the
//! public socket), so a worker restart keeps the address.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::files;
use super::traffic::Held;
use crate::host::metrics::{self, Exposition, Histogram, Kind};
use crate::protocol::layout::Layout;

/// The descriptor the keeper hands the metrics socket over on.
pub const METRICS_FD: i32 = 4;
/// Set (to [`METRICS_FD`]) in a worker's environment when the keeper handed it over.
pub const METRICS_FD_ENV: &str = "SHIPJAR_PROXY_METRICS_FD";
/// A scrape connection that takes longer than this is closed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worker counts as it serves.
#[derive(Default)]
pub struct Counters {
    /// Answers by (instance port, 0 for the proxy's own; status class 1–5).
    answers: Mutex<BTreeMap<(u16, u8), u64>>,
    latency: Histogram,
    switches: AtomicU64,
    drains: AtomicU64,
    drains_unfinished: AtomicU64,
}

impl Counters {
    /// One answer with `status` from the instance on `instance` (`None`:
    /// the proxy's own) whose head went out `took` after its request came.
    pub fn answered(&self, status: StatusCode, instance: Option<u16>, took: Duration) {
        let port = instance.unwrap_or(0);
        let class = (status.as_u16() / 100) as u8;
        *self
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((port, class))
            .or_default() += 1;
        self.latency.observe(took);
    }

    /// The proxy was switched (to an instance or to none).
    pub fn switched(&self) {
        self.switches.fetch_add(1, Ordering::Relaxed);
    }

    /// A drain ended, with `left` requests still in flight at its timeout.
    pub fn drained(&self, left: u64) {
        self.drains.fetch_add(1, Ordering::Relaxed);
        if left > 0 {
            self.drains_unfinished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the worker is doing at the moment of a scrape.
pub struct Now {
    /// In-flight requests per instance port.
    pub inflight: [(u16, u64); 2],
    /// The instance taking traffic, 0 for none.
    pub active: u16,
    /// The traffic mode's word.
    pub traffic: String,
    /// Held requests.
    pub held: Held,
}

/// The whole exposition: the proxy's families, then the instances'.
pub fn render(layout: &Layout, counters: &Counters, now: &Now) -> String {
    let mut out = Exposition::default();
    write_answers(&mut out, counters);
    write_ports_and_mode(&mut out, now);
    write_counts(&mut out, counters, now);
    if let Some(keeper) = files::read_keeper(layout) {
        out.family(
            "shipjar_proxy_worker_restarts_total",
            Kind::Counter,
            "proxy workers started again after they died",
        );
        out.sample(
            "shipjar_proxy_worker_restarts_total",
            &[],
            f64::from(keeper.restarts),
        );
    }
    let ports: Vec<u16> = now.inflight.iter().map(|(p, _)| *p).collect();
    metrics::service::write(&mut out, layout, &ports);
    out.finish()
}

/// Answers by instance port and status class, and their latency.
fn write_answers(out: &mut Exposition, counters: &Counters) {
    out.family(
        "shipjar_proxy_requests_total",
        Kind::Counter,
        "answers by instance port (\"none\": the proxy's own) and status class",
    );
    let answers = counters
        .answers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for ((port, class), n) in answers {
        let port = match port {
            0 => "none".to_string(),
            p => p.to_string(),
        };
        let class = format!("{class}xx");
        out.sample(
            "shipjar_proxy_requests_total",
            &[("port", &port), ("class", &class)],
            n as f64,
        );
    }
    out.histogram(
        "shipjar_proxy_request_duration_seconds",
        "time from a request's arrival to its answer's head",
        &counters.latency,
    );
}

/// Per instance port: in flight and which one takes traffic; the traffic mode.
fn write_ports_and_mode(out: &mut Exposition, now: &Now) {
    out.family(
        "shipjar_proxy_in_flight",
        Kind::Gauge,
        "requests in flight per instance port",
    );
    for (port, n) in now.inflight {
        out.sample(
            "shipjar_proxy_in_flight",
            &[("port", &port.to_string())],
            n as f64,
        );
    }
    out.family(
        "shipjar_proxy_active",
        Kind::Gauge,
        "1 for the instance port taking traffic",
    );
    for (port, _) in now.inflight {
        let value = f64::from(u8::from(port == now.active));
        out.sample(
            "shipjar_proxy_active",
            &[("port", &port.to_string())],
            value,
        );
    }
    out.family(
        "shipjar_proxy_traffic",
        Kind::Gauge,
        "1 for the traffic mode: serving, paused (shipjar pause) or maintenance",
    );
    for mode in ["serving", "paused", "maintenance"] {
        let value = f64::from(u8::from(now.traffic == mode));
        out.sample("shipjar_proxy_traffic", &[("mode", mode)], value);
    }
}

/// The single-number families: held requests, switches, drains.
fn write_counts(out: &mut Exposition, counters: &Counters, now: &Now) {
    let counts = [
        (
            "shipjar_proxy_held",
            Kind::Gauge,
            "requests held now (paused)",
            now.held.now,
        ),
        (
            "shipjar_proxy_held_total",
            Kind::Counter,
            "requests held while paused",
            now.held.total,
        ),
        (
            "shipjar_proxy_held_expired_total",
            Kind::Counter,
            "held requests answered 503 when hold ran out",
            now.held.expired,
        ),
        (
            "shipjar_proxy_switches_total",
            Kind::Counter,
            "switches of the instance taking traffic",
            counters.switches.load(Ordering::Relaxed),
        ),
        (
            "shipjar_proxy_drains_total",
            Kind::Counter,
            "drains of an old instance",
            counters.drains.load(Ordering::Relaxed),
        ),
        (
            "shipjar_proxy_drains_unfinished_total",
            Kind::Counter,
            "drains that reached drain_timeout with requests in flight",
            counters.drains_unfinished.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in counts {
        out.family(name, kind, help);
        out.sample(name, &[], value as f64);
    }
}

/// The metrics socket the keeper handed over, when it did.
pub fn handed_over() -> Result<Option<tokio::net::TcpListener>, String> {
    if std::env::var(METRICS_FD_ENV).ok().as_deref() != Some(&METRICS_FD.to_string()) {
        return Ok(None);
    }
    // SAFETY: the keeper put a listening TCP socket on this descriptor for
    // us alone, and said so in the environment.
    let listener =
        unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(METRICS_FD) };
    listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
        .map(Some)
        .map_err(|e| format!("the metrics socket: {e}"))
}

/// Serves `GET /metrics` on `listener` until the worker ends; `scrape`
/// renders the text.
pub async fn serve<F>(listener: tokio::net::TcpListener, scrape: F)
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: wait, never spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = answer(&req, &scrape);
                async move { Ok::<_, Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, connection).await;
        });
    }
}

/// `GET /metrics` (or `/`): the exposition; anything else 404 or 405.
fn answer<B>(req: &Request<B>, scrape: &dyn Fn() -> String) -> Response<Full<Bytes>> {
    let (status, body, kind) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics" | "/") => {
            (StatusCode::OK, scrape(), metrics::CONTENT_TYPE)
        }
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            "metrics are at /metrics\n".to_string(),
            "text/plain; charset=utf-8",
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /metrics\n".to_string(),
            "text/plain; charset=utf-8",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}
