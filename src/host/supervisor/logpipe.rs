//! The service's stdout and stderr go into a pipe the supervisor owns; one
//! thread drains it into the rotating log, so rotation loses nothing and a
//! slow disk makes the service wait rather than drop lines.
//!
//! Supervisor events land exactly where they happened in the service's
//! output: each event is stamped with the pipe position at that moment (bytes
//! the log thread has read plus bytes still in the pipe, taken under the lock
//! the log thread reads under), and the log thread writes it once it has
//! written the service's bytes up to that position — nothing the service
//! wrote later. Events go between whole lines: a line in progress is finished
//! after the event. A place can also be held for an event known only a
//! moment later ("started pid N" needs the spawn done, and the new process
//! may write at once): the log thread stops reading at the hold until it is
//! filled.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::logfile;
use super::rotate::RotatingFile;
use crate::host::os::journal::Journal;

/// Pipe capacity asked for: the service can run ahead this far while the
/// log thread is busy (a rotation, a slow disk). 1 MiB is the unprivileged maximum.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// How long a line without its newline may wait for the rest.
const PARTIAL_LINE_WAIT_MS: libc::c_int = 200;

/// A partial line this long is written out as it is.
const MAX_PENDING: usize = 64 * 1024;

/// Bytes read from the pipe per step.
const READ_SIZE: usize = 64 * 1024;

/// Longest event line.
const MAX_EVENT: usize = 4000;

/// Events queued beyond this (a log thread stuck on a hung disk) are dropped.
const MAX_QUEUED: usize = 1000;

/// What the supervisor tells the log thread.
enum Message {
    /// A formatted event line.
    Event(String),
    /// A place kept for an event that is not written yet: nothing the
    /// service writes after this point is logged before the event arrives.
    Hold(u64),
    /// The event for hold `id` (`None`: nothing to write there after all).
    Fill(u64, Option<String>),
    /// Answer on the ack channel once everything before is written.
    Sync,
    /// Write everything before, answer, and end.
    Quit,
}

/// A place in the log kept with [`LogPipe::hold`]; give it to [`LogPipe::fill`].
#[must_use = "a hold stops the log until it is filled"]
pub struct Hold(u64);

/// State shared by the supervisor and the log thread.
struct Shared {
    /// The pipe's read end: read by the log thread, measured by both.
    service_r: File,
    /// Under this lock the log thread reads (and counts) and the supervisor
    /// stamps and queues: a stamp is then exact.
    queue: Mutex<Queue>,
}

struct Queue {
    /// Bytes the log thread has read from the pipe so far.
    consumed: u64,
    /// Messages with the pipe position they belong at.
    messages: Vec<(u64, Message)>,
}

/// The pipe, the thread draining it, and the way to talk to that thread.
pub struct LogPipe {
    shared: Arc<Shared>,
    service_w: OwnedFd,
    /// One byte here wakes the log thread.
    wake_w: File,
    acks: Receiver<()>,
    thread: Option<JoinHandle<()>>,
    echo: bool,
    next_hold: std::cell::Cell<u64>,
}

impl LogPipe {
    /// Starts the log thread writing into `file`. With `echo`, events also go
    /// to our stderr (the journal, under systemd).
    pub fn start(file: Sink, echo: bool) -> io::Result<LogPipe> {
        let (service_r, service_w) = pipe(0)?;
        set_nonblocking(&service_r)?;
        // SAFETY: fcntl on a descriptor we own; failure just keeps the default size.
        unsafe {
            libc::fcntl(service_w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
        }
        let (wake_r, wake_w) = pipe(libc::O_NONBLOCK)?;
        let (ack_tx, acks) = mpsc::channel();
        let shared = Arc::new(Shared {
            service_r: File::from(service_r),
            queue: Mutex::new(Queue {
                consumed: 0,
                messages: Vec::new(),
            }),
        });
        let mut drain = Drain {
            shared: Arc::clone(&shared),
            wake_r: File::from(wake_r),
            out: Output {
                file,
                pending: Vec::new(),
                mid_line: false,
                lost: 0,
                last_error: None,
            },
            acks: ack_tx,
            waiting: Vec::new(),
            blocked: false,
        };
        let thread = std::thread::Builder::new()
            .name("log".into())
            .stack_size(128 * 1024)
            .spawn(move || drain.run())?;
        Ok(LogPipe {
            shared,
            service_w,
            wake_w: File::from(wake_w),
            acks,
            thread: Some(thread),
            echo,
            next_hold: std::cell::Cell::new(0),
        })
    }

    /// Stdout and stderr for a service process: both ends of the same pipe.
    pub fn service_stdio(&self) -> io::Result<(Stdio, Stdio)> {
        Ok((
            Stdio::from(self.service_w.try_clone()?),
            Stdio::from(self.service_w.try_clone()?),
        ))
    }

    /// The pipe's write end, e.g. to make it our own stderr.
    pub fn service_fd(&self) -> BorrowedFd<'_> {
        self.service_w.as_fd()
    }

