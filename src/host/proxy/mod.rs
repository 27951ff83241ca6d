//! shipjar's own HTTP proxy for zero-downtime deploys on one host: a keeper
//! process holds the public socket and keeps a worker serving on it; the
//! worker routes each request to the active instance (one of two ports).
//! The agent switches it over a control socket, after writing the new
//! active port to a file by rename (so a restarted worker resumes there),
//! and waits on the old instance's in-flight count before stopping it.

mod access;
mod conn;
mod drain;
#[allow(clippy::disallowed_methods)] // root-only: run/NAME/proxy is root's
mod files;
mod headers;
mod keeper;
mod metrics;
mod stream;
#[allow(clippy::disallowed_methods)]
// root-only: the certificate's paths are the operator's own `[proxy] tls`, read
// by the worker after it became the service's user (as root only without one)
mod tls;
#[allow(clippy::disallowed_methods)] // root-only: traffic.json in root's run/NAME/proxy
mod traffic;
mod tunnel;
mod upstream;
#[allow(clippy::disallowed_methods)] // root-only: the control socket in root's run/NAME/proxy
mod worker;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::host::os::detached;
use crate::host::os::procfs::{self, Liveness};
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;
pub use crate::protocol::status::{ProxyState, ProxyStatus, Traffic};

pub use files::KeeperRecord;
pub use files::ensure_dir as ensure_run_dir;
pub use files::read_active as active;
pub use tls::check_pair as check_tls_pair;

/// How long a starting proxy may take to answer on its control socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// `service proxy --foreground`: the keeper.
pub fn run_keeper(layout: &Layout) -> i32 {
    keeper::run(layout)
}

/// `service proxy --worker`: the proxy itself (started by the keeper).
pub fn run_worker(layout: &Layout) -> i32 {
    worker::run(layout)
}

