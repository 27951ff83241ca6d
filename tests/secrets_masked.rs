//! Secrets masked everywhere, in every form, on the `local` stage with the
//! real binary: a multi-line secret (a PEM key from `file =`) printed by a
//! hook (raw lines, base64, URL-encoded, JSON) and by the service into its
//! log, a health answer holding a line of it (`revisions.log`, the
//! supervisor's records, `status`), and secrets that also occur in ordinary
//! output (the host name `local`, the operator machine's name in the lock
//! holder that `unlock` prints). Searched for with `common::secret_forms`.

mod common;
use common::ok;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::secret_forms::{self, base64, found};
use common::{Project, text};

/// A PEM-like key unique to this test run.
fn pem() -> String {
    let tag = format!("{}x{}", std::process::id(), common::free_port());
    format!(
        "-----BEGIN PRIVATE KEY-----\n\
         MIIEvQIBADANBgkqhkiG9w0B{tag}\n\
         QEFAASCBKcwggSjAgEAAoIBAQC7{tag}\n\
         Zw==\n\
         -----END PRIVATE KEY-----"
    )
}

/// The example project with the `local` stage's password read from
/// `secret.pem` (holding `secret`), and `extra` appended to the config.
fn project_with_file_secret(secret: &str, edit: impl FnOnce(String) -> String) -> Project {
    let project = Project::with_config(|c| {
        edit(c.replacen(
            "secrets = { db_password = { env = \"HELLO_DB_PASSWORD\" } }",
            "secrets = { db_password = { file = \"secret.pem\" } }",
            1,
        ))
    });
    // The loader drops one trailing newline, as a key file has.
    std::fs::write(project.path().join("secret.pem"), format!("{secret}\n")).unwrap();
    project.fill_in_dir();
    project
}

/// Fails naming every form of `secret` found in `out`.
fn assert_no_secret(what: &str, out: &Output, secret: &str) {
    let mut all = out.stdout.clone();
    all.extend_from_slice(&out.stderr);
    let forms = found(&all, secret);
    assert!(
        forms.is_empty(),
        "{what} shows the secret as {forms:?}:\n{}",
        text(out)
    );
}

/// Every file under `dir` but the secret's own files, with the forms of
/// `secret` it holds.
fn files_holding(dir: &Path, secret: &str, out: &mut Vec<String>) {
    for (path, name, _) in common::files_under(dir, &["artifacts"]) {
        if name != "database.properties"
            && name != "SECRETS"
            && let Ok(bytes) = std::fs::read(&path)
        {
            let forms = found(&bytes, secret);
            if !forms.is_empty() {
                out.push(format!("{} ({})", path.display(), forms.join(", ")));
            }
        }
    }
}

