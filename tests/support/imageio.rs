//! A real ovirt-imageio daemon for a test, as an oVirt host runs it: TLS
//! on an ephemeral loopback port with a certificate signed by a CA the
//! test made, the control API on a Unix socket, and the `file` backend
//! serving the raw files the test names in its tickets. Everything it
//! writes (configuration, certificates, sockets, log) lives in a
//! directory inside the test's [`Work`]. It is killed when dropped.
//!
//! The daemon comes from the venv the test setup made (`ovirt-imageio`
//! beside [`server::python`]); openssl is required to make its
//! certificates: a missing one fails the test.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Work;
use super::server::{self, Reply};

/// How long the daemon may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running ovirt-imageio daemon.
#[derive(Debug)]
pub struct Imageio {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    ca: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Imageio {
    /// Starts a daemon whose files live in a fresh directory of `work`
    /// (`imageio`, `imageio-2`, ...).
    pub fn start(work: &Work) -> Imageio {
        let dir = (1..)
            .map(|n| match n {
                1 => work.path("imageio"),
                n => work.path(&format!("imageio-{n}")),
            })
            .find(|p| !p.exists())
            .expect("a free directory name");
        let run = dir.join("run");
        let conf_d = dir.join("conf/conf.d");
        fs::create_dir_all(&run).expect("imageio run dir");
        fs::create_dir_all(&conf_d).expect("imageio conf dir");
        let (ca, key, cert) = certificates(&dir.join("tls"));
        let socket = run.join("control.sock");
        let log = dir.join("daemon.log");
        let conf = format!(
            "[daemon]\n\
             run_dir = {run}\n\
             drop_privileges = false\n\
             systemd_enable = false\n\
             \n\
             [tls]\n\
             enable = true\n\
             key_file = {key}\n\
             cert_file = {cert}\n\
             ca_file =\n\
             \n\
             [remote]\n\
             host = 127.0.0.1\n\
             port = 0\n\
             \n\
             [local]\n\
             enable = false\n\
             \n\
             [control]\n\
             transport = unix\n\
             socket = {socket}\n\
             remove_timeout = 30\n\
             \n\
             [logger_root]\n\
             level = DEBUG\n\
             \n\
             [handler_logfile]\n\
             class = logging.FileHandler\n\
             args = ({log:?},)\n\
             kwargs = {{}}\n",
            run = run.display(),
            key = key.display(),
            cert = cert.display(),
            socket = socket.display(),
            log = log.display().to_string(),
        );
        fs::write(conf_d.join("99-local.conf"), conf).expect("write imageio conf");
        fs::write(&log, "").expect("create imageio log");
        let stderr = fs::File::create(dir.join("stderr")).expect("imageio stderr file");
        let child = daemon_command()
            .arg("--conf-dir")
            .arg(dir.join("conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start ovirt-imageio: {e}"));
        let mut d = Imageio {
            child: Some(child),
            port: 0,
            dir,
            ca,
            socket,
            log,
        };
        d.port = d.await_ready();
        d
    }

    /// Polls the log until the daemon is ready; returns its data port.
    fn await_ready(&mut self) -> u16 {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("Ready for requests") {
                return listening_port(&text).unwrap_or_else(|| {
                    panic!("ovirt-imageio is ready but logged no remote port:\n{text}")
                });
            }
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ovirt-imageio exited at start ({status}):\n{text}\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ovirt-imageio not ready within {START_TIMEOUT:?}:\n{text}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The data API port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate that signed the daemon's certificate: what a
    /// client trusts (`--remote-ca`, the imageio client's `cafile`).
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The directory holding the daemon's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `https://127.0.0.1:PORT/images/{id}`, the data URL of ticket `id`.
    pub fn url(&self, id: &str) -> String {
        format!("https://127.0.0.1:{}/images/{id}", self.port)
    }

    /// A control API request; `body` is sent as JSON when given.
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let mut args: Vec<String> = vec![
            "--unix-socket".into(),
            self.socket.display().to_string(),
            "-X".into(),
            method.into(),
        ];
        if let Some(b) = body {
            args.push("-H".into());
            args.push("content-type: application/json".into());
            args.push("--data-binary".into());
            args.push(b.to_string());
        }
        args.push(format!("http://localhost{path}"));
        server::curl(&args)
    }

