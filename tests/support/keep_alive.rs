//! A keep-alive HTTP/1.1 client for the proxy tests on test hosts: one
//! connection, one request after another, every error kept.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// What a client saw: the versions answered, in order of change, every
/// error, and how many requests were answered 200.
#[derive(Debug, Default)]
pub struct Seen {
    /// `version` of each answer, consecutive repeats folded.
    pub versions: Vec<String>,
    /// Every failed request (status, body) or connection error.
    pub errors: Vec<String>,
    /// Requests answered 200.
    pub answered: usize,
}

/// One HTTP/1.1 keep-alive connection, one request at a time.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// A connection to 127.0.0.1:`port`; panics when nothing answers.
    pub fn local(port: u16) -> Conn {
        Conn::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect to the proxy")
    }

    /// A connection to `addr`, or why not.
    pub fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Status and body, or what went wrong.
    pub fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: hello.test\r\n\r\n");
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line `{line}`"))?;
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            self.reader
                .read_line(&mut header)
                .map_err(|e| format!("read: {e}"))?;
            if header.is_empty() {
                return Err("connection closed in the headers".into());
            }
            if header == "\r\n" {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().map_err(|_| "bad content-length")?;
            }
            if lower.starts_with("connection: close") {
                return Err("the proxy asked to close the connection".into());
            }
        }
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Asks `addr` for /version on one keep-alive connection, without pause,
/// until `stop` (at most 10 minutes).
pub fn spawn(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<Seen> {
    spawn_asking(addr, "/version", stop)
}

/// [`spawn`] asking for `path` (an answer's `version`, or its body, is what it saw).
pub fn spawn_asking(
    addr: SocketAddr,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Seen> {
    thread::spawn(move || {
        let mut seen = Seen::default();
        let mut conn = None;
        let started = Instant::now();
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
            if conn.is_none() {
                match Conn::connect(addr) {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        seen.errors.push(e);
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match c.get(path) {
                Ok((200, body)) => {
                    seen.answered += 1;
                    let v = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["version"].as_str().map(str::to_string))
                        .unwrap_or(body);
                    if seen.versions.last() != Some(&v) {
                        seen.versions.push(v);
                    }
                }
                Ok((status, body)) => seen.errors.push(format!("{status}: {body}")),
                Err(e) => {
                    seen.errors.push(e);
                    conn = None;
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}
