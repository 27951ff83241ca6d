//! Provisioning resources: what a host needs before the first deploy — the
//! service user and group, the directories with owners and modes, and the
//! init integration. Each resource is checked first and changed only when it
//! differs, so a second run reports no change; a dry run only reports.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::host::fs::{GuardedDir, Owner as FsOwner};
use crate::host::init::{self, InitSpec};
use crate::protocol::layout::{DirOwner, Layout};
use crate::protocol::{ProvisionSpec, ResourceResult, ResourceStatus};

/// The state of one resource after the run.
fn result(
    resource: String,
    status: ResourceStatus,
    detail: impl Into<String>,
    diff: Option<String>,
) -> ResourceResult {
    ResourceResult {
        resource,
        status,
        detail: detail.into(),
        diff,
    }
}

/// Brings the host to the state `spec` asks for (or reports what would change).
pub fn provision(layout: &Layout, spec: &ProvisionSpec) -> Vec<ResourceResult> {
    let mut results = Vec::new();
    let on_real_root = layout.root() == Path::new("/");
    let root_user = nix::unistd::Uid::effective().is_root();
    if on_real_root && !root_user {
        results.push(result(
            "privileges".into(),
            ResourceStatus::Failed,
            "provisioning a host needs root: log in as root or set `sudo = true` for the stage",
            None,
        ));
        return results;
    }
    // Who owns what the service may write; on a non-root `local` stage, the invoking user.
    let service = if root_user {
        let group = ensure_group(&spec.user, spec.dry_run, &mut results);
        let user = ensure_user(
            &spec.user,
            group,
            &layout.lib_dir(),
            spec.dry_run,
            &mut results,
        );
        match (user, group) {
            (Some(u), Some(g)) => Owner::new(&spec.user, u, &spec.user, g),
            _ => return results,
        }
    } else {
        Owner::of_ids(
            nix::unistd::Uid::current().as_raw(),
            nix::unistd::Gid::current().as_raw(),
        )
    };
    let me = Owner::of_ids(
        nix::unistd::Uid::effective().as_raw(),
        nix::unistd::Gid::effective().as_raw(),
    );
    // Owners and modes from the layout's one table, which the supervisor
    // also creates missing directories from (a reboot empties /run).
    for dir in layout.directories() {
        let owner = match dir.owner {
            DirOwner::Agent => &me,
            DirOwner::Service => &service,
        };
        results.push(ensure_dir(&dir.path, owner, dir.mode, spec.dry_run));
    }
    // Init integration only on a real host: a `local` stage's root is a project directory.
    if on_real_root {
        results.extend(ensure_init(layout, spec));
    }
    results
}

/// The systemd unit when the host runs systemd, else the LSB init script;
/// either enabled at boot.
fn ensure_init(layout: &Layout, spec: &ProvisionSpec) -> Vec<ResourceResult> {
    let init = match InitSpec::gather(layout, Path::new(&spec.agent_path)) {
        Ok(init) => init,
        Err(e) => {
            return vec![result(
                "init integration".into(),
                ResourceStatus::Failed,
                e,
                None,
            )];
        }
    };
    let mut results = Vec::new();
    let systemd = Path::new("/run/systemd/system").is_dir();
    let (took_over, go_on) =
        crate::host::takeover::before_install(layout, systemd, spec.take_over, spec.dry_run);
    results.extend(took_over);
    if !go_on {
        return results;
    }
    if systemd {
        results.extend(ensure_unit(layout, &init, spec.dry_run));
    } else {
        results.extend(ensure_initscript(layout, &init, spec.dry_run));
    }
    results
}

/// The systemd unit, written when it differs, daemon-reloaded, enabled.
fn ensure_unit(layout: &Layout, init: &InitSpec, dry_run: bool) -> Vec<ResourceResult> {
    let mut results = Vec::new();
    let text = match init::unit_text(init) {
        Ok(t) => t,
        Err(e) => {
            return vec![result(
                "systemd unit".into(),
                ResourceStatus::Failed,
                e,
                None,
            )];
        }
    };
    let file = ensure_file(&init::unit_path(layout), &text, 0o644, dry_run);
    let changed = file.status == ResourceStatus::Changed;
    results.push(file);
    let name = format!("{}.service", layout.name());
    if changed {
        results.push(command_resource(
            "systemctl daemon-reload",
            Command::new("systemctl").arg("daemon-reload"),
        ));
    }
    let enabled = Command::new("systemctl")
        .args(["is-enabled", "--quiet", "--", &name])
        .status()
        .is_ok_and(|s| s.success());
    results.push(match (enabled, dry_run) {
        (true, _) => result(
            format!("enabled {name}"),
            ResourceStatus::Ok,
            "starts at boot",
            None,
        ),
        (false, true) => result(
            format!("enabled {name}"),
            ResourceStatus::WouldChange,
            "systemctl enable",
            None,
        ),
        (false, false) => command_resource(
            &format!("enabled {name}"),
            Command::new("systemctl").args(["enable", "--quiet", "--", &name]),
        ),
    });
    results
}

