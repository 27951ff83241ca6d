//! The whole pipeline on one machine: `shipjar deploy local` with real JVMs
//! from `examples/hello`, asserting on what a user sees.

mod common;
use common::{exited_saying, ok};

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{Project, hello_jar, text};

#[test]
fn first_deploy_serves_its_version_and_status_is_consistent() {
    let p = Project::new();
    ok(p.deploy("1.0.0", &[]));
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
    let (status, body) = p.get("/health").expect("health answers");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // The release on disk: config files with the right modes, the manifest, the log.
    let current = p.current().expect("current is set");
    let release = p.lib().join("releases").join(&current);
    let mode = |f: &str| {
        std::fs::metadata(release.join("config").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("database.properties"), 0o600);
    assert_eq!(mode("service.properties"), 0o644);
    let props = std::fs::read_to_string(release.join("config/service.properties")).unwrap();
    assert!(props.contains("version=1.0.0\n"), "{props}");
    assert!(props.contains("stage=local\n"), "{props}");
    assert!(release.join("RELEASE").is_file());
    assert!(
        std::fs::read_link(release.join("hello.jar"))
            .unwrap()
            .starts_with("../../artifacts")
    );
    let revisions = p.revisions();
    assert_eq!(revisions.len(), 1);
    assert!(
        revisions[0].contains(&format!("\tdeploy\t{current}\t1.0.0\t")),
        "{revisions:?}"
    );
    assert!(revisions[0].contains("\tsuccess\t"), "{revisions:?}");

    // /config shows the database settings from the stage vars, never the password.
    let (_, config) = p.get("/config").unwrap();
    assert!(
        config.contains("jdbc:postgresql://127.0.0.1:5432/hello"),
        "{config}"
    );

    let (code, json) = p.status_json();
    assert_eq!(code, 0, "{json}");
    let host = &json["hosts"][0];
    assert_eq!(host["flags"], serde_json::json!([]));
    assert_eq!(host["status"]["current"]["id"], current.as_str());
    assert_eq!(host["status"]["service"]["release"], current.as_str());
    assert_eq!(host["status"]["reported_version"], "1.0.0");
    assert_eq!(host["status"]["service"]["healthy"], true);
    assert!(host["status"]["service"]["pid"].as_i64().unwrap() > 1);

    // The host-side view agrees.
    ok(p.service("status", &["--json"]));
}

#[test]
fn redeploy_and_rollback_upload_nothing() {
    let p = Project::new();
    let first = ok(p.deploy_json("1.0.0", &[]));
    let uploaded = |out: &std::process::Output| -> u64 {
        let last = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        let v: serde_json::Value = serde_json::from_str(&last).expect("json result");
        v["hosts"][0]["uploaded_bytes"]
            .as_u64()
            .expect("uploaded_bytes")
    };
    let jar_size = std::fs::metadata(hello_jar()).unwrap().len();
    assert_eq!(uploaded(&first), jar_size);
    let first_release = p.current().unwrap();

    let second = ok(p.deploy_json("2.0.0", &[]));
    assert_eq!(
        uploaded(&second),
        0,
        "same artifact must not be uploaded again"
    );
    assert_eq!(p.served_version().as_deref(), Some("2.0.0"));

    let back = ok(p.run(&["--json", "rollback", "local"]));
    assert_eq!(uploaded(&back), 0);
    assert_eq!(p.current().as_deref(), Some(first_release.as_str()));
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
    let revisions = p.revisions();
    assert!(
        revisions.last().unwrap().contains("\trollback\t"),
        "{revisions:?}"
    );

    let releases = p.run(&["releases", "local"]);
    assert_eq!(releases.status.code(), Some(0));
    let listing = String::from_utf8_lossy(&releases.stdout);
    assert!(listing.contains(&format!("* {first_release}")), "{listing}");
}

#[test]
fn env_override_is_recorded_in_the_release_and_restored_by_rollback() {
    let p = Project::new();
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    ok(p.deploy("2.0.0", &["--env", "STARTUP_DELAY_MS=300"]));
    let manifest = |id: &str| {
        std::fs::read_to_string(p.lib().join("releases").join(id).join("RELEASE")).unwrap()
    };
    assert!(manifest(&p.current().unwrap()).contains("STARTUP_DELAY_MS"));
    assert_eq!(p.run(&["rollback", "local"]).status.code(), Some(0));
    assert!(!manifest(&p.current().unwrap()).contains("STARTUP_DELAY_MS"));
}

fn assert_failed_deploy_keeps_previous(p: &Project, knob: &str, step_words: &str) {
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let good = p.current().unwrap();
    let out = p.deploy("2.0.0", &["--env", knob]);
    let all = exited_saying(&out, 1, "FAILED at step `health`");
    assert!(all.contains(step_words), "{all}");
    assert!(
        all.contains(&format!("back on release {good} (version 1.0.0), healthy")),
        "{all}"
    );
    assert_eq!(p.current().as_deref(), Some(good.as_str()));
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
    let (code, json) = p.status_json();
    assert_eq!(code, 0, "{json}");
    let revisions = p.revisions();
    let failed = &revisions[revisions.len() - 1];
    assert!(
        failed.contains("\t2.0.0\t") && failed.contains("\tfailed\t"),
        "{revisions:?}"
    );
}

#[test]
fn deploy_failing_at_start_leaves_the_previous_version_serving() {
    let p = Project::new();
    assert_failed_deploy_keeps_previous(&p, "FAIL_ON_START=1", "FAIL_ON_START is set");
}

#[test]
fn deploy_never_healthy_leaves_the_previous_version_serving() {
    let p =
        Project::with_config(|c| c.replace("start_timeout = \"20s\"", "start_timeout = \"3s\""));
    assert_failed_deploy_keeps_previous(&p, "HANG_ON_START=1", "not healthy");
}

#[test]
fn failing_first_deploy_leaves_nothing_running() {
    let p = Project::new();
    let out = p.deploy("1.0.0", &["--env", "FAIL_ON_START=1"]);
    exited_saying(&out, 1, "no earlier release");
    assert_eq!(p.current(), None);
    assert!(p.get("/health").is_none());
}

#[test]
fn version_mismatch_fails_the_deploy() {
    // The service reports its name under this key, which never equals the version.
    let p = Project::with_config(|c| c.replace("key = \"version\"", "key = \"name\""));
    let out = p.deploy("1.0.0", &[]);
    let all = exited_saying(&out, 1, "FAILED at step `version`");
    assert!(
        all.contains("reports version `hello`, expected `1.0.0`"),
        "{all}"
    );
}

#[test]
fn keeps_only_n_releases_but_never_current_or_previous_good() {
    let p = Project::with_config(|c| c.replace("keep = 5", "keep = 2"));
    for v in ["1", "2", "3", "4"] {
        ok(p.deploy(v, &[]));
    }
    let ids = p.release_ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids.last(), p.current().as_ref());
    // A failed deploy adds a release, but the good ones stay.
    let out = p.deploy("5", &["--env", "FAIL_ON_START=1"]);
    assert_eq!(out.status.code(), Some(1));
    let after = p.release_ids();
    assert!(
        after.contains(&ids[0]) && after.contains(&ids[1]),
        "{after:?}"
    );
    let artifacts = std::fs::read_dir(p.lib().join("artifacts"))
        .unwrap()
        .count();
    assert_eq!(artifacts, 1);
}

