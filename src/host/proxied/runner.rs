//! The runner of a proxied service: one process that owns the whole (the
//! proxy and the instance taking traffic), as the supervisor owns a plain
//! service. Under systemd it is the unit's main process (`service run`,
//! READY=1 once the active instance is healthy and the proxy answers);
//! under an init script `service start` spawns it detached (`service
//! supervise`). It brings up what is missing (adopting what runs), restarts
//! a proxy keeper that died, and on SIGTERM stops both instances, then the
//! proxy. SIGUSR1 makes it leave without stopping anything (a hand-over to
//! the unit's runner).

use crate::host::error::HostError;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::instances;
use super::revert::{self, Reverted};
use super::runner_record::{self as files, RunnerRecord};
use crate::host::lockfile::{self, HeldLock, LockError};
use crate::host::os::detached::{self, Report};
use crate::host::os::process::Signals;
use crate::host::os::procfs::{self, Liveness};
use crate::host::proxy;
use crate::host::supervisor::readiness::ReadinessChannel;
use crate::host::supervisor::{self, StartReport};
use crate::protocol::clock::now_rfc3339;
use crate::protocol::layout::{Layout, Lock};
use crate::protocol::manifest::ProxySpec;
use crate::protocol::status::ServiceState;

/// How often the runner looks at the proxy's keeper (a lock test): the
/// public port refuses connections from a dead keeper's end until the next
/// one bound it.
const TICK: Duration = Duration::from_millis(50);
/// How long a runner asked to hand over may take to leave.
const HANDOVER: Duration = Duration::from_secs(5);
/// How often the runner looks at the active instance's supervisor (its
/// state file and lock): one that is gone is started again.
const LOOK_AT_INSTANCE: Duration = Duration::from_millis(250);

/// Where the runner reports readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `service supervise`: one line to the waiting `service start`.
    Detached,
    /// `service run`: sd_notify to systemd.
    Foreground,
}

/// Whether a runner lives (its lock is held).
pub fn is_held(layout: &Layout) -> bool {
    lockfile::is_held(layout, Lock::Runner)
}

/// The live runner's pid: the holder of its lock, as the kernel names it,
/// with the start time it recorded.
pub fn pid(layout: &Layout) -> Option<i32> {
    let id = files::read_runner(layout)?.id;
    let holder = lockfile::holder(layout, Lock::Runner)?;
    (holder.pid == id.pid && procfs::liveness(id) == Liveness::Alive).then_some(id.pid)
}

/// The runner's record (the live one's, else the last one's), if any.
pub fn record(layout: &Layout) -> Option<RunnerRecord> {
    files::read_runner(layout)
}

/// After a stop of the whole made without a runner (it was gone): its
/// record says the service was stopped by request, so `status` tells the
/// stopped service from one whose runner died.
pub fn record_stopped_without_it(layout: &Layout) -> Result<(), String> {
    match files::read_runner(layout) {
        Some(record) if record.ended.is_none() && !is_held(layout) => {
            end_record(layout, record, "gone before the stop", true)
        }
        _ => Ok(()),
    }
}

/// Writes how the runner `record` names ended.
fn end_record(
    layout: &Layout,
    mut record: RunnerRecord,
    how: &str,
    on_request: bool,
) -> Result<(), String> {
    record.ended = Some(how.to_string());
    record.stopped_on_request = on_request;
    record.ended_at = Some(now_rfc3339());
    files::write_runner(layout, &record)
}

/// Records how this runner ends, while it still holds its lock (so no
/// runner after it is overwritten).
fn record_end(layout: &Layout, me: Option<RunnerRecord>, how: &str, on_request: bool) {
    if let Some(record) = me
        && let Err(e) = end_record(layout, record, how, on_request)
    {
        eprintln!("shipjar runner: {e}");
    }
}

