//! Who holds the listening socket of a port: the kernel's table of
//! listening TCP sockets gives their inodes, and `/proc/PID/fd` says which
//! processes hold them. The table is asked through netlink sock_diag for
//! LISTEN sockets only, which walks just the listening hash; reading
//! `/proc/net/tcp` walks every bucket of the machine's established hash and
//! cost the start-up gate, which looks every 10 ms, a quarter of a CPU-second
//! per JVM start; it stays as the fallback where sock_diag is unavailable.
//! A health check
//! only counts when the socket it reached belongs to the processes this
//! start launched, so an old instance still holding the port cannot make a
//! new start look healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use crate::protocol::manifest::HealthCheck;

use crate::host::os::procfs;

/// TCP state number of LISTEN in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// Who holds the listening socket of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// One of the given processes.
    Ours(i32),
    /// Another process, with its command name.
    Other(i32, String),
    /// A socket listens, but no process we are allowed to look at holds it.
    Unseen,
    /// Nothing listens on the port.
    Nobody,
}

/// The TCP port a health check reaches, if it reaches one.
pub fn check_port(check: &HealthCheck) -> Option<u16> {
    match check {
        HealthCheck::Http { url } => url_port(url),
        HealthCheck::Tcp { port } => Some(*port),
        HealthCheck::None => None,
    }
}

/// The port of an `http://host[:port]/…` URL (80 when none is given).
pub fn url_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // `[::1]:8080`: the port follows the closing bracket.
    let after_host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.1,
        None => authority,
    };
    match after_host.rsplit_once(':') {
        Some((_, port)) => port.parse().ok(),
        None => Some(80),
    }
}

/// Who holds the socket listening on `port`, checking `ours` first.
pub fn holder(port: u16, ours: &[i32]) -> Holder {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return Holder::Nobody;
    }
    if let Some(pid) = ours.iter().copied().find(|pid| holds(*pid, &inodes)) {
        return Holder::Ours(pid);
    }
    // Not ours: find out whose, for the message (only on this failure path,
    // so scanning every process is affordable).
    let all = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
    for pid in all {
        if holds(pid, &inodes) {
            return Holder::Other(pid, command_name(pid));
        }
    }
    Holder::Unseen
}

/// Whether anything listens on `port` (IPv4 or IPv6): one read of the
/// kernel's socket tables, no connection the service would see.
pub fn listening(port: u16) -> bool {
    !listening_inodes(port).is_empty()
}

/// The TCP ports the processes `pids` listen on, in order.
pub fn ports_held_by(pids: &[i32]) -> Vec<u16> {
    let by_inode: BTreeMap<u64, u16> = listening_sockets().into_iter().collect();
    let inodes: BTreeSet<u64> = by_inode.keys().copied().collect();
    let mut ports = BTreeSet::new();
    for &pid in pids {
        for inode in held(pid, &inodes) {
            if let Some(port) = by_inode.get(&inode) {
                ports.insert(*port);
            }
        }
    }
    ports.into_iter().collect()
}

/// The processes of one start: the process group `leader` leads, and every
/// descendant of `leader` (a child may have left the group).
pub fn service_processes(leader: i32) -> Vec<i32> {
    let mut parent_of: BTreeMap<i32, i32> = BTreeMap::new();
    let mut found: BTreeSet<i32> = BTreeSet::from([leader]);
    for pid in fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
    {
        if let Ok(Some(stat)) = procfs::stat(pid) {
            if stat.pgrp == leader {
                found.insert(pid);
            }
            parent_of.insert(pid, stat.ppid);
        }
    }
    // Descendants: walk each process's parents up to the leader.
    for &pid in parent_of.keys() {
        let mut at = pid;
        for _ in 0..64 {
            match parent_of.get(&at) {
                Some(&parent) if parent == leader => {
                    found.insert(pid);
                    break;
                }
                Some(&parent) if parent > 1 => at = parent,
                _ => break,
            }
        }
    }
    // The leader first: it is the likeliest holder.
    let mut pids = vec![leader];
    pids.extend(found.into_iter().filter(|p| *p != leader));
    pids
}

