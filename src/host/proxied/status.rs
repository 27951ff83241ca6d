//! `status` of a proxied service: the proxy, both instances and the runner,
//! every pid proven, and the verdict on the whole.

use crate::host::proxy::{self, ProxyState, ProxyStatus};
use crate::host::supervisor;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::ProxySpec;
use crate::protocol::status::{InstanceStatus, MissingPart, Part, ServiceState};

use super::runner;

/// The proxy, both instances and the runner, every pid proven, and the
/// verdict on the whole: which part is missing and since when.
pub fn status(layout: &Layout, spec: &ProxySpec) -> ProxyStatus {
    let mut proxy = proxy::status(layout);
    proxy.instances = spec
        .ports
        .iter()
        .map(|&port| InstanceStatus {
            port,
            // A stopped proxy sends traffic nowhere, whatever it last recorded.
            active: proxy.state == ProxyState::Running && proxy.active == Some(port),
            service: supervisor::status(&layout.with_instance(Some(port))),
        })
        .collect();
    let runner = runner::record(layout);
    let runner_pid = runner::pid(layout);
    let keeper = proxy::keeper_record(layout);
    let active_last_seen = proxy
        .active
        .and_then(|port| supervisor::last_sign_of_life(&layout.with_instance(Some(port))))
        .map(|t| humantime::format_rfc3339_millis(t).to_string());
    let verdict = judge(&Seen {
        runner_pid,
        runner: runner.as_ref(),
        keeper: keeper.as_ref(),
        proxy: &proxy,
        active_last_seen,
        booted_at: crate::host::os::procfs::boot_time().ok(),
    });
    proxy.runner_pid = runner_pid;
    proxy.runner_started_at = runner.and_then(|r| r.started_at);
    proxy.service_state = Some(verdict.state);
    proxy.lsb_code = Some(verdict.lsb_code);
    proxy.missing = verdict.missing;
    proxy
}

/// LSB code of a proxied service (see [`judge`]).
pub fn lsb_code(status: &ProxyStatus) -> i32 {
    status.lsb_code.unwrap_or(LSB_DEAD)
}

const LSB_RUNNING: i32 = 0;
const LSB_DEAD: i32 = 1;
const LSB_NOT_RUNNING: i32 = 3;

/// What `status` saw of a proxied service, every pid proven.
struct Seen<'a> {
    /// The live runner.
    runner_pid: Option<i32>,
    /// The runner's record (the live one's, else the last one's).
    runner: Option<&'a super::runner_record::RunnerRecord>,
    /// The keeper's record.
    keeper: Option<&'a proxy::KeeperRecord>,
    /// The proxy (keeper and worker proven) and both instances.
    proxy: &'a ProxyStatus,
    /// The active instance's supervisor's last sign of life (RFC 3339).
    active_last_seen: Option<String>,
    /// When this host booted: a record from before ended with the boot.
    booted_at: Option<std::time::SystemTime>,
}

impl Seen<'_> {
    /// Whether a process that started at `at` (RFC 3339) ran before this boot.
    fn before_boot(&self, at: Option<&str>) -> bool {
        match (
            at.and_then(|t| humantime::parse_rfc3339(t).ok()),
            self.booted_at,
        ) {
            (Some(at), Some(boot)) => at < boot,
            _ => false,
        }
    }
}

/// The whole's state, its LSB code and what is missing.
#[derive(Debug)]
struct Verdict {
    state: ServiceState,
    lsb_code: i32,
    missing: Vec<MissingPart>,
}

/// How a part that is not alive got there, as its record tells.
#[derive(Debug, PartialEq)]
enum Gone {
    /// Never recorded, stopped by request, or a start that failed and
    /// cleaned up after itself.
    Ended(String),
    /// Gone without an end of its own: killed or crashed.
    Died(String),
}

impl Gone {
    fn detail(self) -> String {
        match self {
            Gone::Ended(d) | Gone::Died(d) => d,
        }
    }
}

