//! The operator SIGKILLed at seeded random instants of deploys and
//! rollbacks; each time every host must stay healthy on a complete release,
//! and the next deploy must succeed.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fleet::Proc;
use crate::{Suite, check, text};

/// Kill instants per run.
const INSTANTS: usize = 20;

/// A running shipjar whose output lines are timestamped as they arrive.
struct Watched {
    child: Child,
    started: Instant,
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Watched {
    fn start(s: &Suite, args: &[String]) -> Watched {
        let mut child = s.spawn(args);
        let started = Instant::now();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let l = Arc::clone(&lines);
        let e = Arc::clone(&stderr);
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    l.lock().expect("lines").push((started.elapsed(), line));
                }
            }),
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = BufReader::new(err).read_to_end(&mut buf);
                e.lock().expect("stderr").extend(buf);
            }),
        ];
        Watched {
            child,
            started,
            lines,
            stderr,
            readers,
        }
    }

    /// Lines so far whose step is `step`.
    fn count_step(&self, step: &str, step_of: &dyn Fn(&str) -> String) -> usize {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|(_, l)| step_of(l) == step)
            .count()
    }

    fn last_line(&self) -> String {
        self.lines
            .lock()
            .expect("lines")
            .last()
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| "(no output yet)".into())
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Waits for the end; (exit code, stdout lines, stderr).
    fn wait(mut self, s: &mut Suite) -> (Option<i32>, Vec<(Duration, String)>, String) {
        let status = self.child.wait().expect("wait");
        for r in self.readers {
            let _ = r.join();
        }
        let lines = std::mem::take(&mut *self.lines.lock().expect("lines"));
        let stderr = std::mem::take(&mut *self.stderr.lock().expect("stderr"));
        for (_, l) in &lines {
            s.transcript.extend_from_slice(l.as_bytes());
            s.transcript.push(b'\n');
        }
        s.transcript.extend_from_slice(&stderr);
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        if stderr.contains("panicked") {
            s.fail(format!("shipjar panicked: {stderr}"));
        }
        (status.code(), lines, stderr)
    }
}

/// Every live descendant of `pid`.
pub fn descendants(pid: i32) -> Vec<Proc> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        parents.push((p, ppid));
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found[1..].iter().filter_map(|p| Proc::of(*p)).collect()
}

