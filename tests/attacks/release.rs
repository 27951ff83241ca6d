//! `jar = "RELEASE"` (issue item 8): refused at validation; and the
//! artifact store holds only files whose sha256 is their name.

use std::time::Duration;

use crate::{HOST, Suite, text};

pub fn jar_named_release(s: &mut Suite) {
    s.counts.attacks += 1;
    let path = s.dir.path().join("shipjar.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let hostile = config.replace("jar = \"hello.jar\"", "jar = \"RELEASE\"");
    std::fs::write(&path, &hostile).expect("write config");
    let line = hostile
        .lines()
        .position(|l| l.starts_with("jar = \"RELEASE\""))
        .map_or(0, |i| i + 1);
    let out = s.op(&["check", "one"], Duration::from_secs(60));
    let all = text(&out);
    let refused = out.status.code() == Some(2)
        && all.contains(&format!("shipjar.toml:{line}"))
        && all.contains("jar");
    if !refused {
        s.fail(format!(
            "`jar = \"RELEASE\"` is not refused with exit 2 at shipjar.toml:{line}: {all}"
        ));
        // What it does when let through: the store must survive it.
        let _ = s.deploy("one", &[]);
    }
    std::fs::write(&path, config).expect("restore config");
    store_intact(s);
    // A store the old code broke is repaired for the attacks after this one.
    let _ = s.fleet.sh(
        HOST,
        "cd /var/lib/hello/artifacts && for f in *; do \
               [ \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" = \"${f%%.*}\" ] || rm -f \"$f\"; done",
    );
}

/// Every stored artifact's sha256 is its name.
pub fn store_intact(s: &mut Suite) {
    let out = s.fleet.sh(
        HOST,
        "cd /var/lib/hello/artifacts && for f in *; do \
               [ \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" = \"${f%%.*}\" ] || echo \"$f\"; done",
    );
    let bad = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !bad.is_empty() {
        s.counts.root_changed += bad.lines().count() as u32;
        s.fail(format!(
            "stored artifacts no longer match their sha256: {bad}"
        ));
    }
}
