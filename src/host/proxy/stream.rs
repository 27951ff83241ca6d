//! Bodies on their way through the proxy, frame by frame as they come
//! (hyper writes each frame out as it gets it, so an SSE event reaches
//! the client when the instance sends it): the instance's response, held
//! against its instance until the last byte went (or the drain deadline
//! ended it), and capped by `max_response_body`; the client's request
//! body's cap (`max_request_body`) is [`BodyCap`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::drain::{Cut, Open};

/// Errors a body passing through may end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A body over its cap.
#[derive(Debug)]
pub struct TooLarge {
    /// The setting that capped it.
    pub key: &'static str,
    /// Its value in bytes.
    pub max: u64,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "body over {} = {} bytes", self.key, self.max)
    }
}

impl std::error::Error for TooLarge {}

/// The instance's response body, holding `hold` (the request's in-flight
/// count) and its place among the instance's open streams until it ends;
/// ended early (a clean end of a chunked body) by the drain's close.
pub struct Streamed<H> {
    inner: Incoming,
    _hold: H,
    _open: Option<Open>,
    cut: Option<Cut>,
    max: Option<u64>,
    sent: u64,
}

impl<H> Streamed<H> {
    /// `inner`, with its instance's close signal (`drain`) and
    /// `max_response_body` (`max`).
    pub fn new(inner: Incoming, hold: H, drain: Option<(Open, Cut)>, max: Option<u64>) -> Self {
        let (open, cut) = drain.unzip();
        Streamed {
            inner,
            _hold: hold,
            _open: open,
            cut,
            max,
            sent: 0,
        }
    }
}

impl<H: Unpin> Body for Streamed<H> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        // A stream that never pauses is still ended by the close.
        if this.cut.as_mut().is_some_and(|c| c.poll_cut(cx, false)) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                    if let Some(max) = this.max.filter(|max| this.sent > *max) {
                        return Poll::Ready(Some(Err(Box::new(TooLarge {
                            key: "max_response_body",
                            max,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.cut.as_mut().is_some_and(|c| c.poll_cut(cx, true)) {
                true => Poll::Ready(None),
                false => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `max_request_body` for one request across its attempts: the bytes the
/// client sent so far, and whether they went over. Kept with the body it
/// counts (one allocation per request for both, not one per counter).
#[derive(Default)]
pub struct BodyCap {
    /// The cap, if any.
    pub max: Option<u64>,
    seen: u64,
    over: bool,
}

impl BodyCap {
    /// A cap of `max` bytes (none: no cap).
    pub fn new(max: Option<u64>) -> BodyCap {
        BodyCap {
            max,
            ..BodyCap::default()
        }
    }

    /// Counts `n` more bytes; the error once they are over the cap.
    pub fn count(&mut self, n: usize) -> Result<(), TooLarge> {
        self.seen = self.seen.saturating_add(n as u64);
        match self.max {
            Some(max) if self.seen > max => {
                self.over = true;
                Err(TooLarge {
                    key: "max_request_body",
                    max,
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether the body went over the cap.
    pub fn went_over(&self) -> bool {
        self.over
    }
}

/// Whether a declared `Content-Length` is over `max`.
pub fn declared_over(headers: &hyper::HeaderMap, max: Option<u64>) -> bool {
    let Some(max) = max else {
        return false;
    };
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_counts_the_bytes_and_says_when_they_went_over() {
        let mut cap = BodyCap::new(Some(10));
        assert!(cap.count(6).is_ok());
        assert!(cap.count(4).is_ok(), "exactly the cap is allowed");
        assert!(!cap.went_over());
        assert!(cap.count(1).is_err());
        assert!(cap.went_over());
        assert!(BodyCap::new(None).count(usize::MAX / 2).is_ok());
    }

    #[test]
    fn a_declared_length_over_the_cap_is_told_before_the_body() {
        let mut h = hyper::HeaderMap::new();
        assert!(!declared_over(&h, Some(1)), "no length declared");
        h.insert(
            hyper::header::CONTENT_LENGTH,
            "11".parse().expect("a value"),
        );
        assert!(declared_over(&h, Some(10)));
        assert!(!declared_over(&h, Some(11)));
        assert!(!declared_over(&h, None));
    }
}
