//! Where everything of one service lives on a host (the BRIEF's FHS layout, under a root).

use std::path::{Path, PathBuf};

/// Paths of one service on one host; `root` is `/` on a real host.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    name: String,
}

impl Layout {
    /// Layout of service `name` under `root`.
    pub fn new(root: impl Into<PathBuf>, name: &str) -> Self {
        Layout {
            root: root.into(),
            name: name.to_string(),
        }
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

    /// The `current` symlink, pointing at `releases/<id>`.
    pub fn current_link(&self) -> PathBuf {
        self.lib_dir().join("current")
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
        self.log_dir().join(file)
    }

    /// `/run/<name>`: pidfile, state, locks.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run").join(&self.name)
    }

    /// LSB pidfile: the service's pid, then its start time.
    pub fn pidfile(&self) -> PathBuf {
        self.run_dir().join(format!("{}.pid", self.name))
    }

    /// The supervisor's state, as JSON.
    pub fn supervisor_state(&self) -> PathBuf {
        self.run_dir().join("supervisor.json")
    }

    /// Held by a supervisor while it runs; a held lock proves it is alive.
    pub fn supervisor_lock(&self) -> PathBuf {
        self.run_dir().join("supervisor.lock")
    }

    /// The stage's deploy lock and the file naming its holder.
    pub fn deploy_lock(&self) -> PathBuf {
        self.run_dir().join("deploy.lock")
    }
}