    /// Logs `2026-11-26T14:03:01.123Z [shipjar] MESSAGE` at this point of
    /// the service's output.
    pub fn event(&self, message: &str) {
        let line = event_line(&crate::host::secrets::mask(message));
        if self.echo {
            let _ = io::stderr().write_all(line.as_bytes());
        }
        self.send(Message::Event(line));
    }

    /// Keeps this point of the output for an event written later, e.g.
    /// "started pid N", which is only known once a process that may write
    /// at once has been spawned. Fill it promptly: the log waits for it.
    pub fn hold(&self) -> Hold {
        let id = self.next_hold.get();
        self.next_hold.set(id + 1);
        self.send(Message::Hold(id));
        Hold(id)
    }

    /// Writes the event for `hold` where the hold was taken (`None`: none).
    pub fn fill(&self, hold: Hold, message: Option<&str>) {
        let line = message.map(|m| {
            let line = event_line(m);
            if self.echo {
                let _ = io::stderr().write_all(line.as_bytes());
            }
            line
        });
        self.send(Message::Fill(hold.0, line));
    }

    /// Waits until everything the service wrote so far is in the file.
    pub fn sync(&self, timeout: Duration) -> bool {
        while self.acks.try_recv().is_ok() {}
        self.send(Message::Sync) && self.acks.recv_timeout(timeout).is_ok()
    }

    /// Stamps `message` with the pipe position and queues it; false when dropped.
    fn send(&self, message: Message) -> bool {
        let Ok(mut queue) = self.shared.queue.lock() else {
            return false;
        };
        // Only plain events may be dropped: the others are waited for.
        if queue.messages.len() >= MAX_QUEUED && matches!(message, Message::Event(_)) {
            return false;
        }
        let mark = queue.consumed + unread(&self.shared.service_r);
        queue.messages.push((mark, message));
        drop(queue);
        // Non-blocking: when the wake pipe is full, the thread is awake anyway.
        let _ = (&self.wake_w).write(&[1]);
        true
    }
}

impl Drop for LogPipe {
    fn drop(&mut self) {
        let acked =
            self.send(Message::Quit) && self.acks.recv_timeout(Duration::from_secs(5)).is_ok();
        // Joined only when it answered: a thread stuck on a hung disk must
        // not keep the supervisor from exiting.
        if let Some(thread) = self.thread.take()
            && acked
        {
            let _ = thread.join();
        }
    }
}

/// The event line for `message`, cut to [`MAX_EVENT`].
fn event_line(message: &str) -> String {
    let mut line = logfile::format_event(message);
    if line.len() > MAX_EVENT {
        let mut cut = MAX_EVENT - 2;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("…\n");
    }
    line
}

