//! The proxy process: HTTP/1.1 in, HTTP/1.1 out to the active instance.
//!
//! Requests, not connections, are routed: a client's keep-alive connection
//! lives on across a switch, each request going to whichever instance is
//! active when it arrives. Bodies stream both ways. Each request is counted
//! against its instance until its response body has been sent (an upgraded
//! connection until it closes), so the agent can wait for the old instance
//! to drain, and close what is left at the drain deadline.
//!
//! What a client may not do is kept apart: `headers` decides what reaches
//! the instance (the proxy's own headers set last), `conn` caps and times
//! out client connections, `tunnel` joins upgraded connections, `stream`
//! and `drain` carry bodies and end them at the deadline, `access` ids and
//! logs requests; this file routes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use super::access::{self, AccessLog, Ids, Instance, Logged};
use super::conn::{Exchange, Gate, Guarded, Tracked, Watch};
use super::drain::{Drains, Kind};
use super::stream::{BodyCap, BodyError, Streamed};
use super::{files, headers, metrics, tls, traffic, tunnel, upstream};
use crate::host::supervisor::logfile::Rotation;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;

/// The listening socket the keeper hands over.
pub const LISTEN_FD: i32 = 3;

/// Body sent to the instance: the client's, relayed.
type UpBody = Relay;
/// Body sent to the client: the instance's (counted), or the proxy's own page.
type DownBody = Either<Streamed<InFlight>, Full<Bytes>>;

/// Shared by every connection.
struct Shared {
    name: String,
    /// The spec the proxy started with: its address and instance ports
    /// hold for its whole life.
    spec: ProxySpec,
    /// The settings requests and new connections are served with: the
    /// timeouts, the cap, the trusted proxies, `hold`. The start's, then
    /// at each switch those of the release taking traffic, so a deploy (or
    /// a rollback) brings its own.
    settings: Mutex<Arc<ProxySpec>>,
    gate: Arc<Gate>,
    /// The active port, 0 for none. Read, counted, read again: see `enter`.
    active: AtomicU16,
    /// Wakes requests held while no instance is active.
    wake: watch::Sender<u16>,
    /// In-flight requests per instance, in `spec.ports` order.
    inflight: [AtomicU64; 2],
    /// Kept-alive connections to the instances.
    upstream: upstream::Pool<UpBody>,
    /// Tunnels and streams per instance, and their close at the drain deadline.
    drains: Arc<Drains>,
    /// New request ids.
    ids: Ids,
    /// `access.log`, written while the settings say `access_log`.
    access: Arc<AccessLog>,
    /// Serving, paused or maintenance (`shipjar pause` and the rest).
    traffic: traffic::Gate,
    /// What the metrics count.
    counters: metrics::Counters,
    /// Answers are counted: there is a metrics scrape to read them
    /// (`[metrics] listen`); without one the work is skipped.
    counting: bool,
    /// TLS terminated on `listen` (`[proxy] tls`), for the worker's life.
    tls: Option<Arc<tls::Tls>>,
}

impl Shared {
    /// The state every connection shares, `active` taking traffic; the
    /// client to the instances; the open-file limit raised for the cap.
    fn new(
        layout: &Layout,
        spec: ProxySpec,
        active: u16,
        tls: Option<Arc<tls::Tls>>,
        counting: bool,
    ) -> Arc<Shared> {
        raise_open_files(spec.max_connections);
        let (wake, _) = watch::channel(active);
        Arc::new(Shared {
            name: layout.name().to_string(),
            settings: Mutex::new(Arc::new(spec.clone())),
            gate: Gate::new(spec.max_connections as usize),
            drains: Drains::new(spec.ports),
            upstream: upstream::Pool::new(spec.ports),
            spec,
            active: AtomicU16::new(active),
            wake,
            inflight: [AtomicU64::new(0), AtomicU64::new(0)],
            ids: Ids::new(),
            access: AccessLog::new(layout.log_dir().join("access.log")),
            traffic: traffic::Gate::new(&traffic::read(layout).unwrap_or_else(|e| {
                eprintln!("shipjar proxy: serving: the traffic record cannot be read: {e}");
                traffic::Record::serving()
            })),
            counters: metrics::Counters::default(),
            counting,
            tls,
        })
    }

