//! Reading the service log for `shipjar logs`: the last lines, then (with
//! follow) new lines as they are written, across rotations.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::host::supervisor::logfile;
use crate::protocol::layout::Layout;

/// Sends the last `lines` lines to `emit`; with `follow`, keeps sending new
/// lines until `emit` returns false (the operator went away).
pub fn stream(
    layout: &Layout,
    lines: usize,
    follow: bool,
    emit: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let path = logfile::service_log(layout);
    for line in logfile::tail(&path, lines) {
        if !emit(&line) {
            return Ok(());
        }
    }
    if !follow {
        return Ok(());
    }
    let mut file = open_at_end(&path);
    let mut partial = String::new();
    loop {
        if let Some((reader, inode)) = file.as_mut() {
            let mut chunk = String::new();
            loop {
                chunk.clear();
                match reader.read_line(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        partial.push_str(&chunk);
                        if partial.ends_with('\n') {
                            if !emit(partial.trim_end_matches('\n')) {
                                return Ok(());
                            }
                            partial.clear();
                        }
                    }
                }
            }
            // Rotated (a new file under the name) or truncated: start over on the new one.
            let current = std::fs::metadata(&path).ok();
            let position = reader.stream_position().unwrap_or(0);
            if current
                .as_ref()
                .is_some_and(|m| m.ino() != *inode || m.len() < position)
            {
                file = File::open(&path).ok().and_then(|f| {
                    let ino = f.metadata().ok()?.ino();
                    Some((BufReader::new(f), ino))
                });
            }
        } else {
            file = File::open(&path).ok().and_then(|f| {
                let ino = f.metadata().ok()?.ino();
                Some((BufReader::new(f), ino))
            });
        }
        // An empty event doubles as a liveness check of the operator.
        if !emit("") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn open_at_end(path: &std::path::Path) -> Option<(BufReader<File>, u64)> {
    let mut f = File::open(path).ok()?;
    let ino = f.metadata().ok()?.ino();
    f.seek(SeekFrom::End(0)).ok()?;
    Some((BufReader::new(f), ino))
}
