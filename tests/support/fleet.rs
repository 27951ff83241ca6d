//! A fleet of test "hosts" on this machine, reached with the real OpenSSH
//! client exactly as users reach real servers: `ssh -F <fleet ssh_config> app1`.
//!
//! Needs root (network namespaces, mounts); see [`require_root`].
//!
//! # Design
//!
//! Fleet number K (1..=254, unique among live fleets on the machine, allocated
//! under a lock file) names everything the fleet creates, with the prefix
//! `sjfK`:
//!
//! - `/tmp/sjf/K/`: the fleet's state: `owner` (pid and start time of the
//!   creating process), `pids` (every long-lived process started), the client
//!   key, `known_hosts`, `ssh_config`, and one directory per host.
//! - network namespace `sjfK-switch` holding a bridge `br0`; a veth pair whose
//!   root end is the link `sjfK` (address 10.213.K.1/24, the only thing the
//!   fleet adds to the root namespace) and whose other end is a bridge port.
//!   The bridge lives in a namespace of its own rather than in the root one
//!   because the root namespace's firewall would otherwise see host-to-host
//!   traffic: with `net.bridge.bridge-nf-call-iptables=1` (set here) bridged
//!   frames go through the iptables FORWARD chain of the bridge's namespace,
//!   and the per-bridge `nf_call_iptables` option can only add filtering,
//!   never remove it. In a namespace of our own the tables are empty, so no
//!   machine-wide setting or firewall rule has to change.
//! - per host `appI`: network namespace `sjfK-appI` with `lo` and `eth0`
//!   (10.213.K.(I+1)/24, no default route: hosts reach only their subnet),
//!   whose veth peer `hI` is a port of the bridge. Hosts reach each other,
//!   like machines on one LAN, and know each other's names (`/etc/hosts`).
//! - per host, `ip netns exec sjfK-appI unshare --mount --uts --ipc --pid
//!   --fork --mount-proc --kill-child sh fleet-host.sh appI DIR`: the forked
//!   child is PID 1 of a new PID namespace, in a private mount namespace; the
//!   script mounts the host's own /etc, /var, /home, /opt, /srv (overlays over
//!   the machine's, upper dirs in DIR), a fresh /root and /usr/local, tmpfs
//!   /run, /tmp and /dev/shm, sets the hostname and execs sshd, which stays
//!   PID 1. The sshd config, host key, hostname, hosts file and
//!   authorized_keys are written into the upper dirs before it starts.
//!
//! Teardown (also on panic, via `Drop`) kills each host's PID 1 by pid, which
//! makes the kernel kill everything in that PID namespace; the mount
//! namespace, and with it every mount, dies with its last process. Then the
//! link `sjfK` and the namespaces are deleted and `/tmp/sjf/K` is removed.
//! A process killed before its fleet's teardown leaves all that behind; the
//! next `Fleet::new` on the machine removes the leftovers of every fleet
//! whose creating process is gone.
//!
//! Talks only to the fleet's own addresses: nothing here has a default route.
//!
//! # What it leaves on the machine
//!
//! No sysctl and no firewall rule is changed. Beyond each fleet's own
//! resources, removed at teardown, there remain: `/tmp/sjf/{lock,last}`; the
//! `/run/netns` directory, which the first `ip netns add` on a machine creates
//! and bind-mounts onto itself (iproute2 does so on any machine); and the
//! kernel modules the kernel loads on first use (veth, bridge, overlay).
//!
//! # Requirements
//!
//! Root, and the Debian packages iproute2, util-linux, openssh-server,
//! openssh-client and procps (`./run-tests` installs them when run as root).
//! No systemd: hosts run no init system, sshd is their PID 1.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Where fleets keep their state; fixed, so that a later run finds the
/// leftovers of an earlier one, and short, so that socket paths in it stay
/// far below the 108-byte limit.
const BASE: &str = "/tmp/sjf";
/// Prefix of every fleet's link and namespace names: `sjfK`, `sjfK-app1`.
const PREFIX: &str = "sjf";
/// Fleet K uses 10.213.K.0/24.
const NET: &str = "10.213";
/// The script that sets up one host inside its namespaces.
const HOST_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fleet-host.sh");
/// Directories a host gets as an overlay over the machine's; must match the
/// list in fleet-host.sh.
const OVERLAID: [&str; 5] = ["etc", "var", "home", "opt", "srv"];
/// PATH for processes started inside a host, as sshd gives root sessions.
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a host may take to accept connections on port 22.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Fails the test loudly unless it runs as root: a root-only test that cannot
/// run must not count as passed (they are `#[ignore]`d, so only
/// `--include-ignored` reaches here). Bringing up a fleet checks this first,
/// so a test calls it only when it does something as root before that.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (fleet tests create network namespaces): run ./run-tests as root"
    );
}

/// N hosts on this machine, each with its own network, mounts, hostname,
/// processes and sshd. Dropping it removes all of them.
pub struct Fleet {
    k: u8,
    prefix: String,
    dir: PathBuf,
    switch: String,
    hosts: Vec<Host>,
    ssh_config: PathBuf,
    known_hosts: PathBuf,
    identity: PathBuf,
}

struct Host {
    name: String,
    ip: String,
    netns: String,
    /// Its veth end on the bridge, in the switch namespace.
    port: String,
    dir: PathBuf,
    /// `ip netns exec … unshare …` (exec'ed into unshare): our child, waited
    /// for at teardown.
    launcher: Option<Child>,
    /// PID 1 of the host's PID namespace (sshd), as seen from the machine.
    init: Option<Proc>,
}

