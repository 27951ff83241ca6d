//! Templates and secrets: strict minijinja rendering (undefined variables are
//! errors, nothing is HTML-escaped, trailing newlines are kept), secret values
//! loaded from the environment, files or commands and registered for masking.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::error::{Error, Result};
use crate::operator::config::{Config, ResolvedStage, SecretFrom, StageSecret};
use crate::operator::{output, secret_command};
use crate::protocol::mask::{Masker, SecretValue};

/// A template context: variable name to value.
pub type Vars = BTreeMap<String, serde_json::Value>;

/// Renders `source` (named `name` in errors) with `vars`.
pub fn render(name: &str, source: &str, vars: &Vars) -> Result<String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .map_err(|e| Error::failed(format!("template engine: {e}")))?;
    env.set_syntax(syntax);
    env.render_named_str(
        name,
        source,
        minijinja::Value::from(minijinja::value::Serde(vars)),
    )
    .map_err(|e| {
        let missing = if e.kind() == minijinja::ErrorKind::UndefinedError {
            undefined_names(&env, source, vars)
        } else {
            Vec::new()
        };
        template_error(name, &e, &missing)
    })
}

/// Variables (or `a.b` lookups) the template uses that `vars` lacks.
fn undefined_names(env: &Environment, source: &str, vars: &Vars) -> Vec<String> {
    let Ok(template) = env.template_from_str(source) else {
        return Vec::new();
    };
    let mut names: Vec<String> = template
        .undeclared_variables(true)
        .into_iter()
        .filter(|path| {
            let mut parts = path.split('.');
            let Some(mut value) = parts.next().and_then(|top| vars.get(top)) else {
                return true;
            };
            for part in parts {
                match value.get(part) {
                    Some(inner) => value = inner,
                    None => return true,
                }
            }
            false
        })
        .collect();
    names.sort();
    names
}

fn template_error(name: &str, e: &minijinja::Error, missing: &[String]) -> Error {
    let line = e.line().map(|l| format!(":{l}")).unwrap_or_default();
    let what = match e.kind() {
        minijinja::ErrorKind::UndefinedError if !missing.is_empty() => {
            let list: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
            format!("undefined variable {}", list.join(", "))
        }
        minijinja::ErrorKind::UndefinedError => {
            let detail = e.detail().map(|d| format!(" ({d})")).unwrap_or_default();
            format!("undefined variable{detail}")
        }
        _ => e
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| e.kind().to_string()),
    };
    let mut err = Error::config(format!("template {name}{line}: {what}"));
    if let (Some(source), Some(line_no)) = (e.template_source(), e.line())
        && let Some(text) = source.lines().nth(line_no.saturating_sub(1))
    {
        err.message.push_str(&format!("\n{line_no:>5} | {text}"));
    }
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        err = err.hint(
            "variables are service, stage, host, host_entry, version, git_commit, build_time, artifact_sha256, release, release_dir, config_dir, shared_dir, log_dir, the stage's vars, --set KEY=VALUE, and secrets.NAME",
        );
    }
    err
}

/// Names of the operator's environment variables that hold secrets (of any stage).
static SECRET_VARIABLES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Records which environment variables hold secrets in any stage, so that no
/// process the operator starts (build, version command, agent, ssh) inherits them.
pub fn register_secret_variables(config: &Config) {
    let mut names = SECRET_VARIABLES.lock().unwrap_or_else(|e| e.into_inner());
    for stage in config.stages.values() {
        for source in stage.get_ref().secrets.values() {
            if let Some(var) = &source.get_ref().env {
                names.insert(var.clone());
            }
        }
    }
}

/// Removes every secret-holding variable from `command`'s environment.
pub fn without_secret_variables(command: &mut Command) -> &mut Command {
    let names = SECRET_VARIABLES.lock().unwrap_or_else(|e| e.into_inner());
    for name in names.iter() {
        command.env_remove(name);
    }
    command
}

