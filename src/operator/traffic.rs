//! `shipjar pause`, `resume` and `maintenance`: what each host's proxy does
//! with new requests. The page is rendered here (HTML-escaped, strict) from
//! `[proxy] maintenance_page` or a built-in template, so the host only stores
//! and serves it.

use serde::Serialize;

use crate::cli::{FleetArgs, FleetStageArgs, MaintenanceArgs};
use crate::error::{Error, Result};
use crate::operator::config::Project;
use crate::operator::config::schema::Proxy;
use crate::operator::fleet::Fleet;
use crate::operator::inspect::query_all;
use crate::operator::output::Reporter;
use crate::protocol::status::{Traffic, TrafficMode};
use crate::protocol::{Request, Response};

/// The page without `[proxy] maintenance_page`.
const BUILT_IN_PAGE: &str = "<!doctype html>
<html lang=\"en\">
<head><meta charset=\"utf-8\"><title>{{ service }}: down for maintenance</title></head>
<body>
<h1>Down for maintenance</h1>
<p>{{ message }}</p>
</body>
</html>
";

/// `shipjar pause STAGE`: new requests wait (up to `hold`) until `resume`.
pub fn pause(project: &Project, args: &FleetStageArgs, reporter: &Reporter) -> Result<i32> {
    let traffic = Traffic {
        mode: TrafficMode::Paused,
        ..Traffic::serving()
    };
    set(project, &args.stage, &args.fleet, traffic, None, reporter)
}

/// `shipjar resume STAGE`: held requests go on; serving again.
pub fn resume(project: &Project, args: &FleetStageArgs, reporter: &Reporter) -> Result<i32> {
    set(
        project,
        &args.stage,
        &args.fleet,
        Traffic::serving(),
        None,
        reporter,
    )
}

/// `shipjar maintenance STAGE --message …`: 503 with the page until `resume`.
pub fn maintenance(project: &Project, args: &MaintenanceArgs, reporter: &Reporter) -> Result<i32> {
    let retry_after = humantime::parse_duration(&args.retry_after).map_err(|e| {
        Error::config(format!(
            "--retry-after {}: {e}: expected e.g. 60s or 10m",
            args.retry_after
        ))
    })?;
    let proxy = stage_proxy(project, &args.stage)?;
    let page = render_page(project, proxy, &args.message, retry_after.as_secs())?;
    let traffic = Traffic {
        mode: TrafficMode::Maintenance,
        since: None,
        message: Some(args.message.clone()),
        retry_after_s: Some(retry_after.as_secs()),
    };
    set(
        project,
        &args.stage,
        &args.fleet,
        traffic,
        Some(page),
        reporter,
    )
}

/// The stage's `[proxy]`, or an error naming the key that turns it on.
fn stage_proxy<'a>(project: &'a Project, stage: &str) -> Result<&'a Proxy> {
    project.config.proxy_of(stage).ok_or_else(|| {
        Error::config(format!(
            "stage `{stage}` runs without shipjar's proxy: pause, resume and maintenance \
             need `[proxy]` (or `stages.{stage}.proxy`) in {}",
            project.file.display()
        ))
    })
}

/// The maintenance page: `[proxy] maintenance_page` (a path in the project)
/// or the built-in one, with `message`, `service` and `retry_after` (seconds).
fn render_page(
    project: &Project,
    proxy: &Proxy,
    message: &str,
    retry_after: u64,
) -> Result<String> {
    let (name, source) = match &proxy.maintenance_page {
        Some(path) => {
            let file = project.dir.join(path.get_ref());
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Error::config(format!(
                    "`proxy.maintenance_page` = \"{}\": {}: {e}",
                    path.get_ref(),
                    file.display()
                ))
            })?;
            (path.get_ref().clone(), text)
        }
        None => (
            "the built-in maintenance page".to_string(),
            BUILT_IN_PAGE.to_string(),
        ),
    };
    let service = project.config.service.name.0.as_str();
    render_template(&name, &source, message, service, retry_after)
}