impl Fleet {
    /// Brings up `n` hosts `app1`..`appN`, each with sshd accepting the
    /// fleet's key. Panics with a clear message and the hosts' sshd logs when
    /// that fails; whatever was created is removed again.
    pub fn new(n: usize) -> Fleet {
        Fleet::create(n, true)
    }

    /// Everything [`Fleet::new`] does except starting the hosts: their
    /// network namespaces (addressed, on the bridge), keys, known_hosts,
    /// ssh_config and state directories ([`Fleet::host_dir`]), for a harness
    /// that boots a PID 1 of its own there (tests/support/systemd_host.rs).
    /// Teardown is the same; that harness stops its hosts before.
    pub fn unstarted(n: usize) -> Fleet {
        Fleet::create(n, false)
    }

    fn create(n: usize, start: bool) -> Fleet {
        assert!(
            (1..=250).contains(&n),
            "Fleet::new({n}): a fleet has 1 to 250 hosts"
        );
        require_root();
        check_tools();
        let started = Instant::now();
        let (k, dir) = match locked(|| {
            remove_leftovers();
            allocate()
        }) {
            Ok(found) => found,
            Err(e) => panic!("fleet: {e}"),
        };
        let prefix = format!("{PREFIX}{k}");
        let hosts = (1..=n)
            .map(|i| {
                let name = format!("app{i}");
                Host {
                    ip: format!("{NET}.{k}.{}", i + 1),
                    netns: format!("{prefix}-{name}"),
                    port: format!("h{i}"),
                    dir: dir.join(&name),
                    name,
                    launcher: None,
                    init: None,
                }
            })
            .collect();
        // From here on a panic drops `fleet`, which tears down what exists.
        let mut fleet = Fleet {
            k,
            switch: format!("{prefix}-switch"),
            prefix,
            ssh_config: dir.join("ssh_config"),
            known_hosts: dir.join("known_hosts"),
            identity: dir.join("id_ed25519"),
            dir,
            hosts,
        };
        if let Err(e) = fleet.bring_up(start) {
            panic!(
                "fleet {}: bringing up {n} hosts failed: {e}\n{}",
                fleet.prefix,
                fleet.logs()
            );
        }
        eprintln!(
            "fleet {}: {n} hosts {} in {} ms",
            fleet.prefix,
            if start { "up" } else { "networked" },
            started.elapsed().as_millis()
        );
        fleet
    }

    /// The host names, usable with `ssh -F <ssh_config>`: `["app1", …]`.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// The fleet's ssh config: a `Host appI` block per host and the options
    /// that reach them (user root, the fleet's key, its known_hosts, strict
    /// host key checking, batch mode).
    pub fn ssh_config(&self) -> &Path {
        &self.ssh_config
    }

    /// The known_hosts file holding every host's real host key, under both
    /// its name and its address.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The client's private key (ed25519, no passphrase).
    pub fn identity(&self) -> &Path {
        &self.identity
    }

    /// The host's address, e.g. `10.213.4.2`.
    pub fn ip(&self, host: &str) -> String {
        self.host(host).ip.clone()
    }

    /// Runs `ssh -F <ssh_config> HOST COMMAND`, as a user would, stdin closed.
    pub fn ssh(&self, host: &str, command: &str) -> Output {
        let host = self.host(host);
        Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .arg(&host.name)
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    /// Runs `argv` inside the host's namespaces without SSH (nsenter by the
    /// pid of its PID 1), as root with a clean environment: for test setup
    /// and assertions that must not depend on sshd.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Output {
        let host = self.host(host);
        let init = host
            .init
            .unwrap_or_else(|| panic!("host {} has no running init", host.name));
        nsenter(
            init.pid,
            &["--mount", "--uts", "--ipc", "--net", "--pid"],
            argv,
        )
        .output()
        .expect("run nsenter")
    }

    /// `sh -c SCRIPT` inside the host, as [`Fleet::exec`] runs a command.
    pub fn sh(&self, host: &str, script: &str) -> Output {
        self.exec(host, &["sh", "-c", script])
    }

    /// What `sh -c SCRIPT` inside the host printed on its stdout.
    pub fn sh_stdout(&self, host: &str, script: &str) -> String {
        String::from_utf8_lossy(&self.sh(host, script).stdout).into_owned()
    }

    /// The host's processes: (pid, command line with spaces for NULs), the
    /// shell that lists them included.
    pub fn processes(&self, host: &str) -> Vec<(i32, String)> {
        let script = "for d in /proc/[0-9]*; do c=$(tr '\\0' ' ' < \"$d/cmdline\" 2>/dev/null); \
                      [ -n \"$c\" ] && echo \"${d#/proc/} $c\"; done; true";
        self.sh_stdout(host, script)
            .lines()
            .filter_map(|l| {
                let (pid, cmd) = l.split_once(' ')?;
                Some((pid.parse().ok()?, cmd.to_string()))
            })
            .collect()
    }

    /// Cuts the host off the network: its bridge port goes down, so nothing
    /// reaches it and nothing it sends arrives anywhere (its `eth0` loses
    /// carrier). Its processes keep running.
    pub fn link_down(&self, host: &str) {
        self.set_port(host, "down");
    }

