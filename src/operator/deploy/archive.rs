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
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::host_run::Run;
use super::orchestrate::Ctx;
use crate::operator::config::artifact::Fetch;
use crate::operator::fleet;
use crate::operator::output::{Reporter, StepStatus};
use crate::protocol::{ClassDataArchive, Request, Response};

/// Longest the shared dump may take: the Clojure example's takes 2–5 s.
const DUMP_DEADLINE: Duration = Duration::from_secs(120);

/// Longest the other hosts wait for the dump host's upload and prepare
/// before starting theirs anyway (its session's own deadlines end it sooner).
const HEAD_START: Duration = Duration::from_secs(60);

/// The step the notes are shown under.
const STEP: &str = "class-data";

/// What the choice needs to know of one host.
#[derive(Debug, Clone, PartialEq)]
struct Candidate<'r> {
    /// It gets the new artifact (not stored there), is locked and has not
    /// failed, and said what JDK it runs: an archive helps it.
    wants: bool,
    /// The JDK it runs.
    jdk: &'r str,
    /// Its current release kept a class list.
    class_list: bool,
}

fn candidate<'r>(run: &'r Run) -> Candidate<'r> {
    let class_data = run.state.as_ref().and_then(|s| s.class_data.as_ref());
    Candidate {
        wants: !run.failed()
            && run.holds_lock()
            && run.plan.is_some()
            && run.state.as_ref().is_some_and(|s| !s.has_artifact)
            && class_data.is_some(),
        jdk: class_data.map_or("", |c| c.jdk.as_str()),
        class_list: class_data.is_some_and(|c| c.class_list),
    }
}

/// Whether and how the hosts share an archive (indexes into the hosts).
#[derive(Debug, PartialEq)]
enum Choice {
    /// Fewer than two hosts want one: nothing to share.
    Nothing,
    /// The hosts download the artifact themselves: pushing an archive
    /// about the jar's size to each would undo what that saves.
    HostsFetch { first: usize },
    /// None of the hosts that run the most common JDK kept a class list.
    NoClassList { first: usize },
    /// `dumper` dumps, `receivers` get a copy, `other_jdk` go without.
    Share {
        dumper: usize,
        receivers: Vec<usize>,
        other_jdk: Vec<usize>,
    },
}

/// Chooses the JDK most of the wanting hosts run and, of those, the first
/// that kept a class list as the dumper. Pure: no I/O.
fn choose(hosts: &[Candidate], fetch: Option<Fetch>) -> Choice {
    let wanting: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].wants).collect();
    if wanting.len() < 2 {
        return Choice::Nothing;
    }
    if fetch.is_some_and(|f| f != Fetch::Operator) {
        return Choice::HostsFetch { first: wanting[0] };
    }
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in &wanting {
        *count.entry(hosts[i].jdk).or_default() += 1;
    }
    // The first JDK among the most common (BTreeMap order: stable).
    let most = count.values().copied().max().unwrap_or(0);
    let jdk = count
        .iter()
        .find(|(_, n)| **n == most)
        .map_or("", |(j, _)| *j);
    let (same, other_jdk): (Vec<usize>, Vec<usize>) =
        wanting.iter().partition(|&&i| hosts[i].jdk == jdk);
    let Some(&dumper) = same.iter().find(|&&i| hosts[i].class_list) else {
        return Choice::NoClassList { first: same[0] };
    };
    Choice::Share {
        dumper,
        receivers: same.into_iter().filter(|&i| i != dumper).collect(),
        other_jdk,
    }
}

/// Who makes the deploy's archive and who gets it, chosen once the hosts
/// are locked (before the uploads, so the dump can run beside them).
pub(super) struct Sharing {
    /// The host that dumps.
    dumper: String,
    /// The hosts that run its JDK and get a copy.
    receivers: BTreeSet<String>,
    /// Where the dump is, and the signal that it moved on.
    dump: (Mutex<DumpState>, Condvar),
    /// Receivers that got their copy already.
    served: Mutex<BTreeSet<String>>,
}

/// Where the deploy's one dump is.
enum DumpState {
    /// The dump host uploads and prepares; the others wait for it.
    Preparing,
    /// It dumps; the others upload.
    Dumping,
    /// It ended: the archive, or none.
    Done(Option<ClassDataArchive>),
}

/// Chooses the dumper and the receivers, with a note for each host left
/// out; `None` when there is nothing to share.
pub(super) fn plan(ctx: &Ctx, runs: &[Run]) -> Option<Sharing> {
    let hosts: Vec<Candidate> = runs.iter().map(candidate).collect();
    let note = |i: usize, text: &str| {
        ctx.reporter
            .step(&runs[i].host, STEP, StepStatus::Info, text)
    };
    match choose(&hosts, ctx.remote.map(|r| r.fetch)) {
        Choice::Nothing => None,
        Choice::HostsFetch { first } => {
            let fetch = ctx.remote.map(|r| r.fetch.to_string()).unwrap_or_default();
            note(
                first,
                &format!(
                    "hosts download the artifact themselves (fetch = \"{fetch}\"): no shared class-data archive is pushed to them (it is about the jar's size); each host's first start records its own"
                ),
            );
            None
        }
        Choice::NoClassList { first } => {
            note(
                first,
                "no host kept a class list of this service yet: each host's first start records its own",
            );
            None
        }
        Choice::Share {
            dumper,
            receivers,
            other_jdk,
        } => {
            for i in other_jdk {
                note(
                    i,
                    "runs another JDK than the host that dumps the shared class-data archive: goes without it",
                );
            }
            Some(Sharing {
                dumper: runs[dumper].host.clone(),
                receivers: receivers.iter().map(|&i| runs[i].host.clone()).collect(),
                dump: (Mutex::new(DumpState::Preparing), Condvar::new()),
                served: Mutex::new(BTreeSet::new()),
            })
        }
    }
}

