//! Zero-downtime deploys behind shipjar's proxy, with real JVMs from
//! `examples/hello` and real sockets on 127.0.0.1.

mod common;
use common::proxied::{self, Cleanup, runner_pid};
use common::{exited_saying, ok};
#[path = "support/keep_alive.rs"]
mod keep_alive;

use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::host::{sigkill, wait_gone};
use common::{Project, free_port, http_get, text};
use keep_alive::Conn as KeepAlive;

/// The example behind a proxy on the project's port, instances on two free ports.
fn proxied_project() -> (Project, [u16; 2]) {
    proxied_project_with("")
}

/// `proxied_project` with `extra` lines in its `[proxy]` section.
fn proxied_project_with(extra: &str) -> (Project, [u16; 2]) {
    proxied::project(
        "",
        &format!("drain_timeout = \"20s\"\nhold = \"5s\"\n{extra}"),
    )
}

/// [`proxied_project_with`] `extra`, with 1.0.0 deployed, and its clean-up
/// (kept until the test ends).
#[track_caller]
fn deployed_behind_proxy(extra: &str) -> (Project, [u16; 2], Cleanup) {
    let (p, ports) = proxied_project_with(extra);
    let cleanup = Cleanup(p.root(), ports);
    ok(p.deploy("1.0.0", &[]));
    (p, ports, cleanup)
}

/// `service status` as text, which must have exited `code`.
#[track_caller]
fn service_status_is(p: &Project, code: i32) -> String {
    let (exited, status) = service_status(p);
    assert_eq!(exited, Some(code), "{status}");
    status
}

/// The service runs plain: `service status` running without a proxy, and
/// `service proxy --status` says no proxy runs.
#[track_caller]
fn assert_runs_without_proxy(p: &Project) {
    let status = service_status_is(p, 0);
    assert!(!status.contains("proxy"), "{status}");
    let proxy = p.service("proxy", &["--status"]);
    assert_eq!(proxy.status.code(), Some(3), "{}", text(&proxy));
}

