//! Operating the proxy: `pause`, `resume`, `maintenance` and the metrics
//! scrape, with real JVMs from `examples/hello` behind shipjar's proxy on
//! 127.0.0.1 (the `local` stage, as `tests/proxy.rs`), and on an ssh fleet
//! (hosts in network namespaces, root only) for `--hosts` and a worker
//! running as the service user.

mod common;
use common::proxied::{self, Cleanup, keeper_pid};
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{Project, free_port, text};

/// The example behind a proxy on the project's port, holding requests for
/// `hold`, `extra` lines in its `[proxy]` section, `top` lines before it.
fn proxied_project(top: &str, hold: &str, extra: &str) -> (Project, [u16; 2]) {
    proxied::project(
        top,
        &format!("drain_timeout = \"20s\"\nhold = \"{hold}\"\n{extra}"),
    )
}

/// One answer: status, headers (lower-case names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
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

/// A GET on a fresh connection (HTTP/1.0, closed after), waiting up to 30 s.
fn get(port: u16, path: &str) -> Result<Answer, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: hello.test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no end of head")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// GETs `path` on a thread: the answer and how long it took.
fn spawn_get(
    port: u16,
    path: &'static str,
) -> thread::JoinHandle<(Result<Answer, String>, Duration)> {
    thread::spawn(move || {
        let started = Instant::now();
        let answer = get(port, path);
        (answer, started.elapsed())
    })
}

fn version_of(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("version")?.as_str().map(str::to_string)
}

/// `status --json`'s proxy of the one host.
fn proxy_status(p: &Project) -> serde_json::Value {
    let (_, json) = p.status_json();
    json["hosts"][0]["status"]["proxy"].clone()
}

