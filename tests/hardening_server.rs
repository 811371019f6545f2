//! Regression tests for the data API under hostile clients, against a real
//! `ovaio serve`: an `ova-import` ticket whose transfer has ended takes no
//! further upload, its `size` bounds the body, transfer codings other
//! than `chunked` are refused, and sockets that never start TLS do not
//! keep a real client from being served.

mod support;

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::image::{self, MAIN, ODD, SMALL, Source, Target};
use support::ova::{self, Manifest, Ova, Prepared};
use support::server::{Reply, Server, exchange};
use support::{Work, assert_absent, assert_dir_empty};

/// Starts a server with a configuration file of `toml`.
fn start_with_config(work: &Work, toml: &str) -> Server {
    let conf = work.path("serve.toml");
    fs::write(&conf, toml).expect("write config");
    Server::start_with(work, &["--config", conf.to_str().expect("utf-8 path")])
}

/// A one-disk OVA of `layout` (raw entry, SHA-256 manifest) as
/// `dir/<name>`.
fn one_disk_ova(w: &Work, stem: &str, layout: &image::Layout, name: &str) -> (PathBuf, Prepared) {
    let p = ova::prepare(w.root(), stem, layout, Source::Raw);
    let path = Ova::new()
        .disk(p.disk(1, "disk1.img"))
        .manifest(Manifest::Sha256)
        .build(w.root(), name);
    (path, p)
}

/// An `ova-import` ticket sending `disk1.img` to `target` (raw) in the
/// root, with more ticket fields from `extra`.
fn import_ticket(s: &Server, id: &str, target: &str, extra: &Value) {
    let mut t = json!({
        "uuid": id, "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "ova": {"disks": [{"href": "disk1.img", "url": s.file_url(target), "format": "raw"}]},
    });
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            t.insert(k.clone(), v.clone());
        }
    }
    s.add_ticket(&t);
}

/// `PUT /images/{id}` of the file with a Content-Length.
fn upload(s: &Server, id: &str, file: &Path) -> Reply {
    let f = file.display().to_string();
    s.data("PUT", &format!("/images/{id}"), &["-T", &f])
}

/// `PUT /images/{id}` of the file, chunked.
fn upload_chunked(s: &Server, id: &str, file: &Path) -> Reply {
    let f = file.display().to_string();
    s.data(
        "PUT",
        &format!("/images/{id}"),
        &["-H", "Transfer-Encoding: chunked", "-T", &f],
    )
}

/// Every name in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// What identifies a file's version: inode, modification time, content.
fn fingerprint(path: &Path) -> (u64, i64, i64, Vec<u8>) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let data = fs::read(path).expect("read the file");
    (m.ino(), m.mtime(), m.mtime_nsec(), data)
}

