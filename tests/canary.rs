//! Canaries with a pause (`rolling = { canary, pause }`) on a fleet of real
//! sshd hosts running real hello JVMs: a timed pause watched and passed, a
//! canary crashing inside its pause put back with the rest untouched, and a
//! `pause = "confirm"` deploy that exits, leaves its lock and record on the
//! hosts, refuses another deploy, and is continued (the same release) or
//! aborted. Root only: as another user these tests are ignored (skipped).

mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;

use std::process::Output;

use common::{host_field, last_json, text};
use fleet::require_root;
use lifecycle::FleetStage;

/// Port the hello service uses inside every host.
const PORT: u16 = 18080;

/// A 3-host fleet whose stage has `rolling`.
fn fleet_with(rolling: &str) -> FleetStage {
    FleetStage::new(3, &format!("rolling = {rolling}"), |c| {
        lifecycle::reachable(c.replace("18080", &PORT.to_string()))
    })
}

/// The version each host serves, from outside the hosts.
fn served(p: &FleetStage) -> Vec<Option<String>> {
    p.fleet
        .hosts()
        .iter()
        .map(|h| lifecycle::served(&p.fleet.ip(h), PORT))
        .collect()
}

fn versions(list: &[&str]) -> Vec<Option<String>> {
    list.iter().map(|v| Some(v.to_string())).collect()
}

/// Every JSON event line of a `--json` run, in order.
fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some())
        .collect()
}

/// Position of the first event `matches` accepts, else a failure showing the run.
fn position(out: &Output, what: &str, matches: impl Fn(&serde_json::Value) -> bool) -> usize {
    events(out)
        .iter()
        .position(matches)
        .unwrap_or_else(|| panic!("no event for {what}:\n{}", text(out)))
}

