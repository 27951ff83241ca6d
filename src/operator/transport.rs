//! Transport: a session with the agent on one host. For `local` the agent is a
//! child process; over SSH it is the same binary at the other end of an
//! OpenSSH channel. Either way only protocol messages cross.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::operator::config::HostSpec;
use crate::operator::fleet::StartupPermit;
use crate::operator::render;
use crate::operator::ssh::{self, Reach};
use crate::protocol::{AgentMessage, CANCEL_ID, Envelope, PROTOCOL_VERSION, Request, Response};

/// An open session with one host's agent.
pub struct AgentSession {
    host: String,
    service: String,
    child: Child,
    /// Shared with [`Canceller`]s, which write a `cancel` line while a request runs.
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    /// The last lines the agent (or ssh) wrote to stderr, for error messages.
    stderr_tail: Arc<Mutex<Vec<String>>>,
    /// Bytes of artifacts sent in this session.
    pub uploaded_bytes: u64,
    /// Times the operator waited for the agent in this session.
    pub round_trips: u32,
    /// Requests sent without waiting (lease renewals), whose answers are skipped.
    unawaited: std::collections::BTreeSet<u64>,
    /// Errors answered to unawaited requests, reported with the next failure.
    background_errors: Vec<String>,
    /// Held while the ssh connection is being set up; freed at the first answer.
    startup: Option<StartupPermit>,
    /// When the host is given up if it stays silent (see [`Deadline`]).
    deadline: Arc<Deadline>,
    /// How long the host may stay silent on a request.
    answer_timeout: Duration,
    /// Over ssh (the hint for a silent host names ssh's masters).
    remote: bool,
    /// A place among the sessions a run may hold at once: freed when the
    /// session is dropped, after its child was reaped (see [`Self::occupy`]).
    slot: Option<Box<dyn Send>>,
}

