//! The service on this host as `shipjar service` addresses it — one
//! supervised process, or the proxied whole (the proxy, both instances and
//! their runner) — and the one report every action returns: printed as text,
//! or with `--json` as one JSON object, and turned into the exit code.

use crate::host::error::HostError;
use std::time::Instant;

use serde::Serialize;

use crate::host::proxy::{ProxyState, ProxyStatus};
use crate::host::supervisor::{
    self, ReloadReport, ServiceState, ServiceStatus, StartOutcome, StartReport, StopReport,
};
use crate::host::{self, proxied};
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;

/// `println!` that never panics: a closed stdout (`shipjar service status
/// NAME | head -1`) is the reader's choice, not a failure of the command.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// The service on this host, resolved once from its layout.
pub enum HostService {
    /// One supervised process: a service without `[proxy]`, or one instance
    /// of a proxied service named by `--instance`.
    Plain(Layout),
    /// A service whose `current` release has `[proxy]`, addressed as a whole.
    Proxied(Layout, ProxySpec),
}

impl HostService {
    /// Proxied when `current` has `[proxy]` and no single instance is named.
    pub fn resolve(layout: Layout) -> HostService {
        if layout.instance().is_some() {
            return HostService::Plain(layout);
        }
        match proxied::spec(&layout) {
            Some(spec) => HostService::Proxied(layout, spec),
            None => HostService::Plain(layout),
        }
    }

    /// Starts it; returns once it is healthy (behind the proxy, under a runner).
    pub fn start(&self) -> Report {
        match self {
            HostService::Plain(layout) => Report::started(supervisor::start_outcome(layout)),
            HostService::Proxied(layout, spec) => {
                Report::started(proxied::start(layout, spec).map(started))
            }
        }
    }

    /// Stops it gracefully; stopping a stopped service succeeds.
    pub fn stop(&self) -> Report {
        match self {
            HostService::Plain(layout) => match supervisor::stop(layout) {
                Ok(report) => Report::Stopped {
                    report,
                    what: Stopped::Plain,
                },
                Err(err) => Report::Failed(err),
            },
            HostService::Proxied(layout, spec) => {
                // What ran, seen before: the runner stops the parts and the
                // host's stop says nothing of them.
                let before = Alive::seen(layout, spec);
                let started = Instant::now();
                match proxied::stop(layout, spec) {
                    Ok(()) => Report::Stopped {
                        report: proxied_stop(&before, started.elapsed().as_millis() as u64),
                        what: Stopped::Proxied,
                    },
                    Err(err) => Report::Failed(err),
                }
            }
        }
    }

    /// Stop, then start through the health gate; behind the proxy, the idle
    /// instance started, gated and switched to, without downtime.
    pub fn restart(&self, emit: &dyn Fn(&str, &str)) -> Report {
        match self {
            HostService::Plain(layout) => {
                let _switching = match switch_lock(layout) {
                    Ok(held) => held,
                    Err(err) => return Report::Failed(err),
                };
                Report::started(supervisor::restart(layout))
            }
            HostService::Proxied(layout, spec) => {
                Report::started(proxied::restart(layout, spec, emit).map(started))
            }
        }
    }

    /// `[reload] signal`, or a restart through the health gate.
    pub fn reload(&self, emit: &dyn Fn(&str, &str)) -> Report {
        let result = match self {
            HostService::Plain(layout) => {
                let _switching = match switch_lock(layout) {
                    Ok(held) => held,
                    Err(err) => return Report::Failed(err),
                };
                supervisor::reload(layout)
            }
            HostService::Proxied(layout, spec) => proxied::reload(layout, spec, emit),
        };
        match result {
            Ok(report) => Report::Reloaded(report),
            Err(err) => Report::Failed(err),
        }
    }

