//! How the operator uses ssh on a fleet: one ssh process per host for a
//! deploy and for `status` (no control master left behind), masters of
//! `provision` closed at its end, and `status` with a host cut off.
//! Root only: as another user these tests are ignored (skipped).

mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::text;
use common::{host_field, last_json};
use lifecycle::FleetStage;

/// A project whose `fleet` stage is the test fleet.
fn fleet_project(hosts: usize) -> FleetStage {
    FleetStage::new(hosts, "", |c| {
        c.replace("timeout = \"15s\"", "timeout = \"5s\"")
    })
}

/// Runs shipjar on the project: its pid (for what it left behind) and output.
fn run_watched(p: &FleetStage, args: &[&str]) -> (u32, Output) {
    let child = p
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shipjar");
    (
        child.id(),
        child.wait_with_output().expect("shipjar output"),
    )
}

/// A process seen in /proc: pid, parent, command line (NULs as spaces).
struct Seen {
    pid: i32,
    ppid: i32,
    comm: String,
    cmdline: String,
}

fn processes() -> Vec<Seen> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        all.push(Seen {
            pid,
            ppid,
            comm: stat[open + 1..close].to_string(),
            cmdline,
        });
    }
    all
}

/// ssh control masters of the shipjar run `pid` (their title names its
/// control directory, `/tmp/sj-PID-N/…[mux]`).
fn masters_of(pid: u32) -> Vec<i32> {
    let dir = format!("/sj-{pid}-");
    processes()
        .into_iter()
        .filter(|p| p.comm == "ssh" && p.cmdline.contains(&dir) && p.cmdline.contains("[mux]"))
        .map(|p| p.pid)
        .collect()
}

