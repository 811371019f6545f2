//! `image` tickets against a real `ovaio serve`: the `ovirt_imageio`
//! client library uploads and downloads whole images, curl checks the
//! protocol byte by byte (ranges, offsets, chunked bodies, zeroing,
//! extents, OPTIONS, CORS), and the ticket rules decide who may touch
//! which file — never one outside the storage root.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::{Value, json};
use support::Work;
use support::image::{self, Layout, Source};
use support::server::{Reply, Server};

/// Uploads (`upload FILE URL CAFILE`) or downloads (`download URL FILE
/// CAFILE FMT`) with the `ovirt_imageio` client library.
const CLIENT: &str = r#"
import sys
from ovirt_imageio import client
if sys.argv[1] == "upload":
    client.upload(sys.argv[2], sys.argv[3], sys.argv[4])
else:
    client.download(sys.argv[2], sys.argv[3], sys.argv[4], fmt=sys.argv[5])
print("done")
"#;

/// An `image` ticket for `name` in the storage root.
fn ticket(s: &Server, id: &str, name: &str, size: u64, ops: &[&str]) -> Value {
    json!({
        "uuid": id,
        "size": size,
        "url": s.file_url(name),
        "ops": ops,
        "timeout": 300,
        "transfer_id": format!("transfer-{id}"),
    })
}

/// Puts `layout` as a sparse raw file `name` in the storage root.
fn raw_in_root(s: &Server, name: &str, layout: &Layout) -> Vec<u8> {
    layout.write_raw(&s.root.join(name));
    layout.bytes()
}

/// A file of `len` bytes that names its own offsets, so misplaced bytes
/// show.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// `truncate -s size path`.
fn truncate(path: &Path, size: u64) {
    let f = fs::File::create(path).expect("create target");
    f.set_len(size).expect("size target");
}

fn data_args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A data request with owned curl arguments.
fn data(s: &Server, method: &str, path: &str, extra: &[String]) -> Reply {
    s.data(method, path, &data_args(extra))
}

/// `PATCH /images/{id}` with a JSON message.
fn patch(s: &Server, id: &str, msg: &Value) -> Reply {
    data(
        s,
        "PATCH",
        &format!("/images/{id}"),
        &[
            "-H".into(),
            "content-type: application/json".into(),
            "--data-binary".into(),
            msg.to_string(),
        ],
    )
}

/// `PUT /images/{id}{query}` of the file `body` (Content-Length), at
/// `offset` through Content-Range when given.
fn put_file(s: &Server, id: &str, query: &str, body: &Path, offset: Option<u64>) -> Reply {
    let mut args = vec![
        "-H".to_owned(),
        "content-type: application/octet-stream".to_owned(),
        "--data-binary".to_owned(),
        format!("@{}", body.display()),
    ];
    if let Some(off) = offset {
        let len = support::file_len(body);
        args.push("-H".into());
        args.push(format!("Content-Range: bytes {off}-{}/*", off + len - 1));
    }
    data(s, "PUT", &format!("/images/{id}{query}"), &args)
}

/// `GET /images/{id}` with a `Range` header.
fn get_range(s: &Server, id: &str, range: &str) -> Reply {
    data(
        s,
        "GET",
        &format!("/images/{id}"),
        &["-H".into(), format!("Range: {range}")],
    )
}

fn extents(s: &Server, id: &str) -> Vec<Value> {
    let r = s.data("GET", &format!("/images/{id}/extents?context=zero"), &[]);
    assert_eq!(r.status, 200, "extents: {}", r.text());
    match r.json() {
        Value::Array(list) => list,
        other => panic!("extents are not a list: {other}"),
    }
}