/// SIGKILLs the proxy's `which` process (`keeper` or `worker`) as its
/// keeper recorded it; its pid.
fn kill_proxy_process(p: &Project, which: &str) -> i32 {
    let pid = recorded_pid(p, "proxy/keeper.json", &format!("/{which}/pid"))
        .unwrap_or_else(|| panic!("{which} pid"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    pid
}

/// The port of the instance taking traffic, as the runner recorded it.
fn active_port(p: &Project) -> u16 {
    std::fs::read_to_string(p.root().join("run/hello/proxy/active"))
        .expect("the active port")
        .trim()
        .parse()
        .expect("a port")
}

/// Ends a keep-alive client, which must have seen no error: the versions
/// it was answered (in order) and how many answers.
#[track_caller]
fn stop_client(
    stop: &AtomicBool,
    client: thread::JoinHandle<keep_alive::Seen>,
) -> (Vec<String>, usize) {
    stop.store(true, Ordering::SeqCst);
    let keep_alive::Seen {
        versions,
        errors,
        answered,
    } = client.join().expect("client thread");
    assert!(errors.is_empty(), "the client saw errors: {errors:?}");
    (versions, answered)
}

fn version_of(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("version")?.as_str().map(str::to_string)
}

fn service_status(p: &Project) -> (Option<i32>, String) {
    let out = p.service("status", &[]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_keep_alive_client_sees_no_error_through_deploys_and_a_failing_release_takes_no_traffic() {
    let (p, ports) = proxied_project();
    let _cleanup = Cleanup(p.root(), ports);
    let out = ok(p.deploy("1.0.0", &[]));
    assert!(text(&out).contains("proxy"), "{}", text(&out));
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
    let status = service_status_is(&p, 0);
    assert!(
        status.contains(&format!("instance {} (takes traffic)", ports[0])),
        "{status}"
    );

    // A client keeps one connection open and asks for /version without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_alive_client(p.port, stop.clone());

    ok(p.deploy("2.0.0", &[]));
    let failed = p.deploy("3.0.0", &["--env", "FAIL_ON_START=1"]);
    assert_ne!(failed.status.code(), Some(0), "{}", text(&failed));
    ok(p.deploy("4.0.0", &[]));
    let back = ok(p.run(&["rollback", "local"]));
    assert!(text(&back).contains("drained"), "{}", text(&back));
    thread::sleep(Duration::from_millis(300));
    let (seen, _) = stop_client(&stop, client);
    assert_eq!(
        seen,
        ["1.0.0", "2.0.0", "4.0.0", "2.0.0"],
        "versions in order, 3.0.0 never"
    );

    // Both instances are listed; the one of 2.0.0 takes traffic, the other is stopped.
    let status = service_status_is(&p, 0);
    assert!(status.contains("(takes traffic)"), "{status}");
    assert!(status.contains("(idle)"), "{status}");
    let (_, json) = p.status_json();
    assert_eq!(
        json["hosts"][0]["status"]["reported_version"], "2.0.0",
        "{json}"
    );
    assert_eq!(json["hosts"][0]["flags"], serde_json::json!([]), "{json}");
}

#[test]
fn a_request_in_flight_on_the_old_instance_completes() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let port = p.port;
    let slow = thread::spawn(move || KeepAlive::local(port).get("/slow?ms=6000"));
    thread::sleep(Duration::from_millis(500));
    let out = ok(p.deploy("2.0.0", &[]));
    let logs = ok(p.run(&["logs", "local", "-n", "200"]));
    assert!(
        text(&logs).contains("first healthy answer"),
        "the active instance's log: {}",
        text(&logs)
    );
    let answer = slow.join().expect("slow thread");
    assert_eq!(
        answer.as_ref().map(|(s, b)| (*s, b.trim())),
        Ok((200, "slept 6000 ms")),
        "{answer:?}"
    );
    assert!(text(&out).contains("drained"), "{}", text(&out));
    assert_eq!(p.served_version().as_deref(), Some("2.0.0"));
}

#[test]
fn the_proxy_comes_back_after_sigkill_and_status_says_so() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    kill_proxy_process(&p, "worker");
    // Requests keep being answered: the keeper's socket queues them meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = None;
    while Instant::now() < deadline {
        answered = http_get(p.port, "/version");
        if answered.as_ref().is_some_and(|(s, _)| *s == 200) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(answered.map(|a| a.0), Some(200));
    let status = service_status_is(&p, 0);
    assert!(
        status.contains("restarted 1 time(s) (last: killed by SIGKILL)"),
        "{status}"
    );

    // Stopped as a whole: LSB 3, and no instance said to take traffic.
    ok(p.service("stop", &[]));
    let status = service_status_is(&p, 3);
    assert!(!status.contains("takes traffic"), "{status}");
}

#[test]
fn a_request_waits_for_a_returning_instance_then_503_after_hold() {
    let (p, ports, _cleanup) = deployed_behind_proxy("");
    let root = p.root().to_str().unwrap().to_string();
    let active = ports[0].to_string();
    ok(p.run(&[
        "service",
        "stop",
        "hello",
        "--root",
        &root,
        "--instance",
        &active,
    ]));

    // No instance answers: held for `hold` (5 s), then a clear 503.
    let started = Instant::now();
    let (status, body) = http_get_slowly(p.port, "/version");
    let waited = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no healthy instance"), "{body}");
    assert!(waited >= Duration::from_millis(4500), "{waited:?}");

    // A request held while the instance comes back is answered.
    let port = p.port;
    let held = thread::spawn(move || http_get_slowly(port, "/version"));
    thread::sleep(Duration::from_millis(200));
    ok(p.service("start", &[]));
    let (status, body) = held.join().expect("held request");
    assert_eq!(
        (status, version_of(&body).as_deref()),
        (200, Some("1.0.0")),
        "{body}"
    );
}

/// One request on a fresh connection, with a read timeout long enough for `hold`.
fn http_get_slowly(port: u16, path: &str) -> (u16, String) {
    let mut conn = KeepAlive::local(port);
    conn.get(path).expect("an answer")
}

#[test]
fn a_new_instance_crashing_inside_settle_gives_the_traffic_back_to_the_old_one() {
    let (p, ports) = proxied_project();
    let _cleanup = Cleanup(p.root(), ports);
    let file = p.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&file).unwrap().replace(
        "probe_timeout = \"2s\"",
        "probe_timeout = \"2s\"\nsettle = \"5s\"",
    );
    std::fs::write(&file, config).unwrap();
    ok(p.deploy("1.0.0", &[]));
    let old = active_pid(&p);
    let out = p.deploy("2.0.0", &["--env", "CRASH_AFTER_S=2"]);
    let said = exited_saying(&out, 1, "settle FAILED: crashed ");
    // It settled taking the traffic: the switch came first, the drain never.
    assert!(said.contains("switch: proxy"), "{said}");
    assert!(!said.contains("drain:"), "{said}");
    // The old instance never stopped and takes the traffic again.
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
    assert_eq!(active_pid(&p), old);
    let last = p.revisions().pop().expect("a revision");
    assert!(last.contains("\tfailed\tsettle: crashed "), "{last}");
}

#[test]
fn proxy_off_by_default_leaves_a_plain_restart() {
    let p = Project::new();
    ok(p.deploy("1.0.0", &[]));
    assert!(!p.root().join("run/hello/proxy").exists());
}

#[test]
fn a_service_moves_behind_the_proxy_and_back() {
    let ports = [free_port(), free_port()];
    let p = Project::new();
    let _cleanup = Cleanup(p.root(), ports);
    ok(p.deploy("1.0.0", &[]));
    let plain = std::fs::read_to_string(p.path().join("shipjar.toml")).unwrap();
    let proxied = format!(
        "{plain}\n[proxy]\nlisten = \"127.0.0.1:{}\"\nports = [{}, {}]\n",
        p.port, ports[0], ports[1]
    );
    std::fs::write(p.path().join("shipjar.toml"), proxied).unwrap();
    let out = ok(p.deploy("2.0.0", &[]));
    assert!(
        text(&out).contains("the service without proxy"),
        "{}",
        text(&out)
    );
    assert_eq!(p.served_version().as_deref(), Some("2.0.0"));
    let status = service_status_is(&p, 0);
    assert!(status.contains("proxy running"), "{status}");

    // Back to a plain restart: the proxy and its instances make way.
    std::fs::write(p.path().join("shipjar.toml"), plain).unwrap();
    ok(p.deploy("3.0.0", &[]));
    assert_eq!(p.served_version().as_deref(), Some("3.0.0"));
    assert_runs_without_proxy(&p);
}

/// A keep-alive client asking the proxy on `port` for /version without
/// pause until `stop`.
fn keep_alive_client(port: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<keep_alive::Seen> {
    keep_alive::spawn(([127, 0, 0, 1], port).into(), stop)
}

/// `keep_alive_client` asking for `path`.
fn keep_alive_client_on(
    port: u16,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<keep_alive::Seen> {
    keep_alive::spawn_asking(([127, 0, 0, 1], port).into(), path, stop)
}

/// The pid of the instance taking traffic, from `service status --json`.
fn active_pid(p: &Project) -> Option<i64> {
    let out = p.service("status", &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["instances"]
        .as_array()?
        .iter()
        .find(|i| i["active"] == true)?["service"]["pid"]
        .as_i64()
}

#[test]
fn restart_and_reload_behind_the_proxy_drop_no_request() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let mut pid = active_pid(&p).expect("an active instance");

    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_alive_client(p.port, stop.clone());
    for verb in ["restart", "reload", "restart"] {
        let out = p.service(verb, &[]);
        assert_eq!(out.status.code(), Some(0), "{verb}: {}", text(&out));
        assert!(text(&out).contains("drained"), "{verb}: {}", text(&out));
        let now = active_pid(&p).expect("an active instance");
        assert_ne!(now, pid, "{verb} started a new instance");
        pid = now;
    }
    thread::sleep(Duration::from_millis(300));
    let (seen, answered) = stop_client(&stop, client);
    assert!(answered > 10, "only {answered} answers");
    assert_eq!(seen, ["1.0.0"]);
    service_status_is(&p, 0);
    assert!(runner_pid(&p.root()).is_some(), "a runner supervises it");
}

#[test]
fn the_runner_brings_back_a_killed_proxy_keeper_and_start_stop_go_through_it() {
    let (p, ports) = proxied_project();
    let _cleanup = Cleanup(p.root(), ports);
    let out = ok(p.deploy("1.0.0", &[]));
    assert!(
        text(&out).contains("supervised by their runner"),
        "{}",
        text(&out)
    );
    let runner = runner_pid(&p.root()).expect("the deploy left a runner");

    let keeper = kill_proxy_process(&p, "keeper");
    // How long the public port refuses connections: from the old worker's
    // end until the runner's next keeper has bound it again.
    let killed = Instant::now();
    let (mut refused_since, mut longest) = (None::<Instant>, Duration::ZERO);
    while killed.elapsed() < Duration::from_secs(3) {
        match TcpStream::connect(("127.0.0.1", p.port)) {
            Err(_) => {
                refused_since.get_or_insert_with(Instant::now);
            }
            Ok(_) => {
                if let Some(since) = refused_since.take() {
                    longest = longest.max(since.elapsed());
                }
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "connections to the public port refused for at most {} ms after the keeper was killed",
        longest.as_millis()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = String::new();
    while Instant::now() < deadline {
        status = service_status(&p).1;
        // The old worker may answer for a moment after its keeper died.
        if status.starts_with("proxy running")
            && status.contains("restarted")
            && http_get(p.port, "/version").is_some()
        {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        status.contains(&format!(
            "restarted 1 time(s) (last: keeper pid {keeper} died)"
        )),
        "{status}\n{}\n{}",
        std::fs::read_to_string(p.root().join("run/hello/proxy/keeper.json")).unwrap_or_default(),
        std::fs::read_to_string(p.root().join("log/hello/proxy.log")).unwrap_or_default()
    );
    assert_eq!(http_get(p.port, "/version").map(|a| a.0), Some(200));
    assert_eq!(runner_pid(&p.root()), Some(runner));

    // Stopped through the runner: it goes, and with it both instances and the proxy.
    ok(p.service("stop", &[]));
    assert_eq!(runner_pid(&p.root()), None);
    service_status_is(&p, 3);
    assert!(http_get(p.port, "/version").is_none());

    // Started again: a runner, the instance behind the proxy, answering.
    ok(p.service("start", &[]));
    assert!(runner_pid(&p.root()).is_some());
    assert_eq!(http_get(p.port, "/version").map(|a| a.0), Some(200));
    service_status_is(&p, 0);
}

/// `service run` of a proxied service, as a systemd unit runs it: it takes
/// the service over from the runner a deploy left (the instance keeps
/// running), sends READY=1 on a real notify socket only when the proxy
/// answers, and on SIGTERM stops both instances and the proxy, exiting 0.
#[test]
fn service_run_takes_over_notifies_ready_and_stops_everything_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let detached = runner_pid(&p.root()).expect("the deploy left a runner");
    let instance = active_pid(&p).expect("an active instance");

    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut run = std::process::Command::new(common::shipjar_bin())
        .args(["service", "run", "hello", "--root"])
        .arg(p.root())
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start service run");
    let mut buf = [0u8; 4096];
    let ready = loop {
        let n = socket.recv(&mut buf).expect("a notification within 60 s");
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.contains("READY=1") {
            break message;
        }
    };
    // Ready means served through the proxy, by the same instance.
    assert_eq!(
        http_get(p.port, "/version").map(|a| a.0),
        Some(200),
        "{ready}"
    );
    assert!(ready.contains(&format!("MAINPID={}", run.id())), "{ready}");
    assert_eq!(runner_pid(&p.root()), Some(run.id() as i32));
    assert_ne!(runner_pid(&p.root()), Some(detached));
    // The detached runner left (without stopping anything).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{detached}")).exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!std::path::Path::new(&format!("/proc/{detached}")).exists());
    assert_eq!(active_pid(&p), Some(instance), "the instance kept running");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = run.wait().expect("service run ends");
    let mut err = String::new();
    if let Some(mut e) = run.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(http_get(p.port, "/version").is_none(), "{err}");
    service_status_is(&p, 3);
}

/// A start whose proxy cannot listen (the address taken) fails with the
/// reason and leaves nothing running; once the address is free it starts.
#[test]
fn a_failed_start_says_why_and_leaves_nothing_running() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    ok(p.service("stop", &[]));

    let taken = std::net::TcpListener::bind(("127.0.0.1", p.port)).expect("take the address");
    let start = p.service("start", &[]);
    assert_ne!(start.status.code(), Some(0), "{}", text(&start));
    assert!(text(&start).contains("cannot listen"), "{}", text(&start));
    let status = service_status_is(&p, 3);
    assert_eq!(runner_pid(&p.root()), None);
    assert_eq!(active_pid(&p), None, "{status}");

    drop(taken);
    ok(p.service("start", &[]));
    assert_eq!(http_get(p.port, "/version").map(|a| a.0), Some(200));
}

/// One HTTP/1.1 connection written to by hand, for what a well-behaved
/// client would never send.
struct Raw {
    reader: std::io::BufReader<TcpStream>,
}

/// An answer read off a `Raw` connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header names in lower case, in order.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Raw {
    /// A connection to the proxy on 127.0.0.1:`port` from 127.0.0.1.
    fn local(port: u16) -> Raw {
        Raw::from_source(port, [127, 0, 0, 1])
    }

    /// A connection to the proxy on 127.0.0.1:`port` from the loopback
    /// address `source` (the whole of 127.0.0.0/8 is this machine's).
    fn from_source(port: u16, source: [u8; 4]) -> Raw {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime to connect with");
        let stream = runtime
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind((source, 0).into())?;
                socket.connect(([127, 0, 0, 1], port).into()).await
            })
            .and_then(|s| s.into_std())
            .expect("connect to the proxy");
        stream.set_nonblocking(false).expect("blocking socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        Raw {
            reader: std::io::BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &str) {
        use std::io::Write;
        self.reader
            .get_mut()
            .write_all(bytes.as_bytes())
            .expect("write to the proxy");
    }

    /// The next answer on the connection, or what went wrong reading it.
    fn answer(&mut self) -> Result<Answer, String> {
        use std::io::BufRead;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line `{line}`"))?;
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            self.reader
                .read_line(&mut header)
                .map_err(|e| format!("read: {e}"))?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| format!("bad header `{header}`"))?;
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// How long until the proxy closed the connection (end of stream or a
    /// reset), reading and dropping anything it sends; `None` when it was
    /// still open after `within`.
    fn closed_within(&mut self, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        self.reader
            .get_ref()
            .set_read_timeout(Some(within))
            .expect("read timeout");
        let mut buf = [0u8; 1024];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(_) => return Some(started.elapsed()),
            }
        }
    }
}

/// The request headers the instance got, from hello's `/headers`.
fn headers_seen(answer: &Answer) -> serde_json::Value {
    assert_eq!(answer.status, 200, "{answer:?}");
    serde_json::from_str(&answer.body).expect("a JSON object of headers")
}

#[test]
fn connection_cannot_remove_or_replace_the_proxys_headers() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let mut conn = Raw::local(p.port);
    conn.send(
        "GET /headers HTTP/1.1\r\nHost: hello.test\r\n\
         Connection: X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, Host\r\n\
         Connection: Forwarded, X-Real-IP, X-Private\r\nX-Private: 1\r\n\r\n",
    );
    let seen = headers_seen(&conn.answer().expect("an answer"));
    assert_eq!(seen["host"], "hello.test", "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "hello.test", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    // What the client may name: its own hop-by-hop headers.
    assert!(seen.get("x-private").is_none(), "{seen}");
    assert!(seen.get("connection").is_none(), "{seen}");
}

#[test]
fn forwarding_headers_are_dropped_from_an_untrusted_peer_and_appended_to_from_a_trusted_one() {
    let (p, _, _cleanup) = deployed_behind_proxy("trusted_proxies = [\"127.0.0.2\"]\n");
    let request = "GET /headers HTTP/1.1\r\nHost: hello.test\r\n\
                   Forwarded: for=10.9.9.9;proto=https\r\nX-Forwarded-For: 10.9.9.9\r\n\
                   X-Forwarded-Host: admin.internal\r\nX-Forwarded-Proto: https\r\n\
                   X-Real-IP: 10.9.9.9\r\n\r\n";

    let mut untrusted = Raw::local(p.port);
    untrusted.send(request);
    let seen = headers_seen(&untrusted.answer().expect("an answer"));
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "hello.test", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert!(seen.get("forwarded").is_none(), "{seen}");
    assert!(seen.get("x-real-ip").is_none(), "{seen}");

    let mut trusted = Raw::from_source(p.port, [127, 0, 0, 2]);
    trusted.send(request);
    let seen = headers_seen(&trusted.answer().expect("an answer"));
    assert_eq!(seen["x-forwarded-for"], "10.9.9.9, 127.0.0.2", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "admin.internal", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(seen["forwarded"], "for=10.9.9.9;proto=https", "{seen}");
    assert_eq!(seen["x-real-ip"], "10.9.9.9", "{seen}");
}

#[test]
fn half_a_request_head_is_closed_after_header_timeout_and_an_idle_connection_after_idle_timeout() {
    let (p, _, _cleanup) =
        deployed_behind_proxy("header_timeout = \"1s\"\nidle_timeout = \"3s\"\n");

    // Half a head, then nothing: closed once header_timeout has passed.
    let mut slow = Raw::local(p.port);
    slow.send("GET /version HTTP/1.1\r\nHost: hello.test\r\n");
    let closed = slow.closed_within(Duration::from_secs(10));
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(900)),
        "half a request head was still open (or closed early) after {closed:?}"
    );

    // A keep-alive connection idle for longer than header_timeout (but not
    // idle_timeout) still takes a request; idle past idle_timeout, it is closed.
    let mut idle = Raw::local(p.port);
    idle.send("GET /version HTTP/1.1\r\nHost: hello.test\r\n\r\n");
    assert_eq!(idle.answer().expect("an answer").status, 200);
    // Pipelined requests (the next head already read while one is answered).
    idle.send(
        "GET /slow?ms=1200 HTTP/1.1\r\nHost: hello.test\r\n\r\n\
         GET /version HTTP/1.1\r\nHost: hello.test\r\n\r\n",
    );
    assert_eq!(
        idle.answer().expect("the first pipelined answer").status,
        200
    );
    assert_eq!(
        idle.answer().expect("the second pipelined answer").status,
        200
    );
    thread::sleep(Duration::from_millis(1800));
    idle.send("GET /version HTTP/1.1\r\nHost: hello.test\r\n\r\n");
    assert_eq!(
        idle.answer().expect("an answer after 1.8 s idle").status,
        200
    );
    let closed = idle.closed_within(Duration::from_secs(15));
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(2800)),
        "an idle connection was still open (or closed early) after {closed:?}"
    );
}

