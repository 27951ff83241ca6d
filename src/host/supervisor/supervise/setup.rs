//! Before the first run: the lock, no second copy of the service, the
//! release and its user, the log, the first state file.

use crate::host::lockfile::{self, HeldLock, LockError};
use crate::host::os::journal::Journal;
use crate::host::os::process::{self, Credentials, Signals};
use crate::host::os::procfs::{self, Liveness, ProcessId};
use crate::host::supervisor::backoff::Backoff;
use crate::host::supervisor::cds::ClassData;
use crate::host::supervisor::logfile;
use crate::host::supervisor::logpipe::{LogPipe, Sink};
use crate::host::supervisor::privileges;
use crate::host::supervisor::readiness::ReadinessChannel;
use crate::host::supervisor::release::{self, Release};
use crate::host::supervisor::rotate::{Owner, RotatingFile, Rotation};
use crate::host::supervisor::spawn;
use crate::host::supervisor::state::{self, Phase, Pidfile, SupervisorState};
use crate::protocol::layout::{Dir, Layout, Lock};
use crate::protocol::manifest::LogTarget;

use super::{Mode, Supervisor};

impl<'a> Supervisor<'a> {
    /// Takes the lock and opens the log. `signals` were blocked first, so a
    /// stop that arrives while we set up waits for us.
    pub(super) fn setup(layout: &'a Layout, mode: Mode, signals: Signals) -> Result<Self, String> {
        let run_dir = layout.directory(Dir::Run);
        crate::host::fs::create_missing(&run_dir)
            .map_err(|e| format!("{}: {e}", run_dir.path.display()))?;
        let lock = take_lock(layout)?;
        let me = procfs::identify(std::process::id() as i32)
            .ok()
            .flatten()
            .ok_or("cannot read this process's own /proc entry")?;
        refuse_unsupervised_copy(layout)?;

        let release = release::current(layout)?;
        let creds = spawn::credentials(&release)?;
        if let Some(c) = &creds {
            privileges::check_release(layout, &release.dir, c)?;
            privileges::prepare_dirs(layout, c)?;
        }
        let log = open_log(layout, &release, creds.as_ref(), mode)?;
        // Under systemd `User=` we already are that user: nothing to say.
        if creds.is_none()
            && let Some(user) = &release.manifest.run.user
            && !process::is_root()
            && process::current_user_name().as_deref() != Some(user.as_str())
        {
            log.event(&format!(
                "running as the current user: run.user `{user}` applies only when started as root"
            ));
        }
        let state = initial_state(me, &release);
        let backoff = Backoff::new(&release.manifest.restart);
        let mut supervisor = Supervisor {
            layout,
            signals,
            log,
            release,
            state,
            backoff,
            // Replaced by the caller's channel once set up.
            readiness: ReadinessChannel::Detached { sent: true },
            reloading: false,
            reverting: None,
            creds,
            class_data: ClassData::Off,
            dump_job: super::archive::DumpJob::Idle,
            _lock: lock,
        };
        supervisor.save();
        Ok(supervisor)
    }
}

/// The lock rules out another supervisor, not a service left running after
/// its supervisor was killed: never start a second copy.
fn refuse_unsupervised_copy(layout: &Layout) -> Result<(), String> {
    if let Pidfile::Found {
        pid,
        start_ticks: Some(ticks),
    } = state::read_pidfile(&layout.pidfile())
    {
        let old = ProcessId {
            pid,
            start_ticks: ticks,
        };
        if procfs::liveness(old) == Liveness::Alive {
            return Err(format!(
                "already running without a supervisor (pid {pid}); stop it first"
            ));
        }
    }
    Ok(())
}

/// The state file's contents before the first spawn.
fn initial_state(me: ProcessId, release: &Release) -> SupervisorState {
    SupervisorState {
        boot_id: procfs::boot_id(),
        supervisor: me,
        service: None,
        release: release.manifest.id.clone(),
        release_dir: release.dir.clone(),
        started_at: None,
        state: Phase::Starting,
        healthy_after_ms: None,
        last_exit: None,
        stopped_on_request: false,
        last_exit_code: None,
        last_exit_signal: None,
        restarts: 0,
        next_restart_at: None,
        failed_reason: None,
        clean_stop: None,
        stop_took_ms: None,
        thread_dump: false,
        reloads: 0,
        last_reload: None,
        last_reload_ok: None,
        unhealthy_since: None,
        last_probe: None,
        class_data: None,
        auto_reverted: None,
        updated_at: logfile::now_rfc3339(),
    }
}

/// Opens the rotating log and starts the thread that drains the service's
/// output into it. Our own stderr goes into the pipe too, so anything we
/// print (a panic) lands in the log, in order.
fn open_log(
    layout: &Layout,
    release: &Release,
    creds: Option<&Credentials>,
    mode: Mode,
) -> Result<LogPipe, String> {
    let spec = &release.manifest.logs;
    let rotation = Rotation {
        max_size: spec.max_size,
        keep: spec.keep,
        compress: spec.compress,
    };
    let path = logfile::path_for(layout, release)?;
    // As root, a log file we create belongs to the service user and its
    // group, 0640 (the service could write its output there anyway); one
    // that exists keeps its owner and mode.
    let owner = creds.map(|c| Owner {
        uid: c.uid,
        gid: c.gid,
    });
    let (file, journal) = match spec.to {
        LogTarget::File => (
            Sink::File(
                RotatingFile::open(&path, rotation, owner)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            false,
        ),
        LogTarget::Journal => {
            // Both instances behind the proxy log as the service; a field says which.
            let fields = layout
                .instance()
                .map(|port| vec![("SHIPJAR_INSTANCE".to_string(), port.to_string())])
                .unwrap_or_default();
            (
                Sink::Journal(Journal::connect(layout.name(), fields)?),
                true,
            )
        }
    };
    // In the foreground our stderr is the process manager's (the journal):
    // events go there too (unless they go to the journal already), and it
    // stays ours.
    let foreground = mode == Mode::Foreground;
    let log = LogPipe::start(file, foreground && !journal)
        .map_err(|e| format!("cannot start the log pipe: {e}"))?;
    if !foreground {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 2, which we own as our stderr.
        unsafe {
            libc::dup2(log.service_fd().as_raw_fd(), libc::STDERR_FILENO);
        }
    }
    Ok(log)
}

/// Takes the supervisor lock without waiting: held means another supervisor lives.
fn take_lock(layout: &Layout) -> Result<HeldLock, String> {
    lockfile::try_take(layout, Lock::Supervisor).map_err(|e| match e {
        LockError::Busy { holder, .. } => format!(
            "another supervisor is already running for {}{}",
            layout.name(),
            holder.map(|h| format!(" ({h})")).unwrap_or_default()
        ),
        LockError::Failed(why) => why,
    })
}