/// Waits (at most 10 s) until `status` says `held` requests are held.
fn wait_held(p: &Project, held: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let proxy = proxy_status(p);
        if proxy["held"] == held || Instant::now() > deadline {
            return proxy;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pause_holds_requests_until_resume_and_one_held_past_hold_gets_503() {
    let (p, ports) = proxied_project("", "5s", "");
    let _cleanup = Cleanup(p.root(), ports);
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = p.run(&["pause", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("local: paused (was serving)"),
        "{}",
        text(&out)
    );
    let first = spawn_get(p.port, "/version");
    let second = spawn_get(p.port, "/version");
    let proxy = wait_held(&p, 2);
    assert_eq!(proxy["traffic"]["mode"], "paused", "{proxy}");
    assert_eq!(proxy["held"], 2, "{proxy}");
    let (_, status_text) = (0, text(&p.run(&["status", "local"])));
    assert!(status_text.contains("paused since"), "{status_text}");
    assert!(
        !first.is_finished() && !second.is_finished(),
        "held, not answered"
    );

    let out = p.run(&["resume", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("local: serving (was paused since"),
        "{}",
        text(&out)
    );
    for held in [first, second] {
        let (answer, took) = held.join().expect("a held request");
        let answer = answer.expect("an answer");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(version_of(&answer.body).as_deref(), Some("1.0.0"));
        assert!(
            took < Duration::from_secs(5),
            "released, not expired: {took:?}"
        );
    }

    // Held for all of `hold` (5 s): 503, saying why.
    let out = p.run(&["pause", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (answer, took) = spawn_get(p.port, "/version").join().expect("the request");
    let answer = answer.expect("an answer");
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("paused"), "{answer:?}");
    assert!(answer.header("retry-after").is_some(), "{answer:?}");
    assert!(took >= Duration::from_millis(4500), "{took:?}");
    let out = p.run(&["resume", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let answer = get(p.port, "/version").expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn maintenance_answers_503_with_the_page_and_retry_after_until_resume() {
    let (p, ports) = proxied_project("", "5s", "maintenance_page = \"deploy/maintenance.html\"\n");
    let _cleanup = Cleanup(p.root(), ports);
    std::fs::write(
        p.path().join("deploy/maintenance.html"),
        "<html><body><h1>{{ service }} is resting</h1><p>{{ message }}</p>\
         <p>again in {{ retry_after }} s</p></body></html>\n",
    )
    .expect("write the page");
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = p.run(&[
        "maintenance",
        "local",
        "--message",
        "Moving <the> database",
        "--retry-after",
        "2m",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for path in ["/version", "/health"] {
        let answer = get(p.port, path).expect("an answer");
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(answer.header("retry-after"), Some("120"), "{answer:?}");
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{answer:?}"
        );
        assert!(answer.body.contains("hello is resting"), "{answer:?}");
        assert!(
            answer.body.contains("Moving &lt;the&gt; database"),
            "{answer:?}"
        );
        assert!(answer.body.contains("again in 120 s"), "{answer:?}");
    }
    let proxy = proxy_status(&p);
    assert_eq!(proxy["traffic"]["mode"], "maintenance", "{proxy}");
    assert_eq!(
        proxy["traffic"]["message"], "Moving <the> database",
        "{proxy}"
    );
    let out = p.run(&["resume", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let answer = get(p.port, "/version").expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(proxy_status(&p)["traffic"]["mode"], "serving");
}

#[test]
fn a_pause_survives_a_killed_proxy_and_a_deploy_while_paused_works_and_keeps_it() {
    let (p, ports) = proxied_project("", "60s", "");
    let _cleanup = Cleanup(p.root(), ports);
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = p.run(&["pause", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The whole proxy (keeper and worker) killed: its runner starts it again,
    // and the new one comes back paused.
    let keeper = keeper_pid(&p.root()).expect("a keeper");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keeper),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the keeper");
    let deadline = Instant::now() + Duration::from_secs(10);
    while keeper_pid(&p.root()).is_none_or(|k| k == keeper) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        keeper_pid(&p.root()).is_some_and(|k| k != keeper),
        "a new keeper"
    );
    let held = spawn_get(p.port, "/version");
    let proxy = wait_held(&p, 1);
    assert_eq!(proxy["held"], 1, "held by the new proxy: {proxy}");

    // A deploy while paused: gated on the instance directly, switched, and
    // the pause stays.
    let out = p.deploy("2.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!held.is_finished(), "still held after the deploy");
    let proxy = proxy_status(&p);
    assert_eq!(proxy["traffic"]["mode"], "paused", "{proxy}");

    let out = p.run(&["resume", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (answer, _) = held.join().expect("the held request");
    let answer = answer.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        version_of(&answer.body).as_deref(),
        Some("2.0.0"),
        "released to the instance active now"
    );
}

#[test]
fn pause_on_a_stage_without_the_proxy_names_the_key_to_set() {
    let p = Project::new();
    for verb in ["pause", "resume"] {
        let out = p.run(&[verb, "local"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("`[proxy]`"), "{}", text(&out));
    }
    let out = p.run(&["maintenance", "local", "--message", "m"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("`[proxy]`"), "{}", text(&out));
}

/// One sample of a scrape: its name and labels (sorted), its value.
type Samples = std::collections::BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses a Prometheus text exposition (format 0.0.4) strictly: every
/// family opens with `# HELP` then `# TYPE` (once each), names and label
/// names use the format's characters, label values only its escapes,
/// every sample belongs to the family opened last, values are numbers,
/// and each histogram's buckets rise to `le="+Inf"` equal to its `_count`,
/// with a `_sum`. Panics naming the line that breaks a rule.
fn parse_exposition(text: &str) -> Samples {
    let name_ok = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples = Samples::new();
    let mut families = std::collections::BTreeSet::new();
    let mut family: Option<(String, String)> = None;
    let mut helped: Option<String> = None;
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(name_ok(name), "bad name in `{line}`");
            assert!(families.insert(name.to_string()), "family twice: `{line}`");
            helped = Some(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(
                helped.as_deref(),
                Some(name),
                "TYPE right after its HELP: `{line}`"
            );
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "`{line}`"
            );
            family = Some((name.to_string(), kind.to_string()));
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line `{line}`"
        );
        let (family_name, kind) = family.clone().expect("a sample after its TYPE");
        let (head, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in `{line}`")),
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (
                n,
                parse_labels(rest.strip_suffix('}').expect("closing brace"), line),
            ),
            None => (head, Vec::new()),
        };
        assert!(name_ok(name), "bad name in `{line}`");
        let belongs = match kind.as_str() {
            "histogram" => [
                format!("{family_name}_bucket"),
                format!("{family_name}_sum"),
                format!("{family_name}_count"),
            ]
            .contains(&name.to_string()),
            _ => name == family_name,
        };
        assert!(belongs, "`{line}` is not of family {family_name}");
        if kind == "counter" {
            assert!(value >= 0.0, "a negative counter: `{line}`");
        }
        let mut sorted = labels;
        sorted.sort();
        assert!(
            samples.insert((name.to_string(), sorted), value).is_none(),
            "sample twice: `{line}`"
        );
    }
    for (name, kind) in families.iter().filter_map(|f| {
        text.contains(&format!("# TYPE {f} histogram"))
            .then_some((f, "histogram"))
    }) {
        let _ = kind;
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|((n, _), _)| *n == format!("{name}_bucket"))
            .map(|((_, l), v)| {
                let le = &l.iter().find(|(k, _)| k == "le").expect("le").1;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le number")
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: cumulative"
        );
        let last = buckets.last().expect("buckets");
        assert!(last.0.is_infinite(), "{name}: le=\"+Inf\" last");
        let count = samples[&(format!("{name}_count"), Vec::new())];
        assert_eq!(last.1, count, "{name}: +Inf bucket = _count");
        assert!(
            samples.contains_key(&(format!("{name}_sum"), Vec::new())),
            "{name}_sum"
        );
    }
    samples
}

/// `a="x",b="y\"z"`: names of the format's characters, values with its escapes only.
fn parse_labels(text: &str, line: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label in `{line}`"));
        assert!(
            name.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name in `{line}`"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => panic!("bad escape in `{line}`"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in `{line}`"),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut key: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    key.sort();
    samples.get(&(name.to_string(), key)).copied()
}

fn scrape(port: u16) -> Samples {
    let answer = get(port, "/metrics").expect("a scrape");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{answer:?}"
    );
    parse_exposition(&answer.body)
}

#[test]
fn a_metrics_scrape_parses_and_counts_the_requests_sent() {
    let metrics = free_port();
    let (p, ports) = proxied_project(
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
        "5s",
        "",
    );
    let _cleanup = Cleanup(p.root(), ports);
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let active = ports[0].to_string();
    for _ in 0..5 {
        assert_eq!(get(p.port, "/version").expect("an answer").status, 200);
    }
    let out = p.run(&["maintenance", "local", "--message", "m"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for _ in 0..3 {
        assert_eq!(get(p.port, "/version").expect("an answer").status, 503);
    }
    let out = p.run(&["resume", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let s = scrape(metrics);
    let requests = "shipjar_proxy_requests_total";
    assert_eq!(
        sample(&s, requests, &[("port", &active), ("class", "2xx")]),
        Some(5.0),
        "{s:?}"
    );
    assert_eq!(
        sample(&s, requests, &[("port", "none"), ("class", "5xx")]),
        Some(3.0),
        "{s:?}"
    );
    assert_eq!(
        sample(&s, "shipjar_proxy_request_duration_seconds_count", &[]),
        Some(8.0)
    );
    assert_eq!(
        sample(&s, "shipjar_proxy_in_flight", &[("port", &active)]),
        Some(0.0)
    );
    assert_eq!(
        sample(&s, "shipjar_proxy_active", &[("port", &active)]),
        Some(1.0)
    );
    assert_eq!(
        sample(&s, "shipjar_proxy_traffic", &[("mode", "serving")]),
        Some(1.0)
    );
    assert_eq!(sample(&s, "shipjar_proxy_held", &[]), Some(0.0));
    assert_eq!(
        sample(&s, "shipjar_service_up", &[("port", &active)]),
        Some(1.0),
        "{s:?}"
    );
    assert_eq!(
        sample(&s, "shipjar_service_healthy", &[("port", &active)]),
        Some(1.0)
    );
    assert_eq!(
        sample(&s, "shipjar_service_restarts_total", &[("port", &active)]),
        Some(0.0)
    );
    let healthy_after = sample(
        &s,
        "shipjar_service_start_to_healthy_seconds",
        &[("port", &active)],
    );
    assert!(healthy_after.is_some_and(|v| v > 0.0), "{s:?}");
    let switches = sample(&s, "shipjar_proxy_switches_total", &[]).expect("switches");

    // A deploy: one more switch, one drain, and the new instance up.
    let out = p.deploy("2.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = scrape(metrics);
    assert_eq!(
        sample(&s, "shipjar_proxy_switches_total", &[]),
        Some(switches + 1.0)
    );
    assert_eq!(sample(&s, "shipjar_proxy_drains_total", &[]), Some(1.0));
    let now = ports[1].to_string();
    assert_eq!(
        sample(&s, "shipjar_proxy_active", &[("port", &now)]),
        Some(1.0)
    );
    assert_eq!(
        sample(&s, "shipjar_service_up", &[("port", &now)]),
        Some(1.0),
        "{s:?}"
    );
    let missing = get(metrics, "/nothing").expect("an answer");
    assert_eq!(missing.status, 404, "{missing:?}");
}

#[test]
fn the_exposition_parser_refuses_what_the_format_forbids() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\"} 1\n\
                # HELP h y\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                h_sum 3.5\nh_count 2\n";
    let parsed = parse_exposition(good);
    assert_eq!(sample(&parsed, "a_total", &[("k", "v\"")]), Some(1.0));
    for bad in [
        "a_total 1\n",                                  // no HELP/TYPE
        "# HELP a x\n# TYPE a gauge\nb 1\n",            // another family
        "# HELP a x\n# TYPE a gauge\na{k=\"\\t\"} 1\n", // bad escape
        "# HELP a x\n# TYPE a gauge\na{1k=\"v\"} 1\n",  // bad label name
        "# HELP a x\n# TYPE a gauge\na one\n",          // not a number
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# HELP a x\n# TYPE a gauge\na 1", // no final newline
    ] {
        let refused = std::panic::catch_unwind(|| parse_exposition(bad)).is_err();
        assert!(refused, "accepted: {bad:?}");
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn on_a_fleet_pause_honours_hosts_status_shows_each_host_and_the_service_users_worker_scrapes() {
    fleet::require_root();
    let p = lifecycle::FleetStage::new(
        2,
        "proxy = { listen = \"0.0.0.0:18080\", ports = [18081, 18082], hold = \"60s\" }",
        |c| {
            format!(
                "{}\n[metrics]\nlisten = \"0.0.0.0:9400\"\n",
                lifecycle::reachable(c)
            )
        },
    );
    let provisioned = p.provision();
    assert_eq!(provisioned.status.code(), Some(0), "{}", text(&provisioned));
    let f = &p.fleet;
    let hosts = f.hosts();
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = p.run(&["pause", "fleet", "--hosts", &hosts[0]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{}: paused (was serving)", hosts[0])),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains(&format!("{}:", hosts[1])),
        "{}",
        text(&out)
    );
    let (_, json) = p.status_json();
    let mode = |i: usize| json["hosts"][i]["status"]["proxy"]["traffic"]["mode"].clone();
    assert_eq!(
        (mode(0), mode(1)),
        ("paused".into(), "serving".into()),
        "{json}"
    );

    // The other host serves; the paused one holds until `resume`.
    let get_from = |host: &str| {
        let addr: std::net::SocketAddr = format!("{}:18080", f.ip(host)).parse().expect("address");
        common::http_get_at(addr, "/version", Duration::from_secs(30))
    };
    assert_eq!(get_from(&hosts[1]).map(|(s, _)| s), Some(200));
    let held = {
        let addr: std::net::SocketAddr = format!("{}:18080", f.ip(&hosts[0]))
            .parse()
            .expect("address");
        thread::spawn(move || common::http_get_at(addr, "/version", Duration::from_secs(30)))
    };
    thread::sleep(Duration::from_millis(1500));
    assert!(!held.is_finished(), "held on the paused host");
    let out = p.run(&["resume", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for host in &hosts {
        assert!(
            text(&out).contains(&format!("{host}: serving")),
            "{}",
            text(&out)
        );
    }
    assert_eq!(
        held.join().expect("the held request").map(|(s, _)| s),
        Some(200)
    );

    // The worker runs as the service user, and still reads what the
    // instances' supervisors (root) record.
    let keeper = f.ssh(&hosts[0], "cat /run/hello/proxy/keeper.json");
    let worker = serde_json::from_slice::<serde_json::Value>(&keeper.stdout).expect("keeper.json")
        ["worker"]["pid"]
        .as_i64()
        .expect("a worker");
    let uid = f.ssh(
        &hosts[0],
        &format!("awk '/^Uid:/ {{ print $2 }}' /proc/{worker}/status"),
    );
    assert_ne!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the worker dropped root"
    );
    let addr: std::net::SocketAddr = format!("{}:9400", f.ip(&hosts[0]))
        .parse()
        .expect("address");
    let (status, body) =
        common::http_get_at(addr, "/metrics", Duration::from_secs(10)).expect("a scrape");
    assert_eq!(status, 200, "{body}");
    let s = parse_exposition(&body);
    assert_eq!(
        sample(&s, "shipjar_service_up", &[("port", "18081")]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&s, "shipjar_proxy_held_total", &[]),
        Some(1.0),
        "{body}"
    );
}

/// A TLS connection to 127.0.0.1:`port` trusting only `ca`.
struct TlsConn {
    stream: std::io::BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsConn {
    fn connect(port: u16, ca: &std::path::Path) -> Result<TlsConn, String> {
        TlsConn::connect_to("127.0.0.1", port, ca)
    }

    /// A TLS connection to `ip`:`port`, the certificate checked for `ip`.
    fn connect_to(ip: &str, port: u16, ca: &std::path::Path) -> Result<TlsConn, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca.pem") {
            roots
                .add(cert.expect("a CA certificate"))
                .expect("a usable CA");
        }
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(ip.to_string()).expect("a name");
        let client = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect((ip, port)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(client, tcp);
        // Completes the handshake, so a certificate the client refuses is an error here.
        stream.flush().map_err(|e| e.to_string())?;
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(TlsConn {
            stream: std::io::BufReader::new(stream),
        })
    }

    /// The subject's CN of the certificate the proxy presented, as text.
    fn presented(&self) -> String {
        let der = self
            .stream
            .get_ref()
            .conn
            .peer_certificates()
            .expect("a certificate")[0]
            .to_vec();
        ["first", "second"]
            .into_iter()
            .find(|n| der.windows(n.len()).any(|w| w == n.as_bytes()))
            .unwrap_or("another")
            .to_string()
    }

    /// One keep-alive GET: status and body.
    fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        use std::io::BufRead;
        let request = format!("GET {path} HTTP/1.1\r\nHost: hello.test\r\n\r\n");
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stream
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(line.clone())?;
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.stream
                .read_line(&mut header)
                .map_err(|e| e.to_string())?;
            if header == "\r\n" || header.is_empty() {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().map_err(|_| "bad length")?;
            }
        }
        let mut body = vec![0; length];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Replaces `to` with `from`, by rename (as a certificate renewal would).
fn swap_in(dir: &std::path::Path, from: &str, to: &str) {
    std::fs::copy(dir.join(from), dir.join(format!("{to}.new"))).expect("copy");
    std::fs::rename(dir.join(format!("{to}.new")), dir.join(to)).expect("rename");
}

#[test]
fn tls_is_terminated_redirected_to_and_a_swapped_certificate_taken_without_closing_a_connection() {
    let tls = tempfile::tempdir().expect("a temporary directory");
    let dir = tls.path();
    common::tls::test_ca(dir, "127.0.0.1");
    swap_in(dir, "first.pem", "cert.pem");
    swap_in(dir, "first.key", "key.pem");
    let redirect = free_port();
    let (p, ports) = proxied_project(
        "",
        "5s",
        &format!(
            "tls = {{ cert = \"{0}/cert.pem\", key = \"{0}/key.pem\", redirect = \"127.0.0.1:{redirect}\" }}\n",
            dir.display()
        ),
    );
    let _cleanup = Cleanup(p.root(), ports);
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ca = dir.join("ca.pem");

    // HTTPS, with the proxy's own X-Forwarded-Proto.
    let mut kept = TlsConn::connect(p.port, &ca).expect("a TLS connection");
    assert_eq!(kept.presented(), "first");
    let (status, body) = kept.get("/headers").expect("an answer");
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("headers");
    assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
    // Plain HTTP on the redirect address: 308 to the same path over HTTPS.
    let answer = get(redirect, "/version?x=1").expect("an answer");
    assert_eq!(answer.status, 308, "{answer:?}");
    assert_eq!(
        answer.header("location"),
        Some(format!("https://hello.test:{}/version?x=1", p.port).as_str())
    );

    // A renewed certificate: new connections get it, the open one goes on.
    swap_in(dir, "second.key", "key.pem");
    swap_in(dir, "second.pem", "cert.pem");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut presented = String::new();
    while Instant::now() < deadline {
        presented = TlsConn::connect(p.port, &ca)
            .expect("a TLS connection")
            .presented();
        if presented == "second" {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(presented, "second", "the new certificate within 15 s");
    let (status, body) = kept
        .get("/version")
        .expect("the open connection still answers");
    assert_eq!(
        (status, version_of(&body).as_deref()),
        (200, Some("1.0.0")),
        "{body}"
    );
    let log = std::fs::read_to_string(p.root().join("var/log/hello/proxy.log")).unwrap_or_default();
    assert!(log.contains("TLS certificate read again"), "{log}");
    let key = std::fs::read_to_string(dir.join("key.pem")).expect("the key");
    let secret_line = key.lines().nth(1).expect("a line of the key");
    assert!(
        !log.contains(secret_line),
        "the key's contents never reach the log"
    );
}

/// Writes `file` of `dir` to `dest` on `host`, owned by `owner`, with `mode`
/// (by rename, as a renewal would).
fn install_on(
    f: &fleet::Fleet,
    host: &str,
    dir: &std::path::Path,
    file: &str,
    dest: &str,
    owner: &str,
    mode: &str,
) {
    use std::io::Write as _;
    let bytes = std::fs::read(dir.join(file)).expect("read the file");
    let mut encoded = Vec::new();
    let mut child = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("base64");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&bytes)
        .expect("encode");
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut encoded)
        .expect("encoded");
    let _ = child.wait();
    let encoded = String::from_utf8(encoded).expect("base64 is text");
    let out = f.ssh(
        host,
        &format!(
            "mkdir -p /etc/hello-tls && echo {encoded} | base64 -d > {dest}.new && \
             chown {owner} {dest}.new && chmod {mode} {dest}.new && mv {dest}.new {dest}"
        ),
    );
    assert!(out.status.success(), "install {dest}: {}", text(&out));
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn on_a_fleet_the_worker_as_the_service_user_terminates_tls_with_a_key_its_group_reads() {
    fleet::require_root();
    let p = lifecycle::FleetStage::new(
        1,
        "proxy = { listen = \"0.0.0.0:18443\", ports = [18081, 18082], \
         tls = { cert = \"/etc/hello-tls/cert.pem\", key = \"/etc/hello-tls/key.pem\" } }",
        lifecycle::reachable,
    );
    let provisioned = p.provision();
    assert_eq!(provisioned.status.code(), Some(0), "{}", text(&provisioned));
    let f = &p.fleet;
    let host = f.hosts()[0].clone();
    let ip = f.ip(&host);
    let tls = tempfile::tempdir().expect("a temporary directory");
    common::tls::test_ca(tls.path(), &ip);
    install_on(
        f,
        &host,
        tls.path(),
        "first.key",
        "/etc/hello-tls/key.pem",
        "root:hello",
        "0640",
    );
    install_on(
        f,
        &host,
        tls.path(),
        "first.pem",
        "/etc/hello-tls/cert.pem",
        "root:root",
        "0644",
    );
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ca = tls.path().join("ca.pem");
    let mut conn = TlsConn::connect_to(&ip, 18443, &ca).expect("a TLS connection");
    assert_eq!(conn.presented(), "first");
    let (status, body) = conn.get("/version").expect("an answer");
    assert_eq!(
        (status, version_of(&body).as_deref()),
        (200, Some("1.0.0")),
        "{body}"
    );

    // A renewed pair whose key only root may read: the worker (the service's
    // user) keeps the pair it has, says why, and serves on.
    install_on(
        f,
        &host,
        tls.path(),
        "second.key",
        "/etc/hello-tls/key.pem",
        "root:root",
        "0600",
    );
    install_on(
        f,
        &host,
        tls.path(),
        "second.pem",
        "/etc/hello-tls/cert.pem",
        "root:root",
        "0644",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut log = String::new();
    while Instant::now() < deadline && !log.contains("keeps the previous certificate") {
        thread::sleep(Duration::from_millis(500));
        log = String::from_utf8_lossy(&f.ssh(&host, "cat /var/log/hello/proxy.log").stdout)
            .into_owned();
    }
    assert!(log.contains("keeps the previous certificate"), "{log}");
    assert!(log.contains("/etc/hello-tls/key.pem"), "{log}");
    let again = TlsConn::connect_to(&ip, 18443, &ca).expect("a TLS connection");
    assert_eq!(again.presented(), "first", "the pair it could read");
    // Readable by its group again: taken.
    install_on(
        f,
        &host,
        tls.path(),
        "second.key",
        "/etc/hello-tls/key.pem",
        "root:hello",
        "0640",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut presented = String::new();
    while Instant::now() < deadline && presented != "second" {
        thread::sleep(Duration::from_millis(300));
        presented = TlsConn::connect_to(&ip, 18443, &ca)
            .expect("a TLS connection")
            .presented();
    }
    assert_eq!(presented, "second");
}
