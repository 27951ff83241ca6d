//! A secret read from a command on the operator's machine (`op read …`,
//! `vault kv get -field=…`, `pass …`): argv without a shell, in the project
//! directory, with the operator's environment (so the tool's sign-in session
//! works) minus the variables that hold other secrets, stdin closed, in its own
//! process group so a timeout kills whatever it started. Each distinct command
//! runs at most once per shipjar invocation.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::operator::render::without_secret_variables;
use crate::protocol::hook_wait;
use crate::protocol::mask::{MIN_SECRET_CHARS, Masker, SecretValue};
use crate::protocol::shell;

/// Most of a command's stdout read as a value; more is an error (not a secret).
const MAX_VALUE_BYTES: usize = 1 << 20;
/// Lines of a failed command's stderr shown.
const STDERR_LINES: usize = 20;

/// Values already read in this invocation, by (directory, argv).
static READ: Mutex<BTreeMap<(String, Vec<String>), String>> = Mutex::new(BTreeMap::new());

/// The value the command prints (one trailing newline removed), run once per invocation.
/// Errors name the secret and the command and show its stderr with the value masked.
pub fn read(name: &str, argv: &[String], dir: &Path, timeout_ms: u64) -> Result<String> {
    let key = (dir.display().to_string(), argv.to_vec());
    if let Some(value) = READ.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(value.clone());
    }
    let value = run(name, argv, dir, Duration::from_millis(timeout_ms))?;
    READ.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, value.clone());
    Ok(value)
}

fn run(name: &str, argv: &[String], dir: &Path, timeout: Duration) -> Result<String> {
    let shown = argv
        .iter()
        .map(|a| shell::quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let fail = |what: String| Error::config(format!("secret `{name}`: command `{shown}` {what}"));
    let Some((program, args)) = argv.split_first() else {
        return Err(fail("is empty".into()));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: a timeout kills whatever it started, never us.
        .process_group(0);
    without_secret_variables(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("could not be started: {e}")))?;
    let stdout = drain(child.stdout.take(), MAX_VALUE_BYTES + 1);
    let stderr = drain(child.stderr.take(), 64 * 1024);
    let pgid = Pid::from_raw(child.id() as i32);
    let ended = wait_or_kill(&mut child, pgid, timeout);
    // Whatever it left running in its group goes too, so the pipes close.
    let _ = killpg(pgid, Signal::SIGKILL);
    let out = stdout
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    let err = stderr
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let value = text.strip_suffix('\n').unwrap_or(&text).to_string();
    // What it printed is masked in its stderr (and everywhere later) when it failed; a short
    // value only as a whole word, as any short secret. A good value is registered by the caller.
    let short = value.chars().count() < MIN_SECRET_CHARS;
    let secrets: Vec<SecretValue> = (!value.is_empty())
        .then(|| SecretValue {
            value: value.clone(),
            allow_short: short,
        })
        .into_iter()
        .collect();
    let masker = Masker::new(&secrets);
    let with_stderr = |what: String| {
        crate::operator::output::register_secret(&value, short);
        let masked = masker.mask(&String::from_utf8_lossy(&err)).into_owned();
        with_stderr_tail(fail(what), &masked)
    };
    let status = ended.map_err(&with_stderr)?;
    if !status.success() {
        return Err(with_stderr(hook_wait::describe(status)));
    }
    if out.len() > MAX_VALUE_BYTES {
        return Err(fail(format!("printed more than {MAX_VALUE_BYTES} bytes")));
    }
    if std::str::from_utf8(&out).is_err() {
        return Err(fail("printed something that is not UTF-8 text".into()));
    }
    Ok(value)
}

/// The command's exit, or why there is none: killed (with its group) at `timeout`.
fn wait_or_kill(
    child: &mut std::process::Child,
    pgid: Pid,
    timeout: Duration,
) -> std::result::Result<std::process::ExitStatus, String> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = child.wait();
                let limit =
                    humantime::format_duration(Duration::from_millis(timeout.as_millis() as u64));
                return Err(format!("timed out after {limit}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("could not be waited for: {e}")),
        }
    }
}

/// `e` with the last lines of the command's (already masked) stderr appended.
fn with_stderr_tail(mut e: Error, masked_stderr: &str) -> Error {
    let lines: Vec<&str> = masked_stderr.lines().collect();
    let tail = &lines[lines.len().saturating_sub(STDERR_LINES)..];
    if !tail.is_empty() {
        e.message.push_str("; its stderr:");
        for line in tail {
            e.message.push_str(&format!("\n  {line}"));
        }
    }
    e
}

/// Reads `pipe` to its end (at most `limit` bytes kept) in a thread.
fn drain(pipe: Option<impl Read + Send + 'static>, limit: usize) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(pipe) = pipe {
            let mut buf = [0u8; 8192];
            let mut pipe = pipe;
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = limit.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
        }
        let _ = tx.send(kept);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// An executable script `name` in `dir` with `body`.
    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    #[test]
    fn stdout_is_the_value_one_newline_stripped_and_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(
            dir.path(),
            "vault",
            "echo run >> count; printf 'v4lue-from-cmd\\n\\n'",
        );
        let argv = vec![prog, "kv".into(), "get".into()];
        let value = read("db_password", &argv, dir.path(), 5_000).unwrap();
        assert_eq!(value, "v4lue-from-cmd\n");
        let again = read("db_password", &argv, dir.path(), 5_000).unwrap();
        assert_eq!(again, value);
        let runs = std::fs::read_to_string(dir.path().join("count")).unwrap();
        assert_eq!(runs.lines().count(), 1, "the command ran once");
    }

    #[test]
    fn argv_is_not_a_shell_line() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(dir.path(), "echo-args", "printf '%s|' \"$@\"");
        let argv = vec![prog, "a b".into(), "$HOME;x".into()];
        let value = read("pw", &argv, dir.path(), 5_000).unwrap();
        assert_eq!(value, "a b|$HOME;x|");
    }

    #[test]
    fn a_failure_names_secret_and_command_and_masks_the_value_in_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(
            dir.path(),
            "op",
            "echo 'leaked-s3cret-value'; echo 'op: denied for leaked-s3cret-value' >&2; exit 3",
        );
        let argv = vec![prog, "read".into(), "op://prod/db/password".into()];
        let err = read("db_password", &argv, dir.path(), 5_000).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("secret `db_password`"), "{text}");
        assert!(text.contains("op://prod/db/password"), "{text}");
        assert!(text.contains("exited with code 3"), "{text}");
        assert!(text.contains("op: denied for"), "{text}");
        assert!(!text.contains("leaked-s3cret-value"), "{text}");
        assert!(text.contains(crate::protocol::mask::MASK), "{text}");
    }

    #[test]
    fn a_hanging_command_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(
            dir.path(),
            "hang",
            "sleep 300 & echo $! > child.pid; echo waiting >&2; wait",
        );
        let started = Instant::now();
        let err = read("pw", &[prog], dir.path(), 500).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = err.to_string();
        assert!(text.contains("timed out after 500ms; killed"), "{text}");
        assert!(text.contains("waiting"), "{text}");
        let pid: i32 = std::fs::read_to_string(dir.path().join("child.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie waiting for init to reap it.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(), "the command's child {pid} still runs");
    }

    #[test]
    fn a_missing_program_names_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec!["/nonexistent/op".to_string()];
        let err = read("api_key", &argv, dir.path(), 1_000).unwrap_err();
        assert!(err.to_string().contains("secret `api_key`"), "{err}");
        assert!(err.to_string().contains("could not be started"), "{err}");
    }
}
