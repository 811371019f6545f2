//! HTTP/2 on the data API, with a real HTTP/2 client (`curl --http2`,
//! which negotiates `h2` by ALPN; `curl -V` must list HTTP2): uploads and
//! downloads of images and OVAs, ranged reads, bodies larger than every
//! flow-control window, and the same answers as over HTTP/1.1.

mod support;

use std::fs;
use std::process::Command;

use serde_json::json;
use support::image::{MAIN, Source, Target, assert_same_content, assert_target};
use support::ova::{self, Manifest, Ova};
use support::server::{Reply, Server};
use support::{Work, file_len};

/// Panics unless curl speaks HTTP/2.
fn require_h2_curl() {
    let out = Command::new("curl")
        .arg("-V")
        .output()
        .expect("run curl -V");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("Features:") && l.contains("HTTP2")),
        "curl without HTTP/2 support: {text}"
    );
}

/// A data request over HTTP/2.
fn h2(s: &Server, method: &str, path: &str, extra: &[&str]) -> Reply {
    require_h2_curl();
    let mut args = vec!["--http2"];
    args.extend_from_slice(extra);
    s.data(method, path, &args)
}

/// The HTTP version curl used for a GET of `path`: `2` for HTTP/2.
fn protocol(s: &Server, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--cacert",
        ])
        .arg(&s.cert)
        .arg(format!("{}{path}", s.base))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 24 MiB raw image: more than the 16 MiB stream window and the
/// server's 1 MiB buffers many times over.
const LARGE: u64 = 24 << 20;

fn large_raw(path: &std::path::Path) {
    let mut data = vec![0u8; LARGE as usize];
    let mut x: u32 = 0x1234_5678;
    for (i, b) in data.iter_mut().enumerate() {
        // Incompressible in places, zero in others.
        if (i >> 20) % 3 != 1 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
    }
    fs::write(path, &data).expect("write large image");
}

#[test]
fn image_upload_download_and_ranges_over_h2() {
    require_h2_curl();
    let w = Work::new();
    let s = Server::start(&w);
    assert_eq!(protocol(&s, "/info"), "2", "curl did not negotiate h2");

    let src = w.path("big.raw");
    large_raw(&src);
    s.add_ticket(&json!({
        "uuid": "img", "size": LARGE, "url": s.file_url("big.raw"),
        "ops": ["read", "write"], "timeout": 120,
    }));
    let r = h2(
        &s,
        "PUT",
        "/images/img",
        &["-T", &src.display().to_string()],
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_same_content(&src, &s.root.join("big.raw"), "raw");

    let r = h2(&s, "GET", "/images/img", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, LARGE);
    assert_eq!(r.body, fs::read(&src).expect("read"), "download differs");

    let (start, end) = (5u64 << 20, (17u64 << 20) + 12_345);
    let r = h2(
        &s,
        "GET",
        "/images/img",
        &["-H", &format!("range: bytes={start}-{end}")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {start}-{end}/{LARGE}").as_str())
    );
    let all = fs::read(&src).expect("read");
    assert_eq!(r.body, all[start as usize..=end as usize]);

    let r = h2(&s, "HEAD", "/images/img", &["-I"]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(LARGE.to_string().as_str()));
}

#[test]
fn ova_upload_and_download_over_h2() {
    require_h2_curl();
    let w = Work::new();
    let s = Server::start(&w);
    let src = w.mkdir("src");
    let p = ova::prepare(&src, "a", &MAIN, Source::Qcow2V3);
    let package = Ova::new()
        .disk(p.disk(1, "disk1.qcow2"))
        .manifest(Manifest::Sha256)
        .build(&src, "in.ova");
    s.add_ticket(&json!({
        "uuid": "up", "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "ova": {"disks": [{"href": "disk1.qcow2", "url": s.file_url("t.qcow2"), "format": "qcow2"}]},
    }));
    let r = h2(
        &s,
        "PUT",
        "/images/up",
        &["-T", &package.display().to_string()],
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_eq!(r.json()["manifest"], "verified");
    assert_target(&p.raw, &s.root.join("t.qcow2"), Target::Qcow2, p.capacity);

    s.add_ticket(&json!({
        "uuid": "down", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "vm", "disks": [{"href": "disk1.qcow2", "url": s.file_url("t.qcow2")}]},
    }));
    let whole = h2(&s, "GET", "/images/down", &[]);
    assert_eq!(whole.status, 200);
    let len = whole.body.len() as u64;
    assert_eq!(
        whole.header("content-length"),
        Some(len.to_string().as_str())
    );
    let part = h2(&s, "GET", "/images/down", &["-H", "range: bytes=1000-"]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, whole.body[1000..]);
    let out = w.path("down.ova");
    fs::write(&out, &whole.body).expect("save");
    assert_eq!(file_len(&out), len);
    let listing = support::tar::list(&out);
    assert!(
        listing.iter().any(|e| e.name == "disk1.qcow2"),
        "{listing:?}"
    );
}
