//! Running one step on many hosts: bounded parallelism, a bounded rate of new
//! connections (sshd's MaxStartups drops bursts), and Ctrl-C handling.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::operator::config::{HostSpec, ResolvedStage};
use crate::operator::ssh::{ControlDir, Reach};
use crate::operator::transport::AgentSession;

/// Hosts at once unless `--parallel` says otherwise.
pub const DEFAULT_PARALLEL: usize = 32;
/// At most this many ssh connections being set up at once (below sshd's
/// default `MaxStartups` of 10).
const STARTUPS_IN_FLIGHT: usize = 8;

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);
/// The last signal that interrupted the run, for the exit code of a hard stop.
static LAST_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// After the second interrupt, the operator ends within this long, whatever
/// any host is doing.
const HARD_STOP_AFTER: Duration = Duration::from_millis(1500);

/// What the run is doing now and what a Ctrl-C would do, for the message
/// printed the moment it arrives.
static PHASE: Mutex<Phase> = Mutex::new(Phase::Idle);

extern "C" fn on_interrupt(signal: libc::c_int) {
    LAST_SIGNAL.store(signal, Ordering::SeqCst);
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

/// Where a run is, as far as an interrupt is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Nothing that changes hosts has started.
    Idle,
    /// Locking, uploading, preparing: no host runs anything new yet.
    BeforeChange,
    /// Switching these hosts; `earlier` hosts were switched in earlier batches.
    Switching {
        /// Hosts in the batch in flight.
        hosts: Vec<String>,
        /// Hosts already on the new release (restarted, for a restart).
        earlier: usize,
        /// A restart of what runs, not a switch to another release.
        restarting: bool,
    },
    /// Watching the canary hosts for their pause; nothing else switched.
    CanaryPause {
        /// The canary hosts.
        hosts: Vec<String>,
    },
    /// Putting hosts back, or releasing locks: finishing regardless.
    Finishing,
}

/// Hosts whose deploy lock is detached (held by no session), with when its
/// lease runs out: a hard stop cannot release those, so it names them.
static DETACHED: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

/// Records that `host`'s lock is detached until `until` (`None`: not anymore).
pub fn set_detached(host: &str, until: Option<Instant>) {
    let mut detached = DETACHED.lock().unwrap_or_else(|e| e.into_inner());
    match until {
        Some(until) => detached.insert(host.to_string(), until),
        None => detached.remove(host),
    };
}

/// Records what the run is doing, for the interrupt message.
pub fn set_phase(phase: Phase) {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = phase;
}

/// Makes Ctrl-C (and SIGTERM) ask the operator to wind down instead of dying:
/// the first lets running steps finish and starts nothing new; a second
/// cancels the switches in flight (those hosts go back). What happens is
/// printed the moment each arrives.
pub fn catch_interrupts() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    static WATCHING: std::sync::Once = std::sync::Once::new();
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only adds to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
    WATCHING.call_once(|| {
        std::thread::spawn(announce_interrupts);
    });
}

/// Says at once what each interrupt does (a signal handler cannot print),
/// and ends the operator shortly after the second one.
fn announce_interrupts() {
    let mut seen = 0;
    let mut second_at: Option<std::time::Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if second_at.is_some_and(|t| t.elapsed() >= HARD_STOP_AFTER) {
            hard_stop();
        }
        let now = INTERRUPTS.load(Ordering::SeqCst);
        if now == seen {
            continue;
        }
        if now >= 2 && second_at.is_none() {
            second_at = Some(std::time::Instant::now());
        }
        seen = now;
        let phase = PHASE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let message = interrupt_message(seen, &phase);
        eprintln!("{}", crate::operator::output::redact(&message));
    }
}

