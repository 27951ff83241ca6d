//! The attack suite: examples/hello provisioned and deployed over real sshd
//! to one test host, then attacked from inside it as the service user
//! (`hello`, a compromised app) or as `nobody` (any local user): symlinks,
//! FIFOs, swapped directories, sparse files, held flocks, secrets printed in
//! every form — each against root's entry points (`service
//! start/stop/restart/status`, the init script, deploy, `logs`, `unlock`,
//! the class-data copy, config validation).
//!
//! After every attack: root's decoy files and the host's `/etc` are as they
//! were (sha256, owner, mode), every root command returned within its
//! deadline (a hang is killed, by pid, and counted), `service status` tells
//! the truth, and nothing shipjar printed holds a secret in any form or a
//! root-only file's content. The last line counts attacks tried, root files
//! changed, hangs, leaks and false reports; any violation fails the test.
//! `SHIPJAR_ATTACK_ONLY=fifo,flock` runs only the attacks whose names
//! contain those words. Root only (network namespaces).

#[path = "../common/mod.rs"]
mod common;
#[path = "../support/fleet.rs"]
mod fleet;

mod cds;
mod identity;
mod links;
mod locks;
mod release;
mod secrets;
mod systemd;
#[path = "../support/systemd_host.rs"]
mod systemd_host;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hello_jar;
pub use common::host::eventually as wait_until;
pub use common::{host_field, last_json, say, text};
use fleet::{Fleet, require_root};

/// The one host attacked.
pub const HOST: &str = "app1";
/// Port the hello service listens on inside the host.
pub const PORT: u16 = 18080;
/// The service user (a compromised app acts as it).
pub const SERVICE_USER: &str = "hello";
/// Where root's decoy file lives: 0600 root, its content a marker that must
/// never be printed, its bytes never changed.
pub const DECOY: &str = "/etc/shipjar-decoy";
/// Root's decoy directory (0755) with one file in it.
pub const DECOY_DIR: &str = "/etc/shipjar-decoy.d";
/// The attacker's side (inotify loops, forged dumps, leaked secret forms).
pub const ATTACKER: &str = include_str!("attacker.py");
/// The most a root command run here may take (its own timeouts are shorter).
pub const ROOT_LIMIT: Duration = Duration::from_secs(45);

/// What the suite counts, printed at the end.
#[derive(Default, Debug)]
pub struct Counts {
    /// Attacks tried (each race try counts once).
    pub attacks: u32,
    /// Root-owned files (decoys, /etc, the artifact store, the release) changed.
    pub root_changed: u32,
    /// Root commands that outlived their deadline.
    pub hangs: u32,
    /// Secrets (in any form) or root-only content found in output or host records.
    pub leaks: u32,
    /// `status` disagreeing with what runs, or a root command claiming what is not so.
    pub false_reports: u32,
}

/// The fleet, the project and the bookkeeping every attack shares.
pub struct Suite {
    /// The host (one; the attacks run one after another on it).
    pub fleet: Fleet,
    /// The project directory (a copy of examples/hello).
    pub dir: tempfile::TempDir,
    /// Stage `one`'s secret (from the environment).
    pub secret: String,
    /// Stage `sec`'s multi-line secret (from a file).
    pub pem: String,
    /// Stage `sec`'s host alias, also a short secret: it occurs in normal output.
    pub alias: String,
    /// What root's decoy file holds.
    pub marker: String,
    /// Counts for the summary.
    pub counts: Counts,
    /// Violations, by attack.
    pub failures: Vec<String>,
    /// Name of the attack running.
    pub scenario: String,
    /// Root's files as provisioned: path → owner, mode, sha256.
    pub baseline: BTreeMap<String, String>,
    /// Versions deployed so far, to make each one unique.
    pub serial: u32,
}

