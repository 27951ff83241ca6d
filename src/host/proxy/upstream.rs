//! The worker's HTTP/1.1 connections to its instances, kept alive per port.
//!
//! Hand-kept rather than hyper-util's pooled client: the worker has one
//! thread and two ports, so a last-in first-out list per port does what
//! that pool's hashing, locking, idle timer and per-request return task
//! cost on every request. A connection goes back to its list when its
//! answer has been read whole (see `Lease`); one that is closed, or not
//! ready for a request when taken, is dropped. The instance's own idle
//! timeout ends connections left idle.

use std::sync::{Mutex, PoisonError};

use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;

/// Why an exchange with an instance failed.
#[derive(Debug)]
pub enum Failed {
    /// The connection could not be made (refused: the instance is down).
    Connect(std::io::Error),
    /// The exchange on the connection failed.
    Http(hyper::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Connect(e) => write!(f, "cannot connect: {e}"),
            Failed::Http(e) => match std::error::Error::source(e) {
                Some(cause) => write!(f, "{e}: {cause}"),
                None => write!(f, "{e}"),
            },
        }
    }
}

impl Failed {
    /// Whether the instance went away (refused the connection, reset it, or
    /// closed it before an answer), rather than answering something that is
    /// not HTTP.
    pub fn went_away(&self) -> bool {
        let http = match self {
            Failed::Connect(_) => return true,
            Failed::Http(h) => h,
        };
        if http.is_incomplete_message() || http.is_closed() || http.is_canceled() {
            return true;
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(http);
        while let Some(err) = cause {
            if let Some(h) = err.downcast_ref::<hyper::Error>()
                && (h.is_incomplete_message() || h.is_closed() || h.is_canceled())
            {
                return true;
            }
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                )
            {
                return true;
            }
            cause = err.source();
        }
        false
    }
}

/// Idle connections to each of the two instance ports, most recent last.
pub struct Pool<B> {
    ports: [u16; 2],
    idle: [Mutex<Vec<SendRequest<B>>>; 2],
}

/// A connection on loan for one exchange; given back with [`Pool::give_back`]
/// once its answer has been read whole, else dropped (hyper then closes it).
pub struct Lease<B> {
    port: u16,
    sender: SendRequest<B>,
}

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// No connections yet to either of `ports`.
    pub fn new(ports: [u16; 2]) -> Pool<B> {
        Pool {
            ports,
            idle: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        }
    }

    fn idle(&self, port: u16) -> Option<&Mutex<Vec<SendRequest<B>>>> {
        let i = self.ports.iter().position(|p| *p == port)?;
        Some(&self.idle[i])
    }

    /// An idle connection to `port` that can take a request now.
    fn take(&self, port: u16) -> Option<SendRequest<B>> {
        let mut idle = self
            .idle(port)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Puts a connection whose answer was read whole back for the next request.
    pub fn give_back(&self, lease: Lease<B>) {
        if lease.sender.is_closed() {
            return;
        }
        if let Some(idle) = self.idle(lease.port) {
            idle.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(lease.sender);
        }
    }

    /// Sends `req` (its target and `Host` as the client gave them) to the
    /// instance on `port`, on an idle connection or a new one; a request an
    /// idle connection could not take (closed by the instance meanwhile)
    /// goes once more on a new one, as nothing of it was sent.
    pub async fn send(
        &self,
        port: u16,
        mut req: Request<B>,
    ) -> Result<(Response<Incoming>, Lease<B>), Failed> {
        target_instance(&mut req, port);
        if let Some(mut sender) = self.take(port) {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, Lease { port, sender })),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Failed::Http(e.into_error())),
                },
            }
        }
        let mut sender = connect(port).await?;
        sender.ready().await.map_err(Failed::Http)?;
        match sender.try_send_request(req).await {
            Ok(response) => Ok((response, Lease { port, sender })),
            Err(e) => Err(Failed::Http(e.into_error())),
        }
    }
}

/// A new connection to the instance on `port` (`TCP_NODELAY`: a request's
/// head and body may go in two writes), its exchanges driven by a task of
/// their own, upgrades allowed.
async fn connect<B>(port: u16) -> Result<SendRequest<B>, Failed>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(Failed::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(Failed::Http)?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok(sender)
}

/// The request as it goes to the instance on `port`: the target in origin
/// form (authority form for `CONNECT`), `Host` set to the instance when
/// the client sent none.
fn target_instance<B>(req: &mut Request<B>, port: u16) {
    if req.method() == Method::CONNECT {
        if let Ok(uri) = Uri::try_from(format!("127.0.0.1:{port}")) {
            *req.uri_mut() = uri;
        }
    } else if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let mut parts = hyper::http::uri::Parts::default();
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    }
    if !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::try_from(format!("127.0.0.1:{port}"))
    {
        req.headers_mut().insert(header::HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str, method: Method, host: Option<&str>) -> Request<()> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        let mut req = req.body(()).unwrap();
        target_instance(&mut req, 8081);
        req
    }

    #[test]
    fn an_origin_form_target_goes_as_it_came_with_the_clients_host() {
        let req = target("/a/b?c=d", Method::GET, Some("example.org"));
        assert_eq!(req.uri(), "/a/b?c=d");
        assert_eq!(req.headers()[header::HOST], "example.org");
    }

    #[test]
    fn an_absolute_target_goes_in_origin_form() {
        let req = target("http://example.org/x?y", Method::GET, Some("example.org"));
        assert_eq!(req.uri().to_string(), "/x?y");
        let req = target("http://example.org", Method::GET, Some("example.org"));
        assert_eq!(req.uri().to_string(), "/");
    }

    #[test]
    fn a_request_without_host_names_the_instance() {
        let req = target("/", Method::GET, None);
        assert_eq!(req.headers()[header::HOST], "127.0.0.1:8081");
    }

    /// An instance on 127.0.0.1 answering `ok` to each request head; it
    /// closes a connection after `per_connection` answers. Counts connections.
    async fn instance(
        per_connection: usize,
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    for _ in 0..per_connection {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    /// One GET through `pool` to `port`, its answer read whole, its
    /// connection given back.
    async fn get(pool: &Pool<http_body_util::Empty<bytes::Bytes>>, port: u16) -> String {
        use http_body_util::BodyExt;
        let req = Request::get("/")
            .body(http_body_util::Empty::new())
            .unwrap();
        let (response, lease) = pool.send(port, req).await.expect("an answer");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        pool.give_back(lease);
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_kept_alive_connection() {
        let (port, accepted) = instance(usize::MAX).await;
        let pool = Pool::new([port, 1]);
        for _ in 0..5 {
            assert_eq!(get(&pool, port).await, "ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_while_idle_is_replaced_without_an_error() {
        let (port, accepted) = instance(1).await;
        let pool = Pool::new([port, 1]);
        for _ in 0..3 {
            assert_eq!(get(&pool, port).await, "ok");
            // The instance's close reaches the connection's task.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_instance_that_is_not_listening_went_away() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let pool: Pool<http_body_util::Empty<bytes::Bytes>> = Pool::new([port, 1]);
        let req = Request::get("/")
            .body(http_body_util::Empty::new())
            .unwrap();
        let failed = pool.send(port, req).await.err().expect("refused");
        assert!(failed.went_away(), "{failed}");
    }

    #[test]
    fn connect_goes_in_authority_form_to_the_instance() {
        let req = target("example.org:443", Method::CONNECT, Some("example.org:443"));
        assert_eq!(req.uri().to_string(), "127.0.0.1:8081");
    }
}
