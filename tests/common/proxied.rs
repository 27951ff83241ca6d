//! The example behind shipjar's proxy on 127.0.0.1, and its clean-up: shared
//! by the proxy's test files.

use std::path::{Path, PathBuf};

use super::{Project, free_port};

/// Stops the proxied service when a test ends, even when it failed; then
/// SIGKILLs whatever the runner's or the keeper's record, or an instance
/// pidfile, still names.
pub struct Cleanup(pub PathBuf, pub [u16; 2]);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new(super::shipjar_bin())
            .args(["service", "stop", "hello", "--root"])
            .arg(&self.0)
            .output();
        for pid in [runner_pid(&self.0), keeper_pid(&self.0)]
            .into_iter()
            .flatten()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let run = self.0.join("run/hello");
        for port in self.1 {
            super::host::kill_recorded_group(&run.join(format!("instance-{port}/hello.pid")));
        }
    }
}

/// The pid `record` (under run/hello/proxy) names at `pointer`, when that
/// process lives, is no zombie, and its command line names `root` (and `word`).
fn recorded_live_pid(root: &Path, record: &str, pointer: &str, word: &str) -> Option<i32> {
    let text = std::fs::read_to_string(root.join("run/hello/proxy").join(record)).ok()?;
    let pid = serde_json::from_str::<serde_json::Value>(&text)
        .ok()?
        .pointer(pointer)?
        .as_i64()? as i32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|r| r.trim_start().starts_with('Z'));
    (cmdline.contains(&*root.to_string_lossy()) && cmdline.contains(word) && !zombie).then_some(pid)
}

/// The pid of the proxied service's runner, if it lives.
pub fn runner_pid(root: &Path) -> Option<i32> {
    recorded_live_pid(root, "runner.json", "/pid", "")
}

/// The proxy keeper's pid, if it lives.
pub fn keeper_pid(root: &Path) -> Option<i32> {
    recorded_live_pid(root, "keeper.json", "/keeper/pid", "proxy")
}

/// The example behind a proxy on the project's port, its instances on two
/// free ports; `top` lines before the `[proxy]` section, `settings` in it.
pub fn project(top: &str, settings: &str) -> (Project, [u16; 2]) {
    let ports = [free_port(), free_port()];
    let p = Project::with_config(|c| {
        let port = c
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_string();
        format!(
            "{c}\n{top}\n[proxy]\nlisten = \"127.0.0.1:{port}\"\nports = [{}, {}]\n{settings}",
            ports[0], ports[1]
        )
    });
    (p, ports)
}