pub use crate::protocol::mask::MIN_SECRET_CHARS;

/// Reads every secret of a stage and registers its value for masking.
/// Errors name the secret and its source, never a value.
pub fn load_secrets(
    sources: &BTreeMap<String, StageSecret>,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for (name, secret) in sources {
        let value = read_secret(name, &secret.from, getenv)?;
        let chars = value.chars().count();
        if chars < MIN_SECRET_CHARS && !secret.allow_short {
            // Masked anyway (as a whole word), in case it shows up in what is printed next.
            output::register_secret(&value, false);
            return Err(Error::config(format!(
                "secret `{name}` is shorter than {MIN_SECRET_CHARS} characters: a value that short cannot be masked in output without blanking ordinary text (which would reveal it)",
            ))
            .hint(format!(
                "use at least {MIN_SECRET_CHARS} characters, or set `allow_short = true` on the secret to mask it only where it stands as a whole word"
            )));
        }
        output::register_secret(&value, secret.allow_short);
        values.insert(name.clone(), value);
    }
    Ok(values)
}

fn read_secret(
    name: &str,
    from: &SecretFrom,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<String> {
    let value = match from {
        SecretFrom::Env(var) => getenv(var).ok_or_else(|| {
            Error::config(format!(
                "secret `{name}`: environment variable {var} is not set"
            ))
            .hint(format!("export {var}=... before deploying"))
        })?,
        SecretFrom::File(path) => std::fs::read_to_string(path)
            .map(|s| s.strip_suffix('\n').unwrap_or(&s).to_string())
            .map_err(|e| {
                Error::config(format!(
                    "secret `{name}`: cannot read {}: {e}",
                    path.display()
                ))
            })?,
        SecretFrom::Command {
            argv,
            dir,
            timeout_ms,
        } => secret_command::read(name, argv, dir, *timeout_ms)?,
    };
    if value.is_empty() {
        return Err(Error::config(format!("secret `{name}` is empty")));
    }
    Ok(value)
}

/// Every non-secret setting as (where, value): each string in the project
/// file, and the stage's hosts and vars (the built-in `local` stage's too)
/// and the `--set`/`--env` values. Pure.
pub fn settings(
    source: &str,
    stage: &ResolvedStage,
    cli: &[(&str, &BTreeMap<String, String>)],
) -> Vec<(String, String)> {
    fn walk(path: String, value: &toml::Value, out: &mut Vec<(String, String)>) {
        match value {
            toml::Value::String(s) => out.push((path, s.clone())),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(format!("{path}[{i}]"), item, out);
                }
            }
            toml::Value::Table(table) => {
                for (key, item) in table {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(path, item, out);
                }
            }
            other => out.push((path, other.to_string())),
        }
    }
    let mut out = Vec::new();
    if let Ok(table) = toml::from_str::<toml::Table>(source) {
        walk(String::new(), &toml::Value::Table(table), &mut out);
    }
    for (host, _) in &stage.hosts {
        out.push((format!("stage `{}`'s host", stage.name), host.clone()));
    }
    for (name, value) in &stage.vars {
        out.push((
            format!("stage `{}`'s var `{name}`", stage.name),
            value.clone(),
        ));
    }
    for (flag, pairs) in cli {
        for (name, value) in *pairs {
            out.push((format!("{flag} {name}"), value.clone()));
        }
    }
    out
}