/// Ends the operator now: every session cut, each host's state said as far
/// as it is known, exit 130 (SIGINT) or 143 (SIGTERM).
fn hard_stop() -> ! {
    let phase = PHASE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sessions = crate::operator::transport::cut_all_sessions();
    let mut lines = vec!["stopped: the second interrupt ends shipjar now".to_string()];
    lines.extend(sessions.iter().map(|s| hard_stop_line(s, &phase)));
    let detached = DETACHED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    lines.extend(
        detached
            .iter()
            .filter(|(host, _)| !sessions.iter().any(|s| &s.host == *host))
            .map(|(host, until)| detached_line(host, *until)),
    );
    for line in lines {
        eprintln!("{}", crate::operator::output::redact(&line));
    }
    let signal = LAST_SIGNAL.load(Ordering::SeqCst);
    std::process::exit(128 + if signal > 0 { signal } else { libc::SIGINT });
}

/// A host whose lock a hard stop leaves behind: no session holds it.
fn detached_line(host: &str, until: Instant) -> String {
    let left = until.saturating_duration_since(Instant::now()).as_secs();
    format!(
        "[{host}] locked with no connection open (a deploy of more hosts than --parallel), \
         nothing in flight: its lock stays until its lease runs out in {left}s, or \
         `shipjar unlock STAGE --hosts {host}` frees it now; `shipjar status` shows the release it runs"
    )
}

/// Where one host was left by a hard stop.
fn hard_stop_line(session: &crate::operator::transport::OpenSession, phase: &Phase) -> String {
    let switching =
        matches!(phase, Phase::Switching { hosts, .. } if hosts.contains(&session.host));
    let restarting = matches!(
        phase,
        Phase::Switching {
            restarting: true,
            ..
        }
    );
    let state = if switching && restarting {
        "its restart was in flight and was asked to cancel: its agent leaves it as it finds it (behind the proxy the old instance keeps serving); `shipjar status` shows which"
    } else if switching {
        "its switch was in flight and was asked to cancel: its agent goes back to the previous release by itself (or, if it was past the gate, keeps the new one); `shipjar status` shows which"
    } else if session.awaiting {
        "a request was in flight (no switch): its agent finishes it and releases the lock by itself; the release it runs did not change"
    } else {
        "locked, nothing in flight: its lock is released as its agent sees the connection close; nothing changed"
    };
    format!("[{}] {state}", session.host)
}

/// What the `n`th interrupt does during `phase`.
pub fn interrupt_message(n: usize, phase: &Phase) -> String {
    match (n, phase) {
        (
            1,
            Phase::Switching {
                hosts,
                earlier,
                restarting: true,
            },
        ) => format!(
            "interrupted: stopping after the health gate of {}; {} — Ctrl-C again to abort now (a host cut short is left as its agent finds it)",
            hosts.join(", "),
            match earlier {
                0 => "no other host was restarted".to_string(),
                1 => "1 host restarted earlier keeps its new process".to_string(),
                n => format!("{n} hosts restarted earlier keep their new processes"),
            },
        ),
        (
            _,
            Phase::Switching {
                hosts,
                restarting: true,
                ..
            },
        ) => format!(
            "aborting: cancelling the restart of {}; each is left as its agent finds it (behind the proxy the old instance keeps serving): `shipjar status` shows which",
            hosts.join(", ")
        ),
        (1, Phase::Switching { hosts, earlier, .. }) => format!(
            "interrupted: stopping after the health gate of {}; {} — Ctrl-C again to abort now and put {} back",
            hosts.join(", "),
            match earlier {
                0 => "no other host was switched".to_string(),
                1 => "1 host switched earlier keeps the new release".to_string(),
                n => format!("{n} hosts switched earlier keep the new release"),
            },
            if hosts.len() == 1 { "it" } else { "them" }
        ),
        (_, Phase::Switching { hosts, .. }) => format!(
            "aborting: cancelling the switch of {}; they go back to their previous release",
            hosts.join(", ")
        ),
        (1, Phase::CanaryPause { hosts }) => format!(
            "interrupted: ending the canary's pause; {} go{} back to the previous release and no other host is switched",
            hosts.join(", "),
            if hosts.len() == 1 { "es" } else { "" }
        ),
        (_, Phase::CanaryPause { hosts }) => format!(
            "interrupted again: {} {} being put back by {} agent{}; `shipjar status` shows where each is",
            hosts.join(", "),
            if hosts.len() == 1 { "is" } else { "are" },
            if hosts.len() == 1 { "its" } else { "their" },
            if hosts.len() == 1 { "" } else { "s" }
        ),
        (1, Phase::BeforeChange | Phase::Idle) => {
            "interrupted: stopping before any host is switched; no host changes".to_string()
        }
        (_, Phase::BeforeChange | Phase::Idle) => {
            "interrupted again: no host has changed; releasing the locks".to_string()
        }
        (_, Phase::Finishing) => {
            "interrupted: finishing what keeps the hosts consistent (reverts, locks)".to_string()
        }
    }
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}

