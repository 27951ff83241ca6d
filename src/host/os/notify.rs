//! The sd_notify protocol, spoken by `service run` under systemd
//! (`Type=notify`): newline-separated `KEY=VALUE` lines in one datagram to
//! the Unix socket named by `NOTIFY_SOCKET`; a leading `@` names a socket in
//! the abstract namespace.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to send notifications, and how often the watchdog wants to hear from us.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
    /// `WATCHDOG_USEC`, when set for this process.
    pub watchdog: Option<Duration>,
}

#[derive(Debug)]
enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`; `None` when
    /// nobody listens.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .filter(|_| {
                // The watchdog may be meant for another process of the unit.
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|pid| pid == std::process::id())
            })
            .map(Duration::from_micros);
        Notifier::new(socket.as_encoded_bytes(), watchdog).ok()
    }

    /// A notifier for the socket `address` (`@name` for the abstract namespace).
    pub fn new(address: &[u8], watchdog: Option<Duration>) -> io::Result<Notifier> {
        let target = match address.split_first() {
            Some((b'@', name)) => Target::Abstract(name.to_vec()),
            Some((b'/', _)) => {
                use std::os::unix::ffi::OsStrExt;
                Target::Path(std::ffi::OsStr::from_bytes(address).into())
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET must be an absolute path or start with @",
                ));
            }
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
            watchdog,
        })
    }

    /// Sends one notification, e.g. `READY=1\nSTATUS=healthy`. Failures are
    /// ignored: the service runs whether or not anyone listens.
    pub fn send(&self, message: &str) {
        let _ = match &self.target {
            Target::Path(path) => self.socket.send_to(message.as_bytes(), path),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| self.socket.send_to_addr(message.as_bytes(), &addr))
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_the_abstract_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(path.as_os_str().as_encoded_bytes(), None).expect("notifier");
        n.send("READY=1\nSTATUS=ok");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("shipjar-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let server = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let n = Notifier::new(format!("@{name}").as_bytes(), None).expect("notifier");
        n.send("STOPPING=1");
        let len = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STOPPING=1");

        assert!(Notifier::new(b"relative", None).is_err());
    }
}