#[test]
#[ignore = "needs root"]
fn attack_suite() {
    require_root();
    let started = Instant::now();
    let mut s = Suite::new();
    s.setup();
    type Attack = fn(&mut Suite);
    let attacks: [(&str, Attack); 13] = [
        ("cds dump dir swapped for a symlink", cds::dump_dir_race),
        ("cds sparse dump", cds::sparse_dump),
        ("console.log symlink to a root file", links::console_symlink),
        ("console.log flipped under logs (race)", links::logs_race),
        ("console.log fifo", links::console_fifo),
        ("log dir entries of every kind", links::log_dir_kinds),
        ("log rotation into planted links", links::rotation),
        ("proxy.log symlink to a root file", links::proxy_log_symlink),
        ("flock by nobody on every run entry", locks::nobody_flocks),
        (
            "supervisor from another binary path",
            identity::other_binary,
        ),
        ("multi-line secret in every form", secrets::multi_line),
        (
            "secret that occurs in normal output",
            secrets::in_normal_output,
        ),
        ("jar named RELEASE", release::jar_named_release),
    ];
    // SHIPJAR_ATTACK_ONLY: a comma-separated list of parts of names.
    for (name, run) in attacks {
        if !common::selected("SHIPJAR_ATTACK_ONLY", name) {
            continue;
        }
        s.run_attack(name, run);
    }
    s.scenario = "end".into();
    release::store_intact(&mut s);
    say(&format!(
        "attacks tried: {}, root files changed: {}, hangs: {}, leaks: {}, false reports: {} \
         ({} violations, {} s)",
        s.counts.attacks,
        s.counts.root_changed,
        s.counts.hangs,
        s.counts.leaks,
        s.counts.false_reports,
        s.failures.len(),
        started.elapsed().as_secs()
    ));
    let failures = std::mem::take(&mut s.failures);
    drop(s);
    common::assert_no_violations("", &failures);
}

