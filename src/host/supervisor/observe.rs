//! Observing what actually runs: the pidfile and state file checked against
//! `/proc` (files only say what once was true), identity by pid + start time.

use std::fs;

use crate::protocol::layout::Layout;

use super::procfs::{self, Liveness, ProcessId};
use super::state::{self, Phase, Pidfile, SupervisorState};

/// The service process as the pidfile names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// No pidfile.
    NoPidfile,
    /// A pidfile we cannot read.
    Garbled(String),
    /// Alive; `verified` is false for a pid-only pidfile (no start time to compare).
    Alive {
        /// The live process.
        id: ProcessId,
        /// Whether the start time matched.
        verified: bool,
    },
    /// The pid no longer exists (or is from before a reboot).
    Gone(i32),
    /// The pid exists but is another process.
    Reused(i32),
}

/// Everything `start`, `stop` and `status` need to decide.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The service process.
    pub service: Service,
    /// The state file, unless it is from an earlier boot.
    pub state: Option<SupervisorState>,
    /// The supervisor, when alive (identity verified).
    pub supervisor: Option<ProcessId>,
}

impl Observation {
    /// The state file, if it describes this very service process.
    pub fn state_of_service(&self) -> Option<&SupervisorState> {
        let Service::Alive { id, .. } = &self.service else {
            return None;
        };
        self.state.as_ref().filter(|s| s.service == Some(*id))
    }

    /// True while a live supervisor waits out the back-off after a crash.
    pub fn restarting(&self) -> bool {
        self.supervisor.is_some()
            && self
                .state
                .as_ref()
                .is_some_and(|s| s.state == Phase::BackingOff)
    }

    /// True while a supervisor is alive and has not reached "running" yet.
    pub fn starting(&self) -> bool {
        self.supervisor.is_some()
            && self
                .state
                .as_ref()
                .is_some_and(|s| s.state == Phase::Starting)
    }
}

/// Looks at the pidfile and state file and checks both against `/proc`.
pub fn observe(layout: &Layout) -> Observation {
    let state = state::read_state(&layout.supervisor_state());
    let this_boot = procfs::boot_id();
    let earlier_boot = matches!(
        (&state, &this_boot),
        (Some(SupervisorState { boot_id: Some(then), .. }), Some(now)) if then != now
    );
    let state = if earlier_boot { None } else { state };

    let service = match state::read_pidfile(&layout.pidfile()) {
        Pidfile::Missing => Service::NoPidfile,
        Pidfile::Garbled(why) => Service::Garbled(why),
        Pidfile::Found { pid, .. } if earlier_boot => Service::Gone(pid),
        Pidfile::Found {
            pid,
            start_ticks: Some(start_ticks),
        } => {
            let id = ProcessId { pid, start_ticks };
            match procfs::liveness(id) {
                Liveness::Alive => Service::Alive { id, verified: true },
                Liveness::Gone => Service::Gone(pid),
                Liveness::Reused => Service::Reused(pid),
            }
        }
        Pidfile::Found {
            pid,
            start_ticks: None,
        } => match procfs::stat(pid) {
            Ok(Some(s)) if !matches!(s.state, 'Z' | 'X' | 'x') => Service::Alive {
                id: ProcessId {
                    pid,
                    start_ticks: s.start_ticks,
                },
                verified: false,
            },
            _ => Service::Gone(pid),
        },
    };

    let supervisor = state
        .as_ref()
        .map(|s| s.supervisor)
        .filter(|id| procfs::liveness(*id) == Liveness::Alive);

    Observation {
        service,
        state,
        supervisor,
    }
}

/// The release a process runs, from its working directory (a release dir).
pub fn release_from_cwd(layout: &Layout, pid: i32) -> Option<String> {
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let releases = fs::canonicalize(layout.releases_dir()).ok()?;
    let rel = cwd.strip_prefix(&releases).ok()?;
    let mut parts = rel.components();
    let id = parts.next()?.as_os_str().to_str()?.to_string();
    parts.next().is_none().then_some(id)
}