    fn settings(&self) -> Arc<ProxySpec> {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Serves with the settings of `release` (its address and ports
    /// aside) from now on; says what changed.
    fn adopt(&self, release: ProxySpec) {
        let next = ProxySpec {
            listen: self.spec.listen.clone(),
            ports: self.spec.ports,
            ..release
        };
        let mut settings = self.settings.lock().unwrap_or_else(PoisonError::into_inner);
        if **settings == next {
            return;
        }
        self.gate.set_max(next.max_connections as usize);
        raise_open_files(next.max_connections);
        eprintln!(
            "shipjar proxy: now serving with {}",
            describe_settings(&next)
        );
        *settings = Arc::new(next);
    }

    fn slot(&self, port: u16) -> Option<&AtomicU64> {
        self.spec
            .ports
            .iter()
            .position(|p| *p == port)
            .map(|i| &self.inflight[i])
    }

    /// Counts a request against the active instance. The count is taken
    /// before the second read of `active`: whoever switches and then reads
    /// the old instance's count either sees this request or this request
    /// sees the switch (all SeqCst).
    fn enter(self: &Arc<Self>) -> Option<InFlight> {
        loop {
            let port = self.active.load(Ordering::SeqCst);
            let slot = self.slot(port)?;
            slot.fetch_add(1, Ordering::SeqCst);
            if self.active.load(Ordering::SeqCst) == port {
                return Some(InFlight {
                    shared: self.clone(),
                    port,
                    lease: None,
                });
            }
            slot.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn switch(&self, port: u16) {
        self.active.store(port, Ordering::SeqCst);
        self.wake.send_replace(port);
        self.counters.switched();
    }

    /// The metrics scrape's text, as of now.
    fn scrape(&self, layout: &Layout) -> String {
        let [a, b] = self.spec.ports;
        let now = metrics::Now {
            inflight: [
                (a, self.inflight[0].load(Ordering::SeqCst)),
                (b, self.inflight[1].load(Ordering::SeqCst)),
            ],
            active: self.active.load(Ordering::SeqCst),
            traffic: self.traffic.word(),
            held: self.traffic.held(),
        };
        metrics::render(layout, &self.counters, &now)
    }
}

/// One request counted against its instance until dropped, with the
/// connection its answer came on, given back for the next request then.
struct InFlight {
    shared: Arc<Shared>,
    port: u16,
    lease: Option<upstream::Lease<UpBody>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(slot) = self.shared.slot(self.port) {
            slot.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(lease) = self.lease.take() {
            self.shared.upstream.give_back(lease);
        }
    }
}

/// Runs the proxy on the keeper's socket until killed; returns an exit code.
pub fn run(layout: &Layout) -> i32 {
    let spec = match files::read_spec(layout) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shipjar proxy: {e}");
            return 1;
        }
    };
    // The control socket is bound while still root (its directory is
    // root's), then root is dropped for good before anything is served.
    let control = match bind_control(layout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shipjar proxy: {e}");
            return 1;
        }
    };
    if let Err(e) = drop_root(layout, &spec) {
        eprintln!("shipjar proxy: {e}");
        return 1;
    }
    // One thread: the proxy only copies bytes; a second core belongs to the JVM.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shipjar proxy: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(layout, spec, control)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shipjar proxy: {e}");
            1
        }
    }
}

async fn serve(
    layout: &Layout,
    spec: ProxySpec,
    control: std::os::unix::net::UnixListener,
) -> Result<(), String> {
    // SAFETY: the keeper put a listening TCP socket on this descriptor for us alone.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FD) };
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("the listening socket: {e}"))?;
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|e| format!("the listening socket: {e}"))?;

    let active = files::read_active(layout)
        .filter(|p| spec.ports.contains(p))
        .unwrap_or(0);
    let tls = spec.tls.as_deref().map(tls::Tls::new).transpose()?;
    let scrape = metrics::handed_over()?;
    let shared = Shared::new(layout, spec, active, tls, scrape.is_some());
    let gate = shared.gate.clone();

    control
        .set_nonblocking(true)
        .map_err(|e| format!("the control socket: {e}"))?;
    let control = tokio::net::UnixListener::from_std(control)
        .map_err(|e| format!("the control socket: {e}"))?;
    eprintln!(
        "shipjar proxy: pid {} on {} (active instance: {}) with {}",
        std::process::id(),
        shared.spec.listen,
        describe(active),
        describe_settings(&shared.spec)
    );
    start_side_tasks(&shared, layout, active, control, scrape)?;

    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait, never spin.
                eprintln!("shipjar proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let settings = shared.settings();
        let Some(admitted) = gate.admit() else {
            gate.refuse(
                stream,
                over_cap_answer(&shared.name, settings.max_connections),
            );
            continue;
        };
        tokio::spawn(client_connection(
            shared.clone(),
            settings,
            stream,
            peer,
            admitted,
        ));
    }
}

