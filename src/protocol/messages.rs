//! Requests, responses and events: the messages of the agent protocol.

use serde::{Deserialize, Serialize};

use super::manifest::{HookSpec, ReleaseManifest};
use super::status::ServiceStatus;
use super::wire_enum;

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
        /// Take over the lock of the pending canary of this release
        /// (`deploy --continue`/`--abort`); refused when the host holds none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
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
    /// Download an artifact from a repository into the store, its sha256
    /// checked before it becomes visible (the host fetches it itself).
    FetchArtifact(Box<FetchSpec>),
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
        /// A run on some of the stage's hosts: `2 of 5 hosts (--hosts web1,web2)`,
        /// recorded in revisions.log with the activation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partial: Option<String>,
    },
    /// Run a hook on this host in a release's directory, with that release's
    /// config files and environment, as the service user (when root).
    RunHook {
        /// Release whose directory, config and environment the hook gets.
        release: String,
        /// Which hook (named in output and in `SHIPJAR_HOOK`).
        point: HookPoint,
        /// The command and its timeout.
        hook: HookSpec,
    },
    /// Run a command in `current` as the service runs (its user, environment,
    /// config files and directory), its output sent as `out` events
    /// (`shipjar exec`). Takes no lock: it changes nothing shipjar owns.
    Exec {
        /// The command and its arguments, no shell.
        argv: Vec<String>,
        /// Killed, with its process group, after this long.
        timeout_ms: u64,
    },
    /// Prune old releases (when `keep` is given) and release the deploy lock.
    Finish {
        /// Releases to keep.
        keep: Option<usize>,
        /// The run stopped before this host switched: recorded in its
        /// `revisions.log` (only by the holder of its lock).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_switched: Option<NotSwitched>,
        /// Keep the lock for this canary instead of releasing it: it outlives
        /// the session until `--continue`, `--abort` or `unlock`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pending: Option<Box<crate::protocol::canary::PendingCanary>>,
    },
    /// Remove the deploy lock whoever holds it (`shipjar unlock`).
    Unlock,
    /// Watch the running `release` for `window_ms`: it must stay up (no exit,
    /// no restart by its supervisor) and pass every liveness probe (a
    /// canary's pause). A `cancel` line ends it as a failure.
    Watch {
        /// The release that must be running.
        release: String,
        /// How long to watch.
        window_ms: u64,
    },
    /// Send the service log's last lines as `log` events; with `follow`, keep sending.
    Logs {
        /// How many lines from the end (of those matching); all when absent.
        lines: Option<usize>,
        /// Keep sending new lines until the operator goes away.
        follow: bool,
        /// Only lines from this time on (RFC 3339), by the timestamp a line starts with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        /// Only lines this regular expression matches.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grep: Option<String>,
    },
    /// Bring the host to what the service needs (user, directories, init integration).
    Provision {
        /// What to provision.
        spec: ProvisionSpec,
    },
    /// Abort the request in progress; sent while it runs (with id
    /// [`CANCEL_ID`]). Only answered when nothing was in progress.
    Cancel,
    /// Check, changing nothing, that a deploy could work here (`shipjar check`).
    CheckHost {
        /// What to check.
        spec: HostCheckSpec,
    },
    /// Report what runs on this host.
    Status,
    /// Set what the proxy does with new requests (`shipjar pause`, `resume`,
    /// `maintenance`): recorded on the host, then told to the running proxy.
    /// Takes no deploy lock, so a deploy may run while paused.
    SetTraffic {
        /// The mode, with its message and `Retry-After` for maintenance.
        traffic: crate::protocol::status::Traffic,
        /// Maintenance: the page, rendered (HTML); a built-in one when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page: Option<String>,
    },
    /// List releases on this host.
    Releases,
    /// End the session keeping the deploy lock: its lease is set to
    /// `lease_ms` from now and the agent does not release it when its input
    /// ends. A later session takes it back with `attach` and the token this
    /// answers; nobody renewing, it expires like any lease.
    Detach {
        /// The detached lease in milliseconds.
        lease_ms: u64,
    },
    /// Take back a detached deploy lock by its token, renewing its lease to
    /// `lease_ms`; refused, naming the holder, when the token no longer
    /// holds it (it expired and another deploy took it over, or `unlock`).
    /// Answered with `renewed`.
    Attach {
        /// The token `detached` answered.
        token: String,
        /// Lease of the lock in milliseconds while this session holds it.
        lease_ms: u64,
    },
    /// Dump a class-data archive for the prepared `release` from the class
    /// list the current release's run recorded (as the service user, within
    /// `deadline_ms`), keep it beside the release and send it back
    /// compressed, for the other hosts of the deploy. Never fails the
    /// session: the answer says why there is none.
    DumpClassData {
        /// The prepared release the archive is for.
        release: String,
        /// The dump is killed after this long.
        deadline_ms: u64,
    },
    /// Keep `archive`, dumped on another host, as `release`'s archive when
    /// this host runs the same JDK and jar and its sha256 matches; its
    /// `packed_size` compressed bytes follow the line. Never fails the
    /// session: the answer says why it was not kept.
    PutClassData {
        /// The prepared release it is for.
        release: String,
        /// The archive.
        archive: Box<ClassDataArchive>,
    },
}

