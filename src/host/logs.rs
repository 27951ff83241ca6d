//! Reading the service log for `shipjar logs`: the last lines, then (with
//! follow) new lines as they are written, across rotations.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::host::fs::GuardedDir;
use crate::host::supervisor::logfile;
use crate::protocol::layout::Layout;

/// Longest piece of a line sent at once while following.
const MAX_LINE: u64 = 64 * 1024;

/// Sends the last `lines` lines to `emit`; with `follow`, keeps sending new
/// lines until `emit` returns false (the operator went away). The log is
/// read through the guarded layer: a link, FIFO or hard link in its place
/// ends the stream with an error saying so, at once.
pub fn stream(
    layout: &Layout,
    lines: usize,
    follow: bool,
    emit: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let path = logfile::service_log(layout);
    for line in logfile::tail_checked(&path, lines)? {
        if !emit(&line) {
            return Ok(());
        }
    }
    if !follow {
        return Ok(());
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{} is not a file in a directory", path.display()));
    };
    let mut dir = GuardedDir::open(dir).ok();
    let mut file = match &dir {
        Some(d) => open(d, name)?.and_then(|(mut f, ino)| {
            f.seek(SeekFrom::End(0)).ok()?;
            Some((f, ino))
        }),
        None => None,
    };
    let mut partial = String::new();
    loop {
        if let Some((reader, inode)) = file.as_mut() {
            let mut chunk = String::new();
            loop {
                chunk.clear();
                // Bounded: a line that never ends (the service's output)
                // is sent in pieces, never held whole in memory.
                match reader.by_ref().take(MAX_LINE).read_line(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        partial.push_str(&chunk);
                        if partial.ends_with('\n') || partial.len() >= MAX_LINE as usize {
                            if !emit(partial.trim_end_matches('\n')) {
                                return Ok(());
                            }
                            partial.clear();
                        }
                    }
                }
            }
            // Rotated (a new file under the name) or truncated: start over on the new one.
            let position = reader.stream_position().unwrap_or(0);
            let current = dir.as_ref().and_then(|d| d.entry(name).ok().flatten());
            if current.is_some_and(|st| st.ino != *inode || st.size < position)
                && let Some(d) = &dir
            {
                file = open(d, name)?;
            }
        } else {
            if dir.is_none() {
                dir = GuardedDir::open(dir_path(&path)).ok();
            }
            if let Some(d) = &dir {
                file = open(d, name)?;
            }
        }
        // An empty event doubles as a liveness check of the operator.
        if !emit("") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn dir_path(path: &std::path::Path) -> &std::path::Path {
    path.parent().unwrap_or(path)
}

/// The log opened through the guarded layer, with its inode; `None` when
/// there is none yet.
fn open(
    dir: &GuardedDir,
    name: &std::ffi::OsStr,
) -> Result<Option<(BufReader<File>, u64)>, String> {
    let Some(f) = logfile::open_read(dir, name)? else {
        return Ok(None);
    };
    let ino = f.metadata().map_err(|e| e.to_string())?.ino();
    Ok(Some((BufReader::new(f), ino)))
}