/// What runs beside the accept loop: the active release's settings and log
/// rotation taken, the certificate watch, the HTTPS redirect, the metrics
/// scrape and the control socket.
fn start_side_tasks(
    shared: &Arc<Shared>,
    layout: &Layout,
    active: u16,
    control: tokio::net::UnixListener,
    scrape: Option<tokio::net::TcpListener>,
) -> Result<(), String> {
    // A worker restarted after a switch serves with the active release's settings.
    if let Some(release) = release_settings(layout, active) {
        shared.adopt(release);
    }
    if let Some(rotation) = release_rotation(layout, active) {
        shared.access.set_rotation(rotation);
    }
    if let Some(tls) = &shared.tls {
        tokio::spawn(tls.clone().watch());
    }
    if let Some(listener) = tls::redirect_handed_over()? {
        let port = listen_port(&shared.spec.listen);
        let within = Duration::from_millis(shared.settings().header_timeout_ms);
        tokio::spawn(tls::serve_redirect(listener, port, within));
    }
    if let Some(listener) = scrape {
        let (view, layout) = (shared.clone(), layout.clone());
        tokio::spawn(metrics::serve(listener, move || view.scrape(&layout)));
    }
    let control_shared = shared.clone();
    let control_layout = layout.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = control.accept().await {
                let connection =
                    control_connection(control_shared.clone(), control_layout.clone(), stream);
                tokio::spawn(connection);
            }
        }
    });
    Ok(())
}

