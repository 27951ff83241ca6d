//! `--hosts PATTERN`: which of a stage's hosts a command acts on. The choice
//! is pure ([`select_hosts`]); [`narrow`] applies it to a resolved stage.

use serde::Serialize;

use crate::cli::HostsArg;
use crate::error::{Error, Result};
use crate::operator::config::{Project, ResolvedStage};

/// A stage narrowed by `--hosts` or `--roles`: what was asked and out of how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// The `--hosts` value as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The `--roles` value as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<String>,
    /// Hosts selected.
    pub selected: usize,
    /// Hosts the stage has.
    pub of: usize,
}

impl Selection {
    /// `2 of 5 hosts (--hosts web1,web2)`.
    pub fn describe(&self) -> String {
        let mut asked = Vec::new();
        if let Some(p) = &self.pattern {
            asked.push(format!("--hosts {p}"));
        }
        if let Some(r) = &self.roles {
            asked.push(format!("--roles {r}"));
        }
        format!(
            "{} of {} hosts ({})",
            self.selected,
            self.of,
            asked.join(" ")
        )
    }
}

/// The indices (in stage order, each once) of `hosts` that `pattern` names:
/// a comma-separated list of host names or globs (`*`, `?`, `[…]`) as written
/// in the stage. Every entry must match at least one host.
pub fn select_hosts(hosts: &[&str], pattern: &str) -> std::result::Result<Vec<usize>, String> {
    let entries: Vec<&str> = pattern
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Err("--hosts names no host".to_string());
    }
    let mut chosen = vec![false; hosts.len()];
    let mut unknown = Vec::new();
    for entry in entries {
        // A name as written matches itself even when it holds glob characters.
        let glob = glob::Pattern::new(entry).ok();
        let mut matched = false;
        for (i, host) in hosts.iter().enumerate() {
            if *host == entry || glob.as_ref().is_some_and(|g| g.matches(host)) {
                chosen[i] = true;
                matched = true;
            }
        }
        if !matched {
            unknown.push(entry);
        }
    }
    if !unknown.is_empty() {
        let what = if unknown.len() == 1 {
            "matches no host"
        } else {
            "match no host"
        };
        return Err(format!("--hosts {} {what}", unknown.join(", ")));
    }
    Ok((0..hosts.len()).filter(|i| chosen[*i]).collect())
}

/// The indices of the hosts whose role (`host_roles`, one per host) is one
/// of the comma-separated `pattern`; every role named must be one of `roles`.
pub fn select_roles(
    host_roles: &[Option<&str>],
    roles: &[&str],
    pattern: &str,
) -> std::result::Result<Vec<usize>, String> {
    let wanted: Vec<&str> = pattern
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if wanted.is_empty() {
        return Err("--roles names no role".to_string());
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !roles.contains(w))
        .collect();
    if !unknown.is_empty() {
        return Err(format!("--roles: no role {}", unknown.join(", ")));
    }
    Ok((0..host_roles.len())
        .filter(|i| host_roles[*i].is_some_and(|r| wanted.contains(&r)))
        .collect())
}

/// The stage `name`, narrowed to the hosts `--hosts` and `--roles` name.
pub fn stage(
    project: &Project,
    name: &str,
    hosts: &HostsArg,
) -> Result<(ResolvedStage, Option<Selection>)> {
    let (stage, by_hosts) = narrow(project.stage(name)?, hosts.pattern.as_deref())?;
    let Some(roles) = hosts.roles.as_deref() else {
        return Ok((stage, by_hosts));
    };
    let of = by_hosts.as_ref().map_or(stage.hosts.len(), |s| s.of);
    let stage = narrow_roles(stage, roles)?;
    let selection = Selection {
        pattern: hosts.pattern.clone(),
        roles: Some(roles.to_string()),
        selected: stage.hosts.len(),
        of,
    };
    Ok((stage, Some(selection)))
}

