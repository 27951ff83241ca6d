//! Deploy to fleets of 1, 10 and 30 test hosts and print wall time per phase
//! and round trips per host. Run with `bench/fleet-deploy.sh` (root: the hosts
//! are network namespaces). A benchmark prints; it asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/fleet.rs"]
mod fleet;

use std::process::{Command, Stdio};
use std::time::Instant;

fn main() {
    // `cargo test --all-targets` runs this binary too; only `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    fleet::require_root();
    let sizes: Vec<usize> = std::env::var("FLEET_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 30]);
    println!(
        "{:>5}  {:<9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>12}",
        "hosts",
        "deploy",
        "lock_ms",
        "prep_ms",
        "switch_ms",
        "finish_ms",
        "total_ms",
        "rt/host",
        "uploaded_MB"
    );
    for n in sizes {
        let fleet = fleet::Fleet::new(n);
        let dir = tempfile::tempdir().expect("tempdir");
        common::write_fleet_project(
            dir.path(),
            "bench",
            &fleet.hosts(),
            fleet.ssh_config(),
            "",
            |c| c,
        );
        let run = |args: &[&str]| {
            Command::new(common::shipjar_bin())
                .arg("-C")
                .arg(dir.path())
                .args(args)
                .env("HELLO_DB_PASSWORD", "bench")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .expect("run shipjar")
        };
        let out = run(&["provision", "bench"]);
        assert!(out.status.success(), "provision failed");
        let jar = common::hello_jar().to_string_lossy().into_owned();
        for (label, version) in [("first", "1"), ("again", "2")] {
            let started = Instant::now();
            let out = run(&[
                "--json",
                "deploy",
                "bench",
                "--artifact",
                &jar,
                "--version",
                version,
            ]);
            let total = started.elapsed().as_millis();
            let last = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("null")
                .to_string();
            let result: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
            let phase = |p: &str| result["phases_ms"][p].as_u64().unwrap_or(0);
            let hosts = result["hosts"].as_array().cloned().unwrap_or_default();
            let rt = hosts
                .iter()
                .filter_map(|h| h["round_trips"].as_u64())
                .max()
                .unwrap_or(0);
            let bytes: u64 = hosts
                .iter()
                .filter_map(|h| h["uploaded_bytes"].as_u64())
                .sum();
            println!(
                "{n:>5}  {label:<9} {:>8} {:>8} {:>8} {:>8} {total:>8} {rt:>9} {:>12.2}{}",
                phase("lock"),
                phase("prepare"),
                phase("switch"),
                phase("finish"),
                bytes as f64 / 1e6,
                if result["ok"] == true {
                    ""
                } else {
                    "  (FAILED)"
                }
            );
        }
    }
}