/// One client connection, admitted under `max_connections`: HTTP/1.1 with
/// the header and idle timeouts, each request handled on its own.
async fn client_connection(
    shared: Arc<Shared>,
    settings: Arc<ProxySpec>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    admitted: super::conn::Admitted,
) {
    // Shared with a tunnel the connection becomes: hyper hands the
    // connection over at the upgrade, and the tunnel still holds its place.
    let admitted = Arc::new(admitted);
    let trusted = settings
        .trusted_proxies
        .iter()
        .any(|range| range.contains(peer.ip()));
    let watch = Watch::new(
        Duration::from_millis(settings.header_timeout_ms),
        Duration::from_millis(settings.idle_timeout_ms),
    );
    let stream = match &shared.tls {
        None => tls::Client::Plain(stream),
        Some(tls) => match tls.accept(stream, watch.header_timeout()).await {
            Ok(stream) => stream,
            Err(_) => return,
        },
    };
    let io = TokioIo::new(Guarded::new(stream, watch.clone()));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let exchange = watch.begin();
        let started = std::time::Instant::now();
        let id = access::ensure_id(req.headers_mut(), &shared.ids);
        // Read once: the request is served with the settings it came under.
        let settings = shared.settings();
        let logged = settings.access_log.then(|| {
            (
                crate::protocol::clock::now_rfc3339(),
                req.method().to_string(),
                access::path_only(req.uri()),
                shared.access.clone(),
            )
        });
        // A tunnel keeps the connection busy (no idle timeout) while it lives.
        let tunnel_hold = tunnel::requested(req.headers()).map(|_| TunnelHold {
            _busy: watch.begin(),
            _admitted: admitted.clone(),
        });
        let answer = handle(shared.clone(), settings, peer, trusted, req, tunnel_hold);
        let counted = shared.clone();
        async move {
            let (mut response, instance) = answer.await?;
            let instance = instance.map(|i| i.0);
            if counted.counting {
                counted
                    .counters
                    .answered(response.status(), instance, started.elapsed());
            }
            let entry = logged.map(|(time, method, path, log)| {
                let entry = access::Entry {
                    time,
                    method,
                    path,
                    status: response.status().as_u16(),
                    instance,
                    request_id: id.to_str().unwrap_or_default().to_string(),
                };
                (entry, log)
            });
            response.headers_mut().insert(access::REQUEST_ID, id);
            Ok::<_, Infallible>(
                response.map(|body| Tracked::new(Logged::new(body, entry, started), exchange)),
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

/// The proxy settings of the release the instance on `port` runs, when
/// there is one (0: none) and it has them.
fn release_settings(layout: &Layout, port: u16) -> Option<ProxySpec> {
    if port == 0 {
        return None;
    }
    let instance = layout.with_instance(Some(port));
    let id = crate::host::store::current(&instance)?;
    crate::host::store::read_manifest(layout, &id).ok()?.proxy
}

/// How the release on `port` rotates its log: `access.log` follows it.
fn release_rotation(layout: &Layout, port: u16) -> Option<Rotation> {
    if port == 0 {
        return None;
    }
    let id = crate::host::store::current(&layout.with_instance(Some(port)))?;
    let logs = crate::host::store::read_manifest(layout, &id).ok()?.logs;
    Some(Rotation {
        max_size: logs.max_size,
        keep: logs.keep,
        compress: logs.compress,
    })
}

/// The settings a proxy log line names.
fn describe_settings(spec: &ProxySpec) -> String {
    let ranges: Vec<String> = spec.trusted_proxies.iter().map(|r| r.to_string()).collect();
    let bytes = |max: Option<u64>| max.map_or_else(|| "none".to_string(), |b| format!("{b} bytes"));
    format!(
        "header_timeout {} ms, idle_timeout {} ms, upstream_timeout {}, max_connections {}, \
         trusted_proxies [{}], hold {} ms, max_request_body {}, max_response_body {}, \
         access_log {}",
        spec.header_timeout_ms,
        spec.idle_timeout_ms,
        spec.upstream_timeout_ms
            .map_or_else(|| "none".to_string(), |ms| format!("{ms} ms")),
        spec.max_connections,
        ranges.join(", "),
        spec.hold_ms,
        bytes(spec.max_request_body),
        bytes(spec.max_response_body),
        spec.access_log
    )
}

/// The whole answer to a connection over `max_connections`, sent before
/// its request is read.
fn over_cap_answer(name: &str, max: u32) -> Bytes {
    let body = format!(
        "{name}: too many connections (max_connections = {max}); try again (shipjar proxy)\n"
    );
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Lifts the worker's open-file limit to its hard limit: each client
/// connection holds a descriptor, and one more to the instance while a
/// request is in flight. Says so when `max_connections` cannot fit.
fn raise_open_files(max_connections: u32) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let needed = 2 * u64::from(max_connections) + 64;
    if limit < needed {
        eprintln!(
            "shipjar proxy: warning: the open-file limit {limit} is below the {needed} \
             that max_connections = {max_connections} may need; connections past it wait"
        );
    }
}

/// The control socket, bound and listening, 0600: only root (or the
/// owner) drives the proxy.
fn bind_control(layout: &Layout) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    let socket = files::socket_path(layout);
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
    Ok(listener)
}

/// As root, becomes the service's user (groups, gid, uid, in that order):
/// the worker parses every request, and holds nothing that needs root once
/// its sockets are open. Nothing to do when not root or the release names
/// no user (or root).
fn drop_root(layout: &Layout, spec: &ProxySpec) -> Result<(), String> {
    if !crate::host::os::process::is_root() {
        return Ok(());
    }
    // `current`, or (at the first deploy, before `current` exists) the
    // release an instance was linked to.
    let user = std::iter::once(layout.clone())
        .chain(spec.ports.map(|p| layout.with_instance(Some(p))))
        .find_map(|l| {
            let id = crate::host::store::current(&l)?;
            crate::host::store::read_manifest(layout, &id)
                .ok()?
                .run
                .user
        });
    let Some(user) = user else {
        return Ok(());
    };
    let creds = crate::host::os::process::Credentials::resolve(&user)?;
    if creds.uid == 0 {
        return Ok(());
    }
    let keeper = nix::unistd::getppid();
    let groups: Vec<nix::unistd::Gid> = creds
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups)
        .and_then(|()| nix::unistd::setgid(nix::unistd::Gid::from_raw(creds.gid)))
        .and_then(|()| nix::unistd::setuid(nix::unistd::Uid::from_raw(creds.uid)))
        .map_err(|e| format!("cannot become user {user}: {e}"))?;
    // A change of credentials clears the parent-death signal: set it again,
    // and make sure the keeper did not die in between.
    // SAFETY: prctl with plain integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    if nix::unistd::getppid() != keeper {
        return Err("the keeper went away while the worker started".into());
    }
    eprintln!("shipjar proxy: serving as user {user} (uid {})", creds.uid);
    Ok(())
}