/// Control directories of the shipjar run `pid` still in the temp dir.
fn control_dirs_of(pid: u32) -> Vec<String> {
    let prefix = format!("sj-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_deploy_holds_one_ssh_process_per_host_and_provision_closes_its_masters() {
    let p = fleet_project(3);

    // provision connects several times per host through a master of its
    // own; all of them are gone with the run, and so is their directory.
    let (provision_pid, out) = run_watched(&p, &["provision", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "provision: {}", text(&out));
    assert_eq!(masters_of(provision_pid), Vec::<i32>::new());
    assert_eq!(control_dirs_of(provision_pid), Vec::<String>::new());

    // A deploy whose services take 3 s to get healthy: while the hosts
    // switch, each one's session is a single ssh, shipjar's own child.
    let args = p.deploy_args("1.0.0", &["--env", "STARTUP_DELAY_MS=3000"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = p
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn deploy");
    let deploy_pid = child.id();
    let mut most = 0;
    let mut masters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && common::host::alive(deploy_pid as i32) {
        let all = processes();
        let sessions = all
            .iter()
            .filter(|s| s.comm == "ssh" && s.ppid == deploy_pid as i32)
            .count();
        most = most.max(sessions);
        masters.extend(masters_of(deploy_pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("deploy output");
    assert_eq!(out.status.code(), Some(0), "deploy: {}", text(&out));
    assert_eq!(most, 3, "ssh sessions at once");
    assert_eq!(masters, Vec::<i32>::new(), "control masters of the deploy");
    assert_eq!(control_dirs_of(deploy_pid), Vec::<String>::new());

    // status: one answer per host, nothing left behind either.
    let (status_pid, out) = run_watched(&p, &["--json", "status", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "status: {}", text(&out));
    let result = last_json(&out);
    for host in p.fleet.hosts() {
        assert_eq!(
            host_field(&result, &host)["status"]["reported_version"],
            "1.0.0",
            "{result}"
        );
    }
    assert_eq!(masters_of(status_pid), Vec::<i32>::new());
    assert_eq!(control_dirs_of(status_pid), Vec::<String>::new());
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn status_with_a_host_cut_off_answers_for_the_others_and_flags_it() {
    let p = fleet_project(3);
    p.provision();
    let args = p.deploy_args("1.0.0", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = p.run(&args);
    assert_eq!(out.status.code(), Some(0), "deploy: {}", text(&out));

    p.fleet.link_down("app2");
    let out = p.run(&["--json", "status", "fleet"]);
    p.fleet.link_up("app2");
    let result = app2_cut_off(&out);
    for host in ["app1", "app3"] {
        assert_eq!(
            host_field(&result, host)["flags"],
            serde_json::json!([]),
            "{result}"
        );
    }

    // Back on the network, the same command answers for every host.
    let out = p.run(&["--json", "status", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "status: {}", text(&out));
}

/// The result of a `--json status` run while app2 was cut off, which must
/// exit 1, flag app2 unreachable and report 1.0.0 for app1 and app3.
#[track_caller]
fn app2_cut_off(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(1), "status: {}", text(out));
    let result = last_json(out);
    let flags = host_field(&result, "app2")["flags"].to_string();
    assert!(flags.contains("unreachable"), "{result}");
    for host in ["app1", "app3"] {
        assert_eq!(
            host_field(&result, host)["status"]["reported_version"],
            "1.0.0",
            "{result}"
        );
    }
    result
}

/// Asks the masters of the user's persistent multiplexing to exit, even
/// when the test fails.
struct UserMasters {
    config: std::path::PathBuf,
    hosts: Vec<String>,
}

impl Drop for UserMasters {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = std::process::Command::new("ssh")
                .arg("-F")
                .arg(&self.config)
                .args(["-O", "exit", host])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Masters whose control socket is in `dir`.
fn masters_in(dir: &std::path::Path) -> Vec<i32> {
    let dir = dir.to_string_lossy().into_owned();
    let mut pids: Vec<i32> = processes()
        .into_iter()
        .filter(|p| p.comm == "ssh" && p.cmdline.contains(&dir) && p.cmdline.contains("[mux]"))
        .map(|p| p.pid)
        .collect();
    pids.sort();
    pids
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn the_users_persistent_multiplexing_is_used_and_a_cut_link_is_reported() {
    let p = fleet_project(3);
    p.provision();

    // The user's own ssh config multiplexes and keeps masters for a minute.
    let sockets = tempfile::Builder::new()
        .prefix("sjm")
        .tempdir_in("/tmp")
        .expect("socket dir");
    let config = p.dir.path().join("ssh_config_mux");
    let fleet_config = std::fs::read_to_string(p.fleet.ssh_config()).expect("fleet ssh_config");
    std::fs::write(
        &config,
        format!(
            "{fleet_config}\nHost *\n    ControlMaster auto\n    ControlPath {}/%C\n    ControlPersist 60\n",
            sockets.path().display()
        ),
    )
    .expect("write ssh config");
    let _masters = UserMasters {
        config: config.clone(),
        hosts: p.fleet.hosts(),
    };
    let with_config = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--ssh-config", config.to_str().expect("utf-8 path")]);
        p.run(&all)
    };

    let args = p.deploy_args("1.0.0", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = with_config(&args);
    assert_eq!(out.status.code(), Some(0), "deploy: {}", text(&out));
    // The deploy's sessions started the user's masters, which stay.
    let masters = masters_in(sockets.path());
    assert_eq!(masters.len(), 3, "masters after the deploy: {masters:?}");

    // status goes through them: no new master, every host answers.
    let out = with_config(&["--json", "status", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "status: {}", text(&out));
    assert_eq!(masters_in(sockets.path()), masters);

    // A cut link: the master of app2 hears nothing back until its
    // keep-alive gives up; status then names app2 and answers for the others.
    p.fleet.link_down("app2");
    let out = with_config(&["--json", "status", "fleet"]);
    p.fleet.link_up("app2");
    app2_cut_off(&out);

    // Back on the network, the next status reaches app2 again.
    let out = with_config(&["--json", "status", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "status: {}", text(&out));
}