    /// Adds ticket `id` on the raw file `path` (which must exist) of `size`
    /// bytes allowing `ops` for `timeout` seconds; asserts 200.
    pub fn add_ticket(&self, id: &str, path: &Path, size: u64, ops: &[&str], timeout: u64) {
        let url = format!("file://{}", path.display());
        self.add_ticket_url(id, &url, size, ops, timeout);
    }

    /// Like [`Imageio::add_ticket`] on any backend URL the daemon knows
    /// (`file:///path`, `nbd:unix:/path.sock`).
    pub fn add_ticket_url(&self, id: &str, url: &str, size: u64, ops: &[&str], timeout: u64) {
        let ticket = json!({
            "uuid": id,
            "size": size,
            "url": url,
            "ops": ops,
            "timeout": timeout,
            "sparse": true,
        });
        let r = self.control("PUT", &format!("/tickets/{id}"), Some(&ticket));
        assert_eq!(
            r.status,
            200,
            "ovirt-imageio: adding ticket {id}: {}\n{}",
            r.text(),
            self.log()
        );
    }

    /// `GET /tickets/{id}` as JSON, or `None` when there is no such ticket.
    pub fn ticket(&self, id: &str) -> Option<Value> {
        let r = self.control("GET", &format!("/tickets/{id}"), None);
        match r.status {
            200 => Some(r.json()),
            404 => None,
            s => panic!(
                "ovirt-imageio: GET /tickets/{id} answered {s}: {}",
                r.text()
            ),
        }
    }

    /// Removes ticket `id`; asserts 204. The daemon cancels the ticket at
    /// once and answers when no request is using it any more.
    pub fn delete_ticket(&self, id: &str) {
        let r = self.control("DELETE", &format!("/tickets/{id}"), None);
        assert_eq!(
            r.status,
            204,
            "ovirt-imageio: removing ticket {id}: {}\n{}",
            r.text(),
            self.log()
        );
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Kills the daemon outright (SIGKILL), as a crashed host would lose it:
    /// established connections are reset.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the daemon is running");
        child.kill().expect("kill ovirt-imageio");
        let status = child.wait().expect("wait for ovirt-imageio");
        assert!(!status.success(), "killed ovirt-imageio exited {status}");
    }
}

impl Drop for Imageio {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The port of `remote.service listening on ('127.0.0.1', PORT)`.
fn listening_port(log: &str) -> Option<u16> {
    log.lines().rev().find_map(|l| {
        let rest = l
            .split("remote.service listening on ('127.0.0.1', ")
            .nth(1)?;
        rest.split(')').next()?.trim().parse().ok()
    })
}

/// The daemon started from the venv: its `ovirt-imageio` script beside the
/// venv Python, else that Python running the daemon's entry point.
fn daemon_command() -> Command {
    let python = server::python();
    let script = python.with_file_name("ovirt-imageio");
    if script.is_file() {
        Command::new(script)
    } else {
        let mut c = Command::new(python);
        c.args([
            "-c",
            "import sys; from ovirt_imageio._internal import server; sys.argv[0] = 'ovirt-imageio'; server.main()",
        ]);
        c
    }
}

/// Makes a CA and a server certificate it signs (for 127.0.0.1 and
/// localhost, not a CA itself) in `dir`; returns (CA certificate, server
/// key, server certificate).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    fs::create_dir_all(dir).expect("tls dir");
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(&[
        &["req", "-x509"],
        &ec[..],
        &["-nodes", "-days", "2", "-subj", "/CN=ovaio test CA"],
        &["-keyout", p(&ca_key), "-out", p(&ca)],
    ]);
    openssl(&[
        &["req", "-x509", "-CA", p(&ca), "-CAkey", p(&ca_key)],
        &ec[..],
        &["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"],
        &["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        &["-addext", "basicConstraints=critical,CA:FALSE"],
        &["-addext", "extendedKeyUsage=serverAuth"],
        &["-keyout", p(&key), "-out", p(&cert)],
    ]);
    (ca, key, cert)
}

fn openssl(parts: &[&[&str]]) {
    let args: Vec<&OsStr> = parts
        .iter()
        .flat_map(|p| p.iter())
        .map(OsStr::new)
        .collect();
    let out = Command::new("openssl")
        .args(&args)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed to make the ovirt-imageio certificates: {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}