#[test]
fn connections_over_max_connections_are_answered_503_at_once() {
    let (p, _, _cleanup) = deployed_behind_proxy("max_connections = 2\n");

    // Two connections that send nothing hold the two places.
    let mut first = Raw::local(p.port);
    let _second = Raw::local(p.port);
    thread::sleep(Duration::from_millis(200));
    // The third is answered without sending its request.
    let started = Instant::now();
    let mut third = Raw::local(p.port);
    let answer = third.answer().expect("an answer over the cap");
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert!(answer.body.contains("max_connections = 2"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(third.closed_within(Duration::from_secs(5)).is_some());
    // One that sends its request first gets the answer too, not a reset.
    for _ in 0..20 {
        let mut eager = Raw::local(p.port);
        eager.send("GET /version HTTP/1.1\r\nHost: hello.test\r\n\r\n");
        let answer = eager.answer().expect("an answer over the cap");
        assert_eq!(answer.status, 503, "{answer:?}");
    }

    // A place given back takes the next connection.
    first.send("GET /version HTTP/1.1\r\nHost: hello.test\r\nConnection: close\r\n\r\n");
    assert_eq!(first.answer().expect("an answer").status, 200);
    assert!(first.closed_within(Duration::from_secs(5)).is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = Raw::local(p.port);
        next.send("GET /version HTTP/1.1\r\nHost: hello.test\r\n\r\n");
        let status = next.answer().map(|a| a.status);
        if status == Ok(200) {
            break;
        }
        assert!(Instant::now() < deadline, "no place came free: {status:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_instance_slower_than_upstream_timeout_is_answered_504() {
    let (p, _, _cleanup) = deployed_behind_proxy("upstream_timeout = \"1s\"\n");
    let mut conn = Raw::local(p.port);
    let started = Instant::now();
    conn.send("GET /slow?ms=4000 HTTP/1.1\r\nHost: hello.test\r\n\r\n");
    let answer = conn.answer().expect("an answer");
    let waited = started.elapsed();
    assert_eq!(answer.status, 504, "{answer:?}");
    assert!(answer.body.contains("upstream_timeout"), "{answer:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // A request within the limit is answered, on the same connection.
    conn.send("GET /slow?ms=100 HTTP/1.1\r\nHost: hello.test\r\n\r\n");
    let answer = conn.answer().expect("an answer");
    assert_eq!((answer.status, answer.body.trim()), (200, "slept 100 ms"));
}

#[test]
fn the_proxy_serves_with_the_settings_of_the_release_taking_traffic() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let slow = |port: u16| {
        let mut conn = Raw::local(port);
        conn.send("GET /slow?ms=2500 HTTP/1.1\r\nHost: hello.test\r\n\r\n");
        conn.answer().expect("an answer").status
    };
    assert_eq!(slow(p.port), 200, "no upstream_timeout yet");

    // `[proxy]` is the file's last section: the next deploy carries a limit.
    let config = p.path().join("shipjar.toml");
    let before = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{before}upstream_timeout = \"1s\"\n")).unwrap();
    ok(p.deploy("2.0.0", &[]));
    assert_eq!(
        slow(p.port),
        504,
        "the running proxy took the new release's limit"
    );

    // A rollback brings the old release's settings back with it.
    ok(p.run(&["rollback", "local"]));
    assert_eq!(slow(p.port), 200, "the rolled-back release has no limit");
}

/// `proxy.log` is in the service user's log dir, and the proxy's start
/// opens it as root: a symlink planted there to a root file must not get
/// the proxy's output appended (it used to: plain create + append).
#[test]
fn a_proxy_log_planted_as_a_symlink_leaves_its_target_unchanged() {
    let (p, ports) = proxied_project();
    let _cleanup = Cleanup(p.root(), ports);
    let decoy = p.path().join("root-file");
    std::fs::write(&decoy, "root's own\n").expect("write decoy");
    let log_dir = p.root().join("var/log/hello");
    std::fs::create_dir_all(&log_dir).expect("mkdir");
    let proxy_log = log_dir.join("proxy.log");
    std::os::unix::fs::symlink(&decoy, &proxy_log).expect("symlink");
    ok(p.deploy("1.0.0", &[]));
    assert_eq!(
        std::fs::read_to_string(&decoy).expect("decoy"),
        "root's own\n"
    );
    let meta = std::fs::symlink_metadata(&proxy_log).expect("proxy.log");
    assert!(meta.is_file(), "a new proxy.log in place of the link");
    let aside = std::fs::symlink_metadata(log_dir.join("proxy.log.refused-1")).expect("aside");
    assert!(aside.file_type().is_symlink());
}

#[test]
fn check_on_a_proxied_stage_looks_at_the_proxy_and_instance_ports_not_the_health_port() {
    let ports = [free_port(), free_port()];
    let listen = free_port();
    let p = Project::with_config(|c| {
        format!(
            "{c}\n[proxy]\nlisten = \"127.0.0.1:{listen}\"\nports = [{}, {}]\n",
            ports[0], ports[1]
        )
    });
    // Someone else holds the [health] URL's port, which a proxied stage never uses.
    let other = std::net::TcpListener::bind(("127.0.0.1", p.port)).expect("hold the port");
    let out = p.run(&["check", "local"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains("held by another program"), "{all}");
    for port in [listen, ports[0], ports[1]] {
        assert!(
            all.contains(&format!("port {port}")),
            "port {port} not checked: {all}"
        );
    }
    assert!(!all.contains(&format!("port {}:", p.port)), "{all}");
    drop(other);
}

#[test]
fn a_deploy_and_a_reload_racing_take_turns_and_no_request_fails() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_alive_client(p.port, stop.clone());
    // A slow start keeps the deploy's gate open while the reload arrives
    // (it returns once the deploy holds its lock).
    let deploy = p.spawn_slow_deploy("2.0.0", 2500);
    thread::sleep(Duration::from_millis(800));
    let reload = p.service("reload", &[]);
    let deployed = deploy.wait_with_output().expect("deploy output");
    assert_eq!(
        deployed.status.code(),
        Some(0),
        "deploy: {}",
        text(&deployed)
    );
    assert_eq!(reload.status.code(), Some(0), "reload: {}", text(&reload));
    thread::sleep(Duration::from_millis(300));
    let (seen, answered) = stop_client(&stop, client);
    assert!(answered > 10, "only {answered} answers");
    assert_eq!(seen.last().map(String::as_str), Some("2.0.0"), "{seen:?}");
    service_status_is(&p, 0);
}

/// A pid from a JSON record under the test's own root, e.g. the keeper's.
fn recorded_pid(p: &Project, file: &str, pointer: &str) -> Option<i32> {
    let text = std::fs::read_to_string(p.root().join("run/hello").join(file)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.pointer(pointer)?.as_i64().map(|n| n as i32)
}

/// `shipjar status local` as text and as JSON: (exit code, text, this host's flags).
fn operator_status(p: &Project) -> (Option<i32>, String, Vec<String>) {
    let out = p.run(&["status", "local"]);
    let (_, json) = p.status_json();
    let flags = json["hosts"][0]["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (out.status.code(), text(&out), flags)
}

#[test]
fn a_killed_runner_makes_status_dead_naming_it_and_since_when() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    service_status_is(&p, 0);
    let runner = runner_pid(&p.root()).expect("the deploy left a runner");
    sigkill(runner);
    wait_gone(runner, Duration::from_secs(10));

    // The proxy and the instance still serve, but nothing supervises them.
    assert_eq!(http_get(p.port, "/version").map(|a| a.0), Some(200));
    let status = service_status_is(&p, 1);
    assert!(
        status.contains(&format!(
            "missing runner: pid {runner} is gone without having been stopped (last started at 20"
        )),
        "{status}"
    );
    assert!(status.contains("dead: 1 part(s) missing"), "{status}");
    let (code, said, flags) = operator_status(&p);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("  ! missing runner: pid"), "{said}");
    assert!(!said.contains("  ok\n"), "{said}");
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert!(flags[0].starts_with("missing runner: "), "{flags:?}");

    // `service start` puts a runner back over what runs: all well again.
    ok(p.service("start", &[]));
    service_status_is(&p, 0);
    let (code, said, _) = operator_status(&p);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("  runner:    pid "), "{said}");
}

/// With its runner alive a killed keeper is back within moments, so the
/// honest check is that status is all well again (not that it ever saw the
/// gap); with the runner dead too, nothing brings it back: both are named.
#[test]
fn a_killed_keeper_is_back_under_its_runner_and_named_missing_without_one() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let keeper = recorded_pid(&p, "proxy/keeper.json", "/keeper/pid").expect("keeper pid");
    let worker = recorded_pid(&p, "proxy/keeper.json", "/worker/pid").expect("worker pid");
    sigkill(keeper);
    sigkill(worker);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut code, mut status) = (None, String::new());
    while Instant::now() < deadline {
        (code, status) = service_status(&p);
        if code == Some(0) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(code, Some(0), "{status}");
    assert!(!status.contains("missing"), "{status}");
    let back = recorded_pid(&p, "proxy/keeper.json", "/keeper/pid").expect("a new keeper");
    assert_ne!(back, keeper);

    let runner = runner_pid(&p.root()).expect("a runner");
    sigkill(runner);
    wait_gone(runner, Duration::from_secs(10));
    let worker = recorded_pid(&p, "proxy/keeper.json", "/worker/pid").expect("worker pid");
    sigkill(back);
    sigkill(worker);
    wait_gone(back, Duration::from_secs(10));
    let status = service_status_is(&p, 1);
    assert!(
        status.contains(&format!("missing runner: pid {runner} is gone")),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "missing keeper: pid {back} is gone without having been stopped (last started at 20"
        )),
        "{status}"
    );
    let (code, said, flags) = operator_status(&p);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        flags.iter().any(|f| f.starts_with("missing runner: ")),
        "{flags:?}"
    );
    assert!(
        flags.iter().any(|f| f.starts_with("missing keeper: ")),
        "{flags:?}"
    );
}