/// Checks that `list` covers `[0, size)` in order without gaps, that
/// `zero` and `hole` agree, and that every zero extent reads as zeros in
/// `content`.
fn assert_extents_cover(list: &[Value], size: u64, content: &[u8]) {
    let mut pos = 0u64;
    for e in list {
        let start = e["start"].as_u64().expect("start");
        let len = e["length"].as_u64().expect("length");
        let zero = e["zero"].as_bool().expect("zero");
        assert_eq!(start, pos, "extents leave a gap or overlap: {list:?}");
        assert!(len > 0, "empty extent in {list:?}");
        assert_eq!(e["hole"].as_bool(), Some(zero), "hole != zero in {e}");
        if zero {
            let (a, b) = (start as usize, (start + len) as usize);
            assert!(
                content[a..b].iter().all(|&x| x == 0),
                "zero extent {e} holds data"
            );
        }
        pos += len;
    }
    assert_eq!(pos, size, "extents do not cover the image: {list:?}");
}

/// Whether the file system under `path` keeps the holes of this sparse
/// file (it allocates fewer bytes than its length).
fn keeps_holes(path: &Path) -> bool {
    let m = fs::metadata(path).expect("stat");
    m.blocks() * 512 < m.len()
}

fn assert_cors(r: &Reply, what: &str) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "{what}: no CORS header in {:?}",
        r.headers
    );
}

fn features(r: &Reply) -> Vec<String> {
    r.json()["features"]
        .as_array()
        .expect("features list")
        .iter()
        .map(|f| f.as_str().expect("feature name").to_owned())
        .collect()
}

fn client(s: &Server, args: &[&str]) {
    let (ok, out) = s.python(CLIENT, args);
    assert!(
        ok,
        "ovirt_imageio client {args:?} failed:\n{out}\nserver log:\n{}",
        s.log()
    );
}

// ---------------------------------------------------------------------
// The ovirt_imageio client library.
// ---------------------------------------------------------------------

#[test]
fn imageio_client_uploads_raw_then_downloads_it_back() {
    let work = Work::new();
    let s = Server::start(&work);
    let src = image::MAIN.write_raw(&work.path("src.raw"));
    let size = image::MAIN.size;
    let target = s.root.join("disk.raw");
    truncate(&target, size);
    s.add_ticket(&ticket(&s, "up-raw", "disk.raw", size, &["read", "write"]));
    let url = s.image_url("up-raw");
    let cert = s.cert.display().to_string();

    client(&s, &["upload", &src.display().to_string(), &url, &cert]);
    assert_eq!(support::file_len(&target), size, "target size changed");
    image::assert_same_content(&src, &target, "raw");
    let st = s.ticket("up-raw");
    assert!(
        st["transferred"].as_u64().is_some_and(|n| n > 0),
        "no bytes counted: {st}"
    );

    // The same read-write ticket serves the image back.
    let back = work.path("back.raw");
    client(
        &s,
        &["download", &url, &back.display().to_string(), &cert, "raw"],
    );
    assert_eq!(support::file_len(&back), size);
    image::assert_same_content(&src, &back, "raw");
}

#[test]
fn imageio_client_uploads_qcow2_into_a_raw_ticket() {
    let work = Work::new();
    let s = Server::start(&work);
    let raw = image::ODD.write_raw(&work.path("src.raw"));
    let qcow2 = Source::Qcow2V3.convert(&raw, &work.path("src.qcow2"));
    let size = image::ODD.size;
    let target = s.root.join("from-qcow2.raw");
    truncate(&target, size);
    s.add_ticket(&ticket(
        &s,
        "up-qcow2",
        "from-qcow2.raw",
        size,
        &["read", "write"],
    ));

    client(
        &s,
        &[
            "upload",
            &qcow2.display().to_string(),
            &s.image_url("up-qcow2"),
            &s.cert.display().to_string(),
        ],
    );
    assert_eq!(support::file_len(&target), size, "target size changed");
    // The target holds the guest content, not the qcow2 container.
    image::assert_same_content(&raw, &target, "raw");
}

