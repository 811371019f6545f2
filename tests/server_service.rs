//! `ovaio serve` as a system service: the shipped systemd unit judged by
//! `systemd-analyze` (and its user by `systemd-sysusers`), the notify
//! protocol spoken to a datagram socket the test listens on, SIGHUP
//! reloading the certificate (judged by `openssl s_client`) while an
//! upload goes on, and JSON log lines.

mod support;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::Work;
use support::poll;
use support::server::Server;

/// How long the server may take to answer a signal.
const SIGNAL_LIMIT: Duration = Duration::from_secs(20);

fn dist(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(name)
}

/// Runs `program` with `args`; (success, stdout, stderr). A missing
/// program fails the test: it is the oracle.
fn run(program: &str, args: &[&OsStr]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed for this test (scripts/test.sh installs it): {e}")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shipped unit with ExecStart pointing at the binary under test:
/// `systemd-analyze verify` checks that the command exists.
fn unit_for_test(w: &Work) -> PathBuf {
    let unit = std::fs::read_to_string(dist("ovaio.service")).expect("read the unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/ovaio serve --config /etc/ovaio/ovaio.toml"),
        "{unit}"
    );
    let p = w.path("ovaio.service");
    std::fs::write(
        &p,
        unit.replace("/usr/bin/ovaio", env!("CARGO_BIN_EXE_ovaio")),
    )
    .expect("write the unit");
    p
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let w = Work::new();
    let unit = unit_for_test(&w);
    let (ok, out, err) = run(
        "systemd-analyze",
        &["verify".as_ref(), "--man=no".as_ref(), unit.as_os_str()],
    );
    // verify exits 0 on an unknown key, but says so.
    assert!(ok && err.trim().is_empty(), "verify failed:\n{out}{err}");

    // The check bites: a misspelt key is reported.
    let bad = w.path("bad.service");
    let text = std::fs::read_to_string(&unit).expect("read");
    std::fs::write(&bad, text.replace("NoNewPrivileges=", "NoNewPrivilege=")).expect("write");
    let (_, _, err) = run(
        "systemd-analyze",
        &["verify".as_ref(), "--man=no".as_ref(), bad.as_os_str()],
    );
    assert!(err.contains("NoNewPrivilege"), "{err}");
}

#[test]
fn the_unit_is_sandboxed() {
    let w = Work::new();
    let unit = unit_for_test(&w);
    let (ok, out, err) = run(
        "systemd-analyze",
        &[
            "security".as_ref(),
            "--offline=yes".as_ref(),
            unit.as_os_str(),
        ],
    );
    assert!(ok, "{out}{err}");
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for ovaio.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    // systemd rates 0-10; below 2 is its best band but one ("OK").
    assert!(score <= 2.0, "exposure {score}:\n{out}");
    for (directive, says) in [
        ("ProtectSystem=", "strict read-only"),
        ("NoNewPrivileges=", ""),
        ("PrivateTmp=", ""),
        ("ProtectHome=", ""),
        ("CapabilityBoundingSet=~CAP_SYS_ADMIN", ""),
        ("CapabilityBoundingSet=~CAP_(DAC_*", ""),
        ("RestrictAddressFamilies=~AF_PACKET", ""),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(directive))
            .unwrap_or_else(|| panic!("{directive} not rated:\n{out}"));
        assert!(line.starts_with('✓') && line.contains(says), "{line}");
    }
}

#[test]
fn sysusers_creates_the_service_user() {
    let w = Work::new();
    let root = w.mkdir("root/etc");
    let root = root.parent().expect("root");
    let (ok, out, err) = run(
        "systemd-sysusers",
        &[
            format!("--root={}", root.display()).as_ref(),
            dist("ovaio.sysusers").as_os_str(),
        ],
    );
    assert!(ok, "{out}{err}");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("ovaio:"))
        .unwrap_or_else(|| panic!("no ovaio user in:\n{passwd}"));
    let fields: Vec<&str> = line.split(':').collect();
    assert_eq!(fields[5], "/var/lib/ovaio", "{line}");
    assert!(fields[6].ends_with("nologin"), "{line}");
    let unit = std::fs::read_to_string(dist("ovaio.service")).expect("unit");
    assert!(unit.contains("\nUser=ovaio\n") && unit.contains("\nGroup=ovaio\n"));
}

