//! The fault suite: examples/hello deployed to one namespace fleet, with
//! faults injected at seeded random instants, and the product's invariants
//! checked after every one (see docs/security.md, "Guarantees").
//!
//! `SHIPJAR_FAULT_SEED=N` repeats a run's choices; the seed is printed first,
//! the counts last. Root only (network namespaces).

#[path = "../common/mod.rs"]
mod common;
#[path = "../support/fleet.rs"]
mod fleet;

mod check;
mod disk;
mod hostile;
mod kills;
mod network;
mod procs;
mod rng;
mod secrets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hello_jar;
pub use common::host::eventually as wait_until;
pub use common::{host_field, last_json, say, text};
use fleet::{Fleet, require_root};
use rng::Rng;

/// Port the hello service listens on inside every host.
pub const PORT: u16 = 18080;
/// Hosts in the fleet.
pub const HOSTS: usize = 3;

/// What the suite counts, printed at the end.
#[derive(Default, Debug)]
pub struct Counts {
    /// Faults injected.
    pub faults: u32,
    /// Host checks that found a host neither healthy on a complete release
    /// nor named by the report, or `status` disagreeing with the host.
    pub hosts_broken: u32,
    /// Processes or files a fault left behind.
    pub leaks: u32,
    /// Sentinel processes (unrelated to shipjar) found signalled.
    pub unrelated_signalled: u32,
}

/// A `sleep` started inside a host that shipjar must never touch.
pub struct Sentinel {
    /// Host it runs in.
    pub host: String,
    /// Pid inside the host's PID namespace.
    pub pid: i32,
    /// Start time (field 22 of /proc/PID/stat).
    pub start: String,
}

/// The fleet, the project and the bookkeeping every scenario shares.
pub struct Suite {
    /// The hosts.
    pub fleet: Fleet,
    /// The project directory (a copy of examples/hello).
    pub dir: tempfile::TempDir,
    /// Scratch space: jar variants.
    pub scratch: tempfile::TempDir,
    /// The value of the database password secret.
    pub secret: String,
    /// Every secret value used so far (scanned for at the end).
    pub secrets_used: Vec<String>,
    /// The seeded generator.
    pub rng: Rng,
    /// Counts for the summary.
    pub counts: Counts,
    /// Invariant violations, by scenario.
    pub failures: Vec<String>,
    /// Everything shipjar printed, scanned for secrets.
    pub transcript: Vec<u8>,
    /// Sentinels inside the hosts.
    pub sentinels: Vec<Sentinel>,
    /// A sentinel on the operator machine.
    pub local_sentinel: Child,
    /// Versions deployed so far, to make each one unique.
    pub serial: u32,
    /// Name of the scenario running.
    pub scenario: String,
    /// Whether the link cut mid-upload is the long one (the one mid-switch is then short).
    pub long_cut_first: bool,
}

#[test]
#[ignore = "needs root"]
fn fault_suite() {
    require_root();
    let seed = std::env::var("SHIPJAR_FAULT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    say(&format!(
        "faults: seed {seed} (repeat with SHIPJAR_FAULT_SEED={seed})"
    ));
    let started = Instant::now();
    let mut s = Suite::new(seed);
    s.provision_and_first_deploy();
    type Scenario = fn(&mut Suite);
    let scenarios: [(&str, Scenario); 11] = [
        (
            "operator SIGKILL during deploy and rollback",
            kills::operator_kills,
        ),
        ("two concurrent deploys", procs::concurrent_deploys),
        ("link cut mid-upload", network::link_cut_mid_upload),
        ("link cut mid-switch", network::link_cut_mid_switch),
        ("power loss mid-switch", network::power_loss_mid_switch),
        ("full disk during upload and prepare", disk::full_disk),
        ("supervisor SIGKILLed", procs::supervisor_killed),
        ("JVM SIGSTOPped", procs::jvm_stopped),
        (
            "stale pidfile naming an unrelated process",
            procs::stale_pidfile,
        ),
        ("hostile strings", hostile::hostile_strings),
        ("secrets", secrets::secrets),
    ];
    // SHIPJAR_FAULT_ONLY: a comma-separated list of parts of names.
    for (name, run) in scenarios {
        if !common::selected("SHIPJAR_FAULT_ONLY", name) {
            continue;
        }
        s.run_scenario(name, run);
    }
    s.scenario = "end".into();
    s.final_checks();
    say(&format!(
        "faults: seed {seed}: {} faults injected, hosts broken: {}, leaks: {}, \
         unrelated processes signalled: {}, invariant violations: {} ({} s)",
        s.counts.faults,
        s.counts.hosts_broken,
        s.counts.leaks,
        s.counts.unrelated_signalled,
        s.failures.len(),
        started.elapsed().as_secs()
    ));
    let failures = std::mem::take(&mut s.failures);
    drop(s);
    common::assert_no_violations(&format!("seed {seed}: "), &failures);
}

