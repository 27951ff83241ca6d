//! For the fleet bench: the machine's CPU during one timed command, split
//! by process kind, and the floor's poller (one process for every host).
//!
//! CPU split, the method: a thread reads `/proc/*/stat` every
//! [`SAMPLE_EVERY`] while the command runs and adds each process's
//! utime + stime growth since its last sample (or since the command began,
//! for processes already alive then) to its kind. A process that exits
//! between two samples loses at most its last interval (20 ms here; the
//! ssh, sshd and JVM processes of a deploy live for seconds, and what is
//! lost shows in `rest`). The kind is decided when a process is first seen
//! (again when its name changes, at exec): it is ours when in one of
//! the fleet's network namespaces (a test host's sshd, agent, supervisor,
//! JVM) or a descendant of the bench (the operator's side: shipjar, ssh,
//! the floor's script and poller; the bench is a child subreaper so
//! daemonised ssh masters stay its descendants), then by `comm`: `java`
//! (a `java -Xshare:dump` apart as `dump`), `shipjar`, ssh/sshd/scp/sftp,
//! the poller (this bench's own executable), anything else. `rest` is the
//! whole machine's busy time from `/proc/stat` minus all of that: other
//! work on the machine and the processes' last, unsampled intervals.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the sampler reads /proc.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// CPU seconds per kind: jvm, dump, shipjar, ssh, poller, other, rest.
pub type Split = HashMap<&'static str, f64>;

/// A sampler running while one command runs.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Split>>,
    machine_start: f64,
}

impl Sampler {
    /// Starts sampling; `netns` are the fleet's network namespace inodes.
    pub fn start(netns: Vec<u64>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let machine_start = machine_cpu_s();
        let thread = std::thread::spawn(move || sample(&netns, &flag));
        Sampler {
            stop,
            thread: Some(thread),
            machine_start,
        }
    }

    /// Stops sampling: the split, `rest` included, and the machine total.
    pub fn finish(mut self) -> (Split, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut split = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let machine = machine_cpu_s() - self.machine_start;
        let counted: f64 = split.values().sum();
        split.insert("rest", (machine - counted).max(0.0));
        (split, machine)
    }
}

/// The inode of a named network namespace (`/run/netns/NAME`).
pub fn netns_inode(name: &str) -> Option<u64> {
    std::fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| m.ino())
}

struct Seen {
    kind: Option<&'static str>,
    /// The name it was classified by: a fork keeps its parent's until it execs.
    comm: String,
    ticks: u64,
}

fn sample(netns: &[u64], stop: &AtomicBool) -> Split {
    let tick = 1.0 / clock_ticks();
    let me = std::process::id() as i32;
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut seen: HashMap<(i32, u64), Seen> = HashMap::new();
    let mut split = Split::new();
    let mut first = true;
    loop {
        let last = stop.load(Ordering::Relaxed);
        for (pid, start, ticks, comm, ppid) in processes() {
            let entry = seen.entry((pid, start)).or_insert_with(|| Seen {
                kind: classify(pid, ppid, &comm, me, &exe, netns),
                comm: comm.clone(),
                // Alive before the command: only its growth counts.
                ticks: if first { ticks } else { 0 },
            });
            if entry.comm != comm {
                entry.kind = classify(pid, ppid, &comm, me, &exe, netns);
                entry.comm = comm;
            }
            if let Some(kind) = entry.kind {
                *split.entry(kind).or_default() += ticks.saturating_sub(entry.ticks) as f64 * tick;
            }
            entry.ticks = ticks;
        }
        first = false;
        if last {
            return split;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

/// (pid, start time, utime + stime, comm, ppid) of every process.
fn processes() -> Vec<(i32, u64, u64, String, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let comm = stat[open + 1..close].to_string();
            let f: Vec<&str> = stat[close + 2..].split(' ').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            let ppid = num(1)? as i32;
            Some((pid, num(19)?, num(11)? + num(12)?, comm, ppid))
        })
        .collect()
}

fn classify(
    pid: i32,
    ppid: i32,
    comm: &str,
    me: i32,
    exe: &str,
    netns: &[u64],
) -> Option<&'static str> {
    if pid == me {
        return None; // the bench itself (this sampler)
    }
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino());
    let ours = ns.is_some_and(|i| netns.contains(&i)) || descends_from(ppid, me);
    if !ours {
        return None;
    }
    Some(match comm {
        "java" if is_dump(pid) => "dump",
        "java" => "jvm",
        "shipjar" => "shipjar",
        "ssh" | "sshd" | "scp" | "sftp-server" => "ssh",
        c if !exe.is_empty() && exe.starts_with(c) => "poller",
        _ => "other",
    })
}

fn is_dump(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|b| b.split(|c| *c == 0).any(|a| a == b"-Xshare:dump"))
}

fn descends_from(mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        if pid <= 1 {
            return false;
        }
        let Some(parent) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 2..];
                rest.split(' ').nth(1)?.parse().ok()
            })
        else {
            return false;
        };
        pid = parent;
    }
    false
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds the whole machine has spent busy since boot (/proc/stat).
pub fn machine_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse::<u64>().ok())
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, t)| t)
        .sum();
    busy as f64 / clock_ticks()
}

/// The floor's poller: `--floor-poll PORT VERSION ADDRESS...`. Every 0.1 s
/// asks each host not yet done for /health and /version (HTTP/1.0, one
/// connection each); a host is done when /health answers 200 and /version's
/// body names the version. Exit 0 when all are, 1 after 300 s.
pub fn floor_poll(args: &[String]) -> i32 {
    let (Some(port), Some(version)) = (args.first(), args.get(1)) else {
        eprintln!("usage: --floor-poll PORT VERSION ADDRESS...");
        return 2;
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("bad port {port}");
        return 2;
    };
    let want = format!("\"{version}\"");
    let mut pending: Vec<SocketAddr> = args[2..]
        .iter()
        .filter_map(|a| format!("{a}:{port}").parse().ok())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let round = Duration::from_millis(100);
    while !pending.is_empty() {
        if Instant::now() > deadline {
            eprintln!(
                "floor poller: {} host(s) not on {version} after 300 s",
                pending.len()
            );
            return 1;
        }
        let began = Instant::now();
        pending.retain(|addr| {
            let healthy = get(addr, "/health").is_some_and(|(code, _)| code == 200);
            !(healthy && get(addr, "/version").is_some_and(|(c, b)| c == 200 && b.contains(&want)))
        });
        if let Some(rest) = round.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    0
}

/// One HTTP/1.0 GET: status code and body.
fn get(addr: &SocketAddr, path: &str) -> Option<(u16, String)> {
    let timeout = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = Vec::new();
    s.take(64 * 1024).read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((code, body))
}
