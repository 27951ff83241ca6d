//! Hand-written clients for the proxy's data-path tests, over std
//! TcpStream: a minimal WebSocket client (RFC 6455: the handshake, masked
//! text frames, close), and one HTTP/1.1 exchange read to its end that
//! tells a whole body (its length, or the last chunk) from a cut one —
//! which is what an SSE stream's clean end or a cut connection look like.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long any read waits.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A frame as the client got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text frame.
    Text(String),
    /// A close frame: its status (if any) and reason.
    Close(Option<u16>, String),
    /// Any other frame: its opcode.
    Other(u8),
}

/// One WebSocket connection.
pub struct Ws {
    stream: TcpStream,
    /// Bytes read past what was consumed.
    buf: Vec<u8>,
    /// A counter the masks are drawn from (a test needs no secret mask).
    mask: u32,
}

impl Ws {
    /// Connects to 127.0.0.1:`port` and upgrades `path`; the response
    /// head when it was not a `101`.
    pub fn connect(port: u16, path: &str) -> Result<Ws, String> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut ws = Ws {
            stream,
            buf: Vec::new(),
            mask: std::process::id(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: hello.test\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        ws.stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let head = ws
            .read_head()
            .map_err(|e| format!("read the answer: {e}"))?;
        // The RFC's own sample key, so its accept value is known.
        if !head.starts_with("HTTP/1.1 101") || !head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
            return Err(format!("not upgraded: {head}"));
        }
        Ok(ws)
    }

    fn read_head(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Ok(String::from_utf8_lossy(&head).into_owned());
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Sends one masked frame.
    fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.mask = self.mask.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let mask = self.mask.to_be_bytes();
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame)
    }

    /// Sends a text frame.
    pub fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(0x1, text.as_bytes())
    }

    /// Sends a close frame with `code`.
    pub fn send_close(&mut self, code: u16) -> io::Result<()> {
        self.send(0x8, &code.to_be_bytes())
    }

    /// The next frame from the server (unmasked, unfragmented).
    pub fn recv(&mut self) -> io::Result<Message> {
        let head = self.take(2)?;
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let b = self.take(2)?;
                u64::from(u16::from_be_bytes([b[0], b[1]]))
            }
            127 => self
                .take(8)?
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
            n => u64::from(n),
        };
        let payload = self.take(len as usize)?;
        Ok(match opcode {
            0x1 => Message::Text(String::from_utf8_lossy(&payload).into_owned()),
            0x8 => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                Message::Close(code, reason.into_owned())
            }
            other => Message::Other(other),
        })
    }

    /// Sends `text` and returns the text answered.
    pub fn ask(&mut self, text: &str) -> Result<String, String> {
        self.send_text(text)
            .map_err(|e| format!("send {text:?}: {e}"))?;
        match self.recv() {
            Ok(Message::Text(answer)) => Ok(answer),
            other => Err(format!("answer to {text:?}: {other:?}")),
        }
    }

    /// Closes with 1000 and waits for the server's close; Ok when it came.
    pub fn close(mut self) -> Result<(), String> {
        self.send_close(1000)
            .map_err(|e| format!("send close: {e}"))?;
        match self.recv() {
            Ok(Message::Close(Some(1000), _)) => Ok(()),
            other => Err(format!("the answer to a close: {other:?}")),
        }
    }

    /// Whether the server ended the connection (EOF) after what was read.
    pub fn ended(&mut self) -> bool {
        matches!(self.fill(), Err(e) if e.kind() == io::ErrorKind::UnexpectedEof)
    }
}

/// One HTTP/1.1 answer read to its end.
#[derive(Debug, Default)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The head, as text (status line and headers).
    pub head: String,
    /// The body as received (chunked bodies decoded).
    pub body: Vec<u8>,
    /// Whether the body ended as its framing says (its length, or the last chunk).
    pub whole: bool,
    /// With `on_data`: how the body came, piece by piece.
    pub pieces: usize,
}

impl Answer {
    /// A header's value (name in any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` (whole, with `Connection: close`) to 127.0.0.1:`port`
/// and reads the answer to its end; `on_data` sees the body as it comes.
pub fn exchange(
    port: u16,
    request: &[u8],
    mut on_data: impl FnMut(&[u8]),
) -> Result<Answer, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    let mut reader = Reader {
        stream,
        buf: Vec::new(),
    };
    let head = reader.head().map_err(|e| format!("read the head: {e}"))?;
    let mut answer = Answer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head,
        ..Answer::default()
    };
    if answer
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        answer.whole = reader.chunked(&mut answer.body, &mut answer.pieces, &mut on_data);
    } else if let Some(len) = answer
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        while reader.buf.len() < len && reader.fill().unwrap_or(false) {}
        answer.body = reader.buf.drain(..len.min(reader.buf.len())).collect();
        answer.whole = answer.body.len() == len;
        on_data(&answer.body);
    } else {
        while reader.fill().unwrap_or(false) {}
        answer.body = std::mem::take(&mut reader.buf);
        answer.whole = true;
        on_data(&answer.body);
    }
    Ok(answer)
}

/// A GET of `path` with `Connection: close` and `extra` header lines.
pub fn get(port: u16, path: &str, extra: &str) -> Result<Answer, String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: hello.test\r\n{extra}Connection: close\r\n\r\n");
    exchange(port, request.as_bytes(), |_| {})
}

struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    /// More bytes; false at the end (or an error: a cut connection).
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    fn head(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Ok(String::from_utf8_lossy(&head).into_owned());
            }
            if !self.fill()? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no head"));
            }
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if !self.fill().unwrap_or(false) {
                return None;
            }
        }
    }

    /// A chunked body into `body`; whether it ended with its last chunk.
    fn chunked(
        &mut self,
        body: &mut Vec<u8>,
        pieces: &mut usize,
        on_data: &mut impl FnMut(&[u8]),
    ) -> bool {
        loop {
            let Some(line) = self.line() else {
                return false;
            };
            let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            else {
                return false;
            };
            if size == 0 {
                return self.line().is_some();
            }
            while self.buf.len() < size + 2 {
                if !self.fill().unwrap_or(false) {
                    return false;
                }
            }
            let data: Vec<u8> = self.buf.drain(..size).collect();
            self.buf.drain(..2);
            *pieces += 1;
            on_data(&data);
            body.extend_from_slice(&data);
        }
    }
}

/// The `data:` lines of an SSE body, in order.
pub fn event_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: ").map(str::to_string))
        })
        .collect()
}
