//! Hosts of a stage: `[user@]host[:port]`, or `local` for this machine.

/// The host name that means "this machine, no SSH".
pub const LOCAL_HOST: &str = "local";

/// A host of a stage, parsed from `[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    /// This machine: the agent runs as a child process, no SSH.
    Local,
    /// A remote host reached with OpenSSH.
    Ssh {
        /// Login user, if given.
        user: Option<String>,
        /// Host name or address.
        host: String,
        /// Port, if given.
        port: Option<u16>,
    },
}

impl HostSpec {
    /// The host's name alone: `app2.example.com` for `deploy@app2.example.com:2222`.
    pub fn name(&self) -> &str {
        match self {
            HostSpec::Local => LOCAL_HOST,
            HostSpec::Ssh { host, .. } => host,
        }
    }

    /// Parses `[user@]host[:port]`; `local` means this machine.
    pub fn parse(text: &str) -> Result<HostSpec, String> {
        if text == LOCAL_HOST {
            return Ok(HostSpec::Local);
        }
        let (user, rest) = match text.split_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, text),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("invalid port `{port}` in host `{text}`"))?;
                (host, Some(port))
            }
            None => (rest, None),
        };
        // Nothing that ssh could read as an option or a shell could split.
        let valid_word = |w: &str| {
            !w.is_empty()
                && !w.starts_with('-')
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if user.is_some_and(|u| !valid_word(u)) || !valid_word(host) {
            return Err(format!(
                "invalid host `{text}`: expected [user@]host[:port] with letters, digits, `.`, `-`, `_`"
            ));
        }
        Ok(HostSpec::Ssh {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_specs_parse() {
        assert_eq!(HostSpec::parse("local"), Ok(HostSpec::Local));
        assert_eq!(
            HostSpec::parse("deploy@app2.example.com:2222"),
            Ok(HostSpec::Ssh {
                user: Some("deploy".into()),
                host: "app2.example.com".into(),
                port: Some(2222)
            })
        );
        assert!(HostSpec::parse("app:0").is_err());
        assert!(HostSpec::parse("-oProxyCommand=x").is_err());
        assert!(HostSpec::parse("a b").is_err());
    }
}
