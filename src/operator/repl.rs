//! `shipjar repl`: this terminal connected to a Clojure service's socket REPL
//! (`[service] repl`), which listens on the host's 127.0.0.1 only. Over ssh
//! through a local forward bound to this machine's 127.0.0.1; on `local`
//! straight to 127.0.0.1:PORT. With `--port`, only the forward, held open
//! for an editor. The REPL is the service itself: whoever reaches it can do
//! all the service user can.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::ReplArgs;
use crate::error::{Error, Result};
use crate::operator::config::{HostSpec, Project};
use crate::operator::fleet::Fleet;
use crate::operator::output::{self, Reporter};
use crate::operator::{render, select, ssh};

/// Longest the forward may take to come up.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);

/// `shipjar repl STAGE [--port L]`.
pub fn repl(project: &Project, args: &ReplArgs, reporter: &Reporter) -> Result<i32> {
    let Some(repl) = project.config.service.repl else {
        return Err(Error::config(format!(
            "{}: the service has no REPL",
            project.file.display()
        ))
        .hint("add `repl = { port = 5555 }` to [service] and deploy"));
    };
    let (stage, _) = select::stage(project, &args.stage, &args.fleet.hosts)?;
    render::mask_available_secrets(&stage.secrets);
    let [(host, spec)] = stage.hosts.as_slice() else {
        return Err(Error::config(format!(
            "repl connects to one host; stage `{}` has {}",
            stage.name,
            stage.hosts.len()
        ))
        .hint("choose one host with --hosts"));
    };
    let remote_port = repl.port;
    match spec {
        HostSpec::Local => {
            // The REPL already listens on this machine's loopback: nothing to forward.
            if args.port.is_some() {
                reporter.note(&format!(
                    "[{host}] the REPL listens on 127.0.0.1:{remote_port} on this machine: connect your editor there"
                ));
                return Ok(0);
            }
            let stream = TcpStream::connect(("127.0.0.1", remote_port)).map_err(|e| {
                Error::failed(format!(
                    "[{host}] cannot connect to the REPL on 127.0.0.1:{remote_port}: {e}"
                ))
                .hint("is the service running a release deployed with `[service] repl`? (`shipjar status local`)")
            })?;
            connect_terminal(stream)
        }
        HostSpec::Ssh { .. } => {
            let fleet = Fleet::for_stage(project, &stage, &args.fleet)?;
            let local_port = match args.port {
                Some(port) => port,
                None => free_local_port()?,
            };
            let mut forward = Forward::start(host, spec, &fleet, local_port, remote_port)?;
            let first = forward.wait_up(host, local_port)?;
            if args.port.is_some() {
                drop(first);
                reporter.note(&format!(
                    "[{host}] REPL forwarded to 127.0.0.1:{local_port} (the host's 127.0.0.1:{remote_port}); connect your editor there, Ctrl-C to close"
                ));
                let status = forward
                    .child
                    .wait()
                    .map_err(|e| Error::failed(format!("[{host}] waiting for ssh: {e}")))?;
                return Ok(if status.success() { 0 } else { 1 });
            }
            connect_terminal(first)
        }
    }
}

/// An `ssh -N -L` forward, ended when dropped.
struct Forward {
    child: Child,
}

impl Forward {
    fn start(
        host: &str,
        spec: &HostSpec,
        fleet: &Fleet,
        local_port: u16,
        remote_port: u16,
    ) -> Result<Forward> {
        let mut args = ssh::ssh_args_with(spec, &fleet.reach, "", ssh::Multiplex::Yours);
        // No remote command: -N.
        args.pop();
        let forward = format!("127.0.0.1:{local_port}:127.0.0.1:{remote_port}");
        let mut options: Vec<std::ffi::OsString> = vec![
            "-N".into(),
            "-o".into(),
            "ExitOnForwardFailure=yes".into(),
            "-L".into(),
            forward.into(),
        ];
        options.extend(args);
        let mut command = Command::new("ssh");
        command
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        render::without_secret_variables(&mut command);
        // SAFETY: prctl is async-signal-safe and allocates nothing.
        unsafe {
            // Killed with us however we end (`--port` ends only by a signal).
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| Error::failed(format!("[{host}] cannot start ssh: {e}")))?;
        Ok(Forward { child })
    }