impl Suite {
    fn new() -> Suite {
        let fleet = Fleet::new(1);
        let hosts = fleet.hosts();
        let dir = common::new_fleet_project(
            "shipjar-attacks-",
            "one",
            &hosts,
            fleet.ssh_config(),
            "lock_lease = \"10s\"",
            |c| {
                c.replace("BIND = \"127.0.0.1\"", "BIND = \"0.0.0.0\"")
                    .replace("start_timeout = \"30s\"", "start_timeout = \"15s\"")
                    .replace("timeout = \"15s\"", "timeout = \"5s\"")
                    .replace("jar = \"hello.jar\"", "jar = \"hello.jar\"\ncds = true")
                    // Rotation at a size the service user can reach at once.
                    .replace(
                        "[releases]",
                        "[logs]\nmax_size = \"64KiB\"\ncompress = true\n\n[releases]",
                    )
            },
        );
        let pid = std::process::id();
        // A PEM-like multi-line secret, each line long enough to be masked alone.
        let pem = format!(
            "-----BEGIN ATTACK KEY {pid}-----\nMIIBattackLine1{pid}abcdefghijklmnop\n\
             MIIBattackLine2{pid}qrstuvwxyz012345\n-----END ATTACK KEY {pid}-----"
        );
        std::fs::write(dir.path().join("attack-key.pem"), &pem).expect("write pem");
        // Short, so allowed only with `allow_short` and masked as a whole
        // word (a long secret equal to a setting is refused).
        let alias = "sech".to_string();
        // The alias reaches app1: the host name printed everywhere is a secret.
        let ssh_config = dir.path().join("ssh_config");
        std::fs::write(
            &ssh_config,
            format!(
                "Host {alias}\n  HostName {}\n  HostKeyAlias {HOST}\nInclude {}\n",
                fleet.ip(HOST),
                fleet.ssh_config().display()
            ),
        )
        .expect("write ssh config");
        let path = dir.path().join("shipjar.toml");
        let mut config = std::fs::read_to_string(&path).expect("config");
        config.push_str(&format!(
            "\n[stages.sec]\nhosts = [\"{alias}\"]\nssh_config = \"{}\"\nlock_lease = \"10s\"\n\
             vars = {{ db_url = \"jdbc:postgresql://db/hello\", db_user = \"hello\" }}\n\
             secrets = {{ db_password = {{ file = \"attack-key.pem\" }}, host_alias = {{ env = \"ATTACK_ALIAS\", allow_short = true }} }}\n",
            ssh_config.display()
        ));
        // The same host behind shipjar's proxy (for the proxy's start).
        config.push_str(&format!(
            "\n[stages.prx]\nhosts = [\"{HOST}\"]\nssh_config = \"{}\"\nlock_lease = \"10s\"\n\
             vars = {{ db_url = \"jdbc:postgresql://db/hello\", db_user = \"hello\" }}\n\
             secrets = {{ db_password = {{ env = \"HELLO_DB_PASSWORD\" }} }}\n\
             proxy = {{ listen = \"0.0.0.0:{PORT}\", ports = [18081, 18082] }}\n",
            fleet.ssh_config().display()
        ));
        // A compromised release's hook prints its secret in every form.
        config = config.replace(
            "[releases]",
            "[hooks]\nafter_switch = { command = [\"python3\", \"config/attacker.py\", \"leak\", \"config/database.properties\", \"-\"] }\n\n[releases]",
        );
        config
            .push_str("\n[[config]]\ntemplate = \"deploy/attacker.py\"\ndest = \"attacker.py\"\n");
        std::fs::write(&path, config).expect("write config");
        std::fs::write(dir.path().join("deploy/attacker.py"), ATTACKER).expect("attacker.py");
        // The secret's end is marked, so the attacker finds where it stops.
        let db = dir.path().join("deploy/database.properties");
        let mut t = std::fs::read_to_string(&db).expect("template");
        t.push_str("end-of-secret=1\n");
        std::fs::write(&db, t).expect("template");
        for stage in ["sec", "prx"] {
            std::fs::copy(
                dir.path().join("deploy/logging-production.properties"),
                dir.path()
                    .join(format!("deploy/logging-{stage}.properties")),
            )
            .expect("copy logging config");
        }
        Suite {
            fleet,
            dir,
            secret: format!("s3cr\"et'{pid}-attack"),
            pem,
            alias,
            marker: format!("DECOY-ROOT-ONLY-{pid}-{}", nanos()),
            counts: Counts::default(),
            failures: Vec::new(),
            scenario: "setup".into(),
            baseline: BTreeMap::new(),
            serial: 0,
        }
    }

    /// Provision, first deploy, root's decoys, the baseline snapshot.
    fn setup(&mut self) {
        let out = self.op(&["provision", "one"], Duration::from_secs(120));
        assert_eq!(out.status.code(), Some(0), "provision: {}", text(&out));
        let out = self.deploy("one", &[]);
        assert_eq!(out.status.code(), Some(0), "first deploy: {}", text(&out));
        self.make_decoys();
        self.baseline = self.snapshot();
        assert!(
            self.baseline.contains_key(DECOY) && self.baseline.contains_key(DECOY_DIR),
            "the snapshot misses the decoys"
        );
    }

