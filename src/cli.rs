//! Command-line interface: argument definitions only, no behaviour.

use std::path::PathBuf;

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

/// Build a JVM service, deploy it to a fleet over SSH, and supervise it there.
#[derive(Debug, Parser)]
#[command(
    name = "shipjar",
    version,
    about,
    max_term_width = 100,
    after_help = "Examples:\n  shipjar init\n  shipjar deploy local\n  shipjar status production\n\nEach command's --help ends with examples of its own."
)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Project file to use.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        default_value = "shipjar.toml"
    )]
    pub config: PathBuf,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a starting shipjar.toml for the service in this directory.
    #[command(
        after_help = "Examples:\n  shipjar init                       # name, build command and artifact from pom.xml, project.clj, deps.edn …\n  shipjar -C services/orders init --name orders"
    )]
    Init(InitArgs),
    /// Check the project file and render every config file for a stage, changing nothing.
    #[command(
        after_help = "Examples:\n  shipjar check production\n  shipjar check local --set feature=on --env PORT=9090"
    )]
    Check(CheckArgs),
    /// Install the agent and create the service user, directories and init integration on each host.
    #[command(
        after_help = "Examples:\n  shipjar provision production --dry-run   # what would change, as diffs\n  shipjar provision production"
    )]
    Provision(ProvisionArgs),
    /// Run the build command and record the artifact, its sha256 and version.
    #[command(after_help = "Examples:\n  shipjar build\n  shipjar build --version 1.4.2")]
    Build(BuildArgs),
    /// Build, upload, release, restart and verify a stage.
    #[command(
        after_help = "Examples:\n  shipjar deploy local\n  shipjar deploy production --wait 5m\n  shipjar deploy staging --skip-build --set feature=on"
    )]
    Deploy(DeployArgs),
    /// Upload a local build to the `[artifact]` repository in Maven's layout.
    #[command(
        after_help = "Examples:\n  shipjar publish --version 1.4.2\n  shipjar publish --skip-build --repository https://repo.example.com/releases"
    )]
    Publish(PublishArgs),
    /// Switch a stage back to an earlier release (no upload), health- and version-checked.
    #[command(
        after_help = "Examples:\n  shipjar rollback production\n  shipjar rollback production --to 20261126-140423-166"
    )]
    Rollback(RollbackArgs),
    /// Restart the current release on every host through the health gate, in rolling batches.
    #[command(
        after_help = "Examples:\n  shipjar restart production\n  shipjar restart production --hosts 'web*' --wait 5m"
    )]
    Restart(RestartArgs),
    /// Show what runs on each host of a stage, and flag every mismatch.
    #[command(
        after_help = "Examples:\n  shipjar status production\n  shipjar status production --json | jq ."
    )]
    Status(FleetStageArgs),
    /// List the releases on each host of a stage.
    #[command(after_help = "Example:\n  shipjar releases production")]
    Releases(FleetStageArgs),
    /// Show the service log of each host of a stage, lines prefixed by host.
    #[command(
        after_help = "Examples:\n  shipjar logs production -n 200\n  shipjar logs production --hosts app1.example.com -f"
    )]
    Logs(LogsArgs),
    /// Hold new requests at each host's proxy (up to `[proxy] hold`, then 503) until `resume`.
    #[command(
        after_help = "Examples:\n  shipjar pause production\n  shipjar pause production --hosts 'web*'   # deploys still work while paused"
    )]
    Pause(FleetStageArgs),
    /// End a pause or maintenance: held requests go on, new ones are served.
    #[command(after_help = "Example:\n  shipjar resume production")]
    Resume(FleetStageArgs),
    /// Answer every request with 503 and the maintenance page (`[proxy] maintenance_page`) until `resume`.
    #[command(
        after_help = "Examples:\n  shipjar maintenance production --message 'Upgrading the database, back at 14:00 UTC'\n  shipjar maintenance production --message 'Back soon' --retry-after 10m"
    )]
    Maintenance(MaintenanceArgs),
    /// Remove a stage's deploy lock on every host and say whose it was.
    #[command(after_help = "Example:\n  shipjar unlock production")]
    Unlock(FleetStageArgs),
    /// Run a command on each host as the service runs it: its user, environment and `current`.
    #[command(
        after_help = "Examples:\n  shipjar exec production -- ls -l config\n  shipjar exec production --hosts 'web*' --timeout 1h -- java -cp app.jar myapp.migrate\n  shipjar exec production --hosts app1 -i -- bash"
    )]
    Exec(ExecArgs),
    /// Connect to a Clojure service's socket REPL (`[service] repl`) on one host, over ssh.
    #[command(
        after_help = "Examples:\n  shipjar repl production --hosts app1\n  shipjar repl production --hosts app1 --port 7888   # hold the forward open for CIDER, Calva or Cursive"
    )]
    Repl(ReplArgs),
    /// Print a shell completion script to stdout.
    #[command(
        after_help = "Examples:\n  shipjar completions bash > ~/.local/share/bash-completion/completions/shipjar\n  shipjar completions zsh > \"${fpath[1]}/_shipjar\"\n  shipjar completions fish > ~/.config/fish/completions/shipjar.fish"
    )]
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout.
    #[command(
        after_help = "Examples:\n  shipjar man | man -l -\n  shipjar man > /usr/local/share/man/man1/shipjar.1"
    )]
    Man,
    /// Host side: control the service on this host.
    #[command(
        subcommand,
        after_help = "Examples:\n  shipjar service status inventory\n  shipjar service restart inventory\n  shipjar service start hello --root examples/hello/.shipjar/local"
    )]
    Service(ServiceCommand),
    /// Host side: the agent the operator drives with JSON messages on stdin/stdout.
    #[command(hide = true)]
    Agent(AgentArgs),
}