/// The LSB init script, written when it differs, enabled with `update-rc.d`.
fn ensure_initscript(layout: &Layout, init: &InitSpec, dry_run: bool) -> Vec<ResourceResult> {
    let mut results = Vec::new();
    let text = init::initscript_text(init);
    results.push(ensure_file(
        &init::initscript_path(layout),
        &text,
        0o755,
        dry_run,
    ));
    // update-rc.d makes the rc?.d links; their presence is what "enabled" means here.
    #[allow(clippy::disallowed_methods)] // root-only: /etc/rc2.d
    let rc2 = fs::read_dir(layout.root().join("etc/rc2.d"));
    let linked = rc2
        .map(|dir| {
            dir.flatten().any(|e| {
                let link = e.file_name().to_string_lossy().into_owned();
                link.starts_with('S') && link.get(3..) == Some(layout.name())
            })
        })
        .unwrap_or(false);
    let resource = format!("enabled /etc/init.d/{}", layout.name());
    results.push(match (linked, dry_run) {
        (true, _) => result(resource, ResourceStatus::Ok, "starts at boot (rc2.d)", None),
        (false, true) => result(
            resource,
            ResourceStatus::WouldChange,
            "update-rc.d defaults",
            None,
        ),
        (false, false) => command_resource(
            &resource,
            Command::new("update-rc.d").args([layout.name(), "defaults"]),
        ),
    });
    results
}

/// Runs a command as a resource: `changed` when it succeeds.
fn command_resource(resource: &str, command: &mut Command) -> ResourceResult {
    match run(command) {
        Ok(()) => result(resource.to_string(), ResourceStatus::Changed, "done", None),
        Err(e) => result(resource.to_string(), ResourceStatus::Failed, e, None),
    }
}

/// A system account (user or group) provisioning makes sure exists.
struct Account<'a> {
    /// `user` or `group`.
    kind: &'static str,
    /// `uid` or `gid`.
    id_word: &'static str,
    name: &'a str,
    /// What a dry run says it would do.
    would: &'static str,
    /// The program that creates it, for messages.
    creator: &'static str,
}

/// The account's id: `Some(None)` when a dry run would create it, `None` on
/// failure. `lookup` gives the id and a description when it exists.
fn ensure_account(
    account: &Account,
    dry_run: bool,
    results: &mut Vec<ResourceResult>,
    lookup: &dyn Fn() -> Result<Option<(u32, String)>, String>,
    create: &mut dyn FnMut() -> Result<(), String>,
) -> Option<Option<u32>> {
    let resource = format!("{} {}", account.kind, account.name);
    let mut fail = |why: String| {
        results.push(result(resource.clone(), ResourceStatus::Failed, why, None));
        None
    };
    match lookup() {
        Ok(Some((id, detail))) => {
            results.push(result(resource, ResourceStatus::Ok, detail, None));
            Some(Some(id))
        }
        Ok(None) if dry_run => {
            results.push(result(
                resource,
                ResourceStatus::WouldChange,
                account.would,
                None,
            ));
            Some(None)
        }
        Ok(None) => {
            if let Err(e) = create() {
                return fail(e);
            }
            match lookup() {
                Ok(Some((id, _))) => {
                    let detail = format!("created, {} {id}", account.id_word);
                    results.push(result(resource, ResourceStatus::Changed, detail, None));
                    Some(Some(id))
                }
                _ => fail(format!(
                    "{} succeeded but the {} is not there",
                    account.creator, account.kind
                )),
            }
        }
        Err(e) => fail(e),
    }
}

