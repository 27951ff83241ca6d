//! The class-data dump (issue item 1): the directory the JVM records its
//! classes and the dump writes its archive into is swapped for a symlink to
//! root's directory the instant it appears, and the dump itself is replaced
//! by a huge sparse file with the archive's magic.

use std::time::Duration;

use crate::{DECOY_DIR, SERVICE_USER, Suite, finish_attacker, say, text};

/// Size of the forged dump: far past any archive a service writes (hello's
/// is 2 MiB, the Clojure example's 20 MiB), sparse so it costs no disk.
const FORGED_SIZE: u64 = 4 << 30;

/// Stops the service, removes every kept archive (so the next start dumps
/// one), starts it again; true when the start succeeded.
fn start_dumping(s: &mut Suite) -> bool {
    let _ = s.root(
        &["shipjar", "service", "stop", "hello"],
        Duration::from_secs(30),
    );
    let _ = s.fleet.exec(
        crate::HOST,
        &[
            "sh",
            "-c",
            "rm -f /var/lib/hello/releases/*/cds.jsa /var/lib/hello/releases/*/cds.json",
        ],
    );
    let out = s.root(
        &["shipjar", "service", "start", "hello"],
        Duration::from_secs(40),
    );
    out.status.success()
}

/// race.c built with the machine's `cc` where the host can run it (the
/// test's target dir, world-readable), or `None` without a C compiler (the
/// python loop, slower than root, is used then).
fn race_binary() -> Option<String> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("attacks");
    std::fs::create_dir_all(&dir).ok()?;
    let src = dir.join("race.c");
    let bin = dir.join(format!("race-{}", std::process::id()));
    std::fs::write(&src, include_str!("race.c")).ok()?;
    let built = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .is_ok_and(|st| st.success());
    if !built {
        say("attacks: no C compiler: the cds race runs the slower python loop");
        return None;
    }
    Some(bin.to_string_lossy().into_owned())
}

/// The parent of the dump directory of the running JVM, if it dumps.
fn dump_parent(s: &Suite) -> Option<String> {
    let out = s.attacker(SERVICE_USER, &["dump-dirs"]);
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .to_string();
    std::path::Path::new(&dir)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
}