fn started_words(at: Option<&str>) -> String {
    at.map_or_else(
        || "its start time unknown".to_string(),
        |t| format!("last started at {t}"),
    )
}

/// The runner, when not alive.
fn runner_gone(seen: &Seen) -> Option<Gone> {
    if seen.runner_pid.is_some() {
        return None;
    }
    let Some(r) = seen.runner else {
        return Some(Gone::Ended("not running (none has run)".into()));
    };
    let at = r.ended_at.as_deref().unwrap_or("?");
    if r.ended.is_none() && seen.before_boot(r.started_at.as_deref()) {
        return Some(Gone::Ended(format!(
            "not running since the host booted ({})",
            started_words(r.started_at.as_deref())
        )));
    }
    Some(match (&r.ended, r.stopped_on_request) {
        (Some(how), true) if how == "stopped" => {
            Gone::Ended(format!("pid {} stopped by request at {at}", r.id.pid))
        }
        (Some(how), true) => Gone::Ended(format!("pid {} {how} at {at}", r.id.pid)),
        (Some(how), false) => Gone::Ended(format!("pid {} ended at {at}: {how}", r.id.pid)),
        // A runner records its end; none recorded: it was killed, or crashed.
        (None, _) => Gone::Died(format!(
            "pid {} is gone without having been stopped ({}; the time of its end is not recorded)",
            r.id.pid,
            started_words(r.started_at.as_deref())
        )),
    })
}

/// The keeper, when not alive.
fn keeper_gone(seen: &Seen) -> Option<Gone> {
    if seen.proxy.keeper_pid.is_some() {
        return None;
    }
    let Some(k) = seen.keeper else {
        return Some(Gone::Ended("not running (none has run)".into()));
    };
    let started_at = k.started_at.as_deref().or(k.worker_started_at.as_deref());
    let started = started_words(started_at);
    Some(match seen.proxy.state {
        // Its lock is held, by another process than the one recorded: a
        // keeper that has not written its record yet, or not ours.
        ProxyState::Running | ProxyState::Restarting => Gone::Died(format!(
            "its lock is held, but not by the keeper pid {} its record names",
            k.keeper.pid
        )),
        _ if seen.before_boot(started_at) => {
            Gone::Ended(format!("not running since the host booted ({started})"))
        }
        _ if k.last_exit.as_deref() == Some("stopped") => Gone::Ended(format!(
            "pid {} stopped by request at {}",
            k.keeper.pid,
            k.last_exit_at.as_deref().unwrap_or("?")
        )),
        _ => Gone::Died(format!(
            "pid {} is gone without having been stopped ({started}; the time of its end is not recorded)",
            k.keeper.pid
        )),
    })
}

/// The worker, when its keeper lives but it does not serve.
fn worker_gone(seen: &Seen) -> Option<Gone> {
    let p = seen.proxy;
    // No keeper: its worker is gone with it, and the keeper is named.
    p.keeper_pid?;
    match (p.worker_pid, &p.state) {
        (Some(_), ProxyState::Running) => None,
        (Some(pid), _) => Some(Gone::Died(format!(
            "pid {pid} does not answer on the control socket"
        ))),
        (None, _) => {
            let last = seen
                .keeper
                .and_then(|k| k.last_exit.clone())
                .map(|how| {
                    let at = seen
                        .keeper
                        .and_then(|k| k.last_exit_at.as_deref())
                        .unwrap_or("?");
                    format!("; the last one {how} at {at}")
                })
                .unwrap_or_default();
            Some(Gone::Died(format!(
                "not running; its keeper starts it again{last}"
            )))
        }
    }
}