#[test]
fn a_killed_active_instance_is_named_with_its_port_and_its_last_sign_of_life() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let active = active_port(&p);
    let dir = format!("instance-{active}");
    let supervisor =
        recorded_pid(&p, &format!("{dir}/supervisor.json"), "/supervisor/pid").expect("supervisor");
    let jvm = std::fs::read_to_string(p.root().join(format!("run/hello/{dir}/hello.pid")))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .expect("the instance's pid");
    // Without its runner (which would start it again): killed first.
    let runner = runner_pid(&p.root()).expect("a runner");
    sigkill(runner);
    wait_gone(runner, Duration::from_secs(10));
    sigkill(supervisor);
    sigkill(jvm);
    wait_gone(supervisor, Duration::from_secs(10));
    wait_gone(jvm, Duration::from_secs(10));

    let status = service_status_is(&p, 1);
    assert!(status.contains("missing runner"), "{status}");
    assert!(
        status.contains(&format!(
            "missing active instance {active}: dead: supervisor pid {supervisor} is gone"
        )),
        "{status}"
    );
    assert!(status.contains("last sign of life at 20"), "{status}");
    assert!(!status.contains("supervises"), "{status}");
    let (code, said, flags) = operator_status(&p);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        flags
            .iter()
            .any(|f| f.starts_with(&format!("missing active instance {active}: dead"))),
        "{flags:?}"
    );
}

