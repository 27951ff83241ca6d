//! Host side: everything that runs on a deploy target and changes it.

pub mod activate;
pub mod agent;
pub mod cancel;
pub mod check;
pub mod error;
pub mod fetch;
pub mod fs;
pub mod hooks;
#[allow(clippy::disallowed_methods)] // root-only: /etc (unit, init script, rc links)
pub mod init;
#[allow(clippy::disallowed_methods)] // root-only: run/NAME is root's 0755
pub mod lock;
#[allow(clippy::disallowed_methods)]
// root-only: /proc, and run/NAME/locks (root's 0711; files opened with openat O_NOFOLLOW)
pub mod lockfile;
pub mod logs;
#[allow(clippy::disallowed_methods)] // root-only: reads the state files in root's run/NAME
pub mod metrics;
pub mod os;
pub mod probe;
pub mod provision;
pub mod proxied;
pub mod proxy;
pub mod restart;
#[allow(clippy::disallowed_methods)] // root-only: var/lib/NAME/revisions.log, in root's 0755 dir
pub mod revisions;
#[allow(clippy::disallowed_methods)] // root-only: releases/<id>/SECRETS, in root's 0755 releases/
pub mod secrets;
pub mod steps;
#[allow(clippy::disallowed_methods)]
// root-only: artifacts/, releases/, current in root's 0755 var/lib/NAME
pub mod store;
pub mod supervisor;
#[allow(clippy::disallowed_methods)]
// root-only: /etc/init.d, /etc/systemd/system, root's var/lib/NAME/pre-shipjar
pub mod takeover;
pub mod watch;
