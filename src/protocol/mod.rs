//! What both sides share, at the bottom of the dependency graph: the wire
//! protocol between operator and agent, the release manifest, the layout of a
//! service on a host, the service's status values, every default, and the
//! helpers both sides use for names, hashing, time and durable files.
//!
//! Framing: the operator writes one JSON [`Envelope`] per line to the agent's
//! stdin (a `put_artifact` request is followed by exactly `size` raw bytes,
//! a `put_class_data` by its archive's `packed_size`); the agent answers
//! each request with zero or more [`AgentMessage::Event`] lines and exactly
//! one [`AgentMessage::Result`] line on stdout (a `class_data_dumped` with
//! an archive is followed by its `packed_size` raw bytes). Requests are
//! handled in order, so the operator may pipeline them.
//!
//! Nothing here imports `crate::operator` or `crate::host` (a test enforces it).

pub mod canary;
pub mod clock;
pub mod defaults;
pub mod digest;
pub mod files;
pub mod hook_wait;
pub mod http;
pub mod keep;
pub mod layout;
pub mod manifest;
pub mod mask;
mod messages;
pub mod names;
pub mod net;
pub mod shell;
pub mod status;
mod wire_enum;

pub use messages::*;
pub use names::validate_service_name;
pub(crate) use wire_enum::wire_enum;

/// Protocol version; operator and agent must agree exactly.
/// 2: the agent announces how long a long request may take (`expect`).
/// 3: `prepare` carries the secret values the host masks (an agent of
/// version 2 would refuse the field; the version mismatch says why);
/// failed-step events; `finish` records a run that stopped before switching.
/// 4: `logs` with `since` and `grep`.
/// 5: `exec` (a command in `current`, its output streamed as `out` events).
/// 6: `fetch_artifact` (a host downloads the artifact from a repository);
/// `[proxy]` body limits and `access_log` in the manifest's ProxySpec;
/// canaries: `watch` (a release kept under watch for a pause), `begin`
/// with `resume` and `finish` with `pending` (the lock kept for a canary
/// waiting for its operator), the pending canary in `status`; `detach` and
/// `attach` (a deploy lock that outlives its session, taken back by token).
/// 7: `dump_class_data` and `put_class_data` (a class-data archive shared
/// by the hosts of a deploy), the archive as raw bytes after the line.
pub const PROTOCOL_VERSION: u32 = 7;
