//! For the uplink bench: the operator's uplink shaped with tc, and an
//! artifact repository (Debian's nginx with WebDAV PUT) on a host of its own.
//!
//! The shaper is a qdisc on the fleet's link in the root namespace (`sjfK`,
//! the operator's end of the veth pair whose other end is a port of the
//! fleet's bridge): netem (1 ms) with a tbf child (100 Mbit/s; tbf alone on
//! a kernel without netem), so whatever
//! the operator sends to any host or to the repository goes through it; what
//! comes back is not shaped (an office or CI uplink is the narrow way).
//!
//! The repository lives in network namespace `sjfK-repo` (so a dead bench's
//! leftovers are removed with its fleet's by the next `Fleet::new`), its veth
//! a port of the same bridge: a host's download goes host → bridge →
//! repository and never reaches the operator's link or its qdisc.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{self, Fleet};

/// The qdisc on the operator's link to the fleet; removed on drop.
pub struct Shaper {
    dev: String,
    /// What it does: `tbf 100mbit` and the delay, or why there is none.
    pub what: String,
}

impl Shaper {
    /// Shapes what the operator sends on `dev` to `rate` (tc's syntax,
    /// `100mbit`) with `delay` (`1ms`) added by netem; a kernel without
    /// netem (CONFIG_NET_SCH_NETEM unset) gets the rate alone, said in `what`.
    pub fn add(dev: &str, rate: &str, delay: &str) -> Result<Shaper, String> {
        let tbf = |parent: &[&str]| {
            let mut args = vec!["qdisc", "add", "dev", dev];
            args.extend_from_slice(parent);
            args.extend(["tbf", "rate", rate, "burst", "64kb", "latency", "100ms"]);
            tc(&args)
        };
        let mut shaper = Shaper {
            dev: dev.into(),
            what: format!("tbf {rate} + netem {delay}"),
        };
        match tc(&[
            "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay", delay,
        ]) {
            Ok(_) => tbf(&["parent", "1:1", "handle", "10:"])?,
            Err(e) if e.contains("unknown") => {
                shaper.what = format!("tbf {rate}, no added delay (this kernel has no netem)");
                tbf(&["root", "handle", "1:"])?
            }
            Err(e) => return Err(e),
        };
        Ok(shaper)
    }

    /// Bytes the qdisc has sent so far (its `Sent N bytes`): everything the
    /// operator sent into the fleet's network, headers included.
    pub fn sent_bytes(&self) -> u64 {
        let out = tc(&["-s", "qdisc", "show", "dev", &self.dev, "root"]).unwrap_or_default();
        out.split_whitespace()
            .skip_while(|w| *w != "Sent")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        if let Err(e) = tc(&["qdisc", "del", "dev", &self.dev, "root"]) {
            eprintln!("removing the qdisc on {}: {e}", self.dev);
        }
    }
}

fn tc(args: &[&str]) -> Result<String, String> {
    fleet::run(Command::new("tc").args(args))
}

/// nginx serving `/` with PUT, in the fleet's network namespace `sjfK-repo`
/// at 10.213.K.254; killed by pid and its namespace deleted on drop.
pub struct Repository {
    netns: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `http://10.213.K.254:8081`.
    pub base: String,
}

/// The repository's port.
const PORT: u16 = 8081;

impl Repository {
    /// Adds the namespace to `fleet`'s bridge and starts nginx in it.
    pub fn start(fleet: &Fleet) -> Result<Repository, String> {
        let prefix = fleet.prefix();
        let k = prefix.trim_start_matches("sjf");
        let address = format!("10.213.{k}.254");
        let netns = format!("{prefix}-repo");
        let switch = format!("{prefix}-switch");
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut repo = Repository {
            netns: netns.clone(),
            child: None,
            dir,
            base: format!("http://{address}:{PORT}"),
        };
        let ip = |args: &[&str]| fleet::run(Command::new("ip").args(args));
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", "repo", "netns", &switch, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ])?;
        ip(&["-n", &switch, "link", "set", "repo", "master", "br0", "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        repo.start_nginx(&address)?;
        if let Some(c) = &repo.child {
            fleet.record_pid(c.id() as i32)?;
        }
        repo.wait_listening(&address)?;
        Ok(repo)
    }

    fn start_nginx(&mut self, address: &str) -> Result<(), String> {
        let d = self.dir.path().display().to_string();
        for sub in ["www", "tmp"] {
            std::fs::create_dir_all(self.dir.path().join(sub)).map_err(|e| e.to_string())?;
        }
        // One process, enough connections for every host at once; sendfile
        // so that nginx's CPU stays small beside the JVMs'.
        let conf = format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 2048; }}\n\
             http {{ access_log off; client_max_body_size 0; sendfile on; tcp_nopush on;\n\
               client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
               server {{ listen {address}:{PORT}; root {d}/www;\n\
                 location / {{ dav_methods PUT; create_full_put_path on; dav_access user:rw all:r; }}\n\
               }}\n\
             }}\n"
        );
        let conf_path = self.dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let ns = std::fs::File::open(format!("/run/netns/{}", self.netns))
            .map_err(|e| format!("open the repository's namespace: {e}"))?;
        let mut cmd = Command::new("/usr/sbin/nginx");
        cmd.arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .stdin(Stdio::null());
        // SAFETY: setns(2) is async-signal-safe; the fd stays open in the
        // parent until spawn returns.
        let fd = ns.as_raw_fd();
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self.child = Some(cmd.spawn().map_err(|e| format!("start nginx: {e}"))?);
        drop(ns);
        Ok(())
    }

    /// Waits (20 s at most) until nginx answers, asked from inside its namespace.
    fn wait_listening(&self, address: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://{address}:{PORT}/");
        loop {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.netns,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                ])
                .arg(&url)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
                return Err(format!("nginx did not answer within 20 s: {log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The file behind `path` in the repository.
    pub fn file(&self, path: &str) -> PathBuf {
        self.dir.path().join("www").join(path)
    }

    /// Puts `jar` at `path` (what a host downloads in the checks).
    pub fn place(&self, jar: &Path, path: &str) -> Result<(), String> {
        let to = self.file(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::copy(jar, to)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Drop for Repository {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Its veth goes with the namespace.
        if let Err(e) = fleet::run(Command::new("ip").args(["netns", "del", &self.netns])) {
            eprintln!("deleting {}: {e}", self.netns);
        }
    }
}
