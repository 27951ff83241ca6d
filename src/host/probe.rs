//! HTTP and TCP probes against the service on this host.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Result of one HTTP GET.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Body as text (lossy UTF-8), at most [`MAX_BODY`] bytes.
    pub body: String,
}

/// Most of a body we read: health answers are tiny, but a version answer
/// must arrive whole to be checked (a long version string is still a
/// version); a message shows only its start (`said`).
const MAX_BODY: u64 = 64 * 1024;

/// Most of a failed answer's body that a message shows.
const SAID_CHARS: usize = 200;

/// The start of a failed answer's body, on one line, which is where a
/// service says what it is missing: masked with the active masker before it
/// is cut, so no part of a secret is kept.
pub fn said(body: &str) -> String {
    one_line_start(&crate::host::secrets::mask(body))
}

/// The first [`SAID_CHARS`] characters of `masked` with its whitespace runs
/// made single spaces, `…` when cut.
fn one_line_start(masked: &str) -> String {
    let one_line = masked.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut start: String = one_line.chars().take(SAID_CHARS).collect();
    if start.len() < one_line.len() {
        start.push('…');
    }
    start
}

/// An agent for one probe against this host.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // A status is an answer for the caller to judge, not an error.
        .http_status_as_error(false)
        // A redirect is an answer too: following it could leave the host.
        .max_redirects(0)
        // Probes talk to this host; an http_proxy in the environment must not
        // route them elsewhere.
        .proxy(None)
        .build()
        .into()
}

/// Why a probe got no answer, in the words a log line needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// Nothing listens there (the connect was refused).
    Refused,
    /// No answer within the timeout.
    TimedOut,
    /// Anything else, as the HTTP client or the kernel said it.
    Other(String),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::Refused => f.write_str("connection refused"),
            NoAnswer::TimedOut => f.write_str("timed out"),
            NoAnswer::Other(e) => f.write_str(e),
        }
    }
}

impl NoAnswer {
    fn of_io(e: &std::io::Error) -> NoAnswer {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => NoAnswer::Refused,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => NoAnswer::TimedOut,
            _ => NoAnswer::Other(e.to_string()),
        }
    }

    fn of_ureq(e: ureq::Error) -> NoAnswer {
        match e {
            ureq::Error::Timeout(_) => NoAnswer::TimedOut,
            ureq::Error::Io(io) => NoAnswer::of_io(&io),
            other => NoAnswer::Other(other.to_string()),
        }
    }
}

/// GETs `url` with an overall timeout; any status code is an answer.
pub fn http_get(url: &str, timeout: Duration) -> Result<HttpAnswer, String> {
    http_get_answer(url, timeout).map_err(|e| e.to_string())
}

/// [`http_get`] saying why there was no answer.
pub fn http_get_answer(url: &str, timeout: Duration) -> Result<HttpAnswer, NoAnswer> {
    let response = agent(timeout).get(url).call().map_err(NoAnswer::of_ureq)?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(MAX_BODY)
        .read_to_end(&mut body)
        .map_err(|e| match NoAnswer::of_io(&e) {
            NoAnswer::Other(e) => NoAnswer::Other(format!("reading the body: {e}")),
            other => other,
        })?;
    Ok(HttpAnswer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// POSTs an empty body to `url` with an overall timeout; returns the status.
pub fn http_post(url: &str, timeout: Duration) -> Result<u16, String> {
    let response = agent(timeout)
        .post(url)
        .send_empty()
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

/// Connects to 127.0.0.1:`port` within `timeout`.
pub fn tcp_connect(port: u16, timeout: Duration) -> Result<(), NoAnswer> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, timeout)
        .map(drop)
        .map_err(|e| match NoAnswer::of_io(&e) {
            NoAnswer::Other(e) => NoAnswer::Other(format!("connect to {addr}: {e}")),
            other => other,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// Serves one canned HTTP response on a free port.
    fn serve_once(response: impl AsRef<[u8]> + Send + 'static) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(response.as_ref());
            }
        });
        port
    }

    #[test]
    fn any_status_is_an_answer() {
        let port = serve_once(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy");
        let answer = http_get(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(2),
        )
        .expect("answer");
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body, "busy");
    }

    #[test]
    fn chunked_body_and_redirect_status() {
        let port = serve_once(
            b"HTTP/1.1 302 Found\r\nLocation: http://example.com/\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        let answer =
            http_get(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2)).expect("answer");
        assert_eq!(answer.status, 302);
        assert_eq!(answer.body, "abcde");
    }

    #[test]
    fn body_is_capped() {
        let body = vec![b'a'; 200 * 1024];
        let mut response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        response.extend_from_slice(&body);
        let port = serve_once(response);
        let answer =
            http_get(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2)).expect("answer");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), MAX_BODY as usize);
    }

    #[test]
    fn what_a_failed_answer_said_is_one_line_masked_before_it_is_cut() {
        use crate::protocol::mask::{Masker, SecretValue};
        let secret = "said-secret-8c2e41d0-77";
        // The process-wide masker is shared with other tests: mask with our own.
        let masker = Masker::new(&[SecretValue {
            value: secret.into(),
            allow_short: false,
        }]);
        let said = |body: &str| one_line_start(&masker.mask(body));
        assert_eq!(
            said("missing:\n  SERVICE_PROPERTIES is not set\n"),
            "missing: SERVICE_PROPERTIES is not set"
        );
        // The secret straddles the cut: masked first, so none of it is kept.
        let body = format!("{}\n{secret} and more", "e".repeat(195));
        let start = said(&body);
        assert_eq!(start, format!("{} ****…", "e".repeat(195)));
        assert!(!start.contains("said-"));
        assert_eq!(said(""), "");
    }

    #[test]
    fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let started = std::time::Instant::now();
        let result = http_get_answer(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_millis(300),
        );
        assert_eq!(result.err(), Some(NoAnswer::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    #[test]
    fn post_sends_an_empty_body() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).expect("read");
            let _ = conn.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let status = http_post(
            &format!("http://127.0.0.1:{port}/drain"),
            Duration::from_secs(2),
        )
        .expect("answer");
        assert_eq!(status, 202);
        let request = seen.join().expect("server");
        assert!(request.starts_with("POST /drain HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn refused_connection_is_an_error() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        assert_eq!(
            tcp_connect(port, Duration::from_millis(300)),
            Err(NoAnswer::Refused)
        );
        assert_eq!(
            http_get_answer(
                &format!("http://127.0.0.1:{port}/"),
                Duration::from_millis(300)
            )
            .err(),
            Some(NoAnswer::Refused)
        );
    }
}
