//! Tests of the test-fleet harness itself (tests/support/fleet.rs): that its
//! hosts are reachable only the strict way, are isolated from the machine and
//! from each other, can be cut off, and leave nothing behind.
//!
//! They need root; as another user they are counted as ignored, not passed.
//! `./run-tests` as root runs them with `--include-ignored`.

mod common;
#[path = "support/fleet.rs"]
mod fleet;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use fleet::{Fleet, require_root};

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a command over SSH that must succeed; returns its trimmed stdout.
fn ssh_ok(f: &Fleet, host: &str, command: &str) -> String {
    common::ssh_succeeded(&f.ssh(host, command), host, command, || {
        format!("sshd log:\n{}", f.sshd_log(host))
    })
}

fn exec_ok(f: &Fleet, host: &str, argv: &[&str]) -> String {
    let out = f.exec(host, argv);
    assert!(out.status.success(), "exec {host} {argv:?}: {}", text(&out));
    stdout(&out)
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn each_host_answers_with_its_own_name() {
    let f = Fleet::new(3);
    assert_eq!(f.hosts(), ["app1", "app2", "app3"]);
    for host in f.hosts() {
        assert_eq!(ssh_ok(&f, &host, "hostname"), host);
        assert_eq!(ssh_ok(&f, &host, "cat /etc/hostname"), host);
        assert_eq!(exec_ok(&f, &host, &["hostname"]), host);
        // Logged in as root, with the address the fleet says.
        assert_eq!(ssh_ok(&f, &host, "id -un"), "root");
        let addrs = ssh_ok(&f, &host, "ip -4 -o addr show dev eth0");
        assert!(addrs.contains(&format!("{}/24", f.ip(&host))), "{addrs}");
    }
    // What deploying a JVM service to a host takes works there: a terminal,
    // the machine's JDK, installing to /usr/local/bin.
    let out = Command::new("ssh")
        .arg("-F")
        .arg(f.ssh_config())
        .args(["-tt", "app1", "tty"])
        .stdin(Stdio::null())
        .output()
        .expect("run ssh");
    assert!(stdout(&out).starts_with("/dev/pts/"), "{}", text(&out));
    if Path::new("/usr/bin/java").exists() {
        let version = ssh_ok(&f, "app1", "java -version 2>&1");
        assert!(version.contains("version"), "{version}");
    }
    ssh_ok(
        &f,
        "app1",
        "install -m 0755 /bin/true /usr/local/bin/sjf-true",
    );
    assert_eq!(ssh_ok(&f, "app1", "sjf-true && echo ok"), "ok");
    assert!(!Path::new("/usr/local/bin/sjf-true").exists());

    // Reached the strict way only.
    let config = fs::read_to_string(f.ssh_config()).expect("read ssh_config");
    assert!(config.contains("StrictHostKeyChecking yes"), "{config}");
    assert!(config.contains("BatchMode yes"), "{config}");
    assert!(!config.contains("/dev/null"), "{config}");
    assert!(!config.contains("StrictHostKeyChecking no"), "{config}");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_wrong_or_missing_host_key_is_refused() {
    let f = Fleet::new(2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let known = tmp.path().join("known_hosts");
    let config = tmp.path().join("ssh_config");
    // The copy of the config differs only in which known_hosts it reads.
    let original = fs::read_to_string(f.ssh_config()).expect("read ssh_config");
    let fleet_known = f.known_hosts().to_str().expect("UTF-8 path");
    assert!(original.contains(fleet_known));
    fs::write(
        &config,
        original.replace(fleet_known, known.to_str().expect("UTF-8 path")),
    )
    .expect("write config copy");
    let ssh = |host: &str| {
        Command::new("ssh")
            .arg("-F")
            .arg(&config)
            .args([host, "true"])
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    };

    // app1's entry replaced by another, valid, key.
    let other = tmp.path().join("other");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success());
    let other_key = fs::read_to_string(other.with_extension("pub")).expect("read key");
    let other_key: Vec<&str> = other_key.split_whitespace().take(2).collect();
    let lines: Vec<String> = fs::read_to_string(f.known_hosts())
        .expect("read known_hosts")
        .lines()
        .map(|l| {
            if l.starts_with("app1,") {
                format!("app1,{} {}", f.ip("app1"), other_key.join(" "))
            } else {
                l.to_string()
            }
        })
        .collect();
    fs::write(&known, lines.join("\n") + "\n").expect("write known_hosts copy");
    let out = ssh("app1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            && err.contains("Host key verification failed"),
        "{}",
        text(&out)
    );
    // The copy is otherwise sound: app2's untouched entry still works.
    assert!(ssh("app2").status.success(), "{}", text(&ssh("app2")));

    // No entry at all for app1: refused too, never added.
    let without: Vec<&String> = lines.iter().filter(|l| !l.starts_with("app1,")).collect();
    let without: Vec<&str> = without.iter().map(|l| l.as_str()).collect();
    fs::write(&known, without.join("\n") + "\n").expect("write known_hosts copy");
    let out = ssh("app1");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"),
        "{}",
        text(&out)
    );
    let after = fs::read_to_string(&known).expect("read known_hosts copy");
    assert!(!after.contains("app1"), "{after}");
    // The fleet's own files were not touched.
    assert!(f.ssh("app1", "true").status.success());
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn hosts_are_isolated_from_the_machine_and_each_other() {
    let f = Fleet::new(2);
    let marker = format!("/var/lib/sjf-isolation-{}", std::process::id());
    let user = "sjfisolation";
    assert!(!Path::new(&marker).exists());
    ssh_ok(
        &f,
        "app1",
        &format!("mkdir {marker} && echo app1 > {marker}/x && useradd --system {user}"),
    );
    assert_eq!(ssh_ok(&f, "app1", &format!("cat {marker}/x")), "app1");
    assert!(ssh_ok(&f, "app1", &format!("getent passwd {user}")).starts_with(user));
    // Not on the machine...
    assert!(!Path::new(&marker).exists());
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    assert!(
        !passwd.contains(user),
        "useradd in app1 reached the machine"
    );
    // ...nor in app2.
    let out = f.ssh("app2", &format!("test -e {marker} || echo absent"));
    assert_eq!(stdout(&out), "absent", "{}", text(&out));
    assert!(
        !f.ssh("app2", &format!("getent passwd {user}"))
            .status
            .success()
    );

    // A fresh /root and /usr/local, and private /tmp: nothing of the machine's.
    assert_eq!(
        ssh_ok(&f, "app1", "ls -A /usr/local/bin /tmp"),
        "/tmp:\n\n/usr/local/bin:"
    );
    assert_eq!(ssh_ok(&f, "app1", "ls -A /root"), ".bashrc\n.profile\n.ssh");
    // Only its own host key.
    assert_eq!(
        ssh_ok(&f, "app1", "ls /etc/ssh | grep ssh_host_"),
        "ssh_host_ed25519_key\nssh_host_ed25519_key.pub"
    );

    // Own PID namespace: app1 sees its sshd as PID 1 and nothing of app2's
    // or of the machine's.
    exec_ok(&f, "app2", &["sh", "-c", "sleep 600 >/dev/null 2>&1 &"]);
    let app2_ps = exec_ok(&f, "app2", &["ps", "-eo", "comm="]);
    assert!(app2_ps.lines().any(|c| c == "sleep"), "{app2_ps}");
    let ps = ssh_ok(&f, "app1", "ps -eo pid=,comm=");
    let procs: Vec<(u32, String)> = ps
        .lines()
        .map(|l| {
            let (pid, comm) = l.trim().split_once(' ').expect("pid and comm");
            (pid.parse().expect("pid"), comm.trim().to_string())
        })
        .collect();
    assert_eq!(procs[0], (1, "sshd".to_string()), "{ps}");
    for (_, comm) in &procs {
        assert!(
            ["sshd", "bash", "sh", "ps"].contains(&comm.as_str()),
            "app1 sees a process that is not its own: {comm}\n{ps}"
        );
    }
    // PID 1 reaps orphans, as init does.
    ssh_ok(&f, "app1", "sh -c 'sleep 0.2 &' >/dev/null 2>&1");
    thread::sleep(Duration::from_secs(1));
    let states = exec_ok(&f, "app1", &["ps", "-eo", "stat=,comm="]);
    assert!(!states.lines().any(|l| l.starts_with('Z')), "{states}");

    // The hosts share one LAN (a chosen property, as between real servers):
    // app1 resolves app2 and reaches its sshd. Nothing beyond the fleet's
    // subnet is routed.
    assert_eq!(
        ssh_ok(&f, "app1", "getent hosts app2 | cut -d' ' -f1"),
        f.ip("app2")
    );
    let banner = ssh_ok(
        &f,
        "app1",
        "exec 3<>/dev/tcp/app2/22 && head -c 7 <&3 && exec 3<&-",
    );
    assert_eq!(banner, "SSH-2.0");
    let routes = ssh_ok(&f, "app1", "ip route");
    assert!(!routes.contains("default"), "{routes}");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn link_down_cuts_a_host_off_and_link_up_restores_it() {
    let f = Fleet::new(2);
    let quick = |host: &str| {
        Command::new("ssh")
            .arg("-F")
            .arg(f.ssh_config())
            .args(["-o", "ConnectTimeout=2", host, "hostname"])
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    };
    assert!(quick("app2").status.success());

    f.link_down("app2");
    let started = Instant::now();
    let out = quick("app2");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    // Silence, as from a host whose cable is cut (or, had the machine
    // forgotten its MAC address meanwhile, no answer to ARP).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("timed out") || err.contains("No route to host"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The others are unaffected, and app2 itself keeps running.
    assert_eq!(stdout(&quick("app1")), "app1");
    assert_eq!(exec_ok(&f, "app2", &["hostname"]), "app2");

    f.link_up("app2");
    let out = quick("app2");
    assert_eq!(stdout(&out), "app2", "{}", text(&out));
}

/// Processes on the machine (pid, start time) whose network namespace is one
/// of `inodes`.
fn processes_in(inodes: &BTreeSet<u64>) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net"))
            && inodes.contains(&meta.ino())
        {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            found.push((pid, stat));
        }
    }
    found
}

/// Whether the process still runs: same /proc/PID/stat start time, not a zombie.
fn still_running(pid: i32, stat_then: &str) -> bool {
    let start = |stat: &str| -> Option<(String, String)> {
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        Some((f.first()?.to_string(), f.get(19)?.to_string()))
    };
    let now = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match (start(&now), start(stat_then)) {
        (Some((state, t_now)), Some((_, t_then))) => state != "Z" && t_now == t_then,
        _ => false,
    }
}

fn netns_inodes(prefix: &str) -> BTreeSet<u64> {
    fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
                })
                .filter_map(|e| fs::metadata(e.path()).ok().map(|m| m.ino()))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything of a fleet that must be gone after its teardown. Processes are
