//! How shipjar scales from one operator: deploys a light `command` service (a
//! small python HTTP server, so the hosts' CPU does not hide the operator's)
//! to fleets of 10, 30, 100 and 300 test hosts and prints, per size and
//! deploy, the wall time, the operator's CPU (shipjar's own and its ssh
//! processes' apart), the operator's peak memory and the peak number of ssh
//! processes alive; then times `status` against one fresh ssh connection.
//! Run with `bench/fleet-scale.sh` (root: the hosts are network namespaces).
//! A benchmark prints; it asserts nothing.
//!
//! Accounting. The bench is a child subreaper, so ssh control masters that
//! daemonise (and leave shipjar's process tree) are reparented to it and
//! reaped here with their rusage. shipjar's own CPU is utime+stime of its
//! zombie (read before it is reaped), ssh's is the zombie's cutime+cstime
//! (the ssh clients it waited for) plus the masters reaped here. Memory is
//! the sum of RSS of shipjar and every live ssh process of the run, sampled
//! every SAMPLE_MS (20 by default), and the sum of PSS (smaps_rollup, which
//! costs the kernel more) every 25th sample.
//!
//! Environment: FLEET_SIZES, PARALLEL (`--parallel`), SAMPLE_MS, KEX (the
//! hosts' KexAlgorithms), MUX (the user's own persistent multiplexing in the
//! ssh config), SHIPJAR_BIN (another build), FLEET_HOLD (keep the last
//! fleet until a signal, for profiling by hand).
//!
//! Hosts: one harness fleet holds at most 250, so 300 hosts are two fleets
//! of 150 on two subnets, reached through one ssh config written here.

#[path = "../tests/support/fleet.rs"]
mod fleet;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shipjar under test: this tree's, or `SHIPJAR_BIN` (to compare builds).
fn shipjar_bin() -> String {
    std::env::var("SHIPJAR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_shipjar").to_string())
}
/// The most hosts one harness fleet holds.
const PER_FLEET: usize = 250;

/// Set by the signal thread: stop after the step in flight, tear down.
static STOP: AtomicBool = AtomicBool::new(false);
/// The shipjar run in flight, which a signal is passed on to.
static RUNNING: AtomicI32 = AtomicI32::new(0);

/// The service: answers /health and /version (the version from its env).
/// Perl from perl-base (on every Debian) starts in about 10 ms of CPU,
/// python3 in about 70.
const SERVER: &str = r#"use strict;
use IO::Socket::INET;
my $v = $ENV{VERSION} // "?";
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 18080,
    Listen => 64, ReuseAddr => 1) or die "listen: $!\n";
while (my $c = $s->accept) {
    my $line = <$c> // "";
    while (my $h = <$c>) { last if $h =~ /^\r?\n$/ }
    my $body = $line =~ m{^GET /version[ ?]} ? "{\"version\":\"$v\"}" : "ok";
    print $c "HTTP/1.1 200 OK\r\nContent-Length: " . length($body)
        . "\r\nConnection: close\r\n\r\n$body";
    close $c;
}
"#;

