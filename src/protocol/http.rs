//! The HTTP client both sides use for the artifact repository: one place
//! for its deadlines and the certificate authorities it trusts (Mozilla's
//! roots, or only those of `[artifact] ca` for a repository signed by a
//! private CA).

use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// The certificates of a PEM bundle; an error when it holds none or a
/// block is malformed (`what` names the bundle for the message).
pub fn certificates(pem: &str, what: &str) -> Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem.as_bytes()) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            // A key in the bundle is ignored, never used nor shown.
            Ok(_) => {}
            Err(e) => return Err(format!("{what}: not a valid PEM bundle: {e}")),
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "{what}: holds no certificate (expected PEM blocks `-----BEGIN CERTIFICATE-----`)"
        ));
    }
    Ok(certs)
}

/// An agent with a global deadline (and a shorter one for connecting, when
/// given) that answers every status itself, trusting only `ca` when given.
pub fn agent(
    timeout: Duration,
    connect: Option<Duration>,
    ca: Option<&str>,
) -> Result<ureq::Agent, String> {
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false);
    if let Some(connect) = connect {
        config = config.timeout_connect(Some(connect));
    }
    if let Some(pem) = ca {
        let roots = RootCerts::new_with_certs(&certificates(pem, "[artifact] ca")?);
        config = config.tls_config(TlsConfig::builder().root_certs(roots).build());
    }
    Ok(config.build().into())
}

/// Why TLS refused the repository, when that is why `e` happened: a
/// certificate error is never worth a retry.
pub fn tls_refusal(e: &ureq::Error) -> Option<String> {
    match e {
        ureq::Error::Rustls(r) => Some(r.to_string()),
        ureq::Error::Tls(t) => Some((*t).to_string()),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(rustls::Error::to_string),
        _ => None,
    }
}

/// A request to `url` that got no answer, as a message; a refused
/// certificate says what to do about it.
pub fn call_error(url: &str, e: &ureq::Error) -> String {
    match tls_refusal(e) {
        Some(why) => untrusted(url, &why),
        None => format!("{url}: {e}"),
    }
}

/// The message for a repository whose certificate TLS refused.
pub fn untrusted(url: &str, why: &str) -> String {
    format!(
        "{url}: the repository's TLS certificate was refused ({why}): if a private CA signed it, \
         name that CA's PEM file in [artifact] ca"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_is_refused_naming_it() {
        let e = certificates("just text\n", "ca.pem").unwrap_err();
        assert!(e.starts_with("ca.pem: holds no certificate"), "{e}");
        let e = certificates(
            "-----BEGIN CERTIFICATE-----\n!!!notbase64\n-----END CERTIFICATE-----\n",
            "ca.pem",
        )
        .unwrap_err();
        assert!(e.starts_with("ca.pem: "), "{e}");
    }
}
