//! Secrets with quotes, backslashes, newlines and unicode arrive byte-exact
//! in their file and nowhere else; a short one is refused unless allowed.
//! A multi-line one the service prints in its log (raw, JSON, base64,
//! URL-encoded) is masked by `shipjar logs`, text and `--json`.

use crate::common::secret_forms::careless_output;
use crate::{Suite, text};

/// The service's log on the hosts.
const CONSOLE_LOG: &str = "/var/log/hello/console.log";

/// What a careless service prints about `secret`: the value, its JSON, its
/// URL-encoded form in a request line, and a base64 blob holding it.
pub fn secrets(s: &mut Suite) {
    let original = s.secret.clone();
    let pid = std::process::id();
    let values = [
        format!(
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B{pid}\nQEFAASCBKcwggSjAgEAAoIBAQC7\nZw==\n-----END PRIVATE KEY-----"
        ),
        format!("dq\"uote-{pid}-\"x\""),
        format!("back\\slash\\n-{pid}\\"),
        format!("new\nline-{pid}\r\nend"),
        format!("ünï☃🦀-{pid}-'$(id)`"),
    ];
    for v in values {
        s.secret = v.clone();
        s.secrets_used.push(v.clone());
        s.counts.faults += 1;
        let version = s.next_version();
        let out = s.deploy("one", &version, &[]);
        if out.status.code() != Some(0) {
            s.fail(format!("deploy with secret {:?}…: {}", v.len(), text(&out)));
            continue;
        }
        // Output that might show it: every read-only command.
        for args in [
            &["--json", "status", "one"][..],
            &["releases", "one"],
            &["logs", "one", "-n", "20"],
            &["--json", "check", "one"],
        ] {
            let _ = s.run(args);
        }
        if v.contains('\n') {
            // Slow (it uploads a temporary agent): once, with the worst secret.
            let _ = s.run(&["provision", "one", "--dry-run"]);
        }
        if v.starts_with("-----BEGIN") {
            logs_mask_what_the_service_printed(s, &v);
        }
        let got = s.fleet.sh_stdout("app1", "cat /var/lib/hello/current/config/database.properties; stat -c %a /var/lib/hello/current/config/database.properties");
        // A .properties value escapes its newlines; the file must hold the value itself.
        let line = format!("password={v}\n");
        if !got.contains(&line) {
            s.fail(format!(
                "database.properties does not hold the secret byte-exact (secret of {} bytes)",
                v.len()
            ));
        }
        let mode = got.lines().last().unwrap_or("").trim().to_string();
        if mode != "600" && mode != "640" {
            s.fail(format!("database.properties has mode {mode}"));
        }
    }
    // A short secret: refused, naming the secret, never showing it.
    let short = "Zx9";
    s.secret = short.into();
    s.counts.faults += 1;
    let out = s.run(&["check", "one"]);
    let all = text(&out);
    if out.status.code() != Some(2) || !all.contains("db_password") {
        s.fail(format!(
            "a 3-character secret must be rejected naming it: {all}"
        ));
    }
    if all
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == short)
    {
        s.fail(format!("the short secret appears in the error: {all}"));
    }
    // Allowed with allow_short = true (stage `one` only).
    let path = s.dir.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let line = "secrets = { db_password = { env = \"HELLO_DB_PASSWORD\" } }";
    let at = config.rfind(line).expect("stage one's secrets");
    let mut edited = config.clone();
    edited.replace_range(
        at..at + line.len(),
        "secrets = { db_password = { env = \"HELLO_DB_PASSWORD\", allow_short = true } }",
    );
    std::fs::write(&path, &edited).expect("write config");
    let version = s.next_version();
    let out = s.deploy("one", &version, &[]);
    let all = text(&out);
    if out.status.code() != Some(0) {
        s.fail(format!(
            "a short secret with allow_short = true was refused: {all}"
        ));
    }
    let status = s.run(&["status", "one"]);
    for shown in [all, text(&status)] {
        if shown
            .split(|c: char| !c.is_alphanumeric())
            .any(|w| w == short)
        {
            s.fail(format!(
                "the short secret appears as a word in the output: {shown}"
            ));
        }
    }
    std::fs::write(&path, config).expect("restore config");
    s.secret = original;
}

/// The service prints `secret` in its log; `logs` (text and `--json`) must
/// show none of it. The lines are removed again, so the final scan of the
/// hosts' disks looks only for what shipjar wrote.
fn logs_mask_what_the_service_printed(s: &mut Suite, secret: &str) {
    s.counts.faults += 1;
    let printed = careless_output(secret);
    let out = s.fleet.exec(
        "app1",
        &[
            "sh",
            "-c",
            "size=$(stat -c %s \"$1\") && printf %s \"$2\" >> \"$1\" && echo \"$size\"",
            "sh",
            CONSOLE_LOG,
            &printed,
        ],
    );
    let size = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if size.parse::<u64>().is_err() {
        s.fail(format!(
            "could not write into {CONSOLE_LOG}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        return;
    }
    for args in [
        &["logs", "one", "-n", "200"][..],
        &["--json", "logs", "one", "-n", "200"],
    ] {
        let out = s.run(args);
        let all = text(&out);
        if out.status.code() != Some(0) || !all.contains("********") {
            s.fail(format!(
                "`shipjar {}` did not show the masked lines: {all}",
                args.join(" ")
            ));
        }
    }
    let _ = s
        .fleet
        .exec("app1", &["truncate", "-s", &size, CONSOLE_LOG]);
}