impl Suite {
    fn new(seed: u64) -> Suite {
        let fleet = Fleet::new(HOSTS);
        let scratch = tempfile::Builder::new()
            .prefix("shipjar-faults-jars-")
            .tempdir()
            .expect("tempdir");
        let hosts = fleet.hosts();
        let dir = common::new_fleet_project(
            "shipjar-faults-",
            "fleet",
            &hosts,
            fleet.ssh_config(),
            "rolling = { batch = 1 }\nlock_lease = \"10s\"",
            |c| {
                c.replace("BIND = \"127.0.0.1\"", "BIND = \"0.0.0.0\"")
                    .replace("start_timeout = \"30s\"", "start_timeout = \"15s\"")
                    .replace("timeout = \"15s\"", "timeout = \"4s\"")
            },
        );
        // Two more stages on the same hosts: `all` switches every host at
        // once (recovery deploys), `one` is app1 alone (quick probes).
        let extra = format!(
            "\n[stages.all]\nhosts = [{all}]\nssh_config = \"{cfg}\"\nlock_lease = \"10s\"\n\
             vars = {{ db_url = \"jdbc:postgresql://db/hello\", db_user = \"hello\" }}\n\
             secrets = {{ db_password = {{ env = \"HELLO_DB_PASSWORD\" }} }}\n\
             \n[stages.one]\nhosts = [\"app1\"]\nssh_config = \"{cfg}\"\nlock_lease = \"10s\"\n\
             vars = {{ db_url = \"jdbc:postgresql://db/hello\", db_user = \"hello\" }}\n\
             secrets = {{ db_password = {{ env = \"HELLO_DB_PASSWORD\" }} }}\n",
            all = hosts
                .iter()
                .map(|h| format!("\"{h}\""))
                .collect::<Vec<_>>()
                .join(", "),
            cfg = fleet.ssh_config().display()
        );
        let path = dir.path().join("shipjar.toml");
        let mut config = std::fs::read_to_string(&path).expect("config");
        config.push_str(&extra);
        std::fs::write(&path, config).expect("write config");
        for stage in ["all", "one"] {
            std::fs::copy(
                dir.path().join("deploy/logging-production.properties"),
                dir.path()
                    .join(format!("deploy/logging-{stage}.properties")),
            )
            .expect("copy logging config");
        }
        let local_sentinel = Command::new("sleep")
            .arg("86400")
            .stdin(Stdio::null())
            .spawn()
            .expect("start the operator-side sentinel");
        let mut s = Suite {
            fleet,
            dir,
            scratch,
            secret: format!("s3cr\"et\\{}-ü", std::process::id()),
            secrets_used: Vec::new(),
            rng: Rng::new(seed),
            counts: Counts::default(),
            failures: Vec::new(),
            transcript: Vec::new(),
            sentinels: Vec::new(),
            local_sentinel,
            serial: 0,
            scenario: "setup".into(),
            long_cut_first: true,
        };
        s.secrets_used.push(s.secret.clone());
        for host in s.fleet.hosts() {
            s.start_sentinel(&host);
        }
        s
    }

    fn provision_and_first_deploy(&mut self) {
        let out = self.run(&["provision", "fleet"]);
        assert_eq!(out.status.code(), Some(0), "provision: {}", text(&out));
        let v = self.next_version();
        let out = self.deploy("all", &v, &[]);
        assert_eq!(out.status.code(), Some(0), "first deploy: {}", text(&out));
    }