/// The proxy's state; every pid proven before it is reported.
pub fn status(layout: &Layout) -> ProxyStatus {
    let record = files::read_keeper(layout);
    // The keeper lives while it holds its lock; the kernel names the holder.
    let holder = keeper::holder(layout);
    let alive = holder.is_some();
    let keeper_pid = record
        .as_ref()
        .filter(|r| {
            holder.as_ref().is_some_and(|h| h.pid == r.keeper.pid)
                && procfs::liveness(r.keeper) == Liveness::Alive
        })
        .map(|r| r.keeper.pid);
    // The worker is the live keeper's child, as its record names it.
    let worker_pid = record
        .as_ref()
        .and_then(|r| r.worker)
        .filter(|w| {
            keeper_pid.is_some_and(|k| {
                procfs::liveness(*w) == Liveness::Alive
                    && procfs::stat(w.pid)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.ppid == k)
            })
        })
        .map(|w| w.pid);
    let answer = if alive {
        request(layout, "status").ok()
    } else {
        None
    };
    let parsed: Option<serde_json::Value> = answer.and_then(|a| serde_json::from_str(&a).ok());
    let inflight = parsed
        .as_ref()
        .and_then(|v| v.get("inflight"))
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let state = match (alive, parsed.is_some(), record.is_some()) {
        (true, true, _) => ProxyState::Running,
        (true, false, _) => ProxyState::Restarting,
        (false, _, true)
            if record
                .as_ref()
                .is_some_and(|r| r.last_exit.as_deref() != Some("stopped")) =>
        {
            ProxyState::Dead
        }
        _ => ProxyState::Stopped,
    };
    ProxyStatus {
        state,
        listen: record.as_ref().map(|r| r.listen.clone()),
        active: files::read_active(layout),
        keeper_pid,
        worker_pid,
        restarts: record.as_ref().map_or(0, |r| r.restarts),
        last_exit: record.and_then(|r| r.last_exit),
        inflight,
        instances: Vec::new(),
        runner_pid: None,
        runner_started_at: None,
        service_state: None,
        lsb_code: None,
        missing: Vec::new(),
        traffic: Some(traffic::read(layout).map_or_else(|_| Traffic::serving(), |r| r.traffic)),
        held: parsed
            .as_ref()
            .and_then(|v| v.get("held"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
    }
}

/// Records what the proxy does with new requests and tells the running
/// proxy, which confirms; the mode before and what the proxy did. A proxy
/// that runs not takes the record when it starts.
pub fn set_traffic(
    layout: &Layout,
    traffic: Traffic,
    page: Option<String>,
) -> Result<(Traffic, String), String> {
    let before = traffic::read(layout).map_or_else(|_| Traffic::serving(), |r| r.traffic);
    traffic::write(layout, &traffic::Record { traffic, page })?;
    if !keeper::is_held(layout) {
        return Ok((
            before,
            "recorded; the proxy is not running and starts in this mode".to_string(),
        ));
    }
    let answer = wait_request(layout, "traffic", START_TIMEOUT)
        .map_err(|e| format!("recorded, but the proxy did not confirm: {e}"))?;
    let mut words = answer.split_whitespace().skip(2);
    match (
        answer.starts_with("ok traffic "),
        words.next(),
        words.next(),
    ) {
        (true, Some(_), Some(held)) => Ok((
            before,
            format!("the proxy confirmed ({held} request(s) were held at the change)"),
        )),
        _ => Err(format!(
            "recorded, but the proxy answered `{answer}` to `traffic`"
        )),
    }
}

/// The keeper's record of itself and its worker, if there is one.
pub fn keeper_record(layout: &Layout) -> Option<KeeperRecord> {
    files::read_keeper(layout)
}

/// Starts the proxy with `spec` unless it runs already; returns once it
/// answers on its control socket. A running proxy keeps its address: a new
/// `listen` needs `service proxy --stop` first.
pub fn ensure_running(layout: &Layout, spec: &ProxySpec) -> Result<bool, String> {
    if keeper::is_held(layout) && wait_answering(layout, START_TIMEOUT).is_ok() {
        return Ok(false);
    }
    files::write_spec(layout, spec)?;
    let log_path = layout.proxy_log();
    // The log dir is the service user's: no link, FIFO or hard link there
    // may steer root's append.
    let log = crate::host::supervisor::logfile::open_append(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = detached::spawn(
        layout.root(),
        &["service", "proxy", layout.name(), "--foreground"],
        Stdio::from(log),
        err,
    )
    .map_err(|e| format!("cannot start the proxy: {e}"))?;
    let started = Instant::now();
    loop {
        if request(layout, "status").is_ok() {
            return Ok(true);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the proxy exited at start ({status}); its log: {}",
                last_line(&log_path)
            ));
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(format!(
                "the proxy did not answer within {} s; its log: {}",
                START_TIMEOUT.as_secs(),
                last_line(&log_path)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_answering(layout: &Layout, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match request(layout, "status") {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn last_line(path: &std::path::Path) -> String {
    // The log dir is the service user's: read through the guarded layer.
    crate::host::supervisor::logfile::tail(path, 1)
        .pop()
        .unwrap_or_else(|| "(empty)".to_string())
}

/// Whether the proxy's keeper is alive (it holds its lock).
pub fn keeper_alive(layout: &Layout) -> bool {
    keeper::is_held(layout)
}

/// Stops the proxy; `Ok(false)` when it was not running.
pub fn stop(layout: &Layout) -> Result<bool, String> {
    keeper::stop(layout, Duration::from_secs(10))
}

/// Makes `port` (or no instance) the one taking traffic: recorded by rename
/// first, then told to the proxy, which confirms.
pub fn switch(layout: &Layout, port: Option<u16>) -> Result<(), String> {
    let before = files::read_active(layout);
    files::write_active(layout, port)?;
    let line = match port {
        Some(p) => format!("switch {p}"),
        None => "none".to_string(),
    };
    let expected = format!("ok active {}", port.unwrap_or(0));
    let result = match wait_request(layout, &line, START_TIMEOUT) {
        Ok(answer) if answer == expected => Ok(()),
        Ok(answer) => Err(format!("the proxy answered `{answer}` to `{line}`")),
        Err(e) => Err(e),
    };
    if result.is_err() {
        // Unconfirmed: a proxy restarted later must resume where it was.
        let _ = files::write_active(layout, before);
    }
    result
}

/// Requests still in flight on the instance on `port`.
pub fn inflight(layout: &Layout, port: u16) -> Result<u64, String> {
    let answer = wait_request(layout, &format!("inflight {port}"), START_TIMEOUT)?;
    answer
        .strip_prefix("ok inflight ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("the proxy answered `{answer}`"))
}

/// Ends what is still open on the instance on `port` once its drain
/// deadline passed: `(tunnels, streams)`, the upgraded connections (a
/// WebSocket gets a close frame) and the responses still streaming.
pub fn close(layout: &Layout, port: u16) -> Result<(u64, u64), String> {
    let answer = wait_request(layout, &format!("close {port}"), START_TIMEOUT)?;
    let mut counts = answer
        .strip_prefix("ok closed ")
        .map(|rest| rest.split_whitespace().map(str::parse::<u64>));
    match counts.as_mut().map(|c| (c.next(), c.next())) {
        Some((Some(Ok(tunnels)), Some(Ok(streams)))) => Ok((tunnels, streams)),
        _ => Err(format!("the proxy answered `{answer}`")),
    }
}

/// Waits until no request is in flight on `port`, at most `timeout`;
/// `Ok(n)` with the requests still in flight when it gave up.
pub fn drain(layout: &Layout, port: u16, timeout: Duration) -> Result<u64, String> {
    let started = Instant::now();
    loop {
        let n = inflight(layout, port)?;
        if n == 0 || started.elapsed() >= timeout {
            // Counted for the metrics; an older worker's error answer is no matter.
            let _ = request(layout, &format!("drained {port} {n}"));
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request retried while the worker restarts (the keeper brings it back).
fn wait_request(layout: &Layout, line: &str, timeout: Duration) -> Result<String, String> {
    let started = Instant::now();
    loop {
        match request(layout, line) {
            Ok(a) => return Ok(a),
            Err(e) if started.elapsed() > timeout || !keeper::is_held(layout) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One line to the control socket, one line back.
fn request(layout: &Layout, line: &str) -> Result<String, String> {
    let path = files::socket_path(layout);
    let mut stream =
        UnixStream::connect(&path).map_err(|e| format!("the proxy's control socket: {e}"))?;
    stream
        .set_read_timeout(Some(CONTROL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CONTROL_TIMEOUT)))
        .and_then(|()| stream.write_all(format!("{line}\n").as_bytes()))
        .map_err(|e| format!("the proxy's control socket: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("the proxy's control socket: {e}"))?;
    if answer.is_empty() {
        return Err("the proxy closed its control socket without an answer".into());
    }
    Ok(answer.trim_end().to_string())
}