    /// Undoes [`Fleet::link_down`].
    pub fn link_up(&self, host: &str) {
        self.set_port(host, "up");
    }

    /// The host's sshd log (its stderr, `-e`), for failure messages.
    pub fn sshd_log(&self, host: &str) -> String {
        fs::read_to_string(self.host(host).dir.join("sshd.log")).unwrap_or_default()
    }

    /// The host's state directory, removed at teardown. It holds what
    /// [`Fleet::new`] mounts into the host: `etc.upper/` (`hostname`,
    /// `hosts`, `ssh/` with `sshd_config`, the host key and whiteouts hiding
    /// the machine's other host keys) and `root/` (`.ssh/authorized_keys`
    /// with the fleet's client key).
    pub fn host_dir(&self, host: &str) -> &Path {
        &self.host(host).dir
    }

    /// The host's network namespace (`sjfK-appI`, under /run/netns).
    pub fn netns(&self, host: &str) -> &str {
        &self.host(host).netns
    }

    /// Records a process started for the fleet, so that the next fleet
    /// created on the machine ends it if this process dies before teardown.
    pub fn record_pid(&self, pid: i32) -> Result<(), String> {
        let start = Proc::of(pid).map_or(0, |p| p.start);
        append(&self.dir.join("pids"), &format!("{pid} {start}\n"))
    }