/// Whether Ctrl-C was pressed twice: abort what is in flight.
pub fn aborted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 1
}

/// Runs `f` on every item, at most `limit` at once.
pub fn each<T: Send>(items: &mut [T], limit: usize, f: impl Fn(&mut T) + Sync) {
    let queue: Mutex<Vec<&mut T>> = Mutex::new(items.iter_mut().rev().collect());
    let workers = limit.clamp(1, queue.lock().map(|q| q.len()).unwrap_or(1).max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    match next {
                        Some(item) => f(item),
                        None => break,
                    }
                }
            });
        }
    });
}

/// Bounds how many ssh connections are being set up at once: sshd drops new
/// connections beyond `MaxStartups` (10 by default) unauthenticated ones, which
/// matters when every host is reached through one sshd (a ProxyJump bastion).
/// A permit is held from the spawn of `ssh` until the session's first answer.
pub struct StartupLimit {
    in_flight: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

/// One connection being set up; dropping it frees the slot.
pub struct StartupPermit {
    limit: Arc<StartupLimit>,
}

impl StartupLimit {
    /// At most `max` set-ups at once.
    pub fn new(max: usize) -> Arc<StartupLimit> {
        Arc::new(StartupLimit {
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
            max: max.max(1),
        })
    }

    /// Waits for a free slot.
    pub fn acquire(self: &Arc<Self>) -> StartupPermit {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= self.max {
            n = self.freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        StartupPermit {
            limit: Arc::clone(self),
        }
    }
}

impl Drop for StartupPermit {
    fn drop(&mut self) {
        let mut n = self
            .limit
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.limit.freed.notify_one();
    }
}

/// How to reach a stage's hosts, and the limits to do it with.
pub struct Fleet {
    /// Reaching hosts.
    pub reach: Reach,
    /// Hosts at once.
    pub parallel: usize,
    /// Service name.
    pub service: String,
    startups: Arc<StartupLimit>,
    // Dropped last: closes the ssh masters.
    _control: Option<ControlDir>,
}

impl Fleet {
    /// Prepares to reach `stage`'s hosts with the command line's options.
    pub fn for_stage(
        project: &crate::operator::config::Project,
        stage: &ResolvedStage,
        args: &crate::cli::FleetArgs,
    ) -> Result<Fleet> {
        Fleet::new(
            stage,
            &project.config.service.name.0,
            args.ssh_config.as_deref(),
            args.parallel,
        )
    }