    /// What runs, every pid proven; behind the proxy, the whole and its parts.
    pub fn status(&self) -> Report {
        match self {
            HostService::Plain(layout) => Report::Status(supervisor::status(layout)),
            HostService::Proxied(layout, spec) => {
                Report::ProxiedStatus(proxied::status(layout, spec))
            }
        }
    }

    /// `service run`: supervises in the foreground (behind the proxy, as the
    /// runner of the whole); returns the exit code.
    pub fn run(&self) -> i32 {
        match self {
            HostService::Plain(layout) => supervisor::run(layout),
            HostService::Proxied(layout, _) => {
                host::proxied::runner::run(layout, host::proxied::runner::Mode::Foreground)
            }
        }
    }

    /// `service supervise`: the detached supervisor (or runner) `start` spawns.
    pub fn supervise(&self) -> i32 {
        match self {
            HostService::Plain(layout) => supervisor::supervise(layout),
            HostService::Proxied(layout, _) => {
                host::proxied::runner::run(layout, host::proxied::runner::Mode::Detached)
            }
        }
    }
}

/// `service proxy`: starts the proxy from the current release's `[proxy]`
/// unless it runs, and says its state.
pub fn proxy_start(layout: &Layout) -> Report {
    let Some(spec) = proxied::spec(layout) else {
        return Report::Failed(HostError::new(format!(
            "the current release of {} has no [proxy] section",
            layout.name()
        )));
    };
    match host::proxy::ensure_running(layout, &spec) {
        Ok(_) => proxy_status(layout),
        Err(message) => Report::Failed(HostError::new(message)),
    }
}

/// `service proxy --status`: the proxy alone.
pub fn proxy_status(layout: &Layout) -> Report {
    Report::Proxy(host::proxy::status(layout))
}

/// `service proxy --stop`: the proxy alone; the instances run on.
pub fn proxy_stop(layout: &Layout) -> Report {
    let started = Instant::now();
    match host::proxy::stop(layout) {
        Ok(was_running) => Report::Stopped {
            report: StopReport {
                was_running,
                how: if was_running {
                    "stopped"
                } else {
                    "not running"
                }
                .to_string(),
                ..stop_report(started)
            },
            what: Stopped::Proxy,
        },
        Err(message) => Report::Failed(HostError::new(message)),
    }
}

/// A stop report that knows only how long it took; the rest unknown.
fn stop_report(started: Instant) -> StopReport {
    StopReport {
        was_running: false,
        how: String::new(),
        took_ms: started.elapsed().as_millis() as u64,
        exit_code: None,
        signal: None,
        clean: None,
        thread_dump: false,
        unsupervised_pid: None,
    }
}

/// What of a proxied service was alive, every pid proven.
#[derive(Debug, Default)]
struct Alive {
    /// The live runner's pid.
    runner: Option<i32>,
    /// The proxy's keeper holds its lock.
    keeper: bool,
    /// An instance's supervisor or process runs.
    instance: bool,
}

impl Alive {
    /// Without asking the proxy anything: a stop must not wait on a hung worker.
    fn seen(layout: &Layout, spec: &ProxySpec) -> Alive {
        Alive {
            runner: proxied::runner::pid(layout),
            keeper: host::proxy::keeper_alive(layout),
            instance: spec.ports.iter().any(|&port| {
                let status = supervisor::status(&layout.with_instance(Some(port)));
                status.pid.is_some() || status.supervisor_pid.is_some()
            }),
        }
    }
}

/// The stop of a proxied service, from what was alive before it.
fn proxied_stop(before: &Alive, took_ms: u64) -> StopReport {
    let was_running = before.runner.is_some() || before.keeper || before.instance;
    let how = match (before.runner, was_running) {
        (Some(pid), _) => format!("its runner pid {pid} stopped both instances and the proxy"),
        (None, true) => "both instances and the proxy stopped".to_string(),
        (None, false) => "not running".to_string(),
    };
    StopReport {
        was_running,
        how,
        took_ms,
        exit_code: None,
        signal: None,
        clean: None,
        thread_dump: false,
        unsupervised_pid: None,
    }
}

