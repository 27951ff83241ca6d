//! The proxy's data path with real JVMs from `examples/hello` on
//! 127.0.0.1: WebSocket tunnels and SSE streams through a deploy, a
//! rollback and a `service reload` (they stay on the instance they were
//! opened on; past `drain_timeout` they are closed and counted), the body
//! limits, request ids and the access log. hello's WebSocket echo and
//! `/events` need its `WEBSOCKET` knob (see examples/hello/src/Front.java).

#[path = "support/stream_clients.rs"]
mod clients;
mod common;
use common::proxied::{self, Cleanup};

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clients::{Message, Ws, event_data, exchange, get};
use common::{Project, text};

const WEBSOCKET: &[&str] = &["--env", "WEBSOCKET=1"];

/// The example behind a proxy on the project's port (instances on two
/// free ports), `extra` lines in its `[proxy]` section.
fn proxied_project_with(extra: &str) -> (Project, [u16; 2], Cleanup) {
    let (p, ports) = proxied::project("", &format!("hold = \"5s\"\n{extra}"));
    let cleanup = Cleanup(p.root(), ports);
    (p, ports, cleanup)
}

fn active_port(p: &Project) -> Option<String> {
    std::fs::read_to_string(p.root().join("run/hello/proxy/active"))
        .ok()
        .map(|t| t.trim().to_string())
}

/// A WebSocket and an SSE stream open on the instance of `old` while
/// `switch` moves traffic to the instance of `new`: both go on, on the old
/// instance, to their own end; a WebSocket opened after the switch is on
/// the new one; the switch waited for them (drained).
fn streams_through(p: &Project, old: &str, new: &str, switch: impl FnOnce() -> Output + Send) {
    let port = p.port;
    // When traffic moved: the WebSocket goes on 2 s past it, and both
    // clients must have been answered after it.
    let switched: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut ws = Ws::connect(port, "/ws").expect("a WebSocket through the proxy");
    assert_eq!(ws.ask("version?"), Ok(format!("version {old}")));
    let moved = switched.clone();
    let chat = thread::spawn(move || -> Result<(usize, String), String> {
        let give_up = Instant::now() + Duration::from_secs(90);
        let mut after_switch = 0;
        loop {
            let at = *moved.lock().expect("the switch time");
            if at.is_some_and(|at| at.elapsed() > Duration::from_secs(2)) {
                break;
            }
            if Instant::now() > give_up {
                return Err("no switch within 90 s".to_string());
            }
            let message = format!("echo {after_switch}");
            let answer = ws.ask(&message)?;
            if answer != message {
                return Err(format!("sent {message:?}, got {answer:?}"));
            }
            after_switch += usize::from(at.is_some());
            thread::sleep(Duration::from_millis(100));
        }
        let version = ws.ask("version?")?;
        ws.close()?;
        Ok((after_switch, version))
    });
    let sse = thread::spawn(move || {
        let mut arrivals = Vec::new();
        let answer = exchange(
            port,
            b"GET /events?n=40&ms=250 HTTP/1.1\r\nHost: hello.test\r\nAccept: text/event-stream\r\n\r\n",
            |_| arrivals.push(Instant::now()),
        );
        (answer, arrivals)
    });
    let before = active_port(p);
    let out = thread::scope(|scope| {
        let switching = scope.spawn(switch);
        // Once traffic moved, a new WebSocket goes to the new instance while the old ones run.
        let deadline = Instant::now() + Duration::from_secs(60);
        while active_port(p) == before && !switching.is_finished() {
            assert!(Instant::now() < deadline, "no switch within 60 s");
            thread::sleep(Duration::from_millis(20));
        }
        // The file moves first, then the proxy is told: the next connections
        // reach the new instance within moments.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut fresh = Ws::connect(port, "/ws").expect("a new WebSocket after the switch");
            let answer = fresh.ask("version?");
            assert_eq!(fresh.close(), Ok(()));
            if answer == Ok(format!("version {new}")) {
                break;
            }
            assert!(Instant::now() < deadline, "a new WebSocket got {answer:?}");
            thread::sleep(Duration::from_millis(50));
        }
        *switched.lock().expect("the switch time") = Some(Instant::now());
        switching.join().expect("the switch")
    });
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("drained in"), "{}", text(&out));
    let switched_at = switched.lock().expect("the switch time").expect("a switch");

    let (after_switch, version) = chat
        .join()
        .expect("the WebSocket client")
        .expect("no broken WebSocket");
    assert!(
        after_switch > 5,
        "only {after_switch} echoes after the switch"
    );
    assert_eq!(
        version,
        format!("version {old}"),
        "the tunnel stayed on its instance"
    );
    let (answer, arrivals) = sse.join().expect("the SSE client");
    let answer = answer.expect("the SSE stream");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.whole, "the stream ended cleanly: {answer:?}");
    let expected: Vec<String> = (1..=40).map(|i| format!("{old} {i}")).collect();
    assert_eq!(
        event_data(&answer.text()),
        expected,
        "every event, from its instance"
    );
    // Across the switch, and unbuffered: events kept coming after it, one by one.
    let later = arrivals.iter().filter(|t| **t > switched_at).count();
    assert!(
        later >= 2,
        "{later} of {} pieces came after the switch (a slow start? the stream lasts 10 s)",
        arrivals.len()
    );
}

