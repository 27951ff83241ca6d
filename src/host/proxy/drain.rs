//! What outlives a switch on the old instance: WebSocket (upgraded)
//! tunnels and responses still streaming (SSE, long downloads). Each is
//! counted in the instance's in-flight count, so the drain waits for it;
//! once the drain deadline has passed the agent asks the worker to close
//! what is left on that instance (`close PORT`), and each tunnel and
//! stream ends itself: a tunnel with a WebSocket close frame (1001, going
//! away) where it can, a stream with the end of its body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::watch;

/// What kind of long-lived exchange an [`Open`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An upgraded (WebSocket) connection.
    Tunnel,
    /// A response whose body is still going to the client.
    Stream,
}

/// Per instance port: the close signal and what is open.
pub struct Drains {
    ports: [u16; 2],
    /// Bumped once per `close`: every tunnel and stream watching it ends.
    closes: [watch::Sender<u64>; 2],
    tunnels: [AtomicU64; 2],
    streams: [AtomicU64; 2],
}

impl Drains {
    /// Nothing open on either of `ports`.
    pub fn new(ports: [u16; 2]) -> Arc<Drains> {
        Arc::new(Drains {
            ports,
            closes: [watch::channel(0).0, watch::channel(0).0],
            tunnels: [AtomicU64::new(0), AtomicU64::new(0)],
            streams: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    fn index(&self, port: u16) -> Option<usize> {
        self.ports.iter().position(|p| *p == port)
    }

    /// A tunnel or stream on `port`, counted until dropped, with the signal
    /// that ends it; `None` for a port that is not an instance's.
    pub fn open(self: &Arc<Self>, port: u16, kind: Kind) -> Option<(Open, Cut)> {
        let i = self.index(port)?;
        self.count(i, kind).fetch_add(1, Ordering::SeqCst);
        let cut = Cut {
            rx: self.closes[i].subscribe(),
            wait: None,
        };
        Some((
            Open {
                drains: self.clone(),
                index: i,
                kind,
            },
            cut,
        ))
    }

    fn count(&self, index: usize, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Tunnel => &self.tunnels[index],
            Kind::Stream => &self.streams[index],
        }
    }

    /// Tunnels and streams open on `port` now.
    pub fn open_on(&self, port: u16) -> (u64, u64) {
        self.index(port).map_or((0, 0), |i| {
            (
                self.tunnels[i].load(Ordering::SeqCst),
                self.streams[i].load(Ordering::SeqCst),
            )
        })
    }

    /// Ends every tunnel and stream on `port`; says how many there were.
    pub fn close(&self, port: u16) -> (u64, u64) {
        let open = self.open_on(port);
        if let Some(i) = self.index(port) {
            self.closes[i].send_modify(|n| *n += 1);
        }
        open
    }
}

/// One tunnel or stream, counted until dropped.
pub struct Open {
    drains: Arc<Drains>,
    index: usize,
    kind: Kind,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.drains
            .count(self.index, self.kind)
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// The signal that ends one tunnel or stream: its instance's next `close`.
pub struct Cut {
    rx: watch::Receiver<u64>,
    /// Made on the first wait only: most responses end before they wait.
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Cut {
    /// Whether the close came; `register`: else wake `cx` when it does.
    pub fn poll_cut(&mut self, cx: &mut Context<'_>, register: bool) -> bool {
        if self.wait.is_none() {
            if self.rx.has_changed().unwrap_or(false) {
                return true;
            }
            if !register {
                return false;
            }
            let mut rx = self.rx.clone();
            self.wait = Some(Box::pin(async move {
                if rx.changed().await.is_err() {
                    // The proxy is going away: nothing will close this.
                    std::future::pending::<()>().await;
                }
            }));
        }
        match self.wait.as_mut() {
            Some(wait) => wait.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    /// Resolves when the close comes.
    pub async fn wait(&mut self) {
        std::future::poll_fn(|cx| match self.poll_cut(cx, true) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_ends_what_is_open_on_its_port_only_and_counts_it() {
        let drains = Drains::new([1, 2]);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (tunnel, mut tunnel_cut) = drains.open(1, Kind::Tunnel).expect("port 1");
        let (_stream, mut stream_cut) = drains.open(1, Kind::Stream).expect("port 1");
        let (_other, mut other_cut) = drains.open(2, Kind::Stream).expect("port 2");
        assert!(
            drains.open(3, Kind::Stream).is_none(),
            "not an instance port"
        );
        assert!(!tunnel_cut.poll_cut(&mut cx, true));
        assert!(!stream_cut.poll_cut(&mut cx, false));
        assert_eq!(drains.close(1), (1, 1));
        assert!(tunnel_cut.poll_cut(&mut cx, true), "a registered wait");
        assert!(stream_cut.poll_cut(&mut cx, false), "an unregistered check");
        assert!(!other_cut.poll_cut(&mut cx, true), "the other port stays");
        drop(tunnel);
        assert_eq!(drains.open_on(1), (0, 1));
        assert_eq!(drains.open_on(2), (0, 1));
    }
}