/// The port of an address as `listen` holds it (validated: it has one).
fn listen_port(listen: &str) -> u16 {
    listen.parse::<SocketAddr>().map_or(443, |a| a.port())
}

fn describe(port: u16) -> String {
    match port {
        0 => "none".to_string(),
        p => format!("127.0.0.1:{p}"),
    }
}

/// The control protocol, one line each way: `switch PORT`, `none`,
/// `inflight PORT`, `status`, `traffic` (take the recorded traffic mode).
/// A switch also adopts the settings of the release on `PORT`.
async fn control_connection(shared: Arc<Shared>, layout: Layout, stream: tokio::net::UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next().map(str::parse::<u16>)) {
            (Some("switch"), Some(Ok(port))) if shared.slot(port).is_some() => {
                shared.switch(port);
                eprintln!("shipjar proxy: switched to {}", describe(port));
                if let Some(release) = release_settings(&layout, port) {
                    shared.adopt(release);
                }
                if let Some(rotation) = release_rotation(&layout, port) {
                    shared.access.set_rotation(rotation);
                }
                format!("ok active {port}")
            }
            (Some("close"), Some(Ok(port))) if shared.slot(port).is_some() => {
                let (tunnels, streams) = close_open(&shared, port).await;
                eprintln!(
                    "shipjar proxy: closed {tunnels} tunnel(s) and {streams} stream(s) on {} \
                     at the end of its drain",
                    describe(port)
                );
                format!("ok closed {tunnels} {streams}")
            }
            (Some("none"), None) => {
                shared.switch(0);
                eprintln!("shipjar proxy: no active instance");
                "ok active 0".to_string()
            }
            (Some("traffic"), None) => take_traffic(&shared, &layout),
            (Some("drained"), Some(Ok(_))) => {
                let left = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                shared.counters.drained(left);
                "ok drained".to_string()
            }
            (Some("inflight"), Some(Ok(port))) => match shared.slot(port) {
                Some(slot) => format!("ok inflight {}", slot.load(Ordering::SeqCst)),
                None => format!("error {port} is not an instance port"),
            },
            (Some("status"), None) => {
                let [a, b] = shared.spec.ports;
                let held = shared.traffic.held();
                serde_json::json!({
                    "pid": std::process::id(),
                    "active": shared.active.load(Ordering::SeqCst),
                    "inflight": {
                        a.to_string(): shared.inflight[0].load(Ordering::SeqCst),
                        b.to_string(): shared.inflight[1].load(Ordering::SeqCst),
                    },
                    "traffic": shared.traffic.word(),
                    "held": held.now,
                    "held_total": held.total,
                    "held_expired": held.expired,
                })
                .to_string()
            }
            _ => format!("error unknown request `{line}`"),
        };
        if write
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Ends the tunnels and streams on `port` and gives them a moment to go
/// (a close frame written) before the instance is stopped.
async fn close_open(shared: &Shared, port: u16) -> (u64, u64) {
    let closed = shared.drains.close(port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while shared.drains.open_on(port) != (0, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    closed
}

/// `traffic`: the recorded mode taken (held requests released or answered).
fn take_traffic(shared: &Shared, layout: &Layout) -> String {
    match traffic::read(layout) {
        Ok(record) => {
            let held = shared.traffic.set(&record);
            eprintln!(
                "shipjar proxy: traffic {} ({held} held request(s) at the change)",
                record.traffic.mode
            );
            format!("ok traffic {} {held}", record.traffic.mode)
        }
        Err(e) => format!("error {e}"),
    }
}

/// A page of the proxy's own.
fn page(status: StatusCode, text: String) -> Response<DownBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text + "\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An answer and the instance it came from (`None`: the proxy's own),
/// kept beside the response rather than in its extensions, which cost two
/// allocations per request.
type Routed = (Response<DownBody>, Option<Instance>);

/// The proxy's own answer.
fn own(response: Response<DownBody>) -> Routed {
    (response, None)
}

/// What a tunnel holds of its client connection: the connection busy (no
/// idle timeout) and its place under `max_connections`.
struct TunnelHold {
    _busy: Exchange,
    _admitted: Arc<super::conn::Admitted>,
}

/// One request, served with `settings`: routed to the active instance (held
/// while there is none), its headers as `headers` rules; `trusted`: the
/// peer is a trusted proxy.
/// An upgrade (WebSocket) becomes a tunnel on `101`, holding
/// `tunnel_hold` while it lives.
async fn handle(
    shared: Arc<Shared>,
    settings: Arc<ProxySpec>,
    peer: SocketAddr,
    trusted: bool,
    mut req: Request<Incoming>,
    tunnel_hold: Option<TunnelHold>,
) -> Result<Routed, Infallible> {
    if super::stream::declared_over(req.headers(), settings.max_request_body) {
        return Ok(own(request_too_large(&shared, &settings)));
    }
    let upgrade = tunnel::requested(req.headers())
        .zip(tunnel_hold)
        .map(|(protocol, hold)| (protocol, hyper::upgrade::on(&mut req), hold));
    let hold = Duration::from_millis(settings.hold_ms);
    let deadline = tokio::time::Instant::now() + hold;
    if let Err(answer) = shared
        .traffic
        .pass(&shared.name, settings.hold_ms, deadline)
        .await
    {
        return Ok(own(answer.map(Either::Right)));
    }
    let (mut parts, body) = req.into_parts();
    let proto = if shared.tls.is_some() {
        "https"
    } else {
        "http"
    };
    headers::forward_request(&mut parts.headers, peer.ip(), trusted, proto);
    if let Some((protocol, _, _)) = &upgrade {
        tunnel::restore(&mut parts.headers, protocol.clone());
    }
    // Kept here, not moved into the first attempt: an instance that dies
    // before a byte of the body went to it leaves the body to send again.
    let body = Arc::new(Mutex::new(Outgoing {
        body,
        sent: false,
        cap: BodyCap::new(settings.max_request_body),
    }));
    loop {
        let Some(mut flight) = wait_for_active(&shared, deadline).await else {
            return Ok(own(unavailable(&shared, &settings)));
        };
        match send(&shared, &settings, &parts, flight.port, &body).await {
            Sent::Answered(response, lease)
                if upgrade.is_none()
                    && held_whole(&parts, &response)
                    && !super::stream::declared_over(
                        response.headers(),
                        settings.max_response_body,
                    ) =>
            {
                // A small answer to a bodiless request is held until whole:
                // an instance killed mid-answer leaves the client nothing
                // half-sent, and the request goes again.
                let port = flight.port;
                match whole(response, &settings).await {
                    Some(response) => {
                        // Read whole: its connection can take the next request.
                        flight.lease = Some(lease);
                        return Ok((held_answer(response), Some(Instance(port))));
                    }
                    None => {
                        drop(flight);
                        if tokio::time::Instant::now() >= deadline {
                            return Ok(own(unavailable(&shared, &settings)));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Sent::Answered(response, lease) => {
                flight.lease = Some(lease);
                return Ok(answered(&shared, &settings, response, flight, upgrade));
            }
            Sent::Page(page) => return Ok(own(page)),
            // The instance went away (refused the connection, or closed it
            // before answering: killed, restarting) and no byte of the
            // body reached it: the request waits for an instance as it
            // would for a switch, and goes again.
            Sent::WentAway => {
                drop(flight);
                if tokio::time::Instant::now() >= deadline {
                    return Ok(own(unavailable(&shared, &settings)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The client's answer from the instance's: a `101` to an upgrade opens
/// the tunnel; any other is streamed, counted against its instance (and
/// among its streams) until sent, and capped by `max_response_body`.
fn answered(
    shared: &Shared,
    settings: &ProxySpec,
    mut response: Response<Incoming>,
    mut flight: InFlight,
    upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade, TunnelHold)>,
) -> Routed {
    let port = flight.port;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some((asked, client, hold)) = upgrade
    {
        // The connection becomes the tunnel's: it takes no more requests.
        flight.lease = None;
        let upstream = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned().unwrap_or(asked);
        headers::strip_hop_by_hop(&mut parts.headers);
        let websocket = tunnel::is_websocket(&protocol);
        tunnel::restore(&mut parts.headers, protocol);
        if let Some((open, cut)) = shared.drains.open(port, Kind::Tunnel) {
            tokio::spawn(tunnel::run(
                client,
                upstream,
                websocket,
                cut,
                (flight, hold, open),
            ));
        }
        let response = Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
        return (response, Some(Instance(port)));
    }
    if super::stream::declared_over(response.headers(), settings.max_response_body) {
        // Its answer is left unread: the connection goes with it.
        flight.lease = None;
        return own(response_too_large(shared, settings, port));
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let drain = shared.drains.open(port, Kind::Stream);
    let body = Streamed::new(body, flight, drain, settings.max_response_body);
    (
        Response::from_parts(parts, Either::Left(body)),
        Some(Instance(port)),
    )
}

/// The largest answer held until whole before its head goes out.
const HELD_WHOLE_MAX: u64 = 64 * 1024;

/// Whether an answer is held until whole: a GET or HEAD without a body, a
/// declared length up to [`HELD_WHOLE_MAX`], not a stream.
fn held_whole(request: &hyper::http::request::Parts, response: &Response<Incoming>) -> bool {
    let bodiless = matches!(request.method, hyper::Method::GET | hyper::Method::HEAD)
        && request
            .headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
        && !request.headers.contains_key(header::TRANSFER_ENCODING);
    let small = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= HELD_WHOLE_MAX);
    bodiless && small && response.status() != StatusCode::SWITCHING_PROTOCOLS
}

/// The whole answer, or `None` when its instance went away before its end
/// (or it did not come within the upstream timeout, 30 s without one).
async fn whole(response: Response<Incoming>, settings: &ProxySpec) -> Option<Response<Bytes>> {
    let limit = Duration::from_millis(settings.upstream_timeout_ms.unwrap_or(30_000));
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(limit, body_bytes(body)).await.ok()??;
    Some(Response::from_parts(parts, bytes))
}

/// A body's data whole, `None` when it failed. Most small answers come in
/// one frame, kept as it came (no list of frames, no copy).
async fn body_bytes<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Option<Bytes> {
    use http_body_util::BodyExt;
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else {
            continue; // trailers: not passed on for a held answer
        };
        match &first {
            None => first = Some(data),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    match rest.is_empty() {
        true => Some(first.unwrap_or_default()),
        false => Some(Bytes::from(rest)),
    }
}

/// A held answer, sent on whole.
fn held_answer(response: Response<Bytes>) -> Response<DownBody> {
    let (mut parts, bytes) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Right(Full::new(bytes)))
}

/// 413: the client's body is over `max_request_body`.
fn request_too_large(shared: &Shared, settings: &ProxySpec) -> Response<DownBody> {
    page(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "{}: the request body is over max_request_body = {} bytes (shipjar proxy)",
            shared.name,
            settings.max_request_body.unwrap_or_default()
        ),
    )
}

/// 502: the instance's body is over `max_response_body` (said before its head went out).
fn response_too_large(shared: &Shared, settings: &ProxySpec, port: u16) -> Response<DownBody> {
    page(
        StatusCode::BAD_GATEWAY,
        format!(
            "{}: the instance on port {port} answered a body over max_response_body = {} bytes \
             (shipjar proxy)",
            shared.name,
            settings.max_response_body.unwrap_or_default()
        ),
    )
}

/// What one attempt to send a request to an instance came to.
enum Sent {
    /// Its answer, and the connection it came on.
    Answered(Response<Incoming>, upstream::Lease<UpBody>),
    /// The proxy's own answer (a bad target, 504, 502).
    Page(Response<DownBody>),
    /// It went away before any of the body reached it: the request may go again.
    WentAway,
}

/// Sends the request (`parts`, the client's `body`) to the instance on
/// `port`, bounded by `upstream_timeout`.
async fn send(
    shared: &Shared,
    settings: &ProxySpec,
    parts: &hyper::http::request::Parts,
    port: u16,
    body: &Arc<Mutex<Outgoing>>,
) -> Sent {
    let up = Request::from_parts(parts.clone(), Relay(body.clone()));
    let sent = shared.upstream.send(port, up);
    let answered = match settings.upstream_timeout_ms {
        None => sent.await,
        Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), sent).await {
            Ok(answered) => answered,
            Err(_) => {
                return Sent::Page(page(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "{}: the instance on port {port} did not answer within {ms} ms \
                         (upstream_timeout, shipjar proxy)",
                        shared.name
                    ),
                ));
            }
        },
    };
    let (went_over, sent_any) = {
        let outgoing = body.lock().unwrap_or_else(PoisonError::into_inner);
        (outgoing.cap.went_over(), outgoing.sent)
    };
    match answered {
        Ok((response, lease)) => Sent::Answered(response, lease),
        Err(_) if went_over => Sent::Page(request_too_large(shared, settings)),
        Err(e) if e.went_away() && !sent_any => Sent::WentAway,
        Err(e) => {
            let why = if e.went_away() {
                " after part of the request body had gone to it"
            } else {
                ""
            };
            Sent::Page(page(
                StatusCode::BAD_GATEWAY,
                format!(
                    "{}: the instance on port {port} failed{why}: {e}",
                    shared.name
                ),
            ))
        }
    }
}

/// The client's body, kept by the handler across attempts, and what has
/// come of it so far; one allocation for all of it.
struct Outgoing {
    body: Incoming,
    /// A data frame went to an instance: the request cannot go again.
    sent: bool,
    /// `max_request_body`, counted as the body comes.
    cap: BodyCap,
}

/// The client's body on its way to an instance. It stays the handler's
/// (behind the mutex), so when an instance dies before `sent` the same
/// body goes to the next one whole.
struct Relay(Arc<Mutex<Outgoing>>);

impl Relay {
    fn outgoing(&self) -> std::sync::MutexGuard<'_, Outgoing> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut outgoing = self.outgoing();
        let polled = Pin::new(&mut outgoing.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref().filter(|d| !d.is_empty())
        {
            let len = data.len();
            if let Err(over) = outgoing.cap.count(len) {
                return Poll::Ready(Some(Err(Box::new(over))));
            }
            outgoing.sent = true;
        }
        polled.map_err(|e| Box::new(e) as BodyError)
    }

    fn is_end_stream(&self) -> bool {
        self.outgoing().body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.outgoing().body.size_hint()
    }
}

/// 503 once `hold` has passed without an instance to take the request.
fn unavailable(shared: &Shared, settings: &ProxySpec) -> Response<DownBody> {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{}: no healthy instance took this request within {} ms (shipjar proxy)",
            shared.name, settings.hold_ms
        ),
    )
}

/// The request's count on the active instance, once there is one; `None`
/// when none became active before `deadline`.
async fn wait_for_active(shared: &Arc<Shared>, deadline: tokio::time::Instant) -> Option<InFlight> {
    // The common case needs no subscription.
    if let Some(flight) = shared.enter() {
        return Some(flight);
    }
    let mut wake = shared.wake.subscribe();
    loop {
        if let Some(flight) = shared.enter() {
            return Some(flight);
        }
        let woke = tokio::time::timeout_at(deadline, wake.wait_for(|p| *p != 0)).await;
        if !matches!(woke, Ok(Ok(_))) {
            return shared.enter();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of the given data frames, then a trailers frame.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
    }

    fn frames(data: &[&'static str]) -> Frames {
        let mut frames: std::collections::VecDeque<_> = data
            .iter()
            .map(|d| Frame::data(Bytes::from_static(d.as_bytes())))
            .collect();
        frames.push_back(Frame::trailers(hyper::HeaderMap::new()));
        Frames(frames)
    }

    #[tokio::test]
    async fn a_held_answer_is_its_frames_joined_in_order() {
        for (data, whole) in [
            (&[][..], ""),
            (&["one frame"][..], "one frame"),
            (&["", "after an empty one"][..], "after an empty one"),
            (&["a", "", "b", "c"][..], "abc"),
        ] {
            assert_eq!(body_bytes(frames(data)).await.unwrap(), whole);
        }
    }
}