/// The group's gid: `Some(None)` when a dry run would create it, `None` on failure.
fn ensure_group(
    name: &str,
    dry_run: bool,
    results: &mut Vec<ResourceResult>,
) -> Option<Option<u32>> {
    let account = Account {
        kind: "group",
        id_word: "gid",
        name,
        would: "would create a system group",
        creator: "groupadd",
    };
    let lookup = || {
        nix::unistd::Group::from_name(name)
            .map(|g| g.map(|g| (g.gid.as_raw(), format!("gid {}", g.gid))))
            .map_err(|e| e.to_string())
    };
    let mut create = || run(Command::new("groupadd").args(["--system", "--", name]));
    ensure_account(&account, dry_run, results, &lookup, &mut create)
}

/// The user's uid: `Some(None)` when a dry run would create it, `None` on failure.
fn ensure_user(
    name: &str,
    gid: Option<Option<u32>>,
    home: &Path,
    dry_run: bool,
    results: &mut Vec<ResourceResult>,
) -> Option<Option<u32>> {
    let gid = gid?;
    let account = Account {
        kind: "user",
        id_word: "uid",
        name,
        would: "would create a system user without a login shell",
        creator: "useradd",
    };
    let lookup = || {
        nix::unistd::User::from_name(name)
            .map(|u| {
                u.map(|u| {
                    let detail = format!("uid {}, shell {}", u.uid, u.shell.display());
                    (u.uid.as_raw(), detail)
                })
            })
            .map_err(|e| e.to_string())
    };
    let mut create = || {
        run(Command::new("useradd")
            .args(["--system", "--gid"])
            .arg(gid.map_or_else(|| name.to_string(), |g| g.to_string()))
            .arg("--home-dir")
            .arg(home)
            .args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--",
                name,
            ]))
    };
    ensure_account(&account, dry_run, results, &lookup, &mut create)
}

/// Who should own a directory: ids when they exist (a dry run on a fresh
/// host has names only), names for people.
struct Owner {
    uid: Option<u32>,
    gid: Option<u32>,
    shown: String,
}

impl Owner {
    fn new(user: &str, uid: Option<u32>, group: &str, gid: Option<u32>) -> Owner {
        Owner {
            uid,
            gid,
            shown: format!("{user}:{group}"),
        }
    }

    fn of_ids(uid: u32, gid: u32) -> Owner {
        Owner {
            uid: Some(uid),
            gid: Some(gid),
            shown: owner_names(uid, gid),
        }
    }
}

/// `user:group` for ids, numbers where no name exists.
fn owner_names(uid: u32, gid: u32) -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name);
    format!("{user}:{group}")
}

