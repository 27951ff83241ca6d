//! Test hosts that boot Debian's systemd as PID 1 in container mode, reached
//! with the real OpenSSH client like the hosts of [`Fleet`]: `ssh -F
//! <ssh_config> app1`. They exist so that what shipjar does on a systemd host
//! (the unit, `systemctl`) runs against a real systemd.
//!
//! A test binary that uses it declares both modules:
//! `#[path = "support/fleet.rs"] mod fleet;` and
//! `#[path = "support/systemd_host.rs"] mod systemd_host;`.
//!
//! # Design
//!
//! The network, keys, known_hosts, ssh_config, state directory and the
//! clean-up of a killed run's leftovers are [`Fleet`]'s
//! ([`Fleet::unstarted`]): hosts `appI` in network namespaces `sjfK-appI` on
//! the fleet's private bridge (10.213.K.0/24, no default route). Here each
//! host gets, in `<host dir>/systemd/`:
//!
//! - `upper/`, the upper layer of the host's root (an overlay on the
//!   machine's `/`): `/etc/hostname`, `/etc/hosts`, a fresh
//!   `/etc/machine-id`, `/etc/ssh` (the fleet's sshd config, listening on the
//!   host's address only, and its host key; the machine's other host keys
//!   hidden), an empty `/root` holding only the fleet's authorized key and an
//!   empty `/usr/local` (both opaque: the machine's do not show through), and
//!   masks (`/etc/systemd/system/UNIT -> /dev/null`) for every unit the
//!   machine enables except ssh (a database server, gettys, timers that run
//!   apt …) and for the units that touch the kernel or hardware
//!   ([`MASKED`]). It is kept across [`SystemdFleet::reboot`].
//! - `work/`, the overlay's work dir; `root/`, where the root is mounted
//!   (inside the host's mount namespace only); `console.log`, the host's
//!   `/dev/console` (a plain file: systemd writes no status to a console
//!   that is not a terminal, its log is the journal; what programs in the
//!   host write to the console lands there); `launcher.log`, the output of
//!   the start script.
//!
//! `systemd-host.sh enter CGROUP NETNS DIR` makes the cgroup `sjfK-appI` at
//! the root of the machine's name=systemd and unified hierarchies (or of
//! cgroup2) and moves itself there, then runs, in the host's network
//! namespace, `unshare --mount --uts --ipc --pid --cgroup --fork --kill-child
//! --propagation private`; the child, PID 1 of the new PID namespace, mounts
//! the overlay root, its own /proc (kernel knobs read-only except its
//! network's), a read-only /sys with the host's cgroups, a minimal /dev of its
//! own (never the machine's), tmpfs on /run, /tmp, /var/tmp and /var/log,
//! pivots into it, detaches the machine's mounts and execs `/lib/systemd/systemd`
//! with `container=shipjar-test`. The host is booted when `systemctl
//! is-system-running` says `running` (or `degraded`: the failed units are then
//! named) and its sshd (the `ssh.service` unit) answers on port 22.
//!
//! Stopping a host is `systemctl poweroff` inside, then SIGKILL to its PID 1
//! by pid if it has not ended within [`POWEROFF_GRACE`]: the kernel ends the
//! whole PID namespace, the mount namespace and every mount in it go with its
//! last process. Then the host's cgroups are removed. Teardown (`Drop`, also
//! on panic) stops every host, then the [`Fleet`] removes links, namespaces
//! and state directories. A run killed before its teardown leaves hosts
//! behind: the next fleet made on the machine kills them (the pids are
//! recorded, and they run in the dead fleet's network namespaces), and
//! [`SystemdFleet::new`] removes cgroups of fleets that no longer exist.
//!
//! Needs root, iproute2, util-linux, openssh-server, openssh-client and
//! systemd (`./run-tests` installs them when run as root).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::fleet::{self, Fleet, Proc};