/// A stop asked for is "stopped" (LSB 3), not dead — also when the runner
/// had been killed before the stop.
#[test]
fn a_service_stopped_by_request_is_stopped_not_dead_even_after_its_runner_died() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let root = p.root().to_str().unwrap().to_string();
    ok(p.service("stop", &[]));
    let status = service_status_is(&p, 3);
    assert!(
        status.contains("stopped: the proxy and both instances"),
        "{status}"
    );
    assert!(!status.contains("missing"), "{status}");
    let (code, said, flags) = operator_status(&p);
    assert_eq!(code, Some(1), "a stopped service is a finding: {said}");
    assert_eq!(flags, ["stopped: the proxy and both instances"], "{said}");

    ok(p.service("start", &[]));
    let runner = runner_pid(&p.root()).expect("a runner");
    sigkill(runner);
    wait_gone(runner, Duration::from_secs(10));
    ok(p.service("stop", &[]));
    let status = service_status_is(&p, 3);
    assert!(!status.contains("missing"), "{status}");
    let out = p.run(&["--json", "service", "status", "hello", "--root", &root]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["service_state"], "stopped", "{json}");
    assert_eq!(json["lsb_code"], 3, "{json}");
}

/// `shipjar --json service VERB hello --root ROOT EXTRA…`: its exit code and
/// the one JSON object it printed.
fn service_json(p: &Project, verb: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let root = p.root().to_string_lossy().into_owned();
    let mut args = vec!["--json", "service", verb, "hello", "--root", &root];
    args.extend_from_slice(extra);
    let out = p.run(&args);
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "service {verb} {extra:?}: not one JSON object: {e}\n{}",
            text(&out)
        )
    });
    (out.status.code(), value)
}

