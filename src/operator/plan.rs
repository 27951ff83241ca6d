//! Planning: config + build + stage → one release manifest and rendered files
//! per host. Pure: the only input from outside is the template loader, so
//! everything here is unit-tested without touching disk or hosts.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::operator::build::BuildManifest;
use crate::operator::config::roles::Role;
use crate::operator::config::{Builtin, Config, HostSpec, ResolvedStage};
use crate::operator::render::{
    self, Vars, find_placeholder, properties_escape, secret_placeholder,
};
use crate::protocol::FileContent;
use crate::protocol::layout::Layout;
use crate::protocol::manifest::{
    HealthSpec, LogSpec, MANIFEST_FORMAT, ManifestFile, ReleaseManifest, ReloadSpec, RestartSpec,
    RunSpec, StopHook, StopSpec, VersionCheckSpec,
};
use crate::protocol::mask::SecretValue;

/// Inputs of one deploy that do not come from the project file.
#[derive(Debug, Clone)]
pub struct DeployInputs {
    /// Release id, the same on every host.
    pub release_id: String,
    /// When the deploy started (RFC 3339).
    pub deployed_at: String,
    /// `user@machine`.
    pub deployer: String,
    /// `--set KEY=VALUE` template variables.
    pub sets: BTreeMap<String, String>,
    /// `--env KEY=VALUE` service environment overrides.
    pub env: BTreeMap<String, String>,
    /// Secret values by name.
    pub secrets: BTreeMap<String, String>,
}

/// What to put on one host.
#[derive(Debug, Clone)]
pub struct HostPlan {
    /// Host as written in the stage.
    pub host: String,
    /// How to reach it.
    pub spec: HostSpec,
    /// The release manifest.
    pub manifest: ReleaseManifest,
    /// Rendered config files.
    pub files: Vec<FileContent>,
    /// The secret values the host masks in what it answers and records.
    pub secrets: Vec<SecretValue>,
}

/// A whole deploy, planned before any host is touched.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    /// Release id.
    pub release_id: String,
    /// Per host, in the stage's order.
    pub hosts: Vec<HostPlan>,
}

/// Release id from a deploy time `YYYY-MM-DDTHH:MM:SS.mmmZ`: `YYYYMMDD-HHMMSS-mmm`.
pub fn release_id(deployed_at: &str) -> String {
    let digits: String = deployed_at.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 17 {
        format!("{}-{}-{}", &digits[..8], &digits[8..14], &digits[14..17])
    } else {
        digits
    }
}

/// Plans a deploy: renders every template for every host, so errors come before any change.
pub fn plan_deploy(
    config: &Config,
    stage: &ResolvedStage,
    build: &BuildManifest,
    inputs: &DeployInputs,
    read_template: &dyn Fn(&str) -> Result<String>,
) -> Result<DeployPlan> {
    let mut hosts = Vec::new();
    for (host, spec) in &stage.hosts {
        hosts.push(plan_host(
            config,
            stage,
            build,
            inputs,
            host,
            spec,
            read_template,
        )?);
    }
    Ok(DeployPlan {
        release_id: inputs.release_id.clone(),
        hosts,
    })
}