/// The script that builds a host's root and execs systemd in it.
const HOST_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/systemd-host.sh");
/// PATH for processes started inside a host.
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a host may take from start to `running` and sshd answering.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `systemctl poweroff` may take before PID 1 is killed.
pub const POWEROFF_GRACE: Duration = Duration::from_secs(5);
/// The machine's enabled units that the hosts keep: their sshd.
const KEPT: [&str; 2] = ["ssh.service", "sshd.service"];
/// Masked in every host besides the machine's enabled units: what would
/// touch the kernel, hardware or the network outside, or run a getty on the
/// console (in a container systemd adds `console-getty.service` itself).
pub const MASKED: [&str; 22] = [
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "systemd-timesyncd.service",
    "systemd-time-wait-sync.service",
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "systemd-pstore.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "fstrim.timer",
    "e2scrub_all.timer",
];

/// Fails the test loudly unless it runs as root.
pub fn require_root() {
    fleet::require_root()
}

/// What `systemctl is-system-running` said when the host had booted.
#[derive(Clone, Debug, PartialEq)]
pub enum SystemState {
    /// Every unit started.
    Running,
    /// Booted, but these units failed.
    Degraded {
        /// The failed units' names.
        failed: Vec<String>,
    },
}

/// How a host's systemd ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stopped {
    /// `systemctl poweroff` ended it, after this long.
    PoweredOff(Duration),
    /// It was still running after [`POWEROFF_GRACE`]; PID 1 was killed.
    Killed,
    /// It was not running.
    NotRunning,
}

/// One boot of a host: the processes that make it.
struct Boot {
    /// `sh systemd-host.sh enter …` (exec'ed into nsenter, then unshare).
    launcher: Child,
    /// The host's PID 1 (systemd), as the machine sees it.
    init: Proc,
    /// From starting the launcher to booted.
    took: Duration,
    state: SystemState,
}

struct SdHost {
    name: String,
    ip: String,
    netns: String,
    /// Name of its cgroup at the root of each hierarchy (= its netns name).
    cgroup: String,
    /// `<fleet host dir>/systemd`.
    state_dir: PathBuf,
    boot: Mutex<Option<Boot>>,
}

/// N hosts booting systemd, on a [`Fleet`]'s network. Dropping it stops
/// and removes them all.
pub struct SystemdFleet {
    hosts: Vec<SdHost>,
    // Dropped after `hosts` are stopped (`Drop` stops them first).
    fleet: Fleet,
}

/// The fleet shared by the tests of one test binary.
enum Shared {
    NotStarted,
    Up(Arc<SystemdFleet>),
    Failed(String),
}

static SHARED: Mutex<Shared> = Mutex::new(Shared::NotStarted);

/// The test binary's fleet of `n` hosts, booted by the first caller (tests
/// run in parallel: they share it rather than each booting its own) and
/// torn down when the test binary exits. If booting failed, every caller
/// panics with that failure.
pub fn shared(n: usize) -> Arc<SystemdFleet> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    match &*shared {
        Shared::Up(f) => {
            assert_eq!(f.hosts.len(), n, "the shared fleet has another size");
            return Arc::clone(f);
        }
        Shared::Failed(e) => panic!("the shared systemd fleet failed to boot: {e}"),
        Shared::NotStarted => {}
    }
    match std::panic::catch_unwind(|| SystemdFleet::new(n)) {
        Ok(f) => {
            let f = Arc::new(f);
            *shared = Shared::Up(Arc::clone(&f));
            // SAFETY: registers a plain function; it runs once, at exit,
            // after every test has finished.
            unsafe { libc::atexit(tear_down_shared) };
            f
        }
        Err(payload) => {
            let e = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            *shared = Shared::Failed(e.clone());
            panic!("{e}");
        }
    }
}

/// Stops the shared fleet when the test binary exits (statics are never
/// dropped; `exit` runs this). Tests are over: the last reference goes here.
extern "C" fn tear_down_shared() {
    let taken = std::mem::replace(
        &mut *SHARED.lock().unwrap_or_else(PoisonError::into_inner),
        Shared::NotStarted,
    );
    // A panic must not unwind out of an extern "C" function.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(taken)));
}