/// Every `service` action on the proxied whole, and `service proxy` on the
/// proxy alone, honours `--json`: one object each, matching what runs.
#[test]
fn every_service_action_behind_the_proxy_prints_a_json_report_that_matches_what_runs() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    let runner = runner_pid(&p.root()).expect("the deploy left a runner");

    let (code, status) = service_json(&p, "status", &[]);
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["service_state"], "running", "{status}");
    assert_eq!(status["lsb_code"], 0, "{status}");
    assert_eq!(status["runner_pid"], runner, "{status}");
    let first = active_pid(&p).expect("an active instance");

    let (code, restarted) = service_json(&p, "restart", &[]);
    assert_eq!(code, Some(0), "{restarted}");
    let second = active_pid(&p).expect("an active instance");
    assert_ne!(second, first, "{restarted}");
    assert_eq!(restarted["pid"], second, "{restarted}");
    assert_eq!(restarted["already_running"], false, "{restarted}");

    let (code, reloaded) = service_json(&p, "reload", &[]);
    assert_eq!(code, Some(0), "{reloaded}");
    let third = active_pid(&p).expect("an active instance");
    assert_ne!(third, second, "{reloaded}");
    let how = reloaded["how"].as_str().expect("how");
    assert!(
        how.starts_with(&format!("restarted without downtime: pid {third} ")),
        "{reloaded}"
    );

    let (code, stopped) = service_json(&p, "stop", &[]);
    assert_eq!(code, Some(0), "{stopped}");
    assert_eq!(stopped["was_running"], true, "{stopped}");
    assert!(stopped["took_ms"].is_u64(), "{stopped}");
    let runner = runner_pid(&p.root());
    assert!(
        stopped["how"]
            .as_str()
            .is_some_and(|h| h.starts_with("its runner pid ")),
        "{stopped}"
    );
    assert_eq!(runner, None, "the runner is gone: {stopped}");
    wait_gone(third as i32, Duration::from_secs(10));
    assert!(http_get(p.port, "/version").is_none(), "{stopped}");
    let (code, status) = service_json(&p, "status", &[]);
    assert_eq!(code, Some(3), "{status}");
    assert_eq!(status["service_state"], "stopped", "{status}");
    let (code, again) = service_json(&p, "stop", &[]);
    assert_eq!(code, Some(0), "{again}");
    assert_eq!(again["was_running"], false, "{again}");
    assert_eq!(again["how"], "not running", "{again}");
}