fn plan_host(
    config: &Config,
    stage: &ResolvedStage,
    build: &BuildManifest,
    inputs: &DeployInputs,
    host: &str,
    spec: &HostSpec,
    read_template: &dyn Fn(&str) -> Result<String>,
) -> Result<HostPlan> {
    let name = &config.service.name.0;
    let layout = Layout::new(&stage.root, name);
    let role = stage.role_of(host).map(|r| (r.name.as_str(), &r.role));
    let (public_vars, secret_vars) = template_vars(
        stage,
        build,
        inputs,
        host,
        spec,
        &layout,
        role.map(|(n, _)| n),
    );

    let stop = stop_spec(config, &public_vars)?;
    let manifest_base = |files: Vec<ManifestFile>, run: RunSpec| ReleaseManifest {
        format: MANIFEST_FORMAT,
        id: inputs.release_id.clone(),
        service: name.clone(),
        version: build.version.clone(),
        artifact_sha256: build.sha256.clone(),
        jar: config
            .service
            .jar
            .clone()
            .unwrap_or_else(|| format!("{name}.jar")),
        git_commit: build.git_commit.clone(),
        build_time: build.build_time.clone(),
        deployed_at: inputs.deployed_at.clone(),
        deployer: inputs.deployer.clone(),
        stage: stage.name.clone(),
        host: host.to_string(),
        run,
        // A role's `[health]` keys over the service's.
        health: match role {
            Some((_, r)) => HealthSpec::from(&r.health.over(&config.health)),
            None => HealthSpec::from(&config.health),
        },
        version_check: config.version_check.as_ref().map(VersionCheckSpec::from),
        stop,
        files,
        restart: RestartSpec::from(&config.restart),
        logs: LogSpec::from(&config.logs),
        reload: ReloadSpec::from(&config.reload),
        hooks: config.hooks.host_hooks(),
        // A stage's own `proxy` replaces the top-level one.
        proxy: config
            .proxy_of(&stage.name)
            .map(|p| crate::protocol::manifest::ProxySpec {
                metrics_listen: config.metrics.as_ref().map(|m| m.listen.get_ref().clone()),
                ..crate::protocol::manifest::ProxySpec::from(p)
            }),
    };

    let run = run_spec(config, inputs, spec, role, &public_vars)?;
    let (files, manifest_files) = config_files(
        config,
        build,
        inputs,
        &stage.name,
        spec,
        &public_vars,
        &secret_vars,
        read_template,
    )?;
    Ok(HostPlan {
        host: host.to_string(),
        spec: spec.clone(),
        manifest: manifest_base(manifest_files, run),
        files,
        secrets: secret_values(stage, inputs),
    })
}