pub fn operator_kills(s: &mut Suite) {
    // Calibration: one whole deploy with an upload, its output timed.
    let jar = s.jar_variant("calibrate", 512 << 10);
    let v = s.next_version();
    let w = Watched::start(s, &Suite::deploy_args("fleet", &v, Some(&jar)));
    let (code, lines, stderr) = w.wait(s);
    assert_eq!(code, Some(0), "calibration deploy: {stderr}");
    let total = lines.last().map_or(Duration::from_secs(5), |(t, _)| *t);
    eprintln!(
        "faults: a deploy to {} hosts (batch 1, with upload) takes {} ms, {} output lines",
        crate::HOSTS,
        total.as_millis(),
        lines.len()
    );

    // The phases a deploy goes through, in order: the `step` of its progress
    // lines (lock, upload, prepare, switch, health, version, …, finish).
    let step_of = |l: &str| -> String {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| {
                v["step"]
                    .as_str()
                    .or_else(|| v["event"].as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "other".into())
    };
    let mut phases: Vec<String> = Vec::new();
    for (_, l) in &lines {
        let step = step_of(l);
        if !phases.contains(&step) {
            phases.push(step);
        }
    }
    // After the last host's activation only `finish` remains (prune, unlock).
    phases.retain(|p| p != "result");
    phases.push("finish".into());
    eprintln!("faults: a deploy's phases: {}", phases.join(", "));
    let mut hit: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
    let mut orphans: Vec<(Proc, String)> = Vec::new();
    let mut control_dirs: Vec<PathBuf> = Vec::new();
    let mut last_kill = Instant::now();
    // Until INSTANTS kills landed (a deploy may end before its instant).
    let mut injected = 0;
    for i in 0..INSTANTS + 6 {
        if injected == INSTANTS {
            break;
        }
        // Rollbacks (no upload, fewer lines) are killed at stratified instants.
        // Half the instants are stratified over the calibrated duration; the
        // other half each follow a progress line of the next phase in turn
        // (by 0–40 ms), so that every phase is hit.
        let by_line = i % 2 == 1;
        let phase = phases[(i / 2) % phases.len()].clone();
        let rollback = i % 4 == 2;
        let upload = !rollback && (i % 3 == 0 || phase == "upload" || phase == "prepare");
        let v = s.next_version();
        let args = if rollback {
            ["--json", "rollback", "fleet"]
                .iter()
                .map(|x| x.to_string())
                .collect()
        } else {
            // Killed mid-upload: 2 MiB over links slowed to 16 Mbit/s (~1 s).
            let size = if by_line && phase == "upload" {
                2 << 20
            } else {
                512 << 10
            };
            let jar = upload.then(|| s.jar_variant(&format!("kill{i}"), size));
            Suite::deploy_args("fleet", &v, jar.as_ref())
        };
        let at = total.mul_f64(((i % INSTANTS) as f64 + s.rng.unit()) / INSTANTS as f64);
        // The k-th line of that phase, as many as the calibration showed;
        // `finish` is what follows the last host's activation, at once.
        // `finish` is what follows the last host's activation, `upload` what
        // follows the last lock (for up to 800 ms), `prepare` what follows
        // the first upload.
        let (step, last_of_step) = match phase.as_str() {
            "finish" => ("activate".to_string(), true),
            "upload" => ("lock".to_string(), true),
            "prepare" => ("upload".to_string(), false),
            _ => (phase.clone(), false),
        };
        let seen = lines
            .iter()
            .filter(|(_, l)| step_of(l) == step)
            .count()
            .max(1);
        let k = if last_of_step {
            seen
        } else {
            1 + s.rng.below(seen as u64) as usize
        };
        let jitter = match phase.as_str() {
            "finish" | "prepare" => Duration::ZERO,
            "upload" => Duration::from_millis(s.rng.below(800)),
            _ => Duration::from_millis(s.rng.below(40)),
        };
        let slowed = by_line && phase == "upload";
        if slowed {
            for h in s.fleet.hosts() {
                s.fleet.slow_link(&h, 16_000);
            }
        }
        let mut w = Watched::start(s, &args);
        if by_line {
            let deadline = Instant::now() + Duration::from_secs(60);
            while w.count_step(&step, &step_of) < k && !w.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(jitter);
        } else {
            while w.started.elapsed() < at && !w.exited() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let when = w.started.elapsed();
        let last = w.last_line();
        let kids = descendants(w.child.id() as i32);
        let pid = w.child.id();
        let finished = w.exited();
        let _ = w.child.kill();
        last_kill = Instant::now();
        let (code, _, _) = w.wait(s);
        if slowed {
            for h in s.fleet.hosts() {
                s.fleet.fast_link(&h);
            }
        }
        if finished {
            eprintln!(
                "faults: kill {i}: {} had already ended ({code:?}) at {} ms",
                if rollback { "rollback" } else { "deploy" },
                when.as_millis()
            );
        } else {
            injected += 1;
            s.counts.faults += 1;
            let kind = if rollback { "rollback" } else { "deploy" };
            *hit.entry(format!("{kind} after {}", step_of(&last)))
                .or_default() += 1;
            eprintln!(
                "faults: kill {i}: SIGKILL {} at {} ms, after: {}",
                if rollback { "rollback" } else { "deploy" },
                when.as_millis(),
                last.chars().take(120).collect::<String>()
            );
        }
        orphans.extend(kids.into_iter().map(|k| (k, format!("kill {i}"))));
        control_dirs.extend(
            crate::fleet::names_in("/tmp")
                .into_iter()
                .filter(|n| n.starts_with(&format!("sj-{pid}-")))
                .map(|n| PathBuf::from("/tmp").join(n)),
        );
        check::settle(s);
        check::invariant(
            s,
            &format!("kill {i} at {} ms", when.as_millis()),
            None,
            true,
        );
        // The next deploy: after `shipjar unlock`, or (once) queued
        // until the dead deploy's lease expires.
        let expire = i == INSTANTS / 2;
        if !expire {
            let out = s.run(&["unlock", "fleet"]);
            assert!(out.status.success(), "unlock: {}", text(&out));
        }
        let v = s.next_version();
        let out = if expire {
            s.deploy("all", &v, &["--wait", "30s"])
        } else {
            s.deploy("all", &v, &[])
        };
        if out.status.code() != Some(0) {
            s.fail(format!("kill {i}: the next deploy failed: {}", text(&out)));
            continue;
        }
        for host in s.fleet.hosts() {
            let served = check::real(s, &host).served;
            if served.as_deref() != Some(v.as_str()) {
                s.counts.hosts_broken += 1;
                s.fail(format!(
                    "kill {i}: after the next deploy {host} serves {served:?}, not {v}"
                ));
            }
        }
    }
    eprintln!("faults: {injected} kills, by the phase last reported: {hit:?}");
    if injected < INSTANTS {
        s.fail(format!(
            "only {injected} of {INSTANTS} kills landed before their deploy ended"
        ));
    }
    // What the killed operators left on this machine: ssh processes must end
    // on their own (ControlPersist is 10 s); the control directories cannot
    // be removed by a killed process.
    let linger = Duration::from_secs(20).saturating_sub(last_kill.elapsed());
    std::thread::sleep(linger);
    let alive: Vec<String> = orphans
        .iter()
        .filter(|(p, _)| p.alive())
        .map(|(p, when)| {
            let cmd = std::fs::read_to_string(format!("/proc/{}/cmdline", p.pid))
                .unwrap_or_default()
                .replace('\0', " ");
            format!("{when}: pid {} {cmd}", p.pid)
        })
        .collect();
    for (p, _) in &orphans {
        p.kill();
    }
    let dirs: Vec<&PathBuf> = control_dirs.iter().filter(|d| d.exists()).collect();
    s.counts.leaks += (alive.len() + dirs.len()) as u32;
    if !dirs.is_empty() {
        eprintln!(
            "faults: leak: {} ssh control directories left by killed operators, e.g. {}",
            dirs.len(),
            dirs[0].display()
        );
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    if !alive.is_empty() {
        s.fail(format!(
            "processes of killed operators still alive 20 s later: {alive:?}"
        ));
    }
}
