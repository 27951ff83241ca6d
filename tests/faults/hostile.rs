//! Hostile strings in every string field of shipjar.toml, in `--set`,
//! `--env`, `--version` and host names: each is rejected with a clear error
//! (exit 2 naming the file or flag) or arrives byte-exact, and is never
//! executed.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{Suite, check, text};

/// Files a command substitution in a hostile string would create.
const PWN: &str = "/tmp/sjpwn";

/// The hostile values, by name.
fn values() -> Vec<(&'static str, String)> {
    vec![
        ("quotes", "it's \"quoted\" \\ 'single'".into()),
        ("subst", format!("$(touch {PWN}-subst)")),
        ("backticks", format!("`touch {PWN}-tick`")),
        (
            "semicolon",
            format!("a; touch {PWN}-semi; b && touch {PWN}-and"),
        ),
        ("newline", "line1\nline2\r\nline3".into()),
        ("dotdot", "../../../etc/passwd".into()),
        ("nul", "nul\0byte".into()),
        (
            "10kB",
            "x$'\"`;\\ü".repeat(1024).chars().take(10_240).collect(),
        ),
        ("template", "{{ 7 * 7 }}{% if true %}!{% endif %}".into()),
        ("unicode", "ünïcödé ☃ 🦀 \u{202e}rtl".into()),
    ]
}

