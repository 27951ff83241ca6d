//! OpenSSH command lines, built as data (and unit-tested) apart from running them.
//!
//! The user's own `ssh` does the connecting, so their `~/.ssh/config`, agent,
//! ProxyJump, certificates and known_hosts apply. Host keys are checked as
//! OpenSSH does (`BatchMode` only stops it from prompting).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::operator::config::HostSpec;
use crate::protocol::shell;

/// How a stage's hosts are reached.
#[derive(Debug, Clone)]
pub struct Reach {
    /// Host root the agent works under.
    pub root: PathBuf,
    /// ssh config file (`-F`), if any.
    pub ssh_config: Option<PathBuf>,
    /// Run the agent through `sudo -n`.
    pub sudo: bool,
    /// The shipjar binary on the hosts.
    pub agent_path: String,
    /// Directory for ControlMaster sockets (short, private to this run).
    pub control_dir: Option<PathBuf>,
    /// How long a host may leave a request unanswered with no sign of progress.
    pub answer_timeout: std::time::Duration,
}

/// The remote command line for `words`, each quoted, prefixed with `sudo -n` when asked.
pub fn remote_command(reach: &Reach, words: &[&str]) -> String {
    let mut all: Vec<String> = Vec::new();
    if reach.sudo {
        all.extend(["sudo".to_string(), "-n".to_string(), "--".to_string()]);
    }
    // The remote side always parses our command line through a shell.
    all.extend(words.iter().map(|w| shell::quote(w)));
    all.join(" ")
}

/// Whether an ssh invocation may leave a control master behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multiplex {
    /// Start a master when none runs (`ControlMaster=auto`, kept 10 s): for
    /// the several short connections `provision` makes to one host.
    Start,
    /// Use a master of this run if one is there, else connect directly
    /// (`ControlMaster=no`): `provision`'s agent session, after its scripts.
    ReuseOnly,
    /// No control options: the user's ssh config decides. An agent session
    /// is the only connection a deploy or `status` makes to a host; a master
    /// of shipjar's own would only add a second ssh process per host.
    Yours,
}

/// `ssh` arguments (without the program) that run `remote` on `spec`,
/// starting a control master for later connections to the same host.
pub fn ssh_args(spec: &HostSpec, reach: &Reach, remote: &str) -> Vec<OsString> {
    ssh_args_with(spec, reach, remote, Multiplex::Start)
}

/// `ssh` arguments (without the program) that run `remote` on `spec`.
pub fn ssh_args_with(
    spec: &HostSpec,
    reach: &Reach,
    remote: &str,
    multiplex: Multiplex,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut opt = |o: &str| {
        args.push("-o".into());
        args.push(o.into());
    };
    opt("BatchMode=yes");
    opt("ConnectTimeout=10");
    opt("ServerAliveInterval=5");
    opt("ServerAliveCountMax=3");
    if let Some(dir) = reach
        .control_dir
        .as_ref()
        .filter(|_| multiplex != Multiplex::Yours)
    {
        match multiplex {
            Multiplex::Start => {
                opt("ControlMaster=auto");
                opt("ControlPersist=10");
            }
            _ => opt("ControlMaster=no"),
        }
        args.push("-o".into());
        let mut path = OsString::from("ControlPath=");
        path.push(dir.join("%C"));
        args.push(path);
    }
    if let Some(config) = &reach.ssh_config {
        args.push("-F".into());
        args.push(config.into());
    }
    let HostSpec::Ssh { user, host, port } = spec else {
        return args;
    };
    if let Some(port) = port {
        args.push("-p".into());
        args.push(port.to_string().into());
    }
    if let Some(user) = user {
        args.push("-l".into());
        args.push(user.into());
    }
    // `--` ends ssh's options: neither host nor command can be read as one.
    args.push("--".into());
    args.push(host.into());
    args.push(remote.into());
    args
}

/// A private directory for ControlMaster sockets, removed with the run.
pub struct ControlDir {
    path: PathBuf,
}

