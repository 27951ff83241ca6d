//! A canary waiting for its operator (`rolling.pause = "confirm"`): the
//! record every host of the deploy keeps in its deploy lock until
//! `deploy --continue`, `--abort` or `unlock`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The pending canary of one deploy, the same on every host of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PendingCanary {
    /// The stage, as the deploy named it.
    pub stage: String,
    /// The release the canary runs (prepared on every host of the deploy).
    pub release: String,
    /// Its version.
    pub version: String,
    /// The artifact's sha256: `--continue` deploys this one, not a new build.
    pub artifact_sha256: String,
    /// Every host of the deploy, as written in the stage, in its order.
    pub hosts: Vec<String>,
    /// The canary hosts, each with the release it ran before (`--abort` goes back to it).
    pub canary: BTreeMap<String, Option<String>>,
    /// Who deployed the canary (`user@machine`).
    pub deployer: String,
    /// When the canary was found healthy and the deploy paused (RFC 3339).
    pub since: String,
}

impl PendingCanary {
    /// "release R (version V) on app1, deployed by alice@box, waiting since T".
    pub fn describe(&self) -> String {
        format!(
            "release {} (version {}) on {}, deployed by {}, waiting since {}",
            self.release,
            self.version,
            self.canary.keys().cloned().collect::<Vec<_>>().join(", "),
            self.deployer,
            self.since
        )
    }

    /// What the operator runs next.
    pub fn how_to_go_on(&self) -> String {
        format!(
            "`shipjar deploy {0} --continue` deploys it to the other hosts, `shipjar deploy {0} --abort` puts the canary back",
            self.stage
        )
    }
}