/// A class-data archive made on one host, for another host of the deploy.
/// On the wire its compressed bytes are not in the JSON line: exactly
/// `packed_size` raw bytes follow the line that carries it (the answer to
/// `dump_class_data`, the request `put_class_data`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDataArchive {
    /// The JDK it was made with ([`ClassDataHost::jdk`]).
    pub jdk: String,
    /// The artifact (jar) it was made for.
    pub jar_sha256: String,
    /// sha256 of the archive itself, uncompressed.
    pub sha256: String,
    /// Its size, uncompressed.
    pub size: u64,
    /// Size of the zstd-compressed archive: the raw bytes after the line.
    pub packed_size: u64,
    /// The zstd-compressed archive, read from or written after the line.
    #[serde(skip)]
    pub packed: Payload,
}

/// Largest compressed class-data archive either side reads after a line: a
/// peer announcing more has broken the framing, and the session ends.
pub const MAX_PACKED_ARCHIVE: u64 = 512 << 20;

/// Raw bytes that travel after a message's line, shared between the
/// requests that send the same bytes to many hosts.
#[derive(Clone, Default)]
pub struct Payload(pub std::sync::Arc<Vec<u8>>);

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Request {
    /// The archive whose raw bytes follow this request's line, if any
    /// (`put_artifact`'s bytes are streamed, not held).
    pub fn payload_mut(&mut self) -> Option<&mut ClassDataArchive> {
        match self {
            Request::PutClassData { archive, .. } => Some(archive),
            _ => None,
        }
    }

    /// The raw bytes that follow this request's line.
    pub fn payload(&self) -> Option<&Payload> {
        match self {
            Request::PutClassData { archive, .. } => Some(&archive.packed),
            _ => None,
        }
    }
}

impl Response {
    /// The archive whose raw bytes follow this answer's line, if any.
    pub fn payload_mut(&mut self) -> Option<&mut ClassDataArchive> {
        match self {
            Response::ClassDataDumped {
                archive: Some(archive),
                ..
            } => Some(archive),
            _ => None,
        }
    }

    /// The raw bytes that follow this answer's line.
    pub fn payload(&self) -> Option<&Payload> {
        match self {
            Response::ClassDataDumped {
                archive: Some(archive),
                ..
            } => Some(&archive.packed),
            _ => None,
        }
    }
}

impl ClassDataArchive {
    /// An archive to send: `packed` (zstd) follows the line, which announces
    /// its size.
    pub fn new(
        jdk: String,
        jar_sha256: String,
        sha256: String,
        size: u64,
        packed: Vec<u8>,
    ) -> Self {
        ClassDataArchive {
            jdk,
            jar_sha256,
            sha256,
            size,
            packed_size: packed.len() as u64,
            packed: Payload(std::sync::Arc::new(packed)),
        }
    }

