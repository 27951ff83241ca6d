//! One class-data archive per deploy, shared by the hosts: in a deploy of
//! a new artifact with `cds` on, one host that kept the class list of its
//! current release's run dumps the new release's archive, and the others
//! that run the same JDK get a copy before the switch. The dump runs right
//! after that host's release is prepared, while the others still upload;
//! a host prepared after it ended gets its copy in the same session, the
//! others once all are prepared. Any failure here is a note, never a failed
//! host: a host without the archive records its classes on its first start,
//! as it would without sharing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use super::host_run::Run;
use super::orchestrate::Ctx;
use crate::operator::fleet;
use crate::operator::output::{Reporter, StepStatus};
use crate::protocol::{ClassDataArchive, Request, Response};

/// Longest the shared dump may take: the Clojure example's takes 2–5 s.
const DUMP_DEADLINE: Duration = Duration::from_secs(120);

/// The step the notes are shown under.
const STEP: &str = "class-data";

/// Hosts that get the new artifact (it was not stored there) and said
/// what JDK they run: the ones an archive helps.
fn wanting(runs: &[Run]) -> Vec<usize> {
    (0..runs.len())
        .filter(|&i| {
            let r = &runs[i];
            !r.failed()
                // With sessions closed between phases, a detached lock counts.
                && (r.session.is_some() || r.lease.is_some())
                && r.plan.is_some()
                && r.state
                    .as_ref()
                    .is_some_and(|s| !s.has_artifact && s.class_data.is_some())
        })
        .collect()
}

fn jdk_of<'r>(run: &'r Run) -> Option<&'r str> {
    run.state
        .as_ref()
        .and_then(|s| s.class_data.as_ref())
        .map(|c| c.jdk.as_str())
}

/// Who makes the deploy's archive and who gets it, chosen once the hosts
/// are locked (before the uploads, so the dump can run beside them).
pub(super) struct Sharing {
    /// The host that dumps.
    dumper: String,
    /// The hosts that run its JDK and get a copy.
    receivers: BTreeSet<String>,
    /// The archive once dumped: `Some(None)` when the dump made none.
    archive: Mutex<Option<Option<ClassDataArchive>>>,
    /// Receivers that got their copy already.
    served: Mutex<BTreeSet<String>>,
}

/// Chooses the dumper and the receivers, with a note for each host left
/// out; `None` when fewer than two hosts want an archive.
pub(super) fn plan(ctx: &Ctx, runs: &[Run]) -> Option<Sharing> {
    let wanting = wanting(runs);
    if wanting.len() < 2 {
        return None;
    }
    // The JDK most of them run; the others go without.
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in &wanting {
        *count
            .entry(jdk_of(&runs[i]).unwrap_or_default())
            .or_default() += 1;
    }
    let jdk = count
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(j, _)| j.to_string())?;
    let same: Vec<usize> = wanting
        .iter()
        .copied()
        .filter(|&i| jdk_of(&runs[i]) == Some(jdk.as_str()))
        .collect();
    let Some(&dumper) = same.iter().find(|&&i| {
        runs[i]
            .state
            .as_ref()
            .and_then(|s| s.class_data.as_ref())
            .is_some_and(|c| c.class_list)
    }) else {
        ctx.reporter.step(
            &runs[same[0]].host,
            STEP,
            StepStatus::Info,
            "no host kept a class list of this service yet: each host's first start records its own",
        );
        return None;
    };
    for &i in &wanting {
        if jdk_of(&runs[i]) != Some(jdk.as_str()) {
            let note = "runs another JDK than the host that dumps the shared class-data archive: goes without it";
            ctx.reporter
                .step(&runs[i].host, STEP, StepStatus::Info, note);
        }
    }
    Some(Sharing {
        dumper: runs[dumper].host.clone(),
        receivers: same
            .iter()
            .filter(|&&i| i != dumper)
            .map(|&i| runs[i].host.clone())
            .collect(),
        archive: Mutex::new(None),
        served: Mutex::new(BTreeSet::new()),
    })
}

impl Sharing {
    /// Whether `host` dumps: its prepare goes first.
    pub(super) fn dumps(&self, host: &str) -> bool {
        self.dumper == host
    }

