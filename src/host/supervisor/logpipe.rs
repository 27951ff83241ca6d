//! The service's stdout and stderr go into a pipe the supervisor owns; one
//! thread drains it into the rotating log, so rotation loses nothing and a
//! slow disk makes the service wait rather than drop lines. Supervisor events
//! reach the same thread through a second pipe and are written between whole
//! lines of the service's output, after everything the service wrote before
//! the event happened.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use super::logfile;
use super::rotate::RotatingFile;

/// Pipe capacity asked for: the service can run ahead this far while the
/// log thread is busy (a rotation, a slow disk). 1 MiB is the unprivileged maximum.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// How long a line without its newline may wait for the rest.
const PARTIAL_LINE_WAIT_MS: libc::c_int = 200;

/// A partial line this long is written out as it is.
const MAX_PENDING: usize = 64 * 1024;

/// Longest event line; keeps each event one atomic pipe write (PIPE_BUF is 4096).
const MAX_EVENT: usize = 4000;

/// Control messages on the event pipe start with a NUL, which no event has.
const SYNC: &[u8] = b"\0sync\n";
const QUIT: &[u8] = b"\0quit\n";

/// The pipe, the thread draining it, and the way to talk to that thread.
pub struct LogPipe {
    service_w: OwnedFd,
    events_w: File,
    acks: Receiver<()>,
    thread: Option<JoinHandle<()>>,
    echo: bool,
}

impl LogPipe {
    /// Starts the log thread writing into `file`. With `echo`, events also go
    /// to our stderr (the journal, under systemd).
    pub fn start(file: RotatingFile, echo: bool) -> io::Result<LogPipe> {
        let (service_r, service_w) = pipe(0)?;
        set_nonblocking(&service_r)?;
        // SAFETY: fcntl on a descriptor we own; failure just keeps the default size.
        unsafe {
            libc::fcntl(service_w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
        }
        let (events_r, events_w) = pipe(libc::O_NONBLOCK)?;
        let (ack_tx, acks) = mpsc::channel();
        let mut drain = Drain {
            service: File::from(service_r),
            events: File::from(events_r),
            out: Output {
                file,
                pending: Vec::new(),
                mid_line: false,
                lost: 0,
                last_error: None,
            },
            acks: ack_tx,
        };
        let thread = std::thread::Builder::new()
            .name("log".into())
            .stack_size(128 * 1024)
            .spawn(move || drain.run())?;
        Ok(LogPipe {
            service_w,
            events_w: File::from(events_w),
            acks,
            thread: Some(thread),
            echo,
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

    /// Logs `2026-11-26T14:03:01.123Z [shipjar] MESSAGE`.
    pub fn event(&self, message: &str) {
        let mut line = logfile::format_event(message);
        if line.len() > MAX_EVENT {
            let mut cut = MAX_EVENT - 2;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str("…\n");
        }
        if self.echo {
            let _ = io::stderr().write_all(line.as_bytes());
        }
        // Non-blocking: a log thread stuck on a full disk must not stop
        // supervision; the event is lost then, and only then.
        let _ = (&self.events_w).write(line.as_bytes());
    }

    /// Waits until everything the service wrote so far is in the file.
    pub fn sync(&self, timeout: Duration) -> bool {
        while self.acks.try_recv().is_ok() {}
        if (&self.events_w).write(SYNC).is_err() {
            return false;
        }
        self.acks.recv_timeout(timeout).is_ok()
    }
}

impl Drop for LogPipe {
    fn drop(&mut self) {
        // Blocking for this last message: it must arrive.
        let fd = self.events_w.as_raw_fd();
        // SAFETY: fcntl on our own descriptor.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
        let acked = (&self.events_w).write_all(QUIT).is_ok()
            && self.acks.recv_timeout(Duration::from_secs(5)).is_ok();
        // Joined only when it answered: a thread stuck on a hung disk must
        // not keep the supervisor from exiting.
        if let Some(thread) = self.thread.take()
            && acked
        {
            let _ = thread.join();
        }
    }
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
    service: File,
    events: File,
    out: Output,
    acks: Sender<()>,
}

impl Drain {
    fn run(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut events: Vec<u8> = Vec::new();
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.service.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.events.as_raw_fd(),
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
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Cannot happen with valid descriptors; avoid spinning if it does.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            if rc == 0 {
                self.out.flush_partial();
                continue;
            }
            if fds[0].revents != 0 {
                self.drain_service(&mut buf, usize::MAX);
            }
            if fds[1].revents != 0 && self.take_events(&mut buf, &mut events) {
                return;
            }
        }
    }

    /// Reads what the service wrote, at most `limit` bytes (so a chatty
    /// service cannot starve events).
    fn drain_service(&mut self, buf: &mut [u8], limit: usize) {
        let mut total = 0;
        while total < limit {
            match self.service.read(buf) {
                Ok(0) => return,
                Ok(n) => {
                    total += n;
                    self.out.service_bytes(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Handles the event pipe; true when told to quit.
    fn take_events(&mut self, buf: &mut [u8], events: &mut Vec<u8>) -> bool {
        let mut closed = false;
        loop {
            match self.events.read(buf) {
                Ok(0) => {
                    // The sending side is gone: nothing more will come.
                    closed = true;
                    break;
                }
                Ok(n) => events.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        // Everything the service wrote before these events were sent is in
        // the pipe now: write it first. Twice the pipe size bounds the wait.
        self.drain_service(buf, 2 * PIPE_SIZE as usize);
        let mut quit = closed;
        if closed {
            self.out.flush_partial();
            self.out.file.finish();
        }
        while let Some(end) = events.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = events.drain(..=end).collect();
            match line.as_slice() {
                SYNC => {
                    self.out.flush_partial();
                    let _ = self.acks.send(());
                }
                QUIT => {
                    self.out.flush_partial();
                    self.out.file.finish();
                    quit = true;
                }
                event => self.out.event(event),
            }
        }
        if quit {
            let _ = self.acks.send(());
        }
        quit
    }
}

/// Turns the byte stream into whole-line writes, with events in between.
struct Output {
    file: RotatingFile,
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
