//! `shipjar provision STAGE [--dry-run]`: install the agent binary on each host
//! (same architecture; replaced when its sha256 differs), then have the agent
//! bring the host to what the service needs. Idempotent: a second run reports
//! only `ok`.

use std::io::Write;
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::cli::ProvisionArgs;
use crate::error::{Error, Result};
use crate::operator::config::{HostSpec, Project};
use crate::operator::fleet::{self, Fleet};
use crate::operator::output::Reporter;
use crate::operator::render;
use crate::operator::ssh;
use crate::operator::transport::AgentSession;
use crate::protocol::digest::{sha256_hex, short};
use crate::protocol::{ProvisionSpec, Request, ResourceResult, ResourceStatus, Response};

/// Shell lines shared by the scripts that receive a binary: read stdin into
/// `$t`, then fail unless its sha256 is `$2` (cleanup is the caller's trap).
macro_rules! receive_verified {
    () => {
        r#"cat > "$t"
got=$(sha256sum -- "$t")
got=${got%% *}
if [ "$got" != "$2" ]; then
    echo "the binary arrived incomplete or damaged (sha256 $got, expected $2); the installed one is unchanged" >&2
    exit 1
fi
chmod 0755 "$t"
"#
    };
}

/// Installs `$1` from stdin, only if what arrived has the sha256 `$2`: a cut
/// connection or an interrupt leaves the old binary in place. The path and the
/// hash are arguments, never part of the script.
const INSTALL_SCRIPT: &str = concat!(
    r#"set -eu
d=$(dirname -- "$1")
mkdir -p -- "$d"
t="$d/.shipjar-new.$$"
trap 'rm -f -- "$t"' EXIT
"#,
    receive_verified!(),
    r#"sync -- "$t"
mv -f -- "$t" "$1"
trap - EXIT
sync -- "$d""#
);

/// Puts a copy of this binary (sha256 `$2`) in a new temporary directory and
/// prints its path: a dry run on a host without the right agent asks that
/// copy, so it can show every change without installing anything.
const TEMP_AGENT_SCRIPT: &str = concat!(
    r#"set -eu
d=$(mktemp -d "${TMPDIR:-/tmp}/shipjar-dry-run.XXXXXX")
trap 'rm -rf -- "$d"' EXIT
t="$d/shipjar"
"#,
    receive_verified!(),
    r#"trap - EXIT
printf '%s\n' "$t""#
);

/// Removes a temporary agent made by [`TEMP_AGENT_SCRIPT`] (its path is `$2`),
/// and nothing else.
const REMOVE_TEMP_AGENT_SCRIPT: &str = r#"set -eu
case "$2" in
"${TMPDIR:-/tmp}"/shipjar-dry-run.*/shipjar) rm -rf -- "$(dirname -- "$2")" ;;
*) echo "refusing to remove $2" >&2; exit 1 ;;
esac"#;

/// Prints the installed binary's sha256, or nothing.
const SHA_SCRIPT: &str = r#"if [ -f "$1" ]; then sha256sum -- "$1"; fi"#;

/// One host's provisioning.
#[derive(Debug, Serialize)]
pub struct HostProvision {
    /// Host as written in the stage.
    pub host: String,
    /// Resources in order.
    pub resources: Vec<ResourceResult>,
}

/// `shipjar provision STAGE`.
pub fn provision(project: &Project, args: &ProvisionArgs, reporter: &Reporter) -> Result<i32> {
    let (stage, _) = crate::operator::select::stage(project, &args.stage, &args.fleet.hosts)?;
    // Secrets are read so that anything shown (diffs included) masks them.
    crate::operator::render::mask_available_secrets(&stage.secrets);
    let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
    let exe = match &stage.agent_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| Error::failed(format!("cannot find the shipjar binary: {e}")))?,
    };
    // Read once: the bytes sent are the bytes hashed, even if the file changes meanwhile.
    let binary = std::fs::read(&exe)
        .map_err(|e| Error::failed(format!("cannot read {}: {e}", exe.display())))?;
    let our_sha = sha256_hex(&binary);
    let spec = ProvisionSpec {
        user: project.config.service.unix_user(),
        agent_path: stage.agent_path.clone(),
        dry_run: args.dry_run,
        take_over: args.take_over,
    };
    let mut rows: Vec<(String, HostSpec, Vec<ResourceResult>)> = stage
        .hosts
        .iter()
        .map(|(h, s)| (h.clone(), s.clone(), Vec::new()))
        .collect();
    // Ctrl-C: hosts being provisioned finish, the rest are not started.
    fleet::catch_interrupts();
    fleet::each(&mut rows, fleet.parallel, |(host, host_spec, resources)| {
        if fleet::interrupted() {
            resources.push(failed_resource(
                "host",
                "not provisioned: interrupted (Ctrl-C)".into(),
            ));
            return;
        }
        if *host_spec != HostSpec::Local {
            let agent = install_agent(&fleet, host_spec, &binary, &our_sha, args.dry_run);
            let failed = agent.status == ResourceStatus::Failed;
            resources.push(agent);
            if failed {
                return;
            }
            if args.dry_run
                && resources
                    .iter()
                    .any(|r| r.status == ResourceStatus::WouldChange)
            {
                // The agent is missing or old: ask a temporary copy of this one.
                let answer =
                    dry_run_with_temp_agent(&fleet, host, host_spec, &binary, &our_sha, &spec);
                record_answer(answer, resources);
                return;
            }
        }
        let answer = fleet.open(host, host_spec).and_then(|mut session| {
            let r = session.call(Request::Provision { spec: spec.clone() }, &mut |_, _| {});
            let _ = session.close();
            r
        });
        record_answer(answer, resources);
    });
    let failed = report(rows, args.dry_run, reporter);
    Ok(match (fleet::interrupted(), failed) {
        (true, _) => 130,
        (false, 0) => 0,
        (false, _) => 1,
    })
}

