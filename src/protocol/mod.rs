//! The wire protocol between operator and agent, and the release manifest.
//!
//! Framing: the operator writes one JSON [`Envelope`] per line to the agent's
//! stdin (a `put_artifact` request is followed by exactly `size` raw bytes);
//! the agent answers each request with zero or more [`AgentMessage::Event`]
//! lines and exactly one [`AgentMessage::Result`] line on stdout. Requests are
//! handled in order, so the operator may pipeline them.

pub mod manifest;

use serde::{Deserialize, Serialize};

use crate::host::supervisor::ServiceStatus;
use manifest::ReleaseManifest;

/// Checks a service name: `[a-z][a-z0-9-]*`, at most 32 characters.
/// Part of the protocol because it becomes paths and a unix user on the host.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
        && name.len() <= 32;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid service name `{name}`: expected [a-z][a-z0-9-]*, at most 32 characters"
        ))
    }
}

/// Protocol version; operator and agent must agree exactly.
pub const PROTOCOL_VERSION: u32 = 1;

/// One request as it travels on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Echoed in every message answering this request.
    pub id: u64,
    /// Service the request is about (selects the host layout).
    pub service: String,
    /// The request itself.
    pub request: Request,
}

/// What the operator asks an agent to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Take the deploy lock for the session and report the host's state.
    Begin {
        /// Who is deploying.
        holder: LockHolder,
        /// Report whether this artifact is already stored.
        artifact_sha256: Option<String>,
        /// Lease of the lock in milliseconds; renewed while the session works.
        lease_ms: u64,
        /// Prepare this release right away if the artifact is already stored
        /// (saves a round trip; otherwise `prepare` follows the upload).
        prepare: Option<Box<PrepareSpec>>,
    },
    /// Extend the lease of the session's lock.
    Renew,
    /// Store an artifact; `size` raw bytes follow the request line.
    PutArtifact {
        /// Expected sha256, hex; verified before the artifact becomes visible.
        sha256: String,
        /// Number of bytes that follow.
        size: u64,
    },
    /// Create a complete release directory (not yet current).
    Prepare(Box<PrepareSpec>),
    /// Make a release current, restart through the health gate, verify its version;
    /// on failure go back to the previous release.
    Activate {
        /// Release id.
        release: String,
        /// Recorded in revisions.log.
        action: Action,
        /// Recorded in revisions.log.
        deployer: String,
    },
    /// Prune old releases (when `keep` is given) and release the deploy lock.
    Finish {
        /// Releases to keep.
        keep: Option<usize>,
    },
    /// Remove the deploy lock whoever holds it (`shipjar unlock`).
    Unlock,
    /// Send the service log's last lines as `log` events; with `follow`, keep sending.
    Logs {
        /// How many lines from the end.
        lines: usize,
        /// Keep sending new lines until the operator goes away.
        follow: bool,
    },
    /// Bring the host to what the service needs (user, directories, init integration).
    Provision {
        /// What to provision.
        spec: ProvisionSpec,
    },
    /// Report what runs on this host.
    Status,
    /// List releases on this host.
    Releases,
}

/// Why a release is being activated.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new release.
    Deploy,
    /// Back to an earlier release.
    Rollback,
}

impl Action {
    /// The word used in revisions.log and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
        }
    }
}

/// Who holds a deploy lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockHolder {
    /// `user@machine`.
    pub deployer: String,
    /// Pid of the operator process.
    pub pid: u32,
    /// The command line, e.g. `shipjar deploy production`.
    pub command: String,
    /// When the lock was taken (RFC 3339).
    pub since: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}, `{}`, since {})",
            self.deployer, self.pid, self.command, self.since
        )
    }
}

/// A release to create: its manifest and rendered config files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareSpec {
    /// The release manifest.
    pub manifest: ReleaseManifest,
    /// Rendered config files.
    pub files: Vec<FileContent>,
}

/// What `provision` should establish on a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionSpec {
    /// The unix user (and group) the service runs as.
    pub user: String,
    /// Where the shipjar binary is on the host (the init files call it).
    pub agent_path: String,
    /// Only report what would change.
    pub dry_run: bool,
}