    /// Reads the `packed_size` bytes that follow its line from `input`;
    /// says why the framing is broken when they cannot be read.
    pub fn read_packed(&mut self, input: &mut impl std::io::Read) -> Result<(), String> {
        use std::io::Read as _;
        if self.packed_size > MAX_PACKED_ARCHIVE {
            return Err(format!(
                "a class-data archive of {} bytes was announced, over the limit of {MAX_PACKED_ARCHIVE}",
                self.packed_size
            ));
        }
        // Grown as it arrives: the announced size is not trusted for an allocation.
        let mut bytes = Vec::new();
        input
            .take(self.packed_size)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the class-data archive: {e}"))?;
        if bytes.len() as u64 != self.packed_size {
            return Err(format!(
                "the class-data archive ended after {} of {} bytes",
                bytes.len(),
                self.packed_size
            ));
        }
        self.packed = Payload(std::sync::Arc::new(bytes));
        Ok(())
    }
}

/// What a host can do for a shared class-data archive (in `begin`'s answer
/// when the release asked for has `cds` on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDataHost {
    /// The JDK the release would run: `java` and `libjvm.so`, each's real
    /// path, size and mtime. Hosts with equal strings can share archives.
    pub jdk: String,
    /// The current release kept the class list its run recorded.
    pub class_list: bool,
}

/// Where a host downloads an artifact from, and within which limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FetchSpec {
    /// `http://` or `https://` URL, without credentials.
    pub url: String,
    /// Expected sha256, hex; checked before the artifact enters the store.
    pub sha256: String,
    /// Largest number of bytes accepted.
    pub max_size: u64,
    /// Longest the download may take, retries included.
    pub timeout_ms: u64,
    /// HTTP basic credentials (from the operator's netrc file): secrets,
    /// masked in everything the host says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// PEM certificates of the only authorities trusted for `https://`
    /// (`[artifact] ca`); Mozilla's roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// A login and password for a repository.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The login.
    pub login: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never printed, even in a debug dump of a request.
        f.write_str("Credentials(…)")
    }
}

/// How a host's `fetch_artifact` went. A failed download is an answer, not
/// an error: the session stays usable, so the operator can push instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Fetched {
    /// The artifact is in the store.
    pub ok: bool,
    /// It was there already; nothing was downloaded.
    pub already_stored: bool,
    /// Bytes downloaded (all attempts).
    pub bytes: u64,
    /// Why it failed and what to do, the URL without credentials.
    pub error: Option<String>,
}

/// Request id of `cancel` lines: they answer no request of their own.
pub const CANCEL_ID: u64 = u64::MAX;

wire_enum! {
    /// Why a release is being activated (also the word in revisions.log and output).
    pub enum Action {
        /// A new release.
        Deploy => "deploy",
        /// Back to an earlier release.
        Rollback => "rollback",
        /// The supervisor gave up on a release soon after its deploy and
        /// went back to the previous healthy one (`[restart] auto_revert`).
        AutoRevert => "auto-revert",
        /// The release already current, restarted through the same gate
        /// (`shipjar restart STAGE`); never written to revisions.log.
        Restart => "restart",
    }
}

wire_enum! {
    /// The points of a deploy or rollback where a hook runs.
    pub enum HookPoint {
        /// Once per deploy, on the stage's first host, before any host switches.
        BeforeSwitch => "before_switch",
        /// On each host, just before it switches.
        BeforeStart => "before_start",
        /// On each host, once its new release is healthy and verified.
        AfterSwitch => "after_switch",
        /// On the operator's machine after a deploy that completed.
        AfterDeploy => "after_deploy",
        /// On the operator's machine after a deploy that did not complete.
        AfterFailure => "after_failure",
        /// Once per rollback, on the stage's first host, before any host switches back.
        BeforeRollback => "before_rollback",
        /// On the operator's machine after a rollback that completed.
        AfterRollback => "after_rollback",
    }
}

