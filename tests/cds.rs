//! `[service] cds = true`: a release's class-data archive, written when its
//! first healthy run stops and mapped by every later start; stale or
//! damaged archives are ignored with a note. Real JVMs (examples/hello),
//! the real binary, a hand-made release under a temporary root, and the
//! `local` stage for deploy and rollback.

mod common;
use common::ok;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use common::host::{Host, Spec, code, eventually, free_port, text};
use common::{Project, hello_jar};

/// A hello release running its own `hello.jar` (a link, as a deploy makes
/// it), with `run.cds` as given.
fn release(host: &Host, id: &str, port: u16, cds: bool) -> PathBuf {
    let mut spec = Spec::hello(port, &[]);
    if let Some(jar) = spec.argv.last_mut() {
        *jar = "hello.jar".to_string();
    }
    let mut env = serde_json::Map::new();
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone().into());
    }
    let mut run = json!({"argv": spec.argv, "env": env, "user": null});
    if cds {
        run["cds"] = json!(true);
    }
    spec.extra = json!({ "run": run });
    let dir = host.release(id, &spec);
    std::os::unix::fs::symlink(hello_jar(), dir.join("hello.jar")).expect("jar link");
    fs::canonicalize(dir).expect("real release dir")
}

fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The archive is mapped into the process: the JVM really uses it.
fn maps_archive(pid: i32, archive: &Path) -> bool {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|m| m.contains(&archive.display().to_string()))
}

fn started(host: &Host) -> i32 {
    let out = host.start();
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), host.log());
    host.service_pid().expect("pidfile")
}

fn stopped(host: &Host) {
    let out = host.run("stop", false);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), host.log());
}

fn state(host: &Host) -> Value {
    let text = fs::read_to_string(host.run_dir().join("supervisor.json")).expect("state");
    serde_json::from_str(&text).expect("state json")
}

