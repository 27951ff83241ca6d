//! Client connections and their limits: the cap on how many are served at
//! once (one over it is answered 503 at once, never waiting for its
//! request), and the watch that closes a connection whose request head
//! takes longer than `header_timeout` or that sits idle between requests
//! longer than `idle_timeout`.
//!
//! Both timeouts live in the connection's reads rather than in hyper's own
//! `header_read_timeout`: hyper starts that clock as soon as a connection
//! goes idle, so it would close idle keep-alive connections at the header
//! timeout and leave no separate idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// How long a refused connection is kept to read what its client sent, so
/// that closing it does not reset the connection (a reset can destroy the
/// 503 before the client read it).
const REFUSED_LINGER: Duration = Duration::from_secs(1);
/// At most this much of a refused client's request is read and dropped.
const REFUSED_READ_MAX: usize = 64 * 1024;

/// Connections served and refused connections lingering, each capped.
pub struct Gate {
    open: AtomicUsize,
    lingering: AtomicUsize,
    max: AtomicUsize,
}

/// A place under a [`Gate`]'s cap, given back when dropped.
pub struct Admitted {
    gate: Arc<Gate>,
    lingering: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let count = match self.lingering {
            true => &self.gate.lingering,
            false => &self.gate.open,
        };
        count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    /// At most `max` connections served at once (and as many refused ones
    /// lingering).
    pub fn new(max: usize) -> Arc<Gate> {
        Arc::new(Gate {
            open: AtomicUsize::new(0),
            lingering: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    /// A new cap, for connections from now on (those open stay).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::SeqCst);
    }

    /// A place for one more connection, or `None` at the cap.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        self.take(false)
    }

    fn take(self: &Arc<Self>, lingering: bool) -> Option<Admitted> {
        let count = match lingering {
            true => &self.lingering,
            false => &self.open,
        };
        let max = self.max.load(Ordering::SeqCst);
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted {
                gate: self.clone(),
                lingering,
            })
    }

