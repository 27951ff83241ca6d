//! Deploy hooks through the whole pipeline on the `local` stage with
//! examples/hello: their order and where each runs, a failing migration hook
//! that leaves the old release serving, secrets masked in hook output, and a
//! rollback that runs only the rollback hooks.

mod common;
use common::{exited, exited_saying};
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::path::Path;

use common::{Project, text};
use lifecycle::FleetStage;

/// Records one line per hook run: which hook, the release it runs in, what
/// `current` pointed to at that moment, its directory, and what it can see
/// of the service's environment and config.
const RECORD: &str = r#"#!/bin/sh
log="$1"
current=""
if [ -n "${SHIPJAR_RELEASE_DIR:-}" ]; then
    current=$(readlink "$SHIPJAR_RELEASE_DIR/../../current" 2>/dev/null || true)
fi
db=no
[ -f config/database.properties ] && db=yes
echo "$SHIPJAR_HOOK release=${SHIPJAR_RELEASE:-} current=${current##*/} dir=${PWD##*/} port=${PORT:-} db=$db version=${SHIPJAR_VERSION:-}" >> "$log"
"#;

/// A `[hooks]` section running `record.sh` at every point.
fn all_hooks() -> String {
    let mut text = String::from("\n[hooks]\ntimeout = \"20s\"\n");
    for point in [
        "before_switch",
        "before_start",
        "after_switch",
        "after_deploy",
        "after_failure",
        "before_rollback",
        "after_rollback",
    ] {
        text.push_str(&format!(
            "{point} = {{ command = [\"sh\", \"@DIR@/record.sh\", \"@DIR@/hooks.log\"] }}\n"
        ));
    }
    text
}

/// A project with `hooks` appended to the example's config; `@DIR@` is the project.
fn project_with(hooks: &str) -> Project {
    let hooks = hooks.to_string();
    let project = Project::with_config(move |c| c + &hooks);
    project.fill_in_dir();
    std::fs::write(project.path().join("record.sh"), RECORD).unwrap();
    project
}

/// The recorded lines, then empties the record.
fn take_record(dir: &Path) -> Vec<String> {
    let path = dir.join("hooks.log");
    let lines = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let _ = std::fs::remove_file(path);
    lines
}

/// The value of `key=` in a recorded line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn hook_of(line: &str) -> &str {
    line.split(' ').next().unwrap_or("")
}