impl AgentSession {
    /// Starts the agent for `host`: a child process for `local`, else over ssh.
    pub fn open(
        host: &str,
        spec: &HostSpec,
        reach: &Reach,
        service: &str,
        startup: Option<StartupPermit>,
    ) -> Result<AgentSession> {
        let root = reach.root.to_string_lossy();
        let mut command = match spec {
            HostSpec::Local => {
                let exe = std::env::current_exe()
                    .map_err(|e| Error::failed(format!("cannot find the shipjar binary: {e}")))?;
                let mut command = Command::new(exe);
                command.arg("agent").arg("--root").arg(&reach.root);
                command
            }
            HostSpec::Ssh { .. } => {
                let remote =
                    ssh::remote_command(reach, &[&reach.agent_path, "agent", "--root", &root]);
                let mut command = Command::new("ssh");
                command.args(ssh::ssh_args_with(
                    spec,
                    reach,
                    &remote,
                    ssh::session_multiplex(reach),
                ));
                command
            }
        };
        // Own process group: a Ctrl-C at the terminal must not kill the agent
        // (or the ssh carrying it) mid-switch; the operator winds down itself.
        render::without_secret_variables(&mut command)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| Error::failed(format!("[{host}] cannot start the agent: {e}")))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::failed(format!("[{host}] agent has no stdio")));
        };
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::clone(&stderr_tail);
        std::thread::spawn(move || collect_stderr(stderr, &tail));
        // Writes wait in `write_within`, never in write(2): over a multiplexed
        // ssh connection the master holds our pipes, so killing our `ssh`
        // does not make a blocked write (or read) return.
        set_nonblocking(&stdin).map_err(|e| Error::failed(format!("[{host}] agent stdin: {e}")))?;
        let deadline = Deadline::watch(child.id(), host, *spec != HostSpec::Local);
        // Connecting counts: a host that never answers is given up too.
        deadline.arm(reach.answer_timeout);
        Ok(AgentSession {
            host: host.to_string(),
            service: service.to_string(),
            child,
            stdin: Arc::new(Mutex::new(Some(stdin))),
            stdout: BufReader::new(stdout),
            next_id: 1,
            stderr_tail,
            uploaded_bytes: 0,
            round_trips: 0,
            unawaited: Default::default(),
            background_errors: Vec::new(),
            startup,
            deadline,
            answer_timeout: reach.answer_timeout,
            remote: *spec != HostSpec::Local,
            slot: None,
        })
    }

    /// Keeps `slot` until this session ends: `Drop` reaps the child before
    /// the fields go, so the place frees only once its `ssh` is gone.
    pub fn occupy(&mut self, slot: Box<dyn Send>) {
        self.slot = Some(slot);
    }

    /// Sends a request without waiting for its answer (a lease renewal).
    pub fn notify(&mut self, request: Request) -> Result<()> {
        let id = self.send(request)?;
        self.unawaited.insert(id);
        self.flush()
    }

    /// Sends one request and waits for its result, passing events to `on_event`.
    pub fn call(
        &mut self,
        request: Request,
        on_event: &mut dyn FnMut(&str, &str),
    ) -> Result<Response> {
        self.call_with_failures(request, &mut |step, message, _| on_event(step, message))
    }

    /// Like [`Session::call`], telling `on_event` which events report a failed step.
    pub fn call_with_failures(
        &mut self,
        request: Request,
        on_event: &mut dyn FnMut(&str, &str, bool),
    ) -> Result<Response> {
        self.deadline.arm(self.answer_timeout);
        let id = self.send(request)?;
        self.flush()?;
        self.round_trips += 1;
        self.receive(id, on_event)
    }

    /// Streams an artifact to the host's store and, in the same round trip,
    /// prepares the release; returns the first failure or `Prepared`.
    pub fn put_and_prepare(
        &mut self,
        sha256: &str,
        path: &Path,
        prepare: Request,
        on_event: &mut dyn FnMut(&str, &str),
    ) -> Result<Response> {
        let mut file = File::open(path)
            .map_err(|e| Error::failed(format!("cannot open {}: {e}", path.display())))?;
        let size = file
            .metadata()
            .map_err(|e| Error::failed(format!("cannot stat {}: {e}", path.display())))?
            .len();
        self.deadline.arm(self.answer_timeout);
        let put = self.send(Request::PutArtifact {
            sha256: sha256.to_string(),
            size,
        })?;
        let host = self.host.clone();
        let mut guard = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let stdin = guard
            .as_mut()
            .ok_or_else(|| Error::failed(format!("[{host}] lost the agent: closed")))?;
        let sent = copy_within(&mut file, stdin, &self.deadline, self.answer_timeout);
        drop(guard);
        let copied = match sent {
            Ok(copied) => copied,
            Err(e) => {
                return Err(
                    self.silent_or(Error::failed(format!("[{host}] sending the artifact: {e}")))
                );
            }
        };
        if copied != size {
            return Err(Error::failed(format!(
                "{} changed while uploading ({copied} of {size} bytes)",
                path.display()
            )));
        }
        self.uploaded_bytes += copied;
        let prepared = self.send(prepare)?;
        self.flush()?;
        self.round_trips += 1;
        let mut on_event = |step: &str, message: &str, _| on_event(step, message);
        let stored = self.receive(put, &mut on_event)?;
        let prepared = self.receive(prepared, &mut on_event)?;
        Ok(match stored {
            Response::Error(e) => Response::Error(e),
            _ => prepared,
        })
    }

    /// A handle that can ask the agent to cancel the request in progress,
    /// from another thread while this session waits for the answer.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            stdin: Arc::clone(&self.stdin),
            service: self.service.clone(),
        }
    }

    /// Closes stdin and waits for the agent to exit (it releases the lock).
    pub fn close(mut self) -> Result<()> {
        self.deadline.arm(self.answer_timeout);
        self.close_stdin();
        let status = self
            .wait_child()
            .map_err(|e| Error::failed(format!("[{}] waiting for the agent: {e}", self.host)))?;
        if status.success() {
            Ok(())
        } else if self.deadline.fired() {
            Err(self.silent())
        } else {
            Err(Error::failed(format!(
                "[{}] the agent exited with {status}",
                self.host
            )))
        }
    }

    /// Waits for the child to exit, disarms the deadline, then reaps it: the
    /// watchdog may signal the child's process group only while its pid
    /// cannot belong to anyone else (a zombie still holds it).
    fn wait_child(&mut self) -> io::Result<std::process::ExitStatus> {
        use nix::sys::wait::{Id, WaitPidFlag, waitid};
        let pid = nix::unistd::Pid::from_raw(self.deadline.pgid);
        // Retried on EINTR; ECHILD (reaped already) ends it too, and `wait`
        // below returns the status.
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        self.deadline.disarm();
        self.child.wait()
    }

    fn send(&mut self, request: Request) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let envelope = Envelope {
            protocol: PROTOCOL_VERSION,
            id,
            service: self.service.clone(),
            request,
        };
        let line = serde_json::to_string(&envelope).map_err(|e| Error::failed(e.to_string()))?;
        let host = self.host.clone();
        let mut guard = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let stdin = guard
            .as_mut()
            .ok_or_else(|| Error::failed(format!("[{host}] lost the agent: closed")))?;
        let sent =
            write_within(stdin, format!("{line}\n").as_bytes(), &self.deadline).and_then(|()| {
                match envelope.request.payload() {
                    Some(payload) => copy_within(
                        &mut &payload[..],
                        stdin,
                        &self.deadline,
                        self.answer_timeout,
                    )
                    .map(|_| ()),
                    None => Ok(()),
                }
            });
        if let Err(e) = sent {
            drop(guard);
            return Err(self.silent_or(Error::failed(format!("[{host}] sending a request: {e}"))));
        }
        Ok(id)
    }

    fn flush(&mut self) -> Result<()> {
        let host = self.host.clone();
        let mut guard = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let stdin = guard
            .as_mut()
            .ok_or_else(|| Error::failed(format!("[{host}] lost the agent: closed")))?;
        if let Err(e) = stdin.flush() {
            drop(guard);
            return Err(self.silent_or(Error::failed(format!("[{host}] sending a request: {e}"))));
        }
        Ok(())
    }

    fn close_stdin(&mut self) {
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    fn receive(&mut self, id: u64, on_event: &mut dyn FnMut(&str, &str, bool)) -> Result<Response> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = read_line_within(&mut self.stdout, &mut line, &self.deadline)
                .map_err(|e| self.io_error("reading the agent's answer", e))?;
            if n == 0 {
                return Err(self.gone("the agent exited without answering"));
            }
            // The connection is up: let the next one be set up.
            drop(self.startup.take());
            // Any message is a sign of life.
            self.deadline.extend(self.answer_timeout);
            let mut message: AgentMessage = serde_json::from_str(&line).map_err(|e| {
                Error::failed(format!(
                    "[{}] unreadable answer from the agent ({e}): {}",
                    self.host,
                    line.trim_end()
                ))
                .hint("the host may run another shipjar version; install the same version on both sides")
            })?;
            if let AgentMessage::Result { response, .. } = &mut message
                && let Some(archive) = response.payload_mut()
            {
                let mut within = ReadWithin {
                    reader: &mut self.stdout,
                    deadline: &self.deadline,
                    renew: self.answer_timeout,
                };
                archive
                    .read_packed(&mut within)
                    .map_err(|e| Error::failed(format!("[{}] {e} from the agent", self.host)))?;
            }
            match message {
                AgentMessage::Event {
                    step,
                    message,
                    failed,
                    ..
                } => on_event(&step, &message, failed),
                // The host knows this step's bound; silence within it is not a fault.
                AgentMessage::Expect { within_ms, .. } => self
                    .deadline
                    .arm(Duration::from_millis(within_ms) + self.answer_timeout),
                // A cancel that came after its request ended: nothing to report.
                AgentMessage::Result { id: CANCEL_ID, .. } => {}
                AgentMessage::Result { id: got, response } if self.unawaited.remove(&got) => {
                    if let Response::Error(e) = *response {
                        self.background_errors
                            .push(format!("{}: {}", e.step, e.message));
                    }
                }
                AgentMessage::Result { id: got, response } if got == id || got == 0 => {
                    self.deadline.disarm();
                    return Ok(match *response {
                        // "skipped" hides the real cause if that was an unawaited request.
                        Response::Error(mut e) if !self.background_errors.is_empty() => {
                            e.message =
                                format!("{} ({})", e.message, self.background_errors.join("; "));
                            Response::Error(e)
                        }
                        other => other,
                    });
                }
                AgentMessage::Result { id: got, .. } => {
                    return Err(Error::failed(format!(
                        "[{}] the agent answered request {got}, expected {id}",
                        self.host
                    )));
                }
            }
        }
    }

    /// The error for a host given up by its deadline.
    fn silent(&self) -> Error {
        let secs = self.answer_timeout.as_secs_f64();
        // Said in the message itself: a host's failure is printed without hints.
        let why = if self.remote {
            "the host may be unreachable (a cut link looks like this; if your ssh config multiplexes with ControlMaster and ControlPersist, its master may sit on a dead connection: `ssh -O exit HOST` closes it, and ServerAliveInterval makes ssh notice by itself) or its agent is stuck"
        } else {
            "its agent is stuck"
        };
        Error::failed(format!(
            "[{}] no answer for {secs:.0} s ([stages] answer_timeout): {why}; the connection was closed",
            self.host
        ))
    }

    /// `error`, unless the deadline fired: then the silence is the cause.
    fn silent_or(&self, error: Error) -> Error {
        if self.deadline.fired() {
            self.silent()
        } else {
            error
        }
    }

    fn gone(&self, why: &str) -> Error {
        if self.deadline.fired() {
            return self.silent();
        }
        // ssh says why it could not connect (host key, auth, timeout) on stderr.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let tail = self
            .stderr_tail
            .lock()
            .map(|t| t.join(" / "))
            .unwrap_or_default();
        let detail = if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        };
        Error::failed(format!("[{}] lost the agent: {why}{detail}", self.host))
    }

    fn io_error(&self, what: &str, e: io::Error) -> Error {
        self.silent_or(Error::failed(format!("[{}] {what}: {e}", self.host)))
    }
}