/// What a careless service or hook prints about `secret`: the value, its
/// JSON, its URL-encoded form in a request line, and a base64 blob holding it.
fn careless_output(secret: &str) -> String {
    format!(
        "{}{}\n",
        secret_forms::careless_output(secret),
        // As `base64` wraps it: 76 columns.
        base64(format!("pem: {secret}\n").as_bytes())
            .as_bytes()
            .chunks(76)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// A hook that prints the secret config file every way it can.
const LEAKY_HOOK: &str = r#"#!/bin/sh
f=config/database.properties
cat "$f"
base64 -w0 "$f"; echo
base64 "$f"
python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(open(sys.argv[1]).read()))' "$f"
python3 -c 'import sys, json; print(json.dumps({"db": open(sys.argv[1]).read()}))' "$f"
echo done-leaking
"#;

#[test]
fn a_multi_line_secret_is_masked_in_hook_output_and_logs_text_and_json() {
    let secret = pem();
    let project = project_with_file_secret(&secret, |c| {
        c + "\n[hooks]\nbefore_switch = { command = [\"sh\", \"@DIR@/leak.sh\"] }\n"
    });
    std::fs::write(project.path().join("leak.sh"), LEAKY_HOOK).unwrap();
    for (version, json) in [("v1", false), ("v2", true)] {
        let out = ok(if json {
            project.deploy_json(version, &[])
        } else {
            project.deploy(version, &[])
        });
        assert!(text(&out).contains("done-leaking"), "{}", text(&out));
        assert_no_secret(&format!("deploy (json: {json})"), &out, &secret);
        assert!(text(&out).contains("********"), "{}", text(&out));
    }
    // The secret reached its file, byte-exact.
    let file = std::fs::read_to_string(project.lib().join("current/config/database.properties"))
        .expect("the secret file");
    assert!(file.contains(&format!("password={secret}\n")), "{file}");

    // The service prints it into its log.
    let log = project.root().join("var/log/hello/console.log");
    let mut content = std::fs::read(&log).unwrap_or_default();
    content.extend_from_slice(careless_output(&secret).as_bytes());
    std::fs::write(&log, content).unwrap();
    for args in [
        &["logs", "local", "-n", "300"][..],
        &["--json", "logs", "local", "-n", "300"],
    ] {
        let out = ok(project.run(args));
        assert!(
            text(&out).contains("connecting with key:"),
            "{}",
            text(&out)
        );
        assert_no_secret(&args.join(" "), &out, &secret);
    }
    let out = project.run(&["--json", "status", "local"]);
    assert_no_secret("status", &out, &secret);
}

/// A service (python, in place of the JVM) whose health check answers 500
/// with the second line of the secret in its config file.
const SERVER: &str = r#"
import http.server, json, os
conf = open(os.path.join(os.environ["SHIPJAR_CONFIG_DIR"], "database.properties")).read().split("\n")
said = next(conf[i + 1] for i, l in enumerate(conf) if l.startswith("password="))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code, body = (200, json.dumps({"version": "1"})) if self.path == "/version" else (500, "db refused key " + said + "\nmore")
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

#[test]
fn a_secret_in_a_health_answer_is_in_no_record_and_no_output() {
    let secret = pem();
    let project = project_with_file_secret(&secret, |c| {
        let c = c
            .replace(
                "jar = \"hello.jar\"",
                "command = [\"python3\", \"@DIR@/server.py\"]",
            )
            .replace("start_timeout = \"20s\"", "start_timeout = \"3s\"");
        c.lines()
            .filter(|l| !l.starts_with("java_opts"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    });
    std::fs::write(project.path().join("server.py"), SERVER).unwrap();
    for (version, json) in [("v1", false), ("v2", true)] {
        let out = if json {
            project.deploy_json(version, &[])
        } else {
            project.deploy(version, &[])
        };
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_no_secret(&format!("deploy (json: {json})"), &out, &secret);
    }
    let revisions = project.revisions().join("\n");
    // The body's start is recorded, masked: the test reached what it is about.
    assert!(
        revisions.contains("db refused key ********"),
        "revisions.log: {revisions}"
    );
    for args in [&["status", "local"][..], &["--json", "status", "local"]] {
        let out = project.run(args);
        assert_no_secret(&args.join(" "), &out, &secret);
    }
    let mut holding = Vec::new();
    files_holding(&project.root(), &secret, &mut holding);
    assert!(holding.is_empty(), "records hold the secret: {holding:?}");
}

#[test]
fn a_secret_that_occurs_in_ordinary_output_is_masked_there_too() {
    // Two short secrets the user allowed, equal to words shipjar prints: the
    // stage's host name and the operator machine's name (in the lock holder).
    let machine = nix::unistd::gethostname()
        .expect("hostname")
        .to_string_lossy()
        .into_owned();
    let project = Project::with_config(|c| {
        c.replacen(
            "secrets = { db_password = { env = \"HELLO_DB_PASSWORD\" } }",
            "secrets = { db_password = { env = \"HELLO_DB_PASSWORD\" }, \
             host_alias = { file = \"alias.txt\", allow_short = true }, \
             machine = { file = \"machine.txt\", allow_short = true } }",
            1,
        )
    });
    std::fs::write(project.path().join("alias.txt"), "local").unwrap();
    std::fs::write(project.path().join("machine.txt"), &machine).unwrap();
    let deployed = ok(project.deploy("v1", &[]));
    let word = |hay: &str, w: &str| hay.split(|c: char| !c.is_alphanumeric()).any(|x| x == w);

    // `logs`: the host prefix is masked, text and JSON.
    let out = project.run(&["logs", "local", "-n", "5"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!said.is_empty(), "{}", text(&out));
    assert!(!word(&said, "local"), "{said}");
    assert!(said.starts_with("[********] "), "{said}");
    let out = project.run(&["--json", "logs", "local", "-n", "5"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!word(&said, "local"), "{said}");
    assert!(said.contains("\"host\":\"********\""), "{said}");

    // `unlock` names the holder of a lock a killed deploy left: user@machine.
    for (version, json) in [("v2", false), ("v3", true)] {
        // Killed once its host switched: the agent goes on with the slow
        // start it is running, holding the lock until it ends (an agent
        // that sees its operator gone releases the lock after its request).
        let before = project.current();
        let mut child = project.spawn_slow_deploy(version, 5000);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while project.current() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "{version} never switched"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let out = ok(if json {
            project.run(&["--json", "unlock", "local"])
        } else {
            project.run(&["unlock", "local"])
        });
        let said = text(&out);
        assert!(!word(&said, &machine), "unlock shows the machine: {said}");
        assert!(said.contains("@********"), "{said}");
    }
    // The deploy named the collision (names only).
    assert!(
        text(&deployed).contains("secret `host_alias` (or a short line of it) occurs as a word in"),
        "the collision is named: {}",
        text(&deployed)
    );
}
