//! `revisions.log`: one tab-separated line per deploy and rollback.
//!
//! Fields: time, action, release, version, deployer, outcome, detail.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};

use crate::protocol::layout::Layout;
use crate::protocol::mask::Masker;
use crate::protocol::{Action, Revision, RevisionOutcome};

/// Appends one line and syncs it, every field masked by `masker` (the
/// host's secrets, [`crate::host::secrets::masker`]): a detail may carry
/// what the service answered (a health body), and the file is 0644.
pub fn append(layout: &Layout, revision: &Revision, masker: &Masker) -> io::Result<()> {
    let fields = [
        revision.time.as_str(),
        revision.action.as_str(),
        &revision.release,
        &revision.version,
        &revision.deployer,
        revision.outcome.as_str(),
        &revision.detail,
    ];
    let line: Vec<String> = fields.iter().map(|f| clean(&masker.mask(f))).collect();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.revisions_log())?;
    // One write(2) of a whole line keeps concurrent appends from interleaving.
    file.write_all(format!("{}\n", line.join("\t")).as_bytes())?;
    file.sync_data()
}

/// All lines, oldest first (none when the file does not exist yet); lines
/// that do not parse are skipped. An unreadable file is an error: an empty
/// history would hide which release is the rollback target.
pub fn read(layout: &Layout) -> Result<Vec<Revision>, String> {
    let path = layout.revisions_log();
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(parse)
        .collect())
}

fn parse(line: &str) -> Option<Revision> {
    let mut f = line.splitn(7, '\t').map(str::to_string);
    Some(Revision {
        time: f.next()?,
        action: Action::from_word(&f.next()?),
        release: f.next()?,
        version: f.next()?,
        deployer: f.next()?,
        outcome: RevisionOutcome::from_word(&f.next()?),
        detail: f.next().unwrap_or_default(),
    })
}

/// Tabs and line breaks would break the format.
fn clean(field: &str) -> String {
    field.replace(['\t', '\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_cleans_fields() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "svc");
        fs::create_dir_all(layout.lib_dir()).unwrap();
        let rev = Revision {
            time: "2026-11-26T14:00:00Z".into(),
            action: Action::Deploy,
            release: "20261126-140000-000".into(),
            version: "1.0".into(),
            deployer: "me@box".into(),
            outcome: RevisionOutcome::Failed,
            detail: "health:\tnot\nhealthy".into(),
        };
        append(&layout, &rev, &Masker::new(&[])).unwrap();
        append(&layout, &rev, &Masker::new(&[])).unwrap();
        let read = read(&layout).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].detail, "health: not healthy");
        assert_eq!(read[1].release, rev.release);
    }
}