/// Renders a maintenance page template (pure): strict, every value HTML-escaped.
fn render_template(
    name: &str,
    source: &str,
    message: &str,
    service: &str,
    retry_after: u64,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // The message is text, whatever it holds: never markup on the page.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.render_named_str(
        name,
        source,
        minijinja::context! {
            message => message,
            service => service,
            retry_after => retry_after,
        },
    )
    .map_err(|e| {
        Error::config(format!(
            "{name}: {e} (the page may use message, service and retry_after)"
        ))
    })
}

/// One host's answer.
#[derive(Serialize)]
struct Row {
    host: String,
    ok: bool,
    before: Option<Traffic>,
    now: Option<Traffic>,
    proxy: Option<String>,
    error: Option<String>,
}

/// The JSON result of `pause`, `resume` and `maintenance`.
#[derive(Serialize)]
struct TrafficResult<'a> {
    ok: bool,
    stage: &'a str,
    traffic: TrafficMode,
    hosts: Vec<Row>,
    selection: Option<crate::operator::select::Selection>,
}

/// Sets `traffic` (with `page`) on each selected host; one line per host.
fn set(
    project: &Project,
    stage_name: &str,
    fleet_args: &FleetArgs,
    traffic: Traffic,
    page: Option<String>,
    reporter: &Reporter,
) -> Result<i32> {
    let proxy = stage_proxy(project, stage_name)?;
    let hold = humantime::format_duration(std::time::Duration::from_millis(proxy.hold.0));
    let (stage, selection) =
        crate::operator::select::stage(project, stage_name, &fleet_args.hosts)?;
    crate::operator::render::mask_available_secrets(&stage.secrets);
    let fleet = Fleet::for_stage(project, &stage, fleet_args)?;
    let mode = traffic.mode.clone();
    let request = Request::SetTraffic { traffic, page };
    let mut text = String::new();
    let mut rows = Vec::new();
    for (host, answer) in query_all(&fleet, &stage.hosts, request) {
        let row = match answer {
            Ok(Response::TrafficSet { before, now, proxy }) => {
                text.push_str(&format!(
                    "{host}: {} (was {}): {}; {proxy}\n",
                    now.mode,
                    before.line(),
                    what_it_does(&now.mode, &hold.to_string())
                ));
                Row {
                    host,
                    ok: true,
                    before: Some(before),
                    now: Some(now),
                    proxy: Some(proxy),
                    error: None,
                }
            }
            other => {
                let error = match other {
                    Ok(answer) => format!("unexpected answer: {answer:?}"),
                    Err(e) => e,
                };
                text.push_str(&format!("{host}: FAILED: {error}\n"));
                Row {
                    host,
                    ok: false,
                    before: None,
                    now: None,
                    proxy: None,
                    error: Some(error),
                }
            }
        };
        rows.push(row);
    }
    if let Some(s) = &selection {
        text.push_str(&format!("on {}\n", s.describe()));
    }
    let ok = rows.iter().all(|r| r.ok);
    let result = TrafficResult {
        ok,
        stage: &stage.name,
        traffic: mode,
        hosts: rows,
        selection,
    };
    reporter.result(&result, &text);
    Ok(if ok { 0 } else { 1 })
}

/// What a proxy in `mode` does with a new request.
fn what_it_does(mode: &TrafficMode, hold: &str) -> String {
    match mode {
        TrafficMode::Paused => {
            format!("new requests wait until `resume` (each at most hold = {hold}, then 503)")
        }
        TrafficMode::Maintenance => "every request gets 503 and the maintenance page".to_string(),
        _ => "requests are served".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_page_escapes_the_message() {
        let page = render_template("p", BUILT_IN_PAGE, "<script>x</script> & co", "hello", 60)
            .expect("renders");
        assert!(
            page.contains("&lt;script&gt;x&lt;&#x2f;script&gt; &amp; co"),
            "{page}"
        );
        assert!(!page.contains("<script>"), "{page}");
    }

    #[test]
    fn a_page_naming_an_unknown_variable_is_an_error_naming_the_ones_it_may_use() {
        let err =
            render_template("page.html", "{{ mesage }}", "m", "hello", 60).expect_err("strict");
        assert!(
            err.to_string().contains("message, service and retry_after"),
            "{err}"
        );
    }
}
