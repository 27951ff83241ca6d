//! Log capture: stdout and stderr through the supervisor's pipe into a log
//! rotated by size, with nothing lost or duplicated.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::host::{Host, Spec, code, eventually, text};

/// Lines the test service prints, half on stdout, half on stderr.
const LINES: u64 = 200_000;

/// A service printing numbered lines as fast as it can: even numbers on
/// stdout, odd ones on stderr, then `done`, then it idles.
fn chatty(lines: u64) -> Spec {
    let script = format!(
        "import sys, time\n\
         for i in range({lines}):\n\
         \x20   (sys.stdout if i % 2 == 0 else sys.stderr).write(('out' if i % 2 == 0 else 'err') + ' %d\\n' % i)\n\
         sys.stdout.write('done\\n')\n\
         sys.stdout.flush()\n\
         time.sleep(600)\n"
    );
    Spec::argv(
        vec!["python3".into(), "-c".into(), script],
        json!({"kind": "none"}),
        5_000,
    )
}

/// Every file of the log, oldest first, decompressed.
fn all_log_files(dir: &Path, name: &str) -> Vec<(String, String)> {
    let mut rotated: Vec<(u32, String)> = fs::read_dir(dir)
        .expect("log dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let rest = file.strip_prefix(&format!("{name}."))?;
            let n = rest.trim_end_matches(".gz").parse().ok()?;
            Some((n, file))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<String> = rotated.into_iter().map(|(_, f)| f).collect();
    files.push(name.to_string());
    files
        .into_iter()
        .map(|file| {
            let bytes = fs::read(dir.join(&file)).expect("read log file");
            let text = if file.ends_with(".gz") {
                let mut text = String::new();
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_string(&mut text)
                    .expect("gunzip");
                text
            } else {
                String::from_utf8(bytes).expect("log is UTF-8")
            };
            (file, text)
        })
        .collect()
}

fn lossless_through_rotation(name: &str, compress: bool) {
    let host = Host::new(name);
    let mut spec = chatty(LINES);
    spec.extra = json!({
        "logs": {"max_size": 64 * 1024, "keep": 1000, "compress": compress},
        "restart": {"enabled": false}
    });
    host.release("r1", &spec);
    let began = Instant::now();
    let out = host.start();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let log_dir = host.root().join("var/log").join(name);
    let current = log_dir.join("console.log");
    assert!(
        eventually(Duration::from_secs(60), || fs::read_to_string(&current)
            .is_ok_and(|t| t.contains("\ndone\n"))),
        "the service never finished writing"
    );
    let took = began.elapsed();
    eprintln!(
        "{LINES} lines in {took:?}: {:.0} lines/s",
        LINES as f64 / took.as_secs_f64()
    );
    let out = host.run("stop", false);
    assert_eq!(code(&out), 0, "{}", text(&out));

    let files = all_log_files(&log_dir, "console.log");
    assert!(files.len() > 20, "only {} files: no rotation?", files.len());
    if compress {
        assert!(
            files[..files.len() - 1]
                .iter()
                .filter(|(f, _)| f.ends_with(".gz"))
                .count()
                >= files.len() - 2,
            "rotated files not compressed: {:?}",
            files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
    }
    let (mut next_out, mut next_err) = (0u64, 1u64);
    let mut done = 0;
    for (file, text) in &files {
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{file} ends mid-line"
        );
        for line in text.lines() {
            if line.contains(" [shipjar] ") {
                continue;
            }
            if line == "done" {
                done += 1;
                continue;
            }
            let (stream, n) = line
                .split_once(' ')
                .and_then(|(s, n)| Some((s, n.parse::<u64>().ok()?)))
                .unwrap_or_else(|| panic!("garbled line in {file}: {line:?}"));
            let next = if stream == "out" {
                &mut next_out
            } else {
                &mut next_err
            };
            assert_eq!(n, *next, "{file}: {stream} line {n} where {next} was due");
            *next += 2;
        }
    }
    assert_eq!(done, 1);
    assert_eq!(next_out, LINES, "stdout lines missing at the end");
    assert_eq!(next_err, LINES + 1, "stderr lines missing at the end");
    // The supervisor's own events are in the same log, in order.
    let all: String = files.iter().map(|(_, t)| t.as_str()).collect();
    let started = all.find("[shipjar] started pid").expect("start event");
    let stopped = all.find("[shipjar] stopped:").expect("stop event");
    assert!(
        started < all.find("out 0\n").expect("first line")
            && stopped > all.find("\ndone\n").expect("done")
    );
}

#[test]
fn numbered_lines_survive_rotation_without_loss_or_duplicates() {
    lossless_through_rotation("chatty", false);
}

#[test]
fn numbered_lines_survive_compressed_rotation() {
    lossless_through_rotation("gzipped", true);
}
