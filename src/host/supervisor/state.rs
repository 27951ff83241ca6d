//! The pidfile and the supervisor's state file, both written atomically so a
//! reader never sees half a file (temp file in the same dir, fsync, rename).

use std::fs;
use std::io::{self};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::os::procfs::ProcessId;
use crate::protocol::files::write_atomic;
use crate::protocol::wire_enum;

wire_enum! {
    /// Where the supervised service is in its life. A phase written by a
    /// newer supervisor stays `Unknown` rather than hiding the whole state.
    pub enum Phase {
        /// Spawned, waiting for the health check.
        Starting => "starting",
        /// Healthy and supervised.
        Running => "running",
        /// A stop was requested; signals are on their way.
        Stopping => "stopping",
        /// The service process has ended (see `last_exit`).
        Exited => "exited",
        /// It crashed; the supervisor waits out the back-off before restarting it.
        BackingOff => "backing_off",
        /// Too many failures: the supervisor gave up (see `failed_reason`).
        Failed => "failed",
    }
}

wire_enum! {
    /// What the current run does with the release's class-data archive
    /// (`[service] cds`); absent when it has none to do with.
    pub enum ClassDataUse {
        /// It maps the archive.
        Used => "used",
        /// There was no valid archive: it records its classes, and an
        /// archive is made from them beside it once it is healthy.
        Recording => "recording",
        /// It was given the archive, but the JVM refused to map it.
        Refused => "refused",
    }
}

/// Contents of the supervisor state file (`run/<name>/supervisor.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorState {
    /// Boot the pids below belong to.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The supervisor process.
    pub supervisor: ProcessId,
    /// The service process, once spawned.
    #[serde(default)]
    pub service: Option<ProcessId>,
    /// Release id the service was started from.
    pub release: String,
    /// Real path of that release's directory (not the `current` link).
    pub release_dir: PathBuf,
    /// When the service was spawned (RFC 3339, UTC).
    #[serde(default)]
    pub started_at: Option<String>,
    /// Lifecycle phase.
    pub state: Phase,
    /// Milliseconds from spawn to healthy, once healthy.
    #[serde(default)]
    pub healthy_after_ms: Option<u64>,
    /// How the service ended, e.g. "exited with code 1" or "exited 143 after SIGTERM".
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Whether that end was asked for (a stop), as opposed to a crash or failed start.
    #[serde(default)]
    pub stopped_on_request: bool,
    /// Exit code of the last run, when it exited.
    #[serde(default)]
    pub last_exit_code: Option<i32>,
    /// Signal that ended the last run, e.g. `SIGKILL`.
    #[serde(default)]
    pub last_exit_signal: Option<String>,
    /// Restarts after crashes so far.
    #[serde(default)]
    pub restarts: u32,
    /// When the next restart is due (RFC 3339, UTC), while backing off.
    #[serde(default)]
    pub next_restart_at: Option<String>,
    /// Why the supervisor gave up, once `failed`.
    #[serde(default)]
    pub failed_reason: Option<String>,
    /// After a stop: whether it ended on SIGTERM alone, with 0, 143 or by SIGTERM.
    #[serde(default)]
    pub clean_stop: Option<bool>,
    /// After a stop: how long it took, hook included.
    #[serde(default)]
    pub stop_took_ms: Option<u64>,
    /// After a stop: a SIGQUIT was sent for a thread dump.
    #[serde(default)]
    pub thread_dump: bool,
    /// Reloads done (or failed) so far; `service reload` waits for it to grow.
    #[serde(default)]
    pub reloads: u32,
    /// How the last reload went.
    #[serde(default)]
    pub last_reload: Option<String>,
    /// Whether it worked.
    #[serde(default)]
    pub last_reload_ok: Option<bool>,
    /// Since when the running service's health checks fail (RFC 3339,
    /// UTC); `None` while they pass.
    #[serde(default)]
    pub unhealthy_since: Option<String>,
    /// What the last failed health check got, while unhealthy, e.g. "HTTP 500".
    #[serde(default)]
    pub last_probe: Option<String>,
    /// The current run's class-data archive: used, or being made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_data: Option<ClassDataUse>,
    /// The auto-revert this supervisor made (`[restart] auto_revert`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_reverted: Option<AutoReverted>,
    /// When the state last changed (RFC 3339, UTC).
    pub updated_at: String,
}