/// `shipjar completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Shells `shipjar completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// A stage name.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// Stage from `[stages.NAME]`; `local` is built in.
    pub stage: String,
}

/// `shipjar check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Stage from `[stages.NAME]`; `local` is built in.
    pub stage: String,
    /// Set a template variable, as `deploy --set` would (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = utf8_text())]
    pub set: Vec<String>,
    /// Add or override a service environment variable, as `deploy --env` would (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = utf8_text())]
    pub env: Vec<String>,
    /// Only check the project and render the templates; do not reach the hosts.
    #[arg(long)]
    pub no_hosts: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// `shipjar init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Service name (default: from the directory name).
    #[arg(long)]
    pub name: Option<String>,
}

/// How to reach a stage's hosts.
#[derive(Debug, Args, Clone)]
pub struct FleetArgs {
    /// Use this ssh config file instead of the stage's `ssh_config`.
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// Work on at most N hosts at once (default 32).
    #[arg(long, value_name = "N")]
    pub parallel: Option<usize>,
    #[command(flatten)]
    pub hosts: HostsArg,
}

/// `--hosts PATTERN`: only some of a stage's hosts (every stage command has it).
#[derive(Debug, Args, Clone, Default)]
pub struct HostsArg {
    /// Only these hosts: comma-separated names or globs as written in the stage (e.g. web1,web2 or 'web*').
    #[arg(long = "hosts", alias = "host", value_name = "PATTERN", value_parser = utf8_text())]
    pub pattern: Option<String>,
    /// Only the hosts of these roles (`[stages.NAME.roles.ROLE]`), comma-separated; with --hosts, both must match.
    #[arg(long = "roles", value_name = "ROLE[,ROLE]", value_parser = utf8_text())]
    pub roles: Option<String>,
}

/// A stage and how to reach it.
#[derive(Debug, Args)]
pub struct FleetStageArgs {
    /// Stage from `[stages.NAME]`; `local` is built in.
    pub stage: String,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// `shipjar maintenance`.
#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    /// Stage whose proxies answer with the page.
    pub stage: String,
    /// The message the page shows (HTML-escaped).
    #[arg(long, value_name = "TEXT", value_parser = utf8_text())]
    pub message: String,
    /// The `Retry-After` the 503 carries (e.g. 60s, 10m).
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub retry_after: String,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// `shipjar exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Stage whose hosts run the command.
    pub stage: String,
    /// On one host, with this terminal (ssh -t): for a shell or a console.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Kill the command (and what it started) on a host after this long.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub timeout: String,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// The command and its arguments (no shell: `-- sh -c '…'` for one).
    #[arg(last = true, required = true, value_name = "CMD", value_parser = utf8_text())]
    pub command: Vec<String>,
}