#[test]
fn hooks_run_in_order_where_and_when_they_should() {
    let project = project_with(&all_hooks());
    let out = project.deploy("v1", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let first = project.current().expect("a current release");
    let record = take_record(project.path());
    let order: Vec<&str> = record.iter().map(|l| hook_of(l)).collect();
    assert_eq!(
        order,
        [
            "before_switch",
            "before_start",
            "after_switch",
            "after_deploy"
        ],
        "{record:#?}"
    );
    // The first deploy: nothing was current before the switch.
    assert_eq!(field(&record[0], "current"), "");
    assert_eq!(field(&record[2], "current"), first);

    let out = project.deploy("v2", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let second = project.current().expect("a current release");
    let record = take_record(project.path());
    let port = project.port.to_string();
    for line in &record[..3] {
        // Host hooks: in the new release's directory, with its config files
        // and the service's environment.
        assert_eq!(field(line, "release"), second, "{line}");
        assert_eq!(field(line, "dir"), second, "{line}");
        assert_eq!(field(line, "db"), "yes", "{line}");
        assert_eq!(field(line, "port"), port, "{line}");
        assert_eq!(field(line, "version"), "v2", "{line}");
    }
    // Before the switch the old release is current; after it, the new one.
    assert_eq!(field(&record[0], "current"), first, "before_switch");
    assert_eq!(field(&record[1], "current"), first, "before_start");
    assert_eq!(field(&record[2], "current"), second, "after_switch");
    // after_deploy runs on this machine, in the project, knowing the release.
    assert_eq!(hook_of(&record[3]), "after_deploy");
    assert_eq!(field(&record[3], "release"), second);
    assert_eq!(field(&record[3], "version"), "v2");
    assert_eq!(project.served_version().as_deref(), Some("v2"));
}

#[test]
fn a_failing_migration_hook_leaves_the_old_release_serving_and_no_host_switched() {
    let project = project_with(
        "\n[hooks]\n\
         before_switch = { command = [\"sh\", \"-c\", \"echo applying migration 42; echo 'migration 42 failed: relation exists' >&2; exit 3\"], timeout = \"20s\" }\n\
         before_start = { command = [\"sh\", \"@DIR@/record.sh\", \"@DIR@/hooks.log\"] }\n\
         after_failure = { command = [\"sh\", \"@DIR@/record.sh\", \"@DIR@/hooks.log\"] }\n",
    );
    // v1 goes out with the hook passing (nothing to migrate yet).
    let file = project.path().join("shipjar.toml");
    let failing = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, failing.replace("exit 3", "exit 0")).unwrap();
    let out = project.deploy("v1", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let old = project.current().unwrap();
    take_record(project.path());
    let revisions_before = project.revisions().len();

    std::fs::write(&file, failing).unwrap();
    let out = project.deploy("v2", &[]);
    let said = exited_saying(
        &out,
        1,
        "FAILED at step `before_switch`: hook exited with code 3",
    );
    assert!(said.contains("output of the hook:"), "{said}");
    assert!(
        said.contains("migration 42 failed: relation exists"),
        "{said}"
    );
    assert!(said.contains("applying migration 42"), "{said}");
    assert!(said.contains("not changed (still on release"), "{said}");
    // No switch, no restart; the stop is recorded as such; the old release serves.
    assert_eq!(project.current().as_deref(), Some(old.as_str()));
    assert_eq!(project.served_version().as_deref(), Some("v1"));
    let revisions = project.revisions();
    assert_eq!(revisions.len(), revisions_before + 1);
    let last = revisions.last().unwrap();
    assert!(
        last.contains("\tfailed\tbefore_switch: hook exited with code 3; not switched"),
        "{last}"
    );
    let record = take_record(project.path());
    let order: Vec<&str> = record.iter().map(|l| hook_of(l)).collect();
    assert_eq!(order, ["after_failure"], "no before_start ran: {record:#?}");
    // The next deploy is not blocked: the lock was released.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("exit 3", "exit 0"),
    )
    .unwrap();
    let out = project.deploy("v3", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(project.served_version().as_deref(), Some("v3"));
}

#[test]
fn a_failing_before_start_hook_fails_the_host_before_its_switch() {
    let project = project_with(
        "\n[hooks]\nbefore_start = { command = [\"sh\", \"-c\", \"echo not today; exit 1\"] }\n",
    );
    let file = project.path().join("shipjar.toml");
    let failing = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, failing.replace("exit 1", "exit 0")).unwrap();
    assert!(project.deploy("v1", &[]).status.success());
    let old = project.current().unwrap();
    std::fs::write(&file, failing).unwrap();
    let out = project.deploy("v2", &[]);
    let said = exited_saying(&out, 1, "`before_start`: hook exited with code 1");
    assert!(said.contains("not today"), "{said}");
    assert_eq!(project.current().as_deref(), Some(old.as_str()));
    assert_eq!(project.served_version().as_deref(), Some("v1"));
}

#[test]
fn hook_output_is_masked() {
    // The hook sees the secret the way the service does (its config file) and prints it.
    let project = project_with(
        "\n[hooks]\n\
         before_switch = { command = [\"sh\", \"-c\", \"cat config/database.properties; echo leaked $SHIPJAR_RELEASE\"] }\n\
         after_switch = { command = [\"sh\", \"-c\", \"cat config/database.properties; exit 1\"] }\n",
    );
    for json in [false, true] {
        let out = if json {
            project.deploy_json("v1", &[])
        } else {
            project.deploy("v1", &[])
        };
        let said = text(&out);
        assert!(!said.contains(&project.secret), "the secret leaked: {said}");
        assert!(said.contains("password=********"), "{said}");
        assert!(
            said.contains("leaked"),
            "the hook's output is shown: {said}"
        );
        // after_switch failed: the host went back (here: to nothing).
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.contains("after_switch"), "{said}");
    }
}