/// The JVM's dump directories, in root's `cds-dump/`.
fn dump_dirs(host: &Host) -> Vec<PathBuf> {
    fs::read_dir(host.lib().join("cds-dump"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn events_with(host: &Host, words: &str) -> Vec<String> {
    host.events()
        .into_iter()
        .filter(|e| e.contains(words))
        .collect()
}

#[test]
fn archive_is_written_at_the_first_stop_and_used_by_every_later_start() {
    let host = Host::new("hello");
    let dir = release(&host, "r1", free_port(), true);
    let archive = dir.join("cds.jsa");

    // First start: no archive yet, the JVM is told to write one at exit.
    let pid = started(&host);
    let argv = cmdline(pid);
    let dumps = fs::canonicalize(host.lib().join("cds-dump")).expect("cds-dump");
    let dump_opt = format!("-XX:ArchiveClassesAtExit={}/", dumps.display());
    assert!(argv.iter().any(|a| a.starts_with(&dump_opt)), "{argv:?}");
    assert_eq!(argv[1], "-Xshare:auto", "{argv:?}");
    assert_eq!(state(&host)["class_data"], "dumping");
    assert_eq!(events_with(&host, "class-data archive: none yet").len(), 1);
    assert!(!archive.exists());

    // Its graceful stop dumps; the archive is copied next to the release.
    stopped(&host);
    assert!(archive.is_file(), "{}", host.log());
    let written = events_with(&host, "class-data archive written");
    assert_eq!(written.len(), 1, "{}", host.log());
    assert!(written[0].contains("later starts of release r1 use it"));
    let mode = fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    assert!(dir.join("cds.json").is_file());
    assert!(dump_dirs(&host).is_empty(), "{:?}", dump_dirs(&host));

    // The next start maps it (the release's own path, not `current`).
    let pid = started(&host);
    let use_opt = format!("-XX:SharedArchiveFile={}", archive.display());
    assert!(cmdline(pid).contains(&use_opt), "{:?}", cmdline(pid));
    assert!(maps_archive(pid, &archive), "archive not mapped");
    assert_eq!(state(&host)["class_data"], "used");
    let (_, status) = host.status_json();
    let detail = status["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("class-data archive in use"), "{detail}");
    assert_eq!(events_with(&host, "class-data archive: using").len(), 1);

    // A crash restart uses it too.
    host.track(pid);
    // SAFETY: kill(2) on the service this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(30), || host
            .service_pid()
            .is_some_and(|p| p != pid && maps_archive(p, &archive))),
        "{}",
        host.log()
    );
    // SIGKILL of a run that only maps the archive changes nothing.
    assert!(archive.is_file());

    // And `service restart`.
    let out = host.run("restart", false);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let pid = host.service_pid().expect("pid");
    assert!(cmdline(pid).contains(&use_opt), "{:?}", cmdline(pid));
    assert!(maps_archive(pid, &archive));
    stopped(&host);
    assert_eq!(events_with(&host, "class-data archive written").len(), 1);
    assert!(!host.log().contains("[warning][cds]"), "{}", host.log());
}

#[test]
fn a_stale_or_damaged_archive_is_ignored_with_a_note_and_the_start_succeeds() {
    let host = Host::new("hello");
    let dir = release(&host, "r1", free_port(), true);
    let archive = dir.join("cds.jsa");
    started(&host);
    stopped(&host);
    assert!(archive.is_file(), "{}", host.log());

    // A different JDK than the one that wrote it (its recorded identity edited).
    let record_path = dir.join("cds.json");
    let mut record: Value =
        serde_json::from_slice(&fs::read(&record_path).unwrap()).expect("record");
    record["made_with"]["java"]["size"] = json!(1);
    fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    let pid = started(&host);
    let ignored = events_with(&host, "class-data archive ignored");
    assert_eq!(ignored.len(), 1, "{}", host.log());
    assert!(ignored[0].contains("the JDK changed"), "{}", ignored[0]);
    assert!(
        !cmdline(pid)
            .iter()
            .any(|a| a.starts_with("-XX:SharedArchiveFile")),
        "{:?}",
        cmdline(pid)
    );
    // That run writes a fresh one, valid again for the next start.
    stopped(&host);
    assert_eq!(events_with(&host, "class-data archive written").len(), 2);
    let pid = started(&host);
    assert!(maps_archive(pid, &archive), "{}", host.log());
    stopped(&host);

    // A damaged archive: bytes overwritten in the middle.
    let mut bytes = fs::read(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 4096].fill(0xAB);
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&archive, &bytes).unwrap();
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o444)).unwrap();
    let pid = started(&host);
    let ignored = events_with(&host, "class-data archive ignored");
    assert_eq!(ignored.len(), 2, "{}", host.log());
    assert!(
        ignored[1].contains("cds.jsa changed since it was written"),
        "{}",
        ignored[1]
    );
    assert!(!maps_archive(pid, &archive));
    stopped(&host);

    // Damaged in place with size and mtime kept (only its owner could).
    let before = fs::metadata(&archive).unwrap().modified().unwrap();
    let mut bytes = fs::read(&archive).unwrap();
    bytes[middle..middle + 4096].fill(0xAB);
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&archive, &bytes).unwrap();
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o444)).unwrap();
    fs::File::open(&archive)
        .unwrap()
        .set_modified(before)
        .unwrap();
    let pid = started(&host);
    let ignored = events_with(&host, "class-data archive ignored");
    assert!(
        ignored.last().unwrap().contains("is damaged"),
        "{}",
        host.log()
    );
    assert!(!maps_archive(pid, &archive));
    stopped(&host);

    // A truncated one, and no record at all.
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&archive, b"\xa8\xba\x0b\xf0 truncated").unwrap();
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o444)).unwrap();
    fs::remove_file(&record_path).unwrap();
    started(&host);
    let ignored = events_with(&host, "class-data archive ignored");
    assert_eq!(ignored.len(), 4, "{}", host.log());
    assert!(ignored[3].contains("no usable record"), "{}", ignored[3]);
    stopped(&host);
    assert!(archive.metadata().unwrap().len() > 1024 * 1024);
}

/// Signals `pid` (a JVM this test started).
fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(pid, sig) };
}

/// Whether `path` starts with the header HotSpot writes last.
fn has_header(path: &Path) -> bool {
    fs::read(path).is_ok_and(|b| b.len() >= 4 && b[..4] == 0xf00b_aba8u32.to_ne_bytes())
}

