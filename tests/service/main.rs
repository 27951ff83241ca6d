//! End-to-end tests of the host supervisor with real processes, mostly the
//! `examples/hello` JVM and its fault knobs: crash restarts, log capture,
//! graceful stop, readiness, privileges, foreground mode, init integration.
//! One test binary, so the example jar is built once.

#[path = "../common/mod.rs"]
mod common;

mod console_log;
mod death;
mod identity;
mod init;
mod liveness;
mod locks;
mod logs;
mod notify;
mod pacing;
mod privileges;
mod readiness;
mod reload;
mod report;
mod restart;
mod stop;
