//! Reading the service log for `shipjar logs`: the last lines (or, with
//! `--since`/`--grep`, the matching lines of every file kept, oldest first),
//! then (with follow) new lines as they are written, across rotations.

mod filter;

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, UNIX_EPOCH};

pub use filter::Filter;
use filter::Reading;

use crate::host::fs::GuardedDir;
use crate::host::os::journal;
use crate::host::supervisor::logfile;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::LogTarget;

/// How often a search that finds nothing sends an empty event, its sign of life.
const SIGN_OF_LIFE: Duration = Duration::from_secs(1);

/// How many rotated files (`NAME.1` …) are looked for.
const MAX_ROTATED: u32 = 100;

/// Longest piece of a line sent at once while following.
const MAX_LINE: u64 = 64 * 1024;

/// Sends the last `lines` lines to `emit`; with `follow`, keeps sending new
/// lines until `emit` returns false (the operator went away). The log is
/// read through the guarded layer: a link, FIFO or hard link in its place
/// ends the stream with an error saying so, at once.
pub fn stream(
    layout: &Layout,
    lines: Option<usize>,
    filter: &Filter,
    follow: bool,
    emit: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    if let Ok(release) = crate::host::supervisor::release::current(layout)
        && release.manifest.logs.to == LogTarget::Journal
    {
        let query = journal::Query {
            identifier: layout.name(),
            instance: layout.instance(),
            lines,
            since: filter.since_text.as_deref(),
            grep: filter.grep.as_ref().map(|g| g.as_str()),
            follow,
        };
        return journal::read(&query, emit);
    }
    let path = logfile::service_log(layout);
    let mut reading = Reading::default();
    let going = match (lines, filter.is_open()) {
        (Some(n), true) => {
            let mut going = true;
            for line in logfile::tail_checked(&path, n)? {
                if !emit(&line) {
                    going = false;
                    break;
                }
            }
            going
        }
        _ => history(&path, lines, filter, &mut reading, emit)?,
    };
    if !follow || !going {
        return Ok(());
    }
    follow_file(&path, filter, &mut reading, emit)
}

/// Sends new lines of the log at `path` as they are written, across
/// rotations and truncations, until `emit` returns false.
fn follow_file(
    path: &std::path::Path,
    filter: &Filter,
    reading: &mut Reading,
    emit: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
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
                            let line = crate::host::secrets::mask(partial.trim_end_matches('\n'));
                            if filter.keeps(&line, reading) && !emit(&line) {
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
                dir = GuardedDir::open(dir_path(path)).ok();
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

/// Every kept file of the log, oldest first: `NAME.K[.gz]` … `NAME.1[.gz]`, `NAME`.
fn files_oldest_first(dir: &GuardedDir, name: &OsStr) -> Vec<(OsString, bool)> {
    let mut files = Vec::new();
    for k in (1..=MAX_ROTATED).rev() {
        for (ext, gz) in [("", false), (".gz", true)] {
            let mut rotated = name.to_os_string();
            rotated.push(format!(".{k}{ext}"));
            if dir.entry(&rotated).ok().flatten().is_some() {
                files.push((rotated, gz));
            }
        }
    }
    files.push((name.to_os_string(), false));
    files
}

/// Sends the lines of every kept file that `filter` keeps, oldest first;
/// with `lines`, only the last that many. A file last written before
/// `--since` is skipped unread. Returns false when the operator went away.
fn history(
    path: &std::path::Path,
    lines: Option<usize>,
    filter: &Filter,
    reading: &mut Reading,
    emit: &dyn Fn(&str) -> bool,
) -> Result<bool, String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(true);
    };
    let dir = match GuardedDir::open(dir) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e.to_string()),
    };
    let mut last: VecDeque<String> = VecDeque::new();
    let mut last_sign = std::time::Instant::now();
    for (file_name, gz) in files_oldest_first(&dir, name) {
        if let (Some(since), Ok(Some(st))) = (filter.since, dir.entry(&file_name)) {
            let written = UNIX_EPOCH + Duration::new(st.mtime.0.max(0) as u64, 0);
            if written + Duration::from_secs(1) < since {
                continue;
            }
        }
        let Some(file) = logfile::open_read(&dir, &file_name)? else {
            continue;
        };
        let reader: Box<dyn Read> = if gz {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut reader = BufReader::new(reader);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            // Bounded: a line that never ends is taken in pieces.
            match reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&raw);
            // Masked before it is matched: a pattern never finds a secret.
            let line = crate::host::secrets::mask(text.trim_end_matches(['\n', '\r']));
            if !filter.keeps(&line, reading) {
                // A long search that matches nothing still says it is alive
                // (the operator gives up on a silent host).
                if last_sign.elapsed() >= SIGN_OF_LIFE {
                    last_sign = std::time::Instant::now();
                    if !emit("") {
                        return Ok(false);
                    }
                }
                continue;
            }
            match lines {
                None => {
                    if !emit(&line) {
                        return Ok(false);
                    }
                }
                Some(n) => {
                    last.push_back(line);
                    if last.len() > n {
                        last.pop_front();
                    }
                }
            }
        }
    }
    for line in last {
        if !emit(&line) {
            return Ok(false);
        }
    }
    Ok(true)
}
