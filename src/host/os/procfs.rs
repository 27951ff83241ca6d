//! Process identity from `/proc`: a pid alone lies after pid reuse, so every
//! process we track is named by its pid *and* its start time since boot.

use std::fs;
use std::io;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A process as it was when we recorded it: pid plus start time in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Process id.
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Whether a recorded process is still the same live process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Alive, same start time.
    Alive,
    /// No such process, or only a zombie waiting to be reaped.
    Gone,
    /// The pid is alive but was started at another time: a different process.
    Reused,
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// One-letter state (`R`, `S`, `Z`, …).
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// Session id.
    pub session: i32,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let close = text.rfind(')')?;
    let mut fields = text.get(close + 1..)?.split_ascii_whitespace();
    // The iterator starts at field 3 (state); field 5 is pgrp, 6 the
    // session, 22 starttime.
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    let start_ticks = fields.nth(22 - 7)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgrp,
        session,
        start_ticks,
    })
}

/// Reads and parses `/proc/PID/stat`; `Ok(None)` when there is no such process.
pub fn stat(pid: i32) -> io::Result<Option<Stat>> {
    if pid <= 0 {
        return Ok(None);
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot parse /proc/{pid}/stat"),
            )
        }),
        // ESRCH shows up when the process dies between open and read.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The identity of a live process, or `None` when it does not exist.
pub fn identify(pid: i32) -> io::Result<Option<ProcessId>> {
    Ok(stat(pid)?.map(|s| ProcessId {
        pid,
        start_ticks: s.start_ticks,
    }))
}

/// Checks that `id` still names the same live process. A zombie counts as gone:
/// it has exited, only its parent has not collected the status yet.
pub fn liveness(id: ProcessId) -> Liveness {
    match stat(id.pid) {
        Ok(Some(s)) if s.start_ticks != id.start_ticks => Liveness::Reused,
        Ok(Some(s)) if matches!(s.state, 'Z' | 'X' | 'x') => Liveness::Gone,
        Ok(Some(_)) => Liveness::Alive,
        Ok(None) => Liveness::Gone,
        // Unreadable /proc entry of an existing pid: treat as alive rather
        // than risk declaring a running service dead.
        Err(_) => Liveness::Alive,
    }
}

/// Live (non-zombie) members of process group `pgid`. A zombie leader still
/// counts for `kill(-pgid, 0)`, so waiting for a group to empty needs `/proc`.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            matches!(stat(*pid), Ok(Some(s)) if s.pgrp == pgid && !matches!(s.state, 'Z' | 'X' | 'x'))
        })
        .collect()
}

/// Real and effective uid of a live process (the `Uid:` line of
/// `/proc/PID/status`); `Ok(None)` when there is no such process.
pub fn uids(pid: i32) -> io::Result<Option<(u32, u32)>> {
    let text = match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(text) => text,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut ids = text
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid in /proc/PID/status"))?
        .split_ascii_whitespace()
        .map(|v| v.parse::<u32>());
    match (ids.next(), ids.next()) {
        (Some(Ok(real)), Some(Ok(effective))) => Ok(Some((real, effective))),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse the uids in /proc/{pid}/status"),
        )),
    }
}

/// The command line of a live process, one entry per argument.
pub fn cmdline(pid: i32) -> io::Result<Option<Vec<std::ffi::OsString>>> {
    use std::os::unix::ffi::OsStrExt;
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) => Ok(Some(
            bytes
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
                .collect(),
        )),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where `/proc/PID/LINK` (`exe`, `cwd`) points; ` (deleted)` is kept.
pub fn link(pid: i32, name: &str) -> io::Result<Option<std::path::PathBuf>> {
    match fs::read_link(format!("/proc/{pid}/{name}")) {
        Ok(path) => Ok(Some(path)),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The process does not exist (any more).
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// Boot time from the `btime` line of `/proc/stat`.
pub fn boot_time() -> io::Result<SystemTime> {
    let text = fs::read_to_string("/proc/stat")?;
    let secs = text
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no btime in /proc/stat"))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Seconds since boot, from `/proc/uptime` (immune to wall-clock changes).
pub fn uptime() -> io::Result<Duration> {
    let text = fs::read_to_string("/proc/uptime")?;
    text.split_ascii_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cannot parse /proc/uptime"))
}

/// Time since boot at which a process started.
pub fn start_offset(id: ProcessId) -> Duration {
    let hz = ticks_per_second();
    Duration::from_secs(id.start_ticks / hz)
        + Duration::from_nanos((id.start_ticks % hz) * 1_000_000_000 / hz)
}

/// This boot's id; distinguishes pids recorded before a reboot when the run
/// dir is not a tmpfs.
pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_stat() {
        let text =
            "4242 (java) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 30 0 987654 1000 200";
        let s = parse_stat(text).expect("parses");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.session, 4242);
        assert_eq!(s.start_ticks, 987654);
    }

    #[test]
    fn parses_comm_with_spaces_and_parens() {
        let text = "77 (a) b) (c d) Z 1 70 70 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 123 0 0";
        let s = parse_stat(text).expect("parses");
        assert_eq!(s.state, 'Z');
        assert_eq!(s.pgrp, 70);
        assert_eq!(s.start_ticks, 123);
    }

    #[test]
    fn rejects_truncated_stat() {
        assert_eq!(parse_stat("1 (x) S 0 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn identifies_this_process() {
        let me = identify(std::process::id() as i32)
            .expect("reads /proc")
            .expect("exists");
        assert_eq!(liveness(me), Liveness::Alive);
        let other = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert_eq!(liveness(other), Liveness::Reused);
    }
}