/// Checks that no secret value shows in a non-secret setting, which is
/// written and printed in the clear (non-secret files, argv, the project's
/// repository): an error for a value masked anywhere; a warning, returned,
/// for a short one the user allowed (masked as a whole word, which the
/// setting will show as `********`). Never names a value. Pure.
pub fn check_secrets_against_settings(
    settings: &[(String, String)],
    sources: &BTreeMap<String, StageSecret>,
    values: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for (name, value) in values {
        let masker = |allow_short| {
            Masker::new(&[SecretValue {
                value: value.clone(),
                allow_short,
            }])
        };
        let found = |masker: &Masker| {
            settings
                .iter()
                .find(|(_, v)| masker.mask(v) != v.as_str())
                .map(|(place, _)| place.clone())
        };
        // The value, or one of its lines, long enough to be masked anywhere.
        if value.chars().count() >= MIN_SECRET_CHARS
            && let Some(place) = found(&masker(false))
        {
            return Err(Error::config(format!(
                "secret `{name}` occurs in {place}, a setting that is not secret: that setting is written and shown in the clear (config files, command lines, the project's repository), so the secret would be too"
            ))
            .hint("use a secret value that occurs in no other setting (shipjar masks it wherever it prints it, that setting included)"));
        }
        let allow_short = sources.get(name).is_some_and(|s| s.allow_short);
        if let Some(place) = found(&masker(allow_short)) {
            warnings.push(format!(
                "secret `{name}` (or a short line of it) occurs as a word in {place}: it is masked there too wherever shipjar prints it"
            ));
        }
    }
    Ok(warnings)
}

/// Registers for masking every secret that can be read now, ignoring the rest:
/// for commands that only show things and do not need the values.
pub fn mask_available_secrets(sources: &BTreeMap<String, StageSecret>) {
    for (name, secret) in sources {
        // A command may prompt, be slow or cost money: only commands that need values run it
        // (each host masks every secret of its releases anyway).
        if matches!(secret.from, SecretFrom::Command { .. }) {
            continue;
        }
        if let Ok(value) = read_secret(name, &secret.from, &|var| std::env::var(var).ok()) {
            output::register_secret(&value, secret.allow_short);
        }
    }
}

/// Stands in for a secret where secrets are not allowed, so a use can be detected exactly.
pub fn secret_placeholder(name: &str) -> String {
    format!("\u{1}shipjar-secret:{name}\u{1}")
}

/// Name of the first secret placeholder in `text`, if any.
pub fn find_placeholder(text: &str) -> Option<String> {
    let start = text.find("\u{1}shipjar-secret:")? + "\u{1}shipjar-secret:".len();
    let rest = &text[start..];
    Some(rest[..rest.find('\u{1}').unwrap_or(rest.len())].to_string())
}

