//! `GET /metrics` of a real `ovaio serve`, scraped over the control
//! socket around each thing a client does: an image upload and a ranged
//! download with curl, an OVA uploaded into an `ova-import` ticket and
//! downloaded from an `ova-export` ticket, a refused ticket, failed
//! uploads, an import job, a socket that never speaks TLS. Every series
//! that moves must move by exactly what happened (bytes to the byte), and
//! nothing else may move. `promtool check metrics` (Prometheus's own
//! linter) judges the exposition.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Work;
use support::image::{MAIN, ODD, Source};
use support::ova::{self, Manifest, Ova};
use support::server::{Reply, Server, curl};

/// How long an asynchronous change (a closed connection, a failed
/// handshake) may take to show.
const POLL_LIMIT: Duration = Duration::from_secs(20);

/// One scrape: every sample line, `name{labels}` → value.
type Samples = BTreeMap<String, f64>;

/// `GET /metrics` through the control socket, asserting a 200 in the
/// Prometheus text format.
fn scrape(s: &Server) -> Samples {
    let r = s.control("GET", "/metrics", None);
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{:?}",
        r.headers
    );
    parse(&r.text())
}

fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(out.insert(series.to_owned(), v).is_none(), "{series} twice");
    }
    out
}

/// The value of a series that must exist.
fn get(m: &Samples, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in the scrape"))
}

/// The series that changed from `a` to `b`, with their changes. Histogram
/// buckets and sums (durations vary) and the connection gauges (the
/// scrape itself is a control connection; a data connection closes a
/// moment after its client) are left out: [`settle`] and the tests look
/// at them.
fn delta(a: &Samples, b: &Samples) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, vb) in b {
        if k.contains("_bucket{") || k.contains("_sum{") || k.starts_with("ovaio_connections{") {
            continue;
        }
        let va = a.get(k).copied().unwrap_or(0.0);
        if va != *vb {
            out.insert(k.clone(), vb - va);
        }
    }
    for k in a.keys() {
        assert!(b.contains_key(k), "series {k} disappeared");
    }
    out
}

/// `{kind="K",op="O"}`.
fn ko(kind: &str, op: &str) -> String {
    format!("{{kind=\"{kind}\",op=\"{op}\"}}")
}

/// `{kind="K",op="O",reason="R"}`.
fn kor(kind: &str, op: &str, reason: &str) -> String {
    format!("{{kind=\"{kind}\",op=\"{op}\",reason=\"{reason}\"}}")
}

/// What one successful transfer of `kind`/`op` moving `bytes` changes.
fn transfer_ok(kind: &str, op: &str, bytes_metric: &str, bytes: u64) -> Vec<(String, f64)> {
    let l = ko(kind, op);
    let mut v = vec![
        (format!("ovaio_transfers_started_total{l}"), 1.0),
        (format!("ovaio_transfers_succeeded_total{l}"), 1.0),
        (format!("ovaio_transfer_duration_seconds_count{l}"), 1.0),
    ];
    if bytes > 0 {
        v.push((format!("{bytes_metric}{l}"), bytes as f64));
    }
    v
}

fn requests(method: &str, class: &str, n: f64) -> (String, f64) {
    (
        format!("ovaio_data_requests_total{{method=\"{method}\",status=\"{class}\"}}"),
        n,
    )
}

/// Asserts that exactly `want` changed from `before` to `after`.
fn assert_delta(what: &str, before: &Samples, after: &Samples, want: Vec<(String, f64)>) {
    let got = delta(before, after);
    let want: BTreeMap<String, f64> = want.into_iter().collect();
    assert_eq!(got, want, "{what}: the series that changed");
}