fn main() {
    // `cargo test --all-targets` runs this binary too; only `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    fleet::require_root();
    catch_signals();
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let list = |var: &str, default: &str| -> Vec<usize> {
        std::env::var(var)
            .unwrap_or_else(|_| default.to_string())
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    };
    let sizes = list("FLEET_SIZES", "10,30,100,300");
    let parallel: Option<usize> = std::env::var("PARALLEL").ok().and_then(|p| p.parse().ok());
    let sample_ms: u64 = std::env::var("SAMPLE_MS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(20);
    println!(
        "machine: {} CPUs, {} GiB; shipjar {}; --parallel {}; memory sampled every {sample_ms} ms",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_gib(),
        shipjar_bin(),
        parallel.map_or("default".into(), |p| p.to_string()),
    );
    println!(
        "{:>5} {:<7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>5} {:>4} {:>5} {:>3}",
        "hosts",
        "run",
        "wall_s",
        "lock",
        "prep",
        "switch",
        "finish",
        "own_ms",
        "ssh_ms",
        "own/host",
        "ssh/h",
        "rss_MB",
        "sj_MB",
        "pss_MB",
        "ssh#",
        "thr",
        "busy%",
        "rt"
    );
    let mut statuses = Vec::new();
    for n in sizes {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        match run_size(n, parallel, sample_ms) {
            Some(s) => statuses.extend(s),
            None => break,
        }
    }
    if !statuses.is_empty() {
        println!();
        println!(
            "{:>5} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>6} {:>5}",
            "hosts",
            "status_ms",
            "ssh1_ms",
            "sshN_ms",
            "muxN_ms",
            "ratio",
            "own_ms",
            "ssh_ms",
            "ssh#",
            "busy%"
        );
        for line in statuses {
            println!("{line}");
        }
    }
    if STOP.load(Ordering::SeqCst) {
        eprintln!("interrupted: fleets torn down");
    }
}

/// One fleet size: provision, two deploys, status. None when interrupted.
fn run_size(n: usize, parallel: Option<usize>, sample_ms: u64) -> Option<Vec<String>> {
    let parts = n.div_ceil(PER_FLEET);
    let fleets: Vec<fleet::Fleet> = (0..parts)
        .map(|j| fleet::Fleet::new(n / parts + usize::from(j < n % parts)))
        .collect();
    if STOP.load(Ordering::SeqCst) {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, hosts) = ssh_config(&fleets);
    let config_path = dir.path().join("ssh_config");
    std::fs::write(&config_path, config).expect("write ssh_config");
    write_project(dir.path(), &hosts, &config_path);
    let mut extra: Vec<String> = Vec::new();
    if let Some(p) = parallel {
        extra.extend(["--parallel".into(), p.to_string()]);
    }
    let started = Instant::now();
    let out = shipjar(
        dir.path(),
        &[&["provision", "bench"][..], &strs(&extra)].concat(),
    );
    if !out.status.success() {
        eprintln!(
            "provision of {n} hosts failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    eprintln!(
        "{n} hosts provisioned in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (label, version) in [("first", "1"), ("second", "2")] {
        if STOP.load(Ordering::SeqCst) {
            return None;
        }
        // A new artifact each time: both deploys upload.
        let artifact = dir.path().join(format!("tiny-{version}.pl"));
        std::fs::write(&artifact, format!("{SERVER}# build {version}\n")).expect("artifact");
        let artifact = artifact.to_string_lossy().into_owned();
        let mut args = vec![
            "--json",
            "deploy",
            "bench",
            "--artifact",
            &artifact,
            "--version",
            version,
        ];
        args.extend(strs(&extra));
        let m = measured(dir.path(), &args, sample_ms);
        let last = m.stdout.lines().last().unwrap_or("null");
        let result: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
        let phase = |p: &str| result["phases_ms"][p].as_u64().unwrap_or(0);
        println!(
            "{n:>5} {label:<7} {:>7.2} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8.1} {:>7.1} {:>7.0} {:>7.1} {:>7.0} {:>5} {:>4} {:>5.0} {:>3}{}",
            m.wall.as_secs_f64(),
            phase("lock"),
            phase("prepare"),
            phase("switch"),
            phase("finish"),
            m.own_ms,
            m.ssh_ms,
            m.own_ms as f64 / n as f64,
            m.ssh_ms as f64 / n as f64,
            m.peak_rss_kb as f64 / 1024.0,
            m.peak_own_rss_kb as f64 / 1024.0,
            m.peak_pss_kb as f64 / 1024.0,
            m.peak_ssh,
            m.peak_threads,
            m.busy_pct,
            m.round_trips,
            if result["ok"] == true {
                String::new()
            } else {
                format!("  FAILED: {}", result["stopped"])
            }
        );
    }
    if STOP.load(Ordering::SeqCst) {
        return None;
    }
    let line = status_line(dir.path(), &hosts, &config_path, sample_ms);
    if std::env::var_os("FLEET_HOLD").is_some() {
        // For profiling by hand: the deployed fleet stays until a signal.
        eprintln!(
            "holding: shipjar -C {} status bench; Ctrl-C ends",
            dir.path().display()
        );
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Some(vec![line])
}

/// `status` of the whole fleet right after the deploy, against plain ssh:
/// one fresh `ssh HOST true` (median of 5, one at a time), the same to
/// every host at once, and to every host at once through control masters
/// started beforehand (what persistent multiplexing would give).
fn status_line(dir: &Path, hosts: &[String], config: &Path, sample_ms: u64) -> String {
    let mut fresh: Vec<Duration> = (0..5)
        .map(|i| ssh_true(config, &hosts[i % hosts.len()..][..1], &[]))
        .collect();
    fresh.sort();
    let fresh = fresh[2];
    let all_fresh = ssh_true(config, hosts, &[]);
    let parallel = hosts.len().to_string();
    let m = measured(
        dir,
        &["--json", "status", "bench", "--parallel", &parallel],
        sample_ms,
    );
    let last = m.stdout.lines().last().unwrap_or("null");
    let result: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
    let all_mux = muxed_ssh_true(dir, config, hosts);
    format!(
        "{:>5} {:>10} {:>8} {:>8} {:>8} {:>7.2} {:>8} {:>8} {:>6} {:>5.0}{}",
        hosts.len(),
        m.wall.as_millis(),
        fresh.as_millis(),
        all_fresh.as_millis(),
        all_mux.map_or("-".into(), |d| d.as_millis().to_string()),
        m.wall.as_secs_f64() / fresh.as_secs_f64(),
        m.own_ms,
        m.ssh_ms,
        m.peak_ssh,
        m.busy_pct,
        if result["ok"] == true {
            ""
        } else {
            "  (FLAGGED)"
        }
    )
}

/// Wall time of `ssh HOST true` to all `hosts` at once.
fn ssh_true(config: &Path, hosts: &[String], extra: &[&str]) -> Duration {
    let t = Instant::now();
    let children: Vec<_> = hosts
        .iter()
        .map(|h| {
            Command::new("ssh")
                .arg("-F")
                .arg(config)
                .args(extra)
                .args([h.as_str(), "true"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run ssh")
        })
        .collect();
    for mut c in children {
        let ok = c.wait().is_ok_and(|s| s.success());
        assert!(ok, "ssh true failed");
    }
    t.elapsed()
}

/// Starts a control master per host (in `dir`), times `ssh HOST true` to
/// all hosts at once through them, closes them.
fn muxed_ssh_true(dir: &Path, config: &Path, hosts: &[String]) -> Option<Duration> {
    let sockets = dir.join("mux");
    std::fs::create_dir_all(&sockets).ok()?;
    let path = format!("ControlPath={}/%C", sockets.display());
    let masters: Vec<_> = hosts
        .iter()
        .map(|h| {
            Command::new("ssh")
                .arg("-F")
                .arg(config)
                .args([
                    "-o",
                    "ControlMaster=yes",
                    "-o",
                    &path,
                    "-o",
                    "ControlPersist=60",
                ])
                .args(["-N", "-f", h.as_str()])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run ssh")
        })
        .collect();
    let mut up = true;
    for mut m in masters {
        up &= m.wait().is_ok_and(|s| s.success());
    }
    let took = up.then(|| ssh_true(config, hosts, &["-o", &path]));
    let exits: Vec<_> = hosts
        .iter()
        .filter_map(|h| {
            Command::new("ssh")
                .arg("-F")
                .arg(config)
                .args(["-o", &path, "-O", "exit", h.as_str()])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    for mut e in exits {
        let _ = e.wait();
    }
    took
}

/// What one measured shipjar run cost.
struct Measured {
    wall: Duration,
    /// How busy the machine's CPUs were meanwhile (hosts, other work, all).
    busy_pct: f64,
    stdout: String,
    own_ms: u64,
    ssh_ms: u64,
    peak_rss_kb: u64,
    peak_own_rss_kb: u64,
    peak_pss_kb: u64,
    peak_ssh: usize,
    peak_threads: u64,
    round_trips: String,
}

/// Runs shipjar, sampling its processes, and accounts for its CPU.
fn measured(dir: &Path, args: &[&str], sample_ms: u64) -> Measured {
    let mut child = Command::new(shipjar_bin())
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run shipjar");
    let started = Instant::now();
    let busy_before = machine_busy_ticks();
    let pid = child.id() as i32;
    RUNNING.store(pid, Ordering::SeqCst);
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let sampler = Arc::new(Mutex::new(Sampler::new(pid)));
    let done = Arc::new(AtomicBool::new(false));
    let thread = {
        let (sampler, done) = (Arc::clone(&sampler), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                if let Ok(mut s) = sampler.lock() {
                    s.sample(n.is_multiple_of(25));
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(sample_ms));
            }
        })
    };
    // Wait without reaping: the zombie's stat still has its CPU times.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo buffer.
    unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    let wall = started.elapsed();
    let busy = machine_busy_ticks().saturating_sub(busy_before);
    let (own_ticks, children_ticks) = zombie_cpu(pid);
    let _ = child.wait();
    RUNNING.store(0, Ordering::SeqCst);
    // The masters exit when shipjar closes them; reap what was reparented
    // here. Masters of the user's own `ControlPersist` (MUX) stay.
    let wait = if std::env::var_os("MUX").is_some() {
        1
    } else {
        15
    };
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let left = sampler.lock().map(|mut s| s.reap()).unwrap_or(0);
        if left == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done.store(true, Ordering::SeqCst);
    let _ = thread.join();
    let stdout = reader.join().unwrap_or_default();
    let s = sampler.lock().expect("sampler");
    let tick_ms = 1000 / clock_ticks();
    let rt: BTreeSet<u64> =
        serde_json::from_str::<serde_json::Value>(stdout.lines().last().unwrap_or("null"))
            .ok()
            .and_then(|v| v["hosts"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|h| h["round_trips"].as_u64())
            .collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Measured {
        wall,
        busy_pct: busy as f64 / clock_ticks() as f64 / wall.as_secs_f64() / cpus * 100.0,
        own_ms: own_ticks * tick_ms,
        ssh_ms: (children_ticks + s.reaped_ticks + s.live_ticks()) * tick_ms,
        peak_rss_kb: s.peak_rss_kb,
        peak_own_rss_kb: s.peak_own_rss_kb,
        peak_pss_kb: s.peak_pss_kb,
        peak_ssh: s.peak_ssh,
        peak_threads: s.peak_threads,
        round_trips: if rt.is_empty() {
            "-".into()
        } else {
            rt.iter().map(u64::to_string).collect::<Vec<_>>().join("/")
        },
        stdout,
    }
}

/// The processes of one shipjar run, as seen in /proc.
struct Sampler {
    shipjar: i32,
    me: i32,
    /// Pids already looked at: ours (ssh) or not.
    seen: BTreeMap<i32, bool>,
    /// ssh processes of the run not yet gone.
    /// ssh processes of the run not yet gone, with their CPU ticks when first seen.
    live: BTreeMap<i32, u64>,
    reaped_ticks: u64,
    peak_rss_kb: u64,
    peak_own_rss_kb: u64,
    peak_pss_kb: u64,
    peak_ssh: usize,
    peak_threads: u64,
}

impl Sampler {
    fn new(shipjar: i32) -> Sampler {
        Sampler {
            shipjar,
            me: std::process::id() as i32,
            seen: BTreeMap::new(),
            live: BTreeMap::new(),
            reaped_ticks: 0,
            peak_rss_kb: 0,
            peak_own_rss_kb: 0,
            peak_pss_kb: 0,
            peak_ssh: 0,
            peak_threads: 0,
        }
    }

    /// One sample: new processes classified, memory summed, peaks kept.
    fn sample(&mut self, with_pss: bool) {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if self.seen.contains_key(&pid) || pid == self.shipjar {
                    continue;
                }
                // An ssh of this run: shipjar's child (or a child of one of
                // its ssh), or a daemonised master reparented to us.
                let Some((comm, ppid)) = stat(pid) else {
                    continue;
                };
                let parent =
                    ppid == self.shipjar || ppid == self.me || self.live.contains_key(&ppid);
                if parent && comm == "shipjar" {
                    // Forked, not yet exec'ed: look again next time.
                    continue;
                }
                let ours = parent && comm == "ssh";
                self.seen.insert(pid, ours);
                if ours {
                    self.live.insert(pid, cpu_ticks(pid));
                }
            }
        }
        self.reap();
        let own = rss_kb(self.shipjar);
        let mut rss = own;
        let mut pss = if with_pss { pss_kb(self.shipjar) } else { 0 };
        let mut alive = 0;
        for &pid in self.live.keys() {
            let r = rss_kb(pid);
            if r > 0 {
                alive += 1;
                rss += r;
                if with_pss {
                    pss += pss_kb(pid);
                }
            }
        }
        self.peak_own_rss_kb = self.peak_own_rss_kb.max(own);
        self.peak_rss_kb = self.peak_rss_kb.max(rss);
        self.peak_pss_kb = self.peak_pss_kb.max(pss);
        self.peak_ssh = self.peak_ssh.max(alive);
        self.peak_threads = self.peak_threads.max(threads(self.shipjar));
    }

    /// Reaps the ssh processes reparented to us; returns how many of the
    /// run's ssh processes are still there.
    fn reap(&mut self) -> usize {
        let mut gone = Vec::new();
        for (&pid, &before) in &self.live {
            let mut status = 0;
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 on one pid, WNOHANG; ECHILD when it is not ours.
            let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if got == pid {
                let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
                self.reaped_ticks += ((ms(usage.ru_utime) + ms(usage.ru_stime)) * clock_ticks()
                    / 1000)
                    .saturating_sub(before);
                gone.push(pid);
            } else if !Path::new(&format!("/proc/{pid}")).exists() {
                gone.push(pid);
            }
        }
        for pid in gone {
            self.live.remove(&pid);
        }
        self.live.len()
    }

    /// CPU the ssh processes still alive (masters kept by the user's
    /// `ControlPersist`) spent during the run.
    fn live_ticks(&self) -> u64 {
        self.live
            .iter()
            .map(|(&pid, &before)| cpu_ticks(pid).saturating_sub(before))
            .sum()
    }
}

/// utime+stime (clock ticks) of a live process.
fn cpu_ticks(pid: i32) -> u64 {
    let (own, _) = zombie_cpu(pid);
    own
}

/// (comm, ppid) from /proc/PID/stat.
fn stat(pid: i32) -> Option<(String, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let ppid = s[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// utime+stime and cutime+cstime (clock ticks) of a zombie not yet reaped.
fn zombie_cpu(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<u64> = s
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // After the comm: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let at = |n: usize| f.get(n - 3).copied().unwrap_or(0);
    (at(14) + at(15), at(16) + at(17))
}

/// Clock ticks all CPUs spent on anything but idle and iowait since boot.
fn machine_busy_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().take(8).sum();
    total.saturating_sub(f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0))
}

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_kb())
}

fn pss_kb(pid: i32) -> u64 {
    field_kb(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn threads(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn field_kb(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn page_kb() -> u64 {
    // SAFETY: sysconf with a constant.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64 / 1024).max(1)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf with a constant.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64).max(1)
}

fn mem_gib() -> u64 {
    field_kb("/proc/meminfo", "MemTotal:").div_ceil(1024 * 1024)
}

/// One ssh config for all the fleets: host `fJ-appI` is fleet J's `appI`,
/// with that fleet's key and known_hosts (which names it by address too).
fn ssh_config(fleets: &[fleet::Fleet]) -> (String, Vec<String>) {
    let mut config = String::from("# fleet-scale bench hosts\n");
    // KEX=curve25519-sha256 shows what ssh's default post-quantum key
    // exchange (sntrup761x25519 in OpenSSH 9.2) costs per connection.
    let mut kex = std::env::var("KEX")
        .map(|k| format!("    KexAlgorithms {k}\n"))
        .unwrap_or_default();
    // MUX=1: the user's own persistent multiplexing, which agent sessions use.
    if std::env::var_os("MUX").is_some() {
        kex.push_str(
            "    ControlMaster auto\n    ControlPath /tmp/sjb-%C\n    ControlPersist 60\n",
        );
    }
    let mut hosts = Vec::new();
    for (j, f) in fleets.iter().enumerate() {
        for h in f.hosts() {
            let alias = format!("f{}-{h}", j + 1);
            let _ = write!(
                config,
                "\nHost {alias}\n    HostName {}\n    User root\n    IdentityFile {}\n    \
                 IdentitiesOnly yes\n    UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n    \
                 BatchMode yes\n    ConnectTimeout 10\n{kex}",
                f.ip(&h),
                f.identity().display(),
                f.known_hosts().display()
            );
            hosts.push(alias);
        }
    }
    (config, hosts)
}

/// A project whose service is the python server above, for `hosts`.
fn write_project(dir: &Path, hosts: &[String], ssh_config: &Path) {
    let hosts = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        r#"[service]
name = "tiny"
command = ["perl", "{{{{ release_dir }}}}/tiny.jar"]
env = {{ VERSION = "{{{{ version }}}}" }}

[build]
command = "true"
artifact = "tiny-1.pl"

[health]
url = "http://127.0.0.1:18080/health"
start_timeout = "60s"

[version_check]
url = "http://127.0.0.1:18080/version"
key = "version"

[stop]
timeout = "10s"

[stages.bench]
hosts = [{hosts}]
ssh_config = "{}"
"#,
        ssh_config.display()
    );
    std::fs::write(dir.join("shipjar.toml"), config).expect("write shipjar.toml");
}

fn shipjar(dir: &Path, args: &[&str]) -> std::process::Output {
    let child = Command::new(shipjar_bin())
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shipjar");
    RUNNING.store(child.id() as i32, Ordering::SeqCst);
    let out = child.wait_with_output().expect("wait for shipjar");
    RUNNING.store(0, Ordering::SeqCst);
    out
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// SIGINT, SIGTERM and SIGHUP stop the bench after the step in flight (the
/// shipjar run in flight gets a SIGINT and winds down), so that the fleets
/// are torn down by their `Drop` as after a panic.
fn catch_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    // Blocked here, before any thread starts, so every thread inherits it;
    // std resets the mask of the processes it spawns.
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            eprintln!("{sig}: stopping after the step in flight, then tearing the fleets down");
            STOP.store(true, Ordering::SeqCst);
            let pid = RUNNING.load(Ordering::SeqCst);
            if pid > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
        }
    });
}