#[test]
fn a_jvm_killed_while_dumping_leaves_no_archive_in_place() {
    let host = Host::new("hello");
    let dir = release(&host, "r1", free_port(), true);
    let archive = dir.join("cds.jsa");
    let mut pid = started(&host);
    host.track(pid);
    // Catch a JVM in the middle of its dump: SIGTERM starts it (the JVM
    // dumps at exit), the file appearing means it is writing, SIGSTOP
    // freezes it there, and a file without the header HotSpot writes last
    // proves the dump is unfinished. Too late (header there already): let
    // it finish, and try again on the restarted JVM.
    let mut caught = false;
    for _ in 0..5 {
        assert!(
            eventually(Duration::from_secs(30), || state(&host)["state"]
                == "running"),
            "{}",
            host.log()
        );
        pid = host.service_pid().expect("pid");
        host.track(pid);
        let dumps = dump_dirs(&host);
        assert_eq!(dumps.len(), 1, "{dumps:?}");
        let dumping = dumps[0].join("cds.jsa");
        signal(pid, libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !dumping.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        signal(pid, libc::SIGSTOP);
        if dumping.exists() && !has_header(&dumping) {
            signal(pid, libc::SIGKILL);
            eprintln!(
                "caught pid {pid} mid-dump ({} bytes written, no header yet)",
                fs::metadata(&dumping).map(|m| m.len()).unwrap_or(0)
            );
            caught = true;
            break;
        }
        signal(pid, libc::SIGCONT);
        // Too late: its archive is complete and kept, and the run restarted
        // after the exit may already use it. Start over from no archive.
        assert!(
            eventually(Duration::from_secs(30), || host
                .service_pid()
                .is_some_and(|p| p != pid)),
            "{}",
            host.log()
        );
        stopped(&host);
        let _ = fs::remove_file(&archive);
        let _ = fs::remove_file(dir.join("cds.json"));
        started(&host);
    }
    if !caught {
        eprintln!("SKIPPED: never caught the JVM mid-dump in 5 tries (its dump was too quick)");
        return;
    }
    assert!(
        eventually(Duration::from_secs(30), || host
            .service_pid()
            .is_some_and(|p| p != pid && cmdline(p).len() > 1)),
        "{}",
        host.log()
    );
    let not_kept = events_with(&host, "class-data archive not kept");
    assert!(
        not_kept
            .last()
            .is_some_and(|l| l.contains("killed by SIGKILL")),
        "{}",
        host.log()
    );
    assert!(!archive.exists(), "{}", host.log());
    assert!(!dir.join("cds.json").exists());
    // The restarted run dumps again, in a fresh directory.
    let pid = host.service_pid().expect("pid");
    assert!(
        cmdline(pid)
            .iter()
            .any(|a| a.starts_with("-XX:ArchiveClassesAtExit=")),
        "{:?}",
        cmdline(pid)
    );

    // Once healthy, its graceful stop writes the real one, and the dump directory goes.
    assert!(
        eventually(Duration::from_secs(30), || state(&host)["state"]
            == "running"),
        "{}",
        host.log()
    );
    let dumps = dump_dirs(&host);
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    stopped(&host);
    assert!(archive.is_file(), "{}", host.log());
    assert!(dump_dirs(&host).is_empty(), "{:?}", dump_dirs(&host));
}

#[test]
fn cds_false_changes_nothing() {
    let host = Host::new("hello");
    let port = free_port();
    let dir = release(&host, "r1", port, false);
    let pid = started(&host);
    let mut spec = Spec::hello(port, &[]);
    if let Some(jar) = spec.argv.last_mut() {
        *jar = "hello.jar".to_string();
    }
    assert_eq!(cmdline(pid), spec.argv);
    assert!(state(&host).get("class_data").is_none());
    stopped(&host);
    assert!(
        events_with(&host, "class-data").is_empty(),
        "{}",
        host.log()
    );
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cds"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn deploy_then_rollback_starts_the_old_release_from_its_archive() {
    let p = Project::with_config(|c| {
        c.replace("jar = \"hello.jar\"\n", "jar = \"hello.jar\"\ncds = true\n")
    });
    ok(p.deploy("1.0.0", &[]));
    let r1 = p.current().expect("current");
    let manifest = fs::read_to_string(p.lib().join("releases").join(&r1).join("RELEASE")).unwrap();
    assert!(manifest.contains("\"cds\": true"), "{manifest}");
    // The second deploy stops r1 gracefully: its archive is written then.
    ok(p.deploy("2.0.0", &[]));
    let r1_dir = fs::canonicalize(p.lib().join("releases").join(&r1)).unwrap();
    assert!(r1_dir.join("cds.jsa").is_file());

    ok(p.run(&["rollback", "local"]));
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
    let log = fs::read_to_string(p.root().join("var/log/hello/console.log")).unwrap();
    let using = format!(
        "class-data archive: using {}",
        r1_dir.join("cds.jsa").display()
    );
    assert!(log.contains(&using), "{log}");

    // A re-deploy of the same artifact is a new release: it starts at once
    // from a copy of an archive of the same jar and JDK.
    ok(p.deploy("3.0.0", &[]));
    let r3 = p.current().expect("current");
    let r3_dir = fs::canonicalize(p.lib().join("releases").join(&r3)).unwrap();
    let log = fs::read_to_string(p.root().join("var/log/hello/console.log")).unwrap();
    let copied = format!("; using {}", r3_dir.join("cds.jsa").display());
    assert!(
        log.lines()
            .any(|l| l.contains("class-data archive: copied from release") && l.contains(&copied)),
        "{log}"
    );
    let pid: i32 = fs::read_to_string(p.root().join("run/hello/hello.pid"))
        .expect("pidfile")
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .expect("pid");
    assert!(maps_archive(pid, &r3_dir.join("cds.jsa")), "not mapped");
    ok(p.service("stop", &[]));
}

/// A system user for one test, removed on drop.
struct TestUser {
    name: String,
    uid: u32,
}

impl TestUser {
    fn create() -> TestUser {
        let name = format!("sjcds{}", std::process::id() % 100_000);
        // Left over from a run that was killed: start clean.
        let _ = std::process::Command::new("userdel").arg(&name).output();
        let out = std::process::Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin", &name])
            .output()
            .expect("useradd");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new("id")
            .args(["-u", &name])
            .output()
            .expect("id");
        let uid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("uid");
        TestUser { name, uid }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .output();
    }
}

fn owner(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).expect("stat").uid()
}