/// The variables templates see on this host: the stage's and `--set`'s, the
/// service's facts, and `secrets` — placeholders in the public set (where
/// secrets may not go, any use is detectable exactly), values in the other.
fn template_vars(
    stage: &ResolvedStage,
    build: &BuildManifest,
    inputs: &DeployInputs,
    host: &str,
    spec: &HostSpec,
    layout: &Layout,
    role: Option<&str>,
) -> (Vars, Vars) {
    let name = layout.name();
    let release_dir = layout.release_dir(&inputs.release_id);
    let mut vars = Vars::new();
    for (k, v) in stage.vars.iter().chain(inputs.sets.iter()) {
        vars.insert(k.clone(), Value::String(v.clone()));
    }
    let mut set = |k: &str, v: &str| vars.insert(k.to_string(), Value::String(v.to_string()));
    set("service", name);
    set("stage", &stage.name);
    set("host", spec.name());
    set("host_entry", host);
    set("role", role.unwrap_or(""));
    set("git_commit", build.git_commit.as_deref().unwrap_or(""));
    set("build_time", &build.build_time);
    set("artifact_sha256", &build.sha256);
    set("version", &build.version);
    set("release", &inputs.release_id);
    set("release_dir", &path_text(&release_dir));
    set("config_dir", &path_text(&release_dir.join("config")));
    set("shared_dir", &path_text(&layout.shared_dir()));
    set("log_dir", &path_text(&layout.log_dir()));

    let mut public_vars = vars.clone();
    public_vars.insert(
        "secrets".into(),
        Value::Object(
            inputs
                .secrets
                .keys()
                .map(|k| (k.clone(), Value::String(secret_placeholder(k))))
                .collect(),
        ),
    );
    let mut secret_vars = vars;
    secret_vars.insert(
        "secrets".into(),
        Value::Object(
            inputs
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    );

    (public_vars, secret_vars)
}

/// Each `[[config]]` file rendered for this host, and its manifest entry
/// (a secret one without its hash).
#[allow(clippy::too_many_arguments)]
fn config_files(
    config: &Config,
    build: &BuildManifest,
    inputs: &DeployInputs,
    stage: &str,
    spec: &HostSpec,
    public_vars: &Vars,
    secret_vars: &Vars,
    read_template: &dyn Fn(&str) -> Result<String>,
) -> Result<(Vec<FileContent>, Vec<ManifestFile>)> {
    let name = &config.service.name.0;
    let mut files = Vec::new();
    let mut manifest_files = Vec::new();
    for entry in &config.config {
        let entry = entry.get_ref();
        let dest = entry.dest.get_ref().clone();
        let content = match (&entry.template, entry.builtin) {
            (Some(template), _) => {
                let path = render::render("[[config]] template path", template, public_vars)?;
                let source = read_template(&path)?;
                let vars = if entry.secret {
                    secret_vars
                } else {
                    public_vars
                };
                let text = render::render(&path, &source, vars)?;
                if let Some(secret) = find_placeholder(&text) {
                    return Err(Error::config(format!(
                        "template {path} uses secrets.{secret}, but its [[config]] entry (dest = \"{dest}\") is not marked `secret = true`"
                    ))
                    .hint("add `secret = true` so the file is written 0600 and never shown"));
                }
                text
            }
            (None, Some(Builtin::ServiceProperties)) => {
                service_properties(name, build, inputs, stage, spec.name())
            }
            (None, None) => unreachable!("validated: template or builtin"),
        };
        manifest_files.push(ManifestFile {
            dest: dest.clone(),
            secret: entry.secret,
            sha256: (!entry.secret).then(|| sha256_text(&content)),
        });
        files.push(FileContent {
            dest,
            secret: entry.secret,
            content,
        });
    }
    Ok((files, manifest_files))
}

/// The stage's secret values with their `allow_short`, for the host's masking.
fn secret_values(stage: &ResolvedStage, inputs: &DeployInputs) -> Vec<SecretValue> {
    inputs
        .secrets
        .iter()
        .map(|(name, value)| SecretValue {
            value: value.clone(),
            allow_short: stage.secrets.get(name).is_some_and(|s| s.allow_short),
        })
        .collect()
}

/// The `[stop]` settings; a hook command is rendered like `[service] command`.
fn stop_spec(config: &Config, vars: &Vars) -> Result<StopSpec> {
    let stop = &config.stop;
    let hook = match (&stop.hook_url, &stop.hook_command) {
        (Some(url), _) => Some(StopHook::Http {
            url: url.get_ref().clone(),
        }),
        (None, Some(argv)) => Some(StopHook::Command {
            argv: argv
                .get_ref()
                .iter()
                .map(|a| render_public(vars, "[stop] hook_command", a))
                .collect::<Result<_>>()?,
        }),
        (None, None) => None,
    };
    Ok(StopSpec {
        timeout_ms: stop.timeout.0,
        // A JVM prints a thread dump on SIGQUIT; most other programs die of it.
        thread_dump: stop.thread_dump.unwrap_or(config.service.jar.is_some()),
        hook,
        hook_timeout_ms: stop.hook_timeout.0,
    })
}

/// Renders a value that ends up in argv or the environment, where secrets
/// are refused: both are visible to every user of the host through /proc.
fn render_public(vars: &Vars, what: &str, text: &str) -> Result<String> {
    let out = render::render(what, text, vars)?;
    match find_placeholder(&out) {
        Some(secret) => Err(Error::config(format!(
            "{what} uses secrets.{secret}: secrets may only go into [[config]] files marked `secret = true`"
        ))),
        None => Ok(out),
    }
}

/// argv, env and user of the service. Secrets are refused here: argv and
/// environment are visible to every user of the host through /proc.
fn run_spec(
    config: &Config,
    inputs: &DeployInputs,
    spec: &HostSpec,
    role: Option<(&str, &Role)>,
    vars: &Vars,
) -> Result<RunSpec> {
    let service = &config.service;
    // A process's arguments and environment cannot hold a NUL byte: say so
    // now, naming the setting, rather than fail the start on the host.
    let render_arg = |what: &str, text: &str| {
        let value = render_public(vars, what, text)?;
        if value.contains('\0') {
            return Err(Error::config(format!(
                "{what}: contains a NUL byte, which a process's arguments and environment cannot hold"
            )));
        }
        Ok(value)
    };
    let argv = match (&service.command, &service.jar) {
        (Some(command), _) => command
            .get_ref()
            .iter()
            .map(|a| render_arg("[service] command", a))
            .collect::<Result<Vec<_>>>()?,
        (None, Some(jar)) => {
            let mut argv = vec![service.java.clone()];
            for opt in &service.java_opts {
                argv.push(render_arg("[service] java_opts", opt)?);
            }
            // The role's after the service's: a later `-Xmx` wins in the JVM.
            if let Some((name, r)) = role {
                for opt in &r.java_opts {
                    argv.push(render_arg(&format!("[roles.{name}] java_opts"), opt)?);
                }
            }
            if let Some(repl) = &service.repl {
                argv.push(repl.java_opt());
            }
            argv.push("-jar".into());
            argv.push(jar.clone());
            argv
        }
        (None, None) => unreachable!("validated: jar or command"),
    };
    let mut env = BTreeMap::new();
    for (k, v) in &service.env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(Error::config(format!(
                "[service] env: `{}` is not a valid variable name",
                k.escape_debug()
            )));
        }
        env.insert(k.clone(), render_arg(&format!("[service] env.{k}"), v)?);
    }
    // Validated where written: names without `=`, values without NUL.
    if let Some((name, r)) = role {
        for (k, v) in &r.env {
            env.insert(
                k.clone(),
                render_arg(&format!("[roles.{name}] env.{k}"), v)?,
            );
        }
    }
    env.extend(inputs.env.clone());
    // On `local` the service runs as whoever runs shipjar; elsewhere as its own user.
    let user = match spec {
        HostSpec::Local => service.user.clone(),
        HostSpec::Ssh { .. } => Some(service.unix_user()),
    };
    Ok(RunSpec {
        argv,
        env,
        user,
        cds: service.cds && service.jar.is_some(),
    })
}

