//! The stage's deploy lock on a host: a lease record naming its holder.
//!
//! A lease, not a lock held by a process, because the holder is on another
//! machine: if the deploy dies without releasing it and its agent never
//! learns (host cut off), the lease simply expires and the next deploy
//! takes over with a warning. (An agent that sees its input end releases
//! the lock itself, unless its session detached it: a deploy of more hosts
//! than `--parallel` closes a host's session between phases and the lock
//! stays, its lease running, until a later session attaches by the token
//! and renews it; see [`renew`].) A live deploy renews it. A canary waiting for its
//! operator (`pause = "confirm"`) keeps the lock with its record in it for
//! [`PENDING_LEASE`], past the session's end, until `deploy --continue` or
//! `--abort` resumes it (by the canary's release id) or `unlock` removes it. Reads and writes of the record are
//! serialised by [`Lock::Deploy`], held for a moment, waited for at most
//! [`MUTEX_WAIT`].

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::host::lockfile;
use crate::protocol::LockHolder;
use crate::protocol::canary::PendingCanary;
use crate::protocol::files::{fsync_dir, remove_if_present, write_atomic};
use crate::protocol::layout::{Layout, Lock};

/// Longest wait for the record's mutex: its holders keep it for the time
/// of a read and a rename, so a longer wait means a holder is stuck.
pub const MUTEX_WAIT: Duration = Duration::from_secs(5);

/// How long a pending canary keeps the stage locked with nobody renewing:
/// long enough to wait for a person, bounded so a forgotten canary does not
/// lock the stage for ever.
pub const PENDING_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The record in `run/<name>/deploy.lock`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockRecord {
    /// Who holds it.
    pub holder: LockHolder,
    /// Identifies the holding session, so only it can renew or release.
    pub token: String,
    /// Unix time in milliseconds after which the lease is void.
    pub expires_at_ms: u64,
    /// A canary waiting for `deploy --continue` or `--abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Box<PendingCanary>>,
    /// The pending canary's lock is held by no session (its deploy exited):
    /// `resume` may take it. A resumed run holds it like any deploy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
}

impl LockRecord {
    /// Whether the lease has run out.
    pub fn expired(&self) -> bool {
        now_ms() >= self.expires_at_ms
    }

    /// "alice@laptop (pid 4242, `shipjar deploy prod`, since …), lease expires in 41s".
    pub fn describe(&self) -> String {
        let left = self.expires_at_ms.saturating_sub(now_ms()).div_ceil(1000);
        let lease = if self.expired() {
            "lease expired".to_string()
        } else {
            format!("lease expires in {left}s")
        };
        match &self.pending {
            None => format!("{}, {lease}", self.holder),
            Some(p) => format!(
                "a pending canary of {} ({lease}); {} still run{} release {}",
                p.describe(),
                p.canary.keys().cloned().collect::<Vec<_>>().join(", "),
                if p.canary.len() == 1 { "s" } else { "" },
                p.release
            ),
        }
    }
}

/// How a lock was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Nobody held it.
    Free,
    /// An expired lease of someone else was taken over.
    TookOver(LockRecord),
    /// The lock of the pending canary named in `begin` was taken over.
    Resumed(Box<PendingCanary>),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the record file holds.
#[derive(Debug)]
enum Current {
    /// No record (or an empty one): nobody holds the lock.
    Free,
    /// A lease.
    Held(LockRecord),
    /// A record that cannot be read: held by someone unknown, never "free".
    Garbled(String),
}

/// What to do with the record after looking at it.
enum Write {
    Keep,
    Put(LockRecord),
    Remove,
}

/// Runs `f` on the record while holding [`Lock::Deploy`], so that reading,
/// deciding and replacing the record is one step.
fn with_record<T>(
    layout: &Layout,
    f: impl FnOnce(Current) -> Result<(Write, T), String>,
) -> Result<T, String> {
    let dir = layout.service_run_dir();
    let mutex = lockfile::take(layout, Lock::Deploy, MUTEX_WAIT).map_err(|e| e.to_string())?;
    let path = layout.deploy_lock();
    let current = read_record(&path)?;
    let (write, value) = f(current)?;
    match write {
        Write::Keep => {}
        Write::Put(record) => {
            let text = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
            // Temp file + rename: a crash or a full disk leaves the old record whole.
            write_atomic(&path, &text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Write::Remove => {
            remove_if_present(&path)
                .and_then(|()| fsync_dir(&dir))
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
    }
    drop(mutex);
    Ok(value)
}

fn read_record(path: &Path) -> Result<Current, String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Current::Free),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Current::Free);
    }
    Ok(match serde_json::from_slice::<LockRecord>(&bytes) {
        Ok(record) => Current::Held(record),
        Err(e) => Current::Garbled(format!("unreadable lock record {}: {e}", path.display())),
    })
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum AcquireError {
    /// Another session holds it (the text names the holder).
    Held(String),
    /// The lock record could not be read or written.
    Failed(String),
    /// `resume` named a pending canary this host does not hold (the text says what it holds).
    NotPending(String),
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::Held(holder) => write!(f, "the deploy lock is held by {holder}"),
            AcquireError::Failed(why) | AcquireError::NotPending(why) => f.write_str(why),
        }
    }
}

