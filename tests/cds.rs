//! `[service] cds` (on by default): a release's class-data archive, dumped
//! beside its first healthy run from the classes that run loaded (no stop
//! waits for it) and mapped by every later start; stale, damaged or refused
//! archives are ignored with a note. Real JVMs (examples/hello),
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

/// Waits until `n` archives in all were made beside running services.
fn archives_made(host: &Host, n: usize) {
    assert!(
        eventually(Duration::from_secs(120), || events_with(
            host,
            "class-data archive written"
        )
        .len()
            >= n),
        "{}",
        host.log()
    );
}

/// `java -Xshare:dump` processes whose command line names `dir`.
fn dumps_running(dir: &Path) -> Vec<i32> {
    let dir = dir.display().to_string();
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    let argv = cmdline(*pid);
                    argv.iter().any(|a| a == "-Xshare:dump")
                        && argv.iter().any(|a| a.contains(&dir))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_first_healthy_run_records_its_classes_an_archive_is_made_beside_it_and_no_stop_dumps() {
    let host = Host::new("hello");
    let dir = release(&host, "r1", free_port(), true);
    let archive = dir.join("cds.jsa");

    // First start: no archive yet; the JVM records the classes it loads,
    // and is not told to dump anything at exit.
    let pid = started(&host);
    let argv = cmdline(pid);
    let dumps = fs::canonicalize(host.lib().join("cds-dump")).expect("cds-dump");
    let list_opt = format!("-XX:DumpLoadedClassList={}/", dumps.display());
    assert!(argv.iter().any(|a| a.starts_with(&list_opt)), "{argv:?}");
    assert!(
        !argv
            .iter()
            .any(|a| a.starts_with("-XX:ArchiveClassesAtExit")),
        "{argv:?}"
    );
    assert_eq!(state(&host)["class_data"], "recording");
    assert_eq!(events_with(&host, "class-data archive: none yet").len(), 1);
    let (_, status) = host.status_json();
    let detail = status["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("no class-data archive yet"), "{detail}");

    // The archive is made while the service runs: the same process serves on.
    archives_made(&host, 1);
    assert!(archive.is_file(), "{}", host.log());
    assert_eq!(host.service_pid(), Some(pid));
    let written = events_with(&host, "class-data archive written");
    assert!(written[0].contains("later starts of release r1 use it"));
    let mode = fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    assert!(dir.join("cds.json").is_file());
    assert!(dump_dirs(&host).is_empty(), "{:?}", dump_dirs(&host));

    // The stop writes nothing and starts no dump.
    stopped(&host);
    assert!(dumps_running(&dumps).is_empty());
    assert_eq!(events_with(&host, "class-data archive written").len(), 1);

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

    // The release keeps the list its first run recorded: a run that maps
    // the archive records none again (once per release, not every start).
    assert!(dir.join("cds.classes").is_file());
    let argv = cmdline(pid);
    assert!(!argv.iter().any(|a| a.starts_with(&list_opt)), "{argv:?}");
    assert!(dump_dirs(&host).is_empty(), "{:?}", dump_dirs(&host));

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
    archives_made(&host, 1);
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
    // That run makes a fresh one, valid again for the next start.
    archives_made(&host, 2);
    stopped(&host);
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
    archives_made(&host, 3);
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
    archives_made(&host, 4);
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
    let made = events_with(&host, "class-data archive written").len();
    archives_made(&host, made + 1);
    stopped(&host);
    assert!(archive.metadata().unwrap().len() > 1024 * 1024);
}

/// Signals `pid` (a process this test's supervisor started).
fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(pid, sig) };
}