    /// `sjfK`: the name of the fleet's link in the root namespace and the
    /// prefix (with `-`) of its network namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The fleet's state directory, removed at teardown.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pids of the long-lived processes the fleet started: per host, its
    /// launcher and its PID 1. (Everything else runs inside a host.)
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for h in &self.hosts {
            if let Some(l) = &h.launcher {
                pids.push(l.id() as i32);
            }
            if let Some(init) = h.init {
                pids.push(init.pid);
            }
        }
        pids
    }

    /// Power-cycles `host`: its PID 1 is killed, and every process of the
    /// host with it (its /run, /tmp and /dev/shm are gone), then it starts
    /// again on the same state directory, so its /etc, /var, /root and
    /// /usr/local are as it left them. Returns once its sshd answers. Boot
    /// scripts are the test's to run: these hosts have no init system.
    pub fn reboot(&mut self, host: &str) {
        let pids_path = self.dir.join("pids");
        let prefix = self.prefix.clone();
        let Some(h) = self.hosts.iter_mut().find(|h| h.name == host) else {
            panic!("fleet {prefix} has no host {host:?}");
        };
        if let Some(init) = h.init.take() {
            init.kill();
        }
        if let Some(mut launcher) = h.launcher.take()
            && let Err(e) = wait_bounded(&mut launcher, Duration::from_secs(10))
        {
            panic!("fleet {prefix}: stopping {host}: {e}");
        }
        let restarted = (|| {
            // An overlay mounted `volatile` marks its work dir so that it is
            // not mounted again after a crash; this "crash" lost nothing
            // (the upper dirs are on the machine's disk, which stayed up).
            for d in OVERLAID {
                let mark = h.dir.join(format!("{d}.work/work/incompat/volatile"));
                if mark.exists() {
                    fs::remove_dir_all(&mark).map_err(|e| format!("{}: {e}", mark.display()))?;
                }
            }
            // `start` gives eth0 its address again.
            run(Command::new("ip").args(["-n", &h.netns, "addr", "flush", "dev", "eth0"]))?;
            h.start(&pids_path)
        })()
        .and_then(|()| self.find_inits())
        .and_then(|()| self.wait_for_sshd());
        if let Err(e) = restarted {
            panic!(
                "fleet {prefix}: rebooting {host} failed: {e}\n{}",
                self.logs()
            );
        }
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("fleet {} has no host {name:?}", self.prefix))
    }

    fn set_port(&self, host: &str, state: &str) {
        let port = &self.host(host).port;
        if let Err(e) =
            run(Command::new("ip").args(["-n", &self.switch, "link", "set", port, state]))
        {
            panic!("fleet {}: setting {host}'s link {state}: {e}", self.prefix);
        }
    }

    fn bring_up(&mut self, start: bool) -> Result<(), String> {
        let k = self.k;
        // The first `ip netns add` on a machine creates and mounts
        // /run/netns; two at once could mount it twice, so serialise it.
        locked(|| run(Command::new("ip").args(["netns", "add", &self.switch])))?;
        ip_batch(
            Some(&self.switch),
            &["link add br0 type bridge".into(), "link set br0 up".into()],
        )?;
        ip_batch(
            None,
            &[
                format!(
                    "link add {} type veth peer name uplink netns {}",
                    self.prefix, self.switch
                ),
                format!("addr add {NET}.{k}.1/24 dev {}", self.prefix),
                format!("link set {} up", self.prefix),
            ],
        )?;
        ip_batch(
            Some(&self.switch),
            &["link set uplink master br0 up".into()],
        )?;

        keygen(&self.identity, "shipjar-fleet-client")?;
        let client_key = read(&self.dir.join("id_ed25519.pub"))?;
        let etc_hosts = self.etc_hosts();

        // Per-host files and keys: independent, so in parallel.
        let workers = self.hosts.len().clamp(1, 8);
        let chunk = self.hosts.len().div_ceil(workers);
        thread::scope(|s| {
            let jobs: Vec<_> = self
                .hosts
                .chunks(chunk)
                .map(|hosts| {
                    let (client_key, etc_hosts) = (&client_key, &etc_hosts);
                    s.spawn(move || {
                        hosts
                            .iter()
                            .try_for_each(|h| h.prepare(client_key, etc_hosts))
                    })
                })
                .collect();
            jobs.into_iter()
                .try_for_each(|j| j.join().expect("preparing a host panicked"))
        })?;

        // All namespaces and links in two `ip` processes.
        let mut root = Vec::new();
        let mut switch = Vec::new();
        for h in &self.hosts {
            root.push(format!("netns add {}", h.netns));
            root.push(format!(
                "link add {} netns {} type veth peer name eth0 netns {}",
                h.port, self.switch, h.netns
            ));
            switch.push(format!("link set {} master br0 up", h.port));
        }
        ip_batch(None, &root)?;
        ip_batch(Some(&self.switch), &switch)?;

        self.write_ssh_files()?;
        if !start {
            return self.hosts.iter().try_for_each(Host::net_up);
        }

        let pids_path = self.dir.join("pids");
        thread::scope(|s| {
            let jobs: Vec<_> = self
                .hosts
                .chunks_mut(chunk)
                .map(|hosts| {
                    let pids_path = &pids_path;
                    s.spawn(move || hosts.iter_mut().try_for_each(|h| h.start(pids_path)))
                })
                .collect();
            jobs.into_iter()
                .try_for_each(|j| j.join().expect("starting a host panicked"))
        })?;

        self.find_inits()?;
        self.wait_for_sshd()
    }

    fn etc_hosts(&self) -> String {
        let mut s =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for h in &self.hosts {
            let _ = writeln!(s, "{}\t{}", h.ip, h.name);
        }
        s
    }

    fn write_ssh_files(&self) -> Result<(), String> {
        let mut known = String::new();
        let mut config = format!(
            "# Test fleet {}, written by tests/support/fleet.rs, removed with the fleet.\n",
            self.prefix
        );
        for h in &self.hosts {
            let public = read(&h.dir.join("etc.upper/ssh/ssh_host_ed25519_key.pub"))?;
            let key: Vec<&str> = public.split_whitespace().take(2).collect();
            let _ = writeln!(known, "{},{} {}", h.name, h.ip, key.join(" "));
            let _ = writeln!(config, "\nHost {}\n    HostName {}", h.name, h.ip);
        }
        let _ = write!(
            config,
            "\n# Every host, also when named by its address.\nHost *\n    User root\n    \
             IdentityFile {}\n    IdentitiesOnly yes\n    UserKnownHostsFile {}\n    \
             StrictHostKeyChecking yes\n    BatchMode yes\n    ConnectTimeout 10\n",
            self.identity.display(),
            self.known_hosts.display()
        );
        write(&self.known_hosts, &known, 0o644)?;
        write(&self.ssh_config, &config, 0o644)
    }

    /// The launcher execs unshare, which forks PID 1 of the new namespace.
    fn find_inits(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children = children_by_parent();
            for h in &mut self.hosts {
                if h.init.is_some() {
                    continue;
                }
                h.check_launcher()?;
                let launcher = h.launcher.as_ref().map(|l| l.id() as i32);
                let found = launcher
                    .and_then(|p| children.get(&p))
                    .and_then(|c| c.first().copied());
                if let Some(init) = found.and_then(Proc::of) {
                    append(
                        &self.dir.join("pids"),
                        &format!("{} {}\n", init.pid, init.start),
                    )?;
                    h.init = Some(init);
                }
            }
            let missing: Vec<&str> = self
                .hosts
                .iter()
                .filter(|h| h.init.is_none())
                .map(|h| h.name.as_str())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no PID 1 appeared for {missing:?}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ready when its sshd says it listens (it logs that right after
    /// listen(2)); then each host must also answer on port 22 from here,
    /// which proves the path through the bridge.
    fn wait_for_sshd(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut waiting: Vec<usize> = (0..self.hosts.len()).collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for i in waiting {
                let h = &mut self.hosts[i];
                h.check_launcher()?;
                let log = fs::read_to_string(h.dir.join("sshd.log")).unwrap_or_default();
                if !log.contains(&format!("Server listening on {} port 22.", h.ip)) {
                    still.push(i);
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                if Instant::now() > deadline {
                    let names: Vec<&str> = waiting
                        .iter()
                        .map(|&i| self.hosts[i].name.as_str())
                        .collect();
                    return Err(format!(
                        "sshd not listening after {START_TIMEOUT:?} on {names:?}"
                    ));
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        for h in &self.hosts {
            let addr: SocketAddr = format!("{}:22", h.ip)
                .parse()
                .map_err(|e| format!("address of {}: {e}", h.name))?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
                format!(
                    "sshd on {} listens, but {addr} cannot be reached from this machine: {e}",
                    h.name
                )
            })?;
        }
        Ok(())
    }

    /// The last lines of every host's sshd log.
    fn logs(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            let log = fs::read_to_string(h.dir.join("sshd.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            let _ = writeln!(
                out,
                "--- {} sshd.log ({} lines, last 20):",
                h.name,
                lines.len()
            );
            for l in tail {
                let _ = writeln!(out, "    {l}");
            }
        }
        out
    }

    /// Removes everything; returns what could not be removed.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        // Killing PID 1 of a PID namespace kills every process in it.
        for h in &mut self.hosts {
            match (h.init, h.launcher.as_mut()) {
                (Some(init), _) => init.kill(),
                // No init found: unshare's --kill-child takes it down.
                (None, Some(l)) => {
                    let _ = l.kill();
                }
                (None, None) => {}
            }
        }
        for h in &mut self.hosts {
            if let Some(mut l) = h.launcher.take() {
                // unshare exits once its child, and with it the whole PID
                // namespace, is gone.
                if let Err(e) = wait_bounded(&mut l, Duration::from_secs(10)) {
                    problems.push(format!("{}: {e}", h.name));
                }
            }
            if let Some(init) = h.init
                && init.alive()
            {
                problems.push(format!("{}: PID 1 ({}) still alive", h.name, init.pid));
            }
        }
        // Deleting the root end of the uplink is synchronous, unlike the
        // destruction of a namespace and the links inside it.
        let mut lines = vec![format!("link del {}", self.prefix)];
        lines.extend(self.hosts.iter().map(|h| format!("netns del {}", h.netns)));
        lines.push(format!("netns del {}", self.switch));
        let _ = ip_batch_force(&lines);
        let (links, netns) = (links_of(self.k), netns_of(self.k));
        if !links.is_empty() || !netns.is_empty() {
            problems.push(format!("left behind: links {links:?}, netns {netns:?}"));
        }
        if let Err(e) = locked(|| fs::remove_dir_all(&self.dir)) {
            problems.push(format!("removing {}: {e}", self.dir.display()));
        }
        problems
    }
}

/// `nsenter --target=PID NAMESPACES… -- ARGV…`: as root in a host, with a
/// clean environment (the host's PATH, root's HOME) and stdin closed.
pub fn nsenter(pid: i32, namespaces: &[&str], argv: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--target={pid}"))
        .args(namespaces)
        .arg("--")
        .args(argv)
        .env_clear()
        .env("PATH", HOST_PATH)
        .env("HOME", "/root")
        .env("USER", "root")
        .env("LOGNAME", "root")
        .stdin(Stdio::null());
    cmd
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let started = Instant::now();
        let problems = self.teardown();
        eprintln!(
            "fleet {}: torn down in {} ms",
            self.prefix,
            started.elapsed().as_millis()
        );
        if !problems.is_empty() {
            let msg = format!("fleet {}: teardown: {}", self.prefix, problems.join("; "));
            // A second panic while unwinding would abort the test binary.
            if thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

impl Host {
    /// Writes the host's state directory: overlay upper/work dirs, with the
    /// files that make it this host, its fresh /root and /usr/local.
    fn prepare(&self, client_key: &str, etc_hosts: &str) -> Result<(), String> {
        mkdir(&self.dir, 0o755)?;
        for d in OVERLAID {
            let lower = Path::new("/").join(d);
            let Ok(meta) = fs::metadata(&lower) else {
                continue;
            };
            // The merged root takes the upper dir's mode.
            mkdir(&self.dir.join(format!("{d}.upper")), meta.mode() & 0o7777)?;
            mkdir(&self.dir.join(format!("{d}.work")), 0o755)?;
        }
        // etc.upper is the upper layer of /etc itself. A directory in it that
        // shadows one of the machine's gives the merged directory its mode.
        let etc = self.dir.join("etc.upper");
        let ssh = etc.join("ssh");
        mkdir(&ssh, 0o755)?;
        write(&etc.join("hostname"), &format!("{}\n", self.name), 0o644)?;
        write(&etc.join("hosts"), etc_hosts, 0o644)?;
        write(&ssh.join("sshd_config"), &self.sshd_config(), 0o644)?;
        keygen(
            &ssh.join("ssh_host_ed25519_key"),
            &format!("root@{}", self.name),
        )?;
        hide_machine_host_keys(&ssh)?;

        let root = self.dir.join("root");
        mkdir(&root, 0o700)?;
        for f in [".bashrc", ".profile"] {
            let skel = Path::new("/etc/skel").join(f);
            if skel.exists() {
                fs::copy(&skel, root.join(f)).map_err(|e| format!("copy {f}: {e}"))?;
            }
        }
        mkdir(&root.join(".ssh"), 0o700)?;
        write(&root.join(".ssh/authorized_keys"), client_key, 0o600)?;

        let local = self.dir.join("usr-local");
        mkdir(&local, 0o755)?;
        for d in [
            "bin", "etc", "games", "include", "lib", "sbin", "share", "src",
        ] {
            mkdir(&local.join(d), 0o755)?;
        }
        Ok(())
    }

    fn sshd_config(&self) -> String {
        format!(
            "# Test fleet host {name}, written by tests/support/fleet.rs.\n\
             ListenAddress {ip}:22\n\
             HostKey /etc/ssh/ssh_host_ed25519_key\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             # No PAM stack to configure on a test host; keys need none.\n\
             UsePAM no\n\
             AuthorizedKeysFile .ssh/authorized_keys\n\
             LogLevel VERBOSE\n\
             PrintMotd no\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            name = self.name,
            ip = self.ip
        )
    }

    /// An error once the launcher has exited: the host is dead (its log says why).
    fn check_launcher(&mut self) -> Result<(), String> {
        match self.launcher.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Err(format!("host {} exited ({status})", self.name)),
            Some(Err(e)) => Err(format!("host {}: waiting for its launcher: {e}", self.name)),
            _ => Ok(()),
        }
    }

    /// Network inside the host.
    fn net_up(&self) -> Result<(), String> {
        ip_batch(
            Some(&self.netns),
            &[
                "link set lo up".into(),
                format!("addr add {}/24 dev eth0", self.ip),
                "link set eth0 up".into(),
            ],
        )
    }

    /// Network inside the host, then its PID 1.
    fn start(&mut self, pids_path: &Path) -> Result<(), String> {
        self.net_up()?;
        self.start_pid1(pids_path)
    }

    /// The launcher of the host's PID 1 (fleet-host.sh, then sshd).
    fn start_pid1(&mut self, pids_path: &Path) -> Result<(), String> {
        let log_path = self.dir.join("sshd.log");
        let log = fs::File::create(&log_path).map_err(|e| format!("create {log_path:?}: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let dir = self
            .dir
            .to_str()
            .ok_or_else(|| format!("non-UTF-8 path {:?}", self.dir))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(["unshare", "--mount", "--uts", "--ipc", "--pid", "--fork"])
            .args(["--mount-proc", "--kill-child", "--"])
            .args(["sh", HOST_SCRIPT, &self.name, dir])
            // The test's environment is no business of the host's.
            .env_clear()
            .env("PATH", HOST_PATH)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.name))?;
        let pid = child.id() as i32;
        self.launcher = Some(child);
        // Recorded so that a later run can end it if this process is killed.
        let start = Proc::of(pid).map_or(0, |p| p.start);
        append(pids_path, &format!("{pid} {start}\n"))
    }
}

/// A process identified by pid and start time, so that a recycled pid is
/// never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Proc {
    /// Its pid, as this process sees it.
    pub pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks since boot).
    pub start: u64,
}

