//! `check_host`: what `shipjar check` learns from a host without changing it —
//! the program the service runs (and Java's version), free disk for the
//! artifact, whether the service's port is free or held by the service
//! itself, and whether `provision` has left nothing to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::host::os::listener;
use crate::host::provision;
use crate::host::supervisor;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::TlsSpec;
use crate::protocol::{FindingStatus, HostCheckSpec, HostFinding, ResourceStatus};

/// Room to keep beyond the artifact itself (a release, logs growing meanwhile).
const DISK_MARGIN: u64 = 64 * 1024 * 1024;

/// Every finding, in a fixed order.
pub fn check(layout: &Layout, spec: &HostCheckSpec) -> Vec<HostFinding> {
    let mut findings = vec![program(&spec.program), disk(layout, spec.artifact_bytes)];
    match &spec.proxy {
        // The stage never listens on the health check's own port: the proxy's
        // address and the two instances' ports are what must be free or ours.
        Some(proxy) => {
            match proxy
                .listen
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
            {
                Some(port) => findings.push(port_free_or_ours(port, proxy_pids(layout))),
                None => findings.push(finding(
                    format!("proxy {}", proxy.listen),
                    false,
                    "not an address with a port",
                )),
            }
            for port in proxy.ports {
                let instance = layout.with_instance(Some(port));
                findings.push(port_free_or_ours(port, service_pids(&instance)));
            }
            if let Some(tls) = &proxy.tls {
                findings.push(tls_pair(tls, run_user(spec)));
            }
        }
        None => {
            if let Some(port) = listener::check_port(&spec.health) {
                let mut ours = service_pids(layout);
                // A service moving to plain from behind the proxy: the proxy holds it now.
                ours.extend(proxy_pids(layout));
                findings.push(port_free_or_ours(port, ours));
            }
        }
    }
    // Only a real host is provisioned; a `local` stage's root is a project directory.
    if layout.root() == Path::new("/") {
        findings.push(provisioned(layout, spec));
    }
    findings
}

/// Largest PEM file `check` reads.
const PEM_MAX: u64 = 1024 * 1024;

/// The user the proxy reads the certificate as (root when the service has none).
fn run_user(spec: &HostCheckSpec) -> Option<nix::unistd::User> {
    nix::unistd::User::from_name(&spec.provision.user)
        .ok()
        .flatten()
}

/// `[proxy] tls`: both files load, make a pair, and the proxy's user can read them.
fn tls_pair(tls: &TlsSpec, user: Option<nix::unistd::User>) -> HostFinding {
    let (cert, key) = (Path::new(&tls.cert), Path::new(&tls.key));
    let checked = read_pem(cert, user.as_ref())
        .and_then(|c| Ok((c, read_pem(key, user.as_ref())?)))
        .and_then(|(c, k)| crate::host::proxy::check_tls_pair(cert, &c, key, &k));
    match checked {
        Ok(()) => finding(
            "proxy tls",
            true,
            format!("{} and {} make a pair", cert.display(), key.display()),
        ),
        Err(e) => finding("proxy tls", false, e),
    }
}

/// A PEM file's bytes: a regular file (links followed: certificates often
/// are links) of at most [`PEM_MAX`], readable by `user`; opened without
/// blocking, so a FIFO put there cannot hold `check`.
#[allow(clippy::disallowed_methods)]
// root-only: the paths are the operator's own `[proxy] tls`, and only read
fn read_pem(path: &Path, user: Option<&nix::unistd::User>) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let fail = |why: String| format!("{}: {why}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| fail(format!("cannot be opened: {e}")))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > PEM_MAX {
        return Err(fail(format!("{} bytes: not a PEM file", meta.len())));
    }
    if let Some(u) = user
        && !readable_by(&meta, u)
    {
        return Err(fail(format!(
            "not readable by {}, who runs the proxy (owner uid {}, mode {:o})",
            u.name,
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    file.take(PEM_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot be read: {e}")))?;
    Ok(bytes)
}

/// Whether `user` may read a file of `meta` by its mode bits (ACLs aside).
fn readable_by(meta: &std::fs::Metadata, user: &nix::unistd::User) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if user.uid.is_root() {
        return true;
    }
    if meta.uid() == user.uid.as_raw() {
        return mode & 0o400 != 0;
    }
    let in_group = meta.gid() == user.gid.as_raw()
        || nix::unistd::getgrouplist(
            &std::ffi::CString::new(user.name.as_str()).unwrap_or_default(),
            user.gid,
        )
        .is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == meta.gid()));
    if in_group {
        return mode & 0o040 != 0;
    }
    mode & 0o004 != 0
}

fn finding(what: impl Into<String>, ok: bool, detail: impl Into<String>) -> HostFinding {
    HostFinding {
        what: what.into(),
        status: if ok {
            FindingStatus::Ok
        } else {
            FindingStatus::Problem
        },
        detail: detail.into(),
    }
}

/// The program found in the service's clean `PATH` (and Java's version).
fn program(name: &str) -> HostFinding {
    let Some(path) = find_program(name) else {
        return finding(
            name,
            false,
            format!(
                "not found in {} (the PATH the service runs with)",
                supervisor::CLEAN_PATH
            ),
        );
    };
    if path.file_name().is_some_and(|f| f == "java") {
        return match java_version(&path) {
            Ok(version) => finding(name, true, format!("{}: {version}", path.display())),
            Err(e) => finding(name, false, format!("{}: {e}", path.display())),
        };
    }
    finding(name, true, path.display().to_string())
}

#[allow(clippy::disallowed_methods)] // root-only: PATH lookup in system dirs
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    supervisor::CLEAN_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| executable(p))
}

