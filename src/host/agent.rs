//! The agent: the only code that changes a host. It reads [`Envelope`]s from
//! stdin and answers with [`AgentMessage`]s on stdout (see `protocol`).
//!
//! A request that has started always runs to completion, even if the operator
//! goes away (SIGINT, SIGHUP and a closed stdout are ignored), so a host is
//! never left half-switched. After a failed request, later requests that would
//! change the host are refused, so a pipelined session stops at the failure.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::host::lock;
use crate::host::{activate, cancel, hooks, logs, provision, secrets, store, supervisor, watch};
use crate::protocol::layout::Layout;
use crate::protocol::validate_service_name;
use crate::protocol::{
    Action, AgentError, AgentMessage, Envelope, ErrorKind, HostState, HostStatus, PROTOCOL_VERSION,
    Request, Response,
};

/// Runs the agent until stdin closes; returns the exit code.
pub fn run(root: &Path) -> i32 {
    ignore_hangup_and_interrupt();
    let stdin = io::stdin();
    let mut input = BufReader::with_capacity(256 * 1024, stdin.lock());
    let mut session = Session {
        root: root.to_path_buf(),
        lock: None,
        failed: false,
    };
    // Distinguishes this session's lease from any other deploy's.
    let token = format!("{}-{}", std::process::id(), lock::now_ms());
    let mut line = String::new();
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => {
                // The operator is gone (it ended without `finish`, or was
                // killed): nothing more will come, so the lock goes now,
                // not when its lease runs out. A cut link gives no end of
                // input; there the lease is what frees the stage. A lock
                // detached (`detach`) is no longer the session's: it stays
                // for its lease, until a later session attaches.
                if let Some(held) = session.lock.take() {
                    let _ = lock::release(&held.layout, &held.token);
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("shipjar agent: reading stdin: {e}");
                return 1;
            }
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut envelope: Envelope = match serde_json::from_str(&line) {
            Ok(envelope) => envelope,
            Err(e) => {
                let message = protocol_error_message(&line, &e);
                send(&AgentMessage::Result {
                    id: 0,
                    response: Box::new(error("protocol", message)),
                });
                return 2;
            }
        };
        if let Some(archive) = envelope.request.payload_mut()
            && let Err(message) = archive.read_packed(&mut input)
        {
            // Its bytes could not be read: what follows cannot be framed.
            send(&AgentMessage::Result {
                id: envelope.id,
                response: Box::new(error("protocol", message)),
            });
            return 2;
        }
        let id = envelope.id;
        let response = session.handle(envelope, &mut input, &token);
        if matches!(response, Response::Error(_)) {
            session.failed = true;
        }
        send(&AgentMessage::Result {
            id,
            response: Box::new(response),
        });
    }
    0
}

/// Explains an unreadable request, recognising a protocol version mismatch.
fn protocol_error_message(line: &str, e: &serde_json::Error) -> String {
    let version = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("protocol").and_then(|p| p.as_u64()));
    match version {
        Some(v) if v != u64::from(PROTOCOL_VERSION) => format!(
            "protocol mismatch: the operator speaks version {v}, this agent ({}) speaks {PROTOCOL_VERSION}; install the same shipjar version on both sides",
            env!("CARGO_PKG_VERSION")
        ),
        _ => format!("unreadable request: {e}"),
    }
}

fn ignore_hangup_and_interrupt() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: installing SIG_IGN has no handler code to be unsafe.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// One message as a JSON line, every string in it masked but its tags.
fn encode(message: &AgentMessage) -> serde_json::Result<String> {
    match secrets::active() {
        Some(masker) if !masker.is_empty() => {
            let value = serde_json::to_value(message)?;
            serde_json::to_string(&masker.mask_json_values(value, &["kind", "type"]))
        }
        _ => serde_json::to_string(message),
    }
}