/// The instance the proxy sends traffic to, when it is not running and
/// healthy; with its own LSB code.
fn active_gone(seen: &Seen) -> Option<(Option<u16>, Gone, i32)> {
    let p = seen.proxy;
    let Some(port) = p.active else {
        return Some((
            None,
            Gone::Ended("none: the proxy sends traffic to no instance".into()),
            LSB_DEAD,
        ));
    };
    let Some(i) = p.instances.iter().find(|i| i.port == port) else {
        return Some((
            Some(port),
            Gone::Died("not one of the release's two instance ports".into()),
            LSB_DEAD,
        ));
    };
    let s = &i.service;
    let last_seen = seen
        .active_last_seen
        .as_deref()
        .map(|t| format!(" (its supervisor's last sign of life at {t})"))
        .unwrap_or_default();
    let gone = match s.state {
        ServiceState::Running if s.healthy == Some(true) => return None,
        ServiceState::Running => {
            let since = s
                .unhealthy_since
                .as_deref()
                .map(|t| format!(" since {t}"))
                .unwrap_or_default();
            let probe = s
                .last_probe
                .as_deref()
                .map(|p| format!(" (last probe: {p})"))
                .unwrap_or_default();
            return Some((
                Some(port),
                Gone::Died(format!("{}; NOT healthy{since}{probe}", s.detail)),
                LSB_DEAD,
            ));
        }
        ServiceState::Stopped => Gone::Ended(s.detail.clone()),
        ServiceState::Dead | ServiceState::Failed => Gone::Died(format!("{}{last_seen}", s.detail)),
        _ => Gone::Died(s.detail.clone()),
    };
    Some((Some(port), gone, s.lsb_code))
}

/// The verdict on the whole (pure). Nothing runs and every part ended on
/// its own terms: stopped (3). Something runs and a part is missing: dead
/// (1) — the active instance alone in its health gate or back-off keeps its
/// own code (3), as a plain service does. Nothing runs and a part died:
/// dead (1), naming the parts that died.
fn judge(seen: &Seen) -> Verdict {
    let p = seen.proxy;
    let runner = runner_gone(seen);
    let keeper = keeper_gone(seen);
    let worker = worker_gone(seen);
    let active = active_gone(seen);
    let instance_runs = p
        .instances
        .iter()
        .any(|i| i.service.pid.is_some() || i.service.supervisor_pid.is_some());
    let nothing_runs = runner.is_some()
        && keeper.is_some()
        && p.state != ProxyState::Running
        && p.state != ProxyState::Restarting
        && !instance_runs;
    if nothing_runs {
        return judge_stopped(p, runner, keeper, active);
    }
    let mut missing = Vec::new();
    let mut others = false;
    for (name, gone) in [
        (Part::Runner, runner),
        (Part::Keeper, keeper),
        (Part::Worker, worker),
    ] {
        if let Some(g) = gone {
            others = true;
            missing.push(missing_part(name, None, g));
        }
    }
    let mut code = LSB_RUNNING;
    let mut state = ServiceState::Running;
    if let Some((port, gone, lsb)) = active {
        let instance_state = port
            .and_then(|port| p.instances.iter().find(|i| i.port == port))
            .map(|i| i.service.state.clone());
        missing.push(missing_part(Part::ActiveInstance, port, gone));
        match instance_state {
            // In its gate or back-off under a live supervisor: not serving
            // yet, as a plain service that restarts.
            Some(s @ (ServiceState::Starting | ServiceState::Restarting))
                if lsb == LSB_NOT_RUNNING =>
            {
                state = s;
                code = LSB_NOT_RUNNING;
            }
            _ => {
                state = ServiceState::Dead;
                code = LSB_DEAD;
            }
        }
    }
    if others {
        state = ServiceState::Dead;
        code = LSB_DEAD;
    }
    Verdict {
        state,
        lsb_code: code,
        missing,
    }
}

fn missing_part(part: Part, port: Option<u16>, gone: Gone) -> MissingPart {
    MissingPart {
        part,
        port,
        detail: gone.detail(),
    }
}

/// Dead, failed, or a state this version does not know: not a stop.
fn died(i: &&InstanceStatus) -> bool {
    matches!(
        i.service.state,
        ServiceState::Dead | ServiceState::Failed | ServiceState::Unknown(_)
    )
}