impl SystemdFleet {
    /// Boots `n` hosts `app1`..`appN` in parallel. Panics naming what failed
    /// (with the host's logs); whatever was created is removed again.
    pub fn new(n: usize) -> SystemdFleet {
        require_root();
        fleet::check_tools();
        assert!(
            Path::new("/lib/systemd/systemd").exists(),
            "systemd hosts: /lib/systemd/systemd not found; install the Debian package systemd"
        );
        let started = Instant::now();
        let fleet = Fleet::unstarted(n);
        remove_leftover_cgroups();
        let hosts = fleet
            .hosts()
            .into_iter()
            .map(|name| SdHost {
                ip: fleet.ip(&name),
                netns: fleet.netns(&name).to_string(),
                cgroup: fleet.netns(&name).to_string(),
                state_dir: fleet.host_dir(&name).join("systemd"),
                boot: Mutex::new(None),
                name,
            })
            .collect();
        // From here on a panic drops `f`, which stops what runs.
        let f = SystemdFleet { hosts, fleet };
        let masks = masked_units();
        for h in &f.hosts {
            if let Err(e) = f.prepare(h, &masks) {
                panic!("systemd host {}: preparing: {e}", h.name);
            }
        }
        let results: Vec<Result<(), String>> = thread::scope(|s| {
            let jobs: Vec<_> = f.hosts.iter().map(|h| s.spawn(|| f.start(h))).collect();
            jobs.into_iter()
                .map(|j| j.join().unwrap_or_else(|_| Err("boot panicked".into())))
                .collect()
        });
        let failures: Vec<String> = f
            .hosts
            .iter()
            .zip(&results)
            .filter_map(|(h, r)| {
                r.as_ref()
                    .err()
                    .map(|e| format!("{}: {e}\n{}", h.name, f.diagnostics(&h.name)))
            })
            .collect();
        if !failures.is_empty() {
            panic!(
                "systemd fleet {}: booting failed:\n{}",
                f.fleet.prefix(),
                failures.join("\n")
            );
        }
        let each: Vec<String> = f
            .hosts
            .iter()
            .map(|h| {
                let boot = h.boot.lock().unwrap_or_else(PoisonError::into_inner);
                boot.as_ref().map_or_else(String::new, |b| {
                    format!("{} {} ms ({:?})", h.name, b.took.as_millis(), b.state)
                })
            })
            .collect();
        eprintln!(
            "systemd fleet {}: {n} hosts booted in {} ms: {}",
            f.fleet.prefix(),
            started.elapsed().as_millis(),
            each.join(", ")
        );
        f
    }

    /// The host names: `["app1", …]`.
    pub fn hosts(&self) -> Vec<String> {
        self.fleet.hosts()
    }

    /// The ssh config reaching every host as root, with strict host key
    /// checking against [`SystemdFleet::known_hosts`].
    pub fn ssh_config(&self) -> &Path {
        self.fleet.ssh_config()
    }

    /// The known_hosts file with every host's key.
    pub fn known_hosts(&self) -> &Path {
        self.fleet.known_hosts()
    }

    /// The host's address.
    pub fn ip(&self, host: &str) -> String {
        self.fleet.ip(host)
    }

    /// The underlying network fleet (names, links, state directory).
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// `ssh -F <ssh_config> HOST COMMAND`, as a user would, stdin closed.
    pub fn ssh(&self, host: &str, command: &str) -> Output {
        self.fleet.ssh(host, command)
    }

    /// Runs `argv` inside the host's namespaces (nsenter by the pid of its
    /// PID 1), as root with a clean environment, not through sshd.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Output {
        let init = self
            .init(host)
            .unwrap_or_else(|| panic!("systemd host {host} is not running"));
        exec_in(init, argv).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The host's PID 1 as the machine sees it, while it runs.
    pub fn init(&self, host: &str) -> Option<Proc> {
        let boot = self
            .host(host)
            .boot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        boot.as_ref().map(|b| b.init).filter(Proc::alive)
    }

