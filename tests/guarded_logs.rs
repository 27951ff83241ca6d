//! `shipjar logs` reads the service log through root's guarded file layer:
//! a FIFO in place of `console.log` ends it at once with a message (it used
//! to block forever in `open`), and a symlink to a file the service user
//! must not read is refused, never printed. The `local` stage, a deployed
//! hello, the real binary.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{Project, text};

/// Runs `shipjar ARGS` in `p`; a run past `limit` is killed and fails the
/// test (a hang is what these tests look for).
fn run_within(p: &Project, args: &[&str], limit: Duration) -> Output {
    let mut child = p
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shipjar");
    let until = Instant::now() + limit;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() >= until {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "shipjar {args:?} hung for {limit:?} (killed):\n{}",
                text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

fn deployed() -> (Project, PathBuf) {
    let p = Project::new();
    let out = p.deploy("1.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let console = p.root().join("var/log/hello/console.log");
    assert!(console.is_file(), "{}", console.display());
    (p, console)
}

#[test]
fn logs_ends_at_once_with_a_message_when_console_log_is_a_fifo() {
    let (p, console) = deployed();
    // The supervisor keeps writing to its own file; the name is now a FIFO.
    fs::rename(&console, console.with_extension("log.old")).expect("rename");
    nix::unistd::mkfifo(&console, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    for args in [&["logs", "local"][..], &["logs", "local", "-f"]] {
        let out = run_within(&p, args, Duration::from_secs(20));
        assert_ne!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("is a FIFO, not a regular file"),
            "{args:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn logs_never_prints_a_file_that_console_log_links_to() {
    let (p, console) = deployed();
    let decoy = p.path().join("root-only");
    let secret = format!("ROOT-ONLY-DECOY-{}", std::process::id());
    fs::write(&decoy, format!("{secret}\n")).expect("write decoy");
    fs::set_permissions(&decoy, fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::remove_file(&console).expect("rm");
    std::os::unix::fs::symlink(&decoy, &console).expect("symlink");
    let out = run_within(&p, &["logs", "local"], Duration::from_secs(20));
    assert!(!text(&out).contains(&secret), "{}", text(&out));
    assert!(text(&out).contains("is a symlink"), "{}", text(&out));
    // A hard link to it neither.
    fs::remove_file(&console).expect("rm");
    fs::hard_link(&decoy, &console).expect("hard link");
    let out = run_within(&p, &["logs", "local"], Duration::from_secs(20));
    assert!(!text(&out).contains(&secret), "{}", text(&out));
    assert!(text(&out).contains("a hard link"), "{}", text(&out));
}

#[test]
fn logs_follow_still_streams_new_lines() {
    let (p, _) = deployed();
    let mut follower = p
        .command(&["logs", "local", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn logs -f");
    let mut stdout = follower.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("healthy") {
                break;
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(500));
    let root = p.root();
    let out = run_within(
        &p,
        &[
            "service",
            "restart",
            "hello",
            "--root",
            root.to_str().expect("utf-8"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let until = Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let seen = reader.join().expect("reader");
    assert!(seen.contains("healthy"), "logs -f showed: {seen}");
}