/// Nothing runs: stopped when every part recorded its stop, else dead
/// naming only the parts that died (the rest were stopped with the whole).
fn judge_stopped(
    p: &ProxyStatus,
    runner: Option<Gone>,
    keeper: Option<Gone>,
    active: Option<(Option<u16>, Gone, i32)>,
) -> Verdict {
    let gone_died = |g: &Option<Gone>| matches!(g, Some(Gone::Died(_)));
    if !gone_died(&runner) && !gone_died(&keeper) && !p.instances.iter().any(|i| died(&i)) {
        return Verdict {
            state: ServiceState::Stopped,
            lsb_code: LSB_NOT_RUNNING,
            missing: Vec::new(),
        };
    }
    let mut missing = Vec::new();
    if let Some(g @ Gone::Died(_)) = runner {
        missing.push(missing_part(Part::Runner, None, g));
    }
    if let Some(g @ Gone::Died(_)) = keeper {
        missing.push(missing_part(Part::Keeper, None, g));
    }
    for i in p.instances.iter().filter(died) {
        let is_active = p.active == Some(i.port);
        let detail = match (&active, is_active) {
            (Some((_, Gone::Died(d), _)), true) => d.clone(),
            _ => i.service.detail.clone(),
        };
        missing.push(MissingPart {
            part: if is_active {
                Part::ActiveInstance
            } else {
                Part::IdleInstance
            },
            port: Some(i.port),
            detail,
        });
    }
    Verdict {
        state: ServiceState::Dead,
        lsb_code: LSB_DEAD,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::{Seen, judge};
    use crate::host::os::procfs::ProcessId;
    use crate::host::proxied::instances::idle_port;
    use crate::host::proxied::runner_record::RunnerRecord;
    use crate::host::proxy::KeeperRecord;
    use crate::protocol::manifest::ProxySpec;
    use crate::protocol::status::{
        InstanceStatus, Part, ProxyState, ProxyStatus, ServiceState, ServiceStatus,
    };

    fn id(pid: i32) -> ProcessId {
        ProcessId {
            pid,
            start_ticks: 1,
        }
    }

    fn instance(port: u16, active: bool, state: ServiceState, lsb: i32) -> InstanceStatus {
        let mut service = ServiceStatus::bare(state.clone(), lsb, format!("{state}: …"));
        if state == ServiceState::Running {
            service.pid = Some(50);
            service.supervisor_pid = Some(49);
            service.healthy = Some(true);
        }
        InstanceStatus {
            port,
            active,
            service,
        }
    }

    /// A proxy whose keeper (pid 20) and worker (21) live, the first of two
    /// instances active and running.
    fn serving() -> ProxyStatus {
        ProxyStatus {
            state: ProxyState::Running,
            listen: Some("127.0.0.1:8080".into()),
            active: Some(1),
            keeper_pid: Some(20),
            worker_pid: Some(21),
            restarts: 0,
            last_exit: None,
            inflight: Vec::new(),
            instances: vec![
                instance(1, true, ServiceState::Running, 0),
                instance(2, false, ServiceState::Stopped, 3),
            ],
            runner_pid: None,
            runner_started_at: None,
            service_state: None,
            lsb_code: None,
            missing: Vec::new(),
            traffic: None,
            held: 0,
        }
    }

    fn runner(ended: Option<&str>, on_request: bool) -> RunnerRecord {
        RunnerRecord {
            id: id(10),
            started_at: Some("T0".into()),
            ended: ended.map(str::to_string),
            stopped_on_request: on_request,
            ended_at: ended.map(|_| "T1".to_string()),
        }
    }

    fn keeper(last_exit: Option<&str>) -> KeeperRecord {
        KeeperRecord {
            keeper: id(20),
            started_at: Some("T0".into()),
            worker: None,
            worker_started_at: None,
            restarts: 0,
            last_exit: last_exit.map(str::to_string),
            last_exit_at: last_exit.map(|_| "T2".to_string()),
            listen: "127.0.0.1:8080".into(),
        }
    }

    /// Everything down: no pids, the proxy as `state`, instances as given.
    fn down(state: ProxyState, instances: Vec<InstanceStatus>) -> ProxyStatus {
        ProxyStatus {
            state,
            keeper_pid: None,
            worker_pid: None,
            instances,
            ..serving()
        }
    }

    #[test]
    fn every_part_alive_is_running() {
        let (r, k, p) = (runner(None, false), keeper(None), serving());
        let v = judge(&Seen {
            runner_pid: Some(10),
            runner: Some(&r),
            keeper: Some(&k),
            proxy: &p,
            active_last_seen: None,
            booted_at: None,
        });
        assert_eq!((v.state, v.lsb_code), (ServiceState::Running, 0));
        assert!(v.missing.is_empty(), "{:?}", v.missing);
    }

    #[test]
    fn a_runner_gone_without_its_end_is_dead_and_named_with_its_start() {
        let (r, k, p) = (runner(None, false), keeper(None), serving());
        let v = judge(&Seen {
            runner_pid: None,
            runner: Some(&r),
            keeper: Some(&k),
            proxy: &p,
            active_last_seen: None,
            booted_at: None,
        });
        assert_eq!((v.state, v.lsb_code), (ServiceState::Dead, 1));
        assert_eq!(v.missing.len(), 1);
        assert_eq!(
            v.missing[0].line(),
            "missing runner: pid 10 is gone without having been stopped (last started at T0; \
             the time of its end is not recorded)"
        );
    }

    #[test]
    fn a_worker_missing_under_a_live_keeper_is_named_with_how_the_last_ended() {
        let (r, k) = (runner(None, false), keeper(Some("killed by SIGKILL")));
        let p = ProxyStatus {
            state: ProxyState::Restarting,
            worker_pid: None,
            ..serving()
        };
        let v = judge(&Seen {
            runner_pid: Some(10),
            runner: Some(&r),
            keeper: Some(&k),
            proxy: &p,
            active_last_seen: None,
            booted_at: None,
        });
        assert_eq!(v.lsb_code, 1);
        assert_eq!(
            v.missing.iter().map(|m| m.line()).collect::<Vec<_>>(),
            [
                "missing worker: not running; its keeper starts it again; the last one killed by SIGKILL at T2"
            ]
        );
    }

    #[test]
    fn an_active_instance_in_its_back_off_keeps_its_own_code_a_dead_one_is_dead() {
        let (r, k) = (runner(None, false), keeper(None));
        let mut p = serving();
        p.instances[0] = instance(1, true, ServiceState::Restarting, 3);
        let judged = |p: &ProxyStatus| {
            judge(&Seen {
                runner_pid: Some(10),
                runner: Some(&r),
                keeper: Some(&k),
                proxy: p,
                active_last_seen: Some("T3".into()),
                booted_at: None,
            })
        };
        let v = judged(&p);
        assert_eq!((v.state, v.lsb_code), (ServiceState::Restarting, 3));
        assert_eq!(v.missing[0].part, Part::ActiveInstance);
        assert_eq!(v.missing[0].port, Some(1));

        p.instances[0] = instance(1, true, ServiceState::Dead, 1);
        let v = judged(&p);
        assert_eq!((v.state, v.lsb_code), (ServiceState::Dead, 1));
        assert_eq!(
            v.missing[0].line(),
            "missing active instance 1: dead: … (its supervisor's last sign of life at T3)"
        );

        p.instances[0] = instance(1, true, ServiceState::Running, 0);
        p.instances[0].service.healthy = Some(false);
        let v = judged(&p);
        assert_eq!((v.state, v.lsb_code), (ServiceState::Dead, 1));
        assert!(
            v.missing[0].detail.contains("NOT healthy"),
            "{:?}",
            v.missing
        );
    }

    #[test]
    fn stopped_by_request_is_stopped_and_killed_is_dead_naming_what_died() {
        let stopped = vec![
            instance(1, false, ServiceState::Stopped, 3),
            instance(2, false, ServiceState::Stopped, 3),
        ];
        let (r, k) = (runner(Some("stopped"), true), keeper(Some("stopped")));
        let p = down(ProxyState::Stopped, stopped.clone());
        let v = judge(&Seen {
            runner_pid: None,
            runner: Some(&r),
            keeper: Some(&k),
            proxy: &p,
            active_last_seen: None,
            booted_at: None,
        });
        assert_eq!((v.state, v.lsb_code), (ServiceState::Stopped, 3));
        assert!(v.missing.is_empty(), "{:?}", v.missing);

        // Never started at all: stopped too.
        let p = down(ProxyState::Stopped, stopped);
        let v = judge(&Seen {
            runner_pid: None,
            runner: None,
            keeper: None,
            proxy: &p,
            active_last_seen: None,
            booted_at: None,
        });
        assert_eq!((v.state, v.lsb_code), (ServiceState::Stopped, 3));

        // All killed: each part that died is named, the stopped idle one is not.
        let (r, k) = (runner(None, false), keeper(None));
        let p = down(
            ProxyState::Dead,
            vec![
                instance(1, false, ServiceState::Dead, 1),
                instance(2, false, ServiceState::Stopped, 3),
            ],
        );
        let v = judge(&Seen {
            runner_pid: None,
            runner: Some(&r),
            keeper: Some(&k),
            proxy: &p,
            active_last_seen: None,
            booted_at: None,
        });
        assert_eq!((v.state, v.lsb_code), (ServiceState::Dead, 1));
        let parts: Vec<_> = v.missing.iter().map(|m| (m.part.clone(), m.port)).collect();
        assert_eq!(
            parts,
            [
                (Part::Runner, None),
                (Part::Keeper, None),
                (Part::ActiveInstance, Some(1))
            ]
        );
    }

    #[test]
    fn the_idle_port_is_the_other_one_or_the_first() {
        let spec = ProxySpec {
            listen: "127.0.0.1:8080".into(),
            ports: [18081, 18082],
            port_env: "PORT".into(),
            drain_timeout_ms: 1,
            hold_ms: 1,
            header_timeout_ms: 1,
            idle_timeout_ms: 1,
            upstream_timeout_ms: None,
            max_connections: 1,
            trusted_proxies: Vec::new(),
            max_request_body: None,
            max_response_body: None,
            access_log: false,
            metrics_listen: None,
            tls: None,
        };
        assert_eq!(idle_port(&spec, None), 18081);
        assert_eq!(idle_port(&spec, Some(18081)), 18082);
        assert_eq!(idle_port(&spec, Some(18082)), 18081);
        assert_eq!(idle_port(&spec, Some(9)), 18081);
    }

    #[test]
    fn records_from_before_this_boot_ended_with_it() {
        let mut r = runner(None, false);
        r.started_at = Some("2020-01-01T00:00:00Z".into());
        let mut k = keeper(Some("killed by SIGKILL"));
        k.started_at = Some("2020-01-01T00:00:01Z".into());
        let p = down(
            ProxyState::Dead,
            vec![
                instance(1, false, ServiceState::Stopped, 3),
                instance(2, false, ServiceState::Stopped, 3),
            ],
        );
        let seen = Seen {
            runner_pid: None,
            runner: Some(&r),
            keeper: Some(&k),
            proxy: &p,
            active_last_seen: None,
            booted_at: Some(std::time::SystemTime::now()),
        };
        let v = judge(&seen);
        assert_eq!((v.state, v.lsb_code), (ServiceState::Stopped, 3));
        // The same records in this boot: both died.
        let v = judge(&Seen {
            booted_at: humantime::parse_rfc3339("2019-01-01T00:00:00Z").ok(),
            ..seen
        });
        assert_eq!((v.state, v.lsb_code), (ServiceState::Dead, 1));
        assert_eq!(v.missing.len(), 2, "{:?}", v.missing);
    }
}