    /// How the host's last boot ended up.
    pub fn state(&self, host: &str) -> Option<SystemState> {
        let boot = self
            .host(host)
            .boot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        boot.as_ref().map(|b| b.state.clone())
    }

    /// How long the host's last boot took (launch to booted and sshd answering).
    pub fn boot_time(&self, host: &str) -> Option<Duration> {
        let boot = self
            .host(host)
            .boot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        boot.as_ref().map(|b| b.took)
    }

    /// Stops the host's systemd ([`Stopped`] says how) and boots it again
    /// on the same upper dir: what it keeps on disk (/etc, /var/lib, …)
    /// survives, /run, /tmp, /var/tmp and /var/log start empty, like a real
    /// reboot. Panics naming the failure, with the host's logs.
    pub fn reboot(&self, host: &str) -> Stopped {
        let h = self.host(host);
        let stopped = self
            .stop(h)
            .unwrap_or_else(|e| panic!("stopping {host}: {e}"));
        if let Err(e) = self.start(h) {
            panic!("rebooting {host}: {e}\n{}", self.diagnostics(host));
        }
        stopped
    }

    /// Stops the host ([`Stopped`] says how) and removes its cgroups; it
    /// stays stopped. Panics if its PID 1 survives.
    pub fn power_off(&self, host: &str) -> Stopped {
        self.stop(self.host(host))
            .unwrap_or_else(|e| panic!("stopping {host}: {e}"))
    }

    /// The host's cgroup, as a directory name under each hierarchy's root.
    pub fn cgroup(&self, host: &str) -> &str {
        &self.host(host).cgroup
    }

