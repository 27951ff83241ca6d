//! One class-data archive per deploy, shared by the hosts (`[service] cds`):
//! on a fleet of real sshd hosts running real hello JVMs, a deploy of a new
//! artifact has one host dump the new release's archive from the class list
//! its previous run recorded and gives it to the others before the switch,
//! so every host's first start of the new release maps it; each host's run
//! that maps it keeps a fresh class list, so the next deploy can dump on any
//! of them; a copy damaged on a host before its start is ignored and that
//! host starts without it.
//! Root only: as another user these tests are ignored (skipped).

mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{hello_jar, ok, text};
use fleet::require_root;
use lifecycle::{FleetStage, poll};

/// Port the hello service uses inside every host.
const PORT: u16 = 18080;

fn fleet_with(stage_extra: &str) -> FleetStage {
    FleetStage::new(3, stage_extra, |c| {
        assert!(!c.contains("cds"), "archives are on by default: {c}");
        lifecycle::reachable(c.replace("18080", &PORT.to_string()))
    })
}

/// A copy of the hello jar with one more entry: another artifact (sha256).
fn other_jar(dir: &Path, tag: &str) -> PathBuf {
    let name = format!("hello-{tag}.jar");
    let jar = dir.join(&name);
    std::fs::copy(hello_jar(), &jar).expect("copy the jar");
    std::fs::write(
        dir.join("extra.txt"),
        format!("{tag} {}\n", std::process::id()),
    )
    .expect("write");
    let out = Command::new("zip")
        .current_dir(dir)
        .args(["-q", &name, "extra.txt"])
        .output()
        .expect("run zip");
    assert!(out.status.success(), "zip: {out:?}");
    jar
}

fn deploy_jar(p: &FleetStage, jar: &Path, version: &str, extra: &[&str]) -> Output {
    let jar = jar.to_string_lossy();
    let mut args = vec!["--json", "deploy", "fleet", "--artifact", &jar];
    args.extend(["--version", version]);
    args.extend(extra);
    p.run(&args)
}

fn sh(p: &FleetStage, host: &str, script: &str) -> String {
    p.fleet.sh_stdout(host, script)
}

/// The release `current` points to on `host`.
fn current(p: &FleetStage, host: &str) -> String {
    sh(p, host, "basename \"$(readlink /var/lib/hello/current)\"")
        .trim()
        .to_string()
}

/// Waits until every host kept the class list of its current release's run
/// (made with its archive 5 s after it is healthy).
fn class_lists_kept(p: &FleetStage) {
    for host in p.fleet.hosts() {
        let kept = poll(Duration::from_secs(180), Duration::from_millis(500), || {
            let out = sh(
                p,
                &host,
                "test -f /var/lib/hello/current/cds.classes && echo yes",
            );
            out.contains("yes").then_some(())
        });
        assert!(
            kept.is_some(),
            "{host} kept no class list: {}",
            sh(p, &host, "cat /var/log/hello/console.log")
        );
    }
}

/// Waits until each of `hosts` kept the class list its run of the current
/// release recorded while mapping its archive (healthy + 5 s), and checks
/// that it names the app's classes.
fn fresh_class_lists(p: &FleetStage, hosts: &[String]) {
    for host in hosts {
        let release = current(p, host);
        let kept =
            format!("this run's class list kept as /var/lib/hello/releases/{release}/cds.classes");
        let fresh = poll(Duration::from_secs(120), Duration::from_millis(500), || {
            console(p, host).contains(&kept).then_some(())
        });
        assert!(fresh.is_some(), "{host}: {}", console(p, host));
        let list = sh(p, host, "cat /var/lib/hello/current/cds.classes");
        assert!(list.lines().any(|l| l == "Hello"), "{host}: {list}");
    }
}