/// Takes the lock for `token`, or says who holds it. With `resume`, only
/// the lock of the pending canary of that release is taken (its record kept).
pub fn acquire(
    layout: &Layout,
    holder: &LockHolder,
    token: &str,
    lease_ms: u64,
    resume: Option<&str>,
) -> Result<Acquired, AcquireError> {
    let mut refused = None;
    let taken = with_record(layout, |current| {
        let decided = match resume {
            Some(release) => decide_resume(current, release),
            None => decide(current, token),
        };
        let (acquired, pending) = match decided {
            Ok(decided) => decided,
            Err(e) => {
                refused = Some(e);
                return Ok((Write::Keep, None));
            }
        };
        let record = LockRecord {
            holder: holder.clone(),
            token: token.to_string(),
            expires_at_ms: now_ms() + lease_ms,
            pending,
            parked: false,
        };
        Ok((Write::Put(record), Some(acquired)))
    });
    match (taken, refused) {
        (Ok(Some(acquired)), _) => Ok(acquired),
        (Ok(None), Some(refused)) => Err(refused),
        (Ok(None), None) => Err(AcquireError::Failed(
            "the lock record changed while read".into(),
        )),
        (Err(e), _) => Err(AcquireError::Failed(e)),
    }
}

/// A plain `begin`: free, ours, or an expired lease (a pending canary's too).
fn decide(
    current: Current,
    token: &str,
) -> Result<(Acquired, Option<Box<PendingCanary>>), AcquireError> {
    match current {
        Current::Free => Ok((Acquired::Free, None)),
        Current::Held(r) if r.token == token => Ok((Acquired::Free, None)),
        Current::Held(r) if r.expired() => Ok((Acquired::TookOver(r), None)),
        Current::Held(r) => Err(AcquireError::Held(match &r.pending {
            Some(p) => format!("{}: {}", r.describe(), p.how_to_go_on()),
            None => r.describe(),
        })),
        Current::Garbled(why) => Err(AcquireError::Held(format!(
            "unknown ({why}; `shipjar unlock` removes it)"
        ))),
    }
}

/// `begin` with `resume`: only a pending canary of `release` is taken over.
fn decide_resume(
    current: Current,
    release: &str,
) -> Result<(Acquired, Option<Box<PendingCanary>>), AcquireError> {
    let here = match current {
        Current::Held(r) if r.pending.as_ref().is_some_and(|p| p.release == release) => {
            // A run continuing or aborting it now holds it: one at a time.
            if !r.parked && !r.expired() {
                return Err(AcquireError::Held(format!(
                    "{} (resumed by {})",
                    r.describe(),
                    r.holder
                )));
            }
            if let Some(p) = r.pending {
                return Ok((Acquired::Resumed(p.clone()), Some(p)));
            }
            String::new()
        }
        Current::Free => "the deploy lock is free".to_string(),
        Current::Held(r) => format!("the deploy lock is held by {}", r.describe()),
        Current::Garbled(why) => format!("the deploy lock is unreadable: {why}"),
    };
    Err(AcquireError::NotPending(format!(
        "no pending canary of release {release} on this host ({here})"
    )))
}

/// Keeps the lock `token` holds for `pending`, for [`PENDING_LEASE`]: it
/// outlives the session.
pub fn hold_pending(layout: &Layout, token: &str, pending: PendingCanary) -> Result<(), String> {
    with_record(layout, |current| match current {
        Current::Held(mut r) if r.token == token => {
            r.expires_at_ms = now_ms() + PENDING_LEASE.as_millis() as u64;
            r.pending = Some(Box::new(pending));
            r.parked = true;
            Ok((Write::Put(r), ()))
        }
        _ => Err("the deploy lock is no longer held by this deploy".to_string()),
    })
}