    /// Proportional set size of every process of the host (its PID
    /// namespace), in KiB: what booting it costs the machine.
    pub fn pss_kib(&self, host: &str) -> u64 {
        let Some(init) = self.init(host) else {
            return 0;
        };
        let ns = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let Some(host_ns) = ns(init.pid) else {
            return 0;
        };
        fleet::names_in("/proc")
            .iter()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|&pid| ns(pid).as_ref() == Some(&host_ns))
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
            .filter_map(|rollup| {
                rollup
                    .lines()
                    .find_map(|l| l.strip_prefix("Pss:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// The host's failed units, launcher log, console and last journal
    /// lines: for failure messages.
    pub fn diagnostics(&self, host: &str) -> String {
        let h = self.host(host);
        let mut out = String::new();
        let tail = |path: &Path, n: usize| {
            let text = fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        out.push_str(&format!(
            "--- {host} launcher.log:\n{}\n--- {host} console:\n{}\n",
            tail(&h.state_dir.join("launcher.log"), 20),
            tail(&h.state_dir.join("console.log"), 20)
        ));
        if let Some(init) = self.init(host) {
            for argv in [
                &[
                    "systemctl",
                    "list-units",
                    "--failed",
                    "--plain",
                    "--no-legend",
                ][..],
                &["journalctl", "-b", "--no-pager", "-n", "40"][..],
            ] {
                let shown = exec_in(init, argv)
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_else(|e| e);
                out.push_str(&format!("--- {host} {}:\n{shown}\n", argv.join(" ")));
            }
        }
        out
    }

    fn host(&self, name: &str) -> &SdHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("systemd fleet has no host {name:?}"))
    }

    /// Writes the host's upper dir (see the module doc).
    fn prepare(&self, h: &SdHost, masks: &BTreeSet<String>) -> Result<(), String> {
        let from = self.fleet.host_dir(&h.name);
        let dir = &h.state_dir;
        fleet::mkdir(dir, 0o755)?;
        for d in ["work", "root"] {
            fleet::mkdir(&dir.join(d), 0o755)?;
        }
        fleet::write(&dir.join("console.log"), "", 0o644)?;
        let upper = dir.join("upper");
        // The merged root takes the upper dir's mode, as /etc takes etc/'s.
        fleet::mkdir(&upper, 0o755)?;
        let etc = upper.join("etc");
        fleet::mkdir(&etc, mode_of("/etc"))?;
        for f in ["hostname", "hosts"] {
            copy(&from.join("etc.upper").join(f), &etc.join(f))?;
        }
        fleet::write(
            &etc.join("machine-id"),
            &format!("{}\n", machine_id()?),
            0o444,
        )?;
        let ssh = etc.join("ssh");
        fleet::mkdir(&ssh, 0o755)?;
        for f in [
            "sshd_config",
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
        ] {
            copy(&from.join("etc.upper/ssh").join(f), &ssh.join(f))?;
        }
        fleet::hide_machine_host_keys(&ssh)?;
        let units = etc.join("systemd/system");
        fs::create_dir_all(&units).map_err(|e| format!("mkdir {}: {e}", units.display()))?;
        for unit in masks {
            std::os::unix::fs::symlink("/dev/null", units.join(unit))
                .map_err(|e| format!("mask {unit}: {e}"))?;
        }
        // A fresh /root with only the fleet's key, and an empty /usr/local,
        // as on a new server (and the machine's own /root stays hidden).
        let root = upper.join("root");
        copy_tree(&from.join("root"), &root)?;
        opaque(&root)?;
        let local = upper.join("usr/local");
        fleet::mkdir(&upper.join("usr"), 0o755)?;
        fleet::mkdir(&local, 0o755)?;
        for d in [
            "bin", "etc", "games", "include", "lib", "sbin", "share", "src",
        ] {
            fleet::mkdir(&local.join(d), 0o755)?;
        }
        opaque(&local)
    }

    /// Launches the host and waits until it has booted.
    fn start(&self, h: &SdHost) -> Result<(), String> {
        let started = Instant::now();
        let log_path = h.state_dir.join("launcher.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let dir = h
            .state_dir
            .to_str()
            .ok_or_else(|| format!("non-UTF-8 path {:?}", h.state_dir))?;
        let launcher = Command::new("sh")
            .args([HOST_SCRIPT, "enter", &h.cgroup, &h.netns, dir])
            // The test's environment is no business of the host's.
            .env_clear()
            .env("PATH", HOST_PATH)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("start {}: {e}", h.name))?;
        let launcher_pid = launcher.id() as i32;
        let mut launcher = Some(launcher);
        let kill_launcher = |l: &mut Option<Child>| {
            if let Some(mut l) = l.take() {
                let _ = l.kill();
                let _ = l.wait();
            }
        };
        if let Err(e) = self.fleet.record_pid(launcher_pid) {
            kill_launcher(&mut launcher);
            return Err(e);
        }
        let deadline = started + BOOT_TIMEOUT;
        // unshare's only child is the host's PID 1.
        let init = loop {
            if let Some(init) = child_of_unshare(launcher_pid).and_then(Proc::of) {
                break init;
            }
            if let Some(Ok(Some(status))) = launcher.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "the launcher exited ({status}) before PID 1 started"
                ));
            }
            if Instant::now() > deadline {
                kill_launcher(&mut launcher);
                return Err("no PID 1 appeared".into());
            }
            thread::sleep(Duration::from_millis(5));
        };
        self.fleet.record_pid(init.pid)?;
        let launcher = launcher.take().expect("launcher still ours");
        // Owned by the host from here: a failure below leaves it for `stop`.
        let mut slot = h.boot.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = Some(Boot {
            launcher,
            init,
            took: Duration::ZERO,
            state: SystemState::Running,
        });
        let boot = slot.as_mut().expect("just set");
        boot.state = wait_until_booted(boot, deadline)?;
        wait_for_port(&h.ip, deadline)?;
        boot.took = started.elapsed();
        Ok(())
    }

