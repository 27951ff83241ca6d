//! The invariants, checked after every fault against the hosts' real state:
//! `/proc` and files inside each host, and HTTP requests to its service.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Suite, host_field, http_get, last_json, text};

/// What a host really runs, seen from inside it and over HTTP.
#[derive(Debug, Default)]
pub struct Real {
    /// Release id `current` points to.
    pub current: Option<String>,
    /// `current` holds a RELEASE manifest and its jar resolves.
    pub complete: bool,
    /// Version in `current`'s manifest.
    pub version: Option<String>,
    /// Pid in the pidfile, when that process is alive.
    pub pid: Option<i32>,
    /// Version the service answers on /version.
    pub served: Option<String>,
    /// /health answered 2xx.
    pub healthy: bool,
}

/// Processes in the host: (pid, command line with spaces for NULs).
pub fn host_procs(s: &Suite, host: &str) -> Vec<(i32, String)> {
    s.fleet.processes(host)
}

/// True for a `shipjar agent` process line.
fn is_agent(cmd: &str) -> bool {
    cmd.contains("shipjar agent")
}

/// Waits (at most 60 s) until no agent runs on any host: an activation an
/// operator left behind finishes on its own before anything is judged.
pub fn settle(s: &mut Suite) {
    let hosts = s.fleet.hosts();
    let done = crate::wait_until(Duration::from_secs(60), || {
        hosts
            .iter()
            .all(|h| !host_procs(s, h).iter().any(|(_, c)| is_agent(c)))
    });
    if !done {
        let left: Vec<String> = hosts
            .iter()
            .flat_map(|h| {
                host_procs(s, h)
                    .into_iter()
                    .filter(|(_, c)| is_agent(c))
                    .map(move |(p, c)| format!("{h}: {p} {c}"))
            })
            .collect();
        s.counts.leaks += left.len() as u32;
        s.fail(format!(
            "agents still running 60 s after the fault: {left:?}"
        ));
    }
}

/// The host's real state.
pub fn real(s: &Suite, host: &str) -> Real {
    let script = "cd /var/lib/hello 2>/dev/null || exit 0; \
                  c=$(readlink current) && echo \"current=$c\"; \
                  [ -f current/RELEASE ] && { printf 'manifest='; tr -d '\\n' < current/RELEASE; echo; }; \
                  p=$(head -n 1 /run/hello/hello.pid 2>/dev/null) && [ -n \"$p\" ] && [ -d /proc/$p ] && \
                  ! grep -q '^State:.*zombie' /proc/$p/status && echo \"pid=$p\"; true";
    let out = s.fleet.sh(host, script);
    let mut r = Real::default();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    for line in stdout.lines() {
        if let Some(c) = line.strip_prefix("current=") {
            r.current = Path::new(c)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
        } else if let Some(m) = line.strip_prefix("manifest=") {
            let v: serde_json::Value = serde_json::from_str(m).unwrap_or_default();
            r.version = v["version"].as_str().map(str::to_string);
            if let Some(jar) = v["jar"].as_str() {
                let jar = format!("/var/lib/hello/current/{jar}");
                r.complete = s.fleet.exec(host, &["test", "-s", &jar]).status.success();
            }
        } else if let Some(p) = line.strip_prefix("pid=") {
            r.pid = p.trim().parse().ok();
        }
    }
    let ip = s.fleet.ip(host);
    r.healthy = http_get(&ip, "/health").is_some_and(|(c, _)| (200..300).contains(&c));
    r.served = http_get(&ip, "/version").and_then(|(c, body)| {
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (c == 200).then(|| v["version"].as_str().map(str::to_string))?
    });
    r
}