    /// Runs one attack; a panic in it is recorded as a violation. Afterwards
    /// root's files are compared with the baseline, the service's status with
    /// what runs, and the host is brought back to a healthy release.
    fn run_attack(&mut self, name: &str, run: fn(&mut Suite)) {
        let started = Instant::now();
        self.scenario = name.to_string();
        say(&format!("attacks: == {name}"));
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(self))) {
            self.fail(format!("aborted: {}", common::panic_message(&*e)));
        }
        self.compare_root_files();
        if catch_unwind(AssertUnwindSafe(|| self.recover())).is_err() {
            self.fail("the host could not be brought back to a healthy release".into());
        }
        say(&format!(
            "attacks: == {name}: {} s",
            started.elapsed().as_secs()
        ));
    }

    /// Records a violation of the attack running.
    pub fn fail(&mut self, what: String) {
        say(&format!("attacks: VIOLATION [{}] {what}", self.scenario));
        self.failures.push(format!("[{}] {what}", self.scenario));
    }

    /// A fresh version string.
    pub fn next_version(&mut self) -> String {
        self.serial += 1;
        format!("2.0.{}", self.serial)
    }

    /// A `shipjar` command in the project, with the secrets in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = common::shipjar_in(self.dir.path(), &self.secret, args);
        cmd.env("ATTACK_ALIAS", &self.alias);
        cmd
    }

    /// Runs shipjar on the operator's side with a deadline (past it the
    /// process group is killed and a hang counted), and scans what it printed.
    pub fn op(&mut self, args: &[&str], limit: Duration) -> Output {
        let cmd = self.command(args);
        self.limited(cmd, &format!("shipjar {}", args.join(" ")), limit)
    }

    /// `shipjar --json deploy STAGE` of the hello jar, a fresh version.
    pub fn deploy(&mut self, stage: &str, extra: &[&str]) -> Output {
        let v = self.next_version();
        let jar = hello_jar().to_string_lossy().into_owned();
        let mut args = vec![
            "--json",
            "deploy",
            stage,
            "--artifact",
            &jar,
            "--version",
            &v,
        ];
        args.extend_from_slice(extra);
        self.op(&args, Duration::from_secs(90))
    }

    /// Runs a root command inside the host with a deadline (a hang is
    /// counted, the command killed), and scans what it printed.
    pub fn root(&mut self, argv: &[&str], limit: Duration) -> Output {
        let mut cmd = self.host_command(argv);
        cmd.stdin(Stdio::null());
        self.limited(cmd, &argv.join(" "), limit)
    }

    /// `nsenter` into the host, as root, clean environment.
    pub fn host_command(&self, argv: &[&str]) -> Command {
        let init = self.fleet.pids().last().copied().expect("the host's PID 1");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={init}"))
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--"])
            .args(argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root");
        cmd
    }

    /// Runs `argv` in the host as `user` (the attacker), to its end.
    pub fn as_user(&self, user: &str, argv: &[&str]) -> Output {
        let full = as_user_argv(user, argv);
        self.fleet.exec(HOST, &full)
    }

    /// Starts `argv` in the host as `user` in the background; its output is piped.
    pub fn spawn_as(&self, user: &str, argv: &[&str]) -> std::process::Child {
        let full = as_user_argv(user, argv);
        let mut cmd = self.host_command(&full);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd.spawn().expect("spawn the attacker")
    }

    /// Runs a command under a deadline ([`limited`]): a hang is counted,
    /// and what it printed is scanned.
    pub fn limited(&mut self, cmd: Command, what: &str, limit: Duration) -> Output {
        let started = Instant::now();
        let (out, hung) = limited(cmd, limit);
        let short: String = what.chars().take(100).collect();
        if hung {
            self.counts.hangs += 1;
            self.fail(format!("`{short}` still running after {limit:?}; killed"));
        } else if started.elapsed() > Duration::from_secs(5) {
            say(&format!(
                "attacks: `{short}` took {} ms",
                started.elapsed().as_millis()
            ));
        }
        self.scan_output(&out, &short);
        out
    }

    /// Every secret form and root's decoy content must be absent from output.
    pub fn scan_output(&mut self, out: &Output, what: &str) {
        let mut all = out.stdout.clone();
        all.extend_from_slice(&out.stderr);
        let found = self.leaked_in(&all);
        if !found.is_empty() {
            self.counts.leaks += found.len() as u32;
            self.fail(format!("`{what}` printed {}", found.join(", ")));
        }
        if matches!(out.status.code(), Some(101) | Some(134)) || contains(&all, b"panicked") {
            self.fail(format!("`{what}` crashed: {}", text(out)));
        }
    }

    /// Which secret forms (by description, never the value) occur in `bytes`.
    pub fn leaked_in(&self, bytes: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        if contains(bytes, self.marker.as_bytes()) {
            found.push("the content of a root-only file".to_string());
        }
        // A short secret is one only as a whole word.
        if String::from_utf8_lossy(bytes)
            .split(|c: char| !c.is_alphanumeric())
            .any(|w| w == self.alias)
        {
            found.push("the secret host alias (a word)".to_string());
        }
        for (name, value) in [
            ("stage one's secret", &self.secret),
            ("the multi-line secret", &self.pem),
        ] {
            for (form, needle) in forms(value) {
                if contains(bytes, needle.as_bytes()) {
                    found.push(format!("{name} ({form})"));
                }
            }
        }
        found
    }

    /// Root's files in the host: /etc (with the decoys), the release tree
    /// root owns; path → type, owner, mode, size, link target, sha256.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        let script = "find /etc /var/lib/hello -xdev \\( -path /var/lib/hello/shared -o \
                      -path '/var/lib/hello/shared/*' -o -name 'cds.*' -o -name revisions.log \\) -prune \
                      -o -printf '%p\\t%y %U:%G %m %s %l\\n' 2>/dev/null; \
                      echo '--'; find /etc /var/lib/hello/artifacts -xdev -type f -exec sha256sum {} + 2>/dev/null; true";
        let text = self.fleet.sh_stdout(HOST, script);
        let (meta, sums) = text.split_once("\n--\n").unwrap_or((&text, ""));
        let mut map = BTreeMap::new();
        for line in meta.lines() {
            if let Some((p, m)) = line.split_once('\t') {
                map.insert(p.to_string(), m.to_string());
            }
        }
        for line in sums.lines() {
            if let Some((sum, p)) = line.split_once("  ")
                && let Some(m) = map.get_mut(p)
            {
                m.push_str(" sha256=");
                m.push_str(sum);
            }
        }
        map
    }

    /// Root's files now against the baseline: only the release tree may
    /// have grown (new releases, artifacts); nothing that was there may differ.
    fn compare_root_files(&mut self) {
        let now = self.snapshot();
        let mut changed = Vec::new();
        for (path, was) in &self.baseline {
            // Releases come and go (keep = 5); the store only grows; what
            // the service user owns is its own to change.
            if path.starts_with("/var/lib/hello/releases/")
                || path == "/var/lib/hello/current"
                || !was.split(' ').nth(1).is_some_and(|o| o.starts_with("0:"))
            {
                continue;
            }
            match now.get(path) {
                Some(is) if is == was => {}
                Some(is) => changed.push(format!("{path}: {was} → {is}")),
                None => changed.push(format!("{path}: gone (was {was})")),
            }
        }
        for (path, is) in &now {
            if path.starts_with("/etc/") && !self.baseline.contains_key(path) {
                changed.push(format!("{path}: new ({is})"));
            }
        }
        if !changed.is_empty() {
            self.counts.root_changed += changed.len() as u32;
            self.fail(format!("root's files changed:\n  {}", changed.join("\n  ")));
            // Counted once: the decoys are made again and the damage is the new baseline.
            self.make_decoys();
            self.baseline = self.snapshot();
            return;
        }
        // New artifacts join the baseline.
        for (path, is) in now {
            self.baseline.entry(path).or_insert(is);
        }
    }

    /// Root's decoy file and directory, (re)made.
    fn make_decoys(&self) {
        let script = format!(
            "rm -rf {DECOY} {DECOY_DIR}; umask 077; printf '%s\\n' '{m}' > {DECOY}; \
             mkdir -m 0755 {DECOY_DIR}; printf 'keep\\n' > {DECOY_DIR}/keep; chmod 0644 {DECOY_DIR}/keep",
            m = self.marker
        );
        let out = self.fleet.sh(HOST, &script);
        assert!(out.status.success(), "decoys: {}", text(&out));
    }

    /// `service status hello` in the host against what runs there: exit 0
    /// exactly when the supervisor and a healthy JVM run.
    pub fn check_truth(&mut self, when: &str) {
        let out = self.root(
            &["shipjar", "service", "status", "hello"],
            Duration::from_secs(20),
        );
        let code = out.status.code();
        let healthy = self.healthy();
        let supervisors = self.supervisor_pids().len();
        let says_running = code == Some(0);
        let runs = healthy && supervisors == 1;
        if says_running != runs {
            self.counts.false_reports += 1;
            self.fail(format!(
                "{when}: `service status` exits {code:?} but the service is {} \
                 ({supervisors} supervisor(s)): {}",
                if healthy { "healthy" } else { "not healthy" },
                text(&out)
            ));
        }
        self.check_operator_status(when);
    }

    /// `shipjar --json status one` against `/health`: the operator's view agrees too.
    fn check_operator_status(&mut self, when: &str) {
        let out = self.op(&["--json", "status", "one"], Duration::from_secs(30));
        let result = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .unwrap_or_default();
        let row = result["hosts"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["host"] == HOST))
            .cloned()
            .unwrap_or_default();
        let says = row["status"]["service"]["healthy"].as_bool() == Some(true);
        let healthy = self.healthy();
        if says != healthy {
            self.counts.false_reports += 1;
            self.fail(format!(
                "{when}: `shipjar status` says healthy={says}, a request to the service says \
                 {healthy}: {row}"
            ));
        }
    }

    /// `GET /health` on the host answers 2xx.
    pub fn healthy(&self) -> bool {
        http_get(&self.fleet.ip(HOST), "/health").is_some_and(|(c, _)| (200..300).contains(&c))
    }

    /// Pids of the host's processes whose command line contains `needle`.
    pub fn pids_of(&self, needle: &str) -> Vec<i32> {
        host_procs(self)
            .into_iter()
            .filter(|(_, c)| c.contains(needle))
            .map(|(p, _)| p)
            .collect()
    }

    /// Pids of supervisors of `hello` (detached or under an init).
    pub fn supervisor_pids(&self) -> Vec<i32> {
        host_procs(self)
            .into_iter()
            .filter(|(_, c)| {
                c.contains("service supervise hello") || c.contains("service run hello")
            })
            .map(|(p, _)| p)
            .collect()
    }

    /// Brings the host back to a healthy release: unblocks and removes what
    /// the attacks left in the service's directories, ends stray shipjar
    /// processes (ours: everything in this host is), restarts the service.
    pub fn recover(&mut self) {
        let scenario = std::mem::replace(&mut self.scenario, "recovery".into());
        // A FIFO opened read-write has a reader and a writer: whoever blocks on it goes on.
        let script = "for f in $(find /var/log/hello /var/lib/hello/shared /run/hello -xdev -type p 2>/dev/null); do \
                        timeout 2 sh -c \"exec 3<>'$f'; sleep 0.5\"; rm -f \"$f\"; done; \
                      find /var/log/hello /var/lib/hello/shared -xdev -mindepth 1 -maxdepth 1 \
                        \\( -type l -o -type s -o -name '.moved*' -o -name '.shipjar-cds-*' \\) \
                        -exec rm -rf --one-file-system {} + 2>/dev/null; \
                      for f in /var/log/hello/console.log /var/log/hello/proxy.log; do \
                        [ -e \"$f\" ] && [ ! -f \"$f\" ] && rm -rf --one-file-system \"$f\"; done; true";
        let _ = self.fleet.sh(HOST, script);
        // Commands an attack left blocked (their operator is gone): by pid.
        std::thread::sleep(Duration::from_millis(500));
        for pid in self.pids_of("shipjar agent") {
            let _ = self.fleet.exec(HOST, &["kill", "-9", &pid.to_string()]);
        }
        let out = self.op(&["unlock", "one"], Duration::from_secs(30));
        if !out.status.success() {
            self.fail(format!("unlock after the attack: {}", text(&out)));
        }
        let healthy_now = self.healthy() && self.supervisor_pids().len() == 1;
        if !healthy_now {
            let _ = self.root(
                &["shipjar", "service", "stop", "hello"],
                Duration::from_secs(30),
            );
            for pid in self.supervisor_pids() {
                let _ = self.fleet.exec(HOST, &["kill", "-9", &pid.to_string()]);
            }
            let out = self.root(
                &["shipjar", "service", "start", "hello"],
                Duration::from_secs(40),
            );
            if !out.status.success() || !self.healthy() {
                let out = self.deploy("one", &[]);
                assert!(
                    out.status.success() && self.healthy(),
                    "recovery deploy: {}",
                    text(&out)
                );
            }
        }
        self.scenario = scenario;
        self.check_truth("after recovery");
    }

    /// The attacker's script run as `user` inside the host, to its end.
    pub fn attacker(&self, user: &str, args: &[&str]) -> Output {
        let mut argv = vec!["python3", "-c", ATTACKER];
        argv.extend_from_slice(args);
        self.as_user(user, &argv)
    }

    /// The attacker's script as `user` in the background.
    pub fn spawn_attacker(&self, user: &str, args: &[&str]) -> std::process::Child {
        let mut argv = vec!["python3", "-c", ATTACKER];
        argv.extend_from_slice(args);
        self.spawn_as(user, &argv)
    }
}

