//! Keeping the long-lived supervisor small. The binary also holds the
//! operator, and the kernel maps file pages 64 KiB around every page touched
//! while starting (argument parsing, JSON, HTTP), so a supervisor that has
//! just started maps megabytes of code and libraries it will not run again.
//! Once the service is healthy the supervisor unmaps its clean, read-only
//! file mappings (`MADV_DONTNEED`): the pages stay in the page cache, shared
//! with every other process, and the few the supervision loop uses are
//! mapped back on first touch.

use std::fs;

/// Unmaps every read-only, file-backed mapping of this process that has no
/// private (copied-on-write) pages. Safe for code being executed: a page
/// dropped here is read back from the file on its next use.
pub fn drop_clean_file_pages() {
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for mapping in parse(&smaps) {
        if !mapping.droppable() {
            continue;
        }
        // SAFETY: the range is one whole mapping of this process, read-only
        // and file-backed with no private pages: dropping it loses nothing.
        unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.end - mapping.start,
                libc::MADV_DONTNEED,
            );
        }
    }
}

/// One entry of `/proc/self/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    path: String,
    /// Private pages (copy-on-write, e.g. relocated read-only data), in kB.
    anonymous_kb: u64,
}

impl Mapping {
    fn droppable(&self) -> bool {
        !self.writable && self.path.starts_with('/') && self.anonymous_kb == 0
    }
}

fn parse(smaps: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("").to_string();
            mappings.push(Mapping {
                start,
                end,
                writable: perms.as_bytes().get(1) == Some(&b'w'),
                path,
                // Unknown until its Anonymous line: not droppable until then.
                anonymous_kb: u64::MAX,
            });
        } else if first == "Anonymous:"
            && let Some(last) = mappings.last_mut()
        {
            last.anonymous_kb = fields
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX);
        }
    }
    mappings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_file_mappings_are_dropped() {
        let smaps = "\
55e0f2a00000-55e0f2b00000 r-xp 00010000 fe:00 42 /usr/bin/shipjar
Rss:                 100 kB
Anonymous:             0 kB
55e0f2b00000-55e0f2b10000 r--p 00110000 fe:00 42 /usr/bin/shipjar
Anonymous:             8 kB
55e0f2b10000-55e0f2b20000 rw-p 00120000 fe:00 42 /usr/bin/shipjar
Anonymous:             0 kB
7f0000000000-7f0000001000 r--p 00000000 00:00 0 
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";
        let maps = parse(smaps);
        assert_eq!(maps.len(), 5);
        let dropped: Vec<bool> = maps.iter().map(Mapping::droppable).collect();
        assert_eq!(dropped, [true, false, false, false, false]);
        assert_eq!(maps[0].start, 0x55e0f2a00000);
        assert_eq!(maps[0].path, "/usr/bin/shipjar");
    }

    #[test]
    fn dropping_pages_of_running_code_is_harmless() {
        drop_clean_file_pages();
        // Still here, and the code still runs.
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