/// Bytes waiting in a pipe (FIONREAD).
fn unread(pipe: &File) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`.
    let rc = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 { n.max(0) as u64 } else { 0 }
}

/// `pipe2(O_CLOEXEC | flags)`.
fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The log thread's side.
struct Drain {
    shared: Arc<Shared>,
    wake_r: File,
    out: Output,
    acks: Sender<()>,
    /// Messages whose position has not been reached yet, in stamp order.
    waiting: Vec<(u64, Message)>,
    /// An unfilled hold sits where reading has got to: wait for its fill
    /// (woken by the wake pipe) without polling the service's pipe.
    blocked: bool,
}

impl Drain {
    fn run(&mut self) {
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            let mut fds = [
                libc::pollfd {
                    // A negative descriptor is skipped by poll.
                    fd: if self.blocked {
                        -1
                    } else {
                        self.shared.service_r.as_raw_fd()
                    },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake_r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout = if self.out.pending.is_empty() {
                -1
            } else {
                PARTIAL_LINE_WAIT_MS
            };
            // SAFETY: poll on two valid descriptors in an array we own.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if rc < 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    // Cannot happen with valid descriptors; avoid spinning if it does.
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            if rc == 0 {
                self.out.flush_partial();
                continue;
            }
            if fds[1].revents != 0 {
                let mut sink = [0u8; 64];
                while matches!((&self.wake_r).read(&mut sink), Ok(n) if n > 0) {}
            }
            if self.steps(&mut buf) {
                return;
            }
        }
    }

    /// Reads and writes until the pipe is empty and no message is due;
    /// true once told to quit.
    fn steps(&mut self, buf: &mut [u8]) -> bool {
        loop {
            let shared = Arc::clone(&self.shared);
            let (start, n) = {
                let mut queue = lock(&shared.queue);
                let arrived = std::mem::take(&mut queue.messages);
                self.take(arrived);
                // Never read past a hold that is still empty: what follows it
                // must wait in the pipe until its event is known.
                let start = queue.consumed;
                let room = self
                    .waiting
                    .iter()
                    .filter(|(_, m)| matches!(m, Message::Hold(_)))
                    .map(|(mark, _)| mark.saturating_sub(start) as usize)
                    .min()
                    .unwrap_or(buf.len())
                    .min(buf.len());
                self.blocked = room == 0;
                let n = if room == 0 {
                    0
                } else {
                    loop {
                        match (&shared.service_r).read(&mut buf[..room]) {
                            Ok(n) => break n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => break 0,
                        }
                    }
                };
                queue.consumed += n as u64;
                (start, n)
            };
            let mut at = 0;
            while let Some((mark, message)) = self.waiting.first() {
                let offset = mark.saturating_sub(start) as usize;
                if offset > n || matches!(message, Message::Hold(_)) {
                    break;
                }
                self.out.service_bytes(&buf[at..offset.max(at)]);
                at = offset.max(at);
                let (_, message) = self.waiting.remove(0);
                match message {
                    Message::Event(line) => self.out.event(line.as_bytes()),
                    Message::Hold(_) | Message::Fill(..) => {}
                    Message::Sync => {
                        self.out.flush_partial();
                        let _ = self.acks.send(());
                    }
                    Message::Quit => {
                        self.out.service_bytes(&buf[at..n]);
                        self.out.flush_partial();
                        self.out.file.finish();
                        let _ = self.acks.send(());
                        return true;
                    }
                }
            }
            self.out.service_bytes(&buf[at..n]);
            if n == 0 {
                return false;
            }
        }
    }

    /// Adds newly queued messages to those waiting: fills replace their
    /// holds (in place, keeping the hold's position), the rest are sorted
    /// in by position.
    fn take(&mut self, arrived: Vec<(u64, Message)>) {
        for (mark, message) in arrived {
            match message {
                Message::Fill(id, line) => {
                    let held = self
                        .waiting
                        .iter()
                        .position(|(_, m)| matches!(m, Message::Hold(h) if *h == id));
                    if let Some(i) = held {
                        match line {
                            Some(line) => self.waiting[i].1 = Message::Event(line),
                            None => {
                                self.waiting.remove(i);
                            }
                        }
                    }
                }
                other => {
                    // Stamps only grow with time, but two taken at once may tie.
                    let i = self.waiting.partition_point(|(m, _)| *m <= mark);
                    self.waiting.insert(i, (mark, other));
                }
            }
        }
    }
}

/// Locks the queue; a panic while holding the lock cannot leave the counter
/// half-updated, so a poisoned lock is still good.
fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the output goes: the rotating file, or journald (one entry a line).
pub enum Sink {
    /// `[logs] file`.
    File(RotatingFile),
    /// `[logs] to = "journal"`.
    Journal(Journal),
}

impl Sink {
    fn write_chunk(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::File(file) => file.write_chunk(bytes),
            Sink::Journal(journal) => {
                // Whole lines arrive here (a partial one only when it grew
                // too long to wait for): each is one entry.
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    journal.send(line, false)?;
                }
                Ok(())
            }
        }
    }

    fn finish(&mut self) {
        if let Sink::File(file) = self {
            file.finish();
        }
    }
}

/// Turns the byte stream into whole-line writes, with events in between.
struct Output {
    file: Sink,
    /// The start of a line whose newline has not arrived yet.
    pending: Vec<u8>,
    /// The file ends in the middle of a service line.
    mid_line: bool,
    /// Bytes that could not be written (disk full, …) since the last success.
    lost: u64,
    last_error: Option<String>,
}

impl Output {
    fn service_bytes(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        if let Some(last) = self.pending.iter().rposition(|b| *b == b'\n') {
            let rest = self.pending.split_off(last + 1);
            let lines = std::mem::replace(&mut self.pending, rest);
            self.write(&lines);
            self.mid_line = false;
        }
        if self.pending.len() >= MAX_PENDING {
            self.flush_partial();
        }
    }

    /// Writes a partial line as it is.
    fn flush_partial(&mut self) {
        if !self.pending.is_empty() {
            let partial = std::mem::take(&mut self.pending);
            self.write(&partial);
            self.mid_line = true;
        }
    }

    fn event(&mut self, line: &[u8]) {
        if self.mid_line {
            self.write(b"\n");
            self.mid_line = false;
        }
        self.write(line);
    }

    fn write(&mut self, bytes: &[u8]) {
        match self.file.write_chunk(bytes) {
            Ok(()) if self.lost > 0 => {
                let why = self.last_error.take().unwrap_or_default();
                let note = logfile::format_event(&format!(
                    "lost {} bytes of output that could not be written: {why}",
                    self.lost
                ));
                self.lost = 0;
                let _ = self.file.write_chunk(note.as_bytes());
            }
            Ok(()) => {}
            Err(e) => {
                self.lost += bytes.len() as u64;
                self.last_error = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests: their own temp dirs
mod tests {
    use super::*;
    use crate::host::supervisor::rotate::Rotation;

    /// The log's lines with event timestamps cut off.
    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("log")
            .lines()
            .map(|l| match l.split_once(" [shipjar] ") {
                Some((_, event)) => format!("[shipjar] {event}"),
                None => l.to_string(),
            })
            .collect()
    }

    #[test]
    fn events_land_where_they_happened_and_holds_keep_their_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.log");
        let rotation = Rotation {
            max_size: 0,
            keep: 1,
            compress: false,
        };
        let file = Sink::File(RotatingFile::open(&path, rotation, None).expect("open"));
        let log = LogPipe::start(file, false).expect("start");
        let mut service = File::from(log.service_fd().try_clone_to_owned().expect("dup"));

        service.write_all(b"a\n").expect("write");
        let hold = log.hold();
        service.write_all(b"b\n").expect("write");
        log.event("x");
        // Written while the hold is open: must stay after it.
        service.write_all(b"par").expect("write");
        log.fill(hold, Some("started"));
        log.event("mid-line");
        service.write_all(b"tial\n").expect("write");
        assert!(log.sync(Duration::from_secs(5)));
        assert_eq!(
            lines(&path),
            [
                "a",
                "[shipjar] started",
                "b",
                "[shipjar] x",
                "[shipjar] mid-line",
                "partial"
            ]
        );

        let hold = log.hold();
        service.write_all(b"c\n").expect("write");
        log.fill(hold, None);
        drop(log);
        assert_eq!(lines(&path).last().map(String::as_str), Some("c"));
    }
}