/// Takes the runner's lock; `Ok(None)` when another runner holds it.
fn take_lock(layout: &Layout) -> Result<Option<HeldLock>, String> {
    match lockfile::try_take(layout, Lock::Runner) {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Busy { .. }) => Ok(None),
        Err(LockError::Failed(why)) => Err(why),
    }
}

/// Sends `signal` to the live runner; false when none runs.
fn signal(layout: &Layout, signal: Signal) -> Result<bool, String> {
    let Some(pid) = pid(layout) else {
        return Ok(false);
    };
    kill(Pid::from_raw(pid), signal)
        .map(|()| true)
        .map_err(|e| format!("cannot signal the runner (pid {pid}): {e}"))
}

fn wait_released(layout: &Layout, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if !is_held(layout) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !is_held(layout)
}

/// Stops the runner, which stops both instances and the proxy; `Ok(false)`
/// when none ran.
pub fn stop(layout: &Layout, timeout: Duration) -> Result<bool, String> {
    if !signal(layout, Signal::SIGTERM)? {
        return Ok(false);
    }
    if wait_released(layout, timeout) {
        Ok(true)
    } else {
        Err(format!(
            "the runner of {} did not stop within {} s",
            layout.name(),
            timeout.as_secs()
        ))
    }
}

/// Spawns a detached runner (`service supervise NAME`) and waits for its
/// one-line report: the active instance healthy behind a running proxy.
pub fn spawn_detached(layout: &Layout) -> Result<StartReport, HostError> {
    let log_path = layout.proxy_log();
    // The log dir is the service user's: see `proxy::ensure_running`.
    let log = crate::host::supervisor::logfile::open_append(&log_path)
        .map_err(|e| HostError::new(format!("{}: {e}", log_path.display())))?;
    let mut child = detached::spawn(
        layout.root(),
        &["service", "supervise", layout.name()],
        Stdio::piped(),
        log,
    )
    .map_err(|e| HostError::new(format!("cannot start the runner: {e}")))?;
    let ended = |what: String| {
        HostError::new(format!(
            "the runner of {} {what}; see {}",
            layout.name(),
            log_path.display()
        ))
    };
    match detached::read_report(&mut child, report_within(layout)) {
        Report::Ready(json) => {
            // Reaped in a thread of its own: the runner lives on.
            detached::let_live(child);
            serde_json::from_str(&json)
                .map_err(|e| HostError::new(format!("the runner's report: {e}")))
        }
        Report::Failed(json) => {
            detached::let_live(child);
            Err(serde_json::from_str(&json).unwrap_or_else(|_| HostError::new(json)))
        }
        Report::Garbled(line) => {
            stop_unreported(layout, child);
            Err(ended(format!("said `{line}` instead of a report")))
        }
        Report::Eof => {
            detached::let_live(child);
            Err(ended("ended without a report".into()))
        }
        Report::Cancelled => {
            stop_unreported(layout, child);
            Err(HostError::new(
                "cancelled by the operator (Ctrl-C) before it was healthy",
            ))
        }
        Report::Timeout => {
            stop_unreported(layout, child);
            Err(ended(format!(
                "did not report within {} s; stopped it",
                report_within(layout).as_secs()
            )))
        }
    }
}

/// How long a starting runner may take to report: its instance's start
/// (bounded by the release's start timeout), the proxy's start, and slack.
fn report_within(layout: &Layout) -> Duration {
    let start = crate::host::supervisor::release::current(layout)
        .map(|r| Duration::from_millis(r.manifest.health.start_timeout_ms))
        .unwrap_or(crate::protocol::defaults::START_TIMEOUT);
    start + proxy::START_TIMEOUT + crate::protocol::defaults::SUPERVISOR_GRACE * 2
}

/// A runner that will not report is asked to stop what it started (as any
/// stop would), then killed.
fn stop_unreported(layout: &Layout, mut child: std::process::Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    detached::wait_or_kill(&mut child, instances::stop_budget(layout));
}