#[test]
fn imageio_client_downloads_a_read_only_ticket_as_raw_and_qcow2() {
    let work = Work::new();
    let s = Server::start(&work);
    let src = image::MAIN.write_raw(&work.path("src.raw"));
    Source::Raw.convert(&src, &s.root.join("vol.raw"));
    s.add_ticket(&ticket(&s, "down", "vol.raw", image::MAIN.size, &["read"]));
    let url = s.image_url("down");
    let cert = s.cert.display().to_string();

    let raw = work.path("down.raw");
    client(
        &s,
        &["download", &url, &raw.display().to_string(), &cert, "raw"],
    );
    assert_eq!(support::file_len(&raw), image::MAIN.size);
    image::assert_same_content(&src, &raw, "raw");

    let qcow2 = work.path("down.qcow2");
    client(
        &s,
        &[
            "download",
            &url,
            &qcow2.display().to_string(),
            &cert,
            "qcow2",
        ],
    );
    image::assert_qcow2_clean(&qcow2);
    image::assert_same_content(&src, &qcow2, "qcow2");
    // Reading did not touch the volume.
    image::assert_same_content(&src, &s.root.join("vol.raw"), "raw");
}

// ---------------------------------------------------------------------
// Protocol, through curl.
// ---------------------------------------------------------------------

