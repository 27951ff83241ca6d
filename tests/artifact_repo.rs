//! Deploying from an artifact repository: Debian's nginx with WebDAV PUT,
//! started by the test on the fleet's bridge (the root end's address, which
//! the hosts reach), `shipjar publish` into it, then `deploy --version` with
//! each host downloading the jar itself. Failures (404, a wrong sha256, a
//! link cut mid-download, a slow link, refused credentials) come from nginx
//! or from tiny hand-written HTTP servers in the test, and each must name the
//! host and leave nothing in its store. Root only.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{hello_jar, host_field, last_json, text};
use fleet::{Fleet, require_root};
use lifecycle::FleetStage;

/// The service's port inside every host.
const PORT: u16 = 18080;
use common::repository::{LOGIN, PASSWORD, Repository};

/// The repository's address: a second address on the root end of the
/// fleet's bridge (`10.213.K.250`; the link goes with the fleet), so that a
/// host can be cut off from it alone while the operator's ssh (from
/// `10.213.K.1`) still reaches it.
fn repository_address(fleet: &Fleet) -> String {
    let k = fleet.prefix().trim_start_matches("sjf");
    let address = format!("10.213.{k}.250");
    let out = Command::new("ip")
        .args([
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            fleet.prefix(),
        ])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "ip addr add: {out:?}");
    address
}

/// A fleet with the hello project (no `[artifact]` yet).
fn project(hosts: usize) -> FleetStage {
    FleetStage::new(hosts, "", |c| {
        lifecycle::reachable(c.replace("18080", &PORT.to_string()))
    })
}

fn hello_sha256() -> String {
    use std::process::Command;
    let out = Command::new("sha256sum")
        .arg(hello_jar())
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string()
}

/// `deploy fleet --version V` with `extra` arguments, as JSON.
fn deploy(p: &FleetStage, version: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--json", "deploy", "fleet", "--version", version];
    args.extend_from_slice(extra);
    p.run(&args)
}

