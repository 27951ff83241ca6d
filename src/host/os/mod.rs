//! The host's operating-system plumbing, shared by the supervisor, the proxy
//! and the runner: process identity from `/proc`, spawning and signalling
//! processes, systemd's notify socket, and starting a detached shipjar that
//! reports one line.

pub mod detached;
pub mod notify;
pub mod process;
#[allow(clippy::disallowed_methods)] // root-only: /proc
pub mod procfs;