#[test]
fn ranged_and_whole_reads() {
    let work = Work::new();
    let s = Server::start(&work);
    let content = raw_in_root(&s, "small.raw", &image::SMALL);
    let size = image::SMALL.size;
    let mut t = ticket(&s, "rd", "small.raw", size, &["read"]);
    t["filename"] = json!("my disk.raw");
    s.add_ticket(&t);

    let r = get_range(&s, "rd", "bytes=1000-70999");
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-70999/{size}").as_str())
    );
    assert_eq!(r.header("content-length"), Some("70000"));
    assert!(r.body == content[1000..71000], "ranged body differs");
    assert_cors(&r, "ranged GET");

    // Open range: to the end.
    let r = get_range(&s, "rd", "bytes=200000-");
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 200000-{}/{size}", size - 1).as_str())
    );
    assert!(r.body == content[200_000..], "open-range body differs");

    // One byte, the last.
    let r = get_range(&s, "rd", &format!("bytes={}-{}", size - 1, size - 1));
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, &content[content.len() - 1..]);

    // Starting at the end: nothing to send.
    for range in [
        format!("bytes={size}-{}", size + 10),
        format!("bytes={size}-"),
    ] {
        let r = get_range(&s, "rd", &range);
        assert_eq!(r.status, 416, "{range}: {}", r.text());
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str()),
            "{range}"
        );
        assert_cors(&r, "416");
    }

    // No Range: the whole image, named.
    let r = s.data("GET", "/images/rd", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
    assert!(r.body == content, "whole body differs");
    let cd = r
        .header("content-disposition")
        .expect("content-disposition");
    assert!(cd.starts_with("attachment"), "{cd}");
    assert!(cd.contains("filename=\"my disk.raw\""), "{cd}");
    assert!(r.header("content-range").is_none());

    // A ticket without filename: no Content-Disposition.
    s.add_ticket(&ticket(&s, "rd-anon", "small.raw", size, &["read"]));
    let r = s.data("GET", "/images/rd-anon", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-disposition").is_none(), "{:?}", r.headers);
    assert_eq!(r.body.len() as u64, size);
}

#[test]
fn writes_land_at_their_offsets() {
    let work = Work::new();
    let s = Server::start(&work);
    let size: u64 = 1 << 20;
    let target = s.root.join("w.raw");
    truncate(&target, size);
    s.add_ticket(&ticket(&s, "wr", "w.raw", size, &["read", "write"]));
    let mut expect = vec![0u8; size as usize];

    // Content-Range at an offset, no flush.
    let a = pattern(5000, 3);
    fs::write(work.path("a"), &a).expect("write a");
    let r = put_file(&s, "wr", "?flush=n", &work.path("a"), Some(100_000));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_cors(&r, "PUT");
    expect[100_000..105_000].copy_from_slice(&a);
    assert!(
        fs::read(&target).expect("read") == expect,
        "offset PUT misplaced"
    );

    // No Content-Range: offset 0, flushed.
    let b = pattern(3000, 7);
    fs::write(work.path("b"), &b).expect("write b");
    let r = put_file(&s, "wr", "?flush=y", &work.path("b"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    expect[..3000].copy_from_slice(&b);
    assert!(
        fs::read(&target).expect("read") == expect,
        "PUT at 0 misplaced"
    );

    // Chunked, at an offset (-T with Transfer-Encoding: chunked).
    let c = pattern(300_000, 11);
    fs::write(work.path("c"), &c).expect("write c");
    let r = data(
        &s,
        "PUT",
        "/images/wr?flush=n",
        &[
            "-T".into(),
            work.path("c").display().to_string(),
            "-H".into(),
            "Transfer-Encoding: chunked".into(),
            "-H".into(),
            format!("Content-Range: bytes 600000-{}/*", 600_000 + c.len() - 1),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    expect[600_000..900_000].copy_from_slice(&c);

    // Chunked without Content-Range (--data-binary): offset 0.
    let d = pattern(70_000, 19);
    fs::write(work.path("d"), &d).expect("write d");
    let r = data(
        &s,
        "PUT",
        "/images/wr",
        &[
            "--data-binary".into(),
            format!("@{}", work.path("d").display()),
            "-H".into(),
            "Transfer-Encoding: chunked".into(),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    expect[..70_000].copy_from_slice(&d);
    let got = fs::read(&target).expect("read");
    assert_eq!(got.len() as u64, size, "size changed");
    assert!(got == expect, "chunked PUTs misplaced");

    // Reading it back through the server agrees.
    let r = get_range(&s, "wr", "bytes=599990-600009");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &expect[599_990..600_010]);
}

#[test]
fn writes_past_the_end_are_refused_and_change_nothing() {
    let work = Work::new();
    let s = Server::start(&work);
    let size: u64 = 256 << 10;
    let target = s.root.join("e.raw");
    let before = pattern(size as usize, 5);
    fs::write(&target, &before).expect("write target");
    s.add_ticket(&ticket(&s, "end", "e.raw", size, &["read", "write"]));
    let body = work.path("body");
    fs::write(&body, pattern(1000, 9)).expect("write body");

    // Content-Length known: refused up front.
    let r = put_file(&s, "end", "", &body, Some(size - 500));
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    assert_cors(&r, "PUT 416");
    // Starting right at the end.
    let r = put_file(&s, "end", "", &body, Some(size));
    assert_eq!(r.status, 416, "{}", r.text());
    // Whole body larger than the image, no Content-Range.
    let big = work.path("big");
    fs::write(&big, pattern(size as usize + 1, 1)).expect("write big");
    let r = put_file(&s, "end", "", &big, None);
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(fs::read(&target).expect("read"), before, "file changed");

    // Chunked, length unknown up front: refused once it passes the end,
    // and the file never grows.
    let r = data(
        &s,
        "PUT",
        "/images/end",
        &[
            "-T".into(),
            body.display().to_string(),
            "-H".into(),
            "Transfer-Encoding: chunked".into(),
            "-H".into(),
            format!("Content-Range: bytes {}-{}/*", size - 10, size + 989),
        ],
    );
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(support::file_len(&target), size, "file grew");
    assert!(
        fs::read(&target).expect("read")[..(size - 10) as usize] == before[..(size - 10) as usize],
        "bytes before the refused range changed"
    );

    // Zeroing past the end.
    let r = patch(
        &s,
        "end",
        &json!({"op": "zero", "offset": size - 10, "size": 11}),
    );
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(support::file_len(&target), size, "file grew");
}

#[test]
fn zero_and_flush() {
    let work = Work::new();
    let s = Server::start(&work);
    let size: u64 = 1 << 20;
    // A fully allocated file of non-zero bytes.
    let before = pattern(size as usize, 2);
    fs::write(s.root.join("sparse.raw"), &before).expect("write");
    fs::write(s.root.join("dense.raw"), &before).expect("write");
    let mut sp = ticket(&s, "zs", "sparse.raw", size, &["read", "write"]);
    sp["sparse"] = json!(true);
    s.add_ticket(&sp);
    let mut de = ticket(&s, "zd", "dense.raw", size, &["read", "write"]);
    de["sparse"] = json!(false);
    s.add_ticket(&de);

    let r = patch(
        &s,
        "zs",
        &json!({"op": "zero", "offset": 256 << 10, "size": 256 << 10, "flush": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_cors(&r, "PATCH");
    let r = patch(
        &s,
        "zd",
        &json!({"op": "zero", "offset": 1000, "size": 5000}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let mut want_sparse = before.clone();
    want_sparse[256 << 10..512 << 10].fill(0);
    let got = fs::read(s.root.join("sparse.raw")).expect("read");
    assert_eq!(got.len() as u64, size);
    assert!(got == want_sparse, "sparse zeroing wrong");
    let mut want_dense = before.clone();
    want_dense[1000..6000].fill(0);
    let got = fs::read(s.root.join("dense.raw")).expect("read");
    assert!(got == want_dense, "dense zeroing wrong");

    // A sparse ticket deallocates: where the file system keeps holes,
    // the extents show one exactly there.
    let list = extents(&s, "zs");
    assert_extents_cover(&list, size, &want_sparse);
    if keeps_holes(&s.root.join("sparse.raw")) {
        let hole = json!({"start": 256 << 10, "length": 256 << 10, "zero": true, "hole": true});
        assert!(list.contains(&hole), "no hole where zeroed: {list:?}");
        assert_eq!(list.len(), 3, "{list:?}");
    }
    // The dense one stays allocated: data everywhere.
    let list = extents(&s, "zd");
    assert_extents_cover(&list, size, &want_dense);
    assert!(
        list.iter().all(|e| e["zero"] == false),
        "non-sparse zeroing made a hole: {list:?}"
    );

    let r = patch(&s, "zd", &json!({"op": "flush"}));
    assert_eq!(r.status, 200, "{}", r.text());
    // An unknown op or a malformed message is the client's fault.
    let r = patch(&s, "zd", &json!({"op": "trim"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        fs::read(s.root.join("dense.raw")).expect("read"),
        want_dense
    );
}

#[test]
fn extents_match_data_and_holes() {
    let work = Work::new();
    let s = Server::start(&work);
    let content = raw_in_root(&s, "m.raw", &image::MAIN);
    let size = image::MAIN.size;
    s.add_ticket(&ticket(&s, "ex", "m.raw", size, &["read"]));

    let list = extents(&s, "ex");
    assert_extents_cover(&list, size, &content);
    if keeps_holes(&s.root.join("m.raw")) {
        // MAIN has a hole from 600000 to 2 MiB + 4096 (block-aligned
        // inside) and data at both ends.
        assert!(list.len() >= 3, "{list:?}");
        assert_eq!(list[0]["zero"], false, "{list:?}");
        assert_eq!(list[list.len() - 1]["zero"], false, "{list:?}");
        assert!(
            list.iter().any(|e| e["hole"] == true
                && e["start"].as_u64().is_some_and(|a| a <= 1 << 20)
                && e["start"]
                    .as_u64()
                    .zip(e["length"].as_u64())
                    .is_some_and(|(a, l)| a + l >= 2 << 20)),
            "no hole over 1-2 MiB: {list:?}"
        );
    }
    // Without context the same answer.
    let r = s.data("GET", "/images/ex/extents", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), Value::Array(list));
    // Dirty extents are not served.
    let r = s.data("GET", "/images/ex/extents?context=dirty", &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_cors(&r, "extents 404");
    let r = s.data("GET", "/images/ex/extents?context=bogus", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn options_advertise_by_ticket() {
    let work = Work::new();
    let s = Server::start(&work);
    truncate(&s.root.join("o.raw"), 4096);
    s.add_ticket(&ticket(&s, "rw", "o.raw", 4096, &["read", "write"]));
    s.add_ticket(&ticket(&s, "ro", "o.raw", 4096, &["read"]));

    let r = s.data("OPTIONS", "/images/rw", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_cors(&r, "OPTIONS");
    let f = features(&r);
    for want in ["zero", "flush", "extents"] {
        assert!(f.iter().any(|x| x == want), "{want} missing from {f:?}");
    }
    let j = r.json();
    assert!(j["max_readers"].as_u64().is_some_and(|n| n >= 1), "{j}");
    assert!(j["max_writers"].as_u64().is_some_and(|n| n >= 1), "{j}");
    let allow = r.header("allow").unwrap_or_default().to_owned();
    assert!(allow.contains("PUT") && allow.contains("PATCH"), "{allow}");

    let r = s.data("OPTIONS", "/images/ro", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let f = features(&r);
    assert!(
        !f.iter().any(|x| x == "zero" || x == "flush"),
        "read-only ticket advertises writing: {f:?}"
    );
    assert!(f.iter().any(|x| x == "extents"), "{f:?}");
    let allow = r.header("allow").unwrap_or_default().to_owned();
    assert!(
        !allow.contains("PUT") && !allow.contains("PATCH"),
        "{allow}"
    );

    let r = s.data("OPTIONS", "/images/*", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(features(&r).iter().any(|x| x == "zero"));
    assert_cors(&r, "OPTIONS *");
}

// ---------------------------------------------------------------------
// Authorization and the storage root.
// ---------------------------------------------------------------------

#[test]
fn unknown_ticket_is_forbidden_everywhere() {
    let work = Work::new();
    let s = Server::start(&work);
    truncate(&s.root.join("k.raw"), 4096);
    s.add_ticket(&ticket(&s, "known", "k.raw", 4096, &["read", "write"]));
    let body = work.path("b");
    fs::write(&body, pattern(100, 1)).expect("write");

    let checks = [
        ("GET", s.data("GET", "/images/unknown", &[])),
        ("GET extents", s.data("GET", "/images/unknown/extents", &[])),
        ("OPTIONS", s.data("OPTIONS", "/images/unknown", &[])),
        ("PUT", put_file(&s, "unknown", "", &body, None)),
        ("PATCH", patch(&s, "unknown", &json!({"op": "flush"}))),
        // A prefix of a real ticket id is no ticket.
        ("GET prefix", s.data("GET", "/images/know", &[])),
    ];
    for (what, r) in checks {
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        assert_cors(&r, what);
    }
    assert_eq!(fs::read(s.root.join("k.raw")).expect("read"), vec![0; 4096]);
}

#[test]
fn ops_decide_what_a_ticket_may_do() {
    let work = Work::new();
    let s = Server::start(&work);
    let content = pattern(64 << 10, 4);
    fs::write(s.root.join("r.raw"), &content).expect("write");
    fs::write(s.root.join("w.raw"), &content).expect("write");
    let size = content.len() as u64;
    s.add_ticket(&ticket(&s, "ro", "r.raw", size, &["read"]));
    s.add_ticket(&ticket(&s, "wo", "w.raw", size, &["write"]));
    let body = work.path("b");
    fs::write(&body, pattern(100, 9)).expect("write");

    // Read-only: reads yes, writes no.
    let r = get_range(&s, "ro", "bytes=0-99");
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, &content[..100]);
    let r = put_file(&s, "ro", "", &body, Some(0));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = patch(&s, "ro", &json!({"op": "zero", "offset": 0, "size": 4096}));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = patch(&s, "ro", &json!({"op": "flush"}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(fs::read(s.root.join("r.raw")).expect("read"), content);

    // Write-only image ticket: imageio lets it read too.
    let r = get_range(&s, "wo", "bytes=100-199");
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, &content[100..200]);
    let r = s.data("GET", "/images/wo/extents?context=zero", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = put_file(&s, "wo", "", &body, Some(10));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut want = content.clone();
    want[10..110].copy_from_slice(&pattern(100, 9));
    assert_eq!(fs::read(s.root.join("w.raw")).expect("read"), want);
}

#[test]
fn expired_and_deleted_tickets_stop_working() {
    let work = Work::new();
    let s = Server::start(&work);
    truncate(&s.root.join("x.raw"), 8192);
    s.add_ticket(&ticket(&s, "exp", "x.raw", 8192, &["read", "write"]));
    s.add_ticket(&ticket(&s, "del", "x.raw", 8192, &["read", "write"]));
    assert_eq!(s.data("GET", "/images/exp", &[]).status, 200);
    assert_eq!(s.data("GET", "/images/del", &[]).status, 200);
    let body = work.path("b");
    fs::write(&body, pattern(100, 1)).expect("write");

    let r = s.control("PATCH", "/tickets/exp", Some(&json!({"timeout": 0})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.data("GET", "/images/exp", &[]).status, 403);
    assert_eq!(s.data("OPTIONS", "/images/exp", &[]).status, 403);
    assert_eq!(put_file(&s, "exp", "", &body, None).status, 403);
    assert_eq!(patch(&s, "exp", &json!({"op": "flush"})).status, 403);
    let r = s.control("GET", "/tickets/exp", None);
    assert_eq!(r.status, 404, "{}", r.text());
    // Extending an expired ticket does not revive it.
    let r = s.control("PATCH", "/tickets/exp", Some(&json!({"timeout": 300})));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(s.data("GET", "/images/exp", &[]).status, 403);

    let r = s.control("DELETE", "/tickets/del", None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(s.data("GET", "/images/del", &[]).status, 403);
    assert_eq!(put_file(&s, "del", "", &body, None).status, 403);
    assert_eq!(s.control("GET", "/tickets/del", None).status, 404);
    let r = s.control("DELETE", "/tickets/del", None);
    assert_eq!(r.status, 204, "second DELETE: {}", r.text());
    assert_eq!(
        fs::read(s.root.join("x.raw")).expect("read"),
        vec![0; 8192],
        "a refused write landed"
    );
}

/// Asserts `PUT /tickets/{id}` with `t` is refused with `status` and left
/// no ticket behind.
fn assert_ticket_refused(s: &Server, id: &str, t: &Value, status: u16) {
    let r = s.control("PUT", &format!("/tickets/{id}"), Some(t));
    assert_eq!(r.status, status, "ticket {t}: {}", r.text());
    assert_eq!(
        s.control("GET", &format!("/tickets/{id}"), None).status,
        404,
        "refused ticket {id} exists"
    );
    assert_eq!(s.data("GET", &format!("/images/{id}"), &[]).status, 403);
}

#[test]
fn tickets_outside_the_root_are_refused() {
    let work = Work::new();
    let s = Server::start(&work);
    let outside = work.mkdir("outside");
    let victim = outside.join("victim.raw");
    let secret = pattern(4096, 77);
    fs::write(&victim, &secret).expect("write victim");
    let url = |p: &Path| format!("file://{}", p.display());
    let base = |id: &str, u: String| json!({"uuid": id, "size": 4096, "url": u, "ops": ["read", "write"], "timeout": 60});

    // An existing file outside; a new one outside; `..` out of the root.
    assert_ticket_refused(&s, "out1", &base("out1", url(&victim)), 400);
    assert_ticket_refused(
        &s,
        "out2",
        &base("out2", url(&outside.join("new.raw"))),
        400,
    );
    let dotdot = s.root.join("../outside/victim.raw");
    assert_ticket_refused(&s, "out3", &base("out3", url(&dotdot)), 400);

    // A symlink in the root to a file outside.
    std::os::unix::fs::symlink(&victim, s.root.join("link.raw")).expect("symlink");
    assert_ticket_refused(&s, "lnk", &base("lnk", s.file_url("link.raw")), 400);
    // A symlinked directory in the root leading outside, new file in it.
    std::os::unix::fs::symlink(&outside, s.root.join("dir")).expect("symlink");
    assert_ticket_refused(
        &s,
        "lnkdir",
        &base("lnkdir", s.file_url("dir/new.raw")),
        400,
    );

    // Nothing outside was written or created.
    assert_eq!(fs::read(&victim).expect("read victim"), secret);
    let names: Vec<_> = fs::read_dir(&outside)
        .expect("list outside")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("victim.raw")]);
}

#[test]
fn a_dangling_symlink_to_outside_is_refused_and_never_followed() {
    let work = Work::new();
    let s = Server::start(&work);
    let outside = work.mkdir("outside");
    let ghost = outside.join("ghost.raw");
    std::os::unix::fs::symlink(&ghost, s.root.join("dangling.raw")).expect("symlink");
    let t = json!({"uuid": "dang", "size": 4096, "url": s.file_url("dangling.raw"),
                   "ops": ["write"], "timeout": 60});
    let r = s.control("PUT", "/tickets/dang", Some(&t));
    assert!(
        r.status == 400 || r.status == 404,
        "dangling symlink ticket: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(s.control("GET", "/tickets/dang", None).status, 404);
    assert!(
        !ghost.exists(),
        "the server created a file outside the root"
    );
}

#[test]
fn a_symlink_planted_after_the_ticket_is_not_followed() {
    let work = Work::new();
    let s = Server::start(&work);
    let outside = work.mkdir("outside");
    let victim = outside.join("victim.raw");
    let secret = pattern(4096, 55);
    fs::write(&victim, &secret).expect("write victim");
    // Tickets for files that do not exist yet (judged by their directory).
    s.add_ticket(&ticket(&s, "late", "late.raw", 4096, &["read", "write"]));
    s.add_ticket(&ticket(&s, "ghost", "ghost.raw", 4096, &["write"]));
    // Then the names become symlinks out of the root.
    std::os::unix::fs::symlink(&victim, s.root.join("late.raw")).expect("symlink");
    let ghost = outside.join("ghost-target.raw");
    std::os::unix::fs::symlink(&ghost, s.root.join("ghost.raw")).expect("symlink");

    let body = work.path("b");
    fs::write(&body, pattern(100, 1)).expect("write");
    for id in ["late", "ghost"] {
        let r = put_file(&s, id, "", &body, Some(0));
        assert!(
            !(200..300).contains(&r.status),
            "PUT {id} through a symlink: {}",
            r.status
        );
        let r = patch(&s, id, &json!({"op": "zero", "offset": 0, "size": 100}));
        assert!(
            !(200..300).contains(&r.status),
            "PATCH {id} through a symlink: {}",
            r.status
        );
        let r = s.data("GET", &format!("/images/{id}"), &[]);
        assert!(
            !(200..300).contains(&r.status),
            "GET {id} through a symlink: {}",
            r.status
        );
    }
    let r = s.data("GET", "/images/late", &[]);
    assert!(r.body != secret, "read a file outside the root");
    assert_eq!(
        fs::read(&victim).expect("read victim"),
        secret,
        "victim written"
    );
    assert!(!ghost.exists(), "a file outside the root was created");
}

#[test]
fn ticket_id_must_match_its_path() {
    let work = Work::new();
    let s = Server::start(&work);
    truncate(&s.root.join("i.raw"), 4096);
    let t = ticket(&s, "body-id", "i.raw", 4096, &["read"]);
    let r = s.control("PUT", "/tickets/path-id", Some(&t));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(s.control("GET", "/tickets/path-id", None).status, 404);
    assert_eq!(s.control("GET", "/tickets/body-id", None).status, 404);
    assert_eq!(s.data("GET", "/images/path-id", &[]).status, 403);
    assert_eq!(s.data("GET", "/images/body-id", &[]).status, 403);
}

#[test]

fn a_dangling_symlink_to_outside_is_a_bad_request() {
    let work = Work::new();
    let s = Server::start(&work);
    let outside = work.mkdir("outside");
    std::os::unix::fs::symlink(outside.join("ghost.raw"), s.root.join("dangling.raw"))
        .expect("symlink");
    let t = json!({"uuid": "dang", "size": 4096, "url": s.file_url("dangling.raw"),
                   "ops": ["write"], "timeout": 60});
    assert_ticket_refused(&s, "dang", &t, 400);
}
