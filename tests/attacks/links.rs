//! The service's log dir (issue items 2 and 3): the service user puts a
//! symlink to root's file, a FIFO, a directory, a socket, a hard link or a
//! huge sparse file where root reads and writes the service's log.

use std::time::Duration;

use crate::{DECOY, HOST, ROOT_LIMIT, SERVICE_USER, Suite, say, text};

const LOG: &str = "/var/log/hello/console.log";
/// A restart takes at most its start timeout (15 s) and stop timeout (5 s).
const FIFO_LIMIT: Duration = Duration::from_secs(30);

/// Plants `script` (run by `sh -c` as the service user) in the log dir.
fn plant(s: &mut Suite, what: &str, script: &str) -> bool {
    let out = s.as_user(SERVICE_USER, &["sh", "-c", script]);
    if !out.status.success() {
        say(&format!(
            "attacks: the service user cannot plant {what}: {}",
            text(&out).trim()
        ));
        return false;
    }
    true
}

/// Ends a background attacker (its process group: we started it).
fn stop_attacker(child: std::process::Child) -> String {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    crate::finish_attacker(child, Duration::from_secs(5))
}

/// Removes what was planted in the log dir (a FIFO first gets a reader and
/// a writer, so whoever blocks on it goes on) and lets a new log be made.
fn unplant(s: &mut Suite) {
    let script = format!(
        "for f in /var/log/hello/*; do \
           if [ -p \"$f\" ]; then timeout 2 sh -c \"exec 3<>'$f'; sleep 0.3\"; fi; \
           [ -f \"$f\" ] && [ ! -L \"$f\" ] && [ \"$(stat -c %h \"$f\")\" = 1 ] && [ \"$(stat -c %s \"$f\")\" -lt 100000000 ] || rm -rf --one-file-system \"$f\"; \
         done; rm -f {LOG}.1; true"
    );
    let _ = s.fleet.sh(HOST, &script);
}

