//! A Maven repository for tests: Debian's nginx with WebDAV PUT (as
//! `shipjar publish` and `mvn deploy` write to one), `/open/` for anyone and
//! `/private/` behind basic auth, over http or https.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's login and password (nginx auth_basic on /private/).
pub const LOGIN: &str = "deployer";
pub const PASSWORD: &str = "repo-pass-7f3a9c1e";

/// A free port on `address`.
fn free_port(address: &str) -> u16 {
    TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// nginx serving DIR/www with PUT, `/private/` behind basic auth; killed by pid on drop.
pub struct Repository {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://ADDRESS:PORT` (or https).
    pub base: String,
}

impl Repository {
    /// Served over http on `address`.
    pub fn start(address: &str) -> Repository {
        Repository::start_with(address, None)
    }

    /// Served over https with `cert` and `key` (PEM files).
    pub fn start_tls(address: &str, cert: &Path, key: &Path) -> Repository {
        Repository::start_with(address, Some((cert, key)))
    }

    fn start_with(address: &str, tls: Option<(&Path, &Path)>) -> Repository {
        let nginx = Path::new("/usr/sbin/nginx");
        assert!(
            nginx.exists(),
            "nginx not found: install the Debian package nginx-light (./run-tests does as root)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        for sub in ["www/open", "www/private", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        std::fs::write(
            dir.path().join("htpasswd"),
            format!("{LOGIN}:{{PLAIN}}{PASSWORD}\n"),
        )
        .expect("htpasswd");
        let port = free_port(address);
        let dav = "dav_methods PUT; create_full_put_path on; dav_access user:rw all:r;";
        let (ssl, scheme) = match tls {
            Some((cert, key)) => (
                format!(
                    " ssl; ssl_certificate {}; ssl_certificate_key {}",
                    cert.display(),
                    key.display()
                ),
                "https",
            ),
            None => (String::new(), "http"),
        };
        let conf = format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log {d}/access.log; client_max_body_size 0;\n\
               client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
               server {{ listen {address}:{port}{ssl}; root {d}/www;\n\
                 location /open/ {{ {dav} }}\n\
                 location /private/ {{ auth_basic \"repo\"; auth_basic_user_file {d}/htpasswd; {dav} }}\n\
               }}\n\
             }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("nginx.conf");
        let child = Command::new(nginx)
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start nginx");
        let repo = Repository {
            child,
            dir,
            base: format!("{scheme}://{address}:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((address, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 20 s: {}",
                std::fs::read_to_string(repo.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        repo
    }

    /// The file at `path` under the served root.
    pub fn file(&self, path: &str) -> PathBuf {
        self.dir.path().join("www").join(path)
    }
}

impl Drop for Repository {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