    /// The first connection through the forward, once it is up.
    fn wait_up(&mut self, host: &str, local_port: u16) -> Result<TcpStream> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut said = String::new();
                if let Some(mut err) = self.child.stderr.take() {
                    let _ = err.read_to_string(&mut said);
                }
                return Err(Error::failed(format!(
                    "[{host}] ssh ended ({status}) before the forward was up: {}",
                    said.trim()
                )));
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", local_port)) {
                return Ok(stream);
            }
            if started.elapsed() > FORWARD_TIMEOUT {
                return Err(Error::failed(format!(
                    "[{host}] the forward to the REPL was not up within {}s",
                    FORWARD_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 free right now.
fn free_local_port() -> Result<u16> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::failed(format!("cannot find a free local port: {e}")))
}

/// How long the REPL is silent before a line it has not ended is shown.
const REPL_QUIET: Duration = Duration::from_millis(100);
/// Longest unended line held back for masking.
const HELD_MAX: usize = 64 * 1024;

/// The REPL's answers masked whole lines at a time, so a secret split
/// between two reads (or a character split by one) is masked all the same;
/// a line not yet ended is held until the REPL is quiet ([`REPL_QUIET`]).
#[derive(Default)]
struct MaskedLines {
    held: Vec<u8>,
}

impl MaskedLines {
    /// Takes `bytes`; returns what can be shown: every ended line, masked.
    fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(bytes);
        if self.held.len() > HELD_MAX {
            return self.flush();
        }
        match self.held.iter().rposition(|b| *b == b'\n') {
            Some(end) => {
                let rest = self.held.split_off(end + 1);
                let lines = std::mem::replace(&mut self.held, rest);
                output::redact_bytes(&lines)
            }
            None => Vec::new(),
        }
    }

    /// Everything held, masked.
    fn flush(&mut self) -> Vec<u8> {
        output::redact_bytes(&std::mem::take(&mut self.held))
    }
}

/// Copies this terminal's input to the REPL and its answers to stdout until
/// the REPL closes; end of input closes our side.
fn connect_terminal(stream: TcpStream) -> Result<i32> {
    let mut to_repl = stream
        .try_clone()
        .map_err(|e| Error::failed(format!("REPL connection: {e}")))?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_repl.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_repl.shutdown(Shutdown::Write);
    });
    let mut from_repl = stream;
    // A quiet REPL (a prompt waiting for input) shows what it sent so far.
    from_repl
        .set_read_timeout(Some(REPL_QUIET))
        .map_err(|e| Error::failed(format!("REPL connection: {e}")))?;
    let mut out = std::io::stdout();
    let mut lines = MaskedLines::default();
    let mut buf = [0u8; 4096];
    loop {
        let shown = match from_repl.read(&mut buf) {
            Ok(0) => {
                let _ = out.write_all(&lines.flush()).and_then(|()| out.flush());
                break;
            }
            Ok(n) => lines.push(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                lines.flush()
            }
            Err(e) => return Err(Error::failed(format!("REPL connection: {e}"))),
        };
        if out.write_all(&shown).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_split_between_reads_or_by_a_character_is_still_masked() {
        let secret = "repl-sëcret-4f1c9a";
        output::register_secret(secret, false);
        let mut lines = MaskedLines::default();
        let mut shown = lines.push(b"user=> (System/getenv \"DB\")\n\"repl-s\xc3");
        // The ended line goes out at once; the rest waits for its end.
        assert_eq!(shown, b"user=> (System/getenv \"DB\")\n");
        shown.extend(lines.push(b"\xabcret-4f1c9a\"\nuser=> "));
        // A prompt with no newline is shown once the REPL is quiet.
        shown.extend(lines.flush());
        let text = String::from_utf8(shown).expect("UTF-8 kept whole");
        assert!(!text.contains(secret), "{text}");
        assert!(text.ends_with("\"\nuser=> "), "{text}");
        assert!(lines.flush().is_empty());
    }
}