/// `stage` with only the hosts `pattern` names (all of them without one).
/// An entry that names no host is a config error listing the stage's hosts.
pub fn narrow(
    mut stage: ResolvedStage,
    pattern: Option<&str>,
) -> Result<(ResolvedStage, Option<Selection>)> {
    let Some(pattern) = pattern else {
        return Ok((stage, None));
    };
    let names: Vec<&str> = stage.hosts.iter().map(|(h, _)| h.as_str()).collect();
    let keep = select_hosts(&names, pattern).map_err(|e| {
        Error::config(format!("stage `{}`: {e}", stage.name))
            .hint(format!("its hosts are: {}", names.join(", ")))
    })?;
    let of = stage.hosts.len();
    stage.hosts = keep.iter().map(|i| stage.hosts[*i].clone()).collect();
    let selection = Selection {
        pattern: Some(pattern.to_string()),
        roles: None,
        selected: stage.hosts.len(),
        of,
    };
    Ok((stage, Some(selection)))
}

/// `stage` with only the hosts of the roles `pattern` names; an unknown
/// role, or none of the roles' hosts left, is a config error naming the roles.
fn narrow_roles(mut stage: ResolvedStage, pattern: &str) -> Result<ResolvedStage> {
    let roles: Vec<&str> = stage.roles.iter().map(|r| r.name.as_str()).collect();
    let host_roles: Vec<Option<&str>> = stage
        .hosts
        .iter()
        .map(|(h, _)| stage.role_of(h).map(|r| r.name.as_str()))
        .collect();
    let known = if roles.is_empty() {
        "it has no roles ([stages.NAME.roles.ROLE])".to_string()
    } else {
        format!("its roles are: {}", roles.join(", "))
    };
    let keep = select_roles(&host_roles, &roles, pattern)
        .and_then(|keep| {
            if keep.is_empty() {
                Err(format!(
                    "--roles {pattern}: none of the hosts selected has that role"
                ))
            } else {
                Ok(keep)
            }
        })
        .map_err(|e| Error::config(format!("stage `{}`: {e}", stage.name)).hint(known))?;
    stage.hosts = keep.iter().map(|i| stage.hosts[*i].clone()).collect();
    Ok(stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: [&str; 5] = ["web1", "web2", "web10", "worker1", "deploy@db1:2222"];

    #[test]
    fn names_and_globs_select_in_stage_order() {
        assert_eq!(select_hosts(&HOSTS, "web2,web1"), Ok(vec![0, 1]));
        assert_eq!(select_hosts(&HOSTS, "web?"), Ok(vec![0, 1]));
        assert_eq!(select_hosts(&HOSTS, "web*"), Ok(vec![0, 1, 2]));
        assert_eq!(select_hosts(&HOSTS, "w*1"), Ok(vec![0, 3]));
        assert_eq!(select_hosts(&HOSTS, "web[12]"), Ok(vec![0, 1]));
        assert_eq!(select_hosts(&HOSTS, "deploy@db1:2222"), Ok(vec![4]));
        assert_eq!(select_hosts(&HOSTS, " web1 , worker1 "), Ok(vec![0, 3]));
    }

    #[test]
    fn a_host_named_twice_is_selected_once() {
        assert_eq!(select_hosts(&HOSTS, "web1,web1,web*"), Ok(vec![0, 1, 2]));
    }

    #[test]
    fn every_entry_that_matches_nothing_is_named() {
        let err = select_hosts(&HOSTS, "web1,web3,db*").unwrap_err();
        assert_eq!(err, "--hosts web3, db* match no host");
        let err = select_hosts(&HOSTS, "app1").unwrap_err();
        assert_eq!(err, "--hosts app1 matches no host");
    }

    #[test]
    fn an_empty_pattern_selects_nothing_and_is_an_error() {
        assert!(select_hosts(&HOSTS, "").is_err());
        assert!(select_hosts(&HOSTS, " , ").is_err());
        assert!(select_hosts(&[], "web1").is_err());
    }

    #[test]
    fn a_name_with_glob_characters_matches_itself() {
        // `[` opens a class that never closes: not a valid glob, still a name.
        assert_eq!(select_hosts(&["odd[host"], "odd[host"), Ok(vec![0]));
    }

    #[test]
    fn roles_select_their_hosts_and_an_unknown_role_is_named() {
        let host_roles = [Some("web"), Some("web"), Some("worker"), None];
        let roles = ["web", "worker"];
        assert_eq!(select_roles(&host_roles, &roles, "web"), Ok(vec![0, 1]));
        assert_eq!(
            select_roles(&host_roles, &roles, "worker,web"),
            Ok(vec![0, 1, 2])
        );
        assert_eq!(
            select_roles(&host_roles, &roles, "web,db"),
            Err("--roles: no role db".to_string())
        );
        assert!(select_roles(&host_roles, &roles, ",").is_err());
    }

    #[test]
    fn roles_and_hosts_together_select_hosts_matching_both() {
        let project = crate::operator::config::load_str(
            "[service]\nname = \"hello\"\njar = \"hello.jar\"\n[stages.prod]\n\
             [stages.prod.roles.web]\nhosts = [\"web1\", \"web2\"]\n\
             [stages.prod.roles.worker]\nhosts = [\"worker1\"]\n",
        )
        .unwrap();
        let args = |hosts: Option<&str>, roles: Option<&str>| HostsArg {
            pattern: hosts.map(str::to_string),
            roles: roles.map(str::to_string),
        };
        let names =
            |s: &ResolvedStage| -> Vec<String> { s.hosts.iter().map(|(h, _)| h.clone()).collect() };
        let (s, sel) = stage(&project, "prod", &args(None, Some("worker"))).unwrap();
        assert_eq!(names(&s), ["worker1"]);
        assert_eq!(sel.unwrap().describe(), "1 of 3 hosts (--roles worker)");
        let (s, sel) = stage(&project, "prod", &args(Some("*1"), Some("web"))).unwrap();
        assert_eq!(names(&s), ["web1"]);
        assert_eq!(
            sel.unwrap().describe(),
            "1 of 3 hosts (--hosts *1 --roles web)"
        );
        let err = stage(&project, "prod", &args(None, Some("db"))).unwrap_err();
        assert!(err.to_string().contains("--roles: no role db"), "{err}");
        assert!(
            err.to_string().contains("its roles are: web, worker"),
            "{err}"
        );
        let err = stage(&project, "prod", &args(Some("worker1"), Some("web"))).unwrap_err();
        assert!(
            err.to_string().contains("none of the hosts selected"),
            "{err}"
        );
    }

    #[test]
    fn narrowing_keeps_the_selected_hosts_and_says_out_of_how_many() {
        let project = crate::operator::config::load_str(
            "[service]\nname = \"hello\"\njar = \"hello.jar\"\n[stages.prod]\nhosts = [\"web1\", \"web2\", \"web3\", \"worker1\", \"worker2\"]\n",
        )
        .unwrap();
        let stage = project.stage("prod").unwrap();
        let (all, none) = narrow(stage.clone(), None).unwrap();
        assert_eq!(all.hosts.len(), 5);
        assert_eq!(none, None);
        let (some, selection) = narrow(stage.clone(), Some("web1,web2")).unwrap();
        let names: Vec<&str> = some.hosts.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(names, ["web1", "web2"]);
        assert_eq!(
            selection.unwrap().describe(),
            "2 of 5 hosts (--hosts web1,web2)"
        );
        let err = narrow(stage, Some("web9")).unwrap_err();
        assert!(
            err.to_string()
                .contains("stage `prod`: --hosts web9 matches no host")
        );
        assert!(
            err.to_string()
                .contains("its hosts are: web1, web2, web3, worker1, worker2"),
            "{err}"
        );
    }
}
