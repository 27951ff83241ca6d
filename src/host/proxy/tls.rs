//! TLS termination (`[proxy] tls`): rustls with the ring provider, the
//! certificate and key read from PEM files on the host and read again when
//! either file changes (looked at every [`RECHECK`]), so a renewed
//! certificate takes effect for new connections without a restart and
//! without closing one. A change that does not load (half-written, a key
//! that does not match) keeps the previous pair and says so in the log.
//! Neither file's contents ever reach a message: errors name the path.
//!
//! With `redirect`, a plain-HTTP listener answers every request with `308`
//! to the same path over HTTPS.

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::protocol::manifest::TlsSpec;

/// How often the files are looked at for a change.
pub const RECHECK: Duration = Duration::from_secs(2);
/// The descriptor the keeper hands the redirect socket over on.
pub const REDIRECT_FD: i32 = 5;
/// Set (to [`REDIRECT_FD`]) in a worker's environment when the keeper handed it over.
pub const REDIRECT_FD_ENV: &str = "SHIPJAR_PROXY_REDIRECT_FD";

/// What identifies a file's version: its inode, size and modification time.
type Stamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// The certificate and key in use, read again when the files change.
pub struct Tls {
    acceptor: TlsAcceptor,
    pair: Arc<Pair>,
}

/// The files and what was last loaded from them.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Stamp, Stamp)>,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: a key's bytes are never printed.
        write!(f, "Pair({}, {})", self.cert.display(), self.key.display())
    }
}

impl ResolvesServerCert for Pair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.loaded
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Reads both files; an error names the file and what is wrong with it.
fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("{}: cannot be read: {e}", path.display()))
    };
    pair_from_pem(cert, &read(cert)?, key, &read(key)?, provider).map(Arc::new)
}

/// The pair in `cert_pem` and `key_pem` (read from `cert` and `key`, named
/// in errors), checked to belong together.
fn pair_from_pem(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: no PEM certificate read: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no PEM certificate", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{}: no PEM private key read: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "{} and {} do not make a usable pair: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// Whether the certificate and key `shipjar check` read make a pair the
/// proxy can serve.
pub fn check_pair(cert: &Path, cert_pem: &[u8], key: &Path, key_pem: &[u8]) -> Result<(), String> {
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    pair_from_pem(cert, cert_pem, key, key_pem, &provider).map(|_| ())
}

impl Pair {
    /// Loads the pair again when a file changed since the last look.
    fn recheck(&self) {
        let now = (stamp(&self.cert), stamp(&self.key));
        let mut seen = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        if *seen == now {
            return;
        }
        *seen = now;
        match load(&self.cert, &self.key, &self.provider) {
            Ok(pair) => {
                *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = pair;
                eprintln!(
                    "shipjar proxy: TLS certificate read again from {} (new connections use it)",
                    self.cert.display()
                );
            }
            Err(e) => eprintln!("shipjar proxy: TLS: keeps the previous certificate: {e}"),
        }
    }
}

impl Tls {
    /// The pair `spec` names, loaded now: an error when it cannot be.
    pub fn new(spec: &TlsSpec) -> Result<Arc<Tls>, String> {
        // ring rather than aws-lc-rs: no C library to build; the price is
        // no post-quantum key exchange, which is why rustls deprecates it.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = (PathBuf::from(&spec.cert), PathBuf::from(&spec.key));
        let stamps = (stamp(&cert), stamp(&key));
        let loaded = load(&cert, &key, &provider)?;
        let pair = Arc::new(Pair {
            cert,
            key,
            provider: provider.clone(),
            loaded: RwLock::new(loaded),
            stamps: Mutex::new(stamps),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(pair.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            pair,
        }))
    }

    /// Looks at the files every [`RECHECK`] until the worker ends.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RECHECK).await;
            self.pair.recheck();
        }
    }

    /// The handshake with a new client, at most `within`.
    pub async fn accept(&self, stream: TcpStream, within: Duration) -> io::Result<Client> {
        match tokio::time::timeout(within, self.acceptor.accept(stream)).await {
            Ok(stream) => Ok(Client::Tls(Box::new(stream?))),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no TLS handshake within header_timeout",
            )),
        }
    }
}

/// A client's connection: plain, or TLS terminated here.
pub enum Client {
    /// HTTP.
    Plain(TcpStream),
    /// HTTPS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Client::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Client::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Client {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Client::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Client::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Client::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Client::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Client::Plain(s) => s.is_write_vectored(),
            Client::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Client::Plain(s) => Pin::new(s).poll_flush(cx),
            Client::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Client::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Client::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The redirect socket the keeper handed over, when it did.
pub fn redirect_handed_over() -> Result<Option<tokio::net::TcpListener>, String> {
    if std::env::var(REDIRECT_FD_ENV).ok().as_deref() != Some(&REDIRECT_FD.to_string()) {
        return Ok(None);
    }
    // SAFETY: the keeper put a listening TCP socket on this descriptor for
    // us alone, and said so in the environment.
    let listener =
        unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(REDIRECT_FD) };
    listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
        .map(Some)
        .map_err(|e| format!("the redirect socket: {e}"))
}

/// Answers every request on `listener` with `308` to HTTPS on `port`.
pub async fn serve_redirect(listener: tokio::net::TcpListener, port: u16, within: Duration) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: wait, never spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = redirect(&req, port);
                async move { Ok::<_, Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(within, connection).await;
        });
    }
}

/// `308 Location: https://HOST[:port]/path?query`, from the request's `Host`.
fn redirect<B>(req: &Request<B>, port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok());
    let Some(host) = host else {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"a Host header is needed to redirect to HTTPS\n",
        )));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let port = match port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{port}{path}", host.host());
    let mut response = Response::new(Full::new(Bytes::from(format!("{location}\n"))));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_keeps_host_and_path_and_names_a_port_other_than_443() {
        let req = Request::builder()
            .uri("/a/b?c=d")
            .header(header::HOST, "example.test:80")
            .body(())
            .expect("a request");
        let answer = redirect(&req, 8443);
        assert_eq!(answer.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            answer.headers()[header::LOCATION],
            "https://example.test:8443/a/b?c=d"
        );
        assert_eq!(
            redirect(&req, 443).headers()[header::LOCATION],
            "https://example.test/a/b?c=d"
        );
        let no_host = Request::builder().uri("/").body(()).expect("a request");
        assert_eq!(redirect(&no_host, 443).status(), StatusCode::BAD_REQUEST);
    }
}