impl Proc {
    /// The live (not zombie) process `pid`.
    pub fn of(pid: i32) -> Option<Proc> {
        let (_, state, _, start) = stat(pid)?;
        (state != 'Z').then_some(Proc { pid, start })
    }

    /// Still the same process, and not a zombie.
    pub fn alive(&self) -> bool {
        Proc::of(self.pid) == Some(*self)
    }

    /// SIGKILL, if it is still the same process.
    pub fn kill(&self) {
        if self.alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// (pid, state, ppid, start time) from /proc/PID/stat.
fn stat(pid: i32) -> Option<(i32, char, i32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; it ends at the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((pid, state, ppid, start))
}

fn children_by_parent() -> BTreeMap<i32, Vec<i32>> {
    let mut map: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return map;
    };
    for e in entries.flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok())
            && let Some((_, _, ppid, _)) = stat(pid)
        {
            map.entry(ppid).or_default().push(pid);
        }
    }
    map
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("launcher {} did not exit; killed", child.id()));
            }
            Err(e) => return Err(format!("waiting for launcher {}: {e}", child.id())),
        }
    }
}

/// Runs `f` holding the machine-wide fleet lock (allocation, clean-up of dead
/// fleets, removal of state directories), so that concurrent test processes
/// never take the same fleet number or clean up each other's fleet halfway.
pub fn locked<T>(f: impl FnOnce() -> T) -> T {
    ensure_base();
    let path = Path::new(BASE).join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("fleet: open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("fleet: lock {}: {e}", path.display()));
    // Released when `file` is closed, after `f`, also if `f` panics.
    f()
}

/// /tmp is world-writable: refuse a /tmp/sjf that someone else made.
fn ensure_base() {
    let base = Path::new(BASE);
    match fs::create_dir(base) {
        // Whatever the umask.
        Ok(()) => fs::set_permissions(base, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("fleet: chmod {BASE}: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("fleet: create {BASE}: {e}"),
    }
    let meta = fs::symlink_metadata(base).unwrap_or_else(|e| panic!("fleet: stat {BASE}: {e}"));
    assert!(
        meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o022 == 0,
        "fleet: {BASE} must be a directory owned by root and writable only by it"
    );
}

/// The state directory of fleet K; it exists exactly while fleet K does.
pub fn fleet_dir(k: u8) -> PathBuf {
    Path::new(BASE).join(k.to_string())
}

/// Takes a fleet number that nothing uses: no state directory, link,
/// namespace or route of that number. Numbers go round (the last one taken is
/// kept in `BASE/last`) rather than lowest-first, so that a number, and with it
/// names and addresses, is not reused the moment a fleet is gone: a test
/// checking that its torn-down fleet left nothing must not find the next
/// fleet's things under the same names. Call with the lock held.
fn allocate() -> Result<(u8, PathBuf), String> {
    let me = Proc::of(std::process::id() as i32).ok_or("cannot read own /proc entry")?;
    let routes = routes_near_net();
    let last_path = Path::new(BASE).join("last");
    let last: u8 = fs::read_to_string(&last_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    for k in (1..=254u8).cycle().skip(usize::from(last % 254)).take(254) {
        let dir = fleet_dir(k);
        if dir.exists() || !links_of(k).is_empty() || !netns_of(k).is_empty() || routes.contains(&k)
        {
            continue;
        }
        mkdir(&dir, 0o755)?;
        write(
            &dir.join("owner"),
            &format!("{} {}\n", me.pid, me.start),
            0o644,
        )?;
        write(&last_path, &format!("{k}\n"), 0o644)?;
        return Ok((k, dir));
    }
    Err(format!("all 254 fleet numbers ({NET}.K.0/24) are taken"))
}

/// Third octets K of 10.213.K.0/24 that the machine already routes somewhere
/// more specific than 10.213.0.0/16 (another network we must not shadow).
fn routes_near_net() -> BTreeSet<u8> {
    let mut ks = BTreeSet::new();
    let table = fs::read_to_string("/proc/net/route").unwrap_or_default();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dest), Some(mask)) = (f.get(1), f.get(7)) else {
            continue;
        };
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(dest, 16), u32::from_str_radix(mask, 16))
        else {
            continue;
        };
        // The kernel prints the network-order word as a native integer.
        let (d, m) = (dest.to_ne_bytes(), mask.to_ne_bytes());
        if m[0] == 255 && m[1] == 255 && d[0] == 10 && d[1] == 213 {
            if m[2] == 255 {
                ks.insert(d[2]);
            } else {
                // A route wider than /24 inside 10.213/16: every K it covers.
                for k in 0..=255u8 {
                    if k & m[2] == d[2] & m[2] {
                        ks.insert(k);
                    }
                }
            }
        }
    }
    ks
}