/// Inodes of the sockets listening on `port`, IPv4 and IPv6.
fn listening_inodes(port: u16) -> BTreeSet<u64> {
    listening_sockets()
        .into_iter()
        .filter_map(|(inode, p)| (p == port).then_some(inode))
        .collect()
}

/// (inode, port) of every listening TCP socket, IPv4 and IPv6: from
/// sock_diag, or from `/proc/net/tcp{,6}` when netlink is refused.
fn listening_sockets() -> Vec<(u64, u16)> {
    sock_diag::listening().unwrap_or_else(|_| proc_listening())
}

/// The same as [`listening_sockets`], from `/proc/net/tcp{,6}`.
fn proc_listening() -> Vec<(u64, u16)> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|text| parse_all_listening(&text))
        .collect()
}

/// Inodes of LISTEN sockets on `port` in a `/proc/net/tcp{,6}` table.
#[cfg(test)]
fn parse_listening(table: &str, port: u16) -> Vec<u64> {
    parse_all_listening(table)
        .into_iter()
        .filter_map(|(inode, p)| (p == port).then_some(inode))
        .collect()
}

/// The kernel's listening TCP sockets through netlink `NETLINK_SOCK_DIAG`
/// (what `ss -lt` uses): one dump request per address family.
mod sock_diag {
    use std::io;
    use std::mem::size_of;

    /// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    /// `NLM_F_REQUEST | NLM_F_DUMP` (linux/netlink.h).
    const DUMP_REQUEST: u16 = 0x1 | 0x300;
    /// `NLMSG_ERROR`, `NLMSG_DONE`.
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    /// `1 << TCP_LISTEN`: only listening sockets, so only the listening hash is walked.
    const LISTEN_ONLY: u32 = 1 << 10;

    /// `struct nlmsghdr`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Header {
        len: u32,
        kind: u16,
        flags: u16,
        seq: u32,
        pid: u32,
    }

    /// `struct inet_diag_sockid`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct SockId {
        sport: [u8; 2],
        dport: [u8; 2],
        src: [u32; 4],
        dst: [u32; 4],
        interface: u32,
        cookie: [u32; 2],
    }

    /// `struct inet_diag_req_v2`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Request {
        header: Header,
        family: u8,
        protocol: u8,
        ext: u8,
        pad: u8,
        states: u32,
        id: SockId,
    }

    /// The start of `struct inet_diag_msg`, up to the inode.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Message {
        family: u8,
        state: u8,
        timer: u8,
        retrans: u8,
        id: SockId,
        expires: u32,
        rqueue: u32,
        wqueue: u32,
        uid: u32,
        inode: u32,
    }

    /// (inode, port) of every listening TCP socket of this network namespace.
    pub fn listening() -> io::Result<Vec<(u64, u16)>> {
        // SAFETY: plain socket(2); the descriptor is owned right below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // The kernel always ends a dump, but a supervisor must never hang on it.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: timeout is a valid timeval for the length given.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut found = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            dump(&socket, family, &mut found)?;
        }
        Ok(found)
    }

    /// Sends one dump request for `family` and collects its answers.
    fn dump(
        socket: &std::os::fd::OwnedFd,
        family: u8,
        found: &mut Vec<(u64, u16)>,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let request = Request {
            header: Header {
                len: size_of::<Request>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: DUMP_REQUEST,
                seq: 1,
                pid: 0,
            },
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: LISTEN_ONLY,
            id: SockId::default(),
        };
        // SAFETY: zeroed sockaddr_nl with its family set addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: request and kernel are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                (&request as *const Request).cast(),
                size_of::<Request>(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if read_answers(&buf[..n as usize], found)? {
                return Ok(());
            }
        }
    }

    /// Collects the sockets one datagram of the dump names; true at the dump's end.
    fn read_answers(buf: &[u8], found: &mut Vec<(u64, u16)>) -> io::Result<bool> {
        let n = buf.len();
        let mut at = 0usize;
        while at + size_of::<Header>() <= n {
            // SAFETY: at least a header's bytes remain; read_unaligned copies them.
            let header: Header = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            let len = header.len as usize;
            if len < size_of::<Header>() || at + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "short netlink message",
                ));
            }
            match header.kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    return Err(io::Error::other("sock_diag refused the request"));
                }
                SOCK_DIAG_BY_FAMILY if len >= size_of::<Header>() + size_of::<Message>() => {
                    let body = at + size_of::<Header>();
                    // SAFETY: the message's bytes are within this datagram (checked above).
                    let message: Message =
                        unsafe { std::ptr::read_unaligned(buf[body..].as_ptr().cast()) };
                    if message.inode != 0 {
                        found.push((
                            u64::from(message.inode),
                            u16::from_be_bytes(message.id.sport),
                        ));
                    }
                }
                _ => {}
            }
            // Messages are 4-byte aligned.
            at += (len + 3) & !3;
        }
        Ok(false)
    }
}