/// Says what was done to each resource of each host, and the counts;
/// returns how many failed.
fn report(
    rows: Vec<(String, HostSpec, Vec<ResourceResult>)>,
    dry_run: bool,
    reporter: &Reporter,
) -> usize {
    let mut text = String::new();
    let mut hosts = Vec::new();
    for (host, _, resources) in rows {
        for r in &resources {
            reporter.step(&host, &r.resource, r.status.clone().into(), &r.detail);
            text.push_str(&format!(
                "{host}: {:<12} {} — {}\n",
                r.status, r.resource, r.detail
            ));
            if let Some(diff) = &r.diff {
                for line in diff.lines() {
                    text.push_str(&format!("    {line}\n"));
                }
            }
        }
        hosts.push(HostProvision { host, resources });
    }
    let count = |s: ResourceStatus| {
        hosts
            .iter()
            .flat_map(|h| &h.resources)
            .filter(|r| r.status == s)
            .count()
    };
    let failed = count(ResourceStatus::Failed);
    text.push_str(&format!(
        "{} host{}: {} ok, {} {}, {failed} failed\n",
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
        count(ResourceStatus::Ok),
        if dry_run {
            count(ResourceStatus::WouldChange)
        } else {
            count(ResourceStatus::Changed)
        },
        if dry_run { "would change" } else { "changed" },
    ));
    #[derive(Serialize)]
    struct ProvisionResult {
        ok: bool,
        dry_run: bool,
        hosts: Vec<HostProvision>,
    }
    reporter.result(
        &ProvisionResult {
            ok: failed == 0,
            dry_run,
            hosts,
        },
        &text,
    );
    failed
}

fn failed_resource(resource: &str, detail: String) -> ResourceResult {
    ResourceResult {
        resource: resource.into(),
        status: ResourceStatus::Failed,
        detail,
        diff: None,
    }
}

/// Adds an agent's provisioning answer (or why there is none) to `resources`.
fn record_answer(answer: Result<Response>, resources: &mut Vec<ResourceResult>) {
    match answer {
        Ok(Response::Provisioned { resources: r }) => resources.extend(r),
        Ok(Response::Error(e)) => resources.push(failed_resource("agent", e.message)),
        Ok(other) => resources.push(failed_resource(
            "agent",
            format!("unexpected answer: {other:?}"),
        )),
        Err(e) => resources.push(failed_resource("agent", e.message)),
    }
}

/// A dry run through a temporary copy of this binary on the host, removed afterwards.
fn dry_run_with_temp_agent(
    fleet: &Fleet,
    host: &str,
    spec: &HostSpec,
    binary: &[u8],
    sha: &str,
    provision: &ProvisionSpec,
) -> Result<Response> {
    let path = remote(fleet, spec, TEMP_AGENT_SCRIPT, &[sha], Some(binary))
        .map_err(|e| Error::failed(format!("cannot place a temporary agent: {e}")))?;
    let path = path.trim().to_string();
    let mut reach = fleet.reach.clone();
    reach.agent_path = path.clone();
    let permit = fleet.startup_permit();
    let answer = AgentSession::open(host, spec, &reach, &fleet.service, Some(permit)).and_then(
        |mut session| {
            let r = session.call(
                Request::Provision {
                    spec: provision.clone(),
                },
                &mut |_, _| {},
            );
            let _ = session.close();
            r
        },
    );
    let removed = remote(fleet, spec, REMOVE_TEMP_AGENT_SCRIPT, &[&path], None);
    match (answer, removed) {
        (answer, Ok(_)) => answer,
        (Ok(_), Err(e)) | (Err(_), Err(e)) => Err(Error::failed(format!(
            "the temporary agent {path} could not be removed: {e}"
        ))),
    }
}