/// Escapes a `.properties` key or value.
pub fn properties_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 => out.push_str("\\ "),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn renders_without_escaping_and_keeps_trailing_newline() {
        let out = render("a.xml", "<x a=\"{{ v }}\"/>\n", &vars(&[("v", "<&>")])).unwrap();
        assert_eq!(out, "<x a=\"<&>\"/>\n");
    }

    #[test]
    fn undefined_variable_names_template_and_line() {
        let err = render("deploy/db.properties", "a=1\nb={{ nope }}\n", &Vars::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.message
                .starts_with("template deploy/db.properties:2: undefined variable `nope`"),
            "{}",
            err.message
        );
        let vars = vars(&[("db", "x")]);
        let err = render("t", "{{ db }} {{ secrets.pw }} {{ dbb }}", &vars).unwrap_err();
        assert!(
            err.message
                .starts_with("template t:1: undefined variable `dbb`, `secrets.pw`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn missing_secret_names_variable_not_value() {
        let sources = BTreeMap::from([(
            "pw".to_string(),
            StageSecret {
                from: SecretFrom::Env("PW_VAR".into()),
                allow_short: false,
            },
        )]);
        let err = load_secrets(&sources, &|_| None).unwrap_err();
        assert!(
            err.message
                .contains("secret `pw`: environment variable PW_VAR is not set")
        );
    }

    #[test]
    fn a_short_value_from_a_command_is_refused_like_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let sources = BTreeMap::from([(
            "pin".to_string(),
            StageSecret {
                from: SecretFrom::Command {
                    argv: vec!["printf".into(), "k7\\n".into()],
                    dir: dir.path().to_path_buf(),
                    timeout_ms: 5_000,
                },
                allow_short: false,
            },
        )]);
        let err = load_secrets(&sources, &|_| None).unwrap_err();
        assert!(
            err.message
                .starts_with("secret `pin` is shorter than 8 characters"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_short_secret_is_refused_unless_allowed() {
        let secret = |allow_short| {
            BTreeMap::from([(
                "pin".to_string(),
                StageSecret {
                    from: SecretFrom::Env("PIN".into()),
                    allow_short,
                },
            )])
        };
        let err = load_secrets(&secret(false), &|_| Some("1".into())).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.message
                .starts_with("secret `pin` is shorter than 8 characters"),
            "{}",
            err.message
        );
        assert!(!err.to_string().contains("=1"), "{err}");
        let values = load_secrets(&secret(true), &|_| Some("1".into())).unwrap();
        assert_eq!(values["pin"], "1");
        assert_eq!(
            output::redact("pin 1 at 2026-11-30T01:02:03Z"),
            "pin ******** at 2026-11-30T01:02:03Z"
        );
    }

    /// A project with one stage `prod`, its secret `pw` from `PW`.
    fn project_and_stage(allow_short: bool) -> (crate::operator::config::Project, ResolvedStage) {
        let text = format!(
            "[service]\nname = \"inventory\"\njar = \"app.jar\"\n\
             [stages.prod]\nhosts = [\"app1.example.com\"]\n\
             vars = {{ db_user = \"inv-user-1\" }}\n\
             secrets = {{ pw = {{ env = \"PW\", allow_short = {allow_short} }} }}\n"
        );
        let project = crate::operator::config::load_str(&text).expect("valid project");
        let stage = project.stage("prod").expect("stage prod");
        (project, stage)
    }

    fn check_value(value: &str, allow_short: bool) -> Result<Vec<String>> {
        let (project, stage) = project_and_stage(allow_short);
        let set = BTreeMap::from([("extra".to_string(), "x".to_string())]);
        let settings = settings(&project.source, &stage, &[("--set", &set)]);
        let values = BTreeMap::from([("pw".to_string(), value.to_string())]);
        check_secrets_against_settings(&settings, &stage.secrets, &values)
    }

    #[test]
    fn a_secret_in_a_setting_that_is_not_secret_is_refused_without_naming_it() {
        for (value, place) in [
            ("inventory-db", "no such place"),
            ("app1.example.com", "stages.prod.hosts[0]"),
            ("-----BEGIN-----\ninv-user-1\n-----END-----", "db_user"),
        ] {
            let result = check_value(value, false);
            if place == "no such place" {
                assert_eq!(result.expect("no collision"), Vec::<String>::new());
                continue;
            }
            let err = result.expect_err(value);
            assert_eq!(err.exit_code(), 2);
            assert!(
                err.message.starts_with("secret `pw` occurs in "),
                "{}",
                err.message
            );
            assert!(err.message.contains(place), "{}", err.message);
            assert!(!err.to_string().contains(value), "{err}");
        }
        // The service name.
        let err = check_value("inventory", false).expect_err("the service name");
        assert!(err.message.contains("service.name"), "{}", err.message);
    }

    #[test]
    fn a_short_allowed_secret_in_a_setting_is_a_warning() {
        let warnings = check_value("app1", true).expect("a warning, not an error");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("secret `pw` (or a short line of it) occurs as a word in "),
            "{warnings:?}"
        );
        assert!(check_value("pp1", true).expect("no collision").is_empty());
    }

    #[test]
    fn placeholders_are_found() {
        let text = format!("x={}", secret_placeholder("db_password"));
        assert_eq!(find_placeholder(&text).as_deref(), Some("db_password"));
        assert_eq!(find_placeholder("x=1"), None);
    }

    #[test]
    fn properties_are_escaped() {
        assert_eq!(
            properties_escape(" a=b:c\nd\\é"),
            "\\ a\\=b\\:c\\nd\\\\\\u00e9"
        );
    }
}