/// Links of fleet K in the root namespace (`/sys` here is the root
/// namespace's).
fn links_of(k: u8) -> Vec<String> {
    let name = format!("{PREFIX}{k}");
    names_in("/sys/class/net")
        .into_iter()
        .filter(|n| *n == name)
        .collect()
}

/// Named network namespaces of fleet K.
fn netns_of(k: u8) -> Vec<String> {
    let prefix = format!("{PREFIX}{k}-");
    names_in("/run/netns")
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Names of the entries in `dir` (none if it cannot be read).
pub fn names_in(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Fleet number of a name this harness made: `sjfK` or `sjfK-…`.
pub fn fleet_number(name: &str) -> Option<u8> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

/// Removes every fleet whose creating process is gone (killed before its
/// teardown ran). Call with the lock held.
fn remove_leftovers() {
    let mut ks = BTreeSet::new();
    ks.extend(names_in(BASE).iter().filter_map(|n| n.parse::<u8>().ok()));
    ks.extend(
        names_in("/run/netns")
            .iter()
            .filter_map(|n| fleet_number(n)),
    );
    ks.extend(
        names_in("/sys/class/net")
            .iter()
            .filter(|n| !n.contains('-'))
            .filter_map(|n| fleet_number(n)),
    );
    for k in ks {
        let dir = fleet_dir(k);
        let owner = fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|s| parse_proc(&s));
        if owner.is_some_and(|o| o.alive()) {
            continue;
        }
        eprintln!("fleet: removing leftovers of dead fleet {PREFIX}{k}");
        remove_dead_fleet(k, &dir);
    }
}

fn parse_proc(line: &str) -> Option<Proc> {
    let mut f = line.split_whitespace();
    Some(Proc {
        pid: f.next()?.parse().ok()?,
        start: f.next()?.parse().ok()?,
    })
}

fn remove_dead_fleet(k: u8, dir: &Path) {
    let recorded: Vec<Proc> = fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(parse_proc)
        .collect();
    for p in &recorded {
        p.kill();
    }
    // A process started but not yet recorded when its test was killed still
    // runs in one of this fleet's network namespaces, which only this
    // harness creates; end those too.
    for ns in netns_of(k) {
        let pids = Command::new("ip").args(["netns", "pids", &ns]).output();
        for pid in pids
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
        {
            if let Some(p) = Proc::of(pid) {
                p.kill();
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorded.iter().any(Proc::alive) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let mut lines: Vec<String> = links_of(k)
        .iter()
        .map(|l| format!("link del {l}"))
        .collect();
    lines.extend(netns_of(k).iter().map(|n| format!("netns del {n}")));
    if !lines.is_empty() {
        let _ = ip_batch_force(&lines);
    }
    if dir.exists()
        && let Err(e) = fs::remove_dir_all(dir)
    {
        eprintln!("fleet: removing {}: {e}", dir.display());
    }
}

/// Panics naming the Debian package of the first tool the fleet needs that is missing.
pub fn check_tools() {
    let need = [
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("/usr/sbin/sshd", "openssh-server"),
    ];
    for (tool, package) in need {
        let found = if tool.starts_with('/') {
            Path::new(tool).exists()
        } else {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        };
        assert!(
            found,
            "fleet: `{tool}` not found; install the Debian package {package} \
             (./run-tests does that when run as root)"
        );
    }
}

/// Runs the command; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip [-n NETNS] -batch -` with one command per line: one process for
/// many changes.
fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), String> {
    ip_batch_args(netns, &[], lines)
}

/// Like `ip_batch` in the root namespace, going on past failing lines (for
/// teardown, where some things may already be gone).
fn ip_batch_force(lines: &[String]) -> Result<(), String> {
    ip_batch_args(None, &["-force"], lines)
}

fn ip_batch_args(netns: Option<&str>, extra: &[&str], lines: &[String]) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(extra)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("start ip: {e}"))?;
    let input = lines.join("\n") + "\n";
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .map_err(|e| format!("write to ip: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip{} -batch failed ({}): {}\ninput:\n{input}",
            netns.map(|n| format!(" -n {n}")).unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn keygen(path: &Path, comment: &str) -> Result<(), String> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path))
    .map(drop)
}

/// The machine's other host keys show through the /etc overlay; whiteouts
/// (0:0 character devices in the upper dir) hide them, so the host's
/// /etc/ssh holds only its own key.
pub fn hide_machine_host_keys(ssh: &Path) -> Result<(), String> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    for name in names_in("/etc/ssh") {
        if name.starts_with("ssh_host_") && !name.starts_with("ssh_host_ed25519_key") {
            mknod(&ssh.join(&name), SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(|e| format!("whiteout {name}: {e}"))?;
        }
    }
    Ok(())
}

/// `mkdir` (fine if it exists), then `chmod mode`.
pub fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir {}: {e}", path.display())),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Writes the file, then `chmod mode`.
pub fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("append to {}: {e}", path.display()))
}

