//! Held flocks (issue item 4): `nobody` tries to flock every entry of the
//! service's run dir (whatever lock files and directories exist there),
//! waiting for the ones held now (the supervisor's), so it takes each the
//! moment root lets go of it;
//! a deploy, `service restart`, `service status` and `unlock` must still
//! return within their deadlines, and the restart must leave the service up.

use std::time::Duration;

use crate::{HOST, ROOT_LIMIT, Suite, say, text};

pub fn nobody_flocks(s: &mut Suite) {
    let list = s.fleet.exec(HOST, &["find", "/run/hello"]);
    let entries: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let mut holders = Vec::new();
    for entry in &entries {
        s.counts.attacks += 1;
        let child = s.spawn_as("nobody", &["flock", "-x", entry, "sleep", "600"]);
        holders.push((entry.clone(), child));
    }
    std::thread::sleep(Duration::from_millis(800));
    let mut held = Vec::new();
    let mut running = Vec::new();
    for (entry, mut child) in holders {
        if child.try_wait().ok().flatten().is_none() {
            held.push(entry);
            running.push(child);
        } else {
            let _ = child.wait();
        }
    }
    say(&format!(
        "attacks: nobody holds or waits for a flock on {} of {} entries of /run/hello: {held:?}",
        held.len(),
        entries.len()
    ));
    s.counts.attacks += 1;
    let out = s.deploy("one", &[]);
    if !out.status.success() {
        s.fail(format!(
            "a deploy failed while nobody held flocks on {held:?}: {}",
            text(&out)
        ));
    }
    s.counts.attacks += 1;
    let out = s.root(&["shipjar", "service", "restart", "hello"], ROOT_LIMIT);
    let up = crate::wait_until(Duration::from_secs(5), || s.healthy());
    if !up {
        s.fail(format!(
            "`service restart` left the service down while nobody held flocks on {held:?}: {}",
            text(&out)
        ));
    }
    s.check_truth("with nobody's flocks held");
    s.counts.attacks += 1;
    let _ = s.op(&["unlock", "one"], Duration::from_secs(30));
    for child in running {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = crate::finish_attacker(child, Duration::from_secs(5));
    }
}
