//! The class-data dump of a recording run (`[service] cds`): due
//! [`cds::DUMP_DELAY`] after the run passed its gate, run beside the
//! service and never waited for: the run's end kills one still running.

use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::Instant;

use crate::host::os::process::ExitInfo;
use crate::host::supervisor::cds::{self, ClassData, DUMP_DEADLINE, DUMP_DELAY};

use super::Supervisor;

/// Where the current run's dump is.
pub(super) enum DumpJob {
    /// None to do (no recording run, or its dump ended).
    Idle,
    /// It starts at this moment.
    Due(Instant),
    /// It runs.
    Running {
        /// The `java -Xshare:dump` process.
        child: Child,
        /// When it started.
        started: Instant,
    },
}

impl Supervisor<'_> {
    /// The run passed its gate: a recording run's dump becomes due.
    pub(super) fn schedule_dump(&mut self) {
        if matches!(self.class_data, ClassData::Record(_)) {
            self.dump_job = DumpJob::Due(Instant::now() + DUMP_DELAY);
        }
    }

    /// Starts the dump when it is due, keeps its archive when it ended,
    /// kills it past its deadline; returns when to look again.
    pub(super) fn tend_dump(&mut self) -> Option<Instant> {
        let ClassData::Record(dump) = &self.class_data else {
            return None;
        };
        let now = Instant::now();
        match &mut self.dump_job {
            DumpJob::Idle => None,
            DumpJob::Due(at) if *at > now => Some(*at),
            DumpJob::Due(_) => {
                match cds::start_dump(self.layout, &self.release, dump, self.creds.as_ref()) {
                    Ok(child) => {
                        self.dump_job = DumpJob::Running {
                            child,
                            started: now,
                        };
                        Some(now + DUMP_DEADLINE)
                    }
                    Err(e) => {
                        self.log.event(&format!(
                            "class-data archive not made: cannot start the dump: {e}"
                        ));
                        self.end_class_data();
                        None
                    }
                }
            }
            DumpJob::Running { child, started } => {
                let started = *started;
                let exit = match child.try_wait() {
                    Ok(Some(status)) => status
                        .code()
                        .map(ExitInfo::Code)
                        .or(status.signal().map(ExitInfo::Signal)),
                    Ok(None) if now < started + DUMP_DEADLINE => {
                        return Some(started + DUMP_DEADLINE);
                    }
                    Ok(None) | Err(_) => None,
                };
                let line = match exit {
                    Some(exit) => cds::keep(dump, exit, started.elapsed()),
                    None => format!(
                        "class-data archive not made: the dump took longer than {} s (killed)",
                        DUMP_DEADLINE.as_secs()
                    ),
                };
                self.end_class_data();
                self.log.event(&line);
                None
            }
        }
    }

    /// The run (or its recording) ends: a dump still running is killed,
    /// not waited for, and the recording's directory removed.
    pub(super) fn end_class_data(&mut self) {
        if let DumpJob::Running { child, .. } = &mut self.dump_job {
            cds::kill_dump(child);
        }
        self.dump_job = DumpJob::Idle;
        if let ClassData::Record(dump) = std::mem::replace(&mut self.class_data, ClassData::Off) {
            cds::discard(&dump);
        }
    }
}