#[test]
fn stale_pidfile_of_an_unrelated_process_reads_as_not_running() {
    let p = Project::new();
    let mut unrelated = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let run_dir = p.root().join("run/hello");
    std::fs::create_dir_all(&run_dir).unwrap();
    // Right pid, wrong start time: the pid now belongs to someone else.
    std::fs::write(
        run_dir.join("hello.pid"),
        format!("{}\n1\n", unrelated.id()),
    )
    .unwrap();
    let out = p.service("status", &[]);
    let _ = unrelated.kill();
    let _ = unrelated.wait();
    exited_saying(&out, 1, "stale");
}

#[test]
fn unknown_config_key_exits_2_naming_file_line_and_key() {
    let p = Project::with_config(|c| c.replace("[health]\n", "[health]\ncolour = \"red\"\n"));
    let out = p.deploy("1.0.0", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(err.contains("shipjar.toml:"), "{err}");
    assert!(err.contains("key `health.colour`"), "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");
    assert!(!p.lib().exists(), "nothing may change on a config error");
}

#[test]
fn undefined_template_variable_exits_2_naming_template_and_line() {
    let p = Project::new();
    std::fs::write(
        p.path().join("deploy/database.properties"),
        "url={{ db_url }}\nuser={{ db_usr }}\n",
    )
    .unwrap();
    let out = p.deploy("1.0.0", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        err.contains("template deploy/database.properties:2: undefined variable `db_usr`"),
        "{err}"
    );
    assert!(!p.lib().exists(), "nothing may change on a template error");
}

#[test]
fn second_concurrent_deploy_fails_fast_naming_the_lock_holder() {
    let p = Project::new();
    // A slow start keeps the first deploy holding the lock for a while.
    let first = p.spawn_slow_deploy("1.0.0", 4000);
    let first_pid = first.id();
    let started = Instant::now();
    let second = p.deploy("2.0.0", &[]);
    let took = started.elapsed();
    let first_out = first.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(err.contains("the deploy lock is held by"), "{err}");
    assert!(err.contains(&format!("pid {first_pid}")), "{err}");
    assert!(err.contains("deploy local"), "{err}");
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(
        said.contains(
            "local is now not changed (this run did not get to ask which release it runs)"
        ),
        "{said}"
    );
    assert!(!said.contains("(none)"), "{said}");
    assert!(
        took < Duration::from_secs(3),
        "the second deploy must fail at once, took {took:?}"
    );
    assert_eq!(first_out.status.code(), Some(0), "{}", text(&first_out));
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
}

#[test]
fn secret_never_appears_in_output_or_records() {
    let p = Project::new();
    let mut outputs = vec![p.deploy("1.0.0", &[])];
    outputs.push(p.deploy_json("2.0.0", &[]));
    outputs.push(p.deploy("3.0.0", &["--env", "FAIL_ON_START=1"]));
    outputs.push(p.run(&["check", "local"]));
    outputs.push(p.run(&["--json", "check", "local"]));
    outputs.push(p.run(&["status", "local"]));
    outputs.push(p.run(&["--json", "status", "local"]));
    outputs.push(p.run(&["releases", "local"]));
    outputs.push(p.run(&["rollback", "local"]));
    // A template that misuses the secret must fail without showing it.
    let misuse = Project::new();
    std::fs::write(
        misuse.path().join("deploy/logging-local.properties"),
        "x={{ secrets.db_password }}\n",
    )
    .unwrap();
    let out = misuse.run(&["check", "local"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!text(&out).contains(&misuse.secret));
    assert_eq!(p.served_version().as_deref(), Some("1.0.0"));
    let (_, config) = p.get("/config").unwrap();
    assert!(!config.contains(&p.secret), "/config leaks the password");
    for out in &outputs {
        assert!(
            !text(out).contains(&p.secret),
            "secret printed:\n{}",
            text(out)
        );
    }
    // Every file shipjar wrote, except the secret config files themselves.
    let mut stack = vec![p.path().to_path_buf()];
    let mut scanned = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                // The release's SECRETS: the values the host masks, 0600 too.
                let is_secret_file = path.ends_with("config/database.properties")
                    || path.file_name().is_some_and(|n| n == "SECRETS");
                let content = std::fs::read(&path).unwrap();
                let found = String::from_utf8_lossy(&content).contains(&p.secret);
                if is_secret_file {
                    assert!(found, "the secret file should hold the secret");
                    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
                } else {
                    assert!(!found, "secret found in {}", path.display());
                    scanned += 1;
                }
            }
        }
    }
    assert!(scanned > 10, "scanned only {scanned} files");
}

