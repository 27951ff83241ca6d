//! Through a shaped uplink: the operator's link to the test fleet limited to
//! 100 Mbit/s with 1 ms added where the kernel has netem (tc on the
//! operator's end, see `support/uplink.rs`), an artifact repository (nginx with WebDAV PUT) on a
//! host of its own on the fleet's bridge, and one new 8.2 MiB artifact
//! deployed three ways to fleets of 10, 30 and 100 hosts, in one run: the
//! floor (bench/floor.sh: the jar streamed over one ssh per host, every host
//! at once, a restart through an init script), shipjar pushing (`fetch =
//! "operator"`), and shipjar with every host pulling from the repository
//! (`shipjar publish` once, then `deploy --version`, `fetch = "host"`).
//! Prints per size the wall time of each, the bytes the operator sent (the
//! qdisc's counter) and the machine's CPU split (support/fleet_cpu.rs), then
//! time(largest)/time(smallest) per way and pull/floor at the largest size.
//! Run with `bench/fleet-uplink.sh` (root). A benchmark prints; it asserts
//! nothing.
//!
//! The artifact is the hello example's jar padded with an incompressible
//! (random, stored) 8 MiB resource, not the Clojure example's uberjar: 100
//! Clojure JVMs starting at once on a 2-core machine take minutes of CPU and
//! ~20 GB, which would measure the JVMs rather than the uplink. Each way
//! deploys a jar of its own (new random bytes), so no store skips it.
//! `[service] cds = false` unless FLEET_CDS=1: the floor makes no class-data
//! archive, and an archive's dump after one way's deploy would run on into
//! the next way's measurement.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/fleet.rs"]
mod fleet;
#[path = "support/fleet_cpu.rs"]
mod fleet_cpu;
#[path = "../tests/support/lifecycle.rs"]
mod lifecycle;
#[path = "support/uplink.rs"]
mod uplink;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

use lifecycle::FleetStage;

/// The floor's service port on each host (shipjar's is the example's, 18080).
const FLOOR_PORT: u16 = 18091;
/// The operator's uplink.
const RATE: &str = "100mbit";
const DELAY: &str = "1ms";
/// The artifact's size: 8.2 MiB, the Clojure example's uberjar's.
const JAR_BYTES: u64 = 8_598_323;

/// Set by the signal thread: stop after the step in flight, tear down.
static STOP: AtomicBool = AtomicBool::new(false);
/// The command in flight, which a signal is passed on to.
static RUNNING: AtomicI32 = AtomicI32::new(0);

/// One timed run of one way.
#[derive(Default)]
struct Run {
    wall_s: f64,
    /// Bytes through the operator's qdisc meanwhile.
    sent: u64,
    machine_cpu_s: f64,
    split: fleet_cpu::Split,
    ok: bool,
    /// shipjar: how the hosts got the jar (`100 downloaded`).
    how: String,
}

impl Run {
    fn jvm_s(&self) -> f64 {
        ["jvm", "dump"]
            .iter()
            .filter_map(|k| self.split.get(k))
            .sum()
    }
}

