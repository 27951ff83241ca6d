//! A throw-away certificate authority made with `openssl`, for tests of TLS.

/// A test CA and two server certificates it signed for the address `ip`
/// (`first` and `second`), made with `openssl` in `dir`: `ca.pem`,
/// `NAME.pem`, `NAME.key`.
pub fn test_ca(dir: &std::path::Path, ip: &str) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            super::text(&out)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=shipjar test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&ca);
    std::fs::write(dir.join("san.cnf"), format!("subjectAltName=IP:{ip}\n"))
        .expect("write san.cnf");
    for name in ["first", "second"] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subject = format!("/CN={name}");
        let mut req = vec!["req", "-subj", &subject, "-keyout", &key, "-out", &csr];
        req.extend(ec);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
            "-out",
            &pem,
        ]);
    }
}
