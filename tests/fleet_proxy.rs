//! The proxy on an ssh fleet: hosts in network namespaces with their own
//! sshd (tests/support/fleet.rs), each running hello behind shipjar's proxy,
//! deployed in rolling batches while a keep-alive client per host (in the
//! test, outside the hosts, talking to each host's own address) asks
//! through the proxy without pause; then a remote client's forged
//! forwarding headers, and a new release's limit taken by the worker
//! running as the service user. Root only.

mod common;
use common::ok;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/keep_alive.rs"]
mod keep_alive;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::text;
use fleet::Fleet;
use lifecycle::FleetStage;

/// The proxy's public port inside every host.
const PORT: u16 = 18080;

/// The uid the proxy worker runs as on `host`.
fn worker_uid(f: &Fleet, host: &str) -> String {
    let out = f.ssh(host, "cat /run/hello/proxy/keeper.json");
    let worker = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["worker"]["pid"].as_i64())
        .unwrap_or(0);
    let out = f.ssh(
        host,
        &format!("awk '/^Uid:/ {{ print $2 }}' /proc/{worker}/status"),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `hosts` fleet hosts behind the proxy, batches of one, provisioned.
fn proxied_fleet(hosts: usize) -> FleetStage {
    let p = FleetStage::new(
        hosts,
        &format!(
            "rolling = {{ batch = 1 }}\nproxy = {{ listen = \"0.0.0.0:{PORT}\", ports = [18081, 18082] }}"
        ),
        lifecycle::reachable,
    );
    p.provision();
    p
}

/// A keep-alive client per host, through that host's proxy, until `stop`.
fn clients_on_every_host(
    f: &Fleet,
    stop: &Arc<AtomicBool>,
) -> Vec<(String, std::thread::JoinHandle<keep_alive::Seen>)> {
    f.hosts()
        .iter()
        .map(|host| {
            let addr = format!("{}:{PORT}", f.ip(host)).parse().expect("address");
            (host.clone(), keep_alive::spawn(addr, stop.clone()))
        })
        .collect()
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn restart_of_a_proxied_stage_drops_no_request_and_moves_every_host_to_a_new_instance() {
    let p = proxied_fleet(2);
    let f = &p.fleet;
    let first = ok(p.deploy("1.0.0", &[]));
    let pids = |out: &Output| -> Vec<Option<i64>> {
        let json: serde_json::Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        json["hosts"]
            .as_array()
            .map(|hs| hs.iter().map(|h| h["activation"]["pid"].as_i64()).collect())
            .unwrap_or_default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let clients = clients_on_every_host(f, &stop);
    std::thread::sleep(Duration::from_millis(300));
    let restarted = p.run(&["--json", "restart", "fleet"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    assert_eq!(restarted.status.code(), Some(0), "{}", text(&restarted));
    let before = pids(&first);
    let after = pids(&restarted);
    assert_eq!(after.len(), 2, "{}", text(&restarted));
    for (b, a) in before.iter().zip(&after) {
        assert!(a.is_some() && a != b, "a new instance: {b:?} -> {a:?}");
    }
    for (host, client) in clients {
        let seen = client.join().expect("client");
        assert!(seen.errors.is_empty(), "{host}: errors {:?}", seen.errors);
        assert_eq!(seen.versions, ["1.0.0"], "{host}");
        assert!(seen.answered > 10, "{host}: {seen:?}");
    }
    ok(p.run(&["status", "fleet"]));
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn rolling_deploys_behind_the_proxy_drop_no_request_on_any_host() {
    let p = proxied_fleet(3);
    let f = &p.fleet;
    ok(p.deploy("1.0.0", &[]));
    for host in f.hosts() {
        let hello = f.ssh(&host, "id -u hello");
        let hello = String::from_utf8_lossy(&hello.stdout).trim().to_string();
        let uid = worker_uid(f, &host);
        assert_eq!(uid, hello, "{host}: the proxy worker runs as hello");
        assert_ne!(uid, "0");
    }

    // A keep-alive client per host, through that host's proxy.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = clients_on_every_host(f, &stop);
    std::thread::sleep(Duration::from_millis(300));
    ok(p.deploy("2.0.0", &[]));
    // The first batch fails its gate: reverted, the rest untouched.
    let failing = p.deploy("3.0.0", &["FAIL_ON_START=1"]);
    assert_ne!(failing.status.code(), Some(0), "{}", text(&failing));
    ok(p.run(&["--json", "rollback", "fleet"]));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for (host, client) in clients {
        let seen = client.join().expect("client");
        assert!(seen.errors.is_empty(), "{host}: errors {:?}", seen.errors);
        assert_eq!(seen.versions, ["1.0.0", "2.0.0", "1.0.0"], "{host}");
        assert!(seen.answered > 10, "{host}: {seen:?}");
    }

    // `status` agrees: every host on 1.0.0, nothing flagged.
    let status = p.run(&["--json", "status", "fleet"]);
    let json: serde_json::Value = String::from_utf8_lossy(&status.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    let hosts = json["hosts"].as_array().cloned().unwrap_or_default();
    assert_eq!(hosts.len(), 3, "{json}");
    for h in hosts {
        assert_eq!(h["status"]["reported_version"], "1.0.0", "{h}");
        assert_eq!(h["flags"], serde_json::json!([]), "{h}");
    }

    // A remote client's forged forwarding headers never reach the service.
    for host in f.hosts() {
        let answer = one_request(
            &format!("{}:{PORT}", f.ip(&host)),
            "GET /headers HTTP/1.1\r\nHost: hello.test\r\nX-Forwarded-For: 10.9.9.9\r\n\
             Forwarded: for=10.9.9.9\r\nConnection: close, X-Forwarded-For\r\n\r\n",
        );
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let seen: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let xff = seen["x-forwarded-for"].as_str().unwrap_or_default();
        assert!(
            xff.parse::<std::net::IpAddr>().is_ok() && xff != "10.9.9.9",
            "{host}: {answer}"
        );
        assert!(seen.get("forwarded").is_none(), "{host}: {answer}");
    }

    // The worker, as the service user, adopts a new release's limits.
    let config = p.path().join("shipjar.toml");
    let before = std::fs::read_to_string(&config).expect("config");
    let after = before.replace(
        "ports = [18081, 18082] }",
        "ports = [18081, 18082], upstream_timeout = \"1s\" }",
    );
    assert_ne!(before, after);
    std::fs::write(&config, after).expect("write config");
    ok(p.deploy("4.0.0", &[]));
    for host in f.hosts() {
        let answer = one_request(
            &format!("{}:{PORT}", f.ip(&host)),
            "GET /slow?ms=3000 HTTP/1.1\r\nHost: hello.test\r\nConnection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 504"), "{host}: {answer}");
    }
}

/// `request` on a fresh connection to `addr`; everything until the proxy closes it.
fn one_request(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}
