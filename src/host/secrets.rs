//! The secret values a host masks in what it answers and records: each
//! release's `SECRETS` file (written by `store::prepare`, the agent's user
//! only, 0600), never logged, never sent back.
//!
//! A process masks with one active masker: the agent sets it for the service
//! of each request, the supervisor once at its start. What the agent sends,
//! the supervisor's events and state file, `revisions.log` and the start of
//! a health answer kept in a failure all go through it.

use std::sync::{Arc, Mutex};

use crate::host::store;
use crate::protocol::layout::{Layout, RELEASE_SECRETS};
use crate::protocol::mask::{Masker, SecretValue};

/// The masker this process masks with; none until one is set.
static ACTIVE: Mutex<Option<Arc<Masker>>> = Mutex::new(None);

/// A masker for the secrets of every release of the service: its logs and
/// history may still hold an older release's values.
pub fn masker(layout: &Layout) -> Masker {
    Masker::new(&release_secrets(layout))
}

/// The secret values of every release of the service, each once.
pub fn release_secrets(layout: &Layout) -> Vec<SecretValue> {
    let mut all: Vec<SecretValue> = Vec::new();
    for id in store::release_ids(layout) {
        for secret in read(layout, &id) {
            if !all.contains(&secret) {
                all.push(secret);
            }
        }
    }
    all
}

/// From now on this process masks with the secrets of `layout`'s releases.
pub fn mask_with(layout: &Layout) {
    use_masker(masker(layout));
}

/// From now on this process masks with `masker`.
pub fn use_masker(masker: Masker) {
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(masker));
}

/// The masker set by [`mask_with`], if any.
pub fn active() -> Option<Arc<Masker>> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// `text` masked with the active masker.
pub fn mask(text: &str) -> String {
    match active() {
        Some(masker) => masker.mask(text).into_owned(),
        None => text.to_string(),
    }
}

/// The values in a release's `SECRETS` file; none when it has none (a
/// release without secrets, or made before releases had the file).
fn read(layout: &Layout, id: &str) -> Vec<SecretValue> {
    std::fs::read(layout.release_dir(id).join(RELEASE_SECRETS))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}
