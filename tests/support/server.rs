//! A real `ovaio serve` for a test: started on an ephemeral loopback port
//! with its own state directory and storage root, stopped (SIGTERM) when
//! dropped. Control requests go through `curl --unix-socket`, data
//! requests through `curl` over HTTPS trusting the generated certificate
//! (or, byte for byte, through [`Server::tls`]), and the `ovirt_imageio`
//! client runs in the venv the test setup made.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use super::Work;

/// How long the server may take to print its start-up lines.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running server.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// The data API port.
    pub port: u16,
    /// The certificate clients must trust.
    pub cert: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// `http://ADDR` of the control API's loopback TCP listener, when
    /// `--control-listen` asked for one.
    pub control_tcp: Option<String>,
    /// The (canonical) storage root.
    pub root: PathBuf,
    /// The state directory.
    pub state: PathBuf,
    stderr: mpsc::Receiver<String>,
}

/// A response: status, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status; 0 when curl could not complete the request.
    pub status: u16,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header of this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Server {
    /// Starts a server whose state and storage root live in `work`.
    pub fn start(work: &Work) -> Server {
        Server::start_with(work, &[])
    }

    /// Like [`Server::start`], with extra `ovaio serve` arguments.
    pub fn start_with(work: &Work, extra: &[&str]) -> Server {
        Server::start_env(work, extra, &[])
    }

    /// Like [`Server::start_with`], with more environment variables. The
    /// state directory and storage root are those of `work`, so a server
    /// started again on the same `work` finds what the last one left.
    pub fn start_env(work: &Work, extra: &[&str], env: &[(&str, &OsStr)]) -> Server {
        let state = work.mkdir("state");
        let root = work.mkdir("storage");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ovaio"))
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--state-dir")
            .arg(&state)
            .arg("--root")
            .arg(&root)
            .args(extra)
            .env("RUST_LOG", "ovaio=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ovaio serve");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let done = line.contains("ready");
                lines.push(line);
                if done {
                    let _ = tx.send(lines.clone());
                }
            }
        });
        let lines = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let err: Vec<String> = err_rx.try_iter().collect();
                panic!("ovaio serve did not start:\n{}", err.join("\n"));
            }
        };
        let data = lines
            .iter()
            .find_map(|l| l.strip_prefix("ovaio serve: data API https://"))
            .expect("data API line");
        let addr = data.split('/').next().expect("address");
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let control_tcp = lines.iter().find_map(|l| {
            l.strip_prefix("ovaio serve: control API http://")
                .map(|a| format!("http://{}", a.trim_end_matches('/')))
        });
        Server {
            child: Some(child),
            base: format!("https://127.0.0.1:{port}"),
            port,
            control_tcp,
            cert: state.join("tls/server.crt"),
            socket: state.join("control.sock"),
            root: std::fs::canonicalize(&root).expect("canonical root"),
            state,
            stderr: err_rx,
        }
    }

    /// `base/images/{ticket}`.
    pub fn image_url(&self, ticket: &str) -> String {
        format!("{}/images/{ticket}", self.base)
    }

    /// `file://` URL of `name` in the storage root.
    pub fn file_url(&self, name: &str) -> String {
        format!("file://{}", self.root.join(name).display())
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
        curl(&args)
    }

    /// `PUT /tickets/{id}`, asserting 200.
    pub fn add_ticket(&self, ticket: &Value) {
        let id = ticket["uuid"].as_str().expect("uuid");
        let r = self.control("PUT", &format!("/tickets/{id}"), Some(ticket));
        assert_eq!(r.status, 200, "adding ticket: {}", r.text());
    }

    /// `GET /tickets/{id}` as JSON, asserting 200.
    pub fn ticket(&self, id: &str) -> Value {
        let r = self.control("GET", &format!("/tickets/{id}"), None);
        assert_eq!(r.status, 200, "getting ticket: {}", r.text());
        r.json()
    }

    /// Polls `GET /tickets/{id}` until its state is none of `running`,
    /// and returns the ticket.
    pub fn await_ticket(&self, id: &str, running: &[&str]) -> Value {
        super::poll(&format!("ticket {id} to leave {running:?}"), || {
            let t = self.ticket(id);
            (!running.contains(&t["state"].as_str().unwrap_or_default())).then_some(t)
        })
    }

    /// A data API request with curl; `extra` are more curl arguments
    /// (headers, `--data-binary @file`, `-T file`...).
    pub fn data(&self, method: &str, path: &str, extra: &[&str]) -> Reply {
        let mut args: Vec<String> = vec![
            "--cacert".into(),
            self.cert.display().to_string(),
            "-X".into(),
            method.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("{}{path}", self.base));
        curl(&args)
    }

    /// Runs a Python script with the venv interpreter (ovirt_imageio,
    /// selenium); returns (success, stdout+stderr).
    pub fn python(&self, script: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(python())
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("run python");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// A TLS connection to the data API with its handshake complete,
    /// trusting the server's certificate; reads give up after 30 s.
    pub fn tls(&self) -> TlsStream {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.cert).expect("open the certificate") {
            roots
                .add(c.expect("parse the certificate"))
                .expect("trust it");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("server name");
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("TLS client");
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        while tls.conn.wants_write() {
            tls.conn
                .write_tls(&mut tls.sock)
                .expect("finish the handshake");
        }
        tls
    }

    /// Sends SIGTERM, waits for the exit status and returns it with
    /// every log line not yet read.
    pub fn stop_with_log(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = child.wait().expect("wait for server");
        // The reader thread ends with the pipe; collect until it does.
        let mut lines = Vec::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(10)) {
            lines.push(l);
        }
        (status, lines)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (at most `limit`) for a log line containing `text` and
    /// returns it; lines before it are consumed.
    pub fn await_log(&self, text: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {text:?} within {limit:?}"),
            }
        }
    }

    /// Kills the server outright (SIGKILL): nothing it would do on a stop
    /// is done.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill the server");
        let status = child.wait().expect("wait for server");
        assert!(!status.success(), "killed server exited {status}");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().expect("wait for server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TLS connection from [`Server::tls`].
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Sends `request` (head and body, exactly these bytes) on `tls` and
/// reads one response; its body must carry a Content-Length.
pub fn exchange(tls: &mut TlsStream, request: &[u8]) -> Reply {
    tls.write_all(request).expect("send the request");
    tls.flush().expect("flush the request");
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tls.read(&mut buf).expect("read the response");
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    let mut body = got[head_end..].to_vec();
    while body.len() < len {
        let n = tls.read(&mut buf).expect("read the response body");
        assert!(n > 0, "connection closed inside the response body");
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(len);
    Reply {
        status,
        headers,
        body,
    }
}

/// The venv Python with ovirt_imageio and selenium: `$OVAIO_TEST_PYTHON`,
/// else `target/test-venv/bin/python` (made by `scripts/test.sh`).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("OVAIO_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh (it creates the venv with ovirt-imageio)",
        p.display()
    );
    p
}

/// Runs curl, returning the status, headers and body.
pub fn curl(args: &[String]) -> Reply {
    let dir = tempfile::tempdir().expect("tempdir");
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .arg("-sS")
        .arg("--max-time")
        .arg("120")
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .arg("-w")
        .arg("%{http_code}")
        .args(args)
        .output()
        .expect("run curl");
    let status: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(&headers) {
        let _ = f.read_to_string(&mut text);
    }
    // Only the last response's headers (after any 100 Continue).
    let last = text
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}
