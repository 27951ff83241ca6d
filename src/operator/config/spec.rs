//! Config sections that are, field for field, a manifest spec convert into it
//! here, so each field's mapping is written once.

use crate::protocol::manifest::{
    HealthCheck, HealthSpec, LogSpec, ProxySpec, ReloadSpec, RestartSpec, VersionCheckSpec,
};

use super::schema::{Health, Logs, Proxy, Reload, Restart, VersionCheck};

impl From<&Health> for HealthSpec {
    fn from(h: &Health) -> Self {
        HealthSpec {
            check: match (&h.url, h.tcp) {
                (Some(url), _) => HealthCheck::Http {
                    url: url.get_ref().clone(),
                },
                (None, Some(port)) => HealthCheck::Tcp { port },
                (None, None) => HealthCheck::None,
            },
            start_timeout_ms: h.start_timeout.0,
            interval_ms: h.interval.0,
            failures: *h.failures.get_ref(),
            probe_timeout_ms: h.probe_timeout.0,
            settle_ms: h.settle.0,
        }
    }
}

impl From<&VersionCheck> for VersionCheckSpec {
    fn from(v: &VersionCheck) -> Self {
        VersionCheckSpec {
            url: v.url.clone(),
            key: v.key.clone(),
        }
    }
}

impl From<&Restart> for RestartSpec {
    fn from(r: &Restart) -> Self {
        RestartSpec {
            enabled: r.enabled,
            initial_delay_ms: r.initial_delay.0,
            max_delay_ms: r.max_delay.0,
            factor: *r.factor.get_ref(),
            reset_after_ms: r.reset_after.0,
            max_failures: *r.max_failures.get_ref(),
            window_ms: r.window.0,
            auto_revert: r.auto_revert,
            revert_window_ms: r.revert_window.0,
        }
    }
}

impl From<&Logs> for LogSpec {
    fn from(l: &Logs) -> Self {
        LogSpec {
            max_size: l.max_size.0,
            keep: *l.keep.get_ref(),
            compress: l.compress,
            file: l.file.get_ref().clone(),
            to: l.to,
        }
    }
}

impl From<&Reload> for ReloadSpec {
    fn from(r: &Reload) -> Self {
        ReloadSpec {
            signal: r.signal_name(),
        }
    }
}

impl From<&Proxy> for ProxySpec {
    /// Call only on a validated `[proxy]` (two ports, a socket address,
    /// trusted proxies that parse).
    fn from(p: &Proxy) -> Self {
        let ports = p.ports.get_ref();
        ProxySpec {
            listen: p.listen.get_ref().clone(),
            ports: [
                ports.first().copied().unwrap_or_default(),
                ports.get(1).copied().unwrap_or_default(),
            ],
            port_env: p.port_env.get_ref().clone(),
            drain_timeout_ms: p.drain_timeout.0,
            hold_ms: p.hold.0,
            header_timeout_ms: p.header_timeout.0,
            idle_timeout_ms: p.idle_timeout.0,
            upstream_timeout_ms: p.upstream_timeout.map(|t| t.0),
            max_connections: *p.max_connections.get_ref(),
            trusted_proxies: p
                .trusted_proxies
                .iter()
                .filter_map(|r| r.get_ref().parse().ok())
                .collect(),
            max_request_body: p.max_request_body.map(|b| b.0),
            max_response_body: p.max_response_body.map(|b| b.0),
            access_log: p.access_log,
            // `[metrics]` is not the proxy's section: the plan sets it.
            metrics_listen: None,
            tls: p.tls.as_ref().map(|t| {
                Box::new(crate::protocol::manifest::TlsSpec {
                    cert: t.cert.get_ref().clone(),
                    key: t.key.get_ref().clone(),
                    redirect: t.redirect.as_ref().map(|r| r.get_ref().clone()),
                })
            }),
        }
    }
}