#[test]
fn websocket_and_sse_streams_stay_on_their_instance_through_a_deploy_a_rollback_and_a_reload() {
    let (p, _ports, _cleanup) = proxied_project_with("drain_timeout = \"30s\"\n");
    let out = p.deploy("1.0.0", WEBSOCKET);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    streams_through(&p, "1.0.0", "2.0.0", || p.deploy("2.0.0", WEBSOCKET));
    streams_through(&p, "2.0.0", "1.0.0", || p.run(&["rollback", "local"]));
    streams_through(&p, "1.0.0", "1.0.0", || p.service("reload", &[]));
}

#[test]
fn streams_still_open_at_drain_timeout_are_closed_going_away_and_counted() {
    let (p, _ports, _cleanup) =
        proxied_project_with("drain_timeout = \"2s\"\nmax_connections = 2\n");
    let out = p.deploy("1.0.0", WEBSOCKET);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let port = p.port;
    let mut ws = Ws::connect(port, "/ws").expect("a WebSocket through the proxy");
    assert_eq!(ws.ask("version?"), Ok("version 1.0.0".to_string()));
    // An endless event stream.
    let sse = thread::spawn(move || get(port, "/events?n=0&ms=200", ""));
    thread::sleep(Duration::from_millis(500));
    // The WebSocket holds its place under max_connections as the stream does.
    let third = get(port, "/version", "").expect("an answer");
    assert_eq!(third.status, 503, "{third:?}");
    assert!(
        third.text().contains("too many connections"),
        "{}",
        third.text()
    );
    let out = p.deploy("2.0.0", WEBSOCKET);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(
            "closed 1 upgraded (WebSocket) connection(s) and 1 streaming response(s) past drain_timeout"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(
        ws.recv().ok(),
        Some(Message::Close(Some(1001), "going away".to_string())),
        "a close frame, going away"
    );
    assert!(ws.ended(), "then the end of the connection");
    let answer = sse.join().expect("the SSE client").expect("the SSE stream");
    assert!(answer.whole, "the stream ended cleanly: {answer:?}");
    let events = event_data(&answer.text());
    assert!(events.len() >= 5, "{events:?}");
    assert!(events.iter().all(|e| e.starts_with("1.0.0 ")), "{events:?}");
    // Their places are free again (the closing connections may take a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fresh = loop {
        match Ws::connect(port, "/ws") {
            Ok(ws) => break ws,
            Err(e) => assert!(Instant::now() < deadline, "a new WebSocket: {e}"),
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(fresh.ask("version?"), Ok("version 2.0.0".to_string()));
}

#[test]
fn bodies_over_max_request_body_get_413_and_over_max_response_body_502_or_a_cut() {
    let (p, _ports, _cleanup) =
        proxied_project_with("max_request_body = \"1KB\"\nmax_response_body = \"10KB\"\n");
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let port = p.port;

    // Declared too large: refused before a byte of the body is read.
    let request = format!(
        "POST /slow?ms=2000 HTTP/1.1\r\nHost: hello.test\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{}",
        "x".repeat(2000)
    );
    let answer = exchange(port, request.as_bytes(), |_| {}).expect("an answer");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(
        answer.text().contains("max_request_body = 1000 bytes"),
        "{}",
        answer.text()
    );
    // Chunked, so only counting finds it: over the cap on the way (the
    // proxy reads the body as it sends the head, before hello's 405).
    let chunk = "x".repeat(1500);
    let request = format!(
        "POST /slow?ms=2000 HTTP/1.1\r\nHost: hello.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let answer = exchange(port, request.as_bytes(), |_| {}).expect("an answer");
    assert_eq!(answer.status, 413, "{answer:?}");

    // A declared length over the cap: 502 before anything of it went out.
    let answer = get(port, "/big?bytes=20000", "").expect("an answer");
    assert_eq!(answer.status, 502, "{answer:?}");
    assert!(
        answer.text().contains("max_response_body = 10000 bytes"),
        "{}",
        answer.text()
    );
    // Chunked: the head went out, so the connection is cut mid-body.
    let answer = get(port, "/big?bytes=20000&chunked=1", "").expect("an answer");
    assert_eq!(answer.status, 200, "{:?}", answer.head);
    assert!(!answer.whole, "cut, not ended");
    assert!(
        answer.body.len() <= 10_000 + 8192,
        "{} bytes",
        answer.body.len()
    );
    // Under both caps: untouched.
    let answer = get(port, "/big?bytes=5000", "").expect("an answer");
    assert_eq!(
        (answer.status, answer.body.len(), answer.whole),
        (200, 5000, true)
    );

    // Only WebSocket is tunnelled: an h2c upgrade never reaches the instance.
    let answer =
        get(port, "/headers", "Upgrade: h2c\r\nConnection: Upgrade\r\n").expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    assert!(seen.get("upgrade").is_none(), "{seen}");
}

#[test]
fn the_access_log_has_a_json_line_per_request_without_the_query_and_request_ids_go_both_ways() {
    // Rotated as the service's log is: a small [logs] max_size shows it.
    let (p, ports, _cleanup) =
        proxied_project_with("access_log = true\n\n[logs]\nmax_size = 1000\n");
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let port = p.port;

    let given = get(port, "/headers?token=s3cret", "X-Request-Id: my-id-1\r\n").expect("an answer");
    assert_eq!(given.header("x-request-id").as_deref(), Some("my-id-1"));
    let seen: serde_json::Value = serde_json::from_slice(&given.body).expect("json");
    assert_eq!(seen["x-request-id"], "my-id-1", "passed on to the instance");

    let made = get(port, "/headers", "").expect("an answer");
    let id = made
        .header("x-request-id")
        .expect("an id made by the proxy");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let seen: serde_json::Value = serde_json::from_slice(&made.body).expect("json");
    assert_eq!(
        seen["x-request-id"],
        id.as_str(),
        "the instance got the same id"
    );
    let other = get(port, "/nope?x=1", "").expect("an answer");
    assert_eq!(other.status, 404);
    assert_ne!(
        other.header("x-request-id"),
        Some(id.clone()),
        "a new id each time"
    );

    let log = p.root().join("var/log/hello/access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        lines.len(),
        3,
        "one line per request through the proxy: {lines:#?}"
    );
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let paths: Vec<&str> = entries.iter().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(paths, ["/headers", "/headers", "/nope"], "no query strings");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("s3cret") || l.contains('?'))
    );
    assert_eq!(entries[0]["request_id"], "my-id-1");
    assert_eq!(entries[1]["request_id"], id.as_str());
    assert_eq!(entries[2]["status"], 404);
    for e in &entries {
        assert_eq!(e["method"], "GET");
        assert_eq!(e["instance"], u64::from(ports[0]), "{e}");
        assert!(e["bytes"].as_u64().is_some_and(|b| b > 0), "{e}");
        assert!(e["duration_ms"].as_u64().is_some(), "{e}");
        let time = e["time"].as_str().expect("time");
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
            "RFC 3339 with ms: {time}"
        );
    }

    // Ten more lines pass max_size: the file is rotated, no line lost.
    for i in 0..10 {
        let answer = get(port, &format!("/version?n={i}"), "").expect("an answer");
        assert_eq!(answer.status, 200);
    }
    let read = |name: &str| std::fs::read_to_string(log.with_file_name(name)).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = loop {
        let total: usize = ["access.log", "access.log.1", "access.log.2", "access.log.3"]
            .iter()
            .map(|name| read(name).lines().count())
            .sum();
        if total >= 13 || Instant::now() > deadline {
            break total;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(total, 13, "every line, across the rotated files");
    assert!(!read("access.log.1").is_empty(), "rotated");
    assert!(read("access.log").len() <= 1000, "{}", read("access.log"));
}