/// The switch lock a plain restart or reload holds (a proxied one takes it
/// itself); the failure names whoever holds it.
fn switch_lock(layout: &Layout) -> Result<host::lockfile::HeldLock, HostError> {
    host::lockfile::hold_switch(layout).map_err(HostError::new)
}

/// A proxied start: the active instance's start (nothing was replaced).
fn started(report: StartReport) -> StartOutcome {
    StartOutcome {
        report,
        replaced_pid: None,
        replaced_how: None,
    }
}

/// What was stopped, for the text (the JSON is the same stop report).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stopped {
    /// One supervised process.
    Plain,
    /// The proxied whole: both instances and the proxy.
    Proxied,
    /// The proxy alone (`service proxy --stop`).
    Proxy,
}

/// What a `service` action did, or why it failed. Its JSON is the object
/// inside (untagged: the shapes `--json` has always printed); its text and
/// its exit code come from here too.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// `start` and `restart`: healthy.
    Started(StartOutcome),
    /// `stop` and `proxy --stop`.
    Stopped {
        /// How it ended and how long it took.
        #[serde(flatten)]
        report: StopReport,
        /// What was stopped (the text names it).
        #[serde(skip)]
        what: Stopped,
    },
    /// `reload`.
    Reloaded(ReloadReport),
    /// `status` of one supervised process.
    Status(ServiceStatus),
    /// `status` of a proxied service: the whole and its parts.
    ProxiedStatus(ProxyStatus),
    /// `proxy` and `proxy --status`: the proxy alone.
    Proxy(ProxyStatus),
    /// `install-unit` and `install-initscript`: the file written.
    Wrote {
        /// Its path.
        wrote: String,
    },
    /// The action failed: why, and the last lines of the service log.
    Failed(HostError),
}

/// A report as text: what goes to stdout, what to stderr.
#[derive(Debug, Default, PartialEq)]
pub struct Text {
    /// Lines for stdout.
    pub out: String,
    /// Lines for stderr.
    pub err: String,
}

impl Report {
    fn started(result: Result<StartOutcome, HostError>) -> Report {
        match result {
            Ok(outcome) => Report::Started(outcome),
            Err(err) => Report::Failed(err),
        }
    }

    /// The exit code: LSB codes for a status (0 running, 1 dead or failed,
    /// 3 not running), else 0, or 1 when it failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Report::Started(_)
            | Report::Stopped { .. }
            | Report::Reloaded(_)
            | Report::Wrote { .. } => 0,
            Report::Status(status) => status.lsb_code,
            Report::ProxiedStatus(status) => proxied::lsb_code(status),
            Report::Proxy(status) => match status.state {
                ProxyState::Running => 0,
                ProxyState::Stopped => 3,
                _ => 1,
            },
            Report::Failed(_) => 1,
        }
    }

    /// Prints it (text, or one JSON object with `json`) and returns the exit code.
    pub fn print(&self, json: bool) -> i32 {
        if json {
            print_json(self);
        } else {
            use std::io::Write as _;
            let text = self.text();
            // A closed stdout or stderr is the reader's choice, not a failure.
            let _ = std::io::stdout().lock().write_all(text.out.as_bytes());
            let _ = std::io::stderr().lock().write_all(text.err.as_bytes());
        }
        self.exit_code()
    }

    /// What it says to people (masked where the service may have spoken).
    pub fn text(&self) -> Text {
        let mut text = Text::default();
        let mut say = |line: String| {
            text.out.push_str(&line);
            text.out.push('\n');
        };
        match self {
            Report::Started(outcome) => start_lines(outcome).into_iter().for_each(say),
            Report::Stopped { report, what } => say(stop_line(report, *what)),
            Report::Reloaded(report) => {
                say(format!("reloaded: {} ({} ms)", report.how, report.took_ms))
            }
            Report::Status(status) => {
                say(host::secrets::mask(&status.detail));
                if let Some(reverted) = &status.auto_reverted {
                    say(format!("auto-reverted {}", host::secrets::mask(reverted)));
                }
            }
            Report::ProxiedStatus(status) => proxied_status_lines(status).into_iter().for_each(say),
            Report::Proxy(status) => {
                let active = status
                    .active
                    .map_or("none".to_string(), |p| format!("127.0.0.1:{p}"));
                say(format!("{}, active instance {active}", status.line()))
            }
            Report::Wrote { wrote } => say(format!("wrote {wrote}")),
            Report::Failed(err) => {
                let mut lines = vec![format!("error: {}", host::secrets::mask(&err.message))];
                if !err.log_tail.is_empty() {
                    lines.push("last lines of the service log:".to_string());
                    lines.extend(
                        err.log_tail
                            .iter()
                            .map(|l| format!("  {}", host::secrets::mask(l))),
                    );
                }
                for line in lines {
                    text.err.push_str(&line);
                    text.err.push('\n');
                }
            }
        }
        text
    }
}