/// (inode, port) of every LISTEN socket in a `/proc/net/tcp{,6}` table.
fn parse_all_listening(table: &str) -> Vec<(u64, u16)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let local_port = u16::from_str_radix(hex_port, 16).ok()?;
            (*state == TCP_LISTEN && inode != 0).then_some((inode, local_port))
        })
        .collect()
}

/// True when `pid` has one of `inodes` open.
fn holds(pid: i32, inodes: &BTreeSet<u64>) -> bool {
    !held(pid, inodes).is_empty()
}

/// Which of `inodes` `pid` has open.
fn held(pid: i32, inodes: &BTreeSet<u64>) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|e| e.ok())
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|inode| inodes.contains(inode))
        })
        .collect()
}

/// `/proc/PID/comm`, e.g. `java`.
fn command_name(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn ports_of_urls() {
        assert_eq!(url_port("http://127.0.0.1:8080/health"), Some(8080));
        assert_eq!(url_port("http://localhost/health"), Some(80));
        assert_eq!(url_port("http://[::1]:9000/x?y=1"), Some(9000));
        assert_eq!(url_port("http://[::1]/"), Some(80));
        assert_eq!(url_port("http://u:p@h:81"), Some(81));
        assert_eq!(url_port("https://h:81/"), None);
    }

    #[test]
    fn parses_listening_sockets() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  \x20  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n\
                  \x20  1: 0100007F:1F90 0100007F:DC06 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0\n\
                  \x20  2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0\n";
        assert_eq!(parse_listening(v4, 8080), vec![4242]);
        assert_eq!(parse_listening(v4, 80), vec![99]);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  \x20  0: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0\n";
        assert_eq!(parse_listening(v6, 8080), vec![777]);
    }

    #[test]
    fn sock_diag_sees_what_proc_net_tcp_sees() {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let v6 = TcpListener::bind("[::1]:0").ok();
        let mut ports = vec![v4.local_addr().expect("addr").port()];
        ports.extend(v6.iter().map(|l| l.local_addr().expect("addr").port()));
        let from_netlink = sock_diag::listening().expect("sock_diag");
        let from_proc = proc_listening();
        // Only this test's own listeners: other tests (of this binary and
        // of others run beside it) open and close theirs between the reads.
        for port in ports {
            let of = |all: &[(u64, u16)]| {
                let mut v: Vec<(u64, u16)> =
                    all.iter().copied().filter(|(_, p)| *p == port).collect();
                v.sort();
                v
            };
            assert!(!of(&from_netlink).is_empty(), "port {port} not seen");
            assert_eq!(of(&from_netlink), of(&from_proc), "port {port}");
        }
    }

    #[test]
    fn finds_this_process_holding_its_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = std::process::id() as i32;
        assert_eq!(holder(port, &[me]), Holder::Ours(me));
        match holder(port, &[]) {
            Holder::Other(pid, _) => assert_eq!(pid, me),
            other => panic!("expected Other, got {other:?}"),
        }
        assert!(listening(port));
        assert!(ports_held_by(&[me]).contains(&port));
        drop(listener);
        assert_eq!(holder(port, &[me]), Holder::Nobody);
        assert!(!listening(port));
        assert!(!ports_held_by(&[me]).contains(&port));
    }
}