/// `shipjar repl`.
#[derive(Debug, Args)]
pub struct ReplArgs {
    /// Stage of the host to connect to.
    pub stage: String,
    /// Only hold the forward open on 127.0.0.1:PORT (for an editor) instead of connecting this terminal.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// `shipjar logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Stage whose hosts to read.
    pub stage: String,
    /// Lines from the end of each host's log (default 50; with --since or --grep, all that match).
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
    /// Keep printing new lines as they are written.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only lines from this time on: a duration ago (`30m`, `2h`) or a time (`2026-12-06T12:00:00Z`, `2026-12-06 12:00`, UTC).
    #[arg(long, value_name = "WHEN", value_parser = utf8_text())]
    pub since: Option<String>,
    /// Only lines this regular expression matches (checked on the host, after masking).
    #[arg(long, value_name = "REGEX", value_parser = utf8_text())]
    pub grep: Option<String>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// `shipjar provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// Stage to provision.
    pub stage: String,
    /// Change nothing; show what would change (files as diffs, secrets masked).
    #[arg(long)]
    pub dry_run: bool,
    /// Stop a service running under an init script or unit that is not shipjar's, through it, before replacing it.
    #[arg(long)]
    pub take_over: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// `shipjar build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Use this version instead of running the version command.
    #[arg(long = "version", value_name = "V", value_parser = utf8_text())]
    pub version: Option<String>,
}

/// `shipjar deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Stage to deploy to.
    pub stage: String,
    /// Deploy the last build instead of building now.
    #[arg(long, conflicts_with = "artifact")]
    pub skip_build: bool,
    /// Deploy this artifact instead of building.
    #[arg(long, value_name = "PATH")]
    pub artifact: Option<PathBuf>,
    /// Version to record and verify instead of the built one; with
    /// `[artifact]`, the version to deploy from the repository.
    #[arg(long = "version", value_name = "V", value_parser = utf8_text())]
    pub version: Option<String>,
    /// The repository artifact's sha256, instead of its `.sha256` companion.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Set a template variable for this deploy (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = utf8_text())]
    pub set: Vec<String>,
    /// Add or override a service environment variable for this release (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = utf8_text())]
    pub env: Vec<String>,
    /// If another deploy holds the lock, wait up to this long (e.g. 5m) instead of failing.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
    /// Deploy the rest of the stage to the release of the canary waiting there
    /// (`pause = "confirm"`): the same artifact and config, nothing built.
    #[arg(
        long = "continue",
        conflicts_with_all = ["abort", "skip_build", "artifact", "version", "sha256", "set", "env"]
    )]
    pub resume: bool,
    /// Put the canary waiting on the stage back on its previous release and unlock the stage.
    #[arg(
        long,
        conflicts_with_all = ["skip_build", "artifact", "version", "sha256", "set", "env"]
    )]
    pub abort: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// `shipjar publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Publish to this repository instead of `[artifact] repository`.
    #[arg(long, value_name = "URL", value_parser = utf8_text())]
    pub repository: Option<String>,
    /// Publish the last build instead of building now.
    #[arg(long, conflicts_with = "artifact")]
    pub skip_build: bool,
    /// Publish this file instead of building.
    #[arg(long, value_name = "PATH")]
    pub artifact: Option<PathBuf>,
    /// The version to publish it as (default: the build's).
    #[arg(long = "version", value_name = "V", value_parser = utf8_text())]
    pub version: Option<String>,
}