/// How a hook ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRun {
    /// It exited 0 within its timeout.
    pub ok: bool,
    /// How it ended: `exited with code 0`, `timed out after 5m; killed`, `could not run: …`.
    pub how: String,
    /// Milliseconds it took.
    pub took_ms: u64,
    /// Its last lines of output (stdout and stderr together).
    pub output: Vec<String>,
}

/// How a command of `shipjar exec` ran on one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRun {
    /// Its exit code; `None` when it did not exit by itself (a signal, the timeout, not started).
    pub code: Option<i32>,
    /// How it ended: `exited with code 0`, `timed out after 10m; killed`, `could not run: …`.
    pub how: String,
    /// Milliseconds it took.
    pub took_ms: u64,
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
    /// The stage's secret values: the host masks them in what it answers
    /// and records, and keeps them only in the release's `SECRETS` file.
    #[serde(default)]
    pub secrets: Vec<crate::protocol::mask::SecretValue>,
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
    /// Stop a service running under an init script or unit that is not
    /// shipjar's, through it, before replacing it.
    #[serde(default)]
    pub take_over: bool,
}

/// The outcome for one provisioned resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceResult {
    /// E.g. `user hello`, `directory /var/log/hello`.
    pub resource: String,
    /// What provisioning did to it.
    pub status: ResourceStatus,
    /// What it is, or what changed.
    pub detail: String,
    /// For files: a unified diff of the change.
    pub diff: Option<String>,
}

/// What `shipjar check` asks a host to look at.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCheckSpec {
    /// The program the service runs (`java`, or the command's first word).
    pub program: String,
    /// The service's health check (its port must be free or the service's).
    pub health: crate::protocol::manifest::HealthCheck,
    /// Size of the artifact that a deploy would store.
    pub artifact_bytes: u64,
    /// What `provision` would establish.
    pub provision: ProvisionSpec,
    /// Behind shipjar's proxy: its address and the instance ports are
    /// checked instead of the health check's port.
    #[serde(default)]
    pub proxy: Option<crate::protocol::manifest::ProxySpec>,
}

/// One finding of `check_host`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFinding {
    /// What was checked, e.g. `java`, `disk`, `port 8080`.
    pub what: String,
    /// Whether a deploy can count on it.
    pub status: FindingStatus,
    /// What was found.
    pub detail: String,
}

wire_enum! {
    /// Whether a checked thing is ready for a deploy.
    pub enum FindingStatus {
        /// Ready.
        Ok => "ok",
        /// A deploy would fail or misbehave because of it.
        Problem => "problem",
    }
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
        /// The step failed here (shown as a failure when it happens, before
        /// whatever the host does about it, e.g. a revert).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        failed: bool,
    },
    /// The request may go on this long from now before its next message:
    /// sent before a step whose length the host knows (an activation bounded
    /// by the releases' stop, start and hook timeouts). The operator waits
    /// that long, not its default, before it gives the host up.
    Expect {
        /// Request id.
        id: u64,
        /// The step about to run.
        step: String,
        /// Milliseconds the step may take.
        within_ms: u64,
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
    /// Answer to `fetch_artifact`.
    Fetched(Fetched),
    /// Answer to `put_artifact`.
    Stored {
        /// Bytes written to the store.
        bytes: u64,
    },
    /// Answer to `renew` and to `attach`.
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
    /// Answer to `run_hook`.
    HookRan(HookRun),
    /// Answer to `exec`.
    Executed(ExecRun),
    /// Answer to `watch`.
    Watched(WatchReport),
    /// Answer to `finish`.
    Finished {
        /// Releases removed.
        pruned: Vec<String>,
    },
    /// Answer to a `cancel` that arrived when nothing was in progress.
    NothingToCancel,
    /// Answer to `check_host`.
    HostChecked {
        /// Version of the agent binary.
        agent_version: String,
        /// One finding per thing checked, in order.
        findings: Vec<HostFinding>,
    },
    /// Answer to `status`.
    Status(Box<HostStatus>),
    /// Answer to `set_traffic`.
    TrafficSet {
        /// The mode before.
        before: crate::protocol::status::Traffic,
        /// The mode now.
        now: crate::protocol::status::Traffic,
        /// What the proxy did: `told the proxy (3 held requests released)`,
        /// or that it runs not and takes the mode when it starts.
        proxy: String,
    },
    /// Answer to `releases`.
    Releases {
        /// shipjar's releases, oldest first.
        releases: Vec<ReleaseInfo>,
        /// Directories in `releases/` that shipjar did not make (left alone).
        #[serde(default)]
        foreign: Vec<String>,
    },
    /// The request failed; nothing after it in the session is applied.
    Error(AgentError),
    /// Answer to `detach`: the lock outlives the session.
    Detached {
        /// What `attach` takes the lock back with.
        token: String,
        /// When the detached lease runs out, Unix milliseconds.
        expires_at_ms: u64,
    },
    /// Answer to `dump_class_data`; with an archive, its `packed_size`
    /// compressed bytes follow the line.
    ClassDataDumped {
        /// The archive; `None` when there is none (see `note`).
        archive: Option<Box<ClassDataArchive>>,
        /// What happened, for the output.
        note: String,
    },
    /// Answer to `put_class_data`.
    ClassDataKept {
        /// The archive was kept beside the release.
        kept: bool,
        /// What happened, for the output.
        note: String,
    },
}

