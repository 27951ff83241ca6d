//! Upgraded connections (WebSocket): the request goes to the active
//! instance with its `Upgrade` and `Connection: upgrade` restored (the
//! header rules drop hop-by-hop headers); on `101` the client's connection
//! and the instance's are joined and the bytes copied both ways until one
//! side closes, or until the instance's drain deadline closes the tunnel.
//! The tunnel stays on the instance it was opened on: a switch sends only
//! new connections to the new one.
//!
//! To close a WebSocket cleanly the proxy must not cut into a frame the
//! instance is sending, so the instance-to-client direction follows the
//! frame boundaries ([`FrameCursor`]); the client then gets a close frame
//! (1001, going away) before the TCP close.

use std::sync::atomic::{AtomicBool, Ordering};

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::drain::Cut;

/// The protocol a request asks to upgrade to, when it asks for WebSocket
/// (`Connection` names `upgrade`, `Upgrade` names `websocket`). Any other
/// upgrade is dropped with the hop-by-hop headers and the request answered
/// in HTTP/1.1: an `h2c` tunnel would carry requests past the proxy unseen.
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
        .filter(is_websocket)
}

/// Whether the upgrade is to WebSocket (whose frames the tunnel follows).
pub fn is_websocket(protocol: &HeaderValue) -> bool {
    protocol.to_str().is_ok_and(|p| {
        p.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
    })
}

/// Puts back the two headers an upgrade needs, after the hop-by-hop rule
/// took them out (on the request to the instance and on its `101`).
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// The close frame a client gets when the drain deadline closes its
/// tunnel: 1001 "going away" (RFC 6455 7.4.1), unmasked as a server's.
pub const GOING_AWAY: [u8; 14] = [
    0x88, 12, 0x03, 0xE9, b'g', b'o', b'i', b'n', b'g', b' ', b'a', b'w', b'a', b'y',
];

/// Joins the client's upgraded connection to the instance's until either
/// closes or `cut` comes; `hold` (the request's count and the client
/// connection's busy mark) lives as long as the tunnel.
pub async fn run<H>(
    client: OnUpgrade,
    upstream: OnUpgrade,
    websocket: bool,
    mut cut: Cut,
    hold: H,
) {
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        return;
    };
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut up_read, mut up_write) = tokio::io::split(TokioIo::new(upstream));
    let boundary = AtomicBool::new(true);
    let was_cut = {
        let up = async {
            let _ = tokio::io::copy(&mut client_read, &mut up_write).await;
            let _ = up_write.shutdown().await;
        };
        let down = async {
            copy_down(&mut up_read, &mut client_write, websocket, &boundary).await;
        };
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            () = cut.wait() => true,
        }
    };
    if was_cut && websocket && boundary.load(Ordering::SeqCst) {
        let _ = client_write.write_all(&GOING_AWAY).await;
    }
    let _ = client_write.shutdown().await;
    drop(hold);
}

/// Copies the instance's bytes to the client; `boundary` says, between
/// writes, whether the client has been sent whole frames only.
async fn copy_down<R, W>(from: &mut R, to: &mut W, websocket: bool, boundary: &AtomicBool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut cursor = FrameCursor::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        boundary.store(false, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            return;
        }
        boundary.store(websocket && cursor.feed(&buf[..n]), Ordering::SeqCst);
    }
    let _ = to.shutdown().await;
}

/// Where a stream of WebSocket frames is: in a frame's header (how much of
/// it has come) or in its payload (how much is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCursor {
    /// `have` bytes of a header so far (0: between frames).
    Header { have: usize, bytes: [u8; 14] },
    /// `left` payload bytes until the frame ends.
    Payload { left: u64 },
}

impl Default for FrameCursor {
    fn default() -> Self {
        FrameCursor::Header {
            have: 0,
            bytes: [0; 14],
        }
    }
}

impl FrameCursor {
    /// Follows `data`; whether it ended exactly between two frames.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            match self {
                FrameCursor::Payload { left } => {
                    let take = (*left).min(data.len() as u64);
                    *left -= take;
                    data = &data[take as usize..];
                    if *left == 0 {
                        *self = FrameCursor::default();
                    }
                }
                FrameCursor::Header { have, bytes } => {
                    bytes[*have] = data[0];
                    *have += 1;
                    data = &data[1..];
                    if let Some(payload) = header_done(&bytes[..*have]) {
                        *self = match payload {
                            0 => FrameCursor::default(),
                            left => FrameCursor::Payload { left },
                        };
                    }
                }
            }
        }
        matches!(self, FrameCursor::Header { have: 0, .. })
    }
}

/// A frame header's payload length once `header` holds all of it.
fn header_done(header: &[u8]) -> Option<u64> {
    if header.len() < 2 {
        return None;
    }
    let masked = header[1] & 0x80 != 0;
    let short = header[1] & 0x7f;
    let extended = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let full = 2 + extended + if masked { 4 } else { 0 };
    if header.len() < full {
        return None;
    }
    Some(match short {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => header[2..10]
            .iter()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
        n => u64::from(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x81];
        let mask = if masked { 0x80 } else { 0 };
        match payload {
            0..=125 => f.push(mask | payload as u8),
            126..=65535 => {
                f.push(mask | 126);
                f.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                f.push(mask | 127);
                f.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', payload));
        f
    }

    #[test]
    fn the_cursor_is_at_a_boundary_only_between_whole_frames() {
        for (size, masked) in [
            (0, false),
            (5, false),
            (125, true),
            (300, false),
            (70_000, true),
        ] {
            let bytes = frame(size, masked);
            let mut whole = FrameCursor::default();
            assert!(whole.feed(&bytes), "one frame of {size} at once");
            // Byte by byte: a boundary only after the last one.
            let mut cursor = FrameCursor::default();
            for (i, b) in bytes.iter().enumerate() {
                let at = cursor.feed(std::slice::from_ref(b));
                assert_eq!(at, i + 1 == bytes.len(), "size {size}, byte {i}");
            }
        }
        let mut two = frame(3, false);
        two.extend(frame(200, false));
        let mut cursor = FrameCursor::default();
        assert!(!cursor.feed(&two[..10]));
        assert!(cursor.feed(&two[10..]));
    }

    #[test]
    fn an_upgrade_needs_both_headers_and_websocket_is_told_apart() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested(&h), None, "no Connection: upgrade");
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        let protocol = requested(&h).expect("asks");
        assert!(is_websocket(&protocol));
        assert!(!is_websocket(&HeaderValue::from_static("h2c")));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(requested(&h), None, "only WebSocket is tunnelled");
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut out = HeaderMap::new();
        restore(&mut out, protocol);
        assert_eq!(out[header::CONNECTION], "upgrade");
        assert_eq!(out[header::UPGRADE], "websocket");
        assert_eq!(&GOING_AWAY[2..4], &1001u16.to_be_bytes());
        assert_eq!(usize::from(GOING_AWAY[1]), GOING_AWAY.len() - 2);
    }
}
