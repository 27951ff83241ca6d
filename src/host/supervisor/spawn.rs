//! Spawning one run of the service: its clean environment, its user, its
//! own process group, its output to the log.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::protocol::layout::Layout;

use super::release::Release;
use crate::host::os::process::{self, Credentials};

pub use crate::host::os::detached::CLEAN_PATH;

/// Who the service runs as: `None` is whoever runs the supervisor.
/// `Err` when the release names a user that cannot be resolved.
pub fn credentials(release: &Release) -> Result<Option<Credentials>, String> {
    match &release.manifest.run.user {
        Some(user) if process::is_root() => Credentials::resolve(user).map(Some),
        _ => Ok(None),
    }
}

/// Spawns the release's `run.argv` with `stdout`/`stderr` as its output.
pub fn spawn(
    layout: &Layout,
    release: &Release,
    creds: Option<&Credentials>,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<Child, String> {
    let argv = &release.manifest.run.argv;
    let Some(argv0) = argv.first() else {
        return Err("run.argv is empty".to_string());
    };
    let env = service_env(layout, release, creds);
    let path = env
        .get(&OsString::from("PATH"))
        .cloned()
        .unwrap_or_default();
    let program = process::resolve_program(argv0, &path, &release.dir)?;
    let mut cmd = Command::new(&program);
    cmd.arg0(argv0)
        .args(&argv[1..])
        .current_dir(&release.dir)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own group: stop signals the whole service, never us.
        .process_group(0);
    process::prepare_child(&mut cmd, false, creds.cloned());
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))
}

/// The service's clean environment: a fixed base, then `run.env`, then ours.
pub fn service_env(
    layout: &Layout,
    release: &Release,
    creds: Option<&Credentials>,
) -> BTreeMap<OsString, OsString> {
    let dir = &release.dir;
    let home = creds
        .map(|c| c.home.clone())
        .unwrap_or_else(process::own_home);
    let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
    let mut set = |k: &str, v: OsString| {
        env.insert(OsString::from(k), v);
    };
    set("PATH", CLEAN_PATH.into());
    set("HOME", home.into_os_string());
    set("LANG", "C.UTF-8".into());
    if let Some(c) = creds {
        set("USER", c.name.clone().into());
        set("LOGNAME", c.name.clone().into());
    }
    for (k, v) in &release.manifest.run.env {
        set(k, v.into());
    }
    set("SHIPJAR_SERVICE", layout.name().into());
    set("SHIPJAR_RELEASE", release.manifest.id.clone().into());
    set("SHIPJAR_RELEASE_DIR", dir.clone().into_os_string());
    set("SHIPJAR_CONFIG_DIR", dir.join("config").into_os_string());
    set("SHIPJAR_SHARED_DIR", layout.shared_dir().into_os_string());
    set("SHIPJAR_LOG_DIR", layout.log_dir().into_os_string());
    env
}
