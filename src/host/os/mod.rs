//! The host's operating-system plumbing, shared by the supervisor, the proxy
//! and the runner: process identity from `/proc`, spawning and signalling
//! processes, systemd's notify socket, who listens on which port (netlink
//! sock_diag), and starting a detached shipjar that reports one line.

pub mod detached;
pub mod journal;
#[allow(clippy::disallowed_methods)] // root-only: /proc
pub mod listener;
pub mod notify;
pub mod process;
#[allow(clippy::disallowed_methods)] // root-only: /proc
pub mod procfs;