#[test]
fn build_records_artifact_sha_and_version_then_deploy_skip_build_uses_it() {
    let p = Project::new();
    // The copy has no sources: point the build at the example's.
    let example = common::example_dir();
    let build_dir = p.path().join("build");
    let config = std::fs::read_to_string(p.path().join("shipjar.toml"))
        .unwrap()
        .replace(
            "command = \"sh build.sh\"",
            &format!(
                "command = \"BUILD_DIR='{}' sh '{}'\"",
                build_dir.display(),
                example.join("build.sh").display()
            ),
        );
    std::fs::write(p.path().join("shipjar.toml"), config).unwrap();
    ok(p.run(&["--json", "build", "--version", "7.7.7"]));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join(".shipjar/build.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["version"], "7.7.7");
    assert_eq!(manifest["sha256"].as_str().unwrap().len(), 64);
    ok(p.run(&["deploy", "local", "--skip-build"]));
    assert_eq!(p.served_version().as_deref(), Some("7.7.7"));
}

#[test]
fn ctrl_c_mid_deploy_releases_the_lock_and_leaves_a_healthy_release() {
    let p = Project::new();
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let child = p.spawn_slow_deploy("2.0.0", 2000);
    let lock = p.root().join("run/hello/deploy.lock");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    // The lock is gone at once (no lease to wait out) and the host serves a complete release.
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap_or_default(),
        "",
        "{}",
        text(&out)
    );
    let served = p.served_version();
    assert!(
        matches!(served.as_deref(), Some("1.0.0" | "2.0.0")),
        "{served:?}"
    );
    ok(p.deploy("3.0.0", &[]));
}