/// What `start` and `restart` say, one line per thing they did.
fn start_lines(outcome: &StartOutcome) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(pid) = outcome.replaced_pid {
        let how = outcome.replaced_how.as_deref().unwrap_or("stopped");
        lines.push(format!(
            "replaced an unsupervised service pid {pid} (its supervisor was gone): {how}"
        ));
    }
    let report = &outcome.report;
    let release = if report.release.is_empty() {
        "release unknown".to_string()
    } else {
        format!("release {}", report.release)
    };
    if report.already_running {
        lines.push(format!("already running: pid {} ({release})", report.pid));
    } else {
        lines.push(format!(
            "started: pid {} ({release}), healthy after {} ms",
            report.pid, report.healthy_after_ms
        ));
    }
    lines
}

/// What `stop` and `proxy --stop` say.
fn stop_line(report: &StopReport, what: Stopped) -> String {
    match what {
        Stopped::Proxied => "stopped: both instances and the proxy".to_string(),
        Stopped::Proxy if report.was_running => "proxy stopped".to_string(),
        Stopped::Proxy => "proxy not running".to_string(),
        Stopped::Plain if report.was_running => {
            let dump = if report.thread_dump {
                "; a thread dump is in the service log"
            } else {
                ""
            };
            let unsupervised = match report.unsupervised_pid {
                Some(pid) => format!("the unsupervised service pid {pid} "),
                None => String::new(),
            };
            format!(
                "stopped: {unsupervised}{} ({} ms{dump})",
                report.how, report.took_ms
            )
        }
        Stopped::Plain => "not running".to_string(),
    }
}

/// `status` of a proxied service: the proxy, both instances, the runner,
/// every missing part, then the whole's state.
fn proxied_status_lines(status: &ProxyStatus) -> Vec<String> {
    let mut lines = vec![status.line()];
    lines.extend(status.instance_lines());
    if let Some(pid) = status.runner_pid {
        let since = status
            .runner_started_at
            .as_deref()
            .map(|t| format!(", started at {t}"))
            .unwrap_or_default();
        lines.push(format!("runner pid {pid}{since}"));
    }
    lines.extend(
        status
            .missing
            .iter()
            .map(|part| host::secrets::mask(&part.line())),
    );
    // The whole's state last, as a plain service's status says it.
    match &status.service_state {
        Some(ServiceState::Running) => {
            lines.push("running: the proxy, its runner and the active instance".to_string())
        }
        Some(ServiceState::Stopped) => lines.push("stopped: the proxy and both instances".into()),
        Some(state) => lines.push(format!("{state}: {} part(s) missing", status.missing.len())),
        None => {}
    }
    lines
}