#[test]
#[ignore = "needs root"]
fn as_root_the_jvm_writes_into_its_own_dir_under_roots_cds_dump_and_the_archive_belongs_to_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (run-tests does)"
    );
    let user = TestUser::create();
    let p = Project::with_config(|c| {
        c.replacen(
            "name = \"hello\"\n",
            &format!("name = \"hello\"\nuser = \"{}\"\ncds = true\n", user.name),
            1,
        )
    });
    // tempdir makes the project 0700: the service user must reach its release.
    fs::set_permissions(p.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    ok(p.deploy("1.0.0", &[]));
    // The dump dir: the service user's, 0700, in root's 0711 `cds-dump/`,
    // so the service cannot swap it for a link.
    let parent = p.lib().join("cds-dump");
    assert_eq!(owner(&parent), 0);
    let mode = fs::metadata(&parent).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o711);
    let dumps: Vec<PathBuf> = fs::read_dir(&parent)
        .expect("cds-dump")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    assert_eq!(owner(&dumps[0]), user.uid);
    let mode = fs::metadata(&dumps[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    let root = p.root();
    let root = root.to_str().expect("utf-8 root");
    ok(p.run(&["service", "restart", "hello", "--root", root]));
    let release = fs::canonicalize(p.lib().join("current")).expect("current");
    let archive = release.join("cds.jsa");
    assert_eq!(owner(&archive), 0, "a copy of root's, not the JVM's file");
    assert_eq!(owner(&release.join("cds.json")), 0);
    let mode = fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    let pid: i32 = fs::read_to_string(p.root().join("run/hello/hello.pid"))
        .expect("pidfile")
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .expect("pid");
    assert!(
        maps_archive(pid, &archive),
        "restart did not map the archive"
    );
    ok(p.run(&["service", "stop", "hello", "--root", root]));
}

#[test]
fn an_archive_the_jvm_itself_refuses_is_skipped_and_the_start_succeeds() {
    use std::os::unix::fs::MetadataExt;
    let host = Host::new("hello");
    let dir = release(&host, "r1", free_port(), true);
    let archive = dir.join("cds.jsa");
    started(&host);
    stopped(&host);
    assert!(archive.is_file(), "{}", host.log());

    // The jar is replaced by a copy (other mtime) and the record forged to
    // match it: our checks pass, HotSpot's own (jar size and mtime) do not.
    let copy = host.root().join("other.jar");
    fs::copy(hello_jar(), &copy).unwrap();
    let old = fs::metadata(hello_jar()).unwrap().modified().unwrap();
    fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(old + Duration::from_secs(60))
        .unwrap();
    fs::remove_file(dir.join("hello.jar")).unwrap();
    std::os::unix::fs::symlink(&copy, dir.join("hello.jar")).unwrap();
    let record_path = dir.join("cds.json");
    let mut record: Value = serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    let real = fs::canonicalize(&copy).unwrap();
    let meta = fs::metadata(&real).unwrap();
    record["made_with"]["jar"] = json!({
        "path": real, "size": meta.size(), "mtime": meta.mtime(), "mtime_nsec": meta.mtime_nsec()
    });
    fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();

    let pid = started(&host);
    assert!(
        cmdline(pid)
            .iter()
            .any(|a| a.starts_with("-XX:SharedArchiveFile=")),
        "{:?}",
        cmdline(pid)
    );
    assert!(
        !maps_archive(pid, &archive),
        "HotSpot mapped a stale archive"
    );
    let (_, status) = host.status_json();
    assert_eq!(status["healthy"], true, "{status}");
    // What HotSpot says about it lands in the service log; the supervisor
    // notices, says so, and drops the archive so the next run writes one.
    assert!(host.log().contains("[warning][cds"), "{}", host.log());
    assert_eq!(
        events_with(&host, "the JVM did not map").len(),
        1,
        "{}",
        host.log()
    );
    assert_eq!(state(&host)["class_data"], "refused");
    let detail = status["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("class-data archive refused by the JVM"),
        "{detail}"
    );
    assert!(!archive.exists());
    stopped(&host);
    let pid = started(&host);
    assert!(
        cmdline(pid)
            .iter()
            .any(|a| a.starts_with("-XX:ArchiveClassesAtExit=")),
        "{:?}",
        cmdline(pid)
    );
    stopped(&host);
    let pid = started(&host);
    assert!(maps_archive(pid, &archive), "{}", host.log());
    stopped(&host);
}