#[test]
fn a_damaged_build_record_is_a_clear_error_not_a_crash() {
    let p = Project::new();
    let jar = common::hello_jar();
    std::fs::create_dir_all(p.path().join(".shipjar")).unwrap();
    for sha in ["abc", "", "é", &"Z".repeat(64)] {
        let record = serde_json::json!({
            "artifact": jar, "sha256": sha, "size": 1, "version": "1",
            "git_commit": null, "build_time": "",
        });
        std::fs::write(p.path().join(".shipjar/build.json"), record.to_string()).unwrap();
        let out = p.run(&["deploy", "local", "--skip-build"]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "sha {sha:?}: {said}");
        assert!(said.contains("build.json is damaged"), "{said}");
        assert!(said.contains("run `shipjar build` again"), "{said}");
        assert!(!said.contains("panicked"), "{said}");
    }
    assert!(p.current().is_none(), "nothing was deployed");
}

#[test]
fn no_process_shipjar_starts_inherits_the_operators_secret_variables() {
    let p = Project::with_config(|c| {
        c.replace(
            "command = \"sh build.sh\"",
            "command = \"env > build-env.txt; exit 3\"",
        )
        .replace(
            "version_command = \"git describe --always --dirty 2>/dev/null || echo dev\"",
            "version_command = \"env > version-env.txt; echo 1\"",
        )
    });
    ok(p.deploy("1.0.0", &[]));
    let (_, status) = p.status_json();
    let host = &status["hosts"][0]["status"]["service"];
    let supervisor = host["supervisor_pid"].as_i64().expect("supervisor pid");
    let environ = std::fs::read(format!("/proc/{supervisor}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("HELLO_DB_PASSWORD"), "{environ}");
    assert!(!environ.contains(&p.secret));
    // The build and the version command run without it too.
    let out = p.run(&["build"]);
    assert_ne!(out.status.code(), Some(0));
    let env = std::fs::read_to_string(p.path().join("build-env.txt")).unwrap();
    assert!(
        !env.contains("HELLO_DB_PASSWORD") && !env.contains(&p.secret),
        "{env}"
    );
    assert!(env.contains("PATH="), "the build keeps the rest: {env}");
    let jar = common::hello_jar().to_string_lossy().into_owned();
    ok(p.run(&["deploy", "local", "--artifact", &jar]));
    let env = std::fs::read_to_string(p.path().join("version-env.txt")).unwrap();
    assert!(
        !env.contains("HELLO_DB_PASSWORD") && !env.contains(&p.secret),
        "{env}"
    );
}

/// Every output path, in text and `--json`, for secrets that JSON escapes.
#[test]
fn secrets_with_quotes_backslashes_and_newlines_are_masked_in_json_too() {
    for secret in ["s3\"cr\\et-x1", "line\nbreak-ü-42", "\"\"\"\"\"\"\"\""] {
        let mut p = Project::new();
        p.secret = secret.to_string();
        ok(p.deploy("1.0.0", &[]));
        // The service prints it, as a careless one would.
        let log = std::fs::read_dir(p.root().join("var/log/hello"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|path| path.extension().is_some_and(|e| e == "log"))
            .expect("the service log");
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        use std::io::Write;
        writeln!(file, "connecting with password={secret}").unwrap();
        drop(file);
        let encodings = [
            secret.to_string(),
            serde_json::to_string(secret)
                .unwrap()
                .trim_matches('"')
                .to_string(),
        ];
        for args in [
            &["--json", "logs", "local"][..],
            &["logs", "local"],
            &["--json", "status", "local"],
            &["--json", "releases", "local"],
            &["--json", "check", "local"],
        ] {
            let out = p.run(args);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            for encoded in &encodings {
                assert!(
                    !text(&out).contains(encoded.as_str()),
                    "{args:?} shows {encoded:?}:\n{}",
                    text(&out)
                );
            }
            if args[0] == "--json" {
                for line in stdout.lines() {
                    let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
                    assert!(parsed.is_ok(), "{args:?}: invalid JSON line {line:?}");
                }
            }
            if args.contains(&"logs") && !secret.contains('\n') {
                assert!(stdout.contains("password=********"), "{args:?}: {stdout}");
            }
        }
    }
}

#[test]
fn a_one_character_secret_is_a_config_error_naming_it() {
    let mut p = Project::new();
    p.secret = "1".to_string();
    let out = p.deploy("1.0.0", &[]);
    exited_saying(&out, 2, "secret `db_password` is shorter than 8 characters");
    assert!(text(&out).contains("allow_short = true"), "{}", text(&out));
    assert!(p.current().is_none());
    // Accepted when marked: then only whole words are masked, never the digits of a release id.
    let p = Project::with_config(|c| {
        c.replace(
            "secrets = { db_password = { env = \"HELLO_DB_PASSWORD\" } }",
            "secrets = { db_password = { env = \"HELLO_DB_PASSWORD\", allow_short = true } }",
        )
    });
    let mut cmd = p.command(&["deploy", "local", "--artifact"]);
    cmd.arg(hello_jar())
        // Not "1.0.1": a `1` standing as a word is the secret, masked there too.
        .args(["--version", "2.0.2"])
        .env("HELLO_DB_PASSWORD", "1");
    ok(cmd.output().unwrap());
    let current = p.current().expect("deployed");
    let out = p.run(&["releases", "local"]);
    for (what, shown) in [("release ids", current.as_str()), ("versions", "2.0.2")] {
        assert!(text(&out).contains(shown), "{what} intact: {}", text(&out));
    }
}

#[test]
fn failed_and_foreign_releases_do_not_count_toward_keep() {
    let p = Project::with_config(|c| c.replace("keep = 5", "keep = 2"));
    assert_eq!(p.deploy("1", &[]).status.code(), Some(0));
    let good = p.current().expect("first release");
    // A host taken over from another tool: its release dirs sort before ours.
    let foreign = p.lib().join("releases/20261129234751");
    std::fs::create_dir_all(foreign.join("lib")).unwrap();
    std::fs::write(foreign.join("REVISION"), "abc123\n").unwrap();
    for v in ["2", "3", "4"] {
        let out = p.deploy(v, &["--env", "FAIL_ON_START=1"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_eq!(
            p.current().as_ref(),
            Some(&good),
            "reverted to the good one"
        );
    }
    assert_eq!(p.deploy("5", &[]).status.code(), Some(0));
    let ids = p.release_ids();
    assert!(
        ids.contains(&good),
        "the release reverted to three times was pruned: {ids:?}"
    );
    assert!(
        foreign.join("REVISION").is_file(),
        "the foreign release was touched"
    );
    // Ours: the current and the rollback target (both good), and the newest failed one.
    let ours: Vec<_> = ids.iter().filter(|id| id.contains('-')).collect();
    assert_eq!(ours.len(), 3, "{ids:?}");
    let out = p.run(&["releases", "local"]);
    let said = text(&out);
    assert!(
        said.contains("20261129234751") && said.contains("foreign"),
        "{said}"
    );
    let json = p.run(&["--json", "releases", "local"]);
    let value: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&json.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let host = &value["hosts"][0];
    assert_eq!(host["foreign"], serde_json::json!(["20261129234751"]));
    let sha = host["releases"][0]["artifact_sha256"].as_str().unwrap();
    assert!(
        said.contains(&sha[..12]),
        "the artifact sha is shown: {said}"
    );
    assert!(
        said.contains("failed") && said.contains("success"),
        "{said}"
    );
}

/// Sends SIGINT to a running shipjar.
fn interrupt(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
}

/// Reads `child`'s stderr until a line contains `wanted`; returns the lines
/// read and how long after `since` the line came.
fn wait_for_line(
    stderr: &mut impl std::io::BufRead,
    wanted: &str,
    since: Instant,
) -> (String, Duration) {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).unwrap();
        assert!(n > 0, "no line with {wanted:?} before the end:\n{seen}");
        seen.push_str(&line);
        if line.contains(wanted) {
            return (seen, since.elapsed());
        }
    }
}

#[test]
fn one_ctrl_c_in_the_health_gate_is_answered_at_once_then_the_gate_finishes_and_exit_is_130() {
    let p = Project::new();
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let first = p.current();
    let mut child = p.spawn_slow_deploy("2.0.0", 3000);
    // Wait for the switch: the health gate of the new release is running.
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.current() == first {
        assert!(Instant::now() < deadline, "never switched");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let sent = Instant::now();
    interrupt(&child);
    let (_, after) = wait_for_line(
        &mut stderr,
        "interrupted: stopping after the health gate of local",
        sent,
    );
    assert!(after < Duration::from_secs(1), "feedback took {after:?}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("local: deploy ok"),
        "{}",
        text(&out)
    );
    assert_eq!(p.served_version().as_deref(), Some("2.0.0"));
}

#[test]
fn ctrl_c_while_waiting_for_the_lock_changes_nothing_and_exits_130() {
    let p = Project::new();
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let holder = p.spawn_slow_deploy("2.0.0", 4000);
    let mut waiting = p.spawn_deploy("3.0.0", &["--wait", "60s"]);
    let mut stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let _ = wait_for_line(&mut stderr, "waiting for the deploy lock", Instant::now());
    let sent = Instant::now();
    interrupt(&waiting);
    let (_, after) = wait_for_line(
        &mut stderr,
        "interrupted: stopping before any host is switched; no host changes",
        sent,
    );
    assert!(after < Duration::from_secs(1), "feedback took {after:?}");
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    ok(holder.wait_with_output().unwrap());
    assert_eq!(p.served_version().as_deref(), Some("2.0.0"));
}

#[test]
fn a_second_ctrl_c_ends_the_operator_at_once_and_the_host_goes_back_by_itself() {
    let p = Project::new();
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let first = p.current();
    let mut child = p.spawn_deploy("2.0.0", &["--env", "HANG_ON_START=1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.current() == first {
        assert!(Instant::now() < deadline, "never switched");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    interrupt(&child);
    let _ = wait_for_line(&mut stderr, "Ctrl-C again to abort now", Instant::now());
    let sent = Instant::now();
    interrupt(&child);
    let (_, after) = wait_for_line(
        &mut stderr,
        "aborting: cancelling the switch of local",
        sent,
    );
    assert!(after < Duration::from_secs(1), "feedback took {after:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    // The operator ends within 2 s of the second interrupt, whatever the host does.
    assert!(
        sent.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{}{rest}", text(&out));
    // Either the revert was quick enough for the summary, or the hard stop
    // said where the host was left.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("cancelled by the operator")
            || rest.contains("[local] its switch was in flight and was asked to cancel"),
        "{stdout}{rest}"
    );
    // The agent finishes the revert on its own, well before the 20 s start timeout.
    let deadline = Instant::now() + Duration::from_secs(12);
    while p.current() != first || p.served_version().as_deref() != Some("1.0.0") {
        assert!(
            Instant::now() < deadline,
            "not back on the previous release"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rollback_to_an_unknown_release_names_the_step_that_failed() {
    let p = Project::new();
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let current = p.current().unwrap();
    let out = p.run(&["rollback", "local", "--to", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("local: rollback FAILED at step `choose`: release nope is not on this host"),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "local is now not changed (still on release {current})"
        )),
        "{said}"
    );
    assert!(
        said.contains("rollback stopped: choose failed on local; no host was switched"),
        "{said}"
    );
    assert!(!said.contains("lock failed"), "{said}");
}

#[test]
fn waiting_for_the_lock_is_announced_once_and_the_agent_own_revert_is_no_revert_phase() {
    let p = Project::new();
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let holder = p.spawn_slow_deploy("2.0.0", 3000);
    let out = p.deploy_json("3.0.0", &["--wait", "60s", "--env", "FAIL_ON_START=1"]);
    assert_eq!(holder.wait_with_output().unwrap().status.code(), Some(0));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let waits = stdout
        .lines()
        .filter(|l| l.contains("waiting for the deploy lock"))
        .count();
    assert_eq!(waits, 1, "{stdout}");
    assert!(
        stdout.contains("waiting for the deploy lock (--wait): the deploy lock is held by"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("\"status\":\"failed\",\"message\":\"the deploy lock is held"),
        "{stdout}"
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["hosts"][0]["state"], "reverted", "{result}");
    assert!(result["phases_ms"].get("revert").is_none(), "{result}");
    assert_eq!(p.served_version().as_deref(), Some("2.0.0"));
}

#[test]
fn check_reaches_the_host_and_names_what_a_deploy_would_meet() {
    let p = Project::new();
    // Before any deploy someone else holds the service's port.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", p.port)).unwrap();
    let out = p.run(&["check", "local"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(said.contains("local: ok       agent"), "{said}");
    assert!(
        said.contains("local: ok       java       /usr/bin/java: "),
        "{said}"
    );
    assert!(said.contains("local: ok       disk"), "{said}");
    assert!(
        said.contains(&format!("local: PROBLEM  port {}", p.port))
            && said.contains("held by another program: pid"),
        "{said}"
    );
    drop(squatter);
    assert_eq!(p.deploy("1.0.0", &[]).status.code(), Some(0));
    let out = ok(p.run(&["--json", "check", "local", "--set", "extra=1"]));
    let said = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(said.lines().last().unwrap()).unwrap();
    let findings = &result["hosts"][0]["findings"];
    let port = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["what"] == format!("port {}", p.port))
        .unwrap();
    assert_eq!(port["status"], "ok");
    assert!(
        port["detail"]
            .as_str()
            .unwrap()
            .starts_with("held by this service (pid ")
    );
    // --no-hosts stays on this machine.
    let out = p.run(&["check", "local", "--no-hosts"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("agent"));
}

#[test]
fn a_closed_stdout_ends_a_command_quietly_instead_of_panicking() {
    let p = Project::new();
    ok(p.deploy("1.0.0", &[]));
    // The reader is gone before the command writes: `| head -0`, in effect.
    let cases: [&[&str]; 5] = [
        &["completions", "zsh"],
        &["completions", "bash"],
        &["man"],
        &["status", "local"],
        &["--json", "status", "local"],
    ];
    for args in cases {
        let mut child = p
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start shipjar");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("internal error") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
        assert!(
            matches!(out.status.code(), Some(0) | Some(141)),
            "{args:?} exited {:?}: {stderr}",
            out.status
        );
    }
}