/// What the host's artifact store holds (names), from inside the host.
fn store(p: &FleetStage, host: &str) -> Vec<String> {
    let out = p
        .fleet
        .exec(host, &["ls", "-a", "/var/lib/hello/artifacts"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l != "." && *l != "..")
        .map(String::from)
        .collect()
}

/// A failed deploy on `host`: exit 1, its failure names the host and `says`,
/// its store holds no temp file and not `sha256`.
fn assert_failed_cleanly(p: &FleetStage, out: &Output, host: &str, sha256: &str, says: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let all = text(out);
    let result = last_json(out);
    let h = host_field(&result, host);
    let reason = h["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(says),
        "{host}: `{says}` not in {reason:?}\n{all}"
    );
    assert_eq!(h["failed_step"], "download", "{h}");
    let stored = store(p, host);
    assert!(
        !stored
            .iter()
            .any(|n| n.starts_with(".tmp-") || *n == format!("{sha256}.jar")),
        "{host}: something half-installed in the store: {stored:?}"
    );
    assert!(!all.contains(PASSWORD), "the password was printed:\n{all}");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn publish_then_deploy_version_hosts_download_skip_and_fall_back() {
    require_root();
    let p = project(2);
    let address = repository_address(&p.fleet);
    let repo = Repository::start(&address);
    let base = format!("{}/open", repo.base);
    set_artifact(
        &p,
        &format!("repository = \"{base}\"\ngroup = \"com.example\"\nartifact = \"hello\""),
    );
    assert_eq!(p.provision().status.code(), Some(0));

    let jar = hello_jar().display().to_string();
    for version in ["1.0", "1.1"] {
        let out = p.run(&["publish", "--artifact", &jar, "--version", version]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let sha = hello_sha256();
    let published = repo.file("open/com/example/hello/1.0/hello-1.0.jar");
    assert_eq!(
        std::fs::read(&published).expect("published jar"),
        std::fs::read(hello_jar()).expect("jar")
    );
    let companion =
        std::fs::read_to_string(repo.file("open/com/example/hello/1.0/hello-1.0.jar.sha256"))
            .expect(".sha256");
    assert_eq!(companion.trim(), sha);
    assert!(
        repo.file("open/com/example/hello/1.0/hello-1.0.jar.sha1")
            .exists()
    );
    let metadata = std::fs::read_to_string(repo.file("open/com/example/hello/maven-metadata.xml"))
        .expect("metadata");
    assert!(
        metadata.contains("<version>1.0</version>") && metadata.contains("<latest>1.1</latest>"),
        "{metadata}"
    );

    // Each host downloads it itself: nothing uploaded by the operator.
    let out = deploy(&p, "1.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let result = last_json(&out);
    for host in p.fleet.hosts() {
        let h = host_field(&result, &host);
        assert_eq!(h["artifact"], "downloaded", "{host}: {h}");
        assert_eq!(h["uploaded_bytes"], 0, "{host}: {h}");
    }
    // The store has it already: a second deploy downloads nothing; the text summary says so.
    let out = p.run(&["deploy", "fleet", "--version", "1.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    for host in p.fleet.hosts() {
        assert!(
            summary
                .lines()
                .any(|l| l.starts_with(&format!("{host}: deploy ok"))
                    && l.ends_with("artifact already stored")),
            "{host}:\n{summary}"
        );
    }

    // app2 cannot reach the repository: the operator pushes it (host-then-operator).
    let unreachable = format!("{address}/32");
    let blocked = p
        .fleet
        .exec("app2", &["ip", "route", "add", "unreachable", &unreachable]);
    assert!(blocked.status.success(), "{blocked:?}");
    let out = deploy(&p, "1.1", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let result = last_json(&out);
    assert_eq!(host_field(&result, "app1")["artifact"], "already stored");
    assert_eq!(host_field(&result, "app2")["artifact"], "already stored");

    // A new artifact (another sha256) shows the fallback: publish one with other bytes.
    let other = p.path().join("hello-other.jar");
    // Bytes before a jar's first entry leave it runnable (as an executable
    // jar's shell stub does): another sha256, the same service.
    let mut bytes = b"#!/bin/sh\n# shipjar test 1.2\n".to_vec();
    bytes.extend_from_slice(&std::fs::read(hello_jar()).expect("jar"));
    std::fs::write(&other, &bytes).expect("write jar");
    let other = other.display().to_string();
    let out = p.run(&["publish", "--artifact", &other, "--version", "1.2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = deploy(&p, "1.2", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let result = last_json(&out);
    assert_eq!(
        host_field(&result, "app1")["artifact"],
        "downloaded",
        "{}",
        text(&out)
    );
    assert_eq!(
        host_field(&result, "app2")["artifact"],
        "pushed",
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("the operator pushes it instead"),
        "{}",
        text(&out)
    );

    // fetch = "host": the host that cannot reach it fails, named, nothing half-installed.
    let config = std::fs::read_to_string(p.path().join("shipjar.toml")).expect("config");
    std::fs::write(
        p.path().join("shipjar.toml"),
        config.replace(
            "artifact = \"hello\"\n",
            "artifact = \"hello\"\nfetch = \"host\"\n",
        ),
    )
    .expect("config");
    bytes.splice(0..0, b"# 1.3\n".iter().copied());
    let third = p.path().join("hello-third.jar");
    std::fs::write(&third, &bytes).expect("write jar");
    let third_sha = {
        let out = Command::new("sha256sum")
            .arg(&third)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let out = p.run(&[
        "publish",
        "--artifact",
        &third.display().to_string(),
        "--version",
        "1.3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = deploy(&p, "1.3", &[]);
    assert_failed_cleanly(&p, &out, "app2", &third_sha, "cannot reach the repository");
    assert!(
        host_field(&last_json(&out), "app1")["state"] == "unchanged"
            && host_field(&last_json(&out), "app1")["failed_step"] != "download",
        "{}",
        text(&out)
    );
}

/// A hand-written server: each connection gets `respond(stream)`; stops on drop.
struct HandServer {
    stop: Arc<AtomicBool>,
    url: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HandServer {
    fn start(address: &str, respond: fn(&mut TcpStream)) -> HandServer {
        let listener = TcpListener::bind((address, 0)).expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let mut request = [0u8; 4096];
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        let _ = stream.read(&mut request);
                        std::thread::spawn(move || respond(&mut stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HandServer {
            stop,
            url,
            thread: Some(thread),
        }
    }
}

impl Drop for HandServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The hello jar's length as announced, half of it sent, then the connection closed.
fn half_then_close(stream: &mut TcpStream) {
    let jar = std::fs::read(hello_jar()).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        jar.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&jar[..jar.len() / 2]);
}

/// The hello jar at 2 KB a second: past any short deadline.
fn slowly(stream: &mut TcpStream) {
    let jar = std::fs::read(hello_jar()).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        jar.len()
    );
    let _ = stream.write_all(head.as_bytes());
    for chunk in jar.chunks(200).take(600) {
        if stream.write_all(chunk).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Points `[artifact]` at `url_template` with `fetch = "host"` and `timeout`.
fn set_artifact(p: &FleetStage, artifact: &str) {
    let file = p.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&file).expect("config");
    let start = config.find("\n[artifact]\n").unwrap_or(config.len());
    std::fs::write(
        &file,
        format!("{}\n[artifact]\n{artifact}\n", &config[..start]),
    )
    .expect("config");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn download_failures_name_the_host_and_leave_nothing_half_installed() {
    require_root();
    let p = project(1);
    let address = repository_address(&p.fleet);
    let repo = Repository::start(&address);
    set_artifact(
        &p,
        &format!(
            "url = \"{}/open/hello-{{{{ version }}}}.jar\"\nfetch = \"host\"",
            repo.base
        ),
    );
    assert_eq!(p.provision().status.code(), Some(0));
    let sha = hello_sha256();

    // 404: nothing at that version.
    set_artifact(
        &p,
        &format!(
            "url = \"{}/open/hello-{{{{ version }}}}.jar\"\nfetch = \"host\"",
            repo.base
        ),
    );
    let out = deploy(&p, "9.9", &["--sha256", &sha]);
    assert_failed_cleanly(&p, &out, "app1", &sha, "HTTP 404");

    // A wrong sha256: the bytes never enter the store.
    std::fs::copy(hello_jar(), repo.file("open/hello-1.0.jar")).expect("place jar");
    let wrong = "0".repeat(64);
    let out = deploy(&p, "1.0", &["--sha256", &wrong]);
    assert_failed_cleanly(&p, &out, "app1", &wrong, "sha256 mismatch");

    // The link cut mid-download, every attempt: resumed, then given up.
    let cut = HandServer::start(&address, half_then_close);
    set_artifact(
        &p,
        &format!(
            "url = \"{}/hello-{{{{ version }}}}.jar\"\nfetch = \"host\"",
            cut.url
        ),
    );
    let out = deploy(&p, "1.0", &["--sha256", &sha]);
    assert_failed_cleanly(&p, &out, "app1", &sha, "keeps breaking");
    drop(cut);

    // A slow link past the deadline.
    let slow = HandServer::start(&address, slowly);
    set_artifact(
        &p,
        &format!(
            "url = \"{}/hello-{{{{ version }}}}.jar\"\nfetch = \"host\"\ntimeout = \"2s\"",
            slow.url
        ),
    );
    let started = Instant::now();
    let out = deploy(&p, "1.0", &["--sha256", &sha]);
    assert_failed_cleanly(&p, &out, "app1", &sha, "did not finish within 2s");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the deadline was not kept"
    );
    drop(slow);

    // Credentials refused, then accepted; never printed.
    std::fs::copy(hello_jar(), repo.file("private/hello-1.0.jar")).expect("place jar");
    let netrc = p.path().join("netrc");
    std::fs::write(
        &netrc,
        format!("machine {address} login {LOGIN} password wrong-pass-123456\n"),
    )
    .expect("netrc");
    set_artifact(
        &p,
        &format!(
            "url = \"{}/private/hello-{{{{ version }}}}.jar\"\nfetch = \"host\"\nnetrc = \"netrc\"",
            repo.base
        ),
    );
    let out = deploy(&p, "1.0", &["--sha256", &sha]);
    assert_failed_cleanly(&p, &out, "app1", &sha, "refused the credentials (HTTP 401)");
    assert!(!text(&out).contains("wrong-pass-123456"), "{}", text(&out));
    std::fs::write(
        &netrc,
        format!("machine {address} login {LOGIN} password {PASSWORD}\n"),
    )
    .expect("netrc");
    let out = deploy(&p, "1.0", &["--sha256", &sha]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        host_field(&last_json(&out), "app1")["artifact"],
        "downloaded"
    );
    assert!(
        !text(&out).contains(PASSWORD),
        "the password was printed:\n{}",
        text(&out)
    );
    assert_eq!(store(&p, "app1"), vec![format!("{sha}.jar")]);
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_repository_signed_by_a_private_ca_is_trusted_only_through_artifact_ca() {
    require_root();
    let p = project(1);
    let address = repository_address(&p.fleet);
    let certs = tempfile::tempdir().expect("tempdir");
    common::tls::test_ca(certs.path(), &address);
    let repo = Repository::start_tls(
        &address,
        &certs.path().join("first.pem"),
        &certs.path().join("first.key"),
    );
    std::fs::copy(certs.path().join("ca.pem"), p.path().join("repo-ca.pem")).expect("copy ca");
    let base = format!("{}/open", repo.base);
    assert!(base.starts_with("https://"), "{base}");
    let artifact = format!(
        "repository = \"{base}\"\ngroup = \"com.example\"\nartifact = \"hello\"\n\
         fetch = \"host\"\ntimeout = \"5m\""
    );
    assert_eq!(p.provision().status.code(), Some(0));
    let jar = hello_jar().display().to_string();
    let sha = hello_sha256();

    // Without `ca`: the operator's publish is refused at once, saying what to do.
    set_artifact(&p, &artifact);
    let out = p.run(&["publish", "--artifact", &jar, "--version", "1.0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("TLS certificate was refused") && text(&out).contains("[artifact] ca"),
        "{}",
        text(&out)
    );
    set_artifact(&p, &format!("{artifact}\nca = \"repo-ca.pem\""));
    let out = p.run(&["publish", "--artifact", &jar, "--version", "1.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The host without `ca`: refused at once (no retries until the 5 min
    // deadline), named, nothing half-installed.
    set_artifact(&p, &artifact);
    let started = Instant::now();
    let out = deploy(&p, "1.0", &["--sha256", &sha]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a refused certificate was retried: {:?}",
        started.elapsed()
    );
    assert_failed_cleanly(&p, &out, "app1", &sha, "TLS certificate was refused");

    // With `ca`: the host trusts the repository and downloads the jar itself.
    set_artifact(&p, &format!("{artifact}\nca = \"repo-ca.pem\""));
    let out = deploy(&p, "1.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let h = host_field(&last_json(&out), "app1").clone();
    assert_eq!(h["artifact"], "downloaded", "{h}");
    assert_eq!(h["uploaded_bytes"], 0, "{h}");

    // A `ca` file with no certificate in it is a config error naming it.
    std::fs::write(p.path().join("repo-ca.pem"), "not a certificate\n").expect("write");
    let out = deploy(&p, "1.0", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("repo-ca.pem: holds no certificate"),
        "{}",
        text(&out)
    );
}