/// The host whose step says it dumped the shared archive.
fn dump_host(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("class-data archive dumped for release"))
        })
        .and_then(|e| e["host"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no host dumped: {}", text(out)))
}

/// The running JVM on `host` maps `releases/<release>/cds.jsa`.
fn maps_archive(p: &FleetStage, host: &str, release: &str) -> bool {
    let out = sh(
        p,
        host,
        &format!(
            "grep -c '/releases/{release}/cds.jsa' /proc/$(head -1 /run/hello/hello.pid)/maps"
        ),
    );
    out.trim().parse::<u32>().is_ok_and(|n| n > 0)
}

fn console(p: &FleetStage, host: &str) -> String {
    sh(p, host, "cat /var/log/hello/console.log")
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_new_artifact_gets_one_archive_dumped_on_one_host_and_every_hosts_first_start_maps_it() {
    require_root();
    let p = fleet_with("");
    ok(p.provision());
    ok(p.deploy_with("1.0.0", &[]));
    class_lists_kept(&p);

    let tmp = tempfile::tempdir().expect("tempdir");
    let jar = other_jar(tmp.path(), "2");
    let out = ok(deploy_jar(&p, &jar, "2.0.0", &[]));
    let said = text(&out);
    assert_eq!(
        said.matches("class-data archive dumped for release")
            .count(),
        1,
        "{said}"
    );
    assert_eq!(
        said.matches("shared class-data archive kept").count(),
        2,
        "{said}"
    );
    for host in p.fleet.hosts() {
        // The store gave the jar the same mtime on every host: HotSpot checks it.
        let mtime = sh(&p, &host, "stat -L -c %Y /var/lib/hello/current/hello.jar");
        assert_eq!(mtime.trim(), "946684800", "{host}");
        let r2 = current(&p, &host);
        let log = console(&p, &host);
        // Its first start of the release used the archive: not recording.
        let using = format!("class-data archive: using /var/lib/hello/releases/{r2}/cds.jsa");
        assert!(log.contains(&using), "{host}: {log}");
        assert!(!log.contains("the JVM did not map"), "{host}: {log}");
        assert!(
            maps_archive(&p, &host, &r2),
            "{host} does not map it: {log}"
        );
        assert_eq!(
            log.matches("class-data archive: none yet").count(),
            1,
            "only 1.0.0's first start recorded: {host}: {log}"
        );
    }
    // Every host's run of 2.0.0 (which maps the archive and records nothing
    // for a dump) keeps its own fresh class list, the receivers' included:
    // the next new artifact is shared without 2.0.0's dump host, also when
    // sessions close between phases (more hosts than --parallel).
    fresh_class_lists(&p, &p.fleet.hosts());
    let dumped_2 = dump_host(&out);
    let others: Vec<String> = p
        .fleet
        .hosts()
        .into_iter()
        .filter(|h| *h != dumped_2)
        .collect();
    let jar = other_jar(tmp.path(), "3");
    let only = others.join(",");
    let out = ok(deploy_jar(
        &p,
        &jar,
        "3.0.0",
        &["--parallel", "1", "--hosts", &only],
    ));
    let dumped_3 = shared_once(&p, &out, &others);
    assert_ne!(dumped_3, dumped_2, "{}", text(&out));
    // A deploy right after, before any run of 3.0.0 was healthy long enough
    // to keep its own list: 3.0.0's dump host kept the list it dumped from
    // (inherited), so this one is shared too.
    let jar = other_jar(tmp.path(), "4");
    let out = ok(deploy_jar(&p, &jar, "4.0.0", &["--hosts", &only]));
    assert_eq!(shared_once(&p, &out, &others), dumped_3, "{}", text(&out));
}

/// Asserts that the deploy `out` to `hosts` dumped one archive and gave
/// it to each other host, and that every host's new run maps it; returns
/// the host that dumped it.
fn shared_once(p: &FleetStage, out: &Output, hosts: &[String]) -> String {
    let said = text(out);
    assert_eq!(
        said.matches("class-data archive dumped for release")
            .count(),
        1,
        "{said}"
    );
    assert_eq!(
        said.matches("shared class-data archive kept").count(),
        hosts.len() - 1,
        "{said}"
    );
    for host in hosts {
        let release = current(p, host);
        assert!(
            maps_archive(p, host, &release),
            "{host}: {}",
            console(p, host)
        );
    }
    dump_host(out)
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn an_archive_damaged_on_a_host_after_it_arrived_is_ignored_and_that_host_starts_without_it() {
    require_root();
    // A paused canary leaves the others prepared, their archives given, not switched.
    let p = fleet_with("rolling = { batch = 2, canary = 1, pause = \"confirm\" }");
    ok(p.provision());
    ok(p.deploy_with("1.0.0", &[]));
    ok(p.run(&["--json", "deploy", "fleet", "--continue"]));
    class_lists_kept(&p);

    let tmp = tempfile::tempdir().expect("tempdir");
    let jar = other_jar(tmp.path(), "2");
    let out = ok(deploy_jar(&p, &jar, "2.0.0", &[]));
    let said = text(&out);
    assert_eq!(
        said.matches("shared class-data archive kept").count(),
        2,
        "{said}"
    );
    let r2 = current(&p, "app1");
    // One byte flipped in the middle of app3's copy, its size and name kept.
    let damage = format!(
        "f=/var/lib/hello/releases/{r2}/cds.jsa; chmod u+w $f; \
         printf '\\377' | dd of=$f bs=1 seek=$(( $(stat -c %s $f) / 2 )) conv=notrunc 2>/dev/null; \
         chmod 0444 $f; echo done"
    );
    assert!(sh(&p, "app3", &damage).contains("done"));
    let cont = ok(p.run(&["--json", "deploy", "fleet", "--continue"]));
    assert!(text(&cont).contains("2.0.0"), "{}", text(&cont));
    assert_eq!(
        lifecycle::served(&p.fleet.ip("app3"), PORT).as_deref(),
        Some("2.0.0")
    );
    let log = console(&p, "app3");
    assert!(log.contains("class-data archive ignored"), "{log}");
    assert!(
        !maps_archive(&p, "app3", &r2),
        "app3 maps the damaged archive"
    );
    for host in ["app1", "app2"] {
        assert!(maps_archive(&p, host, &r2), "{host}: {}", console(&p, host));
    }
}