fn ensure_dir(path: &Path, owner: &Owner, mode: u32, dry_run: bool) -> ResourceResult {
    let resource = format!("directory {}", path.display());
    let want = format!("{} {mode:04o}", owner.shown);
    // Through the guarded walk and the directory's fd: a link planted in
    // place of it (or of a parent another user can write) is refused,
    // never chowned or chmodded through.
    let existing = match GuardedDir::open(path) {
        Ok(dir) => Some(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return result(resource, ResourceStatus::Failed, e.to_string(), None),
    };
    let stat = match existing.as_ref().map(GuardedDir::stat).transpose() {
        Ok(stat) => stat,
        Err(e) => return result(resource, ResourceStatus::Failed, e.to_string(), None),
    };
    let have = stat
        .as_ref()
        .map(|st| format!("{} {:04o}", owner_names(st.uid, st.gid), st.mode));
    let same = stat.as_ref().is_some_and(|st| {
        Some(st.uid) == owner.uid && Some(st.gid) == owner.gid && st.mode == mode
    });
    if same {
        return result(resource, ResourceStatus::Ok, want, None);
    }
    let change = match &have {
        Some(have) => format!("{have} → {want}"),
        None => format!("create {want}"),
    };
    if dry_run {
        return result(resource, ResourceStatus::WouldChange, change, None);
    }
    let applied = (|| -> io::Result<()> {
        let dir = match existing {
            Some(dir) => dir,
            None => GuardedDir::open_or_create(path, mode, None)?.0,
        };
        dir.chmod(mode)?;
        if nix::unistd::Uid::effective().is_root() {
            let st = dir.stat()?;
            dir.chown(FsOwner {
                uid: owner.uid.unwrap_or(st.uid),
                gid: owner.gid.unwrap_or(st.gid),
            })?;
        }
        Ok(())
    })();
    match applied {
        Ok(()) => result(resource, ResourceStatus::Changed, change, None),
        Err(e) => result(
            resource,
            ResourceStatus::Failed,
            format!("{change}: {e}"),
            None,
        ),
    }
}

/// Writes `content` to `path` when it differs; the diff is part of the result.
#[allow(clippy::disallowed_methods)] // root-only: the unit or init script in /etc
pub fn ensure_file(path: &Path, content: &str, mode: u32, dry_run: bool) -> ResourceResult {
    let resource = format!("file {}", path.display());
    let old = fs::read_to_string(path).ok();
    let old_mode = fs::metadata(path).ok().map(|m| m.mode() & 0o7777);
    if old.as_deref() == Some(content) && old_mode == Some(mode) {
        return result(
            resource,
            ResourceStatus::Ok,
            format!("{mode:04o}, up to date"),
            None,
        );
    }
    let diff = similar::TextDiff::from_lines(old.as_deref().unwrap_or(""), content)
        .unified_diff()
        .header(
            &if old.is_some() {
                path.display().to_string()
            } else {
                "/dev/null".into()
            },
            &path.display().to_string(),
        )
        .to_string();
    let detail = match (old.is_some(), old_mode) {
        (false, _) => format!("create, mode {mode:04o}"),
        (true, Some(m)) if m != mode => format!("mode {m:04o} → {mode:04o}"),
        _ => "update".to_string(),
    };
    if dry_run {
        return result(resource, ResourceStatus::WouldChange, detail, Some(diff));
    }
    let written = init::install(path, content, mode);
    match written {
        Ok(()) => result(resource, ResourceStatus::Changed, detail, Some(diff)),
        Err(e) => result(
            resource,
            ResourceStatus::Failed,
            format!("{detail}: {e}"),
            Some(diff),
        ),
    }
}

/// Runs a command given as argv; its stderr becomes the error.
fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed ({}): {}",
            command.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests: their own temp dirs
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_planted_as_a_link_where_another_user_can_write_is_not_changed_through() {
        let dir = tempfile::tempdir().unwrap();
        // A parent another user can write (Ubuntu's /var/log is group syslog, 0775).
        let parent = dir.path().join("var/log");
        fs::create_dir_all(&parent).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
        let victim = dir.path().join("etc");
        fs::create_dir(&victim).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&victim, parent.join("svc")).unwrap();
        let me = Owner::of_ids(
            nix::unistd::Uid::effective().as_raw(),
            nix::unistd::Gid::effective().as_raw(),
        );
        let done = ensure_dir(&parent.join("svc"), &me, 0o750, false);
        assert_eq!(done.status, ResourceStatus::Failed, "{done:?}");
        assert!(done.detail.contains("refusing to follow it"), "{done:?}");
        let mode = fs::metadata(&victim).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700, "the link's target was changed");
    }

    #[test]
    fn files_are_written_once_and_dry_runs_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/init.d/svc");
        let dry = ensure_file(&path, "a\n", 0o755, true);
        assert_eq!(dry.status, ResourceStatus::WouldChange);
        assert!(dry.diff.as_deref().unwrap().contains("+a"));
        assert!(!path.exists());
        assert_eq!(
            ensure_file(&path, "a\n", 0o755, false).status,
            ResourceStatus::Changed
        );
        assert_eq!(
            ensure_file(&path, "a\n", 0o755, false).status,
            ResourceStatus::Ok
        );
        let update = ensure_file(&path, "b\n", 0o755, true);
        assert!(
            update.diff.as_deref().unwrap().contains("-a\n+b"),
            "{:?}",
            update.diff
        );
    }

    #[test]
    fn directories_get_their_mode_and_a_second_run_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/log/svc");
        let me = Owner::of_ids(
            nix::unistd::Uid::effective().as_raw(),
            nix::unistd::Gid::effective().as_raw(),
        );
        assert_eq!(
            ensure_dir(&path, &me, 0o750, true).status,
            ResourceStatus::WouldChange
        );
        assert!(!path.exists());
        assert_eq!(
            ensure_dir(&path, &me, 0o750, false).status,
            ResourceStatus::Changed
        );
        assert_eq!(
            ensure_dir(&path, &me, 0o750, false).status,
            ResourceStatus::Ok
        );
    }

    #[test]
    fn a_dry_run_names_the_owner_a_fresh_host_would_get() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/log/svc");
        let owner = Owner::new("svc", None, "svc", None);
        let planned = ensure_dir(&path, &owner, 0o750, true);
        assert_eq!(planned.status, ResourceStatus::WouldChange);
        assert_eq!(planned.detail, "create svc:svc 0750");
    }
}