    /// Prepares to reach `stage`'s hosts.
    pub fn new(
        stage: &ResolvedStage,
        service: &str,
        ssh_config: Option<&std::path::Path>,
        parallel: Option<usize>,
    ) -> Result<Fleet> {
        let remote = stage.hosts.iter().any(|(_, spec)| *spec != HostSpec::Local);
        let control = if remote {
            Some(ControlDir::create().map_err(|e| {
                Error::failed(format!(
                    "cannot create a directory for ssh control sockets: {e}"
                ))
            })?)
        } else {
            None
        };
        let ssh_config = match ssh_config {
            Some(p) => Some(
                std::path::absolute(p)
                    .map_err(|e| Error::config(format!("--ssh-config {}: {e}", p.display())))?,
            ),
            None => stage.ssh_config.clone(),
        };
        if let Some(p) = &ssh_config
            && !p.is_file()
        {
            return Err(Error::config(format!(
                "ssh config file {} does not exist",
                p.display()
            )));
        }
        raise_open_file_limit();
        Ok(Fleet {
            reach: Reach {
                root: stage.root.clone(),
                ssh_config,
                sudo: stage.sudo,
                agent_path: stage.agent_path.clone(),
                control_dir: control.as_ref().map(|c| c.path().to_path_buf()),
                answer_timeout: Duration::from_millis(stage.answer_timeout_ms),
            },
            parallel: parallel.unwrap_or(DEFAULT_PARALLEL).max(1),
            service: service.to_string(),
            startups: StartupLimit::new(STARTUPS_IN_FLIGHT),
            _control: control,
        })
    }

    /// Waits for a slot to set up a new ssh connection; hold the permit until
    /// the connection has answered.
    pub fn startup_permit(&self) -> StartupPermit {
        self.startups.acquire()
    }

    /// Opens an agent session; over ssh it holds a set-up slot until its first answer.
    pub fn open(&self, host: &str, spec: &HostSpec) -> Result<AgentSession> {
        let permit = (*spec != HostSpec::Local).then(|| self.startup_permit());
        AgentSession::open(host, spec, &self.reach, &self.service, permit)
    }
}

/// Each host costs a few pipes; hundreds of hosts need more than the default 1024.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn an_interrupt_during_a_restart_speaks_of_restarts_not_releases() {
        let phase = |restarting| Phase::Switching {
            hosts: vec!["app2".into()],
            earlier: 1,
            restarting,
        };
        let first = interrupt_message(1, &phase(true));
        assert!(
            first.contains("1 host restarted earlier keeps its new process"),
            "{first}"
        );
        assert!(!first.contains("release"), "{first}");
        let second = interrupt_message(2, &phase(true));
        assert!(
            second.contains("cancelling the restart of app2"),
            "{second}"
        );
        assert!(!second.contains("previous release"), "{second}");
        let deploy = interrupt_message(2, &phase(false));
        assert!(
            deploy.contains("go back to their previous release"),
            "{deploy}"
        );
    }

    #[test]
    fn an_interrupt_during_a_canary_pause_says_the_canary_goes_back() {
        let one = Phase::CanaryPause {
            hosts: vec!["app1".into()],
        };
        assert_eq!(
            interrupt_message(1, &one),
            "interrupted: ending the canary's pause; app1 goes back to the previous release and no other host is switched"
        );
        let two = Phase::CanaryPause {
            hosts: vec!["app1".into(), "app2".into()],
        };
        assert!(
            interrupt_message(2, &two)
                .starts_with("interrupted again: app1, app2 are being put back by their agents"),
            "{}",
            interrupt_message(2, &two)
        );
    }

    #[test]
    fn each_runs_every_item_once_within_the_limit() {
        let running = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        let mut items: Vec<u32> = (0..20).collect();
        each(&mut items, 4, |x| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            *x += 100;
            running.fetch_sub(1, Ordering::SeqCst);
        });
        assert!(items.iter().all(|x| *x >= 100));
        assert!(peak.load(Ordering::SeqCst) <= 4);
    }

    #[test]
    fn at_most_the_limit_of_startups_are_in_flight_and_nobody_waits_otherwise() {
        let limit = StartupLimit::new(3);
        let running = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..12 {
                scope.spawn(|| {
                    let _permit = limit.acquire();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        // 12 set-ups of 20 ms, 3 at a time: 4 rounds, not 12 paced slots.
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        let _a = limit.acquire();
        let free = Instant::now();
        let _b = limit.acquire();
        assert!(free.elapsed() < Duration::from_millis(5));
    }
}
