//! Leiningen's `project.clj` and tools.build's `build.clj` (with `deps.edn`):
//! name, version and the exact path of the uberjar.

use std::collections::BTreeMap;
use std::path::Path;

use super::edn::{Form, read_all};
use super::{Detected, Tool};

/// Reads `dir/project.clj`.
///
/// Leiningen 2.x (Debian ships 2.10) writes the uberjar to
/// `<:target-path>/<:uberjar-name>`: `:target-path` defaults to `target` and
/// a `%s` in it becomes the profile, `uberjar`; `:uberjar-name` defaults to
/// `<name>-<version>-standalone.jar` and a `%s` in it becomes the version.
/// The `:uberjar` profile's values win, as `lein uberjar` merges it.
pub fn detect_lein(dir: &Path) -> Result<Detected, String> {
    let text = std::fs::read_to_string(dir.join("project.clj"))
        .map_err(|e| format!("cannot read project.clj: {e}"))?;
    let forms = read_all(&text).map_err(|e| format!("project.clj: {e}"))?;
    let items = forms
        .iter()
        .find_map(|f| match f {
            Form::List(items) if items.first() == Some(&Form::Symbol("defproject".into())) => {
                Some(items)
            }
            _ => None,
        })
        .ok_or_else(|| "project.clj has no (defproject …)".to_string())?;
    let Some(Form::Symbol(full_name)) = items.get(1) else {
        return Err("project.clj: (defproject NAME VERSION …) has no name".into());
    };
    let name = full_name
        .rsplit('/')
        .next()
        .unwrap_or(full_name)
        .to_string();
    let Some(Form::Str(version)) = items.get(2) else {
        return Err(format!(
            "project.clj: the version of {full_name} is not a string; set [build] artifact by hand"
        ));
    };
    let options = Form::Map(items[3..].to_vec());
    let uberjar_profile = options.get("profiles").and_then(|p| p.get("uberjar"));
    let setting = |key: &str| -> Result<Option<String>, String> {
        match uberjar_profile
            .and_then(|p| p.get(key))
            .or_else(|| options.get(key))
        {
            None => Ok(None),
            Some(Form::Str(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "project.clj: :{key} is {other:?}, not a string; set [build] artifact by hand"
            )),
        }
    };
    let target = setting("target-path")?
        .unwrap_or_else(|| "target".into())
        .replace("%s", "uberjar");
    let jar = match setting("uberjar-name")? {
        Some(n) => n.replace("%s", version),
        None => format!("{name}-{version}-standalone.jar"),
    };
    let artifact = format!("{}/{jar}", target.trim_end_matches('/'));
    let mut notes = vec![format!("artifact: lein uberjar writes {artifact}")];
    let offline = options.get("offline?") == Some(&Form::Symbol("true".into()));
    let command = if dir.join("build.sh").is_file() && !mentions(dir, "build.sh", "mvn") {
        let (command, note) = super::script::command(dir, "build.sh");
        notes.push(note);
        command
    } else if offline || options.get("local-repo").is_some() {
        notes.push("build: offline (:offline? / :local-repo in project.clj)".into());
        "lein -o uberjar".to_string()
    } else {
        "lein uberjar".to_string()
    };
    Ok(Detected {
        tool: Tool::Leiningen,
        name: Some(name),
        version: Some(version.clone()),
        command,
        artifact,
        notes,
    })
}

/// True when `dir/file` contains `word`.
pub fn mentions(dir: &Path, file: &str, word: &str) -> bool {
    std::fs::read_to_string(dir.join(file)).is_ok_and(|t| t.contains(word))
}