impl ControlDir {
    /// Creates `/tmp/sj-<pid>-<n>` (short: socket paths are limited to ~104 bytes).
    pub fn create() -> std::io::Result<ControlDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        sweep_dead(&base);
        for n in 0..100 {
            let path = base.join(format!("sj-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(ControlDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(
            "cannot create a control socket directory",
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How an agent session reaches its host: through this run's masters when
/// it started any (`provision`), else as the user's ssh config says.
pub fn session_multiplex(reach: &Reach) -> Multiplex {
    let started = reach
        .control_dir
        .as_ref()
        .and_then(|d| std::fs::read_dir(d).ok())
        .is_some_and(|mut entries| entries.next().is_some());
    if started {
        Multiplex::ReuseOnly
    } else {
        Multiplex::Yours
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        close_masters_and_remove(&self.path);
    }
}

/// Asks every master with a socket in `dir` to exit, then removes `dir`
/// (again, if a master was still writing its socket meanwhile).
fn close_masters_and_remove(dir: &Path) {
    for _ in 0..3 {
        if let Ok(entries) = std::fs::read_dir(dir) {
            // All at once, then waited for: one after the other took a
            // few milliseconds per host at the end of every run.
            let exits: Vec<std::process::Child> = entries
                .flatten()
                .filter_map(|entry| {
                    let mut path = OsString::from("ControlPath=");
                    path.push(entry.path());
                    std::process::Command::new("ssh")
                        .args(["-O", "exit", "-o"])
                        .arg(path)
                        .arg("shipjar-control")
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .ok()
                })
                .collect();
            for mut exit in exits {
                let _ = exit.wait();
            }
        }
        if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Removes control directories (ours: same owner) left by a shipjar that
/// was killed: `sj-<pid>-<n>` whose pid no longer runs.
fn sweep_dead(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::Uid::effective().as_raw();
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("sj-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, n)| n.parse::<u32>().ok().and(pid.parse::<i32>().ok()))
        else {
            continue;
        };
        let ours = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if ours && !alive {
            close_masters_and_remove(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_dirs_of_dead_runs_are_swept_and_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum is never alive.
        let dead = base.path().join("sj-99999999-0");
        let live = base.path().join(format!("sj-{}-7", std::process::id()));
        let other = base.path().join("sj-notes");
        for dir in [&dead, &live, &other] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(dead.join("leftover"), "").unwrap();
        sweep_dead(base.path());
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }

    fn reach(sudo: bool) -> Reach {
        Reach {
            root: "/".into(),
            ssh_config: Some("/p/ssh_config".into()),
            sudo,
            agent_path: "/usr/local/bin/shipjar".into(),
            control_dir: Some("/tmp/sj-1-0".into()),
            answer_timeout: std::time::Duration::from_secs(30),
        }
    }

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        assert_eq!(
            remote_command(&reach(true), &["/opt/my dir/shipjar", "agent"]),
            "sudo -n -- '/opt/my dir/shipjar' agent"
        );
    }

    #[test]
    fn ssh_arguments_keep_host_and_command_apart_from_options() {
        let spec = HostSpec::Ssh {
            user: Some("deploy".into()),
            host: "app2.example.com".into(),
            port: Some(2222),
        };
        let args: Vec<String> = ssh_args(&spec, &reach(false), "shipjar agent")
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let tail: Vec<&str> = args[args.len() - 9..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "-F",
                "/p/ssh_config",
                "-p",
                "2222",
                "-l",
                "deploy",
                "--",
                "app2.example.com",
                "shipjar agent"
            ]
        );
        assert!(args.contains(&"ControlPath=/tmp/sj-1-0/%C".to_string()));
        assert!(!args.iter().any(|a| a.contains("StrictHostKeyChecking")));
    }

    #[test]
    fn only_provision_starts_masters_and_sessions_leave_control_to_the_user() {
        let spec = HostSpec::Ssh {
            user: None,
            host: "app1".into(),
            port: None,
        };
        let words = |m: Multiplex| -> Vec<String> {
            ssh_args_with(&spec, &reach(false), "x", m)
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .filter(|a| a.starts_with("Control"))
                .collect()
        };
        assert_eq!(
            words(Multiplex::Start),
            [
                "ControlMaster=auto",
                "ControlPersist=10",
                "ControlPath=/tmp/sj-1-0/%C"
            ]
        );
        assert_eq!(
            words(Multiplex::ReuseOnly),
            ["ControlMaster=no", "ControlPath=/tmp/sj-1-0/%C"]
        );
        assert_eq!(words(Multiplex::Yours), Vec::<String>::new());
        let dir = tempfile::tempdir().unwrap();
        let mut r = reach(false);
        r.control_dir = Some(dir.path().to_path_buf());
        assert_eq!(session_multiplex(&r), Multiplex::Yours);
        std::fs::write(dir.path().join("socket"), "").unwrap();
        assert_eq!(session_multiplex(&r), Multiplex::ReuseOnly);
    }
}