/// A request that could not be carried out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentError {
    /// What kind of failure, for the operator to act on.
    pub kind: ErrorKind,
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
    /// With `resume`: the pending canary whose lock was taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Box<crate::protocol::canary::PendingCanary>>,
    /// The release asked for in `begin` has `cds` on: what this host can
    /// do for a shared archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_data: Option<ClassDataHost>,
}

/// How a `watch` went.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchReport {
    /// True when the release stayed up and healthy for the whole window.
    pub ok: bool,
    /// The pid watched.
    pub pid: Option<i32>,
    /// On failure: the step (`watch`) and why.
    pub reason: Option<String>,
    /// On failure: the last lines of the service log.
    pub log_tail: Vec<String>,
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

impl Activation {
    /// An activation of `release` that has done nothing yet (not ok).
    pub fn of(release: &str) -> Activation {
        Activation {
            ok: false,
            release: release.to_string(),
            pid: None,
            healthy_after_ms: None,
            stopped_after_ms: None,
            reported_version: None,
            failed_step: None,
            reason: None,
            log_tail: Vec::new(),
            now_running: None,
        }
    }
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
    /// Last recorded outcome of activating it, if any.
    pub outcome: Option<RevisionOutcome>,
}

/// What runs on a host, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostStatus {
    /// The release `current` points to.
    pub current: Option<ReleaseInfo>,
    /// The supervisor's view of the process.
    pub service: ServiceStatus,
    /// Version from the manifest of the release the process was started from.
    pub running_version: Option<String>,
    /// Version the service reports over its version endpoint.
    pub reported_version: Option<String>,
    /// Why the reported version is missing, if it is.
    pub version_error: Option<String>,
    /// The last line of revisions.log.
    pub last_revision: Option<Revision>,
    /// The proxy and both instances, for a service with `[proxy]`; then
    /// `service` is the instance taking traffic.
    #[serde(default)]
    pub proxy: Option<crate::protocol::status::ProxyStatus>,
    /// A canary waiting for `deploy --continue` or `--abort`, from the deploy lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_canary: Option<crate::protocol::canary::PendingCanary>,
}

/// A run that stopped before a host switched, as that host records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NotSwitched {
    /// The release it was to switch to, once chosen.
    pub release: Option<String>,
    /// Deploy or rollback.
    pub action: Action,
    /// Who ran it.
    pub deployer: String,
    /// Where and why the run stopped.
    pub why: String,
}

/// A revisions.log line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    /// When (RFC 3339).
    pub time: String,
    /// Why the release was activated.
    pub action: Action,
    /// Release id.
    pub release: String,
    /// Version.
    pub version: String,
    /// Who.
    pub deployer: String,
    /// How the activation ended.
    pub outcome: RevisionOutcome,
    /// Free text: the failure, what was reverted.
    pub detail: String,
}

