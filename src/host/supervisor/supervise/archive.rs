//! The class-data work of a run (`[service] cds`), due [`cds::DUMP_DELAY`]
//! after the run passed its gate: a recording run's dump, run beside the
//! service and never waited for (the run's end kills one still running);
//! for a run that maps the archive, keeping the class list it recorded.

use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::Instant;

use crate::host::os::process::ExitInfo;
use crate::host::supervisor::cds::{self, ClassData, DUMP_DEADLINE, DUMP_DELAY};

use super::Supervisor;

/// Where the current run's class-data work is.
pub(super) enum DumpJob {
    /// None to do (a run that records nothing, or its work is done).
    Idle,
    /// It is due at this moment: a recording run's dump starts, a run that
    /// maps the archive has its class list kept.
    Due(Instant),
    /// The dump runs.
    Running {
        /// The `java -Xshare:dump` process.
        child: Child,
        /// When it started.
        started: Instant,
    },
}

impl Supervisor<'_> {
    /// The run passed its gate: what it recorded is dealt with later.
    pub(super) fn schedule_dump(&mut self) {
        if matches!(
            self.class_data,
            ClassData::Record(_) | ClassData::Use { list: Some(_), .. }
        ) {
            self.dump_job = DumpJob::Due(Instant::now() + DUMP_DELAY);
        }
    }

    /// Does the run's class-data work once it is due; returns when to look again.
    pub(super) fn tend_dump(&mut self) -> Option<Instant> {
        match &self.class_data {
            ClassData::Record(_) => self.tend_recording(),
            ClassData::Use {
                list: Some(list), ..
            } => match self.dump_job {
                DumpJob::Due(at) if at > Instant::now() => Some(at),
                DumpJob::Due(_) => {
                    let line = cds::keep_list(list);
                    self.end_class_data();
                    self.log.event(&line);
                    None
                }
                DumpJob::Idle | DumpJob::Running { .. } => None,
            },
            ClassData::Use { list: None, .. } | ClassData::Off => None,
        }
    }

    /// Starts a recording run's dump when it is due, keeps its archive when
    /// it ended, kills it past its deadline; returns when to look again.
    fn tend_recording(&mut self) -> Option<Instant> {
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

    /// The run (or its class-data work) ends: a dump still running is
    /// killed, not waited for, and the run's dump directory removed.
    pub(super) fn end_class_data(&mut self) {
        if let DumpJob::Running { child, .. } = &mut self.dump_job {
            cds::kill_dump(child);
        }
        self.dump_job = DumpJob::Idle;
        if let Some(dump) = self.class_data.take_dump() {
            cds::discard(&dump);
        }
    }
}
