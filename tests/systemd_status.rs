//! `status` on a host that boots systemd, where the unit runs the supervisor
//! (as root, the service as its user) and the run dir is root's
//! (`RuntimeDirectory=`): root's `service status` proves and believes the
//! supervisor, and a supervisor killed there leaves no orphan behind —
//! systemd ends the unit's leftovers and starts a new supervisor. Root only.

mod common;
use common::ok;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/lifecycle.rs"]
mod lifecycle;
#[path = "support/systemd_host.rs"]
mod systemd_host;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::text;
use lifecycle::StageProject;
use systemd_host::{SystemState, SystemdFleet};

fn fleet() -> Arc<SystemdFleet> {
    systemd_host::shared(1)
}

/// A copy of the hello project whose `systemd` stage is the one host.
fn project(f: &SystemdFleet, host: &str) -> StageProject {
    StageProject::one_host(
        "systemd",
        host,
        f.ssh_config(),
        "",
        lifecycle::short_timeouts,
    )
}

/// `service status hello` on the host, as root: exit code and first line.
fn host_status(f: &SystemdFleet, host: &str) -> (Option<i32>, String) {
    let out = f.ssh(host, "/usr/local/bin/shipjar service status hello");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// One line of `systemctl show -p NAME --value hello.service`.
fn unit_value(f: &SystemdFleet, host: &str, name: &str) -> String {
    let out = f.ssh(
        host,
        &format!("systemctl show -p {name} --value hello.service"),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[ignore = "needs root"]
fn root_believes_the_units_supervisor_and_systemd_leaves_no_orphan() {
    let f = fleet();
    let host = "app1";
    assert_eq!(
        f.state(host),
        Some(SystemState::Running),
        "{}",
        f.diagnostics(host)
    );
    let p = project(&f, host);
    p.provision();
    p.deployed_else("1.0.0", &[], || f.diagnostics(host));

    // The run dir's files are root's, as under an init script; root proves
    // the supervisor (its program, command line, owner) and believes it.
    let owner = f.ssh(host, "stat -c %U /run/hello/supervisor.json");
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), "root");
    let (code, said) = host_status(&f, host);
    assert_eq!(code, Some(0), "{said}\n{}", f.diagnostics(host));
    assert!(said.starts_with("running: pid "), "{said}");
    ok(p.run(&["status", "systemd"]));

    // Kill the supervisor: systemd ends what is left of the unit and starts
    // a new supervisor, which starts a new service; no orphan remains.
    let supervisor = unit_value(&f, host, "MainPID");
    let service = f.ssh(host, "head -n 1 /run/hello/hello.pid");
    let service = String::from_utf8_lossy(&service.stdout).trim().to_string();
    assert!(
        !service.is_empty() && supervisor != "0",
        "{supervisor} {service}"
    );
    let out = f.ssh(host, &format!("kill -9 {supervisor}"));
    assert!(out.status.success(), "{}", text(&out));
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, said) = host_status(&f, host);
        let main = unit_value(&f, host, "MainPID");
        let old_alive = f
            .ssh(host, &format!("test -d /proc/{service}"))
            .status
            .success();
        if code == Some(0) && main != supervisor && main != "0" && !old_alive {
            assert!(said.starts_with("running: pid "), "{said}");
            assert!(!said.contains(&format!("pid {service},")), "{said}");
            break;
        }
        assert!(
            Instant::now() < until,
            "no new supervisor, or the old service lives on: {code:?} {said}; MainPID {main}, \
             old service alive: {old_alive}\n{}",
            f.diagnostics(host)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