/// The file's text, or an error naming it.
pub fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))
}

/// Fault injection on a running fleet: power loss, a small disk, a slow link.
impl Fleet {
    /// Pid (as this machine sees it) of the host's PID 1, if it runs.
    pub fn init_pid(&self, host: &str) -> Option<i32> {
        self.host(host).init.filter(Proc::alive).map(|p| p.pid)
    }

    /// A power loss: every process of the host dies at once (SIGKILL of its
    /// PID 1 takes the whole PID namespace), and with the last one its mount
    /// namespace, so /run, /tmp and every mount made inside it are gone. What
    /// the host wrote to /etc, /var, … stays in its upper dirs, as on a disk
    /// (the page cache survives: this loses processes, not unsynced writes).
    pub fn power_off(&mut self, host: &str) {
        let h = self.host_mut(host);
        if let Some(init) = h.init.take() {
            init.kill();
        }
        if let Some(mut l) = h.launcher.take()
            && let Err(e) = wait_bounded(&mut l, Duration::from_secs(10))
        {
            panic!("power_off {host}: {e}");
        }
    }

    /// Boots a host that [`Fleet::power_off`] stopped: fresh namespaces over
    /// the same disk state, sshd as PID 1 again. Returns once sshd listens.
    pub fn power_on(&mut self, host: &str) {
        let pids_path = self.dir.join("pids");
        let prefix = self.prefix.clone();
        let h = self.host_mut(host);
        assert!(h.init.is_none(), "power_on {host}: the host is running");
        // A volatile overlay that was not unmounted cleanly leaves a marker
        // in its work dir that refuses the next mount (as after a crash):
        // the work dirs start empty, the upper dirs (the disk) are kept.
        for d in OVERLAID {
            let work = h.dir.join(format!("{d}.work"));
            if work.exists() {
                let _ = fs::remove_dir_all(&work);
                if let Err(e) = mkdir(&work, 0o755) {
                    panic!("fleet {prefix}: power_on {host}: {e}");
                }
            }
        }
        // Its network namespace survives (named under /run/netns); lo and
        // eth0 keep their addresses, so only PID 1 is started again.
        if let Err(e) = h.start_pid1(&pids_path) {
            panic!("fleet {prefix}: power_on {host}: {e}");
        }
        if let Err(e) = self.find_inits().and_then(|()| self.wait_for_sshd()) {
            panic!("fleet {prefix}: power_on {host}: {e}\n{}", self.logs());
        }
    }