/// One fleet size: the three ways and `shipjar publish`.
struct Row {
    n: usize,
    floor: Run,
    push: Run,
    publish: Run,
    pull: Run,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // bench/floor.sh runs this binary as its poller.
    if args.get(1).is_some_and(|a| a == "--floor-poll") {
        std::process::exit(fleet_cpu::floor_poll(&args[2..]));
    }
    // `cargo test --all-targets` runs this binary too; only `cargo bench` passes --bench.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    fleet::require_root();
    catch_signals();
    // Orphans (daemonised ssh masters) stay ours, for the CPU split.
    // SAFETY: prctl with these arguments only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let sizes: Vec<usize> = std::env::var("FLEET_SIZES")
        .unwrap_or_else(|_| "10,30,100".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| (1..=250).contains(n))
        .collect();
    let work = tempfile::tempdir().expect("tempdir");
    println!(
        "uplink {RATE} on the operator's link (tbf, + netem {DELAY} where the kernel has it); artifact: the hello \
         example's jar padded with 8 MiB of random bytes to {:.1} MiB (100 Clojure JVMs \
         would not fit 2 cores); cds {}; {} CPUs; {}; load average {}",
        JAR_BYTES as f64 / 1048576.0,
        if cds_on() { "on (FLEET_CDS=1)" } else { "off" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        now(),
        load_average()
    );
    let mut rows = Vec::new();
    for n in sizes {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        match measure(n, work.path()) {
            Ok(row) => {
                print_row(&row);
                rows.push(row);
            }
            Err(e) => {
                eprintln!("{n} hosts: {e}");
                break;
            }
        }
    }
    println!("\nend {}; load average {}", now(), load_average());
    print_table(&rows);
    if STOP.load(Ordering::SeqCst) {
        eprintln!("interrupted: qdisc, repository and fleets removed");
    }
}

/// FLEET_CDS=1: shipjar's class-data archives on (the default in a project).
fn cds_on() -> bool {
    std::env::var("FLEET_CDS").is_ok_and(|v| v == "1")
}

/// Stops with an error when a signal came.
fn go_on() -> Result<(), String> {
    if STOP.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// The three ways at `n` hosts. Drop order tears down the qdisc, then the
/// repository, then the fleet.
fn measure(n: usize, work: &Path) -> Result<Row, String> {
    let stage = FleetStage::new(n, "", |c| {
        // 100 JVMs starting at once on 2 cores take longer than the example's 30 s.
        let c = c.replace("start_timeout = \"30s\"", "start_timeout = \"300s\"");
        // No class-data archives unless FLEET_CDS=1: the floor makes none, and
        // an archive's dump after one way's deploy would run into the next's.
        if cds_on() {
            c
        } else {
            c.replace("jar = \"hello.jar\"", "jar = \"hello.jar\"\ncds = false")
        }
    });
    go_on()?;
    let repo = uplink::Repository::start(&stage.fleet)?;
    let shaper = uplink::Shaper::add(stage.fleet.prefix(), RATE, DELAY)?;
    let hosts = stage.fleet.hosts();
    let mut netns: Vec<u64> = hosts
        .iter()
        .filter_map(|h| fleet_cpu::netns_inode(stage.fleet.netns(h)))
        .collect();
    netns.extend(fleet_cpu::netns_inode(&format!(
        "{}-repo",
        stage.fleet.prefix()
    )));
    let jar = |label: &str| padded_jar(work, &format!("{n}-{label}"));
    println!(
        "{n} hosts, {}, {}: {}",
        now(),
        shaper.what,
        check_paths(&stage, &repo, &shaper, &jar("check")?)?
    );

    // The floor, warmed with the small jar so the measured deploy replaces a
    // running JVM, then stopped so that only one service runs per host.
    let cfg = stage.fleet.ssh_config().display().to_string();
    let port = FLOOR_PORT.to_string();
    let hello = common::hello_jar().display().to_string();
    let floor = |args: &[&str]| -> Run {
        let mut cmd = Command::new("bash");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/floor.sh"))
            .args(args)
            .args(&hosts)
            .env(
                "FLOOR_POLLER",
                std::env::current_exe().unwrap_or_else(|_| "fleet_uplink".into()),
            );
        timed(cmd, &netns, &shaper)
    };
    require(floor(&["setup", &cfg, &port]), "floor setup")?;
    require(
        floor(&["deploy", &cfg, &port, "warm", &hello]),
        "floor warm-up",
    )?;
    go_on()?;
    let floor_jar = jar("floor")?.display().to_string();
    let floor_run = floor(&["deploy", &cfg, &port, "new", &floor_jar]);
    stop_floor(&stage);
    go_on()?;

    // shipjar: warmed with the small jar pushed, then a new jar each way.
    stage.provision();
    stage.append_config(&format!(
        "\n[artifact]\nrepository = \"{}/releases\"\ngroup = \"bench\"\nartifact = \"hello\"\nfetch = \"operator\"\n",
        repo.base
    ));
    let shipjar = |args: &[&str]| -> Run { timed(stage.command(args), &netns, &shaper) };
    let deploy_args = |v: &'static str| ["--json", "deploy", "fleet", "--version", v];
    require(
        shipjar(&[
            "--json",
            "deploy",
            "fleet",
            "--artifact",
            &hello,
            "--version",
            "warm",
        ]),
        "shipjar warm-up",
    )?;
    go_on()?;
    let push_jar = jar("push")?.display().to_string();
    require(
        shipjar(&["publish", "--artifact", &push_jar, "--version", "push"]),
        "publish for the push",
    )?;
    let push = shipjar(&deploy_args("push"));
    go_on()?;
    stage.edit_config(|c| c.replace("fetch = \"operator\"", "fetch = \"host\""));
    let pull_jar = jar("pull")?.display().to_string();
    let publish = shipjar(&["publish", "--artifact", &pull_jar, "--version", "pull"]);
    let pull = shipjar(&deploy_args("pull"));
    Ok(Row {
        n,
        floor: floor_run,
        push,
        publish,
        pull,
    })
}

/// `run`, or an error naming `what` when it failed.
fn require(run: Run, what: &str) -> Result<Run, String> {
    if run.ok {
        Ok(run)
    } else {
        Err(format!("{what} failed {}", run.how))
    }
}

/// Proves the two paths: the operator's transfer to a host goes through the
/// qdisc at the shaped rate; a host's download from the repository does not
/// touch it.
fn check_paths(
    stage: &FleetStage,
    repo: &uplink::Repository,
    shaper: &uplink::Shaper,
    jar: &Path,
) -> Result<String, String> {
    let mbit = |bytes: u64, s: f64| bytes as f64 * 8.0 / s / 1e6;
    let file = std::fs::File::open(jar).map_err(|e| e.to_string())?;
    let (before, t) = (shaper.sent_bytes(), Instant::now());
    let out = Command::new("ssh")
        .arg("-F")
        .arg(stage.fleet.ssh_config())
        .args(["app1", "cat >/dev/null"])
        .stdin(file)
        .output()
        .map_err(|e| e.to_string())?;
    let up_s = t.elapsed().as_secs_f64();
    let up_bytes = shaper.sent_bytes() - before;
    if !out.status.success() {
        return Err(format!(
            "ssh app1: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    repo.place(jar, "check.jar")?;
    let url = format!("{}/check.jar", repo.base);
    let before = shaper.sent_bytes();
    let out = stage.fleet.exec(
        "app1",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            &url,
        ],
    );
    let during = shaper.sent_bytes() - before;
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    let mut words = answer.split_whitespace();
    let (Some(got), Some(secs)) = (
        words.next().and_then(|w| w.parse::<u64>().ok()),
        words.next().and_then(|w| w.parse::<f64>().ok()),
    ) else {
        return Err(format!(
            "app1 could not download from the repository: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    };
    Ok(format!(
        "operator → app1 (ssh): {:.1} MiB in {up_s:.2} s = {:.0} Mbit/s, {:.1} MB through the qdisc; \
         app1 ← repository (curl): {:.1} MiB in {secs:.3} s = {:.0} Mbit/s, {during} B through the qdisc meanwhile",
        JAR_BYTES as f64 / 1048576.0,
        mbit(JAR_BYTES, up_s),
        up_bytes as f64 / 1e6,
        got as f64 / 1048576.0,
        mbit(got, secs.max(1e-6)),
    ))
}

/// Ends the floor's JVMs (its init script's `stop`), from inside each host.
fn stop_floor(stage: &FleetStage) {
    let hosts = stage.fleet.hosts();
    std::thread::scope(|s| {
        for chunk in hosts.chunks(10) {
            s.spawn(move || {
                for h in chunk {
                    let out = stage.fleet.exec(h, &["/srv/floor/init", "stop"]);
                    if !out.status.success() {
                        eprintln!("{h}: stopping the floor's service failed: {out:?}");
                    }
                }
            });
        }
    });
}

/// Runs `cmd` to the end: its wall time, the bytes through the qdisc and
/// the machine's CPU meanwhile; for shipjar's `--json`, how each host got
/// the jar.
fn timed(mut cmd: Command, netns: &[u64], shaper: &uplink::Shaper) -> Run {
    let sampler = fleet_cpu::Sampler::start(netns.to_vec());
    let sent = shaper.sent_bytes();
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let out = child.and_then(|c| {
        RUNNING.store(c.id() as i32, Ordering::SeqCst);
        c.wait_with_output()
    });
    RUNNING.store(0, Ordering::SeqCst);
    let wall_s = started.elapsed().as_secs_f64();
    let sent = shaper.sent_bytes() - sent;
    let (split, machine_cpu_s) = sampler.finish();
    let Ok(out) = out else {
        return Run::default();
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or_default();
    let mut how = std::collections::BTreeMap::<String, usize>::new();
    for host in json["hosts"].as_array().into_iter().flatten() {
        *how.entry(host["artifact"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let mut how: Vec<String> = how.iter().map(|(k, v)| format!("{v} {k}")).collect();
    if let Some(phases) = json["phases_ms"].as_object() {
        let ms: Vec<String> = phases.iter().map(|(k, v)| format!("{k} {v}")).collect();
        how.push(format!("phases ms: {}", ms.join(" ")));
    }
    // A failed run says why: its failed hosts' reasons, each once, counted.
    let mut why = std::collections::BTreeMap::<String, usize>::new();
    for host in json["hosts"].as_array().into_iter().flatten() {
        if host["ok"] != true {
            let step = host["failed_step"].as_str().unwrap_or("?");
            let reason: String = host["reason"]
                .as_str()
                .unwrap_or("?")
                .chars()
                .take(300)
                .collect();
            *why.entry(format!("{step}: {reason}")).or_default() += 1;
        }
    }
    how.extend(
        why.iter()
            .map(|(r, n)| format!("{n} host(s) failed at {r}")),
    );
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        how.push(format!("FAILED: {}", tail.join(" | ")));
    }
    Run {
        wall_s,
        sent,
        machine_cpu_s,
        split,
        ok: out.status.success(),
        how: how.join(", "),
    }
}

/// The hello jar with a stored entry of random bytes, JAR_BYTES in all.
fn padded_jar(work: &Path, label: &str) -> Result<PathBuf, String> {
    let dir = work.join(format!("jar-{label}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let out = dir.join("hello.jar");
    let hello = common::hello_jar();
    std::fs::copy(hello, &out).map_err(|e| e.to_string())?;
    let have = std::fs::metadata(&out).map_err(|e| e.to_string())?.len();
    // Less the zip headers of one entry (local, central) with its name.
    let mut pad = vec![0u8; JAR_BYTES.saturating_sub(have + 150) as usize];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut pad))
        .map_err(|e| format!("random bytes: {e}"))?;
    std::fs::write(dir.join("pad.bin"), pad).map_err(|e| e.to_string())?;
    let status = Command::new("jar")
        .args(["--update", "--no-compress", "--file"])
        .arg(&out)
        .arg("-C")
        .arg(&dir)
        .arg("pad.bin")
        .status()
        .map_err(|e| format!("run jar: {e}"))?;
    if !status.success() {
        return Err("jar --update failed".into());
    }
    Ok(out)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// One line per size as soon as it is measured.
fn print_row(r: &Row) {
    for (way, run) in [
        ("floor", &r.floor),
        ("push", &r.push),
        ("publish", &r.publish),
        ("pull", &r.pull),
    ] {
        let split: Vec<String> = fleet_cpu_kinds()
            .iter()
            .map(|k| format!("{k} {:.1}", run.split.get(k).copied().unwrap_or(0.0)))
            .collect();
        println!(
            "{:>4} hosts {way:<8} {:>7.2} s  {:>8.2} MB sent  machine {:>6.1} CPU-s ({})  {}",
            r.n,
            run.wall_s,
            mb(run.sent),
            run.machine_cpu_s,
            split.join(", "),
            run.how
        );
    }
}

fn fleet_cpu_kinds() -> [&'static str; 7] {
    ["jvm", "dump", "shipjar", "ssh", "poller", "other", "rest"]
}

/// The Markdown table and the ratios the issue asks for.
fn print_table(rows: &[Row]) {
    println!(
        "\n| hosts | floor (ssh push) | shipjar push | shipjar pull: publish + deploy | MB sent: floor / push / pull | machine CPU-s: floor / push / pull | of which JVMs |"
    );
    println!("|---|---|---|---|---|---|---|");
    let flag = |r: &Run| if r.ok { "" } else { " FAILED" };
    for r in rows {
        println!(
            "| {} | {:.1} s{} | {:.1} s{} | {:.1} + {:.1} = {:.1} s{} | {:.1} / {:.1} / {:.1} + {:.2} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |",
            r.n,
            r.floor.wall_s,
            flag(&r.floor),
            r.push.wall_s,
            flag(&r.push),
            r.publish.wall_s,
            r.pull.wall_s,
            r.publish.wall_s + r.pull.wall_s,
            flag(&r.pull),
            mb(r.floor.sent),
            mb(r.push.sent),
            mb(r.publish.sent),
            mb(r.pull.sent),
            r.floor.machine_cpu_s,
            r.push.machine_cpu_s,
            r.pull.machine_cpu_s + r.publish.machine_cpu_s,
            r.floor.jvm_s(),
            r.push.jvm_s(),
            r.pull.jvm_s(),
        );
    }
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return;
    };
    if rows.len() < 2 {
        return;
    }
    let pull_total = |r: &Row| r.publish.wall_s + r.pull.wall_s;
    println!(
        "\ntime({})/time({}): floor {:.2}, push {:.2}, pull deploy {:.2} (publish + deploy {:.2}; goal ≤ 3)",
        last.n,
        first.n,
        last.floor.wall_s / first.floor.wall_s,
        last.push.wall_s / first.push.wall_s,
        last.pull.wall_s / first.pull.wall_s,
        pull_total(last) / pull_total(first),
    );
    println!(
        "pull/floor at {} hosts: deploy {:.2}, publish + deploy {:.2} (goal ≤ 0.5); push/floor {:.2}",
        last.n,
        last.pull.wall_s / last.floor.wall_s,
        pull_total(last) / last.floor.wall_s,
        last.push.wall_s / last.floor.wall_s,
    );
}

fn now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The first three fields of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// SIGINT, SIGTERM and SIGHUP stop the bench after the step in flight (the
/// command in flight gets a SIGINT), so that the qdisc, the repository and
/// the fleet are removed by their `Drop`s on the way out.
fn catch_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    // Blocked before any thread starts, so every thread inherits it; std
    // resets the mask of the processes it spawns.
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            eprintln!("{sig}: stopping after the step in flight, then cleaning up");
            STOP.store(true, Ordering::SeqCst);
            let pid = RUNNING.load(Ordering::SeqCst);
            if pid > 0 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGINT);
            }
        }
    });
}