/// The built-in `service-properties` file.
fn service_properties(
    name: &str,
    build: &BuildManifest,
    inputs: &DeployInputs,
    stage: &str,
    host: &str,
) -> String {
    let pairs = [
        ("name", name),
        ("version", build.version.as_str()),
        ("release", inputs.release_id.as_str()),
        ("git_commit", build.git_commit.as_deref().unwrap_or("")),
        ("build_time", build.build_time.as_str()),
        ("deployed_at", inputs.deployed_at.as_str()),
        ("deployed_by", inputs.deployer.as_str()),
        ("stage", stage),
        ("host", host),
        ("artifact_sha256", build.sha256.as_str()),
    ];
    let mut out = String::from("# written by shipjar for this release; do not edit\n");
    for (k, v) in pairs {
        out.push_str(&format!("{k}={}\n", properties_escape(v)));
    }
    out
}

fn sha256_text(text: &str) -> String {
    crate::protocol::digest::sha256_hex(text.as_bytes())
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::config::parse;

    const CONFIG: &str = r#"
[service]
name = "hello"
jar = "hello.jar"
java_opts = ["-Xmx64m", "-Dlog.dir={{ log_dir }}"]
env = { PORT = "8080" }

[health]
url = "http://127.0.0.1:8080/health"
start_timeout = "20s"

[version_check]
url = "http://127.0.0.1:8080/version"

[[config]]
template = "deploy/logging-{{ stage }}.properties"
dest = "logging.properties"

[[config]]
template = "deploy/database.properties"
dest = "database.properties"
secret = true

[[config]]
builtin = "service-properties"
dest = "service.properties"

[stages.local]
hosts = ["local"]
root = "/tmp/r"
vars = { db_url = "jdbc:x" }
secrets = { db_password = { env = "PW" } }
"#;

    fn fixtures() -> (Config, ResolvedStage, BuildManifest, DeployInputs) {
        let config = parse(CONFIG, Path::new("shipjar.toml")).unwrap();
        let stage = ResolvedStage {
            name: "local".into(),
            hosts: vec![("local".into(), HostSpec::Local)],
            root: "/tmp/r".into(),
            vars: BTreeMap::from([("db_url".into(), "jdbc:x".into())]),
            secrets: BTreeMap::new(),
            ssh_config: None,
            sudo: false,
            agent_path: "/usr/local/bin/shipjar".into(),
            agent_binary: None,
            rolling: Default::default(),
            on_failure: Default::default(),
            lock_lease_ms: 120_000,
            answer_timeout_ms: 30_000,
            roles: Vec::new(),
        };
        let build = BuildManifest {
            artifact: "/p/hello.jar".into(),
            sha256: "ab".repeat(32),
            size: 10,
            version: "1.2.3".into(),
            git_commit: Some("deadbeef".into()),
            build_time: "2026-11-26T10:00:00Z".into(),
        };
        let inputs = DeployInputs {
            release_id: "20261126-140000-000".into(),
            deployed_at: "2026-11-26T14:00:00.000Z".into(),
            deployer: "me@box".into(),
            sets: BTreeMap::new(),
            env: BTreeMap::from([("EXTRA".into(), "1".into())]),
            secrets: BTreeMap::from([("db_password".into(), "s3cr3t-pw".into())]),
        };
        (config, stage, build, inputs)
    }

    fn templates(path: &str) -> Result<String> {
        match path {
            "deploy/logging-local.properties" => Ok("# {{ service }} on {{ stage }}\n".into()),
            "deploy/database.properties" => {
                Ok("url={{ db_url }}\npassword={{ secrets.db_password }}\n".into())
            }
            other => Err(Error::config(format!("no template {other}"))),
        }
    }

    #[test]
    fn a_roles_env_java_opts_and_health_reach_its_hosts_manifest_only() {
        let (config, mut stage, build, inputs) = fixtures();
        stage
            .hosts
            .push(("app2".into(), HostSpec::parse("app2").expect("a host")));
        let role: Role = toml::from_str(
            "hosts = [\"app2\"]\nenv = { ROLE = \"{{ role }}\", EXTRA = \"role\" }\n\
             java_opts = [\"-Xmx2g\"]\nhealth = { tcp = 9090, settle = \"5s\" }\n",
        )
        .expect("a role");
        stage.roles = vec![crate::operator::config::roles::ResolvedRole {
            name: "worker".into(),
            hosts: vec!["app2".into()],
            role,
        }];
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        let (plain, worker) = (&plan.hosts[0].manifest, &plan.hosts[1].manifest);
        assert_eq!(
            worker.run.env.get("ROLE").map(String::as_str),
            Some("worker")
        );
        // `--env` still wins over the role's.
        assert_eq!(worker.run.env.get("EXTRA").map(String::as_str), Some("1"));
        assert_eq!(plain.run.env.get("ROLE"), None);
        let jar = worker.run.argv.iter().position(|a| a == "-jar").unwrap();
        assert_eq!(worker.run.argv[jar - 1], "-Xmx2g");
        assert!(!plain.run.argv.contains(&"-Xmx2g".to_string()));
        assert_eq!(
            worker.health.check,
            crate::protocol::manifest::HealthCheck::Tcp { port: 9090 }
        );
        assert_eq!(worker.health.settle_ms, 5_000);
        assert_eq!(
            worker.health.start_timeout_ms,
            plain.health.start_timeout_ms
        );
        assert_ne!(plain.health.check, worker.health.check);
    }

    #[test]
    fn plans_manifest_run_spec_and_files() {
        let (config, stage, build, inputs) = fixtures();
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        let host = &plan.hosts[0];
        let m = &host.manifest;
        assert_eq!(
            m.run.argv,
            [
                "java",
                "-Xmx64m",
                "-Dlog.dir=/tmp/r/var/log/hello",
                "-jar",
                "hello.jar"
            ]
        );
        assert_eq!(m.run.env.get("PORT").map(String::as_str), Some("8080"));
        assert_eq!(m.run.env.get("EXTRA").map(String::as_str), Some("1"));
        assert_eq!(m.run.user, None, "local runs as the invoking user");
        assert_eq!(m.health.start_timeout_ms, 20_000);
        assert_eq!(host.files[0].content, "# hello on local\n");
        assert_eq!(host.files[1].content, "url=jdbc:x\npassword=s3cr3t-pw\n");
        assert!(host.files[1].secret);
        assert_eq!(m.files[1].sha256, None, "no hash of a secret file");
        // The host is told the value to mask, not the manifest.
        assert_eq!(
            host.secrets,
            [SecretValue {
                value: "s3cr3t-pw".into(),
                allow_short: false
            }]
        );
        assert!(!serde_json::to_string(m).unwrap().contains("s3cr3t-pw"));
        assert!(host.files[2].content.contains("version=1.2.3\n"));
        assert!(host.files[2].content.contains("deployed_by=me@box\n"));
        assert!(
            host.files[2]
                .content
                .contains("deployed_at=2026-11-26T14\\:00\\:00.000Z\n")
        );
    }

    #[test]
    fn templates_see_the_build_and_the_host_name_alone() {
        let (config, mut stage, build, inputs) = fixtures();
        stage.hosts = vec![(
            "deploy@app2.example.com:2222".into(),
            HostSpec::parse("deploy@app2.example.com:2222").unwrap(),
        )];
        let template = |path: &str| {
            match path {
            "deploy/logging-local.properties" => Ok(
                "{{ host }} {{ host_entry }} {{ git_commit }} {{ build_time }} {{ artifact_sha256[:12] }}\n"
                    .to_string(),
            ),
            other => templates(other),
        }
        };
        let plan = plan_deploy(&config, &stage, &build, &inputs, &template).unwrap();
        let host = &plan.hosts[0];
        assert_eq!(
            host.files[0].content,
            "app2.example.com deploy@app2.example.com:2222 deadbeef 2026-11-26T10:00:00Z abababababab\n"
        );
        assert!(host.files[2].content.contains("\nhost=app2.example.com\n"));
    }

    #[test]
    fn secret_in_a_public_file_is_refused() {
        let (mut config, stage, build, inputs) = fixtures();
        config.config[1].get_mut().secret = false;
        let err = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap_err();
        assert!(
            err.message.contains("uses secrets.db_password"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("s3cr3t-pw"));
    }

    #[test]
    fn secret_in_java_opts_is_refused() {
        let (mut config, stage, build, inputs) = fixtures();
        config
            .service
            .java_opts
            .push("-Dpw={{ secrets.db_password }}".into());
        let err = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap_err();
        assert!(
            err.message.contains("java_opts uses secrets.db_password"),
            "{}",
            err.message
        );
    }

    #[test]
    fn remote_hosts_run_as_the_service_user() {
        let (config, mut stage, build, inputs) = fixtures();
        stage.hosts = vec![(
            "app1".into(),
            HostSpec::Ssh {
                user: None,
                host: "app1".into(),
                port: None,
            },
        )];
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        assert_eq!(plan.hosts[0].manifest.run.user.as_deref(), Some("hello"));
    }

    #[test]
    fn restart_policy_reaches_the_manifest() {
        let (mut config, stage, build, inputs) = fixtures();
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        assert_eq!(plan.hosts[0].manifest.restart, RestartSpec::default());

        config.restart.enabled = false;
        config.restart.initial_delay = crate::operator::config::Millis(250);
        config.restart.max_failures = toml::Spanned::new(0..0, 3);
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        let r = &plan.hosts[0].manifest.restart;
        assert!(!r.enabled);
        assert_eq!(r.initial_delay_ms, 250);
        assert_eq!(r.max_failures, 3);
        assert_eq!(r.max_delay_ms, 60_000);
    }

    #[test]
    fn stop_settings_reach_the_manifest() {
        let (mut config, stage, build, inputs) = fixtures();
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        let stop = &plan.hosts[0].manifest.stop;
        assert!(stop.thread_dump, "on by default for a jar");
        assert_eq!(stop.hook, None);
        assert_eq!(stop.hook_timeout_ms, 10_000);

        config.stop.hook_command = Some(toml::Spanned::new(
            0..0,
            vec!["{{ release_dir }}/drain".into(), "--{{ stage }}".into()],
        ));
        config.stop.thread_dump = Some(false);
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        let stop = &plan.hosts[0].manifest.stop;
        assert!(!stop.thread_dump);
        assert_eq!(
            stop.hook,
            Some(StopHook::Command {
                argv: vec![
                    "/tmp/r/var/lib/hello/releases/20261126-140000-000/drain".into(),
                    "--local".into()
                ]
            })
        );

        config.stop.hook_command = Some(toml::Spanned::new(
            0..0,
            vec!["drain".into(), "{{ secrets.db_password }}".into()],
        ));
        let err = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap_err();
        assert!(
            err.message.contains("hook_command uses secrets"),
            "{}",
            err.message
        );
    }

    #[test]
    fn reload_signal_reaches_the_manifest() {
        let (mut config, stage, build, inputs) = fixtures();
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        assert_eq!(plan.hosts[0].manifest.reload.signal, None);
        config.reload.signal = Some(toml::Spanned::new(0..0, "hup".into()));
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        assert_eq!(
            plan.hosts[0].manifest.reload.signal.as_deref(),
            Some("SIGHUP")
        );
    }

    #[test]
    fn log_rotation_reaches_the_manifest() {
        let (mut config, stage, build, inputs) = fixtures();
        config.logs.max_size = crate::operator::config::Bytes(1 << 20);
        config.logs.compress = true;
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        assert_eq!(
            plan.hosts[0].manifest.logs,
            LogSpec {
                max_size: 1 << 20,
                keep: 5,
                compress: true,
                file: "console.log".into(),
                to: crate::protocol::manifest::LogTarget::File,
            }
        );
    }

    #[test]
    fn set_overrides_stage_vars() {
        let (config, stage, build, mut inputs) = fixtures();
        inputs.sets.insert("db_url".into(), "jdbc:override".into());
        let plan = plan_deploy(&config, &stage, &build, &inputs, &templates).unwrap();
        assert!(
            plan.hosts[0].files[1]
                .content
                .starts_with("url=jdbc:override\n")
        );
    }

    #[test]
    fn release_ids_sort_by_time() {
        assert_eq!(
            release_id("2026-11-26T14:00:01.042Z"),
            "20261126-140001-042"
        );
        assert!(release_id("2026-11-26T14:00:01.042Z") < release_id("2026-11-26T14:00:01.100Z"));
    }
}