/// The pause made 8 s, then 3.0.0 deployed crashing 3 s after its start
/// (past its gate, inside the pause): the failed run and its result.
fn crash_in_an_8s_pause(p: &FleetStage) -> (Output, serde_json::Value) {
    let config = std::fs::read_to_string(p.path().join("shipjar.toml")).expect("config");
    std::fs::write(
        p.path().join("shipjar.toml"),
        config.replace("pause = \"2s\"", "pause = \"8s\""),
    )
    .expect("write config");
    let out = p.deploy_with("3.0.0", &["--env", "CRASH_AFTER_S=3"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let result = last_json(&out);
    (out, result)
}

/// The state of each host in a deploy's result, in the stage's order.
fn states(result: &serde_json::Value) -> Vec<String> {
    ["app1", "app2", "app3"]
        .iter()
        .map(|h| {
            host_field(result, h)["state"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_timed_pause_watches_the_canary_then_deploys_the_rest_and_a_crash_in_it_reverts_the_canary_only()
 {
    require_root();
    let p = fleet_with("{ batch = 1, canary = 1, pause = \"2s\" }");
    p.provision();
    let first = p.deploy_with("1.0.0", &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(served(&p), versions(&["1.0.0"; 3]));

    let out = p.deploy_with("2.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let result = last_json(&out);
    assert_eq!(states(&result), ["updated"; 3], "{result}");
    // The canary is switched and watched before any other host switches.
    let watched = position(&out, "app1's watch", |e| {
        e["host"] == "app1" && e["step"] == "watch" && e["status"] == "ok"
    });
    let rest = position(&out, "batch 1", |e| {
        e["event"] == "note" && e["message"] == "batch 1: app2"
    });
    let announced = position(&out, "the canary", |e| {
        e["event"] == "note" && e["message"] == "canary: app1"
    });
    assert!(announced < watched && watched < rest, "{}", text(&out));
    assert_eq!(served(&p), versions(&["2.0.0"; 3]));

    // A release that crashes 3 s after its start passes its gate, then dies
    // inside an 8 s pause: the canary goes back, nothing else is touched.
    let (out, result) = crash_in_an_8s_pause(&p);
    assert_eq!(
        states(&result),
        ["reverted", "unchanged", "unchanged"],
        "{result}"
    );
    let canary = host_field(&result, "app1");
    assert_eq!(canary["failed_step"], "watch", "{result}");
    let reason = canary["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("crashed "), "{reason}");
    assert!(reason.contains("into the canary's pause"), "{reason}");
    let stopped = result["stopped"].as_str().unwrap_or_default();
    assert!(
        stopped.contains("the canary failed during its 8s pause on app1"),
        "{stopped}"
    );
    for host in ["app2", "app3"] {
        assert_eq!(
            host_field(&result, host)["previous"],
            host_field(&result, "app1")["previous"]
        );
        assert!(
            !events(&out)
                .iter()
                .any(|e| e["host"] == host && e["step"] == "activate"),
            "{host} must not be switched: {}",
            text(&out)
        );
    }
    assert_eq!(served(&p), versions(&["2.0.0"; 3]));
    let (code, status) = p.status_json();
    assert_eq!(code, 0, "one version everywhere again: {status}");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_confirm_pause_exits_keeps_the_stage_locked_and_continue_deploys_the_same_release() {
    require_root();
    let p = fleet_with("{ batch = 2, canary = 1, pause = \"confirm\" }");
    p.provision();
    // A first deploy pauses too; continue it to have 1.0.0 everywhere.
    let first = p.deploy_with("1.0.0", &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let cont = p.run(&["--json", "deploy", "fleet", "--continue"]);
    assert_eq!(cont.status.code(), Some(0), "{}", text(&cont));
    assert_eq!(served(&p), versions(&["1.0.0"; 3]));

    let out = p.deploy_with("2.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let result = last_json(&out);
    assert_eq!(
        states(&result),
        ["updated", "waiting", "waiting"],
        "{result}"
    );
    let release = result["release"].as_str().expect("release").to_string();
    assert_eq!(
        result["pending_canary"]["release"],
        release.as_str(),
        "{result}"
    );
    let plain = p.run(&["status", "fleet"]);
    let said = String::from_utf8_lossy(&plain.stdout).to_string();
    assert!(
        said.contains(&format!(
            "pending canary: release {release} (version 2.0.0) on app1"
        )),
        "{said}"
    );
    assert!(said.contains("`shipjar deploy fleet --continue`"), "{said}");
    assert_eq!(
        plain.status.code(),
        Some(0),
        "a canary waiting is not drift: {said}"
    );
    let (_, status) = p.status_json();
    assert_eq!(
        status["pending_canary"]["release"],
        release.as_str(),
        "{status}"
    );
    assert_eq!(served(&p), versions(&["2.0.0", "1.0.0", "1.0.0"]));
    // The operator is gone; the lock stays on every host, naming the canary.
    for host in p.fleet.hosts() {
        let lock = p.fleet.ssh(&host, "cat /run/hello/deploy.lock");
        let record = String::from_utf8_lossy(&lock.stdout);
        assert!(
            record.contains(&format!("\"release\":\"{release}\"")),
            "{host}: {record}"
        );
    }

    // Another deploy is refused, saying why and what to do.
    let refused = p.deploy_with("3.0.0", &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let why = text(&refused);
    assert!(
        why.contains(&format!("a pending canary of release {release}")),
        "{why}"
    );
    assert!(why.contains("shipjar deploy fleet --continue"), "{why}");
    assert_eq!(served(&p), versions(&["2.0.0", "1.0.0", "1.0.0"]));

    let cont = p.run(&["--json", "deploy", "fleet", "--continue"]);
    assert_eq!(cont.status.code(), Some(0), "{}", text(&cont));
    let result = last_json(&cont);
    assert_eq!(
        result["release"],
        release.as_str(),
        "the same release: {result}"
    );
    assert_eq!(states(&result), ["updated"; 3], "{result}");
    for host in ["app2", "app3"] {
        assert_eq!(
            host_field(&result, host)["uploaded_bytes"],
            0,
            "nothing built or sent: {result}"
        );
    }
    assert_eq!(served(&p), versions(&["2.0.0"; 3]));
    let (code, status) = p.status_json();
    assert_eq!(code, 0, "{status}");
    assert!(status["pending_canary"].is_null(), "{status}");
    for host in status["hosts"].as_array().expect("hosts") {
        assert_eq!(
            host["status"]["current"]["id"],
            release.as_str(),
            "{status}"
        );
    }
    // Nothing pending any more: --continue says where to look.
    let nothing = p.run(&["deploy", "fleet", "--continue"]);
    assert_eq!(nothing.status.code(), Some(1), "{}", text(&nothing));
    assert!(
        text(&nothing).contains("nothing is pending on stage fleet"),
        "{}",
        text(&nothing)
    );
    assert!(
        text(&nothing).contains("`shipjar status fleet`"),
        "{}",
        text(&nothing)
    );
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn abort_puts_a_waiting_canary_back_and_unlocks_the_stage() {
    require_root();
    let p = fleet_with("{ canary = 1, pause = \"confirm\" }");
    p.provision();
    assert_eq!(p.deploy_with("1.0.0", &[]).status.code(), Some(0));
    let cont = p.run(&["--json", "deploy", "fleet", "--continue"]);
    assert_eq!(cont.status.code(), Some(0), "{}", text(&cont));
    let paused = p.deploy_with("2.0.0", &[]);
    assert_eq!(paused.status.code(), Some(0), "{}", text(&paused));
    assert_eq!(served(&p), versions(&["2.0.0", "1.0.0", "1.0.0"]));

    let abort = p.run(&["--json", "deploy", "fleet", "--abort"]);
    assert_eq!(abort.status.code(), Some(0), "{}", text(&abort));
    let result = last_json(&abort);
    assert_eq!(
        states(&result),
        ["reverted", "unchanged", "unchanged"],
        "{result}"
    );
    assert_eq!(served(&p), versions(&["1.0.0"; 3]));
    let (code, status) = p.status_json();
    assert_eq!(code, 0, "{status}");
    assert!(status["pending_canary"].is_null(), "{status}");
    // The stage is free again: a new deploy pauses after its own canary.
    let again = p.deploy_with("3.0.0", &[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(served(&p), versions(&["3.0.0", "1.0.0", "1.0.0"]));
    // unlock clears a waiting canary, saying which hosts still run it.
    let unlock = p.run(&["unlock", "fleet"]);
    let said = text(&unlock);
    assert_eq!(unlock.status.code(), Some(0), "{said}");
    assert!(
        said.contains("app1: removed the lock of a pending canary of release"),
        "{said}"
    );
    assert!(said.contains("app1 still runs release"), "{said}");
    let (_, status) = p.status_json();
    assert!(status["pending_canary"].is_null(), "{status}");
}

/// The operator, SIGKILLed if the test ends before it does.
struct Operator(std::process::Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn ctrl_c_during_the_pause_puts_the_canary_back_at_once() {
    use std::io::Read;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    require_root();
    let p = fleet_with("{ batch = 1, canary = 1, pause = \"1s\" }");
    p.provision();
    let first = p.deploy_with("1.0.0", &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let file = p.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&file).expect("config");
    std::fs::write(&file, config.replace("pause = \"1s\"", "pause = \"5m\"")).expect("config");
    let args = p.deploy_args("2.0.0", &[]);
    // Plain output: the progress lines on stderr.
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--json")
        .collect();
    let mut operator = Operator(
        p.command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn deploy"),
    );
    let mut stderr = std::io::BufReader::new(operator.0.stderr.take().expect("stderr"));
    common::wait_for_line(&mut stderr, "canary: watching app1 for 5m");
    assert_eq!(served(&p)[0].as_deref(), Some("2.0.0"));
    let interrupted = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(operator.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT the operator");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("stderr");
    let status = operator.0.wait().expect("wait");
    let mut stdout = String::new();
    if let Some(mut out) = operator.0.stdout.take() {
        out.read_to_string(&mut stdout).expect("stdout");
    }
    assert!(
        interrupted.elapsed() < Duration::from_secs(60),
        "the 5 m pause must end at Ctrl-C"
    );
    assert_eq!(status.code(), Some(130), "{rest}\n{stdout}");
    assert!(
        rest.contains(
            "interrupted: ending the canary's pause; app1 goes back to the previous release"
        ),
        "{rest}"
    );
    assert!(
        stdout
            .contains("interrupted (Ctrl-C) during the canary's 5m pause: the canary was put back"),
        "{stdout}"
    );
    assert_eq!(served(&p), versions(&["1.0.0"; 3]));
    let (code, status) = p.status_json();
    assert_eq!(code, 0, "{status}");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_continue_whose_batch_fails_puts_the_canary_back_on_its_recorded_release_too() {
    require_root();
    let p = fleet_with("{ batch = 1, canary = 1, pause = \"confirm\" }");
    // 2.0.0 fails to start on app3 only (env values are templates, rendered
    // when the canary's deploy prepares the release everywhere).
    let file = p.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&file).expect("config").replace(
        "BIND = \"0.0.0.0\" }",
        "BIND = \"0.0.0.0\", FAIL_ON_START = \"{{ 'yes' if host == 'app3' and version == '2.0.0' else 'no' }}\" }",
    );
    std::fs::write(&file, config).expect("write config");
    p.provision();
    assert_eq!(p.deploy_with("1.0.0", &[]).status.code(), Some(0));
    let cont = p.run(&["--json", "deploy", "fleet", "--continue"]);
    assert_eq!(cont.status.code(), Some(0), "{}", text(&cont));
    let paused = p.deploy_with("2.0.0", &[]);
    assert_eq!(paused.status.code(), Some(0), "{}", text(&paused));

    let out = p.run(&["--json", "deploy", "fleet", "--continue"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let result = last_json(&out);
    assert_eq!(
        states(&result),
        ["reverted", "reverted", "reverted"],
        "{result}"
    );
    assert_eq!(served(&p), versions(&["1.0.0"; 3]));
    let (code, status) = p.status_json();
    assert_eq!(code, 0, "{status}");
    assert!(status["pending_canary"].is_null(), "{status}");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn behind_the_proxy_the_canary_instance_is_watched_and_a_crash_in_its_pause_returns_traffic_to_the_old_one()
 {
    require_root();
    let p = FleetStage::new(
        3,
        &format!(
            "rolling = {{ batch = 1, canary = 1, pause = \"2s\" }}\n\
             proxy = {{ listen = \"0.0.0.0:{PORT}\", ports = [18081, 18082] }}"
        ),
        lifecycle::reachable,
    );
    p.provision();
    let first = p.deploy_with("1.0.0", &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let out = p.deploy_with("2.0.0", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(states(&last_json(&out)), ["updated"; 3], "{}", text(&out));
    assert_eq!(served(&p), versions(&["2.0.0"; 3]));

    // The canary's new instance crashes inside the pause: the proxy goes back
    // to the instance it left, which still serves 2.0.0.
    let (out, result) = crash_in_an_8s_pause(&p);
    assert_eq!(
        states(&result),
        ["reverted", "unchanged", "unchanged"],
        "{}",
        text(&out)
    );
    let canary = host_field(&result, "app1");
    assert_eq!(canary["failed_step"], "watch", "{result}");
    assert!(
        canary["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("into the canary's pause"),
        "{result}"
    );
    assert_eq!(served(&p), versions(&["2.0.0"; 3]));
    let (code, status) = p.status_json();
    assert_eq!(code, 0, "one version everywhere again: {status}");
}