/// `service proxy` on the proxy alone honours `--json` too: started, asked,
/// stopped, stopped again (with the whole stopped first, so no runner brings
/// the proxy back).
#[test]
fn service_proxy_start_status_and_stop_print_a_json_report_that_matches_what_runs() {
    let (p, _, _cleanup) = deployed_behind_proxy("");
    ok(p.service("stop", &[]));
    assert_eq!(runner_pid(&p.root()), None);

    let (code, proxy) = service_json(&p, "proxy", &[]);
    assert_eq!(code, Some(0), "{proxy}");
    assert_eq!(proxy["state"], "running", "{proxy}");
    let keeper = proxy["keeper_pid"].as_i64().expect("keeper pid") as i32;
    assert_eq!(
        recorded_pid(&p, "proxy/keeper.json", "/keeper/pid"),
        Some(keeper)
    );
    let (code, proxy) = service_json(&p, "proxy", &["--status"]);
    assert_eq!(code, Some(0), "{proxy}");
    assert_eq!(proxy["keeper_pid"], keeper, "{proxy}");
    let (code, stopped) = service_json(&p, "proxy", &["--stop"]);
    assert_eq!(code, Some(0), "{stopped}");
    assert_eq!(stopped["was_running"], true, "{stopped}");
    wait_gone(keeper, Duration::from_secs(10));
    assert!(http_get(p.port, "/version").is_none(), "{stopped}");
    let (code, proxy) = service_json(&p, "proxy", &["--status"]);
    assert_eq!(code, Some(3), "{proxy}");
    assert_eq!(proxy["state"], "stopped", "{proxy}");
    let (code, again) = service_json(&p, "proxy", &["--stop"]);
    assert_eq!(code, Some(0), "{again}");
    assert_eq!(again["was_running"], false, "{again}");
}