/// The first line `java -version` prints, e.g. `openjdk version "17.0.15" 2025-04-15`.
fn java_version(java: &Path) -> Result<String, String> {
    let out = Command::new(java)
        .arg("-version")
        .env_clear()
        .env("PATH", supervisor::CLEAN_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    match text.lines().next() {
        Some(line) if out.status.success() => Ok(line.trim().to_string()),
        _ => Err(format!("`java -version` failed ({})", out.status)),
    }
}

/// Free space where artifacts go (or the nearest directory that exists).
fn disk(layout: &Layout, artifact_bytes: u64) -> HostFinding {
    let dir = layout.lib_dir();
    let mut at = dir.as_path();
    while !at.exists() {
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    let free = match nix::sys::statvfs::statvfs(at) {
        Ok(stat) => stat.blocks_available().saturating_mul(stat.fragment_size()),
        Err(e) => return finding("disk", false, format!("{}: {e}", at.display())),
    };
    let needed = artifact_bytes + DISK_MARGIN;
    let detail = format!(
        "{} free at {} (a deploy needs about {})",
        mib(free),
        at.display(),
        mib(needed)
    );
    finding("disk", free >= needed, detail)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The processes of the service (or instance) `layout` names.
fn service_pids(layout: &Layout) -> Vec<i32> {
    supervisor::status(layout)
        .pid
        .map(listener::service_processes)
        .unwrap_or_default()
}

/// The proxy's keeper and worker (they share the public socket).
fn proxy_pids(layout: &Layout) -> Vec<i32> {
    let proxy = crate::host::proxy::status(layout);
    proxy
        .worker_pid
        .into_iter()
        .chain(proxy.keeper_pid)
        .collect()
}

/// The port is free, or held by one of `ours`.
fn port_free_or_ours(port: u16, ours: Vec<i32>) -> HostFinding {
    let what = format!("port {port}");
    match listener::holder(port, &ours) {
        listener::Holder::Nobody => finding(what, true, "free"),
        listener::Holder::Ours(pid) => {
            finding(what, true, format!("held by this service (pid {pid})"))
        }
        listener::Holder::Other(pid, name) => finding(
            what,
            false,
            format!("held by another program: pid {pid} ({name}); the service could not listen"),
        ),
        listener::Holder::Unseen => finding(
            what,
            false,
            "held by a process this user cannot see (another user's, or another namespace's)",
        ),
    }
}

/// What a dry run of `provision` would still change.
fn provisioned(layout: &Layout, spec: &HostCheckSpec) -> HostFinding {
    let mut dry = spec.provision.clone();
    dry.dry_run = true;
    let pending: Vec<String> = provision::provision(layout, &dry)
        .into_iter()
        .filter(|r| r.status != ResourceStatus::Ok)
        .map(|r| format!("{} ({})", r.resource, r.detail))
        .collect();
    if pending.is_empty() {
        finding(
            "provision",
            true,
            "user, directories and init integration in place",
        )
    } else {
        finding(
            "provision",
            false,
            format!(
                "not provisioned: {}; run `shipjar provision`",
                pending.join(", ")
            ),
        )
    }
}
