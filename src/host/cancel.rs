//! Cancelling the request in progress: the operator asks (a second Ctrl-C)
//! with a `cancel` line while an activation runs; the health gate and the
//! activation check here and give up, so the host goes back to its previous
//! release at once instead of after `start_timeout`.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether the operator asked to cancel the request in progress.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Forgets a cancel request (before reverting, which must run to the end).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// Watches the agent's input while one long request runs: a `cancel` line
/// sets the flag. Nothing else is sent during such a request; the end of the
/// input (an operator killed, a cut link) is NOT a cancel — a started request
/// finishes.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts watching `fd` (the agent's stdin).
    pub fn start(fd: RawFd) -> Watch {
        Watch::spawn(fd, false)
    }

    /// Like [`start`](Watch::start), and the end of the input cancels too: for
    /// a request that only matters while the operator is there (`exec`: an
    /// operator stopped with Ctrl-C takes its command with it).
    pub fn start_until_eof(fd: RawFd) -> Watch {
        Watch::spawn(fd, true)
    }

    fn spawn(fd: RawFd, eof_cancels: bool) -> Watch {
        clear();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || watch(fd, &stopping, eof_cancels));
        Watch {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(fd: RawFd, stop: &AtomicBool, eof_cancels: bool) {
    let mut line = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if !readable(fd, Duration::from_millis(50)) {
            continue;
        }
        // One byte at a time: nothing past the cancel line may be taken from
        // the main loop's reader.
        let mut byte = [0u8; 1];
        // SAFETY: reading into a valid one-byte buffer from an open descriptor.
        let n = unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) };
        if n <= 0 {
            if eof_cancels {
                REQUESTED.store(true, Ordering::SeqCst);
            }
            return; // end of input: otherwise the request still finishes
        }
        if byte[0] != b'\n' {
            line.push(byte[0]);
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        if text.contains("\"type\":\"cancel\"") {
            REQUESTED.store(true, Ordering::SeqCst);
        }
        line.clear();
    }
}

/// Whether `fd` has input (or its end) within `timeout`.
fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
    // A pipe whose writer is gone says POLLHUP, not POLLIN: its end is input too.
    n > 0 && poll.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}
