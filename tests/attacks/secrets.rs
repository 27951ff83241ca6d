//! Secrets (issue item 6): a multi-line secret from `file =` that a
//! compromised release prints in every form (raw, each line, JSON-escaped,
//! URL-encoded, base64, shell-quoted) from its hook and into its log; and a
//! secret that is also the host's name, so it occurs in normal output. No
//! form may appear in anything shipjar prints (text and `--json`) or in the
//! records root keeps on the host.

use std::process::Stdio;
use std::time::Duration;

use crate::{HOST, SERVICE_USER, Suite, say, text};

/// Stage `sec` deployed: its `after_switch` hook prints the secret in every
/// form; then the service writes the same into its log, and every
/// read-only command runs.
pub fn multi_line(s: &mut Suite) {
    s.counts.attacks += 1;
    let out = s.deploy("sec", &[]);
    if !out.status.success() {
        s.fail(format!("deploy to stage sec failed: {}", text(&out)));
    }
    // The hook must really have printed its forms, or nothing was tested.
    let got = s.fleet.sh(
        HOST,
        "cd /var/lib/hello/current && SHIPJAR_STAGE=sec python3 config/attacker.py leak config/database.properties - | wc -l",
    );
    let lines: u32 = String::from_utf8_lossy(&got.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    if lines < 6 {
        s.fail(format!(
            "the hook's leak printed {lines} lines: the attack proves nothing ({})",
            text(&got)
        ));
    }
    s.counts.attacks += 1;
    let out = s.as_user(
        SERVICE_USER,
        &[
            "python3",
            "/var/lib/hello/current/config/attacker.py",
            "leak",
            "/var/lib/hello/current/config/database.properties",
            "/var/log/hello/console.log",
        ],
    );
    if !out.status.success() {
        s.fail(format!(
            "the service user could not write its log: {}",
            text(&out)
        ));
    }
    for args in [
        &["logs", "sec", "-n", "40"][..],
        &["--json", "logs", "sec", "-n", "40"],
        &["status", "sec"],
        &["--json", "status", "sec"],
        &["releases", "sec"],
        &["--json", "releases", "sec"],
    ] {
        s.counts.attacks += 1;
        let _ = s.op(args, Duration::from_secs(30));
    }
    scan_host_records(s);
}

/// The host name is a secret: a killed deploy leaves its lock; `unlock`
/// (text and `--json`), `logs` (the host prefix) and a deploy name the host.
pub fn in_normal_output(s: &mut Suite) {
    s.counts.attacks += 1;
    let jar = crate::common::hello_jar().to_string_lossy().into_owned();
    let v = s.next_version();
    let mut child = s
        .command(&["deploy", "sec", "--artifact", &jar, "--version", &v])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn deploy");
    // Killed once it holds the lock: the lock stays, naming its holder and host.
    std::thread::sleep(Duration::from_secs(3));
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    s.scan_output(&out, "a deploy of stage sec, killed");
    std::thread::sleep(Duration::from_secs(2));
    for args in [
        &["unlock", "sec"][..],
        &["--json", "unlock", "sec"],
        &["logs", "sec", "-n", "5"],
        &["--json", "logs", "sec", "-n", "5"],
    ] {
        s.counts.attacks += 1;
        let _ = s.op(args, Duration::from_secs(30));
    }
    s.counts.attacks += 1;
    let out = s.deploy("sec", &[]);
    if !out.status.success() {
        s.fail(format!("deploy to stage sec failed: {}", text(&out)));
    }
    scan_host_records(s);
}

/// Root's records on the host (revisions.log, the run dir, /tmp, the log
/// dir except the service's own log, which it wrote the secret into).
fn scan_host_records(s: &mut Suite) {
    let out = s.fleet.sh(
        HOST,
        "cat /var/lib/hello/revisions.log; \
             find /run /tmp /var/log/hello -xdev -type f -size -5M ! -name 'console.log*' \
               -exec cat {} + 2>/dev/null; true",
    );
    let found = s.leaked_in(&out.stdout);
    if !found.is_empty() {
        s.counts.leaks += found.len() as u32;
        s.fail(format!(
            "root's records on the host hold {}",
            found.join(", ")
        ));
    } else {
        say(&format!(
            "attacks: host records scanned ({} bytes): no secret",
            out.stdout.len()
        ));
    }
}
