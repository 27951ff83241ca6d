//! Observing what actually runs: the pidfile and state file only name pids;
//! each is proven before anything believes or signals it — the supervisor
//! by holding its lock (the kernel names the holder), the service against
//! `/proc` (see [`identity`]).

use std::fs;
use std::time::{Duration, SystemTime};

use crate::host::fs::GuardedDir;

use crate::host::lockfile;
use crate::protocol::layout::{Layout, Lock};

use super::identity::{self, ServiceProof};
use super::state::{self, Phase, Pidfile, SupervisorState};
use crate::host::os::procfs::{self, Liveness, ProcessId};

/// The service process as the pidfile names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// No pidfile.
    NoPidfile,
    /// A pidfile we cannot read.
    Garbled(String),
    /// Alive and proven to be the service.
    Alive {
        /// The live process.
        id: ProcessId,
        /// Child of the live, proven supervisor; false: it runs unsupervised.
        supervised: bool,
        /// The release it runs, when proven by its working directory.
        release: Option<String>,
    },
    /// The pid no longer exists (or is from before a reboot).
    Gone(i32),
    /// The pid exists but is another process; `why` says how we know.
    Other {
        /// The pid the pidfile names.
        pid: i32,
        /// E.g. "sleep: its working directory /tmp is not a release of hello".
        why: String,
    },
}

/// A supervisor the state file names that is not (provably) there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostSupervisor {
    /// The pid the state file names.
    pub pid: i32,
    /// `None`: gone; else why the live pid is not this service's supervisor.
    pub not_ours: Option<String>,
}

/// Everything `start`, `stop` and `status` need to decide.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The service process.
    pub service: Service,
    /// The state file, unless it is from an earlier boot.
    pub state: Option<SupervisorState>,
    /// The supervisor, when alive and proven.
    pub supervisor: Option<ProcessId>,
    /// The supervisor the state file names, when it is not alive or not ours.
    pub lost_supervisor: Option<LostSupervisor>,
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

/// Looks at the pidfile and state file and proves what they name against `/proc`.
pub fn observe(layout: &Layout) -> Observation {
    let state = state::read_state(&layout.supervisor_state());
    let this_boot = procfs::boot_id();
    let earlier_boot = matches!(
        (&state, &this_boot),
        (Some(SupervisorState { boot_id: Some(then), .. }), Some(now)) if then != now
    );
    let state = if earlier_boot { None } else { state };

    let (supervisor, lost_supervisor, state) = prove_supervisor(layout, state);

    let service = match state::read_pidfile(&layout.pidfile()) {
        Pidfile::Missing => Service::NoPidfile,
        Pidfile::Garbled(why) => Service::Garbled(why),
        Pidfile::Found { pid, .. } if earlier_boot => Service::Gone(pid),
        Pidfile::Found { pid, start_ticks } => match identity::snapshot(pid) {
            None => Service::Gone(pid),
            Some(p) if start_ticks.is_some_and(|t| t != p.id.start_ticks) => Service::Other {
                pid,
                why: format!("{}, started after the pidfile was written", p.name()),
            },
            Some(p) => match identity::prove_service(&p, layout, supervisor) {
                Ok(ServiceProof::Child) => Service::Alive {
                    id: p.id,
                    supervised: true,
                    release: None,
                },
                Ok(ServiceProof::Release(id)) => Service::Alive {
                    id: p.id,
                    supervised: false,
                    release: Some(id),
                },
                Err(why) => Service::Other {
                    pid,
                    why: format!("{}: {why}", p.name()),
                },
            },
        },
    };

    Observation {
        service,
        state,
        supervisor,
        lost_supervisor,
    }
}

/// The supervisor is the process holding the supervisor lock, as the
/// kernel names it (see [`lockfile`]): its program's path does not matter.
/// The state file only says which pid and start time to expect; a state
/// file naming another process belongs to an earlier supervisor and is
/// dropped when a live one holds the lock.
fn prove_supervisor(
    layout: &Layout,
    state: Option<SupervisorState>,
) -> (
    Option<ProcessId>,
    Option<LostSupervisor>,
    Option<SupervisorState>,
) {
    let holder = lockfile::holder(layout, Lock::Supervisor).filter(|h| h.pid > 0);
    let named = state.as_ref().map(|s| s.supervisor);
    match (named, holder) {
        (Some(id), Some(h)) if h.pid == id.pid && procfs::liveness(id) == Liveness::Alive => {
            (Some(id), None, state)
        }
        (named, Some(h)) => {
            // Held by a supervisor that has not written its state yet, or
            // whose state file was removed: the kernel's word wins.
            let id = procfs::identify(h.pid).ok().flatten();
            let lost = named
                .filter(|n| Some(n.pid) != id.map(|i| i.pid))
                .map(|n| LostSupervisor {
                    pid: n.pid,
                    not_ours: None,
                });
            match id {
                Some(id) => (Some(id), None, None),
                None => (None, lost, state),
            }
        }
        (Some(id), None) => {
            let not_ours = match procfs::liveness(id) {
                Liveness::Alive => identity::snapshot(id.pid).filter(|p| p.id == id).map(|p| {
                    format!(
                        "{} (it does not hold {})",
                        p.name(),
                        Lock::Supervisor.describe()
                    )
                }),
                Liveness::Gone | Liveness::Reused => None,
            };
            (
                None,
                Some(LostSupervisor {
                    pid: id.pid,
                    not_ours,
                }),
                state,
            )
        }
        (None, None) => (None, None, state),
    }
}

/// The release a process runs, from its working directory (a release dir).
pub fn release_from_cwd(layout: &Layout, pid: i32) -> Option<String> {
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    identity::release_of(layout, &cwd)
}

/// The supervisor's last sign of life: the newer of its state file and the
/// service log, neither followed if it is a link (the log dir is the
/// service user's).
pub fn last_sign_of_life(layout: &Layout) -> Option<SystemTime> {
    [layout.supervisor_state(), layout.log_file()]
        .iter()
        .filter_map(|p| {
            let (dir, name) = (p.parent()?, p.file_name()?);
            let st = GuardedDir::open(dir).and_then(|d| d.entry(name)).ok()??;
            let (secs, nanos) = st.mtime;
            let since = Duration::new(u64::try_from(secs).ok()?, u32::try_from(nanos).ok()?);
            SystemTime::UNIX_EPOCH.checked_add(since)
        })
        .max()
}
