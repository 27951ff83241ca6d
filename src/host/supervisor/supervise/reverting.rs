//! `[restart] auto_revert`: on giving up on a release soon after its
//! deploy, the supervisor puts the host back on the previous healthy release
//! and starts it through the health gate, in-process (under systemd it is the
//! unit's main process, so the unit stays active). The decision is
//! [`auto_revert::plan`]'s; here are its effects: the switch lock, the
//! `current` switch, the log event, the `revisions.log` lines, the state.

use std::time::{Duration, SystemTime};

use crate::host::lockfile::{self, HeldLock, NoSwitch};
use crate::host::os::process;
use crate::host::supervisor::auto_revert;
use crate::host::supervisor::backoff::Backoff;
use crate::host::supervisor::logfile;
use crate::host::supervisor::state::{AutoReverted, Phase};
use crate::host::{revisions, secrets, store};

use super::Supervisor;

/// Who `revisions.log` says made an auto-revert.
const DEPLOYER: &str = "supervisor";

/// What came of a give-up with `auto_revert` on.
pub(super) enum Revert {
    /// Not done (off, outside the window, nothing to go back to…): stay `failed`.
    No,
    /// `current` points at the previous release: start it through the gate.
    Started,
    /// A stop arrived while waiting for the switch lock.
    Stopped,
}

/// An auto-revert whose gate has not given its verdict yet.
pub(super) struct Pending {
    /// The release gone back to.
    target: String,
    /// What its `revisions.log` line says.
    detail: String,
    /// Held until the verdict: no deploy switches under the revert.
    _lock: HeldLock,
}

