//! As root, the JVM runs as the service user with its groups, reads its
//! secret config, can write its log dir and `shared/`, and cannot write its
//! release. Needs root: `#[ignore]`d otherwise (`run-tests` includes them as root).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::host::{self, Host, Spec};
use crate::common::{Project, exited_saying, ok};

/// A system user with a supplementary group, removed on drop.
struct TestUser {
    name: String,
    extra_group: String,
    uid: u32,
    gid: u32,
    extra_gid: u32,
}

impl TestUser {
    fn create(tag: &str) -> TestUser {
        host::require_root();
        let n = std::process::id() % 100_000;
        let name = format!("sj{tag}{n}");
        let extra_group = format!("sj{tag}g{n}");
        let ok = |cmd: &mut Command| {
            let out = cmd.output().expect("run user tool");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // Left over from a run that was killed: start clean.
        let _ = Command::new("userdel").arg(&name).output();
        let _ = Command::new("groupdel").arg(&extra_group).output();
        ok(Command::new("groupadd").args(["--system", &extra_group]));
        ok(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--groups",
            &extra_group,
            &name,
        ]));
        let id = |flag: &str, who: &str| -> u32 {
            let out = Command::new("id").args([flag, who]).output().expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        let gid_of = |group: &str| -> u32 {
            let out = Command::new("getent")
                .args(["group", group])
                .output()
                .expect("getent");
            String::from_utf8_lossy(&out.stdout)
                .split(':')
                .nth(2)
                .and_then(|g| g.trim().parse().ok())
                .expect("group id")
        };
        TestUser {
            uid: id("-u", &name),
            gid: id("-g", &name),
            extra_gid: gid_of(&extra_group),
            name,
            extra_group,
        }
    }

    /// Whether this user (with all its groups) can create a file in `dir`.
    fn can_write(&self, dir: &Path) -> bool {
        let (uid, gid, groups) = (self.uid, self.gid, [self.gid, self.extra_gid]);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "touch \"$0/written-by-service-user\""])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setgroups/setgid/setuid between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.status().expect("run sh").success()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // userdel refuses while a process of the user is still exiting: retry.
        for _ in 0..50 {
            let out = Command::new("userdel").arg(&self.name).output();
            if out.is_ok_and(|o| o.status.success() || o.status.code() == Some(6)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new("groupdel").arg(&self.extra_group).output();
    }
}

/// The `Uid:`/`Gid:`/`Groups:` line of /proc/PID/status.
fn status_field(pid: i32, field: &str) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// A hello project whose service runs as `user` (`edit` changes its config
/// further), open to that user, with 1.0.0 deployed.
fn deployed_as(user: &TestUser, edit: impl FnOnce(String) -> String) -> Project {
    let p = Project::with_config(|c| {
        edit(c.replacen(
            "name = \"hello\"\n",
            &format!("name = \"hello\"\nuser = \"{}\"\n", user.name),
            1,
        ))
    });
    // tempdir makes the project 0700: the service user must reach its release.
    fs::set_permissions(p.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    ok(p.deploy("1.0.0", &[]));
    p
}

#[test]
#[ignore = "needs root"]
fn the_jvm_runs_as_its_user_and_cannot_write_its_release() {
    let user = TestUser::create("p");
    let p = deployed_as(&user, |c| c);

    let pidfile = p.root().join("run/hello/hello.pid");
    let pid: i32 = fs::read_to_string(&pidfile)
        .expect("pidfile")
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .expect("pid");
    assert_eq!(
        status_field(pid, "Uid:"),
        vec![user.uid; 4],
        "real, effective, saved, fs uid"
    );
    assert_eq!(status_field(pid, "Gid:"), vec![user.gid; 4]);
    let mut groups = status_field(pid, "Groups:");
    groups.sort();
    let mut expected = vec![user.gid, user.extra_gid];
    expected.sort();
    assert_eq!(groups, expected, "supplementary groups");
    let environ = fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ
            .split('\0')
            .any(|v| v == format!("USER={}", user.name)),
        "{environ}"
    );

    // The JVM read its secret config (0640 root:group) as that user.
    let (status, body) = p.get("/config").expect("config answers");
    assert_eq!(status, 200);
    assert!(body.contains("\"db_user\":\"hello\""), "{body}");

    let current = fs::canonicalize(p.lib().join("current")).expect("current");
    let meta = fs::metadata(&current).expect("release meta");
    assert_eq!(meta.uid(), 0, "release owned by root");
    assert!(
        !user.can_write(&current),
        "the service user can write its release"
    );
    assert!(!user.can_write(&current.join("config")), "… or its config");
    assert!(!user.can_write(&p.lib().join("releases")), "… or releases/");
    assert!(
        user.can_write(&p.lib().join("shared")),
        "shared/ must be writable"
    );
    let log_dir = p.root().join("var/log/hello");
    assert!(user.can_write(&log_dir), "the log dir must be writable");

    // The console log: created by the supervisor for the service user,
    // readable by the service's group only.
    let log = fs::metadata(log_dir.join("console.log")).expect("log");
    assert_eq!(
        (log.uid(), log.gid(), log.mode() & 0o777),
        (user.uid, user.gid, 0o640)
    );

    ok(p.service("stop", &[]));
}

#[test]
#[ignore = "needs root"]
fn a_release_the_service_user_could_change_is_refused() {
    let user = TestUser::create("w");
    let host = Host::new("lax");
    fs::set_permissions(host.root(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut spec = Spec::sleeper();
    spec.user = Some(user.name.clone());
    let release = host.release("r1", &spec);
    fs::set_permissions(release.join("config"), fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = host.start();
    exited_saying(
        &out,
        1,
        &format!("config is writable by the service user {}", user.name),
    );
    assert!(host.service_pid().is_none(), "started anyway");
}

#[test]
#[ignore = "needs root"]
fn a_service_writing_its_own_name_log_keeps_it() {
    let user = TestUser::create("l");
    // Its own logging writes /var/log/hello/hello.log, as a logback.xml would.
    let p = deployed_as(&user, |c| {
        c.replacen(
            "BIND = \"127.0.0.1\" }",
            "BIND = \"127.0.0.1\", OWN_LOG_FILE = \"{{ log_dir }}/hello.log\" }",
            1,
        )
    });
    let own = p.root().join("var/log/hello/hello.log");
    let first = fs::metadata(&own).expect("the service's own log");
    assert_eq!(first.uid(), user.uid, "created by the service itself");

    // A second deploy restarts it: the supervisor opens its logs again.
    ok(p.deploy("1.0.1", &[]));
    let again = fs::metadata(&own).expect("the service's own log");
    assert_eq!(
        (again.uid(), again.gid(), again.mode()),
        (first.uid(), first.gid(), first.mode()),
        "shipjar changed the owner or mode of a file it did not create"
    );
    let own_text = fs::read_to_string(&own).expect("read");
    assert!(
        own_text.contains("starting hello version 1.0.1"),
        "the restarted service could not write its own log:\n{own_text}"
    );
    let console = fs::metadata(p.root().join("var/log/hello/console.log")).expect("console.log");
    assert_eq!(
        (console.uid(), console.gid(), console.mode() & 0o777),
        (user.uid, user.gid, 0o640)
    );
    ok(p.service("stop", &[]));
}