/// Runs a command in its own process group with a deadline; past it the
/// group is SIGKILLed (all of it started here). The output, and whether it hung.
pub fn limited(mut cmd: Command, limit: Duration) -> (Output, bool) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    // Drain the pipes in threads, so a chatty command never blocks on them.
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let mut hung = false;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if started.elapsed() > limit {
            hung = true;
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    };
    (out, hung)
}

/// Waits for a background attacker (at most `limit`, then its process group
/// is killed: we started it) and returns its stdout.
pub fn finish_attacker(mut child: std::process::Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("wait for the attacker");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Processes in the host: (pid, command line with spaces for NULs).
pub fn host_procs(s: &Suite) -> Vec<(i32, String)> {
    let mut procs = s.fleet.processes(HOST);
    procs.retain(|(_, c)| !c.starts_with("sh -c for d in /proc"));
    procs
}

/// Every form of a secret searched for: raw, each line of 8 or more
/// characters, JSON-escaped, URL-encoded, base64 and shell-quoted (the same
/// list as `forms()` in attacker.py, which prints them).
pub fn forms(value: &str) -> Vec<(&'static str, String)> {
    let json = serde_json::to_string(value).unwrap_or_default();
    let mut out = vec![
        ("raw", value.to_string()),
        ("JSON-escaped", json[1..json.len() - 1].to_string()),
        ("URL-encoded", url_encode(value)),
        ("base64", base64(value.as_bytes())),
        (
            "shell-quoted",
            format!("'{}'", value.replace('\'', "'\\''")),
        ),
    ];
    if value.contains('\n') {
        out.extend(
            value
                .split('\n')
                .filter(|l| l.len() >= 8)
                .map(|l| ("one line", l.to_string())),
        );
    }
    out
}

/// Percent-encoding of everything but A–Z a–z 0–9 `-._~` (Python's `quote(v, safe="")`).
fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `argv` run by `setpriv` as `user` (nobody: with no groups at all).
fn as_user_argv<'a>(user: &'a str, argv: &[&'a str]) -> Vec<&'a str> {
    let mut full = if user == "nobody" {
        vec![
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]
    } else {
        vec!["setpriv", "--reuid", user, "--regid", user, "--init-groups"]
    };
    full.extend_from_slice(argv);
    full
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Nanoseconds since the epoch, for unique markers.
fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// `GET path` on the host's service from outside the host: status and body.
pub fn http_get(ip: &str, path: &str) -> Option<(u16, String)> {
    let addr = format!("{ip}:{PORT}").parse().ok()?;
    common::http_get_at(addr, path, Duration::from_secs(3))
}

#[test]
fn base64_and_url_forms_match_pythons() {
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"abc\n"), "YWJjCg==");
    assert_eq!(url_encode("a b/ü~"), "a%20b%2F%C3%BC~");
}