/// `shipjar rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Stage to roll back.
    pub stage: String,
    /// Release id to go back to (default: the last good release before `current`).
    #[arg(long, value_name = "ID")]
    pub to: Option<String>,
    /// If another deploy holds the lock, wait up to this long instead of failing.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// `shipjar restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Stage to restart.
    pub stage: String,
    /// If another deploy holds the lock, wait up to this long instead of failing.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Host-side service control.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Start the service; exits 0 only once it is healthy.
    #[command(after_help = "Example:\n  shipjar service start inventory")]
    Start(ServiceArgs),
    /// Stop the service gracefully (SIGTERM, then SIGKILL); 0 if it was not running.
    #[command(after_help = "Example:\n  shipjar service stop inventory --json")]
    Stop(ServiceArgs),
    /// Stop, then start through the health gate.
    #[command(after_help = "Example:\n  shipjar service restart inventory")]
    Restart(ServiceArgs),
    /// LSB status: 0 running, 1 dead or failed, 3 not running.
    #[command(after_help = "Example:\n  shipjar service status inventory; echo $?")]
    Status(ServiceArgs),
    /// Reload: send `[reload] signal`, or restart through the health gate.
    #[command(after_help = "Example:\n  shipjar service reload inventory")]
    Reload(ServiceArgs),
    /// Supervise in the foreground, for systemd (sd_notify) and other process managers.
    #[command(
        after_help = "Example:\n  ExecStart=/usr/local/bin/shipjar service run inventory   # in a systemd unit"
    )]
    Run(ServiceArgs),
    /// Write a systemd unit (`Type=notify`, `ExecStart=shipjar service run NAME`).
    #[command(after_help = "Example:\n  shipjar service install-unit inventory --stdout")]
    InstallUnit(InstallArgs),
    /// Write an LSB init script whose every action calls `shipjar service`.
    #[command(
        after_help = "Example:\n  shipjar service install-initscript inventory --user inventory"
    )]
    InstallInitscript(InstallArgs),
    /// Run the blue/green HTTP proxy of a service with `[proxy]` (kept alive by its own keeper).
    #[command(after_help = "Example:\n  shipjar service proxy inventory")]
    Proxy(ProxyArgs),
    /// The detached supervisor process (started by `start`).
    #[command(hide = true)]
    Supervise(ServiceArgs),
    /// Replace this process with a command in `current`, as the service runs (`shipjar exec -i`).
    #[command(hide = true)]
    Exec(ServiceExecArgs),
}

/// `service exec`.
#[derive(Debug, Args)]
pub struct ServiceExecArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Which service, under which root.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Service name.
    pub name: String,
    /// Host root the layout lives under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// One of the two instances behind `[proxy]`, by its port.
    #[arg(long, value_name = "PORT")]
    pub instance: Option<u16>,
}

/// `service proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Service name.
    pub name: String,
    /// Host root the layout lives under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Stop the running proxy instead.
    #[arg(long, conflicts_with = "status")]
    pub stop: bool,
    /// Print the proxy's state (LSB exit codes: 0 running, 3 not running).
    #[arg(long)]
    pub status: bool,
    /// The proxy process itself (its keeper starts it with the listening socket).
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Stay in the foreground as the keeper (for process managers).
    #[arg(long)]
    pub foreground: bool,
}

/// `service install-unit` and `service install-initscript`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Service name.
    pub name: String,
    /// Host root the layout lives under; the file goes under it too.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// The shipjar binary the file calls (default: this one).
    #[arg(long, value_name = "PATH")]
    pub shipjar: Option<PathBuf>,
    /// Print the file instead of writing it.
    #[arg(long)]
    pub stdout: bool,
}

/// `shipjar agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Host root the layout lives under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// Text that must be UTF-8; the error names the option and shows the value
/// (clap's own says only "invalid UTF-8 was detected in one or more arguments").
fn utf8_text() -> impl TypedValueParser<Value = String> {
    OsStringValueParser::new().try_map(|value| {
        value.into_string().map_err(|bad| {
            format!(
                "not valid UTF-8: {} (shipjar passes text only)",
                bad.to_string_lossy()
            )
        })
    })
}