/// The state of every disk record of a ticket.
fn disk_states(t: &Value) -> Vec<String> {
    t["disks"]
        .as_array()
        .expect("ticket disks")
        .iter()
        .map(|d| d["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// An ended transfer is final.

/// A second upload to a succeeded `ova-import` ticket, of another
/// package, gets 409 naming the state; the committed target keeps its
/// inode, time and bytes, and the ticket stays succeeded.
#[test]
fn d07_succeeded_ova_import_ticket_refuses_new_upload() {
    let w = Work::new();
    let s = Server::start(&w);
    let (first, p) = one_disk_ova(&w, "a", &SMALL, "first.ova");
    let (second, _) = one_disk_ova(&w, "b", &ODD, "second.ova");
    import_ticket(&s, "done", "d1.raw", &json!({}));

    let r = upload(&s, "done", &first);
    assert_eq!(r.status, 200, "first upload: {}\n{}", r.text(), s.log());
    let target = s.root.join("d1.raw");
    image::assert_target(&p.raw, &target, Target::Raw, p.capacity);
    let before = s.ticket("done");
    assert_eq!(before["state"], "succeeded", "{before}");
    let committed = fingerprint(&target);

    for (how, r) in [
        ("with a Content-Length", upload(&s, "done", &second)),
        ("chunked", upload_chunked(&s, "done", &second)),
    ] {
        assert_eq!(r.status, 409, "{how}: {}", r.text());
        assert!(
            r.text().contains("succeeded"),
            "{how}: the refusal should name the state: {}",
            r.text()
        );
        let t = s.ticket("done");
        assert_eq!(t["state"], "succeeded", "{how}: {t}");
        assert!(t.get("error").is_none(), "{how}: {t}");
        assert_eq!(disk_states(&t), ["succeeded"], "{how}: {t}");
        assert_eq!(t["transferred"], before["transferred"], "{how}: {t}");
        assert!(
            fingerprint(&target) == committed,
            "{how}: the committed target was touched"
        );
        assert_eq!(names_in(&s.root), ["d1.raw"], "{how}: no .partial");
    }
}

/// A failed `ova-import` ticket stays failed with its first error: a
/// later good upload gets 409 and creates nothing.
#[test]
fn d07_failed_ticket_stays_failed() {
    let w = Work::new();
    let s = Server::start(&w);
    let (good, _) = one_disk_ova(&w, "a", &SMALL, "good.ova");
    // The first half of the package, declared as the whole: the archive
    // ends inside the disk entry.
    let bytes = fs::read(&good).expect("read the package");
    let cut = w.path("cut.ova");
    fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write the cut package");
    import_ticket(&s, "broken", "d1.raw", &json!({}));

    let r = upload(&s, "broken", &cut);
    assert!(
        (400..500).contains(&r.status),
        "a cut package must fail with 4xx: {} {}",
        r.status,
        r.text()
    );
    let failed = s.ticket("broken");
    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["error"].as_str().expect("an error").to_owned();
    assert_dir_empty(&s.root);

    let r = upload(&s, "broken", &good);
    assert_eq!(r.status, 409, "upload after failure: {}", r.text());
    assert!(
        r.text().contains("failed"),
        "the refusal should name the state: {}",
        r.text()
    );
    let t = s.ticket("broken");
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["error"].as_str(), Some(error.as_str()), "{t}");
    assert_eq!(disk_states(&t), ["failed"], "{t}");
    assert_absent(&s.root.join("d1.raw"));
    assert_dir_empty(&s.root);
}

// ---------------------------------------------------------------------------
// The ticket's size bounds the body.

/// A Content-Length over the ticket's size gets 413 before the import
/// starts: the ticket stays pending, nothing is created. A package of
/// exactly the size is accepted.
#[test]
fn d08_ova_import_body_over_ticket_size_refused() {
    let w = Work::new();
    let s = Server::start(&w);
    let (package, p) = one_disk_ova(&w, "a", &SMALL, "in.ova");
    let len = support::file_len(&package);
    import_ticket(&s, "small", "d1.raw", &json!({"size": 1000}));

    let r = upload(&s, "small", &package);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text().contains("1000"),
        "the refusal should name the limit: {}",
        r.text()
    );
    let t = s.ticket("small");
    assert_eq!(t["state"], "pending", "{t}");
    assert!(t.get("error").is_none(), "{t}");
    assert_eq!(t["transferred"], 0, "{t}");
    assert_eq!(disk_states(&t), ["pending"], "{t}");
    assert_dir_empty(&s.root);

    // The limit is the size itself, not less.
    import_ticket(&s, "exact", "d2.raw", &json!({"size": len}));
    let r = upload(&s, "exact", &package);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_eq!(s.ticket("exact")["state"], "succeeded");
    image::assert_target(&p.raw, &s.root.join("d2.raw"), Target::Raw, p.capacity);
    assert_eq!(names_in(&s.root), ["d2.raw"]);
}

/// A chunked body that grows past the ticket's size is cut there: 413,
/// the ticket fails naming the limit, no byte past it reached the
/// import, and the partial target is removed.
#[test]
fn d08_chunked_body_over_ticket_size_fails_without_targets() {
    let w = Work::new();
    let s = Server::start(&w);
    let (package, _) = one_disk_ova(&w, "a", &MAIN, "in.ova");
    // Well inside the disk entry: the target has been started by then.
    let limit = support::file_len(&package) / 2;
    import_ticket(&s, "grows", "d1.raw", &json!({"size": limit}));

    let r = upload_chunked(&s, "grows", &package);
    assert_eq!(r.status, 413, "{}\n{}", r.text(), s.log());
    let t = s.ticket("grows");
    assert_eq!(t["state"], "failed", "{t}");
    let err = t["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(&format!("size of {limit} bytes")),
        "the error should name the limit: {t}"
    );
    assert!(
        t["transferred"].as_u64().is_some_and(|n| n <= limit),
        "bytes past the limit reached the import: {t}"
    );
    assert_eq!(disk_states(&t), ["failed"], "{t}");
    assert_absent(&s.root.join("d1.raw"));
    assert_dir_empty(&s.root);
}

// ---------------------------------------------------------------------------
// Transfer codings.

/// `data` in chunked framing, in pieces of at most 1000 bytes.
fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(1000) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A request of `method` on `/images/{id}` with these extra head lines
/// and this body, as bytes.
fn request(method: &str, id: &str, head: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} /images/{id} HTTP/1.1\r\nHost: localhost\r\n");
    for h in head {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// Image PUT, PATCH and OVA upload with `gzip, chunked` (in one header
/// line or two) get 501 and write nothing; `chunked` alone, in any case
/// and spacing, still works.
#[test]
fn d09_unimplemented_transfer_coding_gets_501() {
    let w = Work::new();
    let s = Server::start(&w);
    let vol = s.root.join("vol.raw");
    let original: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(&vol, &original).expect("write the volume");
    s.add_ticket(&json!({
        "uuid": "img", "size": 1u64 << 20, "url": s.file_url("vol.raw"),
        "ops": ["write"], "timeout": 120,
    }));
    let (package, p) = one_disk_ova(&w, "a", &SMALL, "in.ova");
    import_ticket(&s, "ova", "d1.raw", &json!({}));

    let zeros = vec![0u8; 64 << 10];
    let patch = br#"{"op": "zero", "offset": 0, "size": 65536, "flush": true}"#;
    let ova_bytes = fs::read(&package).expect("read the package");
    let codings: [&[&str]; 3] = [
        &["Transfer-Encoding: gzip, chunked"],
        &["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
        &["Transfer-Encoding: x-gzip , Chunked"],
    ];
    for te in codings {
        for (method, id, plain) in [
            ("PUT", "img", &zeros[..]),
            ("PATCH", "img", &patch[..]),
            ("PUT", "ova", &ova_bytes[..]),
        ] {
            let body = chunked(&image::gzip(plain));
            let mut head = te.to_vec();
            head.push("Content-Type: application/octet-stream");
            let mut tls = s.tls();
            let r = exchange(&mut tls, &request(method, id, &head, &body));
            let what = format!("{method} {id} with {te:?}");
            assert_eq!(r.status, 501, "{what}: {}", r.text());
            assert!(
                r.text().contains("gzip"),
                "{what}: the refusal should name the coding: {}",
                r.text()
            );
            assert_eq!(
                r.header("access-control-allow-origin"),
                Some("*"),
                "{what}: CORS headers"
            );
            let t = s.ticket(id);
            assert_eq!(t["state"], "pending", "{what}: {t}");
            assert_eq!(t["transferred"], 0, "{what}: {t}");
        }
    }
    assert!(
        fs::read(&vol).expect("read the volume") == original,
        "the volume was written"
    );
    assert_eq!(names_in(&s.root), ["vol.raw"], "no OVA target");

    // chunked alone is decoded, whatever its case and spacing.
    let mut tls = s.tls();
    let r = exchange(
        &mut tls,
        &request(
            "PUT",
            "img",
            &["Transfer-Encoding:  Chunked "],
            &chunked(&zeros),
        ),
    );
    assert_eq!(r.status, 200, "chunked PUT: {}", r.text());
    let now = fs::read(&vol).expect("read the volume");
    assert!(
        now[..zeros.len()] == zeros[..],
        "the chunked PUT was not written"
    );
    assert!(now[zeros.len()..] == original[zeros.len()..]);
    let r = exchange(
        &mut tls,
        &request(
            "PUT",
            "ova",
            &["Transfer-Encoding: CHUNKED"],
            &chunked(&ova_bytes),
        ),
    );
    assert_eq!(r.status, 200, "chunked OVA upload: {}", r.text());
    image::assert_target(&p.raw, &s.root.join("d1.raw"), Target::Raw, p.capacity);
}

// ---------------------------------------------------------------------------
// Connections that never start TLS.

/// 200 TCP connections that never start TLS, opened before a real
/// client: the client's upload completes within a few seconds, and the
/// idle sockets are closed after the handshake deadline, long before the
/// 60 s header timeout.
#[test]
fn d11_idle_tcp_flood_does_not_starve_a_client() {
    let w = Work::new();
    let s = start_with_config(&w, "[data]\nheader_timeout = 60\n");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    let src = w.path("upload.bin");
    fs::write(&src, &data).expect("write the upload");
    s.add_ticket(&json!({
        "uuid": "real", "size": 1u64 << 20, "url": s.file_url("vol.raw"),
        "ops": ["write"], "timeout": 120, "inactivity_timeout": 20,
    }));

    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..200)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", s.port))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();

    let started = Instant::now();
    let f = src.display().to_string();
    let r = s.data("PUT", "/images/real", &["--max-time", "30", "-T", &f]);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "upload under the flood: {}", r.text());
    assert!(
        took < Duration::from_secs(5),
        "the upload took {took:?} behind 200 idle connections"
    );
    let t = s.ticket("real");
    assert_eq!(t["state"], "active", "{t}");
    assert_eq!(t["transferred"], 1u64 << 20, "{t}");
    assert!(
        fs::read(s.root.join("vol.raw")).expect("read the volume") == data,
        "the volume differs from the upload"
    );

    // The server hangs up on a socket that never started TLS at the
    // handshake deadline (5 s by default), not at the header timeout.
    let mut first = idle.into_iter().next().expect("an idle connection");
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut buf = [0u8; 16];
    let n = first.read(&mut buf).unwrap_or(0);
    let after = opened.elapsed();
    assert_eq!(n, 0, "the server sent bytes to a silent socket");
    assert!(
        after < Duration::from_secs(20),
        "an idle socket was kept {after:?}"
    );
}

/// A client that completed its handshake but waits for the only
/// connection slot (held by another client) keeps its ticket alive
/// past the ticket's inactivity timeout, and is served once the slot
/// frees.
#[test]
fn d11_a_client_waiting_for_a_slot_keeps_its_ticket() {
    let w = Work::new();
    let s = start_with_config(&w, "[data]\nmax_connections = 1\nheader_timeout = 60\n");
    s.add_ticket(&json!({
        "uuid": "patient", "size": 4096, "url": s.file_url("vol.raw"),
        "ops": ["write"], "timeout": 120, "inactivity_timeout": 2,
    }));
    // The holder proves it has the slot by being answered, then idles.
    let mut holder = s.tls();
    let r = exchange(
        &mut holder,
        b"GET /info/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let cert = s.cert.display().to_string();
    let url = s.image_url("patient");
    let client = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--cacert", &cert, "-X", "PUT", "--data-binary", "ovaio"])
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start curl");

    // Past the ticket's inactivity timeout while the client waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = s.control("GET", "/tickets/patient", None);
        assert_eq!(
            r.status,
            200,
            "the ticket expired while its client waited for a slot: {}",
            r.text()
        );
        if r.json()["idle_time"].as_u64().is_some_and(|i| i >= 4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle time never grew: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(holder);
    let out = client.wait_with_output().expect("wait for curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the waiting client was not served"
    );
    let vol = fs::read(s.root.join("vol.raw")).expect("read the volume");
    assert_eq!(&vol[..5], b"ovaio");
    assert_eq!(s.ticket("patient")["transferred"], 5);
}
