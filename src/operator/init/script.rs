//! How `init` runs a project's build script: the way its `#!` line says,
//! never `sh` for a script written for another shell (Debian's `sh` is
//! dash, which stops at `set -o pipefail` or an array).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::protocol::shell::quote;

/// The `[build] command` that runs `dir/name`, and how it was decided.
pub fn command(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let executable = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    let first_line = std::fs::read(&path).ok().map(|bytes| {
        let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        String::from_utf8_lossy(line).into_owned()
    });
    command_for(name, executable, first_line.as_deref())
}

/// Pure: an executable script runs itself (`./name`), so the kernel reads its
/// `#!`; otherwise the interpreter its `#!` names runs it (`#!/usr/bin/env
/// bash` → `bash name`, `#!/bin/bash -e` → `/bin/bash -e name`); a script
/// without one runs as a shell would run it, with `sh`.
pub fn command_for(name: &str, executable: bool, first_line: Option<&str>) -> (String, String) {
    let script = quote(name);
    if executable {
        return (
            format!("./{script}"),
            format!("build: the project's {name}, run as itself (it is executable)"),
        );
    }
    match first_line.and_then(interpreter) {
        Some(argv) => {
            let words: Vec<String> = argv.iter().map(|w| quote(w)).collect();
            (
                format!("{} {script}", words.join(" ")),
                format!(
                    "build: the project's {name}, run by `{}` as its #! line says",
                    argv.join(" ")
                ),
            )
        }
        None => (
            format!("sh {script}"),
            format!("build: the project's {name} (no #! line: run by sh)"),
        ),
    }
}

/// The interpreter argv a `#!` line names; `/usr/bin/env [-S] PROG ARGS`
/// becomes `PROG ARGS`, found on the PATH as env would.
fn interpreter(line: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = line.strip_prefix("#!")?.split_whitespace().collect();
    let (&program, mut args) = words.split_first()?;
    if Path::new(program).file_name().is_some_and(|f| f == "env") {
        if args.first() == Some(&"-S") {
            args = &args[1..];
        }
        // Other env options (-i, -u NAME, VAR=value) are more than a command line says well.
        if args
            .first()
            .is_none_or(|a| a.starts_with('-') || a.contains('='))
        {
            return None;
        }
        return Some(args.iter().map(|a| a.to_string()).collect());
    }
    Some(words.iter().map(|w| w.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(executable: bool, first: Option<&str>) -> String {
        command_for("build.sh", executable, first).0
    }

    #[test]
    fn a_script_runs_the_way_its_shebang_says() {
        assert_eq!(run(true, Some("#!/usr/bin/env bash")), "./build.sh");
        assert_eq!(run(false, Some("#!/usr/bin/env bash")), "bash build.sh");
        assert_eq!(run(false, Some("#!/bin/bash")), "/bin/bash build.sh");
        assert_eq!(
            run(false, Some("#! /bin/bash -eu")),
            "/bin/bash -eu build.sh"
        );
        assert_eq!(
            run(false, Some("#!/usr/bin/env -S bash -e")),
            "bash -e build.sh"
        );
        assert_eq!(run(false, Some("#!/bin/sh")), "/bin/sh build.sh");
        assert_eq!(run(false, Some("#!/usr/bin/env zsh")), "zsh build.sh");
    }

    #[test]
    fn without_a_usable_shebang_sh_runs_it() {
        assert_eq!(run(false, Some("set -eu")), "sh build.sh");
        assert_eq!(run(false, None), "sh build.sh");
        assert_eq!(run(false, Some("#!")), "sh build.sh");
        assert_eq!(run(false, Some("#!/usr/bin/env")), "sh build.sh");
        assert_eq!(run(false, Some("#!/usr/bin/env -i bash")), "sh build.sh");
    }

    #[test]
    fn odd_names_are_quoted() {
        assert_eq!(command_for("my build.sh", true, None).0, "./'my build.sh'");
    }

    #[test]
    fn the_file_decides() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("build.sh");
        std::fs::write(&script, "#!/usr/bin/env bash\nset -o pipefail\n").unwrap();
        assert_eq!(command(dir.path(), "build.sh").0, "bash build.sh");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(command(dir.path(), "build.sh").0, "./build.sh");
    }
}