/// Writes one message; false when the operator is gone.
fn send_checked(message: &AgentMessage) -> bool {
    let Ok(text) = encode(message) else {
        return true;
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
}

/// Writes one message, and the raw bytes an answer carries after its line;
/// a vanished operator must not stop the work in progress.
fn send(message: &AgentMessage) {
    let (text, payload) = match encode(message) {
        Ok(text) => {
            let payload = match message {
                AgentMessage::Result { response, .. } => response.payload(),
                _ => None,
            };
            (text, payload)
        }
        Err(e) => {
            // Never leave the operator waiting for an answer that cannot be encoded.
            let id = match message {
                AgentMessage::Event { id, .. }
                | AgentMessage::Expect { id, .. }
                | AgentMessage::Result { id, .. } => *id,
            };
            let fallback = AgentMessage::Result {
                id,
                response: Box::new(error("protocol", format!("cannot encode the answer: {e}"))),
            };
            (serde_json::to_string(&fallback).unwrap_or_default(), None)
        }
    };
    // One lock for the line and its bytes: no event may land between them.
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{text}");
    if let Some(payload) = payload {
        let _ = out.write_all(payload);
    }
    let _ = out.flush();
}

fn error(step: &str, message: impl Into<String>) -> Response {
    error_of_kind(ErrorKind::Failed, step, message)
}

fn error_of_kind(kind: ErrorKind, step: &str, message: impl Into<String>) -> Response {
    Response::Error(AgentError {
        kind,
        step: step.to_string(),
        message: message.into(),
    })
}

/// `unlock`: the deploy lock removed whoever holds it, saying whose it was.
fn unlock_request(layout: &Layout) -> Response {
    let _ = store::ensure_dirs(layout);
    match lock::force_unlock(layout) {
        Ok(previous) => Response::Unlocked { previous },
        Err(e) => error("unlock", e),
    }
}

/// `run_hook`: a once-per-run hook on this host, announced with its deadline.
fn hook_request(
    layout: &Layout,
    id: u64,
    release: &str,
    point: &crate::protocol::HookPoint,
    hook: &crate::protocol::manifest::HookSpec,
) -> Response {
    send(&AgentMessage::Expect {
        id,
        step: point.to_string(),
        within_ms: hook.timeout_ms + HOOK_MARGIN_MS,
    });
    let emit = |step: &str, message: &str| event(id, step, message, false);
    Response::HookRan(hooks::run(layout, release, point, hook, &emit))
}

/// The session's hold on the deploy lock.
struct HeldLock {
    layout: Layout,
    token: String,
    lease_ms: u64,
}

struct Session {
    root: std::path::PathBuf,
    lock: Option<HeldLock>,
    failed: bool,
}

/// Renews the lease in the background while one request runs (an activation
/// may take minutes); stops when dropped.
struct Renewer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    /// Ends with why the lease was lost, if it was.
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Renewer {
    fn start(held: &HeldLock) -> Renewer {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (layout, token, lease_ms) = (held.layout.clone(), held.token.clone(), held.lease_ms);
        let every = std::time::Duration::from_millis((lease_ms / 3).max(50));
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                // Once another deploy holds the lock, renewing again would only fail again.
                if let Err(lost) = lock::renew(&layout, &token, lease_ms) {
                    return Some(lost);
                }
            }
            None
        });
        Renewer {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops renewing; says why the lease was lost while the request ran, if it was.
    fn finish(mut self) -> Option<String> {
        drop(self.stop.take());
        self.thread.take().and_then(|t| t.join().ok().flatten())
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Session {
    fn handle<R: BufRead>(&mut self, envelope: Envelope, input: &mut R, token: &str) -> Response {
        let id = envelope.id;
        let refusal = self.refusal(&envelope);
        if let Some(refusal) = refusal {
            if let Request::PutArtifact { size, .. } = envelope.request {
                // Keep the framing: the upload's bytes follow regardless.
                let _ = io::copy(&mut Read::take(&mut *input, size), &mut io::sink());
            }
            return refusal;
        }
        let layout = Layout::new(&self.root, &envelope.service);
        // Answers may carry the service's words (a health body, a log line, a hook's output).
        secrets::mask_with(&layout);
        if let Some(held) = &self.lock {
            // Every request proves the deploy is alive; long ones renew as they go.
            if let Err(e) = lock::renew(&held.layout, &held.token, held.lease_ms) {
                if let Request::PutArtifact { size, .. } = envelope.request {
                    let _ = io::copy(&mut Read::take(&mut *input, size), &mut io::sink());
                }
                self.lock = None;
                return error_of_kind(ErrorKind::NotLocked, "lock", e);
            }
        }
        // A detach sets the lease itself: no renewal may race it.
        let renewer = self
            .lock
            .as_ref()
            .filter(|_| !matches!(envelope.request, Request::Detach { .. }))
            .map(Renewer::start);
        let response = self.apply(envelope.request, &layout, id, input, token);
        match renewer.and_then(Renewer::finish) {
            // The lock was lost mid-request (another deploy took it over, or
            // `unlock`): say so instead of reporting success under someone else's lock.
            Some(lost) if self.lock.is_some() => {
                self.lock = None;
                error_of_kind(
                    ErrorKind::NotLocked,
                    "lock",
                    format!(
                        "{lost} while this request ran; what it changed stays in place: check `shipjar status`"
                    ),
                )
            }
            _ => response,
        }
    }

    /// `renew`: the session's lease on the deploy lock, extended.
    fn renew(&self) -> Response {
        match &self.lock {
            Some(held) => match lock::renew(&held.layout, &held.token, held.lease_ms) {
                Ok(expires_at_ms) => Response::Renewed { expires_at_ms },
                Err(e) => error("lock", e),
            },
            None => error("lock", "the deploy lock is not held"),
        }
    }

    /// Carries out one request that was not refused.
    fn apply<R: BufRead>(
        &mut self,
        request: Request,
        layout: &Layout,
        id: u64,
        input: &mut R,
        token: &str,
    ) -> Response {
        let emit = |step: &str, message: &str| event(id, step, message, false);
        match request {
            Request::Begin {
                holder,
                artifact_sha256,
                lease_ms,
                prepare,
                resume,
            } => self.begin_and_prepare(
                layout,
                &holder,
                artifact_sha256.as_deref(),
                token,
                (lease_ms, resume.as_deref()),
                prepare,
            ),
            Request::Renew => self.renew(),
            Request::Logs {
                lines,
                follow,
                since,
                grep,
            } => stream_logs(layout, id, lines, follow, since, grep),
            Request::Provision { spec } => Response::Provisioned {
                resources: provision::provision(layout, &spec),
            },
            Request::Unlock => unlock_request(layout),
            Request::PutArtifact { sha256, size } => {
                emit("upload", &format!("receiving {size} bytes"));
                match store::put_artifact(layout, &sha256, size, input) {
                    Ok(bytes) => Response::Stored { bytes },
                    Err(e) => error("upload", e),
                }
            }
            Request::FetchArtifact(spec) => fetch_request(layout, id, &spec),
            Request::Prepare(spec) => prepare_release(layout, &spec),
            Request::Activate {
                release,
                action,
                deployer,
                partial,
            } => activate_request(layout, id, &release, action, &deployer, partial.as_deref()),
            Request::RunHook {
                release,
                point,
                hook,
            } => hook_request(layout, id, &release, &point, &hook),
            Request::Exec { argv, timeout_ms } => exec_request(layout, id, &argv, timeout_ms),
            Request::Finish {
                keep,
                not_switched,
                pending,
            } => match pending {
                Some(pending) => self.keep_pending(*pending),
                None => self.finish(layout, keep, not_switched, &emit),
            },
            Request::Watch { release, window_ms } => watch_request(layout, id, &release, window_ms),
            // The activation it was meant for has ended already.
            Request::Cancel => Response::NothingToCancel,
            Request::CheckHost { spec } => Response::HostChecked {
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                findings: crate::host::check::check(layout, &spec),
            },
            Request::Status => Response::Status(Box::new(status(layout))),
            Request::SetTraffic { traffic, page } => set_traffic(layout, traffic, page),
            Request::Releases => Response::Releases {
                releases: store::list(layout),
                foreign: store::foreign_release_dirs(layout),
            },
            Request::DumpClassData {
                release,
                deadline_ms,
            } => {
                send(&AgentMessage::Expect {
                    id,
                    step: "class-data".into(),
                    within_ms: deadline_ms.saturating_add(30_000),
                });
                supervisor::cds_share::dump_request(layout, &release, deadline_ms)
            }
            Request::PutClassData { release, archive } => {
                supervisor::cds_share::put_request(layout, &release, &archive)
            }
            Request::Detach { lease_ms } => self.detach(lease_ms),
            Request::Attach { token, lease_ms } => self.attach(layout, &token, lease_ms),
        }
    }

    /// `detach`: the lease set to `lease_ms`, and the lock no longer this
    /// session's, so the end of its input does not release it.
    fn detach(&mut self, lease_ms: u64) -> Response {
        let Some(held) = self.lock.take() else {
            return error_of_kind(ErrorKind::NotLocked, "lock", "the deploy lock is not held");
        };
        match lock::renew(&held.layout, &held.token, lease_ms) {
            Ok(expires_at_ms) => Response::Detached {
                token: held.token,
                expires_at_ms,
            },
            Err(e) => error_of_kind(ErrorKind::NotLocked, "lock", e),
        }
    }

    /// `attach`: a detached lock taken back by its token, if it still holds it.
    fn attach(&mut self, layout: &Layout, token: &str, lease_ms: u64) -> Response {
        if self.lock.is_some() {
            return error("lock", "the deploy lock is already held by this session");
        }
        match lock::renew(layout, token, lease_ms) {
            Ok(expires_at_ms) => {
                self.lock = Some(HeldLock {
                    layout: layout.clone(),
                    token: token.to_string(),
                    lease_ms,
                });
                Response::Renewed { expires_at_ms }
            }
            Err(e) => error_of_kind(ErrorKind::NotLocked, "lock", e),
        }
    }

    /// Why this request is refused before anything runs, if it is: another
    /// protocol, a bad name, an earlier failure, or a change without the lock.
    fn refusal(&self, envelope: &Envelope) -> Option<Response> {
        let mutating = !matches!(
            envelope.request,
            Request::Status
                | Request::Releases
                | Request::Cancel
                | Request::CheckHost { .. }
                | Request::Unlock
                | Request::Provision { .. }
                | Request::Logs { .. }
                | Request::Exec { .. }
                | Request::Watch { .. }
                | Request::SetTraffic { .. }
        );
        if envelope.protocol != PROTOCOL_VERSION {
            Some(error_of_kind(
                ErrorKind::BadRequest,
                "protocol",
                format!(
                    "protocol mismatch: the operator speaks version {}, this agent ({}) speaks {PROTOCOL_VERSION}",
                    envelope.protocol,
                    env!("CARGO_PKG_VERSION")
                ),
            ))
        } else if let Err(e) = validate_service_name(&envelope.service) {
            Some(error("request", e))
        } else if mutating
            && self.failed
            && !matches!(
                envelope.request,
                Request::Finish { .. } | Request::Detach { .. }
            )
        {
            Some(error(
                "request",
                "skipped: an earlier request of this session failed",
            ))
        } else if mutating
            && self.lock.is_none()
            && !matches!(
                envelope.request,
                Request::Begin { .. } | Request::Attach { .. }
            )
        {
            Some(error_of_kind(
                ErrorKind::NotLocked,
                "lock",
                "the deploy lock is not held: send `begin` first",
            ))
        } else {
            None
        }
    }

    /// `begin`, and with `prepare` the release prepared in the same round
    /// trip when its artifact is here already.
    fn begin_and_prepare(
        &mut self,
        layout: &Layout,
        holder: &crate::protocol::LockHolder,
        sha: Option<&str>,
        token: &str,
        (lease_ms, resume): (u64, Option<&str>),
        prepare: Option<Box<crate::protocol::PrepareSpec>>,
    ) -> Response {
        let mut begun = self.begin(layout, holder, sha, token, (lease_ms, resume));
        if let (Response::Begun(state), Some(spec)) = (&mut begun, &prepare) {
            state.class_data = supervisor::cds_share::host(layout, &spec.manifest);
        }
        if let (Response::Begun(state), Some(spec)) = (&mut begun, prepare)
            && store::has_artifact(layout, &spec.manifest.artifact_sha256)
        {
            match prepare_release(layout, &spec) {
                Response::Prepared { .. } => state.prepared = true,
                failure => begun = failure,
            }
        }
        begun
    }

    /// `finish`: the record of a run that never switched (by the lock's
    /// holder only), the prune (not after a failure), the lock released.
    fn finish(
        &mut self,
        layout: &Layout,
        keep: Option<usize>,
        not_switched: Option<crate::protocol::NotSwitched>,
        emit: &dyn Fn(&str, &str),
    ) -> Response {
        // Only the lock's holder writes this host's history.
        if let Some(stopped) = not_switched.filter(|_| self.lock.is_some()) {
            activate::record_not_switched(layout, &stopped, emit);
        }
        // After a failure the lock is still released, but nothing is pruned.
        let keep = keep.filter(|_| !self.failed);
        let result = keep.map_or(Ok(Vec::new()), |keep| store::prune(layout, keep));
        let released = match self.lock.take() {
            Some(held) => lock::release(&held.layout, &held.token),
            None => Ok(()),
        };
        match (result, released) {
            (Ok(pruned), Ok(())) => Response::Finished { pruned },
            (Err(e), _) => error("prune", e),
            (Ok(_), Err(e)) => error("unlock", format!("cannot release the deploy lock: {e}")),
        }
    }

    /// `finish` of a canary waiting for its operator: the lock is kept, with
    /// the canary's record, past this session (nothing pruned, nothing recorded).
    fn keep_pending(&mut self, pending: crate::protocol::canary::PendingCanary) -> Response {
        let Some(held) = self.lock.take() else {
            return error_of_kind(
                ErrorKind::NotLocked,
                "lock",
                "the deploy lock is not held: the canary cannot be kept pending",
            );
        };
        match lock::hold_pending(&held.layout, &held.token, pending) {
            Ok(()) => Response::Finished { pruned: Vec::new() },
            Err(e) => error("lock", e),
        }
    }

    fn begin(
        &mut self,
        layout: &Layout,
        holder: &crate::protocol::LockHolder,
        sha: Option<&str>,
        token: &str,
        (lease_ms, resume): (u64, Option<&str>),
    ) -> Response {
        if self.lock.is_some() {
            return error("lock", "the deploy lock is already held by this session");
        }
        if let Err(e) = store::ensure_dirs(layout) {
            return error(
                "lock",
                format!("cannot create {}: {e}", layout.lib_dir().display()),
            );
        }
        let (took_over, resumed) = match lock::acquire(layout, holder, token, lease_ms, resume) {
            Ok(lock::Acquired::Free) => (None, None),
            Ok(lock::Acquired::TookOver(previous)) => (Some(previous.describe()), None),
            Ok(lock::Acquired::Resumed(pending)) => (None, Some(pending)),
            Err(lock::AcquireError::Held(holder)) => {
                return error_of_kind(
                    ErrorKind::LockHeld,
                    "lock",
                    format!("the deploy lock is held by {holder}"),
                );
            }
            Err(e @ lock::AcquireError::NotPending(_)) => {
                return error_of_kind(ErrorKind::NotLocked, "lock", e.to_string());
            }
            Err(e) => return error("lock", e.to_string()),
        };
        self.lock = Some(HeldLock {
            layout: layout.clone(),
            token: token.to_string(),
            lease_ms,
        });
        let cleaned_up = match store::clean_up_partial(layout) {
            Ok(removed) => removed,
            Err(e) => return error("lock", format!("cannot clean up a previous run: {e}")),
        };
        Response::Begun(Box::new(HostState {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            current: store::current(layout),
            has_artifact: sha.is_some_and(|sha| store::has_verified_artifact(layout, sha)),
            releases: store::list(layout),
            cleaned_up,
            took_over,
            prepared: false,
            resumed,
            class_data: None,
        }))
    }
}

/// `fetch_artifact`: its deadline announced, the credentials masked in
/// everything sent while it runs.
fn fetch_request(layout: &Layout, id: u64, spec: &crate::protocol::FetchSpec) -> Response {
    if let Some(c) = &spec.credentials {
        let mut values = secrets::release_secrets(layout);
        for value in [&c.login, &c.password] {
            values.push(crate::protocol::mask::SecretValue {
                value: value.clone(),
                allow_short: true,
            });
        }
        secrets::use_masker(crate::protocol::mask::Masker::new(&values));
    }
    send(&AgentMessage::Expect {
        id,
        step: "download".to_string(),
        within_ms: spec.timeout_ms + HOOK_MARGIN_MS,
    });
    let emit = |step: &str, message: &str| event(id, step, message, false);
    Response::Fetched(crate::host::fetch::fetch(layout, spec, &emit))
}

/// Sends one event of request `id`.
fn event(id: u64, step: &str, message: &str, failed: bool) {
    send(&AgentMessage::Event {
        id,
        step: step.to_string(),
        message: message.to_string(),
        failed,
    })
}

/// `activate` (a deploy's, a rollback's, or a restart of what runs), its
/// deadline announced, a second Ctrl-C at the operator watched for.
fn activate_request(
    layout: &Layout,
    id: u64,
    release: &str,
    action: Action,
    deployer: &str,
    partial: Option<&str>,
) -> Response {
    // A second Ctrl-C at the operator sends `cancel` while this runs.
    let _watch = cancel::Watch::start(io::stdin().as_raw_fd());
    expect_activation(layout, release, id);
    let emit = |step: &str, message: &str| event(id, step, message, false);
    let failed = |step: &str, message: &str| event(id, step, message, true);
    let activation = if action == Action::Restart {
        activate::restart(layout, release, &emit, &failed)
    } else {
        activate::activate(layout, release, action, deployer, partial, &emit, &failed)
    };
    Response::Activated(Box::new(activation))
}

/// `watch`: the canary's release kept under watch for `window_ms`, its
/// deadline announced; a `cancel` line (Ctrl-C at the operator) ends it.
fn watch_request(layout: &Layout, id: u64, release: &str, window_ms: u64) -> Response {
    send(&AgentMessage::Expect {
        id,
        step: "watch".to_string(),
        within_ms: window_ms + HOOK_MARGIN_MS,
    });
    let _watch = cancel::Watch::start(io::stdin().as_raw_fd());
    let emit = |step: &str, message: &str| event(id, step, message, false);
    Response::Watched(watch::watch(
        layout,
        release,
        std::time::Duration::from_millis(window_ms),
        &emit,
    ))
}

/// `exec`: the command in the release, its output as `out` events; the
/// operator gone (Ctrl-C, a cut link) or a `cancel` line ends it.
fn exec_request(layout: &Layout, id: u64, argv: &[String], timeout_ms: u64) -> Response {
    send(&AgentMessage::Expect {
        id,
        step: "exec".to_string(),
        within_ms: timeout_ms + HOOK_MARGIN_MS,
    });
    let _watch = cancel::Watch::start_until_eof(io::stdin().as_raw_fd());
    let mut out = |line: &str| event(id, "out", line, false);
    Response::Executed(hooks::exec(
        layout,
        argv,
        timeout_ms,
        &mut out,
        &cancel::requested,
    ))
}

/// `logs`: the log's lines as `log` events (behind the proxy, the active
/// instance's); following until the operator goes away.
fn stream_logs(
    layout: &Layout,
    id: u64,
    lines: Option<usize>,
    follow: bool,
    since: Option<String>,
    grep: Option<String>,
) -> Response {
    let emit_line = |line: &str| {
        let event = AgentMessage::Event {
            id,
            step: "log".to_string(),
            message: line.to_string(),
            failed: false,
        };
        // Empty lines are keep-alives: they tell us whether the operator is still there.
        send_checked(&event)
    };
    // Behind the proxy: the log of the instance taking traffic now.
    let log_layout = match crate::host::proxied::spec(layout) {
        Some(_) => layout.with_instance(crate::host::proxy::active(layout)),
        None => layout.clone(),
    };
    match logs::Filter::new(since.as_deref(), grep.as_deref())
        .and_then(|filter| logs::stream(&log_layout, lines, &filter, follow, &emit_line))
    {
        Ok(()) => Response::LogsDone,
        Err(e) => error("logs", e),
    }
}

fn prepare_release(layout: &Layout, spec: &crate::protocol::PrepareSpec) -> Response {
    let gid = secret_group(spec.manifest.run.user.as_deref());
    match gid
        .and_then(|gid| store::prepare(layout, &spec.manifest, &spec.files, &spec.secrets, gid))
    {
        Ok(path) => Response::Prepared {
            path: path.display().to_string(),
        },
        Err(e) => error("prepare", e),
    }
}

/// Room beyond a hook's own timeout: killing its process group, reading its output.
const HOOK_MARGIN_MS: u64 = 10_000;

/// Tells the operator how long the activation of `release` may take at most,
/// from the timeouts of the releases involved, so it waits that long (and no
/// longer) before it gives this host up.
fn expect_activation(layout: &Layout, release: &str, id: u64) {
    let Ok(target) = store::read_manifest(layout, release) else {
        return;
    };
    let current = store::current(layout).and_then(|c| store::read_manifest(layout, &c).ok());
    send(&AgentMessage::Expect {
        id,
        step: "activate".to_string(),
        within_ms: crate::protocol::manifest::activation_bound_ms(current.as_ref(), &target)
            + crate::host::lockfile::SWITCH_WAIT.as_millis() as u64,
    });
}

/// Group that may read secret files: the service user's, when running as root.
fn secret_group(user: Option<&str>) -> Result<Option<u32>, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let Some(user) = user else {
        return Ok(None);
    };
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(Some(u.gid.as_raw())),
        Ok(None) => Err(format!(
            "service user `{user}` does not exist on this host; run `shipjar provision` first"
        )),
        Err(e) => Err(format!("cannot look up user `{user}`: {e}")),
    }
}