/// Datagrams sent to a notify socket.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(w: &Work) -> NotifySocket {
        let path = w.path("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket { sock, path }
    }

    /// The next message, waiting at most [`SIGNAL_LIMIT`].
    fn next(&self) -> String {
        self.sock
            .set_read_timeout(Some(SIGNAL_LIMIT))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        let n = self
            .sock
            .recv(&mut buf)
            .expect("a notify message within the limit");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn lines(msg: &str) -> Vec<&str> {
    msg.lines().collect()
}

#[test]
fn notifies_ready_reloading_and_stopping() {
    let w = Work::new();
    let notify = NotifySocket::bind(&w);
    let s = Server::start_env(&w, &[], &[("NOTIFY_SOCKET", notify.path.as_os_str())]);
    let ready = notify.next();
    assert!(lines(&ready).contains(&"READY=1"), "{ready:?}");
    assert!(
        lines(&ready)
            .contains(&format!("STATUS=serving https://127.0.0.1:{}/images/", s.port).as_str()),
        "{ready:?}"
    );
    // READY=1 comes once both APIs answer.
    assert_eq!(s.data("GET", "/info/", &[]).status, 200);
    assert_eq!(s.control("GET", "/tickets", None).status, 200);

    s.signal("HUP");
    let reloading = notify.next();
    assert!(lines(&reloading).contains(&"RELOADING=1"), "{reloading:?}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let again = notify.next();
    assert!(lines(&again).contains(&"READY=1"), "{again:?}");
    assert!(again.contains("certificate reloaded"), "{again:?}");

    s.signal("TERM");
    let stopping = notify.next();
    assert!(lines(&stopping).contains(&"STOPPING=1"), "{stopping:?}");
    let status = s.stop();
    assert!(status.success(), "exit status {status}");
}

/// The SHA-256 fingerprint of a PEM certificate, as openssl prints it.
fn fingerprint_of_pem(pem: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl is needed for this test (scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(pem)
        .expect("feed openssl");
    let out = child.wait_with_output().expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains('='), "{text}");
    text.trim().to_owned()
}

/// The certificate a fresh TLS client is shown by the server, through
/// `openssl s_client`.
fn presented(s: &Server) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", s.port))
        .args(["-servername", "localhost", "-showcerts"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl is needed for this test (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from s_client:\n{text}"));
    let end = text[begin..]
        .find("-----END CERTIFICATE-----")
        .map(|i| begin + i + "-----END CERTIFICATE-----".len())
        .expect("end of the certificate");
    fingerprint_of_pem(&text.as_bytes()[begin..end])
}

/// A new self-signed pair for localhost, made by openssl.
fn new_pair(w: &Work, name: &str) -> (PathBuf, PathBuf) {
    let cert = w.path(&format!("{name}.crt"));
    let key = w.path(&format!("{name}.key"));
    let (ok, out, err) = run(
        "openssl",
        &[
            "req".as_ref(),
            "-x509".as_ref(),
            "-newkey".as_ref(),
            "ec".as_ref(),
            "-pkeyopt".as_ref(),
            "ec_paramgen_curve:P-256".as_ref(),
            "-nodes".as_ref(),
            "-days".as_ref(),
            "2".as_ref(),
            "-subj".as_ref(),
            "/CN=localhost".as_ref(),
            "-addext".as_ref(),
            "subjectAltName=DNS:localhost,IP:127.0.0.1".as_ref(),
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            cert.as_os_str(),
        ],
    );
    assert!(ok, "openssl req failed:\n{out}{err}");
    (cert, key)
}

#[test]
fn sighup_reloads_the_certificate_while_an_upload_goes_on() {
    let w = Work::new();
    let s = Server::start(&w);
    let old = fingerprint_of_pem(&std::fs::read(&s.cert).expect("read the certificate"));
    assert_eq!(presented(&s), old);

    // An upload starts with the old certificate and sends half.
    let ova =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.ova")).expect("demo OVA");
    s.add_ticket(&json!({
        "uuid": "up-1", "kind": "ova-import", "ops": ["write"], "timeout": 300,
        "inactivity_timeout": 0,
        "ova": {"disks": [{"href": "demo-disk1.qcow2", "url": s.file_url("d1.qcow2"), "format": "qcow2"}]},
    }));
    let old_cert = w.path("old.crt");
    std::fs::copy(&s.cert, &old_cert).expect("keep the old certificate");
    let mut curl = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&old_cert)
        .args([
            "-T",
            "-",
            "-H",
            "Transfer-Encoding: chunked",
            "-w",
            "%{http_code}",
        ])
        .arg(s.image_url("up-1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start curl");
    let mut stdin = curl.stdin.take().expect("stdin");
    let half = ova.len() / 2;
    stdin.write_all(&ova[..half]).expect("send half");
    stdin.flush().expect("flush");
    poll("the first half to arrive", || {
        (s.ticket("up-1")["transferred"].as_u64().unwrap_or(0) >= half as u64).then_some(())
    });

    // New files in place, then SIGHUP: new handshakes see the new one.
    let (cert, key) = new_pair(&w, "next");
    let new = fingerprint_of_pem(&std::fs::read(&cert).expect("read"));
    assert_ne!(new, old);
    std::fs::copy(&cert, &s.cert).expect("install the certificate");
    std::fs::copy(&key, s.state.join("tls/server.key")).expect("install the key");
    s.signal("HUP");
    let line = s.await_log("certificate reloaded", SIGNAL_LIMIT);
    let hex = new
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .replace(':', "")
        .to_ascii_lowercase();
    assert!(line.contains(&hex), "{line} does not name {hex}");
    assert_eq!(presented(&s), new);
    let info = s.data("GET", "/info/", &[]);
    assert_eq!(info.status, 200, "curl trusting the new certificate");

    // The upload that began before the reload completes.
    stdin.write_all(&ova[half..]).expect("send the rest");
    drop(stdin);
    let out = curl.wait_with_output().expect("curl");
    let code = String::from_utf8_lossy(&out.stdout);
    assert!(
        code.ends_with("200"),
        "upload across the reload: {code}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.ticket("up-1")["state"], "succeeded");
    assert!(s.root.join("d1.qcow2").is_file());

    // A key that is not one is refused; the certificate in use stays.
    std::fs::write(s.state.join("tls/server.key"), b"not a key\n").expect("write");
    s.signal("HUP");
    let line = s.await_log("certificate not reloaded", SIGNAL_LIMIT);
    assert!(line.contains("no private key"), "{line}");
    assert_eq!(presented(&s), new);
    let status = s.stop();
    assert!(status.success(), "exit status {status}");
}

/// Checks one JSON log line; true when it was logged in a ticket's span.
fn check_json_line(line: &str) -> bool {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
    assert!(v["level"].is_string(), "no level: {line}");
    assert!(v["timestamp"].is_string(), "no timestamp: {line}");
    assert!(v["fields"]["message"].is_string(), "no message: {line}");
    match v["spans"].as_array() {
        Some(spans) => spans.iter().any(|sp| {
            sp["name"] == "ticket" && sp["id"] == "t-json" && sp["transfer"] == "tr-json"
        }),
        None => false,
    }
}

/// Runs a short server session: a ticket, a request on it, a stop.
fn short_run(s: Server) -> Vec<String> {
    s.add_ticket(&json!({
        "uuid": "t-json", "size": 1024, "url": s.file_url("a.raw"),
        "ops": ["write"], "timeout": 60, "transfer_id": "tr-json",
    }));
    let r = s.data("PUT", "/images/t-json", &["--data-binary", "0123456789"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let (status, lines) = s.stop_with_log();
    assert!(status.success(), "exit status {status}");
    assert!(lines.len() >= 4, "{lines:?}");
    lines
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let w = Work::new();
    let lines = short_run(Server::start_with(&w, &["--log-format", "json"]));
    let in_span = lines.iter().filter(|l| check_json_line(l)).count();
    assert!(in_span > 0, "no line in the ticket's span:\n{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"ticket added\"")),
        "{lines:#?}"
    );

    // The same from the configuration file.
    let config = w.path("serve.toml");
    std::fs::write(&config, "[log]\nformat = \"json\"\n").expect("write the config");
    let w2 = Work::new();
    let lines = short_run(Server::start_with(
        &w2,
        &["--config", config.to_str().expect("utf-8 path")],
    ));
    assert!(lines.iter().filter(|l| check_json_line(l)).count() > 0);

    // Text stays the default.
    let w3 = Work::new();
    let lines = short_run(Server::start(&w3));
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{lines:#?}"
    );
}