/// One host's problems: not healthy on a complete release (unless the report
/// names it), or `status` disagreeing with what really runs.
fn host_problems(
    host: &str,
    r: &Real,
    row: &serde_json::Value,
    report: Option<&serde_json::Value>,
    require_healthy: bool,
) -> Vec<String> {
    let mut p = Vec::new();
    let good = r.complete && r.healthy && r.served.is_some() && r.served == r.version;
    if !good && require_healthy {
        let named = report
            .map(|rep| host_field(rep, host))
            .filter(|h| h["state"].as_str().is_some_and(|s| s != "updated"));
        match named {
            Some(h) => eprintln!("faults: {host} is not healthy, and the report says so: {h}"),
            None => p.push(format!(
                "{host} is not healthy on a complete release and no report names it: {r:?}"
            )),
        }
    }
    let st = &row["status"];
    if st.is_null() {
        if r.healthy {
            p.push(format!(
                "status cannot reach {host}, which is healthy: {row}"
            ));
        }
        return p;
    }
    if st["current"]["id"].as_str() != r.current.as_deref() {
        p.push(format!(
            "status says current is {}, the host says {:?}",
            st["current"]["id"], r.current
        ));
    }
    let healthy = st["service"]["healthy"].as_bool() == Some(true);
    if healthy != r.healthy {
        p.push(format!(
            "status says healthy={healthy}, a request to the service says {}: {row}",
            r.healthy
        ));
    }
    if r.served.is_some() && st["reported_version"].as_str() != r.served.as_deref() {
        p.push(format!(
            "status says the service reports {}, it answers {:?}",
            st["reported_version"], r.served
        ));
    }
    let pid = st["service"]["pid"].as_i64().map(|p| p as i32);
    if r.pid.is_some() && st["service"]["state"] == "running" && pid != r.pid {
        p.push(format!(
            "status says pid {pid:?}, the pidfile's live process is {:?}",
            r.pid
        ));
    }
    if pid.is_some() && r.pid.is_none() && st["service"]["state"] == "running" {
        p.push(format!(
            "status says running pid {pid:?}, no such live process"
        ));
    }
    p.into_iter().map(|x| format!("{host}: {x}")).collect()
}