impl Supervisor<'_> {
    /// After giving up (`reason`): goes back to the previous healthy release
    /// when `[restart] auto_revert` says so.
    pub(super) fn auto_revert(&mut self, reason: &str) -> Revert {
        let spec = &self.release.manifest.restart;
        if !spec.auto_revert {
            return Revert::No;
        }
        // Behind the proxy the runner owns which instance serves: a revert
        // is its to make, not one instance's.
        if self.layout.instance().is_some() {
            return Revert::No;
        }
        let window = Duration::from_millis(spec.revert_window_ms);
        let from = self.release.manifest.clone();
        let (plan, lock) = match self.decide(window) {
            Ok(decided) => decided,
            Err(not) => return not,
        };
        let version = store::read_manifest(self.layout, &plan.target)
            .map(|m| m.version)
            .unwrap_or_else(|_| "-".into());
        let why = format!(
            "given up on {} after its deploy: {reason}",
            super::human_duration(Duration::from_secs(plan.deployed_ago.as_secs()))
        );
        self.log.event(&format!(
            "auto-revert: release {} (version {}) {why}; back to release {} (version {version})",
            from.id, from.version, plan.target
        ));
        if let Err(e) = store::switch(self.layout, &plan.target) {
            self.log.event(&format!("auto-revert failed: {e}"));
            return Revert::No;
        }
        self.adopt_current("auto-revert");
        if self.release.manifest.id != plan.target {
            // We cannot run it (its user, its files): back to what the deploy left.
            let back = store::switch(self.layout, &from.id)
                .map_or_else(|e| format!("; and {e}"), |()| String::new());
            self.log.event(&format!(
                "auto-revert failed: release {} cannot be run{back}",
                plan.target
            ));
            return Revert::No;
        }
        // The release given up on is marked failed: no rollback or prune
        // takes it for a healthy one.
        self.record(
            &from.id,
            &from.version,
            false,
            format!("auto-reverted: {why}; back to release {}", plan.target),
        );
        self.backoff = Backoff::new(&self.release.manifest.restart);
        self.state.failed_reason = None;
        self.state.auto_reverted = Some(AutoReverted {
            from_release: from.id.clone(),
            from_version: from.version.clone(),
            why: why.clone(),
            at: logfile::now_rfc3339(),
        });
        self.save();
        self.reverting = Some(Pending {
            target: plan.target,
            detail: format!(
                "auto-reverted: from release {} (version {}), {why}",
                from.id, from.version
            ),
            _lock: lock,
        });
        Revert::Started
    }

    /// Whether to go back, and where to, under the switch lock (a deploy
    /// or rollback may have switched while it was waited for).
    fn decide(&mut self, window: Duration) -> Result<(auto_revert::Plan, HeldLock), Revert> {
        if let Err(why) = self.plan_revert(window) {
            self.log.event(&format!("not auto-reverting: {why}"));
            return Err(Revert::No);
        }
        let lock = match self.wait_for_switch_lock() {
            Ok(lock) => lock,
            Err(None) => return Err(Revert::Stopped),
            Err(Some(why)) => {
                self.log.event(&format!("not auto-reverting: {why}"));
                return Err(Revert::No);
            }
        };
        // Again under the lock: a deploy or rollback may have switched meanwhile.
        let from = self.release.manifest.clone();
        if store::current(self.layout).as_deref() != Some(from.id.as_str()) {
            self.log.event(&format!(
                "not auto-reverting: current no longer points at release {} (a deploy or rollback switched it)",
                from.id
            ));
            return Err(Revert::No);
        }
        match self.plan_revert(window) {
            Ok(plan) => Ok((plan, lock)),
            Err(why) => {
                self.log.event(&format!("not auto-reverting: {why}"));
                Err(Revert::No)
            }
        }
    }

    /// The gate's verdict on the release gone back to: its line in
    /// `revisions.log`, then the switch lock is let go.
    pub(super) fn reverted(&mut self, healthy: Result<i32, String>) {
        let Some(pending) = self.reverting.take() else {
            return;
        };
        let version = self.release.manifest.version.clone();
        match healthy {
            Ok(pid) => {
                self.log.event(&format!(
                    "auto-revert: release {} healthy again (pid {pid})",
                    pending.target
                ));
                self.record(&pending.target, &version, true, pending.detail);
            }
            Err(how) => {
                self.log.event(&format!(
                    "auto-revert: release {} did not become healthy: {how}",
                    pending.target
                ));
                let detail = format!("{}; NOT healthy: {how}", pending.detail);
                self.record(&pending.target, &version, false, detail);
            }
        }
    }

    /// The plan for the release we run, from `revisions.log` as it is now.
    fn plan_revert(&self, window: Duration) -> Result<auto_revert::Plan, String> {
        let history = revisions::read(self.layout)?;
        let layout = self.layout;
        // A release behind the proxy is the runner's to start, not ours.
        let runnable = |id: &str| store::read_manifest(layout, id).is_ok_and(|m| m.proxy.is_none());
        auto_revert::plan(
            &history,
            &self.release.manifest.id,
            SystemTime::now(),
            window,
            &runnable,
        )
    }

    /// Takes the switch lock, waiting at most [`lockfile::SWITCH_WAIT`] and answering
    /// a stop meanwhile (the holder may be a deploy about to restart us).
    /// `Err(None)`: a stop arrived; `Err(Some(why))`: the lock stayed held.
    fn wait_for_switch_lock(&mut self) -> Result<HeldLock, Option<String>> {
        match lockfile::take_switch_or_stop(self.layout, &self.signals) {
            Ok(lock) => Ok(lock),
            Err(NoSwitch::Held(why)) => Err(Some(why)),
            Err(NoSwitch::Stopped(sig)) => {
                self.readiness.stopping();
                self.log.event(&format!(
                    "stop requested ({}) while waiting to auto-revert",
                    process::signal_name(sig)
                ));
                self.state.state = Phase::Exited;
                self.state.stopped_on_request = true;
                self.save();
                self.remove_pidfile();
                Err(None)
            }
        }
    }

    /// Appends one `auto-revert` line to `revisions.log`.
    fn record(&mut self, release: &str, version: &str, healthy: bool, detail: String) {
        let revision = auto_revert::revision(DEPLOYER, release, version, healthy, detail);
        if let Err(e) = revisions::append(self.layout, &revision, &secrets::masker(self.layout)) {
            self.log
                .event(&format!("cannot append to revisions.log: {e}"));
        }
    }
}