/// Asks one agent to cancel the request it is running (see [`AgentSession::canceller`]).
pub struct Canceller {
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    service: String,
}

impl Canceller {
    /// Sends the `cancel` line; false when the session is gone already.
    pub fn cancel(&self) -> bool {
        let envelope = Envelope {
            protocol: PROTOCOL_VERSION,
            id: CANCEL_ID,
            service: self.service.clone(),
            request: Request::Cancel,
        };
        let Ok(line) = serde_json::to_string(&envelope) else {
            return false;
        };
        let mut guard = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        // A pipe too full to take one line now means the host is not
        // reading: the cancel could not arrive anyway.
        guard
            .as_mut()
            .is_some_and(|stdin| stdin.write_all(format!("{line}\n").as_bytes()).is_ok())
    }
}

/// How long one wait on a pipe lasts before the deadline is looked at again.
const PIPE_TICK_MS: u16 = 100;

fn set_nonblocking(fd: &impl std::os::fd::AsFd) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}

/// Waits until `fd` is ready for `events` or the deadline fires.
fn ready_within(
    fd: &impl std::os::fd::AsFd,
    events: nix::poll::PollFlags,
    deadline: &Deadline,
) -> io::Result<()> {
    use nix::poll::{PollFd, poll};
    loop {
        if deadline.fired() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
        }
        let mut fds = [PollFd::new(fd.as_fd(), events)];
        match poll(&mut fds, PIPE_TICK_MS) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            // Readable, writable, or hung up / failed: the next call says which.
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Copies `from` to the agent's stdin in chunks, each renewing the deadline
/// by `renew`: a slow link is progress, a cut one (the write blocks) is
/// not. Returns the bytes copied.
fn copy_within(
    from: &mut impl Read,
    stdin: &mut ChildStdin,
    deadline: &Deadline,
    renew: Duration,
) -> io::Result<u64> {
    let mut copied = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        write_within(stdin, &buf[..n], deadline)?;
        copied += n as u64;
        deadline.arm(renew);
    }
}