/// Polls the metrics until `done` holds, for at most [`POLL_LIMIT`].
fn poll(s: &Server, what: &str, done: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + POLL_LIMIT;
    loop {
        let m = scrape(s);
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {POLL_LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until no data connection is open and no transfer is active, and
/// returns that scrape.
fn settle(s: &Server) -> Samples {
    poll(s, "connections closed and transfers ended", |m| {
        get(m, "ovaio_connections{api=\"data\"}") == 0.0
            && m.iter()
                .filter(|(k, _)| k.starts_with("ovaio_transfers_active{"))
                .all(|(_, v)| *v == 0.0)
    })
}

/// `promtool check metrics` on `text`: it must find nothing to say.
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (scripts/test.sh installs it: Debian's prometheus package)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}\n{said}\n--- exposition ---\n{text}",
        out.status
    );
}

/// A file of `len` bytes that is not all zeros.
fn pattern_file(path: &Path, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
    std::fs::write(path, data).expect("write pattern");
}

fn put_file(s: &Server, id: &str, file: &Path) -> Reply {
    s.data(
        "PUT",
        &format!("/images/{id}"),
        &[
            "-H",
            "content-type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    )
}

#[test]
fn metrics_count_what_clients_do() {
    let w = Work::new();
    let s = Server::start(&w);
    let m0 = settle(&s);
    promtool(&s.control("GET", "/metrics", None).text());

    // An image upload of N bytes, not a whole number of pages (the
    // volume writer holds an unaligned tail until the end).
    const N: u64 = 3 * 1024 * 1024 + 12_345;
    let src = w.path("up.bin");
    pattern_file(&src, N as usize);
    s.add_ticket(&json!({
        "uuid": "img", "size": N + 4096, "url": s.file_url("img.raw"),
        "ops": ["read", "write"], "timeout": 120,
    }));
    let r = put_file(&s, "img", &src);
    assert_eq!(r.status, 200, "upload: {}", r.text());
    let m1 = settle(&s);
    let mut want = transfer_ok("image", "write", "ovaio_received_bytes_total", N);
    want.push(requests("PUT", "2xx", 1.0));
    assert_delta("image upload", &m0, &m1, want);

    // A ranged download of M bytes.
    const M: u64 = 1_000_001;
    let r = s.data(
        "GET",
        "/images/img",
        &["-H", &format!("Range: bytes=777-{}", 777 + M - 1)],
    );
    assert_eq!(r.status, 206, "download: {}", r.text());
    assert_eq!(r.body.len() as u64, M);
    let m2 = settle(&s);
    let mut want = transfer_ok("image", "read", "ovaio_sent_bytes_total", M);
    want.push(requests("GET", "2xx", 1.0));
    assert_delta("image download", &m1, &m2, want);

    // An OVA upload into an ova-import ticket.
    let p = ova::prepare(w.root(), "a", &MAIN, Source::Qcow2V3);
    let package = Ova::new()
        .disk(p.disk(1, "disk1.qcow2"))
        .manifest(Manifest::Sha256)
        .build(w.root(), "in.ova");
    let package_len = support::file_len(&package);
    s.add_ticket(&json!({
        "uuid": "imp", "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "ova": {"disks": [{"href": "disk1.qcow2", "url": s.file_url("d1.raw"), "format": "raw"}]},
    }));
    let ova_arg = package.display().to_string();
    let r = s.data("PUT", "/images/imp", &["-T", &ova_arg]);
    assert_eq!(r.status, 200, "OVA upload: {}\n{}", r.text(), s.log());
    let m3 = settle(&s);
    let mut want = transfer_ok(
        "ova-import",
        "write",
        "ovaio_received_bytes_total",
        package_len,
    );
    want.push(requests("PUT", "2xx", 1.0));
    assert_delta("OVA upload", &m2, &m3, want);

    // An OVA download from an ova-export ticket of what was imported.
    s.add_ticket(&json!({
        "uuid": "exp", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "vm", "disks": [{"href": "disk1.qcow2", "url": s.file_url("d1.raw")}]},
    }));
    let r = s.data("GET", "/images/exp", &[]);
    assert_eq!(r.status, 200, "OVA download: {}", r.text());
    let sent = r.body.len() as u64;
    assert_eq!(
        r.header("content-length").and_then(|v| v.parse().ok()),
        Some(sent)
    );
    let m4 = settle(&s);
    let mut want = transfer_ok("ova-export", "read", "ovaio_sent_bytes_total", sent);
    want.push(requests("GET", "2xx", 1.0));
    assert_delta("OVA download", &m3, &m4, want);

    // A ticket nobody installed: 403, a request but no transfer.
    let r = s.data("GET", "/images/nosuchticket", &[]);
    assert_eq!(r.status, 403, "{}", r.text());
    let m5 = settle(&s);
    assert_delta("403", &m4, &m5, vec![requests("GET", "4xx", 1.0)]);

    // A failed upload: the manifest lies about the disk. The whole
    // package is consumed before the manifest, last, refuses it.
    let b = ova::prepare(w.root(), "b", &ODD, Source::Raw);
    let mut liar = Ova::new().disk(b.disk(1, "disk1.img"));
    let text = liar.manifest_for(Manifest::Sha256, &liar.ovf());
    let good = Manifest::Sha256.digest_file(&b.file);
    let bad = format!(
        "{}{}",
        &good[..63],
        if good.ends_with('0') { '1' } else { '0' }
    );
    liar.manifest_text = Some(text.replace(&good, &bad));
    let liar = liar.manifest(Manifest::Sha256).build(w.root(), "liar.ova");
    s.add_ticket(&json!({
        "uuid": "liar", "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "ova": {"disks": [{"href": "disk1.img", "url": s.file_url("liar.raw")}]},
    }));
    let liar_arg = liar.display().to_string();
    let r = s.data("PUT", "/images/liar", &["-T", &liar_arg]);
    assert_eq!(r.status, 400, "lying manifest: {}", r.text());
    let m6 = settle(&s);
    let l = ko("ova-import", "write");
    assert_delta(
        "OVA upload refused by its manifest",
        &m5,
        &m6,
        vec![
            (format!("ovaio_transfers_started_total{l}"), 1.0),
            (
                format!(
                    "ovaio_transfers_failed_total{}",
                    kor("ova-import", "write", "integrity")
                ),
                1.0,
            ),
            (format!("ovaio_transfer_duration_seconds_count{l}"), 1.0),
            (
                format!("ovaio_received_bytes_total{l}"),
                support::file_len(&liar) as f64,
            ),
            ("ovaio_digest_mismatches_total".to_owned(), 1.0),
            requests("PUT", "4xx", 1.0),
        ],
    );

    // A failed image upload: the body passes the end of the image. The
    // Content-Length says so first: nothing is written.
    let big = w.path("big.bin");
    pattern_file(&big, (N + 4096 + 1) as usize);
    let r = put_file(&s, "img", &big);
    assert_eq!(r.status, 416, "{}", r.text());
    let m7 = settle(&s);
    let l = ko("image", "write");
    assert_delta(
        "image upload past the end",
        &m6,
        &m7,
        vec![
            (format!("ovaio_transfers_started_total{l}"), 1.0),
            (
                format!(
                    "ovaio_transfers_failed_total{}",
                    kor("image", "write", "invalid_input")
                ),
                1.0,
            ),
            (format!("ovaio_transfer_duration_seconds_count{l}"), 1.0),
            requests("PUT", "4xx", 1.0),
        ],
    );

    // Zeroing counts the bytes zeroed.
    let r = s.data(
        "PATCH",
        "/images/img",
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            r#"{"op": "zero", "offset": 4096, "size": 65536}"#,
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m8 = settle(&s);
    let mut want = transfer_ok("image", "zero", "ovaio_zeroed_bytes_total", 65536);
    want.push(requests("PATCH", "2xx", 1.0));
    assert_delta("zero", &m7, &m8, want);

    // An import job of the package, from the storage root.
    std::fs::copy(&package, s.root.join("job.ova")).expect("copy the package");
    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({"type": "import", "source": s.file_url("job.ova"),
            "disks": [{"href": "disk1.qcow2", "url": s.file_url("job.raw")}]})),
    );
    assert_eq!(r.status, 201, "POST /jobs: {}", r.text());
    let m9 = poll(&s, "the job to end", |m| {
        get(m, "ovaio_jobs_succeeded_total{type=\"import\"}") >= 1.0
    });
    assert_delta(
        "import job",
        &m8,
        &m9,
        vec![
            ("ovaio_jobs_started_total{type=\"import\"}".to_owned(), 1.0),
            (
                "ovaio_jobs_succeeded_total{type=\"import\"}".to_owned(),
                1.0,
            ),
        ],
    );

    // Every histogram's +Inf bucket holds every observation.
    let mut histograms = 0;
    for (k, v) in &m9 {
        let Some(labels) = k.strip_prefix("ovaio_transfer_duration_seconds_count{") else {
            continue;
        };
        let pairs: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
        let inf: Vec<f64> = m9
            .iter()
            .filter(|(b, _)| {
                b.starts_with("ovaio_transfer_duration_seconds_bucket{")
                    && b.contains("le=\"+Inf\"")
                    && pairs.iter().all(|p| b.contains(p))
            })
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(inf, [*v], "+Inf bucket of {k}");
        histograms += 1;
    }
    assert_eq!(histograms, 6, "one histogram per kind and op");
    promtool(&s.control("GET", "/metrics", None).text());
}

/// Sockets that never complete a TLS handshake are counted, and an open
/// data connection shows in the gauge until it closes.
#[test]
fn handshake_failures_and_connections() {
    let w = Work::new();
    let s = Server::start(&w);
    let m0 = settle(&s);

    // Plain HTTP to the HTTPS port: the handshake fails.
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    tcp.set_read_timeout(Some(POLL_LIMIT)).expect("timeout");
    tcp.write_all(b"GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink);
    let m1 = poll(&s, "the failed handshake", |m| {
        get(m, "ovaio_tls_handshake_failures_total{reason=\"error\"}") >= 1.0
    });
    assert_delta(
        "plain HTTP on the TLS port",
        &m0,
        &m1,
        vec![(
            "ovaio_tls_handshake_failures_total{reason=\"error\"}".to_owned(),
            1.0,
        )],
    );

    // A TLS connection that stays open is one data connection.
    let tls = s.tls();
    poll(&s, "one open data connection", |m| {
        get(m, "ovaio_connections{api=\"data\"}") == 1.0
    });
    drop(tls);
    let m2 = settle(&s);
    assert_delta("a connection opened and closed", &m1, &m2, vec![]);
}

/// `/metrics` is served on the loopback control listener too, in
/// OpenMetrics when asked; never on the public data port.
#[test]
fn metrics_are_on_the_control_api_only() {
    let w = Work::new();
    let s = Server::start_with(&w, &["--control-listen", "127.0.0.1:0"]);
    let tcp = s
        .control_tcp
        .clone()
        .expect("the control API's TCP address in the start-up lines");

    let r = curl(&[format!("{tcp}/metrics")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text()
            .contains("# TYPE ovaio_received_bytes_total counter"),
        "{}",
        r.text()
    );
    promtool(&r.text());

    let r = curl(&[
        "-H".into(),
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5".into(),
        format!("{tcp}/metrics"),
    ]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE ovaio_received_bytes counter")
            && text.contains("# UNIT ovaio_received_bytes bytes"),
        "{text}"
    );
    // A quality of zero refuses OpenMetrics.
    let r = curl(&[
        "-H".into(),
        "Accept: application/openmetrics-text; q=0, text/plain".into(),
        format!("{tcp}/metrics"),
    ]);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.headers
    );

    // The data port has no such resource, for anyone.
    let r = s.data("GET", "/metrics", &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.control("POST", "/metrics", Some(&Value::Null));
    assert_eq!(r.status, 405, "{}", r.text());
}