/// The pending canary this host's lock holds, if any (read without the
/// mutex: the record is replaced whole by rename).
pub fn pending(layout: &Layout) -> Option<PendingCanary> {
    match read_record(&layout.deploy_lock()) {
        Ok(Current::Held(r)) if !r.expired() => r.pending.map(|p| *p),
        _ => None,
    }
}

/// Extends the lease; fails if the lock is no longer ours. A lease that ran
/// out is still ours while its record holds `token` (nobody took it over):
/// that is how a detached lock is taken back (`attach`).
pub fn renew(layout: &Layout, token: &str, lease_ms: u64) -> Result<u64, String> {
    with_record(layout, |current| match current {
        Current::Held(mut r) if r.token == token => {
            r.expires_at_ms = now_ms() + lease_ms;
            let expires = r.expires_at_ms;
            Ok((Write::Put(r), expires))
        }
        Current::Held(r) => Err(format!(
            "the deploy lock was taken over by {}",
            r.describe()
        )),
        Current::Garbled(why) => Err(format!("the deploy lock is no longer ours: {why}")),
        Current::Free => Err("the deploy lock was removed (shipjar unlock?)".to_string()),
    })
}

/// Releases the lock if `token` holds it.
pub fn release(layout: &Layout, token: &str) -> Result<(), String> {
    with_record(layout, |current| match current {
        Current::Held(r) if r.token == token => Ok((Write::Remove, ())),
        _ => Ok((Write::Keep, ())),
    })
}