impl Sharing {
    /// Whether `host` dumps: its prepare goes first.
    pub(super) fn dumps(&self, host: &str) -> bool {
        self.dumper == host
    }

    /// Waits until the dump host's release is prepared (or it failed), at
    /// most [`HEAD_START`]: its upload does not share the link and the
    /// CPUs with all the others', so its dump starts sooner and runs while
    /// they upload.
    pub(super) fn wait_for_head_start(&self) {
        let (state, changed) = &self.dump;
        let until = Instant::now() + HEAD_START;
        let mut state = lock(state);
        while matches!(*state, DumpState::Preparing) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = changed
                .wait_timeout(state, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The dump host's part ended, whether it dumped or could not (not
    /// reached, its prepare failed): nobody waits for it any more.
    pub(super) fn end_head_start(&self) {
        let mut state = lock(&self.dump.0);
        if matches!(*state, DumpState::Preparing) {
            *state = DumpState::Done(None);
        }
        self.dump.1.notify_all();
    }

    /// Moves the dump on, waking whoever waits for its head start.
    fn set(&self, next: DumpState) {
        *lock(&self.dump.0) = next;
        self.dump.1.notify_all();
    }

    /// The archive, once dumped.
    fn archive(&self) -> Option<ClassDataArchive> {
        match &*lock(&self.dump.0) {
            DumpState::Done(archive) => archive.clone(),
            DumpState::Preparing | DumpState::Dumping => None,
        }
    }

    /// Right after `run`'s release is prepared, in the same session: the
    /// dumper dumps (while the others still upload); a receiver gets its
    /// copy when the archive is there already, else [`Sharing::finish`] gives it.
    pub(super) fn after_prepare(&self, run: &mut Run, reporter: &Reporter) {
        // Interrupted: no host will switch, so no archive is worth making.
        if run.failed() || run.session.is_none() || fleet::interrupted() {
            return;
        }
        if self.dumps(&run.host) {
            self.set(DumpState::Dumping);
            let dumped = dump_on(run, reporter);
            self.set(DumpState::Done(dumped));
        } else if self.receivers.contains(&run.host)
            && let Some(archive) = self.archive()
        {
            put_on(run, &archive, reporter);
            lock(&self.served).insert(run.host.clone());
        }
    }

    /// Gives the copy to the receivers that were prepared before the dump
    /// ended, once every host is prepared.
    pub(super) fn finish(self, ctx: &Ctx, runs: &mut [Run]) {
        let Some(archive) = self.archive().filter(|_| !fleet::interrupted()) else {
            return;
        };
        let served = lock(&self.served);
        let mut waiting: Vec<&mut Run> = runs
            .iter_mut()
            .filter(|r| {
                self.receivers.contains(&r.host)
                    && !served.contains(&r.host)
                    && !r.failed()
                    && r.holds_lock()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host(wants: bool, jdk: &str, class_list: bool) -> Candidate<'_> {
        Candidate {
            wants,
            jdk,
            class_list,
        }
    }

    #[test]
    fn the_most_common_jdk_s_first_host_with_a_class_list_dumps_for_the_others() {
        let hosts = [
            host(true, "jdk-a", false),
            host(true, "jdk-b", false),
            host(true, "jdk-b", false),
            host(false, "jdk-b", true),
            host(true, "jdk-b", true),
            host(true, "jdk-b", true),
        ];
        assert_eq!(
            choose(&hosts, None),
            Choice::Share {
                dumper: 4,
                receivers: vec![1, 2, 5],
                other_jdk: vec![0],
            }
        );
        // A push from the operator's copy of a repository's artifact shares too.
        assert!(matches!(
            choose(&hosts, Some(Fetch::Operator)),
            Choice::Share { dumper: 4, .. }
        ));
    }

    #[test]
    fn nothing_is_shared_for_one_host_without_a_class_list_or_when_hosts_download() {
        let one = [host(true, "j", true), host(false, "j", true)];
        assert_eq!(choose(&one, None), Choice::Nothing);
        let unrecorded = [
            host(false, "j", true),
            host(true, "j", false),
            host(true, "j", false),
        ];
        assert_eq!(choose(&unrecorded, None), Choice::NoClassList { first: 1 });
        let recorded = [host(true, "j", true), host(true, "j", false)];
        for fetch in [Fetch::Host, Fetch::HostThenOperator] {
            assert_eq!(
                choose(&recorded, Some(fetch)),
                Choice::HostsFetch { first: 0 },
                "{fetch}"
            );
        }
    }
}
