//! Where everything of one service lives on a host (the BRIEF's FHS layout,
//! under a root), and who owns each directory with which mode: the one table
//! `provision`, the deploy and the supervisor all create directories from.

use std::path::{Path, PathBuf};

/// The directories of a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// `/var/lib/<name>`.
    Lib,
    /// `/var/lib/<name>/artifacts`.
    Artifacts,
    /// `/var/lib/<name>/releases`.
    Releases,
    /// `/var/lib/<name>/shared`: the service writes here.
    Shared,
    /// `/var/log/<name>`: the service's log.
    Log,
    /// `/var/lib/<name>/cds-dump`: root's; holds one directory of the
    /// service's per dumping run (see [`Layout::cds_dump_dir`]).
    CdsDump,
    /// `/run/<name>`: the supervisor's pidfile and state, the deploy lock's record.
    Run,
    /// `/run/<name>/locks`: every lock file of the service; only its owner
    /// (root on a provisioned host) can open them.
    Locks,
}

impl Dir {
    /// Every directory, parents first.
    pub const ALL: [Dir; 8] = [
        Dir::Lib,
        Dir::Artifacts,
        Dir::Releases,
        Dir::Shared,
        Dir::CdsDump,
        Dir::Log,
        Dir::Run,
        Dir::Locks,
    ];
}

/// Who owns a directory of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirOwner {
    /// Whoever runs the agent and the supervisor: root on a provisioned
    /// host. The service cannot change what it runs, nor the supervisor's
    /// records.
    Agent,
    /// The service's user and its group: what the service writes.
    Service,
}

/// One directory with its owner and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// Which one.
    pub dir: Dir,
    /// Its path under the layout's root.
    pub path: PathBuf,
    /// Who owns it.
    pub owner: DirOwner,
    /// Its permission bits.
    pub mode: u32,
}

/// A release's class-data sharing archive, `releases/<id>/cds.jsa`: a copy
/// the agent's user made (mode 0444), never the file the JVM wrote, so a
/// service compromised later cannot rewrite what every later start of its
/// release maps. See [`CDS_IDENTITY`], [`Layout::cds_dump_dir`].
pub const CDS_ARCHIVE: &str = "cds.jsa";

/// Next to the archive (agent's user, 0644): the `java`, `libjvm.so`, jar
/// and archive (path, size, mtime) it was written with; a start whose
/// files differ goes on without the archive.
pub const CDS_IDENTITY: &str = "cds.json";

/// A release's secret values to mask (`releases/<id>/SECRETS`, JSON, the
/// agent's user only, 0600): what the agent and the supervisor mask in what
/// they answer and record. See `protocol::mask`.
pub const RELEASE_SECRETS: &str = "SECRETS";

/// The locks of one service, each a file in [`Layout::locks_dir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Held for a moment while the deploy lock's record is read and replaced.
    Deploy,
    /// Held by the supervisor of the service (or of one of its instances)
    /// for its whole life: proof that it is alive.
    Supervisor,
    /// Held by the proxy's keeper while it lives.
    Keeper,
    /// Held by the runner of a proxied service while it lives.
    Runner,
    /// Held while a deploy, rollback, restart or reload changes what runs:
    /// one at a time per service (two would pick the same idle instance).
    Switch,
}

impl Lock {
    /// What it is called in messages: "the supervisor lock".
    pub fn describe(self) -> &'static str {
        match self {
            Lock::Deploy => "the deploy lock's mutex",
            Lock::Supervisor => "the supervisor lock",
            Lock::Keeper => "the proxy keeper's lock",
            Lock::Runner => "the runner's lock",
            Lock::Switch => "the switch lock",
        }
    }
}

/// Paths of one service on one host; `root` is `/` on a real host.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    name: String,
    /// One of two blue/green instances behind the proxy, named by its port.
    instance: Option<u16>,
}

impl Layout {
    /// Layout of service `name` under `root`.
    pub fn new(root: impl Into<PathBuf>, name: &str) -> Self {
        Layout {
            root: root.into(),
            name: name.to_string(),
            instance: None,
        }
    }

    /// The same service's instance on `port` (its own run dir, log file and
    /// release link); `None` is the service itself.
    pub fn with_instance(&self, port: Option<u16>) -> Self {
        Layout {
            instance: port,
            ..self.clone()
        }
    }

