//! `service run` in the foreground, speaking sd_notify to a socket the test
//! listens on, as systemd would: READY=1 only once /health answers 200.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::host::{BIN, Helper, Host, Spec, free_port};

/// A datagram and when it arrived.
type Received = (Instant, String);

/// Collects every datagram on `socket` into a channel, checking /health at
/// the moment READY=1 arrives.
fn listen(socket: UnixDatagram, port: u16) -> mpsc::Receiver<(Received, Option<u16>)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let health = text.lines().any(|l| l == "READY=1").then(|| {
                crate::common::http_get(port, "/health")
                    .map(|(s, _)| s)
                    .unwrap_or(0)
            });
            if tx.send(((Instant::now(), text), health)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a datagram with a line `wanted`, returning everything before it too.
fn until(
    rx: &mpsc::Receiver<(Received, Option<u16>)>,
    wanted: &str,
    limit: Duration,
    seen: &mut Vec<(Received, Option<u16>)>,
) -> Option<(Received, Option<u16>)> {
    let end = Instant::now() + limit;
    while let Ok(item) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        let hit = item.0.1.lines().any(|l| l == wanted);
        seen.push(item.clone());
        if hit {
            return Some(item);
        }
    }
    None
}

fn run_under_notify(name: &str, notify_socket: &str, bind: impl FnOnce() -> UnixDatagram) {
    let host = Host::new(name);
    let port = free_port();
    // Listening at once, healthy only after 1.5 s.
    host.release("r1", &Spec::hello(port, &[("STARTUP_DELAY_MS", "1500")]));
    let socket = bind();
    let rx = listen(socket, port);

    let began = Instant::now();
    let mut cmd = Command::new(BIN);
    cmd.args(["service", "run", name, "--root"])
        .arg(host.root())
        .env("NOTIFY_SOCKET", notify_socket)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut run = Helper(cmd.spawn().expect("spawn service run"));
    let run_pid = run.0.id();

    let mut seen = Vec::new();
    let ((ready_at, ready), health) = until(&rx, "READY=1", Duration::from_secs(30), &mut seen)
        .unwrap_or_else(|| panic!("no READY=1; got {seen:?}\n{}", host.log()));
    host.remember();
    assert_eq!(health, Some(200), "READY=1 before /health answered 200");
    assert!(
        ready_at - began >= Duration::from_millis(1500),
        "READY=1 after {:?}, before the service could be healthy",
        ready_at - began
    );
    assert!(ready.contains(&format!("MAINPID={run_pid}")), "{ready}");
    let pid = host.service_pid().expect("pidfile");
    assert!(
        ready.contains(&format!("STATUS=healthy: pid {pid}, release r1")),
        "{ready}"
    );
    assert!(
        seen.iter()
            .any(|((_, t), _)| t.starts_with("STATUS=starting pid")),
        "{seen:?}"
    );

    // The watchdog is fed every 200 ms (half of WATCHDOG_USEC).
    let mut pings = Vec::new();
    let end = Instant::now() + Duration::from_secs(1);
    while let Ok(((at, text), _)) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        if text == "WATCHDOG=1" {
            pings.push(at);
        }
    }
    assert!(pings.len() >= 3, "{} watchdog pings in 1 s", pings.len());

    // `service status` sees the foreground supervisor like a detached one.
    let (rc, status) = host.status_json();
    assert_eq!(rc, 0, "{status}");
    assert_eq!(status["supervisor_pid"], run_pid);

    // SIGTERM: STOPPING=1, a clean stop, exit 0.
    // SAFETY: kill(2) on the process this test started.
    unsafe {
        libc::kill(run_pid as i32, libc::SIGTERM);
    }
    let mut seen = Vec::new();
    assert!(
        until(&rx, "STOPPING=1", Duration::from_secs(10), &mut seen).is_some(),
        "no STOPPING=1: {seen:?}"
    );
    let status = run.0.wait().expect("run ends");
    assert_eq!(status.code(), Some(0));
    assert_eq!(crate::common::host::code(&host.run("status", false)), 3);
}

#[test]
fn run_notifies_a_socket_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let address = path.to_string_lossy().into_owned();
    run_under_notify("notified", &address, || {
        UnixDatagram::bind(&path).expect("bind the notify socket")
    });
}

#[test]
fn run_notifies_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("shipjar-test-notify-{}-{}", std::process::id(), free_port());
    run_under_notify("abstract", &format!("@{name}"), || {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        UnixDatagram::bind_addr(&addr).expect("bind the abstract socket")
    });
}

#[test]
fn run_fails_like_start_when_the_service_does() {
    let host = Host::new("doomed");
    host.release("r1", &Spec::hello(free_port(), &[("FAIL_ON_START", "1")]));
    let out = Command::new(BIN)
        .args(["service", "run", "doomed", "--root"])
        .arg(host.root())
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: exited with code 1 before becoming healthy"),
        "{err}"
    );
    assert!(
        err.contains("hello: FAIL_ON_START is set, exiting"),
        "{err}"
    );
    // Events also went to stderr, for the journal.
    assert!(err.contains("[shipjar] started pid"), "{err}");
}