wire_enum! {
    /// What `provision` did to one resource.
    pub enum ResourceStatus {
        /// Already as wanted; nothing done.
        Ok => "ok",
        /// Changed to what is wanted.
        Changed => "changed",
        /// Would change (dry run).
        WouldChange => "would_change",
        /// Could not be brought to what is wanted.
        Failed => "failed",
    }
}

wire_enum! {
    /// How an activation ended, as recorded in revisions.log.
    pub enum RevisionOutcome {
        /// Current, healthy and reporting its version.
        Success => "success",
        /// Failed; the host went back to the previous release.
        Failed => "failed",
    }
}

wire_enum! {
    /// The kind of a failed request, so the operator can act on it without reading the text.
    pub enum ErrorKind {
        /// Anything not listed below.
        Failed => "failed",
        /// Another session holds the deploy lock.
        LockHeld => "lock_held",
        /// The request needs the lock, and this session does not hold it.
        NotLocked => "not_locked",
        /// The request was malformed or for another protocol version.
        BadRequest => "bad_request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::status::ServiceState;

    fn archive_line(packed_size: u64) -> ClassDataArchive {
        let line = format!(
            r#"{{"jdk":"j","jar_sha256":"a","sha256":"b","size":9,"packed_size":{packed_size}}}"#
        );
        serde_json::from_str(&line).expect("an archive's line")
    }

    #[test]
    fn an_archive_s_bytes_follow_its_line_and_stay_out_of_it() {
        let mut archive = archive_line(3);
        let mut input: &[u8] = b"xyz{\"next\"";
        archive.read_packed(&mut input).expect("three bytes");
        assert_eq!(&archive.packed[..], b"xyz");
        // What follows is left for the next line.
        assert_eq!(input, b"{\"next\"");
        let text = serde_json::to_string(&archive).expect("encode");
        assert!(
            !text.contains("xyz") && !text.contains("packed\""),
            "{text}"
        );
        assert_eq!(format!("{:?}", archive.packed), "<3 bytes>");
    }

    #[test]
    fn an_archive_cut_short_or_announced_too_big_breaks_the_framing() {
        let mut short = archive_line(10);
        let err = short.read_packed(&mut &b"abc"[..]).expect_err("cut short");
        assert!(err.contains("ended after 3 of 10 bytes"), "{err}");
        let mut huge = archive_line(MAX_PACKED_ARCHIVE + 1);
        let err = huge
            .read_packed(&mut std::io::repeat(0))
            .expect_err("over the limit");
        assert!(err.contains("over the limit"), "{err}");
    }

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
            outcome: Some(RevisionOutcome::Success),
        };
        round_trip(Response::Releases {
            releases: vec![release.clone()],
            foreign: vec!["20261129234751".into()],
        });
        round_trip(Response::Finished { pruned: vec![] });
        round_trip(Response::HookRan(HookRun {
            ok: false,
            how: "exited with code 3".into(),
            took_ms: 12,
            output: vec!["migrating".into()],
        }));
        round_trip(Response::Stored { bytes: 3 });
        round_trip(Response::Detached {
            token: "42-1".into(),
            expires_at_ms: 7,
        });
        round_trip(Response::Prepared { path: "/x".into() });
        round_trip(Response::Error(AgentError {
            kind: ErrorKind::LockHeld,
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
            resumed: None,
            class_data: None,
        })));
        round_trip(Response::Status(Box::new(HostStatus {
            current: Some(release),
            service: ServiceStatus {
                pid: Some(1),
                supervisor_pid: Some(2),
                healthy: Some(true),
                ..ServiceStatus::bare(ServiceState::Running, 0, String::new())
            },
            running_version: None,
            reported_version: None,
            version_error: None,
            last_revision: None,
            proxy: None,
            pending_canary: None,
        })));
        round_trip(Response::Watched(WatchReport {
            ok: false,
            pid: Some(4),
            reason: Some("crashed".into()),
            log_tail: vec!["boom".into()],
        }));
    }
}