/// One JSON object on stdout, masked before it is encoded.
fn print_json<T: Serialize>(value: &T) {
    let masked = serde_json::to_value(value).map(|v| match host::secrets::active() {
        Some(masker) => masker.mask_json_values(v, &[]),
        None => v,
    });
    match masked.and_then(|v| serde_json::to_string(&v)) {
        Ok(text) => say!("{text}"),
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: cannot encode JSON: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(release: &str, already_running: bool, replaced: Option<i32>) -> StartOutcome {
        StartOutcome {
            report: StartReport {
                pid: 42,
                release: release.to_string(),
                healthy_after_ms: 7,
                already_running,
            },
            replaced_pid: replaced,
            replaced_how: replaced.map(|_| "terminated after SIGTERM".to_string()),
        }
    }

    fn out(report: Report) -> String {
        report.text().out
    }

    #[test]
    fn start_never_prints_an_empty_release() {
        assert_eq!(
            out(Report::Started(outcome("", true, None))),
            "already running: pid 42 (release unknown)\n"
        );
        assert_eq!(
            out(Report::Started(outcome("r1", true, None))),
            "already running: pid 42 (release r1)\n"
        );
        assert_eq!(
            out(Report::Started(outcome("r1", false, Some(17)))),
            "replaced an unsupervised service pid 17 (its supervisor was gone): terminated after SIGTERM\n\
             started: pid 42 (release r1), healthy after 7 ms\n"
        );
    }

    fn stopped(was_running: bool, what: Stopped) -> Report {
        Report::Stopped {
            report: StopReport {
                was_running,
                how: "exited 143 after SIGTERM".into(),
                took_ms: 212,
                ..stop_report(Instant::now())
            },
            what,
        }
    }

    #[test]
    fn every_stop_says_what_it_stopped_in_text_and_is_one_stop_report_in_json() {
        assert_eq!(
            out(stopped(true, Stopped::Plain)),
            "stopped: exited 143 after SIGTERM (212 ms)\n"
        );
        assert_eq!(out(stopped(false, Stopped::Plain)), "not running\n");
        assert_eq!(
            out(stopped(true, Stopped::Proxied)),
            "stopped: both instances and the proxy\n"
        );
        assert_eq!(out(stopped(true, Stopped::Proxy)), "proxy stopped\n");
        assert_eq!(out(stopped(false, Stopped::Proxy)), "proxy not running\n");
        for what in [Stopped::Plain, Stopped::Proxied, Stopped::Proxy] {
            let json = serde_json::to_value(stopped(true, what)).unwrap();
            assert_eq!(json["was_running"], true, "{json}");
            assert_eq!(json["took_ms"], 212, "{json}");
            assert!(json.get("what").is_none(), "{json}");
        }
    }

    #[test]
    fn a_failure_goes_to_stderr_with_its_log_tail_and_exits_1() {
        let report =
            Report::Failed(HostError::new("not healthy").with_log_tail(vec!["boom".into()]));
        assert_eq!(
            report.text(),
            Text {
                out: String::new(),
                err: "error: not healthy\nlast lines of the service log:\n  boom\n".into()
            }
        );
        assert_eq!(report.exit_code(), 1);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["message"], "not healthy", "{json}");
    }

    #[test]
    fn a_proxied_stop_was_running_when_any_part_was_alive() {
        let all = proxied_stop(
            &Alive {
                runner: Some(7),
                keeper: true,
                instance: true,
            },
            5,
        );
        assert!(all.was_running);
        assert_eq!(
            all.how,
            "its runner pid 7 stopped both instances and the proxy"
        );
        for part in [
            Alive {
                keeper: true,
                ..Alive::default()
            },
            Alive {
                instance: true,
                ..Alive::default()
            },
        ] {
            let without_runner = proxied_stop(&part, 5);
            assert!(without_runner.was_running, "{part:?}");
            assert_eq!(without_runner.how, "both instances and the proxy stopped");
        }
        let none = proxied_stop(&Alive::default(), 5);
        assert!(!none.was_running);
        assert_eq!(none.how, "not running");
        assert_eq!(none.took_ms, 5);
    }
}
