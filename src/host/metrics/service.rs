//! The supervisors' side of a scrape: what each instance's supervisor
//! records in its state file (restarts, phase, health, start-to-healthy,
//! class-data archive use), read when scraped — no channel of its own. The
//! supervisor's liveness is proven against `/proc`: a state file left by a
//! killed supervisor does not read as up.

use super::{Exposition, Kind};
use crate::host::os::procfs::{self, Liveness};
use crate::host::supervisor::{self, ClassDataUse, Phase, SupervisorState};
use crate::protocol::layout::Layout;

/// One supervised run as a scrape sees it, labelled by its port.
struct Seen {
    port: String,
    state: Option<SupervisorState>,
    alive: bool,
}

/// The families of the service's instances on `ports` (behind the proxy).
pub fn write(out: &mut Exposition, layout: &Layout, ports: &[u16]) {
    let seen: Vec<Seen> = ports
        .iter()
        .map(|port| {
            let state = supervisor::recorded_state(&layout.with_instance(Some(*port)));
            let alive = state
                .as_ref()
                .is_some_and(|s| procfs::liveness(s.supervisor) == Liveness::Alive);
            Seen {
                port: port.to_string(),
                state,
                alive,
            }
        })
        .collect();
    write_seen(out, &seen);
}

/// Pure: the families from what was read.
fn write_seen(out: &mut Exposition, seen: &[Seen]) {
    let running = |s: &Seen| {
        s.alive
            && s.state
                .as_ref()
                .is_some_and(|st| st.state == Phase::Running)
    };
    gauge(
        out,
        seen,
        "shipjar_service_up",
        "1 while the instance's supervisor lives and its service passed the health gate",
        |s| Some(f64::from(u8::from(running(s)))),
    );
    gauge(
        out,
        seen,
        "shipjar_service_healthy",
        "1 while the instance runs and its liveness checks pass",
        |s| {
            let failing = s
                .state
                .as_ref()
                .is_some_and(|st| st.unhealthy_since.is_some());
            Some(f64::from(u8::from(running(s) && !failing)))
        },
    );
    gauge(
        out,
        seen,
        "shipjar_service_liveness_failing",
        "1 while the running service's liveness checks fail (since unhealthy_since)",
        |s| {
            let failing = s
                .state
                .as_ref()
                .is_some_and(|st| st.unhealthy_since.is_some());
            Some(f64::from(u8::from(s.alive && failing)))
        },
    );
    out.family(
        "shipjar_service_restarts_total",
        Kind::Counter,
        "crash restarts by the instance's current (or last) supervisor",
    );
    for s in seen {
        if let Some(st) = &s.state {
            out.sample(
                "shipjar_service_restarts_total",
                &[("port", &s.port)],
                f64::from(st.restarts),
            );
        }
    }
    gauge(
        out,
        seen,
        "shipjar_service_start_to_healthy_seconds",
        "how long the last start took from spawn to healthy",
        |s| {
            s.state
                .as_ref()?
                .healthy_after_ms
                .map(|ms| ms as f64 / 1000.0)
        },
    );
    out.family("shipjar_service_class_data", Kind::Gauge, "1 for what the run does with its class-data archive: used, dumping (writes one at exit), refused (the JVM would not map it)");
    for s in seen {
        let Some(used) = s.state.as_ref().and_then(|st| st.class_data.as_ref()) else {
            continue;
        };
        for word in [
            ClassDataUse::Used,
            ClassDataUse::Dumping,
            ClassDataUse::Refused,
        ] {
            let value = f64::from(u8::from(*used == word));
            out.sample(
                "shipjar_service_class_data",
                &[("port", &s.port), ("use", word.as_str())],
                value,
            );
        }
    }
}

/// A gauge family with one sample per instance that has a value.
fn gauge(
    out: &mut Exposition,
    seen: &[Seen],
    name: &str,
    help: &str,
    value: impl Fn(&Seen) -> Option<f64>,
) {
    out.family(name, Kind::Gauge, help);
    for s in seen {
        if let Some(v) = value(s) {
            out.sample(name, &[("port", &s.port)], v);
        }
    }
}