/// Runs the runner until stopped; returns its exit code.
pub fn run(layout: &Layout, mode: Mode) -> i32 {
    match Runner::setup(layout, mode).and_then(Runner::start) {
        Ok(runner) => runner.watch(),
        Err(code) => code,
    }
}

/// The runner at work: what it owns and says.
struct Runner<'a> {
    layout: &'a Layout,
    /// The proxy's spec (a later release may move its address).
    spec: ProxySpec,
    readiness: ReadinessChannel,
    signals: Signals,
    /// This runner's record, for how it ends.
    me: Option<RunnerRecord>,
    lock: HeldLock,
}

/// How a look at the instance ends the runner.
enum End {
    /// A stop arrived meanwhile.
    Stop,
    /// The instance cannot be had: why.
    GiveUp(String),
}

impl<'a> Runner<'a> {
    /// The spec, the runner lock (taken over from a detached runner by the
    /// unit's), blocked signals with the watchdog fed, the record written.
    fn setup(layout: &'a Layout, mode: Mode) -> Result<Runner<'a>, i32> {
        let (mut readiness, notifier) = ReadinessChannel::open(mode == Mode::Foreground);
        let mut fail = |why: &str| {
            readiness.failed(why, layout);
            1
        };
        let Some(spec) = super::spec(layout) else {
            return Err(fail("the current release has no [proxy] section"));
        };
        let lock = lock_for(layout, mode).map_err(|why| fail(&why))?;
        let mut signals =
            Signals::block().map_err(|e| fail(&format!("cannot block signals: {e}")))?;
        if let Some(n) = notifier
            && let Some(every) = n.watchdog
        {
            signals.keep_alive(every / 2, Box::new(move || n.send("WATCHDOG=1")));
        }
        let me = procfs::identify(std::process::id() as i32)
            .ok()
            .flatten()
            .map(|id| RunnerRecord {
                id,
                started_at: Some(now_rfc3339()),
                ended: None,
                stopped_on_request: false,
                ended_at: None,
            });
        if let Some(me) = &me
            && let Err(e) = files::write_runner(layout, me)
        {
            eprintln!("shipjar runner: {e}");
        }
        Ok(Runner {
            layout,
            spec,
            readiness,
            signals,
            me,
            lock,
        })
    }

    /// Brings up (or adopts) the active instance and the proxy, then says READY.
    fn start(mut self) -> Result<Runner<'a>, i32> {
        let (layout, spec) = (self.layout, &self.spec);
        // What runs already is adopted, and never stopped for a failed start.
        let adopting = proxy::keeper_alive(layout)
            || instances::active_or_first(layout, spec).is_some_and(|p| {
                supervisor::status(&layout.with_instance(Some(p)))
                    .pid
                    .is_some()
            });
        self.readiness
            .status("starting the active instance and the proxy");
        match instances::start_parts(layout, spec) {
            Ok(report) => {
                eprintln!(
                    "shipjar runner: pid {}: instance pid {} (release {}) healthy behind the proxy on {}",
                    std::process::id(),
                    report.pid,
                    report.release,
                    spec.listen
                );
                self.readiness.ready(&report);
                Ok(self)
            }
            Err(e) => {
                let instance = layout.with_instance(instances::active_or_first(layout, spec));
                // Cleaned up before the answer: whoever waits sees the end state.
                if !adopting {
                    let _ = instances::stop_parts(layout, spec);
                }
                record_end(
                    layout,
                    self.me,
                    &format!("start failed: {}", e.message),
                    false,
                );
                drop(self.lock);
                self.readiness.failed(&e.message, &instance);
                Err(1)
            }
        }
    }

