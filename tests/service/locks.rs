//! The supervisor's lock: no other user can open — let alone flock — a lock
//! file, so none can hold up a start, stop, restart or status; and a
//! supervisor is proven by the lock it holds, not by which shipjar binary
//! started it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::host::{
    BIN, Helper, Host, Spec, alive, code, run_limited, stdout_starting, text,
};

/// The supervisor pid the state file names.
fn supervisor_pid(host: &Host) -> i32 {
    let text = fs::read_to_string(host.run_dir().join("supervisor.json")).expect("state file");
    let state: serde_json::Value = serde_json::from_str(&text).expect("state json");
    state["supervisor"]["pid"].as_i64().expect("supervisor pid") as i32
}

#[test]
fn a_supervisor_started_by_a_shipjar_binary_elsewhere_is_running_and_stops_gracefully() {
    let host = Host::new("elsewhere");
    host.release("r1", &Spec::hello(crate::common::free_port(), &[]));
    // A copy at another path, as `cargo install` or a changed `agent_path` leave.
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let copy = bin_dir.path().join("shipjar-installed");
    fs::copy(BIN, &copy).expect("copy the binary");
    let mut start = Command::new(&copy);
    start
        .args(["service", "start", "elsewhere", "--root"])
        .arg(host.root());
    let out = run_limited(start);
    host.remember();
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), host.log());
    let sup = supervisor_pid(&host);
    let jvm = host.service_pid().expect("service pid");
    // The supervisor holds its lock; the JVM inherited no descriptor of it.
    let locks = host.run_dir().join("locks");
    let open_locks = |pid: i32| -> Vec<PathBuf> {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .filter(|target| target.starts_with(&locks))
            .collect()
    };
    assert_eq!(
        open_locks(sup),
        [locks.join("supervisor.lock")],
        "the supervisor's descriptors"
    );
    assert_eq!(
        open_locks(jvm),
        Vec::<PathBuf>::new(),
        "the JVM's descriptors"
    );

    // The binary under test did not start it, and still calls it running.
    let status = host.run("status", false);
    assert_eq!(code(&status), 0, "{}", text(&status));
    stdout_starting(&status, &format!("running: pid {jvm}"));

    let stop = host.run("stop", true);
    assert_eq!(code(&stop), 0, "{}", text(&stop));
    let report: serde_json::Value = serde_json::from_slice(&stop.stdout).expect("stop --json");
    // The supervisor did the stop, so it knows how the JVM ended.
    assert_eq!(report["how"], "exited 143 after SIGTERM", "{report}");
    assert_eq!(report["unsupervised_pid"], serde_json::Value::Null);
    assert!(!alive(sup), "the supervisor {sup} still runs");
    assert!(!alive(jvm), "the JVM {jvm} still runs");
    // Nothing took the stop for a crash and started the JVM again.
    std::thread::sleep(Duration::from_millis(500));
    let events = host.events();
    assert!(
        !events.iter().any(|e| e.contains("restarting")),
        "{events:?}"
    );
    let status = host.run("status", false);
    assert_eq!(code(&status), 3, "{}", text(&status));
}

/// A process of `nobody` that opened every path it could and holds (or
/// waits to take) a flock on each, until dropped.
struct NobodyLocks {
    _child: Helper,
    /// Opened: held or waited for.
    opened: Vec<PathBuf>,
    refused: Vec<(PathBuf, String)>,
}

/// Every file and directory under `dir`, `dir` included.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = fs::read_dir(&all[i]) {
            for e in entries.flatten() {
                all.push(e.path());
            }
        }
        i += 1;
    }
    all
}

/// Opens each path and flocks it; a lock held by someone else is waited
/// for in a thread of its own (`flock -x` as an attacker would run it), so
/// it is taken the moment its holder lets go.
const TRY_LOCKS: &str = r#"
import fcntl, os, sys, threading, time
def wait(fd):
    fcntl.flock(fd, fcntl.LOCK_EX)
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        print("refused " + path + " " + e.strerror, flush=True)
        continue
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("held " + path, flush=True)
    except OSError:
        threading.Thread(target=wait, args=(fd,), daemon=True).start()
        print("waiting " + path, flush=True)
print("ready", flush=True)
time.sleep(120)
"#;

fn nobody_locks(paths: &[PathBuf]) -> NobodyLocks {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        // Not a shim in root's home, which nobody cannot read.
        "/usr/bin/python3",
        "-c",
        TRY_LOCKS,
    ])
    .args(paths)
    .current_dir("/")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = Helper(cmd.spawn().expect("setpriv python3"));
    let out = child.0.stdout.take().expect("stdout");
    let (mut opened, mut refused) = (Vec::new(), Vec::new());
    let mut ready = false;
    for line in BufReader::new(out).lines() {
        let line = line.expect("read");
        if line == "ready" {
            ready = true;
            break;
        }
        if let Some(p) = line
            .strip_prefix("held ")
            .or_else(|| line.strip_prefix("waiting "))
        {
            opened.push(PathBuf::from(p));
        } else if let Some(rest) = line.strip_prefix("refused ") {
            let (p, why) = rest.split_once(' ').unwrap_or((rest, ""));
            refused.push((PathBuf::from(p), why.to_string()));
        }
    }
    assert!(ready, "nobody's python3 did not run");
    NobodyLocks {
        _child: child,
        opened,
        refused,
    }
}