    /// Runs one scenario; a panic in it is recorded as a failure. Afterwards
    /// the fleet is brought back to one healthy version for the next one.
    fn run_scenario(&mut self, name: &str, run: fn(&mut Suite)) {
        let started = Instant::now();
        self.scenario = name.to_string();
        eprintln!("faults: == {name}");
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(self))) {
            self.fail(format!("aborted: {}", common::panic_message(&*e)));
        }
        let recovered = catch_unwind(AssertUnwindSafe(|| self.recover()));
        if recovered.is_err() {
            self.fail("the fleet could not be brought back to a healthy version".into());
        }
        self.check_sentinels();
        eprintln!("faults: == {name}: {} s", started.elapsed().as_secs());
    }

    /// Records an invariant violation of the scenario running.
    pub fn fail(&mut self, what: String) {
        eprintln!("faults: VIOLATION [{}] {what}", self.scenario);
        self.failures.push(format!("[{}] {what}", self.scenario));
    }

    /// A fresh version string.
    pub fn next_version(&mut self) -> String {
        self.serial += 1;
        format!("1.0.{}", self.serial)
    }

    /// A `shipjar` command in the project, the secret in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        common::shipjar_in(self.dir.path(), &self.secret, args)
    }

    /// Runs shipjar and keeps its output in the transcript.
    pub fn run(&mut self, args: &[&str]) -> Output {
        let started = Instant::now();
        let out = self.output(self.command(args), &args.join(" "));
        if started.elapsed() > Duration::from_secs(4) {
            eprintln!(
                "faults: shipjar {} took {} ms",
                args.join(" ").chars().take(80).collect::<String>(),
                started.elapsed().as_millis()
            );
        }
        self.record(&out);
        out
    }

    /// Runs a shipjar command to its end; a control directory it left in
    /// /tmp (it was not killed, so it had every chance to remove it) is a leak.
    pub fn output(&mut self, mut cmd: Command, what: &str) -> Output {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run shipjar");
        let pid = child.id();
        let out = child.wait_with_output().expect("wait for shipjar");
        let left: Vec<String> = fleet::names_in("/tmp")
            .into_iter()
            .filter(|n| n.starts_with(&format!("sj-{pid}-")))
            .collect();
        if !left.is_empty() {
            self.counts.leaks += left.len() as u32;
            eprintln!(
                "faults: leak: `shipjar {}` (exit {:?}) left /tmp/{}",
                what.chars().take(100).collect::<String>(),
                out.status.code(),
                left.join(", /tmp/")
            );
            for n in left {
                let _ = std::fs::remove_dir_all(std::path::Path::new("/tmp").join(n));
            }
        }
        out
    }

    /// Keeps a command's output for the secret scan, and flags a crash.
    pub fn record(&mut self, out: &Output) {
        self.transcript.extend_from_slice(&out.stdout);
        self.transcript.extend_from_slice(&out.stderr);
        let all = text(out);
        if matches!(out.status.code(), Some(101) | Some(134)) || all.contains("panicked") {
            self.fail(format!("shipjar crashed: {all}"));
        }
    }

    /// The argv of a deploy of the hello jar (or `jar`) to `stage`.
    pub fn deploy_args(stage: &str, version: &str, jar: Option<&PathBuf>) -> Vec<String> {
        let jar = jar
            .map(|j| j.to_string_lossy().into_owned())
            .unwrap_or_else(|| hello_jar().to_string_lossy().into_owned());
        [
            "--json",
            "deploy",
            stage,
            "--artifact",
            &jar,
            "--version",
            version,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `shipjar --json deploy STAGE --artifact hello.jar --version V EXTRA…`.
    pub fn deploy(&mut self, stage: &str, version: &str, extra: &[&str]) -> Output {
        let mut args = Suite::deploy_args(stage, version, None);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    /// Deploys a fresh version to stage `all`; a failure is recorded as the
    /// deploy `after` (what came before it) failing. Its output.
    pub fn deploy_next(&mut self, after: &str) -> Output {
        let v = self.next_version();
        let out = self.deploy("all", &v, &[]);
        if out.status.code() != Some(0) {
            self.fail(format!("the deploy {after} failed: {}", text(&out)));
        }
        out
    }

    /// Starts shipjar with piped output.
    pub fn spawn(&self, args: &[String]) -> Child {
        self.command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shipjar")
    }

    /// Waits for a spawned shipjar (at most `limit`, then SIGKILL) and records its output.
    pub fn finish(&mut self, mut child: Child, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                self.fail(format!(
                    "shipjar (pid {}) still running after {limit:?}; killed",
                    child.id()
                ));
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("wait for shipjar");
        self.record(&out);
        out
    }

    /// A copy of the hello jar with `extra` incompressible bytes added, so
    /// that its sha256 is new (the hosts must upload it) and its size chosen.
    pub fn jar_variant(&mut self, tag: &str, extra: usize) -> PathBuf {
        let dir = self.scratch.path().join(tag);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let jar = dir.join("hello.jar");
        std::fs::copy(hello_jar(), &jar).expect("copy jar");
        let pad = dir.join("padding.bin");
        let bytes = self.rng.bytes(extra.max(16));
        std::fs::write(&pad, bytes).expect("write padding");
        // Stored, not deflated: the jar grows by the padding's size.
        let out = Command::new("jar")
            .current_dir(&dir)
            .args([
                "--update",
                "--no-compress",
                "--file",
                "hello.jar",
                "padding.bin",
            ])
            .output()
            .expect("run jar (JDK)");
        assert!(out.status.success(), "jar --update: {}", text(&out));
        jar
    }

    /// Starts a `sleep` inside the host, unrelated to shipjar.
    pub fn start_sentinel(&mut self, host: &str) {
        let out = self
            .fleet
            .sh(host, "sleep 86400 </dev/null >/dev/null 2>&1 & echo $!");
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("sentinel pid");
        let start = self.proc_start(host, pid).expect("sentinel start time");
        self.sentinels.push(Sentinel {
            host: host.to_string(),
            pid,
            start,
        });
    }

    /// Start time of `pid` inside the host, if it is alive (not a zombie).
    pub fn proc_start(&self, host: &str, pid: i32) -> Option<String> {
        let out = self
            .fleet
            .exec(host, &["cat", &format!("/proc/{pid}/stat")]);
        let stat = String::from_utf8_lossy(&out.stdout).to_string();
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.first() == Some(&"Z") {
            return None;
        }
        fields.get(19).map(|s| s.to_string())
    }

    /// Every sentinel must still be alive: shipjar signalled no unrelated process.
    pub fn check_sentinels(&mut self) {
        let mut dead = Vec::new();
        let mut kept = Vec::new();
        for x in std::mem::take(&mut self.sentinels) {
            if self.proc_start(&x.host, x.pid).as_deref() == Some(x.start.as_str()) {
                kept.push(x);
            } else {
                dead.push(x);
            }
        }
        self.sentinels = kept;
        let mut names: Vec<String> = dead
            .iter()
            .map(|x| format!("{}: sleep pid {}", x.host, x.pid))
            .collect();
        if self.local_sentinel.try_wait().ok().flatten().is_some() {
            names.push("operator machine: sleep".into());
            self.local_sentinel = Command::new("sleep")
                .arg("86400")
                .stdin(Stdio::null())
                .spawn()
                .expect("start the operator-side sentinel");
        }
        if !names.is_empty() {
            self.counts.unrelated_signalled += names.len() as u32;
            self.fail(format!("unrelated processes were signalled: {names:?}"));
            // Fresh ones, so that one loss is counted once.
            for x in dead {
                self.start_sentinel(&x.host);
            }
        }
    }

    /// Powers the host off and on again, then boots the service as the
    /// host's init would (the LSB script provision installed).
    pub fn power_cycle(&mut self, host: &str) {
        self.counts.faults += 1;
        self.fleet.power_off(host);
        // Its sentinels died with it: that is the power loss, not shipjar.
        self.sentinels.retain(|s| s.host != host);
        self.fleet.power_on(host);
        self.start_sentinel(host);
        let out = self.fleet.exec(host, &["/etc/init.d/hello", "start"]);
        if !out.status.success() {
            self.fail(format!(
                "{host}: boot start (/etc/init.d/hello start) failed: {}",
                text(&out)
            ));
        }
    }

    /// Brings the fleet back to one healthy version: waits out in-flight
    /// agents, removes any lock, deploys a fresh version to every host.
    pub fn recover(&mut self) {
        check::settle(self);
        let out = self.run(&["unlock", "all"]);
        assert!(out.status.success(), "unlock: {}", text(&out));
        let out = self.deploy_next("after the fault");
        check::invariant(self, "after recovery", Some(&out), true);
        check::leftovers(self);
    }

    fn final_checks(&mut self) {
        check::settle(self);
        check::invariant(self, "end", None, true);
        self.check_sentinels();
        check::scan_secrets(self);
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        // Our own sentinel, by pid; the hosts' processes go with the fleet.
        let _ = self.local_sentinel.kill();
        let _ = self.local_sentinel.wait();
    }
}

/// `GET path` on the host's service from outside the host: status and body.
pub fn http_get(ip: &str, path: &str) -> Option<(u16, String)> {
    let addr = format!("{ip}:{PORT}").parse().ok()?;
    common::http_get_at(addr, path, Duration::from_secs(3))
}