    /// Watches until a stop, a hand-over, or an instance that cannot be had.
    fn watch(mut self) -> i32 {
        let mut next_look = Instant::now();
        loop {
            match self.signals.wait(Some(TICK)) {
                Some(libc::SIGTERM | libc::SIGINT) => return self.stop(),
                Some(libc::SIGUSR1) => return self.hand_over(),
                _ => {}
            }
            reap_children();
            if Instant::now() >= next_look {
                next_look = Instant::now() + LOOK_AT_INSTANCE;
                match self.look_at_instance() {
                    None => {}
                    Some(End::Stop) => return self.stop(),
                    Some(End::GiveUp(why)) => return self.give_up(&why),
                }
            }
            self.look_at_keeper();
        }
    }

    /// The active instance: one whose supervisor is gone is started again;
    /// one given up on is auto-reverted, or ends the runner.
    fn look_at_instance(&mut self) -> Option<End> {
        match look_at_active(self.layout) {
            Active::Fine => None,
            Active::Gone { port, why } => {
                match bring_back(self.layout, port, &why, &self.signals, &self.readiness) {
                    Brought::Back(report) => {
                        eprintln!(
                            "shipjar runner: the instance on port {port} is back: pid {} (release {}) healthy after {} ms",
                            report.pid, report.release, report.healthy_after_ms
                        );
                        self.readiness
                            .status(&format!("running behind the proxy on {}", self.spec.listen));
                        None
                    }
                    Brought::Later => None,
                    Brought::Stopping => Some(End::Stop),
                    Brought::Failed(failed) => Some(End::GiveUp(format!(
                        "the instance on port {port} could not come back: {failed}"
                    ))),
                }
            }
            Active::GaveUp { port, why } => {
                match revert::auto_revert(self.layout, &self.spec, port, &why, &self.signals) {
                    Reverted::Back { target } => {
                        self.readiness.status(&format!(
                            "auto-reverted to release {target}, running behind the proxy on {}",
                            self.spec.listen
                        ));
                        None
                    }
                    Reverted::Stopping => Some(End::Stop),
                    Reverted::No(not) => Some(End::GiveUp(format!(
                        "the supervisor of the instance on port {port} gave up: {why}{not}"
                    ))),
                }
            }
        }
    }

    /// A proxy keeper that died (or was stopped) is started again at once.
    fn look_at_keeper(&mut self) {
        if proxy::keeper_alive(self.layout) {
            return;
        }
        // A later release may have moved the proxy (`listen`); a release
        // without one means the service left the proxy: whoever did that
        // stopped us first, so keep the last spec.
        if let Some(now) = super::spec(self.layout) {
            self.spec = now;
        }
        let how = proxy::keeper_record(self.layout)
            .and_then(|r| r.last_exit)
            .filter(|e| e == "stopped")
            .map_or("died", |_| "was stopped");
        eprintln!("shipjar runner: the proxy's keeper {how}; starting it again");
        self.readiness.status("restarting the proxy");
        match proxy::ensure_running(self.layout, &self.spec) {
            Ok(_) => self
                .readiness
                .status(&format!("running behind the proxy on {}", self.spec.listen)),
            Err(e) => eprintln!("shipjar runner: {e}"),
        }
    }

    /// Stops both instances, then the proxy; records the stop.
    fn stop(self) -> i32 {
        self.readiness.stopping();
        stop_all(self.layout, &self.spec, self.me, self.lock)
    }

    /// Leaves without stopping anything (the unit's runner takes over).
    fn hand_over(self) -> i32 {
        eprintln!("shipjar runner: handing the service over");
        record_end(self.layout, self.me, "handed over", true);
        0
    }

    /// Ends with 1, saying why (see [`give_up`]).
    fn give_up(self, why: &str) -> i32 {
        give_up(self.layout, self.me, self.lock, &self.readiness, why)
    }
}

/// The runner lock; in the foreground (the unit's runner) a detached runner
/// that holds it is asked to hand over first.
fn lock_for(layout: &Layout, mode: Mode) -> Result<HeldLock, String> {
    match take_lock(layout)? {
        Some(lock) => Ok(lock),
        None if mode == Mode::Foreground => {
            // A runner `service start` left: the unit takes over from it.
            let _ = signal(layout, Signal::SIGUSR1);
            wait_released(layout, HANDOVER)
                .then(|| take_lock(layout))
                .and_then(Result::ok)
                .flatten()
                .ok_or_else(|| "another runner holds the service".to_string())
        }
        None => Err("its runner already runs".to_string()),
    }
}