/// Makes the host's shipjar binary this one (same sha256).
fn install_agent(
    fleet: &Fleet,
    spec: &HostSpec,
    binary: &[u8],
    our_sha: &str,
    dry_run: bool,
) -> ResourceResult {
    let path = &fleet.reach.agent_path;
    let resource = format!("agent {path}");
    let probe = remote(fleet, spec, SHA_SCRIPT, &[], None);
    let installed = match probe {
        Ok(out) => out.split_whitespace().next().map(str::to_string),
        Err(e) => return failed_resource(&resource, e),
    };
    if installed.as_deref() == Some(our_sha) {
        return ResourceResult {
            resource,
            status: ResourceStatus::Ok,
            detail: format!(
                "shipjar {} (sha256 {})",
                env!("CARGO_PKG_VERSION"),
                short(our_sha)
            ),
            diff: None,
        };
    }
    let change = match &installed {
        Some(old) => format!("replace sha256 {} with {}", short(old), short(our_sha)),
        None => format!(
            "install shipjar {} (sha256 {})",
            env!("CARGO_PKG_VERSION"),
            short(our_sha)
        ),
    };
    if dry_run {
        return ResourceResult {
            resource,
            status: ResourceStatus::WouldChange,
            detail: change,
            diff: None,
        };
    }
    if let Err(e) = remote(fleet, spec, INSTALL_SCRIPT, &[our_sha], Some(binary)) {
        return failed_resource(&resource, e);
    }
    match remote(fleet, spec, SHA_SCRIPT, &[], None) {
        Ok(out) if out.split_whitespace().next() == Some(our_sha) => ResourceResult {
            resource,
            status: ResourceStatus::Changed,
            detail: change,
            diff: None,
        },
        Ok(_) => failed_resource(
            &resource,
            "the installed binary does not match after upload".into(),
        ),
        Err(e) => failed_resource(&resource, e),
    }
}

/// Runs a fixed script on the host with the agent path as `$1` (then `args`),
/// optionally feeding stdin.
fn remote(
    fleet: &Fleet,
    spec: &HostSpec,
    script: &str,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<String, String> {
    let _permit = fleet.startup_permit();
    let mut words = vec!["sh", "-c", script, "sh", &fleet.reach.agent_path];
    words.extend_from_slice(args);
    let remote = ssh::remote_command(&fleet.reach, &words);
    let mut child = render::without_secret_variables(&mut Command::new("ssh"))
        .args(ssh::ssh_args(spec, &fleet.reach, &remote))
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(bytes)
            .map_err(|e| format!("sending the binary: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("ssh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ssh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{INSTALL_SCRIPT, REMOVE_TEMP_AGENT_SCRIPT, TEMP_AGENT_SCRIPT};
    use crate::protocol::digest::sha256_hex;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Runs the install script locally, feeding `input`, expecting `sha`.
    fn install(target: &std::path::Path, sha: &str, input: &[u8]) -> std::process::Output {
        let mut child = Command::new("sh")
            .args(["-c", INSTALL_SCRIPT, "sh"])
            .arg(target)
            .arg(sha)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("feed");
        child.wait_with_output().expect("sh ends")
    }

    #[test]
    fn a_truncated_upload_leaves_the_installed_binary_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("bin/shipjar");
        let old = b"old agent".to_vec();
        let new = vec![7u8; 100_000];
        let out = install(&target, &sha256_hex(&old), &old);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = install(&target, &sha256_hex(&new), &new[..60_000]);
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("arrived incomplete or damaged"), "{said}");
        assert_eq!(std::fs::read(&target).unwrap(), old);
        let names: Vec<_> = std::fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
        let out = install(&target, &sha256_hex(&new), &new);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&target).unwrap(), new);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn a_temporary_agent_is_placed_verified_and_only_it_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let run = |script: &str, arg: &str, input: &[u8]| {
            let mut child = Command::new("sh")
                .args(["-c", script, "sh", "/unused/agent/path", arg])
                .env("TMPDIR", dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            child.wait_with_output().unwrap()
        };
        let binary = b"#!/bin/sh\necho agent\n".to_vec();
        let out = run(TEMP_AGENT_SCRIPT, &sha256_hex(&binary), &binary);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(std::fs::read(&path).unwrap(), binary);
        let out = run(TEMP_AGENT_SCRIPT, &sha256_hex(b"other"), &binary);
        assert!(!out.status.success());
        let refused = run(REMOVE_TEMP_AGENT_SCRIPT, "/etc/passwd", b"");
        assert!(!refused.status.success());
        assert!(std::path::Path::new("/etc/passwd").exists());
        let out = run(REMOVE_TEMP_AGENT_SCRIPT, &path, b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn the_remote_scripts_pass_shellcheck() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("install.sh");
        for script in [INSTALL_SCRIPT, TEMP_AGENT_SCRIPT, REMOVE_TEMP_AGENT_SCRIPT] {
            std::fs::write(&file, format!("#!/bin/sh\n{script}\n")).unwrap();
            let out = Command::new("shellcheck")
                .arg(&file)
                .output()
                .expect("shellcheck is installed (run-tests installs it)");
            assert!(
                out.status.success(),
                "{script}\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}
