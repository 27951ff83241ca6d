//! The stage's deploy lock on a host: an flock held by the agent for its
//! session, plus a record of who holds it.
//!
//! Because the kernel drops an flock when its holder exits, a deploy killed at
//! any instant (Ctrl-C, SIGKILL, a dropped SSH connection ending the agent)
//! never leaves a stuck lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};

use crate::host::layout::Layout;
use crate::protocol::LockHolder;

/// A held deploy lock; released when dropped.
#[derive(Debug)]
pub struct DeployLock {
    file: File,
}

/// Takes the lock or says who holds it.
pub fn acquire(layout: &Layout, holder: &LockHolder) -> Result<DeployLock, String> {
    let path = layout.deploy_lock();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let who = serde_json::from_str::<LockHolder>(&text)
                .map(|h| h.to_string())
                .unwrap_or_else(|_| "another deploy (holder not recorded yet)".to_string());
            return Err(format!("the deploy lock is held by {who}"));
        }
        Err(TryLockError::Error(e)) => return Err(format!("cannot lock {}: {e}", path.display())),
    }
    let record = serde_json::to_string(holder).map_err(|e| e.to_string())?;
    let written = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(record.as_bytes()))
        .and_then(|()| file.sync_data());
    written.map_err(|e| format!("cannot record the lock holder: {e}"))?;
    Ok(DeployLock { file })
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        // Clear the record first so nobody reads a stale holder; the flock goes with the file.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}