#[test]
fn rollback_runs_only_the_rollback_hooks() {
    let project = project_with(&all_hooks());
    assert!(project.deploy("v1", &[]).status.success());
    let first = project.current().unwrap();
    assert!(project.deploy("v2", &[]).status.success());
    let second = project.current().unwrap();
    take_record(project.path());

    let out = project.run(&["rollback", "local"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(project.current().as_deref(), Some(first.as_str()));
    assert_eq!(project.served_version().as_deref(), Some("v1"));
    let record = take_record(project.path());
    let order: Vec<&str> = record.iter().map(|l| hook_of(l)).collect();
    assert_eq!(order, ["before_rollback", "after_rollback"], "{record:#?}");
    // before_rollback: in the release rolled back to, while the newer one is still current.
    assert_eq!(field(&record[0], "release"), first);
    assert_eq!(field(&record[0], "current"), second);
}

#[test]
fn a_hook_without_a_command_is_a_config_error_naming_it() {
    let project = project_with("\n[hooks]\nbefore_switch = { command = [] }\n");
    let out = project.run(&["check", "local"]);
    exited_saying(&out, 2, "hooks.before_switch.command");
}

/// JSON step events of `out` as (host, step, message).
fn steps(out: &std::process::Output) -> Vec<(String, String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (s("host"), s("step"), s("message"))
        })
        .collect()
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn on_a_fleet_the_migration_runs_once_on_the_first_host_as_the_service_user() {
    let hooks = "\n[hooks]\n\
        before_switch = { command = [\"sh\", \"-c\", \"echo migrating as $(id -un) on $SHIPJAR_HOST in ${PWD##*/}; grep -c password config/database.properties\"] }\n\
        before_start = { command = [\"sh\", \"-c\", \"echo starting as $(id -un) on $SHIPJAR_HOST\"] }\n";
    // The floor: a migration below outlasts it.
    let p = FleetStage::new(2, "lock_lease = \"10s\"", |c| {
        c.replace("start_timeout = \"30s\"", "start_timeout = \"20s\"") + hooks
    });
    p.provision();
    let out = p.deploy_with("v1", &[]);
    assert!(out.status.success(), "deploy: {}", text(&out));
    let steps = steps(&out);
    let said = |step: &str, prefix: &str| -> Vec<String> {
        steps
            .iter()
            .filter(|(_, s, m)| s == step && m.starts_with(prefix))
            .map(|(h, _, m)| format!("{h}: {m}"))
            .collect()
    };
    let migrations = said("before_switch", "migrating");
    assert_eq!(
        migrations.len(),
        1,
        "exactly one host migrates: {migrations:?}"
    );
    assert!(
        migrations[0].starts_with("app1: migrating as hello on app1 in "),
        "{migrations:?}"
    );
    // It read the secret file (one password line) as the service user.
    assert!(
        steps
            .iter()
            .any(|(h, s, m)| h == "app1" && s == "before_switch" && m == "1"),
        "{steps:?}"
    );
    let mut starts = said("before_start", "starting");
    starts.sort();
    assert_eq!(
        starts,
        [
            "app1: starting as hello on app1",
            "app2: starting as hello on app2"
        ]
    );
    assert!(!text(&out).contains(&p.secret));

    // A migration longer than the lock lease: the other host's lock is kept
    // alive meanwhile, so a second deploy cannot take it over.
    let file = p.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&file).unwrap();
    let slow = config.replace("echo migrating as", "sleep 14; echo migrating as");
    assert_ne!(slow, config);
    std::fs::write(&file, slow).unwrap();
    let slow_deploy = p.spawn_deploy("v2", &[]);
    std::thread::sleep(std::time::Duration::from_secs(12));
    let rival = p.deploy_with("v3", &[]);
    let slow_out = slow_deploy.wait_with_output().expect("wait for deploy");
    assert!(
        slow_out.status.success(),
        "the slow deploy: {}",
        text(&slow_out)
    );
    let rival_text = exited(&rival, 1);
    assert!(
        !rival_text.contains("took over an expired lock"),
        "{rival_text}"
    );
    let held = rival_text
        .lines()
        .filter(|l| l.contains("\"lock\"") && l.contains("held by"))
        .count();
    assert!(held >= 2, "both hosts' locks are held: {rival_text}");
}