/// Runs a service command and checks it finished in `limit` with `want`.
fn within(host: &Host, verb: &str, limit: Duration, want: i32) {
    let began = Instant::now();
    let out = host.run(verb, false);
    let took = began.elapsed();
    assert_eq!(code(&out), want, "{verb}: {}\n{}", text(&out), host.log());
    assert!(took < limit, "{verb} took {took:?}");
}

/// `service status` run by `nobody` (from a copy of the binary it can read).
fn nobody_status(host: &Host) -> std::process::Output {
    let bin = host.root().join("shipjar-for-nobody");
    if !bin.exists() {
        fs::copy(BIN, &bin).expect("copy the binary");
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["service", "status", "flocked", "--root"])
        .arg(host.root())
        .current_dir("/");
    run_limited(cmd)
}

#[test]
#[ignore = "needs root"]
fn nobody_flocking_whatever_it_can_open_holds_up_no_start_stop_restart_or_status() {
    let host = Host::new("flocked");
    // Traversable by all, as `/` is: the attacker can reach the run dir.
    fs::set_permissions(host.root(), fs::Permissions::from_mode(0o755)).expect("chmod");
    host.release("r1", &Spec::hello(crate::common::free_port(), &[]));
    host.started();
    // What a host upgraded from a version with `run/NAME/supervisor.lock`
    // (0644) may still have lying around.
    let legacy = host.run_dir().join("supervisor.lock");
    if !legacy.exists() {
        fs::write(&legacy, "").expect("legacy lock file");
        fs::set_permissions(&legacy, fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    let locks = nobody_locks(&tree(&host.root().join("run")));
    within(&host, "status", Duration::from_secs(5), 0);
    // Any user may ask: the holder comes from /proc/locks, no lock file is opened.
    let status = nobody_status(&host);
    assert_eq!(code(&status), 0, "{}", text(&status));
    within(&host, "restart", Duration::from_secs(30), 0);
    within(&host, "status", Duration::from_secs(5), 0);
    within(&host, "stop", Duration::from_secs(15), 0);
    within(&host, "start", Duration::from_secs(30), 0);
    within(&host, "status", Duration::from_secs(5), 0);
    within(&host, "stop", Duration::from_secs(15), 0);
    within(&host, "status", Duration::from_secs(5), 3);

    let lock_files: Vec<PathBuf> = tree(&host.run_dir().join("locks"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(!lock_files.is_empty(), "no lock files in run/NAME/locks");
    // Lock files the commands above created (the switch lock, at the
    // restart) are tried again now, as nobody.
    let late = nobody_locks(&lock_files);
    assert!(late.opened.is_empty(), "nobody opened {:?}", late.opened);
    for file in &lock_files {
        assert!(
            locks
                .refused
                .iter()
                .chain(&late.refused)
                .any(|(p, why)| p == file && why == "Permission denied"),
            "nobody could open {}: opened {:?}, refused {:?}",
            file.display(),
            locks.opened,
            locks.refused
        );
    }
    assert!(
        locks.opened.contains(&host.run_dir()),
        "nobody should be able to flock the (readable) run dir: {:?}",
        locks.refused
    );
}

/// Holds a flock on `path` as root until killed, as a supervisor of a
/// version that kept its lock there would.
const HOLD_LOCK: &str = r#"
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"#;

#[test]
fn a_holder_of_the_old_supervisor_lock_faked_by_python_is_seen_stopped_and_not_doubled() {
    let host = Host::new("upgraded");
    host.release("r1", &Spec::hello(crate::common::free_port(), &[]));
    fs::create_dir_all(host.run_dir()).expect("run dir");
    let legacy = host.run_dir().join("supervisor.lock");
    let mut old = Command::new("/usr/bin/python3");
    old.args(["-c", HOLD_LOCK])
        .arg(&legacy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut old = Helper(old.spawn().expect("python3"));
    let mut line = String::new();
    BufReader::new(old.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "held");
    let pid = old.0.id() as i32;
    let ticks = crate::common::host::start_ticks(pid).expect("alive");
    // The old supervisor's state file, as it wrote it.
    host.write_state(
        "starting",
        serde_json::json!({"supervisor": {"pid": pid, "start_ticks": ticks}}),
    );

    // Seen as the supervisor: `start` joins its start instead of running a second one.
    let (_, status) = host.status_json();
    assert_eq!(status["supervisor_pid"], pid, "{status}");
    assert_eq!(status["state"], "starting", "{status}");
    // No second supervisor starts beside it, even when asked to directly.
    let mut supervise = Command::new(BIN);
    supervise
        .args(["service", "supervise", "upgraded", "--root"])
        .arg(host.root());
    let out = run_limited(supervise);
    assert_ne!(code(&out), 0, "{}", text(&out));
    host.assert_logged(&format!(
        "supervisor not started: another supervisor is already running for upgraded (pid {pid} ("
    ));
    // `stop` stops it.
    let stop = host.run("stop", false);
    assert_eq!(code(&stop), 0, "{}", text(&stop));
    assert!(!alive(pid), "the old supervisor {pid} still runs");
    // And the service starts with the new lock.
    host.started();
    assert!(host.run_dir().join("locks/supervisor.lock").is_file());
}
