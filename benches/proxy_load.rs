//! A fixed-rate HTTP/1.1 keep-alive load generator for bench/proxy.sh:
//! `cargo bench --bench proxy_load -- PORT RATE SECONDS CONNECTIONS PATH`.
//! Each connection sends its share of RATE requests per second on a fixed
//! schedule (a late request is not skipped), 127.0.0.1 only, for SECONDS.
//! Prints one JSON line: requests, failures, latency percentiles, the rate
//! achieved and the longest time without a successful answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Sample {
    /// When the answer came, from the run's start.
    at: Duration,
    latency: Duration,
    ok: bool,
}

fn connect(port: u16) -> Option<BufReader<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    Some(BufReader::new(s))
}

/// One request on the connection; `Err` when the connection failed.
fn get(conn: &mut BufReader<TcpStream>, request: &[u8]) -> Result<u16, ()> {
    conn.get_mut().write_all(request).map_err(|_| ())?;
    let mut line = String::new();
    if conn.read_line(&mut line).map_err(|_| ())? == 0 {
        return Err(());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(())?;
    let mut length = 0usize;
    let mut close = false;
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h).map_err(|_| ())? == 0 {
            return Err(());
        }
        if h == "\r\n" {
            break;
        }
        let h = h.to_ascii_lowercase();
        if let Some(v) = h.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| ())?;
        }
        close |= h.starts_with("connection: close");
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).map_err(|_| ())?;
    if close {
        // Counted as answered; the next request opens a new connection.
        return Ok(status | 0x8000);
    }
    Ok(status)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let port: u16 = arg(0, "8080").parse().expect("PORT");
    let rate: f64 = arg(1, "500").parse().expect("RATE");
    let seconds: f64 = arg(2, "10").parse().expect("SECONDS");
    let conns: usize = arg(3, "4").parse().expect("CONNECTIONS");
    let path = arg(4, "/version");
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
    let start = Instant::now();
    let run = Duration::from_secs_f64(seconds);
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let request = request.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut conn = connect(port);
                let mut next = start + interval.mul_f64(i as f64 / conns as f64);
                let end = start + run;
                // Bounded both ways: by the schedule and by the clock (a rate
                // above what the server can do turns into a closed loop).
                while next < end && Instant::now() < end {
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    let result = match conn.as_mut() {
                        Some(c) => get(c, &request),
                        None => Err(()),
                    };
                    let ok = matches!(result, Ok(s) if s & 0x7fff == 200);
                    if result.is_err() || matches!(result, Ok(s) if s & 0x8000 != 0) {
                        conn = connect(port);
                    }
                    samples.push(Sample {
                        at: sent.duration_since(start) + sent.elapsed(),
                        latency: sent.elapsed(),
                        ok,
                    });
                    next += interval;
                }
                samples
            })
        })
        .collect();
    let mut all: Vec<Sample> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("load thread"))
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    let failed = all.iter().filter(|s| !s.ok).count();
    let mut ok_latencies: Vec<Duration> = all.iter().filter(|s| s.ok).map(|s| s.latency).collect();
    ok_latencies.sort();
    let pct = |p: f64| {
        ok_latencies
            .get(((ok_latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    all.sort_by_key(|s| s.at);
    let mut last_ok = Duration::ZERO;
    let mut gap = Duration::ZERO;
    for s in all.iter().filter(|s| s.ok) {
        gap = gap.max(s.at.saturating_sub(last_ok));
        last_ok = s.at;
    }
    println!(
        "{{\"requests\":{},\"failed\":{failed},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"rps\":{:.1},\"longest_gap_ms\":{}}}",
        all.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        (all.len() - failed) as f64 / elapsed,
        gap.as_millis()
    );
}