/// Checks the invariants on every host (retrying up to 30 s, since a
/// restart may be under way), counting and recording what stays broken.
pub fn invariant(
    s: &mut Suite,
    label: &str,
    report: Option<&std::process::Output>,
    require_healthy: bool,
) {
    let report = report.map(last_json);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = s.run(&["--json", "status", "all"]);
        let status_json = last_json(&status);
        let mut problems: Vec<(String, Vec<String>)> = Vec::new();
        for host in s.fleet.hosts() {
            let r = real(s, &host);
            let row = host_field(&status_json, &host);
            let p = host_problems(&host, &r, row, report.as_ref(), require_healthy);
            if !p.is_empty() {
                problems.push((host, p));
            }
        }
        if problems.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            s.counts.hosts_broken += problems.len() as u32;
            let all: Vec<String> = problems.into_iter().flat_map(|(_, p)| p).collect();
            s.fail(format!(
                "{label}: {}\n  status: {}",
                all.join("\n  "),
                text(&status)
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// After a successful deploy: one JVM per host, no agent still running, no
/// temporary entry left in the store (the deploy's `begin` removes them).
pub fn leftovers(s: &mut Suite) {
    for host in s.fleet.hosts() {
        let procs = host_procs(s, &host);
        let jvms: Vec<&(i32, String)> = procs
            .iter()
            .filter(|(_, c)| c.split(' ').next().is_some_and(|a| a.ends_with("java")))
            // A class-data dump beside the service (`cds`, on by default) is not a service.
            .filter(|(_, c)| !c.contains(" -Xshare:dump "))
            .collect();
        if jvms.len() != 1 {
            s.counts.leaks += jvms.len().saturating_sub(1) as u32;
            s.fail(format!(
                "{host} runs {} JVMs after a deploy: {jvms:?}",
                jvms.len()
            ));
        }
        let out = s.fleet.sh(
            &host,
            "ls -a /var/lib/hello/artifacts /var/lib/hello/releases | grep '^\\.tmp' || true",
        );
        let tmp = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !tmp.is_empty() {
            s.counts.leaks += tmp.lines().count() as u32;
            s.fail(format!(
                "{host}: temporary entries left after a deploy: {tmp}"
            ));
        }
    }
}

/// Every form of every secret, matched in one pass over a file (the hosts hold
/// class-data archives of several MiB each: a pass per form would take minutes).
struct Needles(Option<aho_corasick::AhoCorasick>);

impl Needles {
    fn new(needles: &[Vec<u8>]) -> Needles {
        let needles: Vec<&Vec<u8>> = needles.iter().filter(|n| !n.is_empty()).collect();
        Needles(if needles.is_empty() {
            None
        } else {
            Some(
                aho_corasick::AhoCorasick::new(needles)
                    .expect("the secrets' forms make an automaton"),
            )
        })
    }

    /// Whether any form of any secret is in `hay`.
    fn in_(&self, hay: &[u8]) -> bool {
        self.0.as_ref().is_some_and(|m| m.is_match(hay))
    }
}

/// The secret files themselves: a `database.properties` readable by owner
/// (and group) only, and a release's `SECRETS` (the values its host masks),
/// readable by its owner only.
fn allowed_secret_file(path: &Path) -> bool {
    let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777);
    let name = path.file_name().unwrap_or_default();
    (name == "database.properties" && (mode == 0o600 || mode == 0o640))
        || (name == "SECRETS" && mode == 0o600)
}

fn scan_dir(dir: &Path, needles: &Needles, found: &mut Vec<String>, allowed: &mut u32) {
    // Artifacts are the jars; usr-local holds the agent binary.
    for (path, name, meta) in crate::common::files_under(dir, &["artifacts", "target"]) {
        if meta.len() < 20 << 20
            && !name.ends_with(".jar")
            && name != "shipjar"
            && let Ok(bytes) = std::fs::read(&path)
            && needles.in_(&bytes)
        {
            if allowed_secret_file(&path) {
                *allowed += 1;
            } else {
                found.push(path.display().to_string());
            }
        }
    }
}

/// No secret, in any form (`common::secret_forms`: raw, each line, JSON,
/// URL-encoded, base64, shell-quoted), anywhere but its own 0600/0640 file:
/// not in shipjar's output, the project, the hosts' disks (their overlay
/// upper dirs, on this machine), /run and /tmp inside the hosts, nor any
/// host process's environment or command line. Each place found counts as a leak.
pub fn scan_secrets(s: &mut Suite) {
    let needles: Vec<Vec<u8>> = s
        .secrets_used
        .iter()
        .filter(|x| x.len() >= 8)
        .flat_map(|x| crate::common::secret_forms::forms(x))
        .map(|(_, bytes)| bytes)
        .collect();
    let needles = Needles::new(&needles);
    let mut found = Vec::new();
    for secret in s.secrets_used.iter().filter(|x| x.len() >= 8) {
        let forms = crate::common::secret_forms::found(&s.transcript, secret);
        if !forms.is_empty() {
            found.push(format!("shipjar's output ({})", forms.join(", ")));
        }
    }
    let mut allowed = 0;
    scan_dir(s.dir.path(), &needles, &mut found, &mut allowed);
    scan_dir(s.fleet.dir(), &needles, &mut found, &mut allowed);
    // The scan must see the secrets where they belong, or it proves nothing.
    if allowed == 0 {
        s.fail(
            "the secret scan found no secret file on any host's disk: it looks in the wrong places"
                .into(),
        );
    }
    eprintln!(
        "faults: secret scan: {allowed} secret files (0600/0640) hold secrets, as they should"
    );
    for host in s.fleet.hosts() {
        let list = s.fleet.sh(
            &host,
            "find /run /tmp /var/log -xdev -type f -size -20M 2>/dev/null; \
                 for d in /proc/[0-9]*; do echo $d/environ; echo $d/cmdline; done",
        );
        for file in String::from_utf8_lossy(&list.stdout).lines() {
            let out = s.fleet.exec(&host, &["cat", file]);
            if needles.in_(&out.stdout) {
                found.push(format!("{host}:{file}"));
            }
        }
    }
    if !found.is_empty() {
        s.counts.leaks += found.len() as u32;
        s.fail(format!("a secret appears in: {found:?}"));
    }
}