/// `write_all` to a non-blocking pipe, giving up when the deadline fires.
fn write_within(stdin: &mut ChildStdin, mut bytes: &[u8], deadline: &Deadline) -> io::Result<()> {
    while !bytes.is_empty() {
        match stdin.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready_within(stdin, nix::poll::PollFlags::POLLOUT, deadline)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `read_line` that gives up when the deadline fires: waits for data with
/// poll, reads only what is there. `Ok(0)` at the end of the output.
fn read_line_within(
    reader: &mut BufReader<ChildStdout>,
    line: &mut String,
    deadline: &Deadline,
) -> io::Result<usize> {
    let mut bytes = Vec::new();
    loop {
        let buffered = reader.buffer();
        if let Some(end) = buffered.iter().position(|b| *b == b'\n') {
            bytes.extend_from_slice(&buffered[..=end]);
            reader.consume(end + 1);
            break;
        }
        let len = buffered.len();
        bytes.extend_from_slice(buffered);
        reader.consume(len);
        ready_within(reader.get_ref(), nix::poll::PollFlags::POLLIN, deadline)?;
        // Readable (or ended): this read does not block.
        if reader.fill_buf()?.is_empty() {
            break;
        }
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the answer is not UTF-8"))?;
    line.push_str(&text);
    Ok(text.len())
}

/// The agent's output as a `Read` that gives up when the deadline fires;
/// every read that brings bytes renews it (a slow link is progress).
struct ReadWithin<'a> {
    reader: &'a mut BufReader<ChildStdout>,
    deadline: &'a Deadline,
    renew: Duration,
}

impl Read for ReadWithin<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reader.buffer().is_empty() {
            ready_within(
                self.reader.get_ref(),
                nix::poll::PollFlags::POLLIN,
                self.deadline,
            )?;
        }
        let n = self.reader.read(buf)?;
        if n > 0 {
            self.deadline.arm(self.renew);
        }
        Ok(n)
    }
}