/// An auto-revert: the supervisor gave up on `from_release` soon after its
/// deploy and went back to the release it runs now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoReverted {
    /// The release given up on.
    pub from_release: String,
    /// Its version.
    pub from_version: String,
    /// Why it was given up on.
    pub why: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

impl AutoReverted {
    /// "at T from release R (version V): why", as `status` prints it.
    pub fn line(&self) -> String {
        format!(
            "at {} from release {} (version {}): {}",
            self.at, self.from_release, self.from_version, self.why
        )
    }
}

/// Writes the LSB pidfile: the pid, then its start time in clock ticks.
pub fn write_pidfile(path: &Path, id: ProcessId) -> io::Result<()> {
    write_atomic(path, format!("{}\n{}\n", id.pid, id.start_ticks).as_bytes())
}

/// Contents of a pidfile as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pidfile {
    /// No pidfile.
    Missing,
    /// A pid and, when present (other tools write only a pid), its start time.
    Found {
        /// Process id.
        pid: i32,
        /// Start time in clock ticks since boot.
        start_ticks: Option<u64>,
    },
    /// Present but not a pidfile we understand.
    Garbled(String),
}

/// Removes the pidfile or the state file (root's run dir); gone already is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    crate::protocol::files::remove_if_present(path)
}

/// Reads the pidfile.
pub fn read_pidfile(path: &Path) -> Pidfile {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Pidfile::Missing,
        Err(e) => return Pidfile::Garbled(format!("cannot read {}: {e}", path.display())),
    };
    let mut lines = text.lines().map(str::trim);
    let pid = lines
        .next()
        .and_then(|l| l.parse::<i32>().ok())
        .filter(|p| *p > 0);
    let Some(pid) = pid else {
        return Pidfile::Garbled(format!("{} holds no pid", path.display()));
    };
    let start_ticks = match lines.next().filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse() {
            Ok(t) => Some(t),
            Err(_) => {
                return Pidfile::Garbled(format!("{}: bad start time `{l}`", path.display()));
            }
        },
    };
    Pidfile::Found { pid, start_ticks }
}

/// Writes the state file, its text masked (`host::secrets`): a reason or a
/// probe's answer may carry what the service said.
pub fn write_state(path: &Path, state: &SupervisorState) -> io::Result<()> {
    let mut state = state.clone();
    for text in [
        state.last_exit.as_mut(),
        state.failed_reason.as_mut(),
        state.last_reload.as_mut(),
        state.last_probe.as_mut(),
        state.auto_reverted.as_mut().map(|a| &mut a.why),
    ]
    .into_iter()
    .flatten()
    {
        *text = crate::host::secrets::mask(text);
    }
    let mut json = serde_json::to_vec_pretty(&state).map_err(io::Error::other)?;
    json.push(b'\n');
    write_atomic(path, &json)
}

/// Reads the state file; `None` when missing or unreadable (it is advisory:
/// identity is always re-checked against `/proc`).
pub fn read_state(path: &Path) -> Option<SupervisorState> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.pid");
        assert_eq!(read_pidfile(&path), Pidfile::Missing);
        let id = ProcessId {
            pid: 4242,
            start_ticks: 99,
        };
        write_pidfile(&path, id).expect("write");
        assert_eq!(
            read_pidfile(&path),
            Pidfile::Found {
                pid: 4242,
                start_ticks: Some(99)
            }
        );
        fs::write(&path, "17\n").expect("write");
        assert_eq!(
            read_pidfile(&path),
            Pidfile::Found {
                pid: 17,
                start_ticks: None
            }
        );
        fs::write(&path, "nope\n").expect("write");
        assert!(matches!(read_pidfile(&path), Pidfile::Garbled(_)));
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_phase_from_a_newer_supervisor_keeps_the_state_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("supervisor.json");
        let text = serde_json::json!({
            "supervisor": {"pid": 42, "start_ticks": 7},
            "release": "r1",
            "release_dir": "/var/lib/x/releases/r1",
            "state": "hibernating",
            "updated_at": "2026-01-01T00:00:00Z",
        });
        fs::write(&path, text.to_string()).expect("write");
        let state = read_state(&path).expect("readable");
        assert_eq!(state.state, Phase::Unknown("hibernating".into()));
        assert_eq!(state.release, "r1");

        let mut known = state;
        known.state = Phase::BackingOff;
        write_state(&path, &known).expect("write");
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"state\": \"backing_off\""), "{text}");
    }
}