/// The instance taking traffic, killed ten times over: five times its JVM
/// (its supervisor restarts it), five times its supervisor and its JVM
/// (the runner starts it again). A keep-alive client asking without pause
/// sees no error: requests wait for the instance (`hold`) and a request the
/// dying instance took without answering goes again.
#[test]
fn a_keep_alive_client_sees_no_error_while_the_active_instance_is_sigkilled_ten_times() {
    let (p, _, _cleanup) = deployed_behind_proxy(
        "[restart]\nmax_failures = 50\ninitial_delay = \"100ms\"\nmax_delay = \"500ms\"",
    );
    let active = active_port(&p);
    let dir = format!("instance-{active}");
    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_alive_client(p.port, stop.clone());
    // Requests the instance is busy with when it dies.
    let slow = keep_alive_client_on(p.port, "/slow?ms=150", stop.clone());
    let mut killed = Vec::new();
    for round in 0..10 {
        // Running and healthy again before each kill.
        let deadline = Instant::now() + Duration::from_secs(60);
        let jvm = loop {
            let (code, status) = service_status(&p);
            if code == Some(0)
                && let Some(pid) = active_pid(&p)
                && !killed.contains(&pid)
            {
                break pid as i32;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: not back: {status}"
            );
            thread::sleep(Duration::from_millis(100));
        };
        thread::sleep(Duration::from_millis(300));
        if round % 2 == 1 {
            let supervisor = recorded_pid(&p, &format!("{dir}/supervisor.json"), "/supervisor/pid")
                .expect("the instance's supervisor");
            sigkill(supervisor);
            wait_gone(supervisor, Duration::from_secs(10));
        }
        sigkill(jvm);
        wait_gone(jvm, Duration::from_secs(10));
        killed.push(jvm as i64);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while service_status(&p).0 != Some(0) {
        assert!(
            Instant::now() < deadline,
            "not running again: {}",
            service_status(&p).1
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(300));
    let (seen, answered) = stop_client(&stop, client);
    assert_eq!(seen, ["1.0.0"]);
    assert!(answered > 10, "answered {answered}");
    let keep_alive::Seen {
        errors, answered, ..
    } = slow.join().expect("slow client thread");
    assert!(errors.is_empty(), "the slow client saw errors: {errors:?}");
    assert!(answered > 10, "answered {answered}");
    let log = std::fs::read_to_string(p.root().join("var/log/hello/proxy.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("the instance on port {active} is dead")),
        "the runner said nothing of the instance it brought back:\n{log}"
    );
    assert!(
        log.contains(&format!("the instance on port {active} is back")),
        "{log}"
    );
}

/// An active instance that cannot come back (its supervisor gave up on a
/// crash loop) ends the runner with 1, its record saying why, and status
/// names the runner missing.
#[test]
fn a_runner_whose_active_instance_cannot_come_back_ends_failed_and_status_says_why() {
    let (p, ports) = proxied_project_with(
        "[restart]\nmax_failures = 2\ninitial_delay = \"100ms\"\nmax_delay = \"200ms\"",
    );
    let _cleanup = Cleanup(p.root(), ports);
    // Long enough after its gate for the deploy to check its version.
    ok(p.deploy("1.0.0", &["--env", "CRASH_AFTER_S=3"]));
    // It may give up before this looks (the crashes start a second after
    // the gate): its record says when it did.
    let record_path = p.root().join("run/hello/proxy/runner.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let record = std::fs::read_to_string(&record_path).unwrap_or_default();
        if record.contains("\"ended\"") && record.contains("failed:") {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the runner never gave up: {record}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    if let Some(runner) = runner_pid(&p.root()) {
        wait_gone(runner, Duration::from_secs(10));
    }
    assert!(
        record.contains("failed: the supervisor of the instance on port"),
        "{record}"
    );
    let status = service_status_is(&p, 1);
    assert!(status.contains("missing runner"), "{status}");
    assert!(status.contains("gave up"), "{status}");
}

/// A move behind the proxy that fails after the plain service stopped
/// leaves the host on its previous release without the proxy, running.
/// `listen` 0: the service's own port.
fn failed_move_behind_the_proxy(
    listen: u16,
    deploy_env: &[&str],
    settle: &str,
) -> (Project, String) {
    let ports = [free_port(), free_port()];
    let p = Project::new();
    let listen = if listen == 0 { p.port } else { listen };
    let cleanup = Cleanup(p.root(), ports);
    ok(p.deploy("1.0.0", &[]));
    let good = p.current().expect("current");
    let plain = std::fs::read_to_string(p.path().join("shipjar.toml")).unwrap();
    let proxied = format!(
        "{}\n[proxy]\nlisten = \"127.0.0.1:{listen}\"\nports = [{}, {}]\n",
        plain.replace(
            "probe_timeout = \"2s\"",
            &format!("probe_timeout = \"2s\"\nsettle = \"{settle}\"")
        ),
        ports[0],
        ports[1]
    );
    std::fs::write(p.path().join("shipjar.toml"), proxied).unwrap();
    let out = p.deploy("2.0.0", deploy_env);
    let said = exited_saying(&out, 1, "the service without proxy");
    assert!(said.contains("without the proxy"), "{said}");
    // Back on 1.0.0, served by the plain service on its own port.
    assert_eq!(p.current().as_deref(), Some(good.as_str()), "{said}");
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"), "{said}");
    assert_runs_without_proxy(&p);
    drop(cleanup);
    (p, said)
}

#[test]
fn a_move_behind_the_proxy_crashing_inside_settle_goes_back_to_the_plain_service() {
    // The proxy takes the service's own address, as a move behind it does.
    let (_p, said) = failed_move_behind_the_proxy(0, &["--env", "CRASH_AFTER_S=1"], "4s");
    assert!(said.contains("settle FAILED"), "{said}");
    assert!(said.contains("healthy again without the proxy"), "{said}");
}

#[test]
fn a_move_behind_the_proxy_whose_proxy_cannot_bind_goes_back_to_the_plain_service() {
    // Another program holds the address the proxy is to listen on.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = squatter.local_addr().expect("addr").port();
    let (_p, said) = failed_move_behind_the_proxy(listen, &[], "0s");
    assert!(said.contains("switch FAILED"), "{said}");
    assert!(said.contains("healthy again without the proxy"), "{said}");
    drop(squatter);
}

/// `[restart] auto_revert` behind the proxy: the active instance's
/// supervisor gives up on a release that crash-loops after its deploy; the
/// runner starts the previous release as the idle instance, switches the
/// proxy to it and stays, once; a keep-alive client is served throughout
/// (requests wait while no instance is healthy) and sees only the two
/// versions, the old one last.
#[test]
fn behind_the_proxy_a_release_crash_looping_after_its_deploy_is_replaced_by_the_previous_one() {
    let (p, _, _cleanup) = deployed_behind_proxy(
        "[restart]\ninitial_delay = \"200ms\"\nmax_failures = 2\nwindow = \"2m\"\nauto_revert = true\n",
    );
    let good = p.current().expect("current");
    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_alive_client(p.port, stop.clone());
    ok(p.deploy("2.0.0", &["--env", "CRASH_AFTER_S=2"]));
    let bad = p.current().expect("current");
    let runner = runner_pid(&p.root()).expect("a runner");

    let deadline = Instant::now() + Duration::from_secs(60);
    while p.current().as_deref() != Some(good.as_str()) {
        assert!(
            Instant::now() < deadline,
            "not reverted; revisions:\n{}\nproxy.log:\n{}",
            p.revisions().join("\n"),
            std::fs::read_to_string(p.root().join("var/log/hello/proxy.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while service_status(&p).0 != Some(0) {
        assert!(Instant::now() < deadline, "{}", service_status(&p).1);
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
    let (seen, _) = stop_client(&stop, client);
    assert_eq!(seen, ["1.0.0", "2.0.0", "1.0.0"]);
    assert_eq!(runner_pid(&p.root()), Some(runner), "the same runner stays");
    let lines: Vec<String> = p
        .revisions()
        .into_iter()
        .filter(|l| l.contains("\tauto-revert\t"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains(&bad) && lines[0].contains("\tfailed\t"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains(&good) && lines[1].contains("\tsuccess\t"),
        "{lines:?}"
    );
    // The operator sees the host drifted from what the stage last deployed.
    let (code, said, flags) = operator_status(&p);
    assert_eq!(code, Some(1), "{said}");
    assert!(flags.iter().any(|f| f.contains("drifted")), "{flags:?}");
    // Once: 3 s later nothing more happened.
    thread::sleep(Duration::from_secs(3));
    let after: usize = p
        .revisions()
        .iter()
        .filter(|l| l.contains("\tauto-revert\t"))
        .count();
    assert_eq!(after, 2);
    assert_eq!(p.current().as_deref(), Some(good.as_str()));
}