    /// Powers the host off (PID 1 killed after [`POWEROFF_GRACE`]), then
    /// removes its cgroups.
    fn stop(&self, h: &SdHost) -> Result<Stopped, String> {
        let taken = h.boot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(mut boot) = taken else {
            // A launch that failed before PID 1 appeared may have made it.
            remove_cgroup(&h.cgroup)?;
            return Ok(Stopped::NotRunning);
        };
        let started = Instant::now();
        let mut how = Stopped::Killed;
        if boot.init.alive() {
            // Returns once the job is queued; the host then shuts down.
            let _ = exec_in(boot.init, &["systemctl", "poweroff", "--no-block"]);
            let deadline = started + POWEROFF_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = boot.launcher.try_wait() {
                    how = Stopped::PoweredOff(started.elapsed());
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        if how == Stopped::Killed {
            // The kernel ends every process of the PID namespace with it;
            // unshare (--kill-child) exits once its child is gone.
            boot.init.kill();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match boot.launcher.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    _ => {
                        let _ = boot.launcher.kill();
                        let _ = boot.launcher.wait();
                        break;
                    }
                }
            }
        }
        if boot.init.alive() {
            return Err(format!("PID 1 ({}) still alive", boot.init.pid));
        }
        remove_cgroup(&h.cgroup)?;
        Ok(how)
    }
}

impl Drop for SystemdFleet {
    fn drop(&mut self) {
        let started = Instant::now();
        let results: Vec<(String, Result<Stopped, String>)> = thread::scope(|s| {
            let jobs: Vec<_> = self
                .hosts
                .iter()
                .map(|h| s.spawn(|| (h.name.clone(), self.stop(h))))
                .collect();
            jobs.into_iter().filter_map(|j| j.join().ok()).collect()
        });
        let problems: Vec<String> = results
            .iter()
            .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
            .collect();
        let how: Vec<String> = results
            .iter()
            .filter_map(|(name, r)| r.as_ref().ok().map(|s| format!("{name} {s:?}")))
            .collect();
        eprintln!(
            "systemd fleet {}: hosts stopped in {} ms ({})",
            self.fleet.prefix(),
            started.elapsed().as_millis(),
            how.join(", ")
        );
        if !problems.is_empty() {
            let msg = format!(
                "systemd fleet {}: teardown: {}",
                self.fleet.prefix(),
                problems.join("; ")
            );
            if thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
        // Then `fleet` drops: links, namespaces, state directories.
    }
}

/// Polls `systemctl is-system-running` until the boot is over.
fn wait_until_booted(boot: &mut Boot, deadline: Instant) -> Result<SystemState, String> {
    loop {
        if let Ok(Some(status)) = boot.launcher.try_wait() {
            return Err(format!("the host ended ({status}) while booting"));
        }
        let out = exec_in(boot.init, &["systemctl", "is-system-running"])?;
        let last = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let error = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match last.as_str() {
            "running" => return Ok(SystemState::Running),
            "degraded" => {
                let out = exec_in(
                    boot.init,
                    &[
                        "systemctl",
                        "list-units",
                        "--failed",
                        "--plain",
                        "--no-legend",
                    ],
                )?;
                let failed = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .map(str::to_string)
                    .collect();
                return Ok(SystemState::Degraded { failed });
            }
            "maintenance" | "stopping" => {
                return Err(format!("systemctl is-system-running: {last}"));
            }
            // initializing, starting, or systemd not answering yet.
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not booted after {BOOT_TIMEOUT:?}: systemctl is-system-running says {last:?} {error}"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the host's sshd accepts connections from the machine, which
/// also proves the path through the bridge.
fn wait_for_port(ip: &str, deadline: Instant) -> Result<(), String> {
    let addr: SocketAddr = format!("{ip}:22")
        .parse()
        .map_err(|e| format!("address {ip}: {e}"))?;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("booted, but nothing answers on {addr}: {e}"));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs `argv` in every namespace of `init` (root, cwd: its root).
fn exec_in(init: Proc, argv: &[&str]) -> Result<Output, String> {
    fleet::nsenter(
        init.pid,
        &["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"],
        argv,
    )
    .output()
    .map_err(|e| format!("run nsenter {argv:?}: {e}"))
}

/// The machine's enabled units (links in /etc/systemd/system/*.wants and
/// *.requires) but ssh, with the templates of enabled instances, and
/// [`MASKED`].
fn masked_units() -> BTreeSet<String> {
    let mut units: BTreeSet<String> = MASKED.iter().map(|s| s.to_string()).collect();
    for dir in fleet::names_in("/etc/systemd/system") {
        if !(dir.ends_with(".wants") || dir.ends_with(".requires")) {
            continue;
        }
        for unit in fleet::names_in(&format!("/etc/systemd/system/{dir}")) {
            if KEPT.contains(&unit.as_str()) {
                continue;
            }
            // getty@tty1.service: mask getty@.service, and with it every instance.
            if let Some((template, rest)) = unit.split_once('@')
                && let Some((_, kind)) = rest.rsplit_once('.')
            {
                units.insert(format!("{template}@.{kind}"));
            }
            units.insert(unit);
        }
    }
    units
}

/// 32 random hex digits, as systemd-machine-id-setup makes.
fn machine_id() -> Result<String, String> {
    let uuid = fleet::read(Path::new("/proc/sys/kernel/random/uuid"))?;
    Ok(uuid.trim().replace('-', ""))
}

fn mode_of(path: &str) -> u32 {
    fs::metadata(path).map_or(0o755, |m| m.mode() & 0o7777)
}

/// Copies a file with its mode.
fn copy(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))
}

/// Copies a directory tree of plain files and directories, with modes.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let meta = fs::metadata(from).map_err(|e| format!("stat {}: {e}", from.display()))?;
    fleet::mkdir(to, meta.mode() & 0o7777)?;
    let entries = fs::read_dir(from).map_err(|e| format!("read {}: {e}", from.display()))?;
    for entry in entries.flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(|e| format!("stat {}: {e}", src.display()))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            copy(&src, &dst)?;
        } else if !kind.is_char_device() {
            return Err(format!("{}: not a file or directory", src.display()));
        }
    }
    Ok(())
}