    /// Right after `run`'s release is prepared, in the same session: the
    /// dumper dumps (while the others still upload); a receiver gets its
    /// copy when the archive is there already, else [`Sharing::finish`] gives it.
    pub(super) fn after_prepare(&self, run: &mut Run, reporter: &Reporter) {
        if run.failed() || run.session.is_none() {
            return;
        }
        if self.dumps(&run.host) {
            let dumped = dump_on(run, reporter);
            *lock(&self.archive) = Some(dumped);
        } else if self.receivers.contains(&run.host) {
            let archive = lock(&self.archive).clone().flatten();
            if let Some(archive) = archive {
                put_on(run, &archive, reporter);
                lock(&self.served).insert(run.host.clone());
            }
        }
    }

    /// Gives the copy to the receivers that were prepared before the dump
    /// ended, once every host is prepared.
    pub(super) fn finish(self, ctx: &Ctx, runs: &mut [Run]) {
        let archive = self.archive.into_inner().ok().flatten().flatten();
        let served = self.served.into_inner().unwrap_or_else(|e| e.into_inner());
        let Some(archive) = archive else {
            return;
        };
        let mut waiting: Vec<&mut Run> = runs
            .iter_mut()
            .filter(|r| {
                self.receivers.contains(&r.host)
                    && !served.contains(&r.host)
                    && !r.failed()
                    && (r.session.is_some() || r.lease.is_some())
            })
            .collect();
        fleet::each(&mut waiting, ctx.fleet.parallel, |run| {
            ctx.in_session(run, |run| put_on(run, &archive, ctx.reporter));
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks `run`'s host to dump the archive; `None` (with a note) when it made none.
fn dump_on(run: &mut Run, reporter: &Reporter) -> Option<ClassDataArchive> {
    let release = run.plan?.manifest.id.clone();
    let host = run.host.clone();
    let session = run.session.as_mut()?;
    let mut on_event = |s: &str, m: &str| reporter.step(&host, s, StepStatus::Info, m);
    let request = Request::DumpClassData {
        release,
        deadline_ms: DUMP_DEADLINE.as_millis() as u64,
    };
    match session.call(request, &mut on_event) {
        Ok(Response::ClassDataDumped {
            archive: Some(archive),
            note,
        }) => {
            reporter.step(&host, STEP, StepStatus::Ok, &note);
            Some(*archive)
        }
        Ok(Response::ClassDataDumped { note, .. }) => {
            reporter.step(&host, STEP, StepStatus::Info, &note);
            None
        }
        other => {
            note_failure(run, other, "dump", reporter);
            None
        }
    }
}

/// Gives `run`'s host the archive.
fn put_on(run: &mut Run, archive: &ClassDataArchive, reporter: &Reporter) {
    let Some(release) = run.plan.map(|p| p.manifest.id.clone()) else {
        return;
    };
    let host = run.host.clone();
    let Some(session) = run.session.as_mut() else {
        return;
    };
    let mut on_event = |s: &str, m: &str| reporter.step(&host, s, StepStatus::Info, m);
    let request = Request::PutClassData {
        release,
        archive: Box::new(archive.clone()),
    };
    match session.call(request, &mut on_event) {
        Ok(Response::ClassDataKept { kept, note }) => {
            let status = if kept {
                StepStatus::Ok
            } else {
                StepStatus::Info
            };
            reporter.step(&host, STEP, status, &note);
        }
        other => note_failure(run, other, "copy", reporter),
    }
}

/// An answer that is not the one asked for. A lost connection fails the
/// host (nothing more can be asked of it); anything else is only a note.
fn note_failure(
    run: &mut Run,
    answer: crate::error::Result<Response>,
    what: &str,
    reporter: &Reporter,
) {
    match answer {
        Err(e) => {
            run.session = None;
            run.fail(STEP, e.message, reporter);
        }
        Ok(other) => reporter.step(
            &run.host,
            STEP,
            StepStatus::Info,
            &format!("no shared class-data archive ({what}): unexpected answer {other:?}"),
        ),
    }
}
