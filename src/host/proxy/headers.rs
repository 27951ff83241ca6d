//! The headers the proxy passes on and the ones it sets, in that order:
//! hop-by-hop headers go first (the fixed list and what `Connection` names,
//! except what the proxy relies on), then forwarding headers from a peer it
//! does not trust, and the proxy's own headers are set last, so nothing a
//! client sends can remove or replace them.

use std::io::Write;
use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection and are
/// never forwarded. A `Connection: close` from a stopping instance must not
/// close the client's connection; the outgoing framing (`Transfer-Encoding`)
/// is hyper's, from the body it sends.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that say who the client is and how it came in: from a peer not
/// in `trusted_proxies` they are a client's claim about itself, and dropped.
const FORWARDING: [HeaderName; 5] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    X_REAL_IP,
];

/// What a `Connection` list may not remove: the end-to-end headers the
/// proxy relies on. `Host` names the site (and is the instance's view of
/// it), `Content-Length` frames a message, and the forwarding headers are
/// kept or dropped by the trust rule alone.
fn protected(name: &HeaderName) -> bool {
    *name == header::HOST || *name == header::CONTENT_LENGTH || FORWARDING.contains(name)
}

/// Drops the hop-by-hop headers: the fixed list, and what `Connection`
/// names unless it is protected.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names they have, not a
    // hashed lookup per listed name (`Connection` is on the list).
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !protected(n))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A request's headers as the instance gets them from a client at `peer`
/// (`trusted`: the peer is in `trusted_proxies`): hop-by-hop headers gone,
/// a distrusted peer's forwarding headers gone, then the proxy's own set:
/// `X-Forwarded-For` (a trusted peer's list appended to), and
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (a trusted peer's kept).
/// `proto`: `http`, or `https` where the proxy terminates TLS.
pub fn forward_request(headers: &mut HeaderMap, peer: IpAddr, trusted: bool, proto: &'static str) {
    strip_hop_by_hop(headers);
    if !trusted && headers.keys().any(|n| FORWARDING.contains(n)) {
        for name in FORWARDING {
            headers.remove(name);
        }
    }
    // Several header lines are one comma-separated list (RFC 9110 5.3);
    // written into one buffer that becomes the value without a copy.
    let mut chain: Vec<u8> = Vec::with_capacity(64);
    for value in headers.get_all(X_FORWARDED_FOR) {
        chain.extend_from_slice(value.as_bytes());
        chain.extend_from_slice(b", ");
    }
    let _ = write!(chain, "{}", peer.to_canonical());
    // Header values never hold the bytes `from_maybe_shared` refuses, nor
    // does an address: only the address goes on when they would.
    let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(chain))
        .or_else(|e| HeaderValue::from_str(&peer.to_canonical().to_string()).map_err(|_| e));
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(X_FORWARDED_HOST)
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    const CLIENT: &str = "203.0.113.9";

    #[test]
    fn connection_cannot_remove_what_the_proxy_relies_on() {
        let mut h = request(&[
            ("host", "example.com"),
            (
                "connection",
                "close, X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, Host",
            ),
            (
                "connection",
                "Content-Length, Forwarded, X-Real-IP, x-private",
            ),
            ("content-length", "3"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("cookie", "a=b"),
        ]);
        forward_request(&mut h, CLIENT.parse().unwrap(), false, "http");
        assert_eq!(all(&h, "host"), ["example.com"]);
        assert_eq!(all(&h, "content-length"), ["3"]);
        assert_eq!(all(&h, "x-forwarded-for"), [CLIENT]);
        assert_eq!(all(&h, "x-forwarded-host"), ["example.com"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "cookie"), ["a=b"]);
        for gone in [
            "connection",
            "x-private",
            "keep-alive",
            "te",
            "forwarded",
            "x-real-ip",
        ] {
            assert!(!h.contains_key(gone), "{gone}: {h:?}");
        }
    }

    #[test]
    fn a_distrusted_peers_forwarding_headers_are_replaced() {
        let mut h = request(&[
            ("host", "example.com"),
            ("forwarded", "for=10.0.0.1;proto=https"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "admin.internal"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "10.0.0.1"),
        ]);
        forward_request(&mut h, CLIENT.parse().unwrap(), false, "http");
        assert_eq!(all(&h, "x-forwarded-for"), [CLIENT]);
        assert_eq!(all(&h, "x-forwarded-host"), ["example.com"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-real-ip"));
    }

    #[test]
    fn a_trusted_peers_list_is_appended_to_and_its_view_kept() {
        let mut h = request(&[
            ("host", "10.0.0.5:8080"),
            ("forwarded", "for=198.51.100.1;proto=https"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-host", "shop.example"),
            ("x-forwarded-proto", "https"),
            ("connection", "x-forwarded-for"),
        ]);
        forward_request(&mut h, "::ffff:10.0.0.3".parse().unwrap(), true, "http");
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["198.51.100.1, 10.0.0.2, 10.0.0.3"]
        );
        assert_eq!(all(&h, "x-forwarded-host"), ["shop.example"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&h, "forwarded"), ["for=198.51.100.1;proto=https"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_keeps_every_header() {
        let mut h = request(&[("host", "example.com"), ("accept", "*/*"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3);
        forward_request(&mut h, "::ffff:203.0.113.9".parse().unwrap(), false, "http");
        assert_eq!(all(&h, "accept"), ["*/*"]);
        assert_eq!(all(&h, "x-forwarded-for"), [CLIENT]);
        assert_eq!(all(&h, "x-forwarded-host"), ["example.com"]);
    }

    #[test]
    fn responses_keep_their_length_and_lose_hop_by_hop() {
        let mut h = request(&[
            ("connection", "close, content-length, x-hop"),
            ("content-length", "12"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(all(&h, "content-length"), ["12"]);
        assert!(!h.contains_key("x-hop"));
        assert!(!h.contains_key("connection"));
        assert!(!h.contains_key("transfer-encoding"));
    }
}
