//! The host's /var/lib/hello on a small tmpfs that fills up during the
//! upload, then during the preparation of the release.

use std::time::Duration;

use crate::{Suite, check, text};

const LIB: &str = "/var/lib/hello";

/// Bytes and inodes /var/lib/hello uses on the host.
fn usage(s: &Suite, host: &str) -> (u64, u64) {
    let text = s.fleet.sh_stdout(
        host,
        "du -s --block-size=1 /var/lib/hello | cut -f1; find /var/lib/hello | wc -l",
    );
    let mut n = text.lines().map(|l| l.trim().parse::<u64>().unwrap_or(0));
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

/// One deploy onto a full disk on `host`: it must fail naming the host,
/// change no host, and leave the full host healthy on its release.
fn deploy_onto_full_disk(
    s: &mut Suite,
    host: &str,
    size: u64,
    inodes: u64,
    pad: usize,
    what: &str,
) {
    s.fleet.mount_small_tmpfs(host, LIB, size, inodes);
    s.counts.faults += 1;
    let jar = s.jar_variant(&format!("full-{what}"), pad);
    let v = s.next_version();
    let child = s.spawn(&Suite::deploy_args("fleet", &v, Some(&jar)));
    let out = s.finish(child, Duration::from_secs(120));
    let all = text(&out);
    eprintln!(
        "faults: deploy onto a full disk ({what}): exit {:?}",
        out.status.code()
    );
    if out.status.code() != Some(1) || !all.contains(host) {
        s.fail(format!(
            "a deploy onto {host}'s full disk ({what}) must fail naming {host}: {all}"
        ));
    }
    let result = crate::last_json(&out);
    for h in s.fleet.hosts() {
        let state = crate::host_field(&result, &h)["state"].clone();
        if state == "updated" {
            s.fail(format!(
                "{h} was switched although {host} could not be prepared: {result}"
            ));
        }
    }
    check::settle(s);
    check::invariant(s, &format!("full disk ({what})"), Some(&out), true);
    // The host holds no half-written artifact or release.
    let left = s.fleet.sh_stdout(
        host,
        "ls -a /var/lib/hello/artifacts /var/lib/hello/releases | grep '^\\.tmp' || true",
    );
    if !left.trim().is_empty() {
        eprintln!(
            "faults: {host}: temporary entries after the failed deploy (removed by the next one): {left}"
        );
    }
    s.fleet.unmount(host, LIB);
}

pub fn full_disk(s: &mut Suite) {
    let host = "app3";
    let (bytes, inodes) = usage(s, host);
    // Room for 256 KiB more: a 2 MiB artifact cannot arrive.
    deploy_onto_full_disk(
        s,
        host,
        bytes + (256 << 10),
        inodes + 100,
        2 << 20,
        "upload",
    );
    let (bytes, inodes) = usage(s, host);
    // Room for the artifact (one inode), not for a release directory's files.
    deploy_onto_full_disk(s, host, bytes + (8 << 20), inodes + 2, 64 << 10, "prepare");
}