    /// The instance port this layout is for, if it is one.
    pub fn instance(&self) -> Option<u16> {
        self.instance
    }

    /// The host root this layout lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/lib/<name>`: artifacts, releases, current, shared, revisions.log.
    pub fn lib_dir(&self) -> PathBuf {
        self.root.join("var/lib").join(&self.name)
    }

    /// Content-addressed artifact store.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.lib_dir().join("artifacts")
    }

    /// The stored artifact with this sha256.
    pub fn artifact(&self, sha256: &str) -> PathBuf {
        self.artifacts_dir().join(format!("{sha256}.jar"))
    }

    /// One directory per release.
    pub fn releases_dir(&self) -> PathBuf {
        self.lib_dir().join("releases")
    }

    /// The directory of release `id`.
    pub fn release_dir(&self, id: &str) -> PathBuf {
        self.releases_dir().join(id)
    }

    /// The `current` symlink, pointing at `releases/<id>`; for an
    /// instance, its own link (see [`Layout::instance_link`]).
    pub fn current_link(&self) -> PathBuf {
        match self.instance {
            Some(port) => self.instance_link(port),
            None => self.lib_dir().join("current"),
        }
    }

    /// `instances/<port>`: the release the instance on `port` runs.
    pub fn instance_link(&self, port: u16) -> PathBuf {
        self.lib_dir().join("instances").join(port.to_string())
    }

    /// `cds-dump/<supervisor pid>/`: where a JVM writes its class-data
    /// archive at exit (the service's user, mode 0700, in a parent only
    /// root can write, so the service cannot swap it for a link; a release
    /// holds nothing the service may write); removed once the supervisor
    /// has copied the archive into the release, or discarded it.
    pub fn cds_dump_dir(&self, supervisor_pid: u32) -> PathBuf {
        self.directory(Dir::CdsDump)
            .path
            .join(supervisor_pid.to_string())
    }

    /// Kept across releases; writable by the service.
    pub fn shared_dir(&self) -> PathBuf {
        self.lib_dir().join("shared")
    }

    /// One line per deploy and rollback.
    pub fn revisions_log(&self) -> PathBuf {
        self.lib_dir().join("revisions.log")
    }

    /// `/var/log/<name>`.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("var/log").join(&self.name)
    }

    /// The service's output (stdout, stderr and supervisor events) under
    /// the default `[logs] file` name; see [`Layout::log_file_named`].
    pub fn log_file(&self) -> PathBuf {
        self.log_file_named(super::defaults::LOG_FILE)
    }

    /// The service's output under the file name a release configures
    /// (already checked to be one plain name).
    pub fn log_file_named(&self, file: &str) -> PathBuf {
        match self.instance {
            // `console.log` → `console-18081.log`: two instances never share a file.
            Some(port) => match file.rsplit_once('.') {
                Some((stem, ext)) if !stem.is_empty() => {
                    self.log_dir().join(format!("{stem}-{port}.{ext}"))
                }
                _ => self.log_dir().join(format!("{file}-{port}")),
            },
            None => self.log_dir().join(file),
        }
    }

    /// `/run/<name>`: pidfile, state, locks; an instance's are in
    /// `/run/<name>/instance-<port>`.
    pub fn run_dir(&self) -> PathBuf {
        match self.instance {
            Some(port) => self.service_run_dir().join(format!("instance-{port}")),
            None => self.service_run_dir(),
        }
    }

    /// `/run/<name>`, whichever instance this is.
    pub fn service_run_dir(&self) -> PathBuf {
        self.root.join("run").join(&self.name)
    }

    /// The proxy's files: active instance, keeper state, control socket, lock.
    pub fn proxy_dir(&self) -> PathBuf {
        self.service_run_dir().join("proxy")
    }

    /// The proxy's own output.
    pub fn proxy_log(&self) -> PathBuf {
        self.log_dir().join("proxy.log")
    }

    /// LSB pidfile: the service's pid, then its start time.
    pub fn pidfile(&self) -> PathBuf {
        self.run_dir().join(format!("{}.pid", self.name))
    }

    /// The supervisor's state, as JSON.
    pub fn supervisor_state(&self) -> PathBuf {
        self.run_dir().join("supervisor.json")
    }

    /// `/run/<name>/locks`: the lock files of the service and of its
    /// instances, the agent's user's, mode 0711: anyone may stat a lock file
    /// (to find its holder in `/proc/locks`), only that user may open one.
    pub fn locks_dir(&self) -> PathBuf {
        self.service_run_dir().join("locks")
    }

    /// The file of `lock` (mode 0600); an instance's supervisor has its own,
    /// `supervisor-<port>.lock`.
    pub fn lock_file(&self, lock: Lock) -> PathBuf {
        let name = match (lock, self.instance) {
            (Lock::Deploy, _) => "deploy.lock".to_string(),
            (Lock::Supervisor, None) => "supervisor.lock".to_string(),
            (Lock::Supervisor, Some(port)) => format!("supervisor-{port}.lock"),
            (Lock::Keeper, _) => "keeper.lock".to_string(),
            (Lock::Runner, _) => "runner.lock".to_string(),
            (Lock::Switch, _) => "switch.lock".to_string(),
        };
        self.locks_dir().join(name)
    }

    /// Where versions before `locks/` kept the file of `lock`, which a
    /// process they started may still hold; `None` for the deploy lock's
    /// mutex (they flocked the run directory, for a moment at a time).
    pub fn legacy_lock_file(&self, lock: Lock) -> Option<PathBuf> {
        match lock {
            Lock::Deploy | Lock::Switch => None,
            Lock::Supervisor => Some(self.run_dir().join("supervisor.lock")),
            Lock::Keeper => Some(self.proxy_dir().join("keeper.lock")),
            Lock::Runner => Some(self.proxy_dir().join("runner.lock")),
        }
    }

    /// A directory of the layout with the owner and mode it must have.
    pub fn directory(&self, dir: Dir) -> Directory {
        let (path, owner, mode) = match dir {
            Dir::Lib => (self.lib_dir(), DirOwner::Agent, 0o755),
            Dir::Artifacts => (self.artifacts_dir(), DirOwner::Agent, 0o755),
            Dir::Releases => (self.releases_dir(), DirOwner::Agent, 0o755),
            // The service's own: no other user reads its data or its log.
            Dir::Shared => (self.shared_dir(), DirOwner::Service, 0o750),
            Dir::Log => (self.log_dir(), DirOwner::Service, 0o750),
            // Traversable, not listable or writable: the service reaches
            // only its own run's directory, and cannot replace it.
            Dir::CdsDump => (self.lib_dir().join("cds-dump"), DirOwner::Agent, 0o711),
            // Readable by all, so `service status` works for anyone.
            Dir::Run => (self.run_dir(), DirOwner::Agent, 0o755),
            // Searchable, not readable: a lock file's holder can be looked
            // up by anyone, the file opened (and so locked) by its owner alone.
            Dir::Locks => (self.locks_dir(), DirOwner::Agent, 0o711),
        };
        Directory {
            dir,
            path,
            owner,
            mode,
        }
    }

    /// Every directory of the layout, parents first.
    pub fn directories(&self) -> Vec<Directory> {
        Dir::ALL.iter().map(|&d| self.directory(d)).collect()
    }

    /// The stage's deploy lock: the lease record naming its holder (read
    /// and replaced under [`Lock::Deploy`]).
    pub fn deploy_lock(&self) -> PathBuf {
        self.service_run_dir().join("deploy.lock")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_instance_has_its_own_run_dir_log_and_release_link() {
        let base = Layout::new("/r", "hello");
        let blue = base.with_instance(Some(18081));
        assert_eq!(blue.run_dir().to_str(), Some("/r/run/hello/instance-18081"));
        assert_eq!(blue.deploy_lock(), base.deploy_lock());
        assert_eq!(
            blue.lock_file(Lock::Supervisor).to_str(),
            Some("/r/run/hello/locks/supervisor-18081.lock")
        );
        assert_eq!(
            base.lock_file(Lock::Supervisor).to_str(),
            Some("/r/run/hello/locks/supervisor.lock")
        );
        assert_eq!(blue.lock_file(Lock::Keeper), base.lock_file(Lock::Keeper));
        assert_eq!(
            blue.current_link().to_str(),
            Some("/r/var/lib/hello/instances/18081")
        );
        assert_eq!(
            blue.log_file_named("console.log").to_str(),
            Some("/r/var/log/hello/console-18081.log")
        );
        assert_eq!(
            base.log_file_named("console.log").to_str(),
            Some("/r/var/log/hello/console.log")
        );
    }

    use super::*;
}
