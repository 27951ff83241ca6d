//! shipjar against the floor (bench/floor.sh: one ssh master per host, the
//! jar streamed, a restart through an init script, one poller process for
//! all hosts every 0.1 s), side by side in one run: the Clojure/Jetty
//! example's uberjar deployed as a new artifact to test fleets (network
//! namespaces with their own sshd; root) of 1, 10 and 30 hosts, every host at
//! once, three consecutive times (FLEET_RUNS); then rollbacks. Prints every
//! run (not only medians) as a Markdown table, with the machine's CPU during
//! each split by process kind (see `support/fleet_cpu.rs` for the method),
//! and shipjar's per-phase and per-host breakdown. `[service] cds` is at its
//! default (on); FLEET_CDS=0 sets `cds = false`. Run with
//! `bench/fleet-deploy.sh`. A benchmark prints; it asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/fleet.rs"]
mod fleet;
#[path = "support/fleet_cpu.rs"]
mod fleet_cpu;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The port shipjar's service listens on (the example's), and the floor's.
const SHIPJAR_PORT: u16 = 18090;
const FLOOR_PORT: u16 = 18091;

/// One timed run of one tool.
#[derive(Default, Clone)]
struct Sample {
    wall_s: f64,
    /// CPU of the process run and all its descendants (ssh, scp).
    operator_cpu_s: f64,
    /// CPU the whole machine spent meanwhile (every host, sshd, JVM).
    machine_cpu_s: f64,
    /// That CPU by process kind (`fleet_cpu::KINDS`).
    split: fleet_cpu::Split,
    ok: bool,
    /// shipjar only: its phases, and per host (stop, healthy, …) in ms.
    phases_ms: BTreeMap<String, u64>,
    hosts_ms: Vec<BTreeMap<String, u64>>,
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
    // Orphans (daemonised ssh masters) stay ours, for the CPU split.
    // SAFETY: prctl with these arguments only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let env_list = |key: &str, default: &str| -> Vec<usize> {
        std::env::var(key)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    };
    let sizes = env_list("FLEET_SIZES", "1,10,30");
    let runs = env_list("FLEET_RUNS", "3").first().copied().unwrap_or(3);
    let runs_large = env_list("FLEET_RUNS_LARGE", "3")
        .first()
        .copied()
        .unwrap_or(3);
    let jar = clojure_jar();
    let work = tempfile::tempdir().expect("tempdir");
    println!(
        "jar: {} ({:.1} MiB); cds {}; {} CPUs; {}",
        jar.display(),
        std::fs::metadata(&jar).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0,
        if cds_off() { "off" } else { "on (the default)" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        Command::new("date")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    let mut rows = Vec::new();
    for n in sizes {
        let runs = if n >= 30 { runs_large } else { runs };
        rows.push(measure_size(n, runs, &jar, work.path()));
    }
    println!();
    println!(
        "CPU-s: the machine's during the run, then by kind: {}",
        KIND_LEGEND
    );
    println!(
        "| hosts | deploy | # | floor | shipjar | shipjar / floor | machine CPU-s floor / shipjar | ratio | JVMs | dumps | shipjar | ssh + sshd | floor's poller | other | rest |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, label, r, floor, ours) in rows.iter().flatten() {
        let kind = |k: &str| {
            format!(
                "{:.1} / {:.1}",
                floor.split.get(k).copied().unwrap_or(0.0),
                ours.split.get(k).copied().unwrap_or(0.0)
            )
        };
        println!(
            "| {n} | {label} | {r} | {:.2} s{} | {:.2} s{} | {:.2}× | {:.1} / {:.1} | {:.2}× | {} | {} | {} | {} | {} | {} | {} |",
            floor.wall_s,
            if floor.ok { "" } else { " FAILED" },
            ours.wall_s,
            if ours.ok { "" } else { " FAILED" },
            ours.wall_s / floor.wall_s,
            floor.machine_cpu_s,
            ours.machine_cpu_s,
            ours.machine_cpu_s / floor.machine_cpu_s,
            kind("jvm"),
            kind("dump"),
            kind("shipjar"),
            kind("ssh"),
            kind("poller"),
            kind("other"),
            kind("rest"),
        );
    }
}

const KIND_LEGEND: &str = "JVMs (the services), dumps (`java -Xshare:dump`), shipjar (operator, agents, supervisors), ssh + sshd (both sides), the floor's poller, other (shells, sleep, cat, …), rest (the machine's busy time not in these: other work, unsampled ends)";

/// `FLEET_CDS=0`: `cds = false` (today's no-archive behaviour).
fn cds_off() -> bool {
    std::env::var("FLEET_CDS").is_ok_and(|v| v == "0")
}

/// `runs` deploys (and rollbacks) at `n` hosts, both tools, every run.
fn measure_size(
    n: usize,
    runs: usize,
    jar: &Path,
    work: &Path,
) -> Vec<(usize, &'static str, usize, Sample, Sample)> {
    let fleet = fleet::Fleet::new(n);
    let hosts = fleet.hosts();
    let netns: Vec<u64> = hosts
        .iter()
        .filter_map(|h| fleet_cpu::netns_inode(fleet.netns(h)))
        .collect();
    let project = work.join(format!("project-{n}"));
    write_project(&project, &hosts, fleet.ssh_config());
    let shipjar = |args: &[&str]| -> (Sample, serde_json::Value) {
        let mut cmd = Command::new(common::shipjar_bin());
        cmd.arg("-C")
            .arg(&project)
            .args(args)
            .env("INVENTORY_DB_PASSWORD", "bench-password")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        let (sample, stdout) = timed(cmd, &netns);
        let last = stdout.lines().last().unwrap_or("null").to_string();
        let json: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
        // A failed run says why: each failed host's answer, shortened.
        for host in json["hosts"].as_array().into_iter().flatten() {
            if host["ok"] != true {
                // The reasons first: the log tail after them can be long.
                let said = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
                println!(
                    "  failed host {}: step {}, {}; its switch: step {}, {}",
                    said(&host["host"]),
                    said(&host["failed_step"]),
                    said(&host["reason"]),
                    said(&host["activation"]["failed_step"]),
                    said(&host["activation"]["reason"]),
                );
                let text = host.to_string();
                println!("  its answer: {}", &text[..text.len().min(1500)]);
            }
        }
        (sample, json)
    };
    let floor = |args: &[String]| -> Sample {
        let mut cmd = Command::new("bash");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/floor.sh"))
            .args(args)
            .args(&hosts)
            .env("FLOOR_POLLER", std::env::current_exe().expect("own path"))
            .stdin(Stdio::null());
        timed(cmd, &netns).0
    };
    let cfg = fleet.ssh_config().to_string_lossy().into_owned();
    let port = FLOOR_PORT.to_string();
    let (out, _) = shipjar(&["provision", "bench"]);
    assert!(out.ok, "provision failed");
    assert!(
        floor(&["setup".into(), cfg.clone(), port.clone()]).ok,
        "floor setup failed"
    );

    // A first deploy of each, not counted: the measured ones replace a running service.
    let variant = |label: &str| variant_jar(jar, work, &format!("{n}-{label}"));
    let first = variant("warm");
    let jar_arg = |p: &Path| p.to_string_lossy().into_owned();
    let (s, _) = shipjar(&[
        "--json",
        "deploy",
        "bench",
        "--artifact",
        &jar_arg(&first),
        "--version",
        "warm",
    ]);
    assert!(s.ok, "first shipjar deploy failed");
    let f = floor(&[
        "deploy".into(),
        cfg.clone(),
        port.clone(),
        "warm".into(),
        jar_arg(&first),
    ]);
    assert!(f.ok, "first floor deploy failed");

    let mut deploys: Vec<(Sample, Sample)> = Vec::new();
    for r in 0..runs {
        let version = format!("r{r}");
        let artifact = variant(&version);
        let run_floor = || {
            floor(&[
                "deploy".into(),
                cfg.clone(),
                port.clone(),
                version.clone(),
                jar_arg(&artifact),
            ])
        };
        let run_ours = || {
            let (mut s, json) = shipjar(&[
                "--json",
                "deploy",
                "bench",
                "--artifact",
                &jar_arg(&artifact),
                "--version",
                &version,
            ]);
            s.ok &= json["ok"] == true;
            breakdown(&mut s, &json);
            s
        };
        // Alternate who goes first, so neither always meets the other's leftovers.
        let pair = if r % 2 == 0 {
            let f = run_floor();
            (f, run_ours())
        } else {
            let o = run_ours();
            (run_floor(), o)
        };
        print_run(n, "deploy", r, &pair.0, &pair.1);
        deploys.push(pair);
    }

    // Rollbacks: each goes back to the last good release before `current`,
    // already on every host: r(runs-2), then r(runs-3) (or the warm-up one).
    let mut versions: Vec<String> = vec!["warm".into()];
    versions.extend((0..runs).map(|r| format!("r{r}")));
    let mut rollbacks = Vec::new();
    for r in 0..runs.min(2) {
        let (mut ours, json) = shipjar(&["--json", "rollback", "bench"]);
        ours.ok &= json["ok"] == true;
        breakdown(&mut ours, &json);
        let back = versions[versions.len() - 2 - r].clone();
        let f = floor(&["rollback".into(), cfg.clone(), port.clone(), back]);
        print_run(n, "rollback", r, &f, &ours);
        rollbacks.push((f, ours));
    }
    let mut rows = Vec::new();
    for (r, (f, o)) in deploys.into_iter().enumerate() {
        rows.push((n, "new artifact", r + 1, f, o));
    }
    for (r, (f, o)) in rollbacks.into_iter().enumerate() {
        rows.push((n, "rollback", r + 1, f, o));
    }
    rows
}

/// One line per run, with shipjar's phases and its slowest host's steps.
fn print_run(n: usize, what: &str, r: usize, floor: &Sample, ours: &Sample) {
    let phases: Vec<String> = ours
        .phases_ms
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let slowest = ours
        .hosts_ms
        .iter()
        .max_by_key(|h| h.get("total").copied().unwrap_or(0))
        .map(|h| {
            h.iter()
                .filter(|(k, _)| *k != "total")
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let healthy: Vec<u64> = ours
        .hosts_ms
        .iter()
        .filter_map(|h| h.get("healthy").copied())
        .collect();
    let (lo, hi) = (
        healthy.iter().min().copied().unwrap_or(0),
        healthy.iter().max().copied().unwrap_or(0),
    );
    println!(
        "{n:>3} hosts {what} #{r}: floor {:.2} s ({:.2} CPU-s, machine {:.1}){} | shipjar {:.2} s ({:.2} CPU-s, machine {:.1}){} | phases ms: {} | start to healthy {lo}–{hi} ms | slowest host ms: {slowest}",
        floor.wall_s,
        floor.operator_cpu_s,
        floor.machine_cpu_s,
        if floor.ok { "" } else { " FAILED" },
        ours.wall_s,
        ours.operator_cpu_s,
        ours.machine_cpu_s,
        if ours.ok { "" } else { " FAILED" },
        phases.join(", ")
    );
}

/// shipjar's phases and per-host steps from its `--json` result.
fn breakdown(sample: &mut Sample, json: &serde_json::Value) {
    if let Some(phases) = json["phases_ms"].as_object() {
        for (k, v) in phases {
            sample.phases_ms.insert(k.clone(), v.as_u64().unwrap_or(0));
        }
    }
    for host in json["hosts"].as_array().into_iter().flatten() {
        let mut steps = BTreeMap::new();
        for (k, v) in host["timings_ms"].as_object().into_iter().flatten() {
            steps.insert(k.clone(), v.as_u64().unwrap_or(0));
        }
        let activation = &host["activation"];
        for (key, field) in [
            ("stop", "stopped_after_ms"),
            ("healthy", "healthy_after_ms"),
        ] {
            if let Some(ms) = activation[field].as_u64() {
                steps.insert(key.into(), ms);
            }
        }
        let total = steps
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "stop" | "healthy"))
            .map(|(_, v)| v)
            .sum();
        steps.insert("total".into(), total);
        sample.hosts_ms.push(steps);
    }
}

/// Runs `cmd` to the end: its wall time, its own and its descendants' CPU,
/// and the whole machine's CPU meanwhile, split by kind.
fn timed(mut cmd: Command, netns: &[u64]) -> (Sample, String) {
    let sampler = fleet_cpu::Sampler::start(netns.to_vec());
    let children = children_cpu_s();
    let started = Instant::now();
    let out = cmd.output().expect("run the command");
    let wall_s = started.elapsed().as_secs_f64();
    let (split, machine_cpu_s) = sampler.finish();
    let sample = Sample {
        wall_s,
        operator_cpu_s: children_cpu_s() - children,
        machine_cpu_s,
        split,
        ok: out.status.success(),
        ..Sample::default()
    };
    (sample, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// CPU seconds of this process's waited-for descendants (their descendants
/// included, as each waited for its own).
fn children_cpu_s() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(usage.user_time()) + secs(usage.system_time())
}

/// The Clojure example's uberjar, built with Maven if it is not there yet.
fn clojure_jar() -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clojure-jetty");
    let jar = example.join("target/inventory-1.0.0-standalone.jar");
    if !jar.exists() {
        let status = Command::new("sh")
            .arg(example.join("build.sh"))
            .status()
            .expect("run examples/clojure-jetty/build.sh");
        assert!(status.success(), "building the Clojure example failed");
    }
    jar
}

/// A copy of `jar` with one more entry, so each deploy ships a new artifact.
fn variant_jar(jar: &Path, work: &Path, label: &str) -> PathBuf {
    let dir = work.join(format!("jar-{label}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = dir.join("inventory.jar");
    std::fs::copy(jar, &out).expect("copy jar");
    std::fs::write(dir.join("bench-stamp.txt"), label).expect("write stamp");
    let status = Command::new("jar")
        .arg("uf")
        .arg(&out)
        .arg("-C")
        .arg(&dir)
        .arg("bench-stamp.txt")
        .status()
        .expect("run jar");
    assert!(status.success(), "jar uf failed");
    out
}

/// The example's project with a `bench` stage on the fleet's hosts.
fn write_project(dir: &Path, hosts: &[String], ssh_config: &Path) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clojure-jetty");
    std::fs::create_dir_all(dir.join("deploy")).expect("mkdir");
    for entry in std::fs::read_dir(example.join("deploy")).expect("read deploy/") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join("deploy").join(entry.file_name())).expect("copy");
    }
    std::fs::copy(
        example.join("deploy/logback-production.xml"),
        dir.join("deploy/logback-bench.xml"),
    )
    .expect("copy logback");
    // 30 JVMs starting at once on a small machine take a minute or more.
    let mut config = std::fs::read_to_string(example.join("shipjar.toml"))
        .expect("example config")
        .replace("start_timeout = \"60s\"", "start_timeout = \"300s\"");
    // FLEET_CDS=0: no class-data archives (they are on by default).
    if cds_off() {
        config = config.replace(
            "jar = \"inventory.jar\"",
            "jar = \"inventory.jar\"\ncds = false",
        );
        assert!(config.contains("cds = false"));
    }
    assert!(config.contains(&format!("PORT = \"{SHIPJAR_PORT}\"")));
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    let config = format!(
        "{config}\n[stages.bench]\nhosts = [{}]\nssh_config = \"{}\"\nvars = {{ db_url = \"jdbc:postgresql://db/inventory\", db_user = \"inventory\" }}\nsecrets = {{ db_password = {{ env = \"INVENTORY_DB_PASSWORD\" }} }}\n",
        hosts.join(", "),
        ssh_config.display()
    );
    std::fs::write(dir.join("shipjar.toml"), config).expect("write config");
}