/// Reads `dir/build.clj` (tools.build) next to `deps.edn`: the `:uber-file`
/// given to `b/uber`, following `def`s, `format`, `str` and `name`.
pub fn detect_tools_build(dir: &Path) -> Result<Detected, String> {
    let mut notes = Vec::new();
    let alias = std::fs::read_to_string(dir.join("deps.edn"))
        .ok()
        .and_then(|t| read_all(&t).ok())
        .and_then(|forms| forms.into_iter().next())
        .and_then(|deps| deps.get("aliases")?.get("build").cloned());
    let text = match std::fs::read_to_string(dir.join("build.clj")) {
        Ok(t) => t,
        Err(_) => {
            notes.push(
                "deps.edn without build.clj: set [build] command and artifact for your build"
                    .into(),
            );
            return Ok(Detected {
                tool: Tool::ToolsBuild,
                name: None,
                version: None,
                command: "clojure -T:build uber".into(),
                artifact: "target/*-standalone.jar".into(),
                notes,
            });
        }
    };
    let forms = read_all(&text).map_err(|e| format!("build.clj: {e}"))?;
    let mut defs: BTreeMap<String, Form> = BTreeMap::new();
    let mut functions = Vec::new();
    let mut uber_file = None;
    for form in &forms {
        let Form::List(items) = form else { continue };
        match items.first() {
            Some(Form::Symbol(s)) if s == "def" => {
                if let (Some(Form::Symbol(name)), Some(value)) = (items.get(1), items.last()) {
                    defs.insert(name.clone(), value.clone());
                }
            }
            Some(Form::Symbol(s)) if s == "defn" => {
                if let Some(Form::Symbol(name)) = items.get(1) {
                    functions.push(name.clone());
                }
            }
            _ => {}
        }
        if uber_file.is_none() {
            uber_file = find_uber_file(form);
        }
    }
    let Some(uber_file) = uber_file else {
        return Err(
            "build.clj calls no b/uber with :uber-file; set [build] artifact by hand".into(),
        );
    };
    let artifact = eval(&uber_file, &defs, 0).ok_or_else(|| {
        "build.clj: init cannot work out :uber-file (it is computed at build time); set [build] artifact by hand".to_string()
    })?;
    notes.push(format!("artifact: build.clj's :uber-file {artifact}"));
    let task = ["uber", "uberjar", "ci"]
        .into_iter()
        .find(|f| functions.iter().any(|g| g == f))
        .unwrap_or("uber");
    if alias.is_none() {
        notes.push("deps.edn has no :build alias; `clojure -T:build` needs one".into());
    }
    let name = defs.get("lib").and_then(|l| match l {
        Form::Symbol(s) => s.rsplit('/').next().map(str::to_string),
        _ => None,
    });
    let version = defs.get("version").and_then(|v| eval(v, &defs, 0));
    Ok(Detected {
        tool: Tool::ToolsBuild,
        name,
        version,
        command: format!("clojure -T:build {task}"),
        artifact,
        notes,
    })
}

/// The `:uber-file` value of the first map holding one, anywhere in `form`.
fn find_uber_file(form: &Form) -> Option<Form> {
    match form {
        Form::Map(_) => form.get("uber-file").cloned().or_else(|| {
            let Form::Map(items) = form else { return None };
            items.iter().find_map(find_uber_file)
        }),
        Form::List(items) | Form::Vector(items) => items.iter().find_map(find_uber_file),
        _ => None,
    }
}

/// The string value of the few expressions build files use for names.
fn eval(form: &Form, defs: &BTreeMap<String, Form>, depth: u32) -> Option<String> {
    if depth > 16 {
        return None;
    }
    match form {
        Form::Str(s) => Some(s.clone()),
        Form::Symbol(s) => match defs.get(s) {
            Some(value) => eval(value, defs, depth + 1),
            None => Some(s.clone()).filter(|s| s.contains('/')),
        },
        Form::List(items) => {
            let Some(Form::Symbol(head)) = items.first() else {
                return None;
            };
            let args: Option<Vec<String>> = items[1..]
                .iter()
                .map(|a| eval(a, defs, depth + 1))
                .collect();
            let args = args?;
            match head.as_str() {
                "str" => Some(args.concat()),
                "name" => args
                    .first()
                    .map(|a| a.rsplit('/').next().unwrap_or(a).to_string()),
                "format" => {
                    let (fmt, rest) = args.split_first()?;
                    let mut out = String::new();
                    let mut rest = rest.iter();
                    let mut parts = fmt.split("%s");
                    out.push_str(parts.next()?);
                    for part in parts {
                        out.push_str(rest.next()?);
                        out.push_str(part);
                    }
                    Some(out)
                }
                _ => None,
            }
        }
        _ => None,
    }
}