/// The outcome for one provisioned resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceResult {
    /// E.g. `user hello`, `directory /var/log/hello`.
    pub resource: String,
    /// `ok`, `changed`, `would_change` or `failed`.
    pub status: String,
    /// What it is, or what changed.
    pub detail: String,
    /// For files: a unified diff of the change.
    pub diff: Option<String>,
}

/// A rendered config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileContent {
    /// Path relative to the release's `config/`.
    pub dest: String,
    /// Written 0600 (0640 root:group as root).
    pub secret: bool,
    /// The file's text.
    pub content: String,
}

/// Everything the agent writes to stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// Progress of a request.
    Event {
        /// Request id.
        id: u64,
        /// Step name, e.g. `switch`, `restart`, `health`.
        step: String,
        /// What happened.
        message: String,
    },
    /// The final answer to a request.
    Result {
        /// Request id.
        id: u64,
        /// The answer.
        response: Box<Response>,
    },
}

/// The answer to one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Answer to `begin`.
    Begun(Box<HostState>),
    /// Answer to `put_artifact`.
    Stored {
        /// Bytes written to the store.
        bytes: u64,
    },
    /// Answer to `renew`.
    Renewed {
        /// New expiry, Unix milliseconds.
        expires_at_ms: u64,
    },
    /// Answer to `unlock`.
    Unlocked {
        /// Who held the lock, if anyone.
        previous: Option<String>,
    },
    /// Answer to `logs` (without follow).
    LogsDone,
    /// Answer to `provision`.
    Provisioned {
        /// One entry per resource, in order.
        resources: Vec<ResourceResult>,
    },
    /// Answer to `prepare`.
    Prepared {
        /// The release directory.
        path: String,
    },
    /// Answer to `activate`.
    Activated(Box<Activation>),
    /// Answer to `finish`.
    Finished {
        /// Releases removed.
        pruned: Vec<String>,
    },
    /// Answer to `status`.
    Status(Box<HostStatus>),
    /// Answer to `releases`.
    Releases {
        /// Oldest first.
        releases: Vec<ReleaseInfo>,
    },
    /// The request failed; nothing after it in the session is applied.
    Error(AgentError),
}

/// A request that could not be carried out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentError {
    /// Step that failed.
    pub step: String,
    /// Why.
    pub message: String,
}

/// A host's state at the start of a deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostState {
    /// Version of the agent binary.
    pub agent_version: String,
    /// The host's name.
    pub hostname: String,
    /// Release `current` points to.
    pub current: Option<String>,
    /// Whether the requested artifact is stored already.
    pub has_artifact: bool,
    /// Releases on the host, oldest first.
    pub releases: Vec<ReleaseInfo>,
    /// Half-written releases or uploads from a killed run that were removed.
    pub cleaned_up: Vec<String>,
    /// The expired lock that was taken over, if any.
    pub took_over: Option<String>,
    /// Whether the release asked for in `begin` was prepared.
    pub prepared: bool,
}

/// Outcome of an activation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activation {
    /// True when the release is current, healthy and reports its version.
    pub ok: bool,
    /// Release that was activated.
    pub release: String,
    /// Pid of the service.
    pub pid: Option<i32>,
    /// Milliseconds from start to healthy.
    pub healthy_after_ms: Option<u64>,
    /// Milliseconds the previous process took to stop.
    pub stopped_after_ms: Option<u64>,
    /// Version the service reported.
    pub reported_version: Option<String>,
    /// On failure: the step that failed.
    pub failed_step: Option<String>,
    /// On failure: why.
    pub reason: Option<String>,
    /// On failure: the last lines of the service log.
    pub log_tail: Vec<String>,
    /// On failure: what the host runs now.
    pub now_running: Option<NowRunning>,
}

/// What a host runs after a failed activation was reverted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NowRunning {
    /// Release `current` points to, if any.
    pub release: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// Whether it passed the health check after the revert.
    pub healthy: bool,
    /// What went wrong with the revert, if anything.
    pub problem: Option<String>,
}

