//! `shipjar logs` reads the service log through root's guarded file layer:
//! a FIFO in place of `console.log` ends it at once with a message (it used
//! to block forever in `open`), and a symlink to a file the service user
//! must not read is refused, never printed. The `local` stage, a deployed
//! hello, the real binary.

mod common;
use common::ok;

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
    ok(p.deploy("1.0.0", &[]));
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
    ok(run_within(
        &p,
        &[
            "service",
            "restart",
            "hello",
            "--root",
            root.to_str().expect("utf-8"),
        ],
        Duration::from_secs(60),
    ));
    let until = Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let seen = reader.join().expect("reader");
    assert!(seen.contains("healthy"), "logs -f showed: {seen}");
}

/// Stdout of `shipjar logs local ARGS` (prefixes and all), which must end in time.
fn logs(p: &Project, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["logs", "local"];
    all.extend_from_slice(args);
    let out = run_within(p, &all, Duration::from_secs(20));
    (out.status.code(), text(&out))
}

/// `--since` and `--grep` read every kept file, gzipped ones too, oldest
/// first; a line without a timestamp goes with the line before it; `-n`
/// keeps the last matches; the pattern is matched after masking.
#[test]
fn logs_since_and_grep_search_every_kept_file_oldest_first() {
    use std::io::Write;
    let (p, console) = deployed();
    let dir = console.parent().expect("log dir").to_path_buf();
    let mut gz = flate2::write::GzEncoder::new(
        fs::File::create(dir.join("console.log.2.gz")).expect("create .2.gz"),
        flate2::Compression::default(),
    );
    gz.write_all(b"2020-01-01T10:00:00Z MARK one, in the oldest file\n")
        .expect("write gz");
    gz.finish().expect("finish gz");
    fs::write(
        dir.join("console.log.1"),
        "2020-01-02 10:00:00.000 INFO MARK two\n\tat a.continuation(MARK.java:1)\n",
    )
    .expect("write .1");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&console)
        .expect("open console.log");
    writeln!(
        file,
        "2020-01-03T10:00:00Z MARK three, with password={}",
        p.secret
    )
    .expect("append");
    drop(file);

    let (code, said) = logs(&p, &["--grep", "MARK"]);
    assert_eq!(code, Some(0), "{said}");
    let marks: Vec<&str> = said.lines().filter(|l| l.contains("MARK")).collect();
    assert_eq!(marks.len(), 4, "{said}");
    assert!(
        marks[0].contains("MARK one") && marks[3].contains("MARK three"),
        "{said}"
    );

    let (code, said) = logs(&p, &["--since", "2020-01-02 00:00", "--grep", "MARK"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("MARK one"), "{said}");
    assert!(
        said.contains("MARK two") && said.contains("continuation"),
        "{said}"
    );

    let (_, said) = logs(&p, &["--grep", "MARK", "-n", "1"]);
    assert_eq!(
        said.lines().filter(|l| l.contains("MARK")).count(),
        1,
        "{said}"
    );
    assert!(said.contains("MARK three"), "{said}");
    assert!(said.contains("password=********"), "{said}");

    // The service's own lines of now are within the last hour; 2020's are not.
    let (_, said) = logs(&p, &["--since", "1h"]);
    assert!(!said.contains("MARK"), "{said}");
    assert!(said.contains("[shipjar] started pid"), "{said}");

    // A secret is masked before the pattern sees it.
    let (_, said) = logs(&p, &["--grep", &p.secret]);
    assert!(!said.contains("MARK"), "{said}");

    let (code, said) = logs(&p, &["--grep", "("]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("--grep `(`"), "{said}");
    let (code, said) = logs(&p, &["--since", "yesterday"]);
    assert_eq!(code, Some(2), "{said}");
}