#[test]
fn a_stop_kills_a_dump_frozen_on_purpose_waits_for_none_and_keeps_nothing() {
    let host = Host::new("hello");
    let dir = release(&host, "r1", free_port(), true);
    let archive = dir.join("cds.jsa");
    let pid = started(&host);
    host.track(pid);
    let dumps = fs::canonicalize(host.lib().join("cds-dump")).expect("cds-dump");
    // Catch the dump as it starts and freeze it (SIGSTOP): whatever the
    // machine's speed, it is still running when the stop comes.
    let mut dump = Vec::new();
    assert!(
        eventually(Duration::from_secs(60), || {
            dump = dumps_running(&dumps);
            !dump.is_empty()
        }),
        "no dump started: {}",
        host.log()
    );
    for &d in &dump {
        host.track(d);
        signal(d, libc::SIGSTOP);
    }
    let began = std::time::Instant::now();
    stopped(&host);
    // hello stops in well under a second; a stop that waited for the dump
    // would hang here until the dump's deadline (minutes).
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
    assert!(
        dumps_running(&dumps).is_empty(),
        "the dump outlived the stop"
    );
    assert!(!archive.exists(), "{}", host.log());
    assert!(!dir.join("cds.json").exists());
    assert!(dump_dirs(&host).is_empty(), "{:?}", dump_dirs(&host));
    assert!(events_with(&host, "class-data archive written").is_empty());

    // The next start records again, and its dump completes.
    let pid = started(&host);
    let list = format!("-XX:DumpLoadedClassList={}/", dumps.display());
    assert!(
        cmdline(pid).iter().any(|a| a.starts_with(&list)),
        "{:?}",
        cmdline(pid)
    );
    archives_made(&host, 1);
    stopped(&host);
    assert!(archive.is_file(), "{}", host.log());
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
    // No `cds` key: archives are on by default.
    let p = Project::with_config(|c| {
        assert!(!c.contains("cds"), "{c}");
        c.to_string()
    });
    ok(p.deploy("1.0.0", &[]));
    let r1 = p.current().expect("current");
    let manifest = fs::read_to_string(p.lib().join("releases").join(&r1).join("RELEASE")).unwrap();
    assert!(manifest.contains("\"cds\": true"), "{manifest}");
    // r1's archive is made beside it while it serves.
    let r1_dir = fs::canonicalize(p.lib().join("releases").join(&r1)).unwrap();
    assert!(
        eventually(Duration::from_secs(120), || r1_dir
            .join("cds.json")
            .is_file()),
        "{}",
        fs::read_to_string(p.root().join("var/log/hello/console.log")).unwrap_or_default()
    );
    ok(p.deploy("2.0.0", &[]));
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
    // The copy came without a class list: this first run of r3 records one
    // and, healthy + 5 s, keeps it (no dump), so a later new artifact is
    // dumped from a list of this release.
    let kept = r3_dir.join("cds.classes");
    assert!(
        eventually(Duration::from_secs(60), || kept.is_file()),
        "{}",
        fs::read_to_string(p.root().join("var/log/hello/console.log")).unwrap_or_default()
    );
    let mode = fs::symlink_metadata(&kept)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
    let list = fs::read_to_string(&kept).expect("read");
    assert!(list.lines().any(|l| l == "Hello"), "{list}");
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
            &format!("name = \"hello\"\nuser = \"{}\"\n", user.name),
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
    let release = fs::canonicalize(p.lib().join("current")).expect("current");
    let kept = release.join("cds.classes");
    assert!(
        eventually(Duration::from_secs(120), || release
            .join("cds.json")
            .is_file()
            && kept.is_file()),
        "no archive made"
    );
    ok(p.run(&["service", "restart", "hello", "--root", root]));
    let archive = release.join("cds.jsa");
    assert_eq!(owner(&archive), 0, "a copy of root's, not the JVM's file");
    assert_eq!(owner(&release.join("cds.json")), 0);
    assert_eq!(owner(&kept), 0);
    let mode = fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    let pid = || -> i32 {
        fs::read_to_string(p.root().join("run/hello/hello.pid"))
            .expect("pidfile")
            .lines()
            .next()
            .and_then(|l| l.parse().ok())
            .expect("pid")
    };
    assert!(
        maps_archive(pid(), &archive),
        "restart did not map the archive"
    );
    // A re-deploy of the same jar copies the archive without a list: that
    // release's first run records one in the service user's dir, and it is
    // kept as a copy of root's.
    ok(p.deploy("2.0.0", &[]));
    let second = fs::canonicalize(p.lib().join("current")).expect("current");
    assert_ne!(second, release);
    assert!(maps_archive(pid(), &second.join("cds.jsa")), "not mapped");
    let kept = second.join("cds.classes");
    assert!(
        eventually(Duration::from_secs(60), || kept.is_file()),
        "the run's class list was not kept"
    );
    assert_eq!(owner(&kept), 0);
    let mode = fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    let list = fs::read_to_string(&kept).expect("cds.classes");
    assert!(list.lines().any(|l| l == "Hello"), "{list}");
    ok(p.run(&["service", "stop", "hello", "--root", root]));
}

#[test]
fn an_archive_made_stale_on_purpose_that_the_jvm_itself_refuses_is_skipped_and_the_start_succeeds()
{
    use std::os::unix::fs::MetadataExt;
    let host = Host::new("hello");
    let dir = release(&host, "r1", free_port(), true);
    let archive = dir.join("cds.jsa");
    started(&host);
    archives_made(&host, 1);
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
    // HotSpot refuses a static archive for another jar without a warning
    // in the log; the supervisor notices it is not mapped, says so, and
    // drops the archive so the next run makes one.
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
            .any(|a| a.starts_with("-XX:DumpLoadedClassList=")),
        "{:?}",
        cmdline(pid)
    );
    archives_made(&host, 2);
    stopped(&host);
    let pid = started(&host);
    assert!(maps_archive(pid, &archive), "{}", host.log());
    stopped(&host);
}