/// An inotify loop of the service user swaps each new dump directory for a
/// symlink to root's directory; a start that dumps is one try (a JVM start
/// and a dumping stop each, so fewer tries than a cheap race: 20 by
/// default, `SHIPJAR_ATTACK_CDS_TRIES`). Root's directory must never be
/// chowned, chmodded or removed (checked after each try and by the suite).
pub fn dump_dir_race(s: &mut Suite) {
    let tries: u32 = std::env::var("SHIPJAR_ATTACK_CDS_TRIES")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    if !start_dumping(s) {
        s.fail("the service does not start with cds = true".into());
        return;
    }
    let Some(parent) = dump_parent(s) else {
        s.fail("the JVM runs without -XX:DumpLoadedClassList: nothing to attack".into());
        return;
    };
    let writable = s
        .as_user(SERVICE_USER, &["test", "-w", &parent])
        .status
        .success();
    say(&format!(
        "attacks: the JVM records its classes and the dump writes into {parent}/…, which the service user {} write",
        if writable { "can" } else { "cannot" }
    ));
    if !writable {
        // The directory it would swap is not the service user's to rename.
        s.counts.attacks += 1;
        return;
    }
    let before = decoy_dir_state(s);
    let seconds = (tries * 12).to_string();
    let attacker = match race_binary() {
        Some(bin) => s.spawn_as(SERVICE_USER, &[&bin, &parent, DECOY_DIR, &seconds]),
        None => s.spawn_attacker(SERVICE_USER, &["cds-race", &parent, DECOY_DIR, &seconds]),
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut won_at = None;
    for i in 0..tries {
        s.counts.attacks += 1;
        start_dumping(s);
        if decoy_dir_state(s) != before {
            won_at = Some(i + 1);
            break;
        }
    }
    // The stop discards the dump directory: the last chance for root to follow the link.
    let _ = s.root(
        &["shipjar", "service", "stop", "hello"],
        Duration::from_secs(30),
    );
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(attacker.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let said = finish_attacker(attacker, Duration::from_secs(5));
    let after = decoy_dir_state(s);
    say(&format!(
        "attacks: cds race: {} tries, attacker: {}",
        won_at.unwrap_or(tries),
        said.trim()
    ));
    if after != before {
        s.fail(format!(
            "root's directory {DECOY_DIR} was changed through the dump directory \
             (try {won_at:?}): {before:?} → {after:?}"
        ));
    }
}

/// Owner, mode and content of root's decoy directory.
fn decoy_dir_state(s: &Suite) -> String {
    let out = s.fleet.exec(
        crate::HOST,
        &[
            "sh",
            "-c",
            &format!("stat -c '%U:%G %a' {DECOY_DIR} 2>&1; ls -A {DECOY_DIR} 2>&1"),
        ],
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The service user replaces the JVM's finished dump with a 4 GiB sparse
/// file that starts with the archive's magic; root must not keep it (nor
/// spend the stop copying it).
pub fn sparse_dump(s: &mut Suite) {
    s.counts.attacks += 1;
    if !start_dumping(s) {
        s.fail("the service does not start with cds = true".into());
        return;
    }
    let attacker = s.spawn_attacker(
        SERVICE_USER,
        &["sparse-dump", &FORGED_SIZE.to_string(), "60"],
    );
    // The dump runs beside the service once it is healthy: the attacker
    // ends when it swapped the finished dump (or after 60 s).
    let said = finish_attacker(attacker, Duration::from_secs(70));
    let stop = s.root(
        &["shipjar", "service", "stop", "hello"],
        Duration::from_secs(40),
    );
    say(&format!("attacks: sparse dump: attacker: {}", said.trim()));
    // The supervisor may go on copying after the stop reported: wait it out.
    if !crate::wait_until(Duration::from_secs(60), || s.supervisor_pids().is_empty()) {
        s.counts.hangs += 1;
        s.fail("the supervisor still runs 60 s after `service stop` returned".into());
    }
    // Neither the archive nor a temporary copy of it may be the forged file
    // (a copy cut short by the stop's deadline is still gigabytes of root's).
    let kept = s.fleet.exec(
        crate::HOST,
        &[
            "sh",
            "-c",
            "find /var/lib/hello/releases -xdev -type f -size +512M -printf '%s %p\\n'; \
             for f in /var/lib/hello/releases/*/cds.jsa; do \
               head -c 64 \"$f\" 2>/dev/null | grep -q forged && echo \"forged $f\"; done; true",
        ],
    );
    let kept = String::from_utf8_lossy(&kept.stdout).trim().to_string();
    if !kept.is_empty() {
        s.counts.root_changed += kept.lines().count() as u32;
        s.fail(format!(
            "root copied the service's forged sparse dump of {FORGED_SIZE} bytes: {kept}; \
             the stop: {}",
            text(&stop)
        ));
    }
    // Where the service user could plant the file, the swap must have landed,
    // or this attack proved nothing.
    if said.contains("ready 1") && !said.contains("swapped 1") {
        let log = s.fleet.exec(
            crate::HOST,
            &["tail", "-n", "12", "/var/log/hello/console.log"],
        );
        s.fail(format!(
            "the forged dump was never swapped in: {}; the log ends: {}",
            said.trim(),
            String::from_utf8_lossy(&log.stdout)
        ));
    }
    // Never leave a 4 GiB file in the release.
    let _ = s.fleet.exec(
        crate::HOST,
        &[
            "sh",
            "-c",
            "rm -f /var/lib/hello/releases/*/cds.jsa /var/lib/hello/releases/*/cds.json \
             /var/lib/hello/releases/*/.cds.jsa.tmp.*",
        ],
    );
}
