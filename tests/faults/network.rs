//! A host cut off the network mid-upload and mid-switch, and a host that
//! loses power mid-switch.

use std::time::Duration;

use crate::{Suite, check, text, wait_until};

/// Where the host's `current` points, if anywhere.
fn current(s: &Suite, host: &str) -> String {
    let out = s.fleet.exec(host, &["readlink", "/var/lib/hello/current"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether the host is receiving an artifact right now (a temp file in the store).
fn uploading(s: &Suite, host: &str) -> bool {
    let out = s
        .fleet
        .exec(host, &["ls", "-a", "/var/lib/hello/artifacts"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with(".tmp"))
}

/// Checks a report that ended a faulted deploy: success, or a failure naming `host`.
fn report_names(s: &mut Suite, out: &std::process::Output, host: &str) {
    let result = crate::last_json(out);
    let states: Vec<String> = s
        .fleet
        .hosts()
        .iter()
        .map(|h| format!("{h}={}", crate::host_field(&result, h)["state"]))
        .collect();
    eprintln!(
        "faults: the deploy exits {:?}: {}",
        out.status.code(),
        states.join(" ")
    );
    match out.status.code() {
        Some(0) => {}
        Some(1) => {
            let all = text(out);
            if !all.contains(host) {
                s.fail(format!("the failed deploy does not name {host}: {all}"));
            }
        }
        other => s.fail(format!("deploy exited {other:?}: {}", text(out))),
    }
}

/// How long a cut lasts: short (2–6 s, the connection survives) or long
/// (16–20 s, past ssh's 3 × 5 s keep-alive: the connection is dropped).
fn outage(s: &mut Suite, long: bool) -> Duration {
    let base = if long { 16_000 } else { 2_000 };
    Duration::from_millis(base + s.rng.below(4_000))
}

pub fn link_cut_mid_upload(s: &mut Suite) {
    let host = "app2";
    // One of the two cuts is long, the other short; the seed says which.
    s.long_cut_first = s.rng.below(2) == 0;
    let jar = s.jar_variant("link-upload", 3 << 20);
    let v = s.next_version();
    // 3 MiB at 4 Mbit/s: about 6 s on the wire to app2.
    s.fleet.slow_link(host, 4000);
    let child = s.spawn(&Suite::deploy_args("fleet", &v, Some(&jar)));
    let seen = wait_until(Duration::from_secs(30), || uploading(s, host));
    let long = s.long_cut_first;
    let outage = outage(s, long);
    cut_link(s, host, "the upload", seen, outage);
    s.fleet.fast_link(host);
    finish_cut(s, child, host, "link cut mid-upload");
}

/// Starts a deploy whose service takes 2 s to get healthy and waits (at most
/// 60 s) until `host` has switched: the deploy, and whether the switch was seen.
fn deploy_until_switched(s: &mut Suite, host: &str) -> (std::process::Child, bool) {
    let before = current(s, host);
    let v = s.next_version();
    let mut args = Suite::deploy_args("fleet", &v, None);
    args.extend(["--env".into(), "STARTUP_DELAY_MS=2000".into()]);
    let child = s.spawn(&args);
    let switched = wait_until(Duration::from_secs(60), || current(s, host) != before);
    (child, switched)
}

/// Cuts `host`'s link for `outage`, during `what` (which the test `seen` begin, or not).
fn cut_link(s: &mut Suite, host: &str, what: &str, seen: bool, outage: Duration) {
    let unseen = if seen { "" } else { " (not seen begin)" };
    eprintln!(
        "faults: cutting {host}'s link during {what}{unseen}, for {} ms",
        outage.as_millis()
    );
    s.fleet.link_down(host);
    s.counts.faults += 1;
    std::thread::sleep(outage);
    s.fleet.link_up(host);
}

/// Waits for the deploy cut off from (or power-cycled under) `host`, then checks the fleet settles
/// and keeps every invariant.
fn finish_cut(s: &mut Suite, child: std::process::Child, host: &str, name: &str) {
    let out = s.finish(child, Duration::from_secs(120));
    report_names(s, &out, host);
    check::settle(s);
    check::invariant(s, name, Some(&out), true);
}

pub fn link_cut_mid_switch(s: &mut Suite) {
    let host = "app2";
    let (child, switched) = deploy_until_switched(s, host);
    std::thread::sleep(Duration::from_millis(s.rng.below(1500)));
    let long = !s.long_cut_first;
    let outage = outage(s, long);
    cut_link(s, host, "its switch", switched, outage);
    finish_cut(s, child, host, "link cut mid-switch");
}

pub fn power_loss_mid_switch(s: &mut Suite) {
    let host = "app2";
    let (child, switched) = deploy_until_switched(s, host);
    let delay = s.rng.below(2500);
    std::thread::sleep(Duration::from_millis(delay));
    eprintln!(
        "faults: power loss on {host} {} ms after its switch{}",
        delay,
        if switched { "" } else { " (switch not seen)" }
    );
    s.power_cycle(host);
    finish_cut(s, child, host, "power loss mid-switch");
    // After the boot the host runs what `current` names, complete.
    let r = check::real(s, host);
    if !(r.complete && r.served.is_some() && r.served == r.version) {
        s.fail(format!("{host} after power loss and boot: {r:?}"));
    }
}