/// `set_traffic`: the proxy's mode recorded (since now) and told to it.
/// Takes no deploy lock: a pause is meant to span a deploy.
fn set_traffic(
    layout: &Layout,
    mut traffic: crate::protocol::status::Traffic,
    page: Option<String>,
) -> Response {
    if crate::host::proxied::spec(layout).is_none() {
        return error(
            "traffic",
            "the service here runs without shipjar's proxy (its current release has no \
             `[proxy]`): pause, resume and maintenance need `[proxy]` in shipjar.toml, deployed",
        );
    }
    traffic.since = (traffic.mode != crate::protocol::status::TrafficMode::Serving)
        .then(crate::protocol::clock::now_rfc3339);
    match crate::host::proxy::set_traffic(layout, traffic.clone(), page) {
        Ok((before, proxy)) => Response::TrafficSet {
            before,
            now: traffic,
            proxy,
        },
        Err(e) => error("traffic", e),
    }
}

/// What runs on this host: `current`, the supervised process, the reported version.
fn status(layout: &Layout) -> HostStatus {
    // Behind the proxy, the service is the instance taking traffic.
    let proxy =
        crate::host::proxied::spec(layout).map(|spec| crate::host::proxied::status(layout, &spec));
    // The instance the proxy last sent traffic to, even while the proxy is down.
    let active = proxy
        .as_ref()
        .and_then(|p| p.instances.iter().find(|i| Some(i.port) == p.active));
    let instance = active.map(|i| i.port);
    let service = match active {
        Some(i) => i.service.clone(),
        None => supervisor::status(layout),
    };
    let current = store::list(layout).into_iter().find(|r| r.current);
    let running_manifest = service
        .release
        .as_deref()
        .and_then(|id| store::read_manifest(layout, id).ok());
    let (reported_version, version_error) = match (&running_manifest, service.pid) {
        (Some(manifest), Some(_)) => {
            match crate::host::steps::reported_version_at(manifest, instance) {
                Ok(v) => (v, None),
                Err(e) => (None, Some(e)),
            }
        }
        _ => (None, None),
    };
    HostStatus {
        current,
        running_version: running_manifest.map(|m| m.version),
        reported_version,
        version_error,
        last_revision: crate::host::revisions::read(layout)
            .ok()
            .and_then(|mut history| history.pop()),
        service,
        proxy,
        pending_canary: lock::pending(layout),
    }
}