/// `console.log` (and, for `logs`, `console.log.1`) as a symlink to root's
/// 0600 file: `shipjar logs`, `service restart` and a failed deploy's log
/// tail must neither print it nor write into it.
pub fn console_symlink(s: &mut Suite) {
    let link = format!("ln -sfn {DECOY} {LOG}");
    if plant(s, "a symlink", &link) {
        s.counts.attacks += 1;
        let _ = s.op(&["logs", "one", "-n", "50"], Duration::from_secs(30));
        s.counts.attacks += 1;
        let _ = s.op(
            &["--json", "logs", "one", "-n", "50"],
            Duration::from_secs(30),
        );
    }
    // `logs` reaches into the rotated file when the current one is short.
    let rotated = format!(": > {LOG}.new && mv -f {LOG}.new {LOG}; ln -sfn {DECOY} {LOG}.1");
    unplant(s);
    if plant(s, "a symlink as console.log.1", &rotated) {
        s.counts.attacks += 1;
        let _ = s.op(&["logs", "one", "-n", "50"], Duration::from_secs(30));
    }
    // A deploy whose start fails prints the end of the log. The service
    // listens on the wrong port (its health check times out); once it said
    // so, it replaces its log by a symlink to root's file.
    unplant(s);
    s.counts.attacks += 1;
    let attacker = s.spawn_attacker(SERVICE_USER, &["link-when", DECOY, LOG, "18099", "60"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = s.deploy("one", &["--env", "PORT=18099"]);
    if out.status.success() {
        s.fail(format!(
            "a deploy whose service cannot start succeeded: {}",
            text(&out)
        ));
    }
    let said = stop_attacker(attacker);
    if !said.contains("linked") {
        s.fail("the log was never replaced by a symlink: the attack proves nothing".into());
    }
    unplant(s);
    // `service restart` with the log a symlink: refused or not, never followed.
    if plant(s, "a symlink", &link) {
        s.counts.attacks += 1;
        let _ = s.root(&["shipjar", "service", "restart", "hello"], ROOT_LIMIT);
    }
    unplant(s);
    s.check_truth("after the symlinked log");
}

/// `console.log` as a FIFO: `service restart`, the init script's start,
/// `shipjar logs`, a deploy, `service reload`, a rollback and `provision`
/// each return within their deadline.
pub fn console_fifo(s: &mut Suite) {
    let fifo = format!("rm -f {LOG} && mkfifo -m 0660 {LOG}");
    type Step = (&'static str, fn(&mut Suite));
    let steps: [Step; 7] = [
        ("service restart", |s| {
            let _ = s.root(&["shipjar", "service", "restart", "hello"], FIFO_LIMIT);
        }),
        ("the init script's start", |s| {
            let _ = s.root(&["shipjar", "service", "stop", "hello"], FIFO_LIMIT);
            let _ = s.root(&["/etc/init.d/hello", "start"], FIFO_LIMIT);
        }),
        ("shipjar logs", |s| {
            let _ = s.op(&["logs", "one", "-n", "20"], Duration::from_secs(20));
        }),
        ("deploy", |s| {
            let _ = s.deploy("one", &[]);
        }),
        ("service reload", |s| {
            let _ = s.root(&["shipjar", "service", "reload", "hello"], FIFO_LIMIT);
        }),
        ("rollback", |s| {
            let _ = s.op(&["--json", "rollback", "one"], Duration::from_secs(90));
        }),
        ("provision", |s| {
            let _ = s.op(&["provision", "one"], Duration::from_secs(90));
        }),
    ];
    for (name, step) in steps {
        unplant(s);
        if !plant(s, "a FIFO", &fifo) {
            continue;
        }
        say(&format!("attacks: FIFO as console.log, then {name}"));
        s.counts.attacks += 1;
        step(s);
        s.check_truth(&format!("after {name} with a FIFO as console.log"));
    }
    unplant(s);
}

/// Other kinds in place of the log: a directory, a socket, a hard link to
/// root's file (where the kernel allows it), a 1 TiB sparse file; each
/// followed by `service restart` and `shipjar logs`, each within its deadline.
pub fn log_dir_kinds(s: &mut Suite) {
    let kinds: [(&str, String); 4] = [
        ("a directory", format!("rm -f {LOG} && mkdir {LOG}")),
        (
            "a socket",
            format!(
                "rm -f {LOG} && python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"{LOG}\")'"
            ),
        ),
        (
            "a hard link to root's file",
            format!("rm -f {LOG} && ln {DECOY} {LOG}"),
        ),
        ("a 1 TiB sparse file", format!("truncate -s 1T {LOG}")),
    ];
    for (what, script) in kinds {
        unplant(s);
        if !plant(s, what, &script) {
            continue;
        }
        say(&format!("attacks: {what} as console.log"));
        s.counts.attacks += 2;
        let _ = s.root(&["shipjar", "service", "restart", "hello"], ROOT_LIMIT);
        let _ = s.op(&["logs", "one", "-n", "20"], Duration::from_secs(30));
        s.check_truth(&format!("after {what} as console.log"));
    }
    unplant(s);
}

/// `proxy.log` as a symlink to root's file before the proxy starts (a
/// deploy that moves the service behind the proxy, then `service restart`):
/// root's file must not be appended to (the suite's snapshot compares it).
pub fn proxy_log_symlink(s: &mut Suite) {
    let proxy_log = "/var/log/hello/proxy.log";
    let link = format!("ln -sfn {DECOY} {proxy_log}");
    if plant(s, "a symlink as proxy.log", &link) {
        s.counts.attacks += 1;
        let out = s.deploy("prx", &[]);
        say(&format!(
            "attacks: the deploy behind the proxy exits {:?}",
            out.status.code()
        ));
    }
    unplant(s);
    let _ = s.as_user(SERVICE_USER, &["rm", "-f", proxy_log]);
    if plant(s, "a symlink as proxy.log", &link) {
        s.counts.attacks += 1;
        let _ = s.root(&["shipjar", "service", "restart", "hello"], ROOT_LIMIT);
    }
    unplant(s);
    // Back to the plain service the other attacks expect.
    let out = s.deploy("one", &[]);
    if !out.status.success() {
        s.fail(format!("moving back from the proxy failed: {}", text(&out)));
    }
}

/// Rotation (at 64 KiB, compressed) into names the service user planted:
/// the rotated and compressed files as symlinks to root's file, one as a
/// FIFO; the service user's JVM prints thread dumps (SIGQUIT) past the
/// limit, so the supervisor rotates, then `service reload`. Root's file must not change
/// (the suite's snapshot), nothing may hang, `logs` must not print it.
pub fn rotation(s: &mut Suite) {
    unplant(s);
    let script = format!(
        "cd /var/log/hello && ln -sfn {DECOY} console.log.1.gz && ln -sfn {DECOY} console.log.2.gz \
         && ln -sfn {DECOY} console.log.2 && mkfifo -m 0660 console.log.3"
    );
    if !plant(s, "links and a FIFO among the rotated logs", &script) {
        return;
    }
    // The JVM prints a thread dump per SIGQUIT, through the supervisor into
    // its log: a few of them pass the limit.
    let quit = "for p in $(pgrep -u hello java); do for i in 1 2 3 4 5 6; do \
                kill -QUIT $p; sleep 0.2; done; done";
    let _ = s.as_user(SERVICE_USER, &["sh", "-c", quit]);
    s.counts.attacks += 1;
    let _ = s.root(&["shipjar", "service", "reload", "hello"], FIFO_LIMIT);
    // Compression runs in the background.
    std::thread::sleep(Duration::from_secs(2));
    let rotated = s.fleet.exec(
        HOST,
        &[
            "find",
            "/var/log/hello",
            "-name",
            "console.log.*",
            "-type",
            "f",
        ],
    );
    if rotated.stdout.is_empty() {
        s.fail("the log was never rotated: the attack proves nothing".into());
    }
    s.counts.attacks += 1;
    let _ = s.op(&["logs", "one", "-n", "20"], Duration::from_secs(20));
    s.check_truth("after rotation into planted links");
    let _ = s.fleet.sh(HOST, "rm -f /var/log/hello/console.log.[0-9]*");
    unplant(s);
}

/// Tries of the cheap race: `shipjar logs` while the service user flips
/// `console.log` and a symlink to root's file (`SHIPJAR_ATTACK_LOG_TRIES`).
const LOG_RACE_TRIES: u32 = 40;

/// `shipjar logs`, run again and again while an attacker loop exchanges
/// `console.log` with a symlink to root's 0600 file (one `renameat2` each,
/// flat out): no try may print the file.
pub fn logs_race(s: &mut Suite) {
    unplant(s);
    let tries: u32 = std::env::var("SHIPJAR_ATTACK_LOG_TRIES")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(LOG_RACE_TRIES);
    let flipper = s.spawn_attacker(SERVICE_USER, &["flip", DECOY, LOG, "600"]);
    std::thread::sleep(Duration::from_millis(300));
    let leaks_before = s.counts.leaks;
    for _ in 0..tries {
        s.counts.attacks += 1;
        let _ = s.op(&["logs", "one", "-n", "5"], Duration::from_secs(20));
    }
    let said = stop_attacker(flipper);
    say(&format!(
        "attacks: logs race: {tries} tries, {} printed root's file; attacker: {}",
        s.counts.leaks - leaks_before,
        said.trim()
    ));
    unplant(s);
}