    /// Answers a connection over the cap with `answer` (a whole HTTP
    /// response) at once, then closes it: after a short linger that reads
    /// what the client sent, unless too many refused ones linger already.
    pub fn refuse(self: &Arc<Self>, stream: TcpStream, answer: Bytes) {
        use std::io::Write;
        // Written straight to the socket, not through tokio's readiness (a
        // socket accepted this instant has none recorded yet): a fresh
        // socket's send buffer is empty, so this neither blocks nor waits.
        let Ok(socket) = stream.into_std() else {
            return;
        };
        let _ = (&socket).write(&answer);
        let _ = socket.shutdown(std::net::Shutdown::Write);
        let Some(place) = self.take(true) else {
            return;
        };
        let Ok(mut stream) = TcpStream::from_std(socket) else {
            return;
        };
        tokio::spawn(async move {
            let _place = place;
            let _ = tokio::time::timeout(REFUSED_LINGER, async {
                let mut buf = [0u8; 4096];
                let mut read = 0;
                while read < REFUSED_READ_MAX {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            })
            .await;
        });
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's head whose first byte came at `since` (for
    /// the first request: since the connection was accepted).
    Head { since: Instant },
    /// Requests being answered (their head complete, their response not).
    Busy { requests: u32 },
    /// Every request answered, at `since`; nothing of the next one yet.
    Idle { since: Instant },
}

/// One connection's phase and its timeouts, shared by its reads and its
/// requests.
pub struct Watch {
    state: Mutex<State>,
    header: Duration,
    idle: Duration,
}

struct State {
    phase: Phase,
    /// The read that found no deadline while busy: woken when the
    /// connection goes idle, so that its timer is set.
    parked: Option<Waker>,
}

impl Watch {
    /// A connection accepted now.
    pub fn new(header: Duration, idle: Duration) -> Arc<Watch> {
        Arc::new(Watch {
            state: Mutex::new(State {
                phase: Phase::Head {
                    since: Instant::now(),
                },
                parked: None,
            }),
            header,
            idle,
        })
    }

    /// How long a request's head may take (a TLS handshake too).
    pub fn header_timeout(&self) -> Duration {
        self.header
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's head is complete: no timeout runs until it is answered.
    pub fn begin(self: &Arc<Self>) -> Exchange {
        let mut state = self.state();
        let phase = &mut state.phase;
        *phase = match *phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        };
        Exchange(self.clone())
    }

    /// Bytes came in: on an idle connection they start a request's head.
    fn arrived(&self) {
        let mut state = self.state();
        if let Phase::Idle { .. } = state.phase {
            state.phase = Phase::Head {
                since: Instant::now(),
            };
        }
    }

    /// When the connection is to be closed, and whether that is the end of
    /// an idle wait (a clean close) rather than a request head cut short.
    /// While busy there is none, and `reader` is kept to be woken at the end.
    fn deadline(&self, reader: &Waker) -> Option<(Instant, bool)> {
        let mut state = self.state();
        match state.phase {
            Phase::Head { since } => Some((since + self.header, false)),
            Phase::Idle { since } => Some((since + self.idle, true)),
            Phase::Busy { .. } => {
                if !state.parked.as_ref().is_some_and(|w| w.will_wake(reader)) {
                    state.parked = Some(reader.clone());
                }
                None
            }
        }
    }
}

/// One request from its complete head until its response has been handed
/// over (the body dropped by hyper once sent, or on the way out).
pub struct Exchange(Arc<Watch>);

impl Drop for Exchange {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.phase = match state.phase {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        };
        let parked = match state.phase {
            Phase::Idle { .. } => state.parked.take(),
            _ => None,
        };
        drop(state);
        if let Some(reader) = parked {
            reader.wake();
        }
    }
}

/// A response body that holds its request's [`Exchange`] until it is gone.
pub struct Tracked<B> {
    inner: B,
    _exchange: Exchange,
}

impl<B> Tracked<B> {
    /// `inner`, answering the request `exchange` stands for.
    pub fn new(inner: B, exchange: Exchange) -> Self {
        Tracked {
            inner,
            _exchange: exchange,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client's connection whose reads end it at the watch's deadline: an
/// error for a request head cut short, the end of the stream for an idle
/// connection (hyper closes it cleanly).
pub struct Guarded<T> {
    io: T,
    watch: Arc<Watch>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T> Guarded<T> {
    /// `io`, watched by `watch`.
    pub fn new(io: T, watch: Arc<Watch>) -> Self {
        Guarded {
            io,
            watch,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.watch.arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, idle)) = this.watch.deadline(cx.waker()) else {
                    return Poll::Pending;
                };
                if this.armed != Some(deadline) {
                    this.timer.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) if idle => Poll::Ready(Ok(())),
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head within header_timeout",
                    ))),
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_up_to_its_cap_and_takes_places_back() {
        let gate = Gate::new(2);
        let first = gate.admit();
        assert!(first.is_some());
        assert!(gate.admit().is_some(), "the place of a dropped one is free");
        let _second = gate.admit();
        assert!(gate.admit().is_none(), "over the cap");
        drop(first);
        assert!(gate.admit().is_some());
        gate.set_max(1);
        assert!(gate.admit().is_none(), "a lower cap, one still open");
    }

    #[test]
    fn a_connection_is_timed_for_its_head_then_not_while_busy_then_for_idling() {
        let waker = Waker::noop();
        let watch = Watch::new(Duration::from_secs(1), Duration::from_secs(5));
        let (deadline, idle) = watch.deadline(waker).expect("a head deadline");
        assert!(!idle);
        assert!(deadline <= Instant::now() + Duration::from_secs(1));
        let exchange = watch.begin();
        assert_eq!(watch.deadline(waker), None, "no timeout while answering");
        let second = watch.begin();
        drop(exchange);
        assert_eq!(watch.deadline(waker), None, "one request still answered");
        drop(second);
        let (deadline, idle) = watch.deadline(waker).expect("an idle deadline");
        assert!(idle);
        assert!(deadline > Instant::now() + Duration::from_secs(4));
        watch.arrived();
        let (deadline, idle) = watch.deadline(waker).expect("a head deadline again");
        assert!(!idle);
        assert!(deadline <= Instant::now() + Duration::from_secs(1));
        watch.arrived();
        assert_eq!(
            watch.deadline(waker).map(|d| d.0),
            Some(deadline),
            "more bytes of the same head do not move its deadline"
        );
    }
}