/// Stops both instances, then the proxy; records the stop.
fn stop_all(layout: &Layout, spec: &ProxySpec, me: Option<RunnerRecord>, lock: HeldLock) -> i32 {
    eprintln!("shipjar runner: stopping both instances, then the proxy");
    let code = match instances::stop_parts(layout, spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shipjar runner: {}", e.message);
            1
        }
    };
    record_end(layout, me, "stopped", true);
    drop(lock);
    code
}

/// The active instance cannot be had: the runner says why and ends with
/// 1, so the process manager (the unit goes `failed`) and `status` (the
/// runner is missing, its record says why) show it. What still runs is
/// left as it is: the proxy holds requests, then answers 503.
fn give_up(
    layout: &Layout,
    me: Option<RunnerRecord>,
    lock: HeldLock,
    readiness: &ReadinessChannel,
    why: &str,
) -> i32 {
    eprintln!("shipjar runner: giving up: {why}");
    readiness.status(&format!("failed: {why}"));
    record_end(layout, me, &format!("failed: {why}"), false);
    drop(lock);
    1
}

/// What the runner sees of the instance taking traffic.
enum Active {
    /// Running, starting, or being restarted by its supervisor; or stopped
    /// by request (`service stop --instance`: requests wait, then 503); or
    /// no instance is active.
    Fine,
    /// Its supervisor is gone (killed): the runner starts it again.
    Gone { port: u16, why: String },
    /// Its supervisor gave up on it (it crashed too often).
    GaveUp { port: u16, why: String },
}

fn look_at_active(layout: &Layout) -> Active {
    let Some(port) = proxy::active(layout) else {
        return Active::Fine;
    };
    let status = supervisor::status(&layout.with_instance(Some(port)));
    match status.state {
        ServiceState::Dead => Active::Gone {
            port,
            why: format!("is dead ({})", status.detail),
        },
        ServiceState::Failed => Active::GaveUp {
            port,
            why: status.detail,
        },
        _ => Active::Fine,
    }
}

/// How bringing the active instance back went.
enum Brought {
    Back(StartReport),
    Failed(String),
    /// A SIGTERM arrived meanwhile.
    Stopping,
    /// A deploy, restart or reload holds the switch lock: look again later.
    Later,
}

/// Starts the instance on `port` again through its health gate, under the
/// switch lock (a deploy or restart changing what runs waits, or is
/// waited for: the instance is looked at again after it). The start runs
/// in a thread so the watchdog is fed and a SIGTERM is seen meanwhile.
fn bring_back(
    layout: &Layout,
    port: u16,
    why: &str,
    signals: &Signals,
    readiness: &ReadinessChannel,
) -> Brought {
    let _switching = match lockfile::try_take(layout, Lock::Switch) {
        Ok(lock) => lock,
        Err(_) => return Brought::Later,
    };
    // Whoever held the lock last may have changed what runs.
    if !matches!(look_at_active(layout), Active::Gone { port: p, .. } if p == port) {
        return Brought::Later;
    }
    eprintln!("shipjar runner: the instance on port {port} {why}; starting it again");
    readiness.status(&format!("restarting the instance on port {port}"));
    match instances::start_watched(&layout.with_instance(Some(port)), signals) {
        None => Brought::Stopping,
        Some(Ok(report)) => Brought::Back(report),
        Some(Err(e)) => Brought::Failed(e.message),
    }
}

/// Reaps whatever children ended (supervisors and keepers it started); they
/// are watched by their locks and pids, not by wait.
fn reap_children() {
    loop {
        // SAFETY: waitpid with WNOHANG on any child; no memory involved.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}