/// identified by pid and start time and namespaces by name, not by inode:
/// the kernel hands a freed namespace's inode number to the next namespace
/// created, which may well be another fleet's.
struct Traces {
    prefix: String,
    dir: String,
    processes: Vec<(i32, String)>,
}

impl Traces {
    fn of(f: &Fleet) -> Traces {
        let processes = processes_in(&netns_inodes(f.prefix()));
        for pid in f.pids() {
            assert!(
                processes.iter().any(|(p, _)| *p == pid),
                "started process {pid} not found in the fleet's namespaces"
            );
        }
        Traces {
            prefix: f.prefix().to_string(),
            dir: f.dir().to_str().expect("UTF-8 path").to_string(),
            processes,
        }
    }

    fn assert_gone(&self) {
        let netns: Vec<String> = fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
                    .collect()
            })
            .unwrap_or_default();
        assert!(netns.is_empty(), "namespaces left: {netns:?}");
        assert!(
            !Path::new("/sys/class/net").join(&self.prefix).exists(),
            "link {} left",
            self.prefix
        );
        assert!(!Path::new(&self.dir).exists(), "{} left", self.dir);
        self.assert_processes_gone();
        // No mount of the fleet's, and no copy of its namespaces' bind mounts
        // (which would keep a namespace alive), in any mount namespace.
        let mine = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        assert!(!mine.contains(&self.dir), "{mine}");
        let netns_mount = format!(" /run/netns/{}-", self.prefix);
        for e in fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(info) = fs::read_to_string(e.path().join("mountinfo")) else {
                continue;
            };
            for line in info.lines() {
                assert!(
                    !line.contains(&self.dir) && !line.contains(&netns_mount),
                    "{:?} still has {line}",
                    e.path()
                );
            }
        }
    }

    fn assert_processes_gone(&self) {
        let alive: Vec<i32> = self
            .processes
            .iter()
            .filter(|(pid, stat)| still_running(*pid, stat))
            .map(|(pid, _)| *pid)
            .collect();
        assert!(alive.is_empty(), "processes left: {alive:?}");
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn teardown_leaves_nothing_behind() {
    let f = Fleet::new(3);
    // Something for teardown to end besides sshd: a daemon-like process, and
    // a session still open.
    exec_ok(
        &f,
        "app1",
        &["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 &"],
    );
    let mut session = Command::new("ssh")
        .arg("-F")
        .arg(f.ssh_config())
        .args(["app2", "sleep 600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start ssh");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f.exec("app2", &["pgrep", "-x", "sleep"]).status.success() {
        assert!(Instant::now() < deadline, "the SSH session never started");
        thread::sleep(Duration::from_millis(50));
    }
    let traces = Traces::of(&f);
    assert_eq!(netns_inodes(f.prefix()).len(), 4, "3 hosts and the switch");
    // Per host a launcher and sshd; the sleep; the session's sshd and shell.
    assert!(traces.processes.len() >= 9, "{:?}", traces.processes);
    assert!(
        fs::read_to_string("/proc/self/mountinfo")
            .expect("read mountinfo")
            .lines()
            .all(|l| !l.contains(&traces.dir))
    );

    drop(f);
    traces.assert_gone();
    // The session's server side is gone, so the client ends.
    let status = session.wait().expect("wait for ssh");
    assert!(!status.success());
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn two_fleets_at_once_do_not_collide() {
    require_root();
    let barrier = Arc::new(Barrier::new(2));
    let run = |barrier: Arc<Barrier>| {
        thread::spawn(move || {
            let f = Fleet::new(2);
            // Both fleets exist from here to the second barrier.
            barrier.wait();
            for host in f.hosts() {
                assert_eq!(ssh_ok(&f, &host, "hostname"), host);
            }
            let ips: Vec<String> = f.hosts().iter().map(|h| f.ip(h)).collect();
            let seen = ssh_ok(&f, "app1", "cat /etc/hosts");
            barrier.wait();
            (f.prefix().to_string(), ips, seen)
        })
    };
    let a = run(barrier.clone());
    let b = run(barrier);
    let a = a.join().expect("fleet a");
    let b = b.join().expect("fleet b");
    assert_ne!(a.0, b.0);
    assert!(a.1.iter().all(|ip| !b.1.contains(ip)), "{a:?} {b:?}");
    // Each fleet's hosts know only their own fleet.
    assert!(a.1.iter().all(|ip| !b.2.contains(ip.as_str())));
}

/// Set in the copy of this test binary that a test kills mid-test.
const VICTIM: &str = "SJF_FLEET_VICTIM";

#[test]
#[ignore = "needs root: creates network namespaces"]
fn leftovers_of_a_killed_test_process_are_removed() {
    require_root();
    if std::env::var_os(VICTIM).is_some() {
        // The victim: bring up a fleet, say what it is, wait to be killed.
        let f = Fleet::new(2);
        let inodes = netns_inodes(f.prefix());
        let inodes: Vec<String> = inodes.iter().map(u64::to_string).collect();
        println!(
            "VICTIM {} {} {}",
            f.prefix(),
            f.dir().display(),
            inodes.join(",")
        );
        thread::sleep(Duration::from_secs(300));
        return;
    }
    let mut victim = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "leftovers_of_a_killed_test_process_are_removed",
            "--exact",
            "--include-ignored",
            "--nocapture",
        ])
        .env(VICTIM, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the victim");
    let (tx, rx) = mpsc::channel();
    let out = victim.stdout.take().expect("piped");
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("VICTIM ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(120));
    // SIGKILL: no unwinding, no Drop.
    victim.kill().expect("kill the victim");
    victim.wait().expect("reap the victim");
    let line = line.expect("the victim never reported its fleet");
    let parts: Vec<&str> = line.split(' ').collect();
    let (prefix, dir) = (parts[0].to_string(), parts[1].to_string());
    let inodes: BTreeSet<u64> = parts[2]
        .split(',')
        .map(|i| i.parse().expect("inode"))
        .collect();
    let processes = processes_in(&inodes);
    assert!(
        !processes.is_empty(),
        "the victim's hosts should outlive it"
    );
    assert!(Path::new(&dir).exists());

    // The next fleet on the machine removes them.
    let f = Fleet::new(1);
    let traces = Traces {
        prefix: prefix.clone(),
        dir,
        processes,
    };
    // Fleet numbers go round, so the new fleet has another one, unless all
    // others were taken: then the names are its own now.
    if f.prefix() == prefix {
        traces.assert_processes_gone();
    } else {
        traces.assert_gone();
    }
    assert_eq!(ssh_ok(&f, "app1", "hostname"), "app1");
}

/// Brings up 3, 10 and 30 hosts (the benchmarks use 30), checks every host
/// over SSH and prints how long bring-up and teardown took.
#[test]
#[ignore = "needs root: creates network namespaces"]
fn bring_up_and_teardown_times() {
    require_root();
    for n in [3, 10, 30] {
        let started = Instant::now();
        let f = Fleet::new(n);
        let up = started.elapsed();
        let hosts = f.hosts();
        thread::scope(|s| {
            for chunk in hosts.chunks(n.div_ceil(4)) {
                let f = &f;
                s.spawn(move || {
                    for host in chunk {
                        assert_eq!(ssh_ok(f, host, "hostname"), *host);
                    }
                });
            }
        });
        let traces = Traces::of(&f);
        let started = Instant::now();
        drop(f);
        let down = started.elapsed();
        traces.assert_gone();
        println!(
            "fleet of {n:2}: up in {:5} ms, torn down in {:5} ms",
            up.as_millis(),
            down.as_millis()
        );
        assert!(up < Duration::from_secs(60), "{n} hosts took {up:?}");
    }
}
