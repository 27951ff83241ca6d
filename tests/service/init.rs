//! Generated init integration: the systemd unit passes `systemd-analyze
//! verify`, the LSB script passes shellcheck, and the script's actions,
//! run for real against the hello service, exit with LSB codes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::host::{BIN, Host, Spec, free_port};

fn shipjar(host: &Host, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .arg("--root")
        .arg(host.root())
        .args(["--shipjar", BIN])
        .stdin(Stdio::null())
        .output()
        .expect("run shipjar");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tool(program: &str) -> Command {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "{program} is missing: install it (run-tests does, as root)"
    );
    Command::new(program)
}

/// Runs the checker `program` (see [`tool`]) with `args` on `file`; it must
/// pass, else the test fails showing what it said.
#[track_caller]
fn assert_passes(program: &str, args: &[&str], file: &Path) {
    let out = tool(program).args(args).arg(file).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let host = Host::new("unitsvc");
    let mut spec = Spec::hello(free_port(), &[]);
    spec.user = Some("nobody".into());
    host.release("r1", &spec);
    shipjar(&host, &["service", "install-unit", "unitsvc"]);
    let path = host.root().join("etc/systemd/system/unitsvc.service");
    let text = fs::read_to_string(&path).expect("unit written");
    for line in [
        "Type=notify".to_string(),
        format!(
            "ExecStart={BIN} service run unitsvc --root {}",
            host.root().display()
        ),
        "SuccessExitStatus=143".to_string(),
        "TimeoutStartSec=30000ms".to_string(),
        "TimeoutStopSec=15000ms".to_string(),
        "PrivateTmp=no".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    // The supervisor stays root and drops to `nobody` for the service alone.
    assert!(!text.contains("User="), "{text}");
    assert_passes("systemd-analyze", &["verify"], &path);
}

#[test]
fn the_init_script_passes_shellcheck_and_its_actions_follow_lsb() {
    let host = Host::new("lsbsvc");
    let port = free_port();
    host.release("r1", &Spec::hello(port, &[]));
    shipjar(&host, &["service", "install-initscript", "lsbsvc"]);
    let script = host.root().join("etc/init.d/lsbsvc");
    let mode = fs::metadata(&script).expect("script").permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    let text = fs::read_to_string(&script).expect("script");
    assert!(text.contains("### BEGIN INIT INFO"), "{text}");

    assert_passes("shellcheck", &[], &script);

    let action = |what: &str| -> i32 {
        let out = Command::new("sh")
            .arg(&script)
            .arg(what)
            .stdin(Stdio::null())
            .output()
            .expect("run the init script");
        host.remember();
        out.status.code().unwrap_or(-1)
    };
    assert_eq!(action("status"), 3, "status when stopped");
    assert_eq!(action("stop"), 0, "stop when stopped");
    assert_eq!(action("start"), 0, "start when stopped");
    assert_eq!(
        crate::common::http_get(port, "/health").map(|r| r.0),
        Some(200)
    );
    // While it runs, every action but stop answers 0 and keeps it running.
    for what in [
        "start",
        "status",
        "reload",
        "force-reload",
        "restart",
        "try-restart",
        "status",
    ] {
        assert_eq!(action(what), 0, "{what} when running");
    }
    assert_eq!(action("stop"), 0, "stop when running");
    assert_eq!(action("status"), 3, "status when stopped again");
    assert_eq!(action("try-restart"), 0, "try-restart when stopped");
    assert_eq!(action("status"), 3, "try-restart started nothing");
    assert_eq!(action("bogus"), 2, "an unknown action");

    // A stale pidfile: the pid is gone.
    fs::create_dir_all(host.run_dir()).expect("run dir");
    fs::write(host.pidfile(), "999999999\n1\n").expect("pidfile");
    assert_eq!(action("status"), 1, "status with a stale pidfile");
    assert_eq!(action("start"), 0, "start over a stale pidfile");
    assert_eq!(action("stop"), 0);
}
