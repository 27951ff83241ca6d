//! Who is deploying: `user@machine`, and the lock holder record built from it.

use crate::operator::output::redact;
use crate::protocol::LockHolder;
use crate::protocol::clock::now_rfc3339;

/// `user@machine` of whoever runs shipjar.
pub fn deployer() -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::current())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

/// The deploy lock's record of this process: deployer, pid, command (secrets masked), since.
pub(super) fn holder() -> LockHolder {
    LockHolder {
        deployer: deployer(),
        pid: std::process::id(),
        command: std::env::args()
            .map(|a| redact(&a))
            .collect::<Vec<_>>()
            .join(" "),
        since: now_rfc3339(),
    }
}