/// A TOML basic string holding `v` exactly.
fn toml_str(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The hostile project's config; every field plain unless set.
#[derive(Clone)]
struct Fields {
    name: String,
    java_opts: Vec<String>,
    env: Vec<(String, String)>,
    command: Option<String>,
    health: String,
    dest: String,
    hosts: Vec<String>,
    vars: Vec<(String, String)>,
    ssh_config: String,
}

impl Fields {
    fn plain(ssh_config: &Path) -> Fields {
        Fields {
            name: "hello".into(),
            java_opts: vec![],
            env: vec![],
            command: None,
            health: "http://127.0.0.1:18080/health".into(),
            dest: "hostile.txt".into(),
            hosts: vec!["app1".into()],
            vars: vec![("h0".into(), "plain".into())],
            ssh_config: ssh_config.display().to_string(),
        }
    }

    fn toml(&self) -> String {
        let opts: Vec<String> = ["-Xmx64m", "-XX:TieredStopAtLevel=1"]
            .iter()
            .map(|o| toml_str(o))
            .chain(self.java_opts.iter().map(|o| toml_str(o)))
            .collect();
        let env: Vec<String> = [("PORT", "18080"), ("BIND", "0.0.0.0")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(self.env.iter().cloned())
            .map(|(k, v)| format!("{k} = {}", toml_str(&v)))
            .collect();
        let run = match &self.command {
            Some(c) => format!("command = [\"/bin/echo\", {}]", toml_str(c)),
            None => format!("jar = \"hello.jar\"\njava_opts = [{}]", opts.join(", ")),
        };
        let vars: Vec<String> = self
            .vars
            .iter()
            .map(|(k, v)| format!("{k} = {}", toml_str(v)))
            .collect();
        let hosts: Vec<String> = self.hosts.iter().map(|h| toml_str(h)).collect();
        format!(
            "[service]\nname = {name}\n{run}\nenv = {{ {env} }}\n\n\
             [build]\ncommand = \"true\"\nartifact = \"hello.jar\"\n\n\
             [health]\nurl = {health}\nstart_timeout = \"15s\"\n\n\
             [version_check]\nurl = \"http://127.0.0.1:18080/version\"\n\n\
             [stop]\ntimeout = \"4s\"\n\n\
             [[config]]\ntemplate = \"deploy/hostile.txt\"\ndest = {dest}\n\n\
             [[config]]\nbuiltin = \"service-properties\"\ndest = \"service.properties\"\n\n\
             [stages.evil]\nhosts = [{hosts}]\nssh_config = {cfg}\nlock_lease = \"10s\"\nvars = {{ {vars} }}\n",
            name = toml_str(&self.name),
            env = env.join(", "),
            health = toml_str(&self.health),
            dest = toml_str(&self.dest),
            hosts = hosts.join(", "),
            cfg = toml_str(&self.ssh_config),
            vars = vars.join(", "),
        )
    }
}

/// The hostile project: a directory with the template and a config.
struct Evil {
    dir: tempfile::TempDir,
}

/// Raw template text: shell syntax that must be copied, never run.
fn template_text(vars: &[(String, String)]) -> String {
    let mut t = format!("raw: $(touch {PWN}-tpl) `touch {PWN}-tpl2`; \"' \\ ../ \u{2603}\n");
    for (k, _) in vars {
        t.push_str(&format!("{k}=[{{{{ {k} }}}}]\n"));
    }
    t
}

fn expected_text(vars: &[(String, String)]) -> Vec<u8> {
    let mut t = format!("raw: $(touch {PWN}-tpl) `touch {PWN}-tpl2`; \"' \\ ../ \u{2603}\n");
    for (k, v) in vars {
        t.push_str(&format!("{k}=[{v}]\n"));
    }
    t.into_bytes()
}

impl Evil {
    fn new() -> Evil {
        let dir = tempfile::Builder::new()
            .prefix("shipjar-hostile-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("deploy")).expect("mkdir");
        std::fs::copy(crate::common::hello_jar(), dir.path().join("hello.jar")).expect("jar");
        Evil { dir }
    }

    fn write(&self, f: &Fields) {
        std::fs::write(self.dir.path().join("shipjar.toml"), f.toml()).expect("config");
        std::fs::write(
            self.dir.path().join("deploy/hostile.txt"),
            template_text(&f.vars),
        )
        .expect("template");
    }

    fn run(&self, s: &mut Suite, args: &[OsString]) -> Output {
        let mut cmd = Command::new(crate::common::shipjar_bin());
        cmd.arg("-C")
            .arg(self.dir.path())
            .args(args)
            .stdin(Stdio::null());
        let what: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let out = s.output(cmd, &what.join(" "));
        s.record(&out);
        out
    }
}

/// `shipjar check evil` judged: whether the value was accepted.
fn checked(s: &mut Suite, evil: &Evil, what: &str, names: &[&str]) -> bool {
    let out = evil.run(s, &os(&["check", "evil"]));
    judge(s, what, &out, names)
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// The outcome of one hostile input: exit 0 (accepted) or a clear exit 2.
fn judge(s: &mut Suite, what: &str, out: &Output, names: &[&str]) -> bool {
    let all = text(out);
    match out.status.code() {
        Some(0) => true,
        Some(2) => {
            if !names.iter().any(|n| all.contains(n)) {
                s.fail(format!("{what}: rejected without naming {names:?}: {all}"));
            }
            false
        }
        other => {
            s.fail(format!(
                "{what}: neither accepted nor rejected cleanly (exit {other:?}): {all}"
            ));
            false
        }
    }
}

/// Every field's hostile value through `check`, then the accepted ones
/// together through a real deploy to app1, checked byte by byte.
pub fn hostile_strings(s: &mut Suite) {
    let evil = Evil::new();
    let plain = Fields::plain(s.fleet.ssh_config());
    let vals = values();
    let check_args = os(&["check", "evil"]);
    let (mut vars, mut envs, mut opts, mut sets, mut cli_envs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rejected = Vec::new();
    for (i, (name, v)) in vals.iter().enumerate() {
        s.counts.faults += 1;
        // The service name: must be refused.
        let mut f = plain.clone();
        f.name = v.clone();
        evil.write(&f);
        let out = evil.run(s, &check_args);
        if out.status.code() != Some(2) || !text(&out).contains("shipjar.toml") {
            s.fail(format!(
                "service name {name}: must be rejected naming shipjar.toml: {}",
                text(&out)
            ));
        }
        // Fields whose value would arrive on the host.
        let var = (format!("h{}", i + 1), v.clone());
        let mut f = plain.clone();
        f.vars.push(var.clone());
        evil.write(&f);
        if checked(
            s,
            &evil,
            &format!("vars {name}"),
            &["shipjar.toml", "hostile.txt"],
        ) {
            vars.push(var);
        } else {
            rejected.push(format!("vars:{name}"));
        }
        let env = (format!("HOSTILE{i}"), v.clone());
        let mut f = plain.clone();
        f.env.push(env.clone());
        evil.write(&f);
        if checked(s, &evil, &format!("env {name}"), &["shipjar.toml"]) {
            envs.push(env);
        } else {
            rejected.push(format!("env:{name}"));
        }
        let opt = format!("-Dhostile{i}={v}");
        let mut f = plain.clone();
        f.java_opts.push(opt.clone());
        evil.write(&f);
        if checked(s, &evil, &format!("java_opts {name}"), &["shipjar.toml"]) {
            opts.push(opt);
        } else {
            rejected.push(format!("java_opts:{name}"));
        }
        // Checked only: accepted or rejected cleanly.
        for (field, edit) in [
            (
                "command",
                Box::new(|f: &mut Fields, v: &str| f.command = Some(v.into()))
                    as Box<dyn Fn(&mut Fields, &str)>,
            ),
            (
                "health url",
                Box::new(|f: &mut Fields, v: &str| {
                    f.health = format!("http://127.0.0.1:18080/health?{v}")
                }),
            ),
            (
                "dest",
                Box::new(|f: &mut Fields, v: &str| f.dest = v.into()),
            ),
        ] {
            let mut f = plain.clone();
            edit(&mut f, v);
            evil.write(&f);
            let accepted = checked(s, &evil, &format!("{field} {name}"), &["shipjar.toml"]);
            if !accepted {
                rejected.push(format!("{field}:{name}"));
            }
            if field == "dest" && *name == "dotdot" && accepted {
                s.fail("dest = \"../../../etc/passwd\" was accepted".into());
            }
        }
        // Flags (an argument cannot hold a NUL: the OS refuses it).
        evil.write(&plain);
        if v.contains('\0') {
            continue;
        }
        let set = (format!("s{i}"), v.clone());
        let out = evil.run(
            s,
            &[
                OsString::from("check"),
                "evil".into(),
                "--set".into(),
                format!("{}={}", set.0, set.1).into(),
            ],
        );
        if judge(s, &format!("--set {name}"), &out, &["--set", "set"]) {
            sets.push(set);
        } else {
            rejected.push(format!("--set:{name}"));
        }
        let e = (format!("CLI{i}"), v.clone());
        let out = evil.run(
            s,
            &[
                OsString::from("check"),
                "evil".into(),
                "--env".into(),
                format!("{}={}", e.0, e.1).into(),
            ],
        );
        if judge(s, &format!("--env {name}"), &out, &["--env", "env"]) {
            cli_envs.push(e);
        } else {
            rejected.push(format!("--env:{name}"));
        }
        // Host names: never run, never an ssh option; status may fail to reach them.
        let mut f = plain.clone();
        f.hosts = vec![v.clone()];
        evil.write(&f);
        let out = evil.run(s, &check_args);
        judge(s, &format!("hosts {name}"), &out, &["shipjar.toml"]);
        if !["subst", "backticks", "semicolon"].contains(name) {
            continue;
        }
        let out = evil.run(s, &os(&["--json", "status", "evil"]));
        if !matches!(out.status.code(), Some(0..=2)) {
            s.fail(format!("status with host {name}: {}", text(&out)));
        }
    }
    eprintln!("faults: hostile values rejected (cleanly): {rejected:?}");
    for (field, extra) in [
        (
            "-oProxyCommand",
            format!("-oProxyCommand=touch {PWN}-proxy"),
        ),
        ("-option host", format!("-oLocalCommand=touch {PWN}-local")),
    ] {
        let mut f = plain.clone();
        f.hosts = vec![extra];
        evil.write(&f);
        let out = evil.run(s, &os(&["--json", "status", "evil"]));
        if !matches!(out.status.code(), Some(1..=2)) {
            s.fail(format!("status with host {field}: {}", text(&out)));
        }
    }
    // Not UTF-8: in the project file, in a template, in flags.
    let mut bytes = plain.toml().into_bytes();
    let at = bytes
        .windows(7)
        .position(|w| w == b"\"plain\"")
        .expect("plain var")
        + 1;
    bytes.splice(at..at, [0xff, 0xfe]);
    std::fs::write(evil.dir.path().join("shipjar.toml"), &bytes).expect("write");
    checked(s, &evil, "non-UTF-8 shipjar.toml", &["shipjar.toml"]);
    evil.write(&plain);
    let mut tpl = template_text(&plain.vars).into_bytes();
    tpl.extend_from_slice(b"bytes \xff\xfe\n");
    std::fs::write(evil.dir.path().join("deploy/hostile.txt"), &tpl).expect("write");
    checked(s, &evil, "non-UTF-8 template", &["hostile.txt"]);
    evil.write(&plain);
    for flag in ["--set", "--env"] {
        let out = evil.run(
            s,
            &[
                OsString::from("check"),
                "evil".into(),
                flag.into(),
                OsString::from_vec(b"K=\xff\xfe".to_vec()),
            ],
        );
        judge(s, &format!("non-UTF-8 {flag}"), &out, &[flag]);
    }
    let out = evil.run(
        s,
        &[
            OsString::from("deploy"),
            "evil".into(),
            "--artifact".into(),
            "hello.jar".into(),
            "--version".into(),
            OsString::from_vec(b"1.\xff".to_vec()),
        ],
    );
    judge(s, "non-UTF-8 --version", &out, &["--version"]);

    // An environment variable or an argument cannot hold a NUL: accepting
    // one means a deploy that can only fail at start.
    let nul_env: Vec<(String, String)> = envs
        .iter()
        .filter(|(_, v)| v.contains('\0'))
        .cloned()
        .collect();
    let nul_opts: Vec<String> = opts.iter().filter(|v| v.contains('\0')).cloned().collect();
    envs.retain(|(_, v)| !v.contains('\0'));
    opts.retain(|v| !v.contains('\0'));
    if !nul_env.is_empty() || !nul_opts.is_empty() {
        let mut f = plain.clone();
        f.env.extend(nul_env.iter().cloned());
        f.java_opts.extend(nul_opts.iter().cloned());
        evil.write(&f);
        let out = evil.run(
            s,
            &os(&[
                "--json",
                "deploy",
                "evil",
                "--artifact",
                "hello.jar",
                "--version",
                "9.9.8",
            ]),
        );
        s.fail(format!(
            "a NUL byte in {} passes `check` (exit 0) instead of a config error; the deploy then exits {:?}: {}",
            if nul_env.is_empty() { "java_opts" } else if nul_opts.is_empty() { "env" } else { "env and java_opts" },
            out.status.code(),
            text(&out).lines().filter(|l| l.contains("nul byte")).collect::<Vec<_>>().join(" | ")
        ));
    }
    // Everything accepted, at once, deployed to app1: it must arrive intact.
    let mut f = plain.clone();
    f.vars.extend(vars.iter().cloned());
    f.env.extend(envs.iter().cloned());
    f.java_opts.extend(opts.iter().cloned());
    evil.write(&f);
    let mut args = os(&[
        "--json",
        "deploy",
        "evil",
        "--artifact",
        "hello.jar",
        "--version",
        "9.9.9",
    ]);
    for (k, v) in &sets {
        args.extend(["--set".into(), format!("{k}={v}").into()]);
    }
    for (k, v) in &cli_envs {
        args.extend(["--env".into(), format!("{k}={v}").into()]);
    }
    // --set values are template variables too: the template shows them.
    let mut shown = f.vars.clone();
    shown.extend(sets.iter().cloned());
    std::fs::write(
        evil.dir.path().join("deploy/hostile.txt"),
        template_text(&shown),
    )
    .expect("template");
    s.counts.faults += 1;
    let out = evil.run(s, &args);
    if out.status.code() != Some(0) {
        s.fail(format!(
            "the deploy carrying every accepted hostile value failed: {}",
            text(&out)
        ));
    } else {
        let file = s.fleet.exec(
            "app1",
            &["cat", "/var/lib/hello/current/config/hostile.txt"],
        );
        if file.stdout != expected_text(&shown) {
            s.fail(format!(
                "hostile.txt on app1 differs from the values given:\n got {:?}\nwant {:?}",
                String::from_utf8_lossy(&file.stdout),
                String::from_utf8_lossy(&expected_text(&shown))
            ));
        }
        let pid = s
            .fleet
            .exec("app1", &["head", "-n", "1", "/run/hello/hello.pid"]);
        let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
        let environ = s
            .fleet
            .exec("app1", &["cat", &format!("/proc/{pid}/environ")])
            .stdout;
        let environ: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let templated = envs.iter().map(|e| (e, true));
        for ((k, v), is_template) in templated.chain(cli_envs.iter().map(|e| (e, false))) {
            // `env` values in shipjar.toml are templates by design; `--env` values are literal.
            let want = if is_template && v.contains("{{") {
                "49!".to_string()
            } else {
                v.clone()
            };
            let entry = format!("{k}={want}");
            if !environ.contains(&entry.as_bytes()) {
                let prefix = format!("{k}=");
                let got: Vec<String> = environ
                    .iter()
                    .filter(|e| e.starts_with(prefix.as_bytes()))
                    .map(|e| String::from_utf8_lossy(e).chars().take(80).collect())
                    .collect();
                s.fail(format!(
                    "the service's environment lacks {k} exactly as given ({} bytes, {:?}…); it has {got:?}",
                    want.len(),
                    want.chars().take(40).collect::<String>()
                ));
            }
        }
        let cmdline = s
            .fleet
            .exec("app1", &["cat", &format!("/proc/{pid}/cmdline")])
            .stdout;
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        for o in &opts {
            let want = if o.contains("{{") {
                o.split_once('=')
                    .map(|(a, _)| format!("{a}=49!"))
                    .unwrap_or_default()
            } else {
                o.clone()
            };
            if !argv.contains(&want.as_bytes()) {
                s.fail(format!(
                    "the JVM's argv lacks {:?}",
                    want.chars().take(60).collect::<String>()
                ));
            }
        }
    }
    // Each accepted `dest`: the file arrives under exactly that name.
    for (name, v) in vals.iter() {
        if rejected.contains(&format!("dest:{name}")) {
            continue;
        }
        let mut f = plain.clone();
        f.dest = v.clone();
        evil.write(&f);
        s.counts.faults += 1;
        let out = evil.run(
            s,
            &os(&[
                "--json",
                "deploy",
                "evil",
                "--artifact",
                "hello.jar",
                "--version",
                "9.9.7",
            ]),
        );
        if out.status.code() != Some(0) {
            s.fail(format!(
                "dest {name}: accepted by `check`, but the deploy exits {:?}: {}",
                out.status.code(),
                text(&out)
                    .lines()
                    .filter(|l| l.contains("failed") || l.contains("error"))
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" | ")
                    .chars()
                    .take(600)
                    .collect::<String>()
            ));
            continue;
        }
        let path = format!("/var/lib/hello/current/config/{v}");
        let file = s.fleet.exec("app1", &["cat", &path]);
        if file.stdout != expected_text(&f.vars) {
            s.fail(format!(
                "dest {name}: the file at config/<dest> is not the rendered template"
            ));
        }
    }
    // Hostile versions: rejected, or reported by the service exactly.
    for (name, v) in vals
        .iter()
        .filter(|(n, _)| ["quotes", "subst", "newline", "unicode", "10kB"].contains(n))
    {
        evil.write(&plain);
        s.counts.faults += 1;
        let out = evil.run(
            s,
            &[
                OsString::from("--json"),
                "deploy".into(),
                "evil".into(),
                "--artifact".into(),
                "hello.jar".into(),
                "--version".into(),
                v.into(),
            ],
        );
        if judge(
            s,
            &format!("--version {name}"),
            &out,
            &["--version", "version"],
        ) {
            let served = check::real(s, "app1").served;
            if served.as_deref() != Some(v.as_str()) {
                s.fail(format!("--version {name}: the service reports {served:?}"));
            }
            let rel = evil.run(s, &os(&["--json", "releases", "evil"]));
            if rel.status.code() != Some(0) {
                s.fail(format!("releases after --version {name}: {}", text(&rel)));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    // Nothing was executed, here or on any host.
    let here: Vec<String> = crate::fleet::names_in("/tmp")
        .into_iter()
        .filter(|n| n.starts_with("sjpwn"))
        .collect();
    if !here.is_empty() {
        s.fail(format!(
            "hostile strings were executed on this machine: {here:?}"
        ));
        for n in here {
            let _ = std::fs::remove_file(Path::new("/tmp").join(n));
        }
    }
    for host in s.fleet.hosts() {
        let found = s
            .fleet
            .sh_stdout(
                &host,
                "ls /tmp /var/lib/hello /var/lib/hello/current/ 2>/dev/null | grep sjpwn || true",
            )
            .trim()
            .to_string();
        if !found.is_empty() {
            s.fail(format!("hostile strings were executed on {host}: {found}"));
        }
    }
}
