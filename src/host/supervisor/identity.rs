//! Proof that a pid is this service's supervisor or its service, from
//! `/proc` alone. The pidfile and state file only say which pid to look at:
//! under systemd (`User=`, `RuntimeDirectory=`) the service user can write
//! them, so nothing is signalled because a file names it.
//!
//! A supervisor is proven by its start time, its owner (root, us, or the
//! owner of the run dir's files), its program (this shipjar binary) and its
//! command line (`service supervise|run NAME --root ROOT` of this very
//! service). A service is proven by its start time and either its parent
//! (the proven supervisor, whose process group it leads) or, without one,
//! by being that service: its user, its working directory (a release of the
//! service) and its command line (that release's argv, or naming its jar).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::protocol::layout::Layout;

use super::process;
use super::procfs::{self, ProcessId};
use super::release;

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
    /// Effective uid.
    pub euid: u32,
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
    let (uid, euid) = procfs::uids(pid).ok()??;
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
        euid,
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

/// Uids a supervisor of this service may run as: root, ours, and — when we
/// are root — the owner of the run dir's state file (the unit's `User=`).
/// Root is always believable: the service user cannot start a root process.
pub fn supervisor_uids(layout: &Layout) -> Vec<u32> {
    let me = nix::unistd::Uid::effective().as_raw();
    let mut uids = vec![0];
    if me != 0 {
        uids.push(me);
    }
    if me == 0
        && let Ok(meta) = std::fs::symlink_metadata(layout.supervisor_state())
        && !uids.contains(&meta.uid())
    {
        uids.push(meta.uid());
    }
    uids
}

/// Checks that `p` is a shipjar supervisor of this service.
pub fn prove_supervisor(p: &Snapshot, layout: &Layout, uids: &[u32]) -> Result<(), String> {
    if !uids.contains(&p.uid) || !uids.contains(&p.euid) {
        return Err(format!(
            "it runs as uid {}, not as {}",
            p.uid,
            join_uids(uids)
        ));
    }
    match &p.exe {
        Some(exe) if !is_this_binary(exe) => {
            return Err(format!(
                "its program is {}, not this shipjar",
                exe.display()
            ));
        }
        Some(_) => {}
        // Another user's process: we could not signal it anyway.
        None if !process::is_root() => {}
        None => return Err("its program cannot be read".to_string()),
    }
    if supervises(&p.cmdline, p.cwd.as_deref(), layout) {
        Ok(())
    } else {
        Err(format!(
            "its command line is `{}`, not `shipjar service supervise|run {} --root {}`",
            show_cmdline(&p.cmdline),
            layout.name(),
            layout.root().display()
        ))
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

/// `/proc/PID/exe` names the binary we run: the same file, or the same path
/// (a binary replaced since shows as `PATH (deleted)`).
fn is_this_binary(exe: &Path) -> bool {
    let Ok(mine) = std::fs::read_link("/proc/self/exe") else {
        return false;
    };
    let strip = |p: &Path| {
        let text = p.to_string_lossy();
        PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text))
    };
    if strip(exe) == strip(&mine) {
        return true;
    }
    let same_file = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    same_file(exe, &mine)
}

/// `… service supervise|run NAME [--root ROOT]` for this service and root;
/// a relative root is taken from the process's working directory.
fn supervises(cmdline: &[OsString], cwd: Option<&Path>, layout: &Layout) -> bool {
    let args: Vec<&OsStr> = cmdline.iter().skip(1).map(|a| a.as_os_str()).collect();
    let Some(at) = args.iter().position(|a| *a == "service") else {
        return false;
    };
    let rest = &args[at + 1..];
    if !matches!(rest.first(), Some(v) if *v == "supervise" || *v == "run") {
        return false;
    }
    let mut name = None;
    let mut root: Option<&OsStr> = None;
    let mut instance: Option<&OsStr> = None;
    let mut i = 1;
    while i < rest.len() {
        let a = rest[i];
        if a == "--instance" {
            instance = rest.get(i + 1).copied();
            i += 2;
            continue;
        }
        if a == "--root" {
            root = rest.get(i + 1).copied();
            i += 2;
            continue;
        }
        if let Some(r) = a.to_str().and_then(|s| s.strip_prefix("--root=")) {
            root = Some(OsStr::new(r));
        } else if !a.to_string_lossy().starts_with('-') && name.is_none() {
            name = Some(a);
        }
        i += 1;
    }
    if name.is_none_or(|n| n != layout.name()) {
        return false;
    }
    // One instance's supervisor is not the other's.
    let wanted = layout.instance().map(|p| p.to_string());
    if instance.and_then(OsStr::to_str) != wanted.as_deref() {
        return false;
    }
    let root = Path::new(root.unwrap_or(OsStr::new("/")));
    let root = match cwd {
        Some(cwd) if root.is_relative() => cwd.join(root),
        _ => root.to_path_buf(),
    };
    match (
        std::fs::canonicalize(root),
        std::fs::canonicalize(layout.root()),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
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
    fn a_supervisor_command_line_names_this_service_and_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path().to_path_buf(), "hello");
        let root = dir.path().to_string_lossy().into_owned();
        let ok = os(&["shipjar", "service", "supervise", "hello", "--root", &root]);
        assert!(supervises(&ok, None, &layout));
        let eq = format!("--root={root}");
        assert!(supervises(
            &os(&["/x/shipjar", "service", "run", "hello", &eq]),
            None,
            &layout
        ));
        assert!(!supervises(
            &os(&["shipjar", "service", "status", "hello", "--root", &root]),
            None,
            &layout
        ));
        assert!(!supervises(
            &os(&["shipjar", "service", "run", "other", "--root", &root]),
            None,
            &layout
        ));
        assert!(!supervises(
            &os(&["shipjar", "service", "run", "hello"]),
            None,
            &layout
        ));
        assert!(!supervises(&os(&["sleep", "60"]), None, &layout));
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

    #[test]
    fn this_process_is_not_a_supervisor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path().to_path_buf(), "hello");
        let me = snapshot(std::process::id() as i32).expect("this process");
        let uids = supervisor_uids(&layout);
        let why = prove_supervisor(&me, &layout, &uids).expect_err("not a supervisor");
        assert!(
            why.contains("its program is") || why.contains("command line"),
            "{why}"
        );
    }
}
