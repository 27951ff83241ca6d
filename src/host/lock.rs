//! The stage's deploy lock on a host: a lease record naming its holder.
//!
//! A lease, not a lock held by a process, because the holder is on another
//! machine: if the deploy dies without releasing it (operator SIGKILLed, host
//! cut off), the lease simply expires and the next deploy takes over with a
//! warning. A live deploy renews it. Reads and writes of the record are
//! serialised with a short flock on the record file itself.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::protocol::LockHolder;
use crate::protocol::layout::Layout;

/// The record in `run/<name>/deploy.lock`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockRecord {
    /// Who holds it.
    pub holder: LockHolder,
    /// Identifies the holding session, so only it can renew or release.
    pub token: String,
    /// Unix time in milliseconds after which the lease is void.
    pub expires_at_ms: u64,
}

impl LockRecord {
    /// Whether the lease has run out.
    pub fn expired(&self) -> bool {
        now_ms() >= self.expires_at_ms
    }

    /// "alice@laptop (pid 4242, `shipjar deploy prod`, since …), lease expires in 41s".
    pub fn describe(&self) -> String {
        let left = self.expires_at_ms.saturating_sub(now_ms()).div_ceil(1000);
        if self.expired() {
            format!("{}, lease expired", self.holder)
        } else {
            format!("{}, lease expires in {left}s", self.holder)
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
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs `f` on the record while holding the record file's flock.
fn with_record<T>(
    layout: &Layout,
    f: impl FnOnce(Option<LockRecord>) -> Result<(Option<Option<LockRecord>>, T), String>,
) -> Result<T, String> {
    let path = layout.deploy_lock();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    // An unreadable record (a torn write of an old version) counts as no lock.
    let current = serde_json::from_str::<LockRecord>(&text).ok();
    let (write, value) = f(current)?;
    if let Some(new) = write {
        store(&mut file, new.as_ref())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let _ = file.unlock();
    Ok(value)
}

fn store(file: &mut File, record: Option<&LockRecord>) -> std::io::Result<()> {
    let text = match record {
        Some(r) => serde_json::to_string(r).map_err(std::io::Error::other)?,
        None => String::new(),
    };
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.sync_data()
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum AcquireError {
    /// Another session holds it (the text names the holder).
    Held(String),
    /// The lock record could not be read or written.
    Failed(String),
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::Held(holder) => write!(f, "the deploy lock is held by {holder}"),
            AcquireError::Failed(why) => f.write_str(why),
        }
    }
}

/// Takes the lock for `token`, or says who holds it.
pub fn acquire(
    layout: &Layout,
    holder: &LockHolder,
    token: &str,
    lease_ms: u64,
) -> Result<Acquired, AcquireError> {
    let mut held_by = None;
    let taken = with_record(layout, |current| {
        let acquired = match current {
            None => Acquired::Free,
            Some(r) if r.token == token => Acquired::Free,
            Some(r) if r.expired() => Acquired::TookOver(r),
            Some(r) => {
                held_by = Some(r.describe());
                return Ok((None, None));
            }
        };
        let record = LockRecord {
            holder: holder.clone(),
            token: token.to_string(),
            expires_at_ms: now_ms() + lease_ms,
        };
        Ok((Some(Some(record)), Some(acquired)))
    });
    match (taken, held_by) {
        (Ok(Some(acquired)), _) => Ok(acquired),
        (Ok(None), Some(holder)) => Err(AcquireError::Held(holder)),
        (Ok(None), None) => Err(AcquireError::Failed(
            "the lock record changed while read".into(),
        )),
        (Err(e), _) => Err(AcquireError::Failed(e)),
    }
}

/// Extends the lease; fails if the lock is no longer ours.
pub fn renew(layout: &Layout, token: &str, lease_ms: u64) -> Result<u64, String> {
    with_record(layout, |current| match current {
        Some(mut r) if r.token == token => {
            r.expires_at_ms = now_ms() + lease_ms;
            let expires = r.expires_at_ms;
            Ok((Some(Some(r)), expires))
        }
        Some(r) => Err(format!(
            "the deploy lock was taken over by {}",
            r.describe()
        )),
        None => Err("the deploy lock was removed (shipjar unlock?)".to_string()),
    })
}

/// Releases the lock if `token` holds it.
pub fn release(layout: &Layout, token: &str) -> Result<(), String> {
    with_record(layout, |current| match current {
        Some(r) if r.token == token => Ok((Some(None), ())),
        _ => Ok((None, ())),
    })
}

/// Removes whatever lock there is; returns its record.
pub fn force_unlock(layout: &Layout) -> Result<Option<LockRecord>, String> {
    if !layout.deploy_lock().exists() {
        return Ok(None);
    }
    with_record(layout, |current| Ok((Some(None), current)))
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
            acquire(&layout, &holder(1), "a", 60_000),
            Ok(Acquired::Free)
        ));
        let err = acquire(&layout, &holder(2), "b", 60_000).unwrap_err();
        assert!(matches!(err, AcquireError::Held(_)), "{err}");
        assert!(err.to_string().contains("held by me@box (pid 1"), "{err}");
        assert!(renew(&layout, "a", 1).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(5));
        match acquire(&layout, &holder(2), "b", 60_000) {
            Ok(Acquired::TookOver(r)) => assert_eq!(r.holder.pid, 1),
            other => panic!("expected a takeover, got {other:?}"),
        }
        assert!(
            renew(&layout, "a", 1000)
                .unwrap_err()
                .contains("taken over")
        );
        release(&layout, "a").unwrap();
        assert_eq!(
            force_unlock(&layout).unwrap().map(|r| r.token),
            Some("b".into())
        );
        assert!(matches!(
            acquire(&layout, &holder(3), "c", 60_000),
            Ok(Acquired::Free)
        ));
    }
}
