//! Proof that a pid is this service, from `/proc` alone. The pidfile and
//! state file only say which pid to look at: nothing is signalled because a
//! file names it. (A supervisor is proven by the lock it holds: see
//! `observe`.)
//!
//! A service is proven by its start time and either its parent
//! (the proven supervisor, whose process group it leads) or, without one,
//! by being that service: its user, its working directory (a release of the
//! service) and its command line (that release's argv, or naming its jar).

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use crate::protocol::layout::Layout;

use super::release;
use crate::host::os::procfs::{self, ProcessId};

/// What `/proc` says about one live process, read consistently (its start
/// time is checked again after everything else was read).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Pid and start time.
    pub id: ProcessId,
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgrp: i32,
    /// Real uid.
    pub uid: u32,
    /// Its arguments (empty for kernel threads).
    pub cmdline: Vec<OsString>,
    /// Its program; `None` when we may not read it (another user's process).
    pub exe: Option<PathBuf>,
    /// Its working directory; `None` when we may not read it.
    pub cwd: Option<PathBuf>,
}

/// Reads `pid` from `/proc`; `None` when it does not exist, is a zombie, or
/// was replaced while we read.
pub fn snapshot(pid: i32) -> Option<Snapshot> {
    let before = procfs::stat(pid).ok()??;
    if matches!(before.state, 'Z' | 'X' | 'x') {
        return None;
    }
    let (uid, _) = procfs::uids(pid).ok()??;
    let cmdline = procfs::cmdline(pid).ok()??;
    let exe = readable(procfs::link(pid, "exe"))?;
    let cwd = readable(procfs::link(pid, "cwd"))?;
    let after = procfs::stat(pid).ok()??;
    if after.start_ticks != before.start_ticks || matches!(after.state, 'Z' | 'X' | 'x') {
        return None;
    }
    Some(Snapshot {
        id: ProcessId {
            pid,
            start_ticks: before.start_ticks,
        },
        ppid: before.ppid,
        pgrp: before.pgrp,
        uid,
        cmdline,
        exe,
        cwd,
    })
}

/// `Some(None)` for a link we may not read, `None` for a process that is gone.
fn readable(link: io::Result<Option<PathBuf>>) -> Option<Option<PathBuf>> {
    match link {
        Ok(Some(path)) => Some(Some(path)),
        Ok(None) => None,
        Err(_) => Some(None),
    }
}

impl Snapshot {
    /// A short name for messages: the program's file name.
    pub fn name(&self) -> String {
        self.cmdline
            .first()
            .map(PathBuf::from)
            .or_else(|| self.exe.clone())
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "?".to_string())
    }
}

/// How a service process was proven to be the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceProof {
    /// Child of the proven supervisor, leading its own process group.
    Child,
    /// No supervisor owns it; its user, working directory and command line
    /// are those of this release.
    Release(String),
}

/// Checks that `p` is this service: the child of `supervisor`, or a process
/// that is, by user, working directory and command line, one of its releases.
pub fn prove_service(
    p: &Snapshot,
    layout: &Layout,
    supervisor: Option<ProcessId>,
) -> Result<ServiceProof, String> {
    if let Some(sup) = supervisor
        && p.ppid == sup.pid
        && p.pgrp == p.id.pid
    {
        return Ok(ServiceProof::Child);
    }
    let cwd = p
        .cwd
        .as_deref()
        .ok_or("its working directory cannot be read")?;
    let id = release_of(layout, cwd).ok_or_else(|| {
        format!(
            "its working directory {} is not a release of {}",
            cwd.display(),
            layout.name()
        )
    })?;
    let rel = release::load(&layout.releases_dir().join(&id))
        .map_err(|e| format!("its release {id} cannot be read: {e}"))?;
    let mut uids = vec![nix::unistd::Uid::effective().as_raw()];
    if let Some(user) = &rel.manifest.run.user
        && let Ok(Some(u)) = nix::unistd::User::from_name(user)
    {
        uids.push(u.uid.as_raw());
    }
    if !uids.contains(&p.uid) {
        return Err(format!(
            "it runs as uid {}, not as the service's {}",
            p.uid,
            join_uids(&uids)
        ));
    }
    if !runs_release(&p.cmdline, &rel.manifest.run.argv, &rel.manifest.jar) {
        return Err(format!(
            "its command line `{}` is not release {id}'s",
            show_cmdline(&p.cmdline)
        ));
    }
    Ok(ServiceProof::Release(id))
}

/// The release id whose directory `cwd` is.
pub fn release_of(layout: &Layout, cwd: &Path) -> Option<String> {
    let releases = std::fs::canonicalize(layout.releases_dir()).ok()?;
    let rel = cwd.strip_prefix(&releases).ok()?;
    let mut parts = rel.components();
    let id = parts.next()?.as_os_str().to_str()?.to_string();
    parts.next().is_none().then_some(id)
}

/// The command line is the release's argv, or (a wrapper that exec'ed, a
/// start by hand) runs its program with its jar.
fn runs_release(cmdline: &[OsString], argv: &[String], jar: &str) -> bool {
    if !cmdline.is_empty()
        && cmdline
            .iter()
            .map(|a| a.as_os_str())
            .eq(argv.iter().map(OsStr::new))
    {
        return true;
    }
    let names_jar = !jar.is_empty()
        && cmdline
            .iter()
            .any(|a| Path::new(a).file_name() == Some(OsStr::new(jar)));
    let program = |a: Option<&OsStr>| a.and_then(|a| Path::new(a).file_name().map(OsStr::to_owned));
    let same_program = program(cmdline.first().map(|a| a.as_os_str()))
        .is_some_and(|p| Some(p) == program(argv.first().map(OsStr::new)));
    same_program && names_jar
}

fn join_uids(uids: &[u32]) -> String {
    uids.iter()
        .map(|u| format!("uid {u}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A command line for a message, shortened.
fn show_cmdline(cmdline: &[OsString]) -> String {
    let text = cmdline
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > 120 {
        format!("{}…", text.chars().take(120).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_service_command_line_is_its_release_argv_or_names_its_jar() {
        let argv: Vec<String> = ["java", "-Xmx64m", "-jar", "hello.jar"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(runs_release(
            &os(&["java", "-Xmx64m", "-jar", "hello.jar"]),
            &argv,
            "hello.jar"
        ));
        assert!(runs_release(
            &os(&["/usr/bin/java", "-jar", "/srv/r1/hello.jar"]),
            &argv,
            "hello.jar"
        ));
        assert!(!runs_release(&os(&["sleep", "60"]), &argv, "hello.jar"));
        assert!(!runs_release(
            &os(&["java", "-jar", "other.jar"]),
            &argv,
            "hello.jar"
        ));
        assert!(!runs_release(&[], &argv, "hello.jar"));
    }
}
