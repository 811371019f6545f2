//! The data API's protective limits, seen from outside: TLS 1.2 minimum,
//! bounded request heads, a bounded number of connections, and clients
//! that complete a TLS handshake or send a head too slowly are cut off.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::Work;
use support::server::{Server, exchange};

/// Starts a server with a configuration file of `toml`.
fn start_with_config(work: &Work, toml: &str) -> Server {
    let conf = work.path("serve.toml");
    std::fs::write(&conf, toml).expect("write config");
    Server::start_with(work, &["--config", conf.to_str().expect("utf-8 path")])
}

/// curl's exit status and HTTP code for a GET of /info/ with extra flags.
fn curl_info(s: &Server, extra: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .arg("-sS")
        .arg("--cacert")
        .arg(&s.cert)
        .args(extra)
        .arg("-o")
        .arg("/dev/null")
        .arg("-w")
        .arg("%{http_code}")
        .arg(format!("{}/info/", s.base))
        .output()
        .expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn tls_below_1_2_is_refused_and_1_2_and_1_3_work() {
    let work = Work::new();
    let s = Server::start(&work);
    let (ok, code) = curl_info(&s, &["--tlsv1.2", "--tls-max", "1.2"]);
    assert!(ok && code == "200", "TLS 1.2: {ok} {code}");
    let (ok, code) = curl_info(&s, &["--tlsv1.3"]);
    assert!(ok && code == "200", "TLS 1.3: {ok} {code}");
    // OpenSSL may refuse to offer TLS 1.1 itself at its default security
    // level; either way no TLS 1.1 session may be established.
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", s.port))
        .args(["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "TLS 1.1 handshake succeeded:\n{text}"
    );
    assert!(
        text.contains("Cipher is (NONE)"),
        "a TLS 1.1 cipher was negotiated:\n{text}"
    );
}

#[test]
fn an_oversized_request_head_is_refused() {
    let work = Work::new();
    let s = start_with_config(&work, "[data]\nmax_header_bytes = 8192\n");
    let big = format!("x-filler: {}", "a".repeat(20_000));
    let (_, code) = curl_info(&s, &["-H", &big]);
    assert_eq!(code, "431", "a 20 KB header must be refused");
    let (ok, code) = curl_info(&s, &["-H", "x-small: 1"]);
    assert!(ok && code == "200", "normal requests still work: {code}");
}

/// A raw TCP connection that opened but never starts TLS.
fn idle_tcp(s: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", s.port)).expect("connect")
}

#[test]
fn connections_beyond_the_limit_wait_until_one_closes() {
    let work = Work::new();
    let s = start_with_config(&work, "[data]\nmax_connections = 1\nheader_timeout = 60\n");
    // A slot is taken once the handshake is done; being answered proves
    // the holder has it.
    let mut holder = s.tls();
    let r = exchange(
        &mut holder,
        b"GET /info/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The only slot is taken: a request cannot be served in 2 s.
    let (ok, code) = curl_info(&s, &["--max-time", "2"]);
    assert!(!ok && code == "000", "served past the limit: {ok} {code}");
    drop(holder);
    let (ok, code) = curl_info(&s, &["--max-time", "20"]);
    assert!(ok && code == "200", "served once the slot is free: {code}");
}

#[test]
fn a_client_too_slow_to_send_its_head_is_disconnected() {
    let work = Work::new();
    let s = start_with_config(
        &work,
        "[data]\ntls_handshake_timeout = 1\nheader_timeout = 2\n",
    );
    // A handshake but no request head: closed after the header timeout.
    let mut tls = s.tls();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the connection");
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "closed only after {waited:?}"
    );
    // No TLS handshake at all: closed after the handshake timeout.
    let mut c = idle_tcp(&s);
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the connection");
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "closed only after {waited:?}"
    );
    let _ = c.write_all(b"late");
}

#[test]
fn a_client_that_stops_reading_a_download_is_dropped() {
    let work = Work::new();
    let s = start_with_config(&work, "[data]\nwrite_timeout = 1\n");
    let vol = s.root.join("big.raw");
    let f = std::fs::File::create(&vol).expect("create volume");
    f.set_len(256 << 20).expect("size volume");
    s.add_ticket(&serde_json::json!({
        "uuid": "dl-1", "size": 256u64 << 20, "url": s.file_url("big.raw"),
        "ops": ["read"], "timeout": 300, "inactivity_timeout": 0,
    }));
    // A client that asks for the whole volume and then reads nothing,
    // keeping its socket open until the server gives up.
    let script = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[1])
raw = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s = ctx.wrap_socket(raw, server_hostname="localhost")
s.sendall(b"GET /images/dl-1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
print("sent", flush=True)
time.sleep(60)
"#;
    let mut client = Command::new(support::server::python())
        .arg("-c")
        .arg(script)
        .arg(&s.cert)
        .arg(s.port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start client");
    let t0 = Instant::now();
    let mut saw_active = false;
    let mut log = String::new();
    loop {
        let t = s.ticket("dl-1");
        let conns = t["connections"].as_u64().unwrap_or(0);
        log.push_str(&s.log());
        if conns > 0 {
            saw_active = true;
        } else if saw_active && log.contains("accepted no data") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the stalled download still holds the ticket: {t}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = client.kill();
    let _ = client.wait();
}