/// Removes whatever lock there is; returns who held it, if anyone.
pub fn force_unlock(layout: &Layout) -> Result<Option<String>, String> {
    if !layout.deploy_lock().exists() {
        return Ok(None);
    }
    with_record(layout, |current| {
        let previous = match current {
            Current::Free => None,
            Current::Held(r) => Some(r.describe()),
            Current::Garbled(why) => Some(format!("unknown ({why})")),
        };
        Ok((Write::Remove, previous))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: u32) -> LockHolder {
        LockHolder {
            deployer: "me@box".into(),
            pid,
            command: "shipjar deploy prod".into(),
            since: "t".into(),
        }
    }

    #[test]
    fn second_holder_is_refused_until_the_lease_expires() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "svc");
        std::fs::create_dir_all(layout.run_dir()).unwrap();
        assert!(matches!(
            acquire(&layout, &holder(1), "a", 60_000, None),
            Ok(Acquired::Free)
        ));
        let err = acquire(&layout, &holder(2), "b", 60_000, None).unwrap_err();
        assert!(matches!(err, AcquireError::Held(_)), "{err}");
        assert!(err.to_string().contains("held by me@box (pid 1"), "{err}");
        assert!(renew(&layout, "a", 1).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(5));
        match acquire(&layout, &holder(2), "b", 60_000, None) {
            Ok(Acquired::TookOver(r)) => assert_eq!(r.holder.pid, 1),
            other => panic!("expected a takeover, got {other:?}"),
        }
        assert!(
            renew(&layout, "a", 1000)
                .unwrap_err()
                .contains("taken over")
        );
        release(&layout, "a").unwrap();
        assert!(
            force_unlock(&layout)
                .unwrap()
                .is_some_and(|holder| holder.contains("pid 2"))
        );
        assert!(matches!(
            acquire(&layout, &holder(3), "c", 60_000, None),
            Ok(Acquired::Free)
        ));
    }

    #[test]
    fn a_garbled_record_is_held_by_someone_unknown_until_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "svc");
        std::fs::create_dir_all(layout.run_dir()).unwrap();
        std::fs::write(layout.deploy_lock(), "{\"holder\": {\"depl").unwrap();
        let err = acquire(&layout, &holder(1), "a", 60_000, None).unwrap_err();
        assert!(matches!(err, AcquireError::Held(_)), "{err}");
        assert!(
            err.to_string()
                .contains("held by unknown (unreadable lock record"),
            "{err}"
        );
        assert!(renew(&layout, "a", 1000).is_err());
        assert!(
            force_unlock(&layout)
                .unwrap()
                .is_some_and(|h| h.starts_with("unknown"))
        );
        assert!(matches!(
            acquire(&layout, &holder(1), "a", 60_000, None),
            Ok(Acquired::Free)
        ));
    }

    #[test]
    fn the_record_is_replaced_whole_and_removed_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "svc");
        std::fs::create_dir_all(layout.run_dir()).unwrap();
        acquire(&layout, &holder(1), "a", 60_000, None).unwrap();
        let before = std::fs::metadata(layout.deploy_lock()).unwrap();
        renew(&layout, "a", 60_000).unwrap();
        let after = std::fs::metadata(layout.deploy_lock()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            before.ino(),
            after.ino(),
            "renewal writes a new file and renames it"
        );
        release(&layout, "a").unwrap();
        assert!(!layout.deploy_lock().exists());
        let leftovers: Vec<_> = std::fs::read_dir(layout.run_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n != "locks")
            .collect();
        assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
    }

    #[test]
    fn a_stuck_holder_of_the_mutex_fails_the_lock_in_time_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "svc");
        let stuck = lockfile::try_take(&layout, Lock::Deploy).unwrap();
        let began = std::time::Instant::now();
        let err = acquire(&layout, &holder(1), "a", 60_000, None).unwrap_err();
        let took = began.elapsed();
        assert!(took >= MUTEX_WAIT && took < MUTEX_WAIT * 2, "{took:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "the deploy lock's mutex is held by pid {} (",
                std::process::id()
            )),
            "{text}"
        );
        drop(stuck);
        assert!(matches!(
            acquire(&layout, &holder(1), "a", 60_000, None),
            Ok(Acquired::Free)
        ));
    }

    fn pending_of(release: &str) -> PendingCanary {
        PendingCanary {
            stage: "prod".into(),
            release: release.into(),
            version: "2.0".into(),
            artifact_sha256: "ab".repeat(32),
            hosts: vec!["app1".into(), "app2".into()],
            canary: [("app1".to_string(), Some("r1".to_string()))].into(),
            deployer: "me@box".into(),
            since: "t".into(),
        }
    }

    #[test]
    fn a_pending_canary_keeps_the_lock_until_resumed_by_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "svc");
        std::fs::create_dir_all(layout.run_dir()).unwrap();
        acquire(&layout, &holder(1), "a", 60_000, None).unwrap();
        hold_pending(&layout, "a", pending_of("r2")).unwrap();
        // The session is gone: its token no longer matters, the lease is long.
        let err = acquire(&layout, &holder(2), "b", 60_000, None).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AcquireError::Held(_)), "{text}");
        assert!(text.contains("a pending canary of release r2"), "{text}");
        assert!(text.contains("shipjar deploy prod --continue"), "{text}");
        assert_eq!(pending(&layout), Some(pending_of("r2")));
        let wrong = acquire(&layout, &holder(2), "b", 60_000, Some("r3")).unwrap_err();
        assert!(matches!(wrong, AcquireError::NotPending(_)), "{wrong}");
        match acquire(&layout, &holder(2), "b", 60_000, Some("r2")) {
            Ok(Acquired::Resumed(p)) => assert_eq!(p.release, "r2"),
            other => panic!("expected a resume, got {other:?}"),
        }
        // One resumed run at a time: another is refused while it holds the lock.
        let busy = acquire(&layout, &holder(3), "c", 60_000, Some("r2")).unwrap_err();
        assert!(matches!(busy, AcquireError::Held(_)), "{busy}");
        assert!(
            busy.to_string().contains("resumed by me@box (pid 2"),
            "{busy}"
        );
        // Resumed: the record stays (status shows it) until the lock is released.
        assert_eq!(pending(&layout).map(|p| p.release), Some("r2".into()));
        release(&layout, "b").unwrap();
        assert_eq!(pending(&layout), None);
        let free = acquire(&layout, &holder(3), "c", 60_000, Some("r2")).unwrap_err();
        assert!(
            free.to_string().contains("the deploy lock is free"),
            "{free}"
        );
    }

    #[test]
    fn unlock_removes_a_pending_canary_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "svc");
        std::fs::create_dir_all(layout.run_dir()).unwrap();
        acquire(&layout, &holder(1), "a", 60_000, None).unwrap();
        hold_pending(&layout, "a", pending_of("r2")).unwrap();
        let previous = force_unlock(&layout).unwrap().unwrap();
        assert!(
            previous.contains("pending canary of release r2"),
            "{previous}"
        );
        assert!(
            previous.contains("app1 still runs release r2"),
            "{previous}"
        );
        assert!(acquire(&layout, &holder(2), "b", 60_000, None).is_ok());
    }
}