/// Marks an upper directory opaque: the lower one (the machine's) does not
/// show through.
fn opaque(dir: &Path) -> Result<(), String> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "mark {} opaque: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// The child of `pid` once `pid` is unshare (before, it is the script,
/// whose children are the commands it runs).
fn child_of_unshare(pid: i32) -> Option<i32> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim() != "unshare" {
        return None;
    }
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// The roots of the machine's hierarchies that hosts get a cgroup in (the
/// same choice as systemd-host.sh makes).
pub fn hierarchies() -> Vec<PathBuf> {
    let is_cgroup2 = |p: &str| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    };
    if is_cgroup2("/sys/fs/cgroup") {
        return vec![PathBuf::from("/sys/fs/cgroup")];
    }
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup/systemd")];
    if is_cgroup2("/sys/fs/cgroup/unified") {
        roots.push(PathBuf::from("/sys/fs/cgroup/unified"));
    }
    roots
}

/// Removes the cgroup `name` and everything below it, in every hierarchy.
/// Fails if processes are still in it (after waiting a little for dying ones).
fn remove_cgroup(name: &str) -> Result<(), String> {
    for root in hierarchies() {
        let top = root.join(name);
        if !top.exists() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match remove_tree(&top) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    Ok(())
}

/// rmdir of a cgroup and its descendants, deepest first.
fn remove_tree(dir: &Path) -> Result<(), String> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("rmdir {}: {e}", dir.display())),
    }
}

/// Removes the host cgroups (`sjfK-…`) of fleets that no longer exist: what
/// a killed run left after the fleet's own clean-up ended its processes.
fn remove_leftover_cgroups() {
    fleet::locked(|| {
        for root in hierarchies() {
            let Some(root_str) = root.to_str() else {
                continue;
            };
            for name in fleet::names_in(root_str) {
                let dead = name.contains('-')
                    && fleet::fleet_number(&name).is_some_and(|k| !fleet::fleet_dir(k).exists());
                if dead {
                    eprintln!("systemd fleet: removing leftover cgroup {root_str}/{name}");
                    if let Err(e) = remove_cgroup(&name) {
                        eprintln!("systemd fleet: {e}");
                    }
                }
            }
        }
    });
}