/// One release on a host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseInfo {
    /// Release id.
    pub id: String,
    /// Version from its manifest.
    pub version: String,
    /// When it was created.
    pub deployed_at: String,
    /// Who created it.
    pub deployer: String,
    /// sha256 of its artifact.
    pub artifact_sha256: String,
    /// Whether `current` points to it.
    pub current: bool,
    /// Last recorded outcome of activating it (`success`, `failed`), if any.
    pub outcome: Option<String>,
}

/// What runs on a host, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostStatus {
    /// The release `current` points to.
    pub current: Option<ReleaseInfo>,
    /// The supervisor's view of the process.
    pub service: ServiceStatusWire,
    /// Version from the manifest of the release the process was started from.
    pub running_version: Option<String>,
    /// Version the service reports over its version endpoint.
    pub reported_version: Option<String>,
    /// Why the reported version is missing, if it is.
    pub version_error: Option<String>,
    /// The last line of revisions.log.
    pub last_revision: Option<Revision>,
}

/// A revisions.log line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    /// When (RFC 3339).
    pub time: String,
    /// `deploy` or `rollback`.
    pub action: String,
    /// Release id.
    pub release: String,
    /// Version.
    pub version: String,
    /// Who.
    pub deployer: String,
    /// `success` or `failed`.
    pub outcome: String,
    /// Free text: the failure, what was reverted.
    pub detail: String,
}

/// The supervisor's status as carried on the wire (owned, deserializable).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStatusWire {
    /// `running`, `dead` or `stopped`.
    pub state: String,
    /// LSB status code.
    pub lsb_code: i32,
    /// Service pid.
    pub pid: Option<i32>,
    /// Release the process was started from.
    pub release: Option<String>,
    /// When the process started.
    pub started_at: Option<String>,
    /// Seconds since then.
    pub uptime_s: Option<u64>,
    /// Health probe made now.
    pub healthy: Option<bool>,
    /// Human-readable summary.
    pub detail: String,
}

impl From<ServiceStatus> for ServiceStatusWire {
    fn from(s: ServiceStatus) -> Self {
        let state = serde_json::to_value(s.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        ServiceStatusWire {
            state,
            lsb_code: s.lsb_code,
            pid: s.pid,
            release: s.release,
            started_at: s.started_at,
            uptime_s: s.uptime_s,
            healthy: s.healthy,
            detail: s.detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(response: Response) {
        let message = AgentMessage::Result {
            id: 7,
            response: Box::new(response),
        };
        let text = serde_json::to_string(&message).expect("every answer must encode");
        let back: AgentMessage = serde_json::from_str(&text).expect("and decode");
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn every_response_kind_survives_the_wire() {
        let release = ReleaseInfo {
            id: "20261126-140000-000".into(),
            version: "1".into(),
            deployed_at: "t".into(),
            deployer: "me@box".into(),
            artifact_sha256: "ab".repeat(32),
            current: true,
            outcome: Some("success".into()),
        };
        round_trip(Response::Releases {
            releases: vec![release.clone()],
        });
        round_trip(Response::Finished { pruned: vec![] });
        round_trip(Response::Stored { bytes: 3 });
        round_trip(Response::Prepared { path: "/x".into() });
        round_trip(Response::Error(AgentError {
            step: "lock".into(),
            message: "held".into(),
        }));
        round_trip(Response::Begun(Box::new(HostState {
            agent_version: "0.1.0".into(),
            hostname: "h".into(),
            current: None,
            has_artifact: false,
            releases: vec![release.clone()],
            cleaned_up: vec![],
            took_over: None,
            prepared: false,
        })));
        round_trip(Response::Status(Box::new(HostStatus {
            current: Some(release),
            service: ServiceStatusWire {
                state: "running".into(),
                lsb_code: 0,
                pid: Some(1),
                release: None,
                started_at: None,
                uptime_s: None,
                healthy: Some(true),
                detail: String::new(),
            },
            running_version: None,
            reported_version: None,
            version_error: None,
            last_revision: None,
        })));
    }
}