    /// Mounts a tmpfs of `size` bytes and at most `inodes` inodes on `path`
    /// inside the host, holding a copy of what `path` held (owner and modes
    /// kept), so the host goes on as before on a disk that is almost full.
    /// The directory's own contents underneath are hidden until
    /// [`Fleet::unmount`].
    pub fn mount_small_tmpfs(&self, host: &str, path: &str, size: u64, inodes: u64) {
        let script = format!(
            "set -e; t=$(mktemp -d /tmp/small.XXXXXX); \
             mount -t tmpfs -o size={size},nr_inodes={inodes},mode=0755 small \"$t\"; \
             cp -a \"$1\"/. \"$t\"/; chown --reference=\"$1\" \"$t\"; chmod --reference=\"$1\" \"$t\"; \
             mount --move \"$t\" \"$1\"; rmdir \"$t\""
        );
        let out = self.exec(host, &["sh", "-c", &script, "sh", path]);
        assert!(
            out.status.success(),
            "mount a small tmpfs on {host}:{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Lazily unmounts whatever is mounted on `path` inside the host (a
    /// process may still use it), showing what lies underneath again.
    pub fn unmount(&self, host: &str, path: &str) {
        let out = self.exec(host, &["umount", "-l", path]);
        assert!(
            out.status.success(),
            "umount {host}:{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `tc qdisc ARGS…` in the switch's namespace, not yet run.
    fn switch_tc(&self, args: &[&str]) -> Command {
        let mut tc = Command::new("ip");
        tc.args(["netns", "exec", &self.switch, "tc", "qdisc"])
            .args(args);
        tc
    }

    /// Slows what is sent to the host to `kbit` kbit/s (a token bucket on its
    /// bridge port), so that an upload takes long enough to be interrupted.
    pub fn slow_link(&self, host: &str, kbit: u32) {
        let port = &self.host(host).port;
        let rate = format!("{kbit}kbit");
        if let Err(e) = run(self.switch_tc(&["replace", "dev", port]).args([
            "root", "tbf", "rate", &rate, "burst", "32kbit", "latency", "400ms",
        ])) {
            panic!("fleet {}: slowing {host}'s link: {e}", self.prefix);
        }
    }

    /// Undoes [`Fleet::slow_link`].
    pub fn fast_link(&self, host: &str) {
        let port = &self.host(host).port;
        let _ = run(self.switch_tc(&["del", "dev", port]).arg("root"));
    }

    fn host_mut(&mut self, name: &str) -> &mut Host {
        let prefix = self.prefix.clone();
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("fleet {prefix} has no host {name:?}"))
    }
}