/// Keeps the last lines of the agent's stderr, and passes them on to ours.
fn collect_stderr(stderr: impl Read, tail: &Mutex<Vec<String>>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        eprintln!("{}", crate::operator::output::redact(&line));
        if let Ok(mut t) = tail.lock() {
            t.push(line);
            if t.len() > 5 {
                t.remove(0);
            }
        }
    }
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        // Closing stdin lets the agent finish its request and exit; reap it,
        // but not forever: a silent host is cut off after its deadline.
        self.deadline.arm(self.answer_timeout);
        self.close_stdin();
        let _ = self.wait_child();
    }
}

/// When a session's host is given up: armed while the operator waits for
/// the host (a request, an upload, the agent's exit), renewed by every sign
/// of progress. One watchdog thread checks every session; a deadline that
/// passes kills the session's process group (the `ssh` client, or the local
/// agent), so whatever waits on its pipes returns at once.
struct Deadline {
    until: Mutex<Option<Instant>>,
    fired: AtomicBool,
    /// The session's process group (its child leads it).
    pgid: i32,
    /// The host, as written in the stage.
    host: String,
    /// Over ssh: its process group is the `ssh` client, safe to kill at any time.
    remote: bool,
}

/// Every live session's deadline, for the watchdog.
static WATCHED: Mutex<Vec<Weak<Deadline>>> = Mutex::new(Vec::new());

/// How often the watchdog looks.
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

impl Deadline {
    /// A disarmed deadline for the process group led by `pid`, watched from now on.
    fn watch(pid: u32, host: &str, remote: bool) -> Arc<Deadline> {
        static WATCHDOG: std::sync::Once = std::sync::Once::new();
        let deadline = Arc::new(Deadline {
            until: Mutex::new(None),
            fired: AtomicBool::new(false),
            pgid: i32::try_from(pid).unwrap_or(i32::MAX),
            host: host.to_string(),
            remote,
        });
        let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        watched.retain(|w| w.strong_count() > 0);
        watched.push(Arc::downgrade(&deadline));
        drop(watched);
        WATCHDOG.call_once(|| {
            std::thread::spawn(watchdog);
        });
        deadline
    }

    /// Gives the host `allowance` from now.
    fn arm(&self, allowance: Duration) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + allowance);
    }

    /// At least `allowance` from now (never shortens a longer bound).
    fn extend(&self, allowance: Duration) {
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let later = Instant::now() + allowance;
        if until.is_some_and(|u| u < later) {
            *until = Some(later);
        }
    }

    /// Nothing is awaited from the host. Once it returns, the watchdog will
    /// not signal (it kills while holding the same lock).
    fn disarm(&self) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether the host was given up.
    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Kills the session's process group if its time is up.
    fn check(&self, now: Instant) {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if until.is_some_and(|u| u <= now) && !self.fired.swap(true, Ordering::SeqCst) {
            use nix::sys::signal::{Signal, killpg};
            let _ = killpg(nix::unistd::Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
    }
}

/// A host with an open session, as the operator leaves it.
#[derive(Debug, Clone)]
pub struct OpenSession {
    /// The host, as written in the stage.
    pub host: String,
    /// Whether the operator was waiting for the host (a request in flight).
    pub awaiting: bool,
}

/// Ends every session at once, for an operator that must exit now: the ssh
/// clients are killed (each agent then sees its connection close and
/// finishes or abandons its request by itself, releasing the lock); local
/// agents are left to see their input close. Returns the hosts that had a
/// session.
pub fn cut_all_sessions() -> Vec<OpenSession> {
    live_deadlines()
        .iter()
        .map(|d| {
            let until = d.until.lock().unwrap_or_else(|e| e.into_inner());
            if d.remote && !d.fired.swap(true, Ordering::SeqCst) {
                use nix::sys::signal::{Signal, killpg};
                let _ = killpg(nix::unistd::Pid::from_raw(d.pgid), Signal::SIGKILL);
            }
            OpenSession {
                host: d.host.clone(),
                awaiting: until.is_some(),
            }
        })
        .collect()
}

/// The deadlines of the sessions still open.
fn live_deadlines() -> Vec<Arc<Deadline>> {
    WATCHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect()
}

fn watchdog() {
    loop {
        std::thread::sleep(WATCHDOG_TICK);
        let now = Instant::now();
        for deadline in live_deadlines() {
            deadline.check(now);
        }
    }
}
