//! `image` tickets on qcow2 volumes against a real `ovaio serve`: the
//! ticket serves the image's guest view, as imageio's nbd backend does.
//! The `ovirt_imageio` client uploads raw and qcow2 sources into a qcow2
//! ticket and downloads it back as raw and qcow2; curl checks ranged
//! writes and reads, zeroing (a zero cluster in `qemu-img map`), flush,
//! extents and OPTIONS; `qemu-img` judges the image after each. A stated
//! format must match the file, and the ticket rules keep every open —
//! backing files included — beneath the storage root.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use serde_json::{Value, json};
use support::image::{self, Source};
use support::server::{Reply, Server};
use support::{Work, tool};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

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

fn client(s: &Server, args: &[&str]) {
    let (ok, out) = s.python(CLIENT, args);
    assert!(
        ok,
        "ovirt_imageio client {args:?} failed:\n{out}\nserver log:\n{}",
        s.log()
    );
}

/// `qemu-img ARGS`, asserting success.
fn qemu_img(args: &[&str]) -> String {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    tool("qemu-img", &args)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `qemu-img create -f qcow2` of `size` bytes with `opts`.
fn create_qcow2(path: &Path, size: u64, opts: &str) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        p(path),
        &size.to_string(),
    ]);
}

/// An `image` ticket for `name` in the storage root.
fn ticket(s: &Server, id: &str, name: &str, size: u64, ops: &[&str]) -> Value {
    json!({
        "uuid": id,
        "size": size,
        "url": s.file_url(name),
        "ops": ops,
        "timeout": 300,
    })
}

/// Bytes that name their own offsets, so misplaced bytes show.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn data(s: &Server, method: &str, path: &str, extra: &[String]) -> Reply {
    let v: Vec<&str> = extra.iter().map(String::as_str).collect();
    s.data(method, path, &v)
}

/// `PUT /images/{id}{query}` of `body` at `offset` (Content-Range).
fn put_at(s: &Server, work: &Work, id: &str, query: &str, body: &[u8], offset: u64) -> Reply {
    let f = work.path("body");
    fs::write(&f, body).expect("write body");
    data(
        s,
        "PUT",
        &format!("/images/{id}{query}"),
        &[
            "-H".into(),
            "content-type: application/octet-stream".into(),
            "--data-binary".into(),
            format!("@{}", f.display()),
            "-H".into(),
            format!(
                "Content-Range: bytes {offset}-{}/*",
                offset + body.len() as u64 - 1
            ),
        ],
    )
}

fn get_range(s: &Server, id: &str, range: &str) -> Reply {
    data(
        s,
        "GET",
        &format!("/images/{id}"),
        &["-H".into(), format!("Range: {range}")],
    )
}

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

fn extents(s: &Server, id: &str) -> Vec<Value> {
    let r = s.data("GET", &format!("/images/{id}/extents?context=zero"), &[]);
    assert_eq!(r.status, 200, "extents: {}", r.text());
    match r.json() {
        Value::Array(list) => list,
        other => panic!("extents are not a list: {other}"),
    }
}

/// `list` covers `[0, size)` in order; `zero` and `hole` agree; every zero
/// extent reads as zeros in `content`; every data extent is data in
/// `qemu-img map` of `image`.
fn assert_extents_match(list: &[Value], content: &[u8], image: &Path) {
    let map = qemu_map(image);
    let mut pos = 0u64;
    for e in list {
        let start = e["start"].as_u64().expect("start");
        let len = e["length"].as_u64().expect("length");
        let zero = e["zero"].as_bool().expect("zero");
        assert_eq!(start, pos, "extents leave a gap or overlap: {list:?}");
        assert!(len > 0, "empty extent in {list:?}");
        assert_eq!(e["hole"].as_bool(), Some(zero), "hole != zero in {e}");
        let (a, b) = (start as usize, (start + len) as usize);
        if zero {
            assert!(
                content[a..b].iter().all(|&x| x == 0),
                "zero extent {e} holds data"
            );
        }
        for m in &map {
            let (ms, ml) = (m["start"].as_u64().unwrap(), m["length"].as_u64().unwrap());
            if ms < start + len && start < ms + ml {
                assert_eq!(
                    m["data"].as_bool(),
                    Some(!zero),
                    "extent {e} against qemu-img map {m}"
                );
            }
        }
        pos += len;
    }
    assert_eq!(pos, content.len() as u64, "extents do not cover the image");
}

/// `qemu-img map --output=json` of a qcow2 image.
fn qemu_map(image: &Path) -> Vec<Value> {
    let out = qemu_img(&["map", "--output=json", "-f", "qcow2", p(image)]);
    match serde_json::from_str(&out).expect("map JSON") {
        Value::Array(v) => v,
        other => panic!("map is not a list: {other}"),
    }
}

/// The `qemu-img map` entries covering `[start, start+len)`.
fn map_of(image: &Path, start: u64, len: u64) -> Vec<Value> {
    qemu_map(image)
        .into_iter()
        .filter(|m| {
            let (ms, ml) = (m["start"].as_u64().unwrap(), m["length"].as_u64().unwrap());
            ms < start + len && start < ms + ml
        })
        .collect()
}

/// The guest bytes of a qcow2 image, by qemu.
fn guest_bytes(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("guest.raw");
    qemu_img(&["convert", "-q", "-O", "raw", p(image), p(&out)]);
    fs::read(&out).expect("read converted")
}

fn assert_ticket_refused(s: &Server, id: &str, t: &Value, status: u16, mentions: &str) {
    let r = s.control("PUT", &format!("/tickets/{id}"), Some(t));
    assert_eq!(r.status, status, "ticket {t}: {}", r.text());
    assert!(r.text().contains(mentions), "{}", r.text());
    assert_eq!(
        s.control("GET", &format!("/tickets/{id}"), None).status,
        404,
        "refused ticket {id} exists"
    );
}

// ---------------------------------------------------------------------
// The ovirt_imageio client library.
// ---------------------------------------------------------------------

#[test]
fn imageio_client_uploads_raw_and_qcow2_into_qcow2_and_downloads_both_ways() {
    let work = Work::new();
    let s = Server::start(&work);
    let cert = s.cert.display().to_string();
    let main = image::MAIN.write_raw(&work.path("main.raw"));
    let odd = image::ODD.write_raw(&work.path("odd.raw"));
    let odd_qcow2 = Source::Qcow2V3.convert(&odd, &work.path("odd.qcow2"));
    let odd_compressed = Source::Qcow2Zlib.convert(&odd, &work.path("odd-c.qcow2"));

    // A raw source into a qcow2 volume whose format is probed.
    create_qcow2(
        &s.root.join("a.qcow2"),
        image::MAIN.size,
        "cluster_size=65536",
    );
    s.add_ticket(&ticket(
        &s,
        "a",
        "a.qcow2",
        image::MAIN.size,
        &["read", "write"],
    ));
    client(&s, &["upload", p(&main), &s.image_url("a"), &cert]);
    image::assert_qcow2_clean(&s.root.join("a.qcow2"));
    image::assert_same_content(&main, &s.root.join("a.qcow2"), "qcow2");
    // The volume stays a qcow2 image of its size, not a file of guest bytes.
    let info = image::info(&s.root.join("a.qcow2"), "qcow2");
    assert_eq!(info["virtual-size"].as_u64(), Some(image::MAIN.size));
    assert!(
        support::file_len(&s.root.join("a.qcow2")) < image::MAIN.size,
        "the qcow2 volume holds the holes"
    );
    let st = s.ticket("a");
    assert!(
        st["transferred"].as_u64().is_some_and(|n| n > 0),
        "no bytes counted: {st}"
    );

    // Back as raw and as qcow2.
    let back_raw = work.path("back.raw");
    client(
        &s,
        &["download", &s.image_url("a"), p(&back_raw), &cert, "raw"],
    );
    assert_eq!(support::file_len(&back_raw), image::MAIN.size);
    image::assert_same_content(&main, &back_raw, "raw");
    let back_qcow2 = work.path("back.qcow2");
    client(
        &s,
        &[
            "download",
            &s.image_url("a"),
            p(&back_qcow2),
            &cert,
            "qcow2",
        ],
    );
    image::assert_qcow2_clean(&back_qcow2);
    image::assert_same_content(&main, &back_qcow2, "qcow2");

    // qcow2 sources (plain and compressed) into qcow2 volumes (small
    // clusters, stated format), read-only tickets to download.
    for (i, src) in [&odd_qcow2, &odd_compressed].into_iter().enumerate() {
        let name = format!("b{i}.qcow2");
        let id = format!("b{i}");
        create_qcow2(&s.root.join(&name), image::ODD.size, "cluster_size=4096");
        let mut t = ticket(&s, &id, &name, image::ODD.size, &["write"]);
        t["format"] = json!("qcow2");
        s.add_ticket(&t);
        client(&s, &["upload", p(src), &s.image_url(&id), &cert]);
        image::assert_qcow2_clean(&s.root.join(&name));
        image::assert_same_content(&odd, &s.root.join(&name), "qcow2");

        let ro = format!("{id}-ro");
        s.add_ticket(&ticket(&s, &ro, &name, image::ODD.size, &["read"]));
        for fmt in ["raw", "qcow2"] {
            let out = work.path(&format!("{id}.{fmt}"));
            client(&s, &["download", &s.image_url(&ro), p(&out), &cert, fmt]);
            if fmt == "qcow2" {
                image::assert_qcow2_clean(&out);
            }
            image::assert_same_content(&odd, &out, fmt);
        }
    }
}

#[test]
fn an_overlay_serves_its_backing_chain_beneath_the_root() {
    let work = Work::new();
    let s = Server::start(&work);
    let cert = s.cert.display().to_string();
    let main = image::MAIN.write_raw(&work.path("main.raw"));
    Source::Qcow2V3.convert(&main, &s.root.join("base.qcow2"));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        p(&s.root.join("top.qcow2")),
    ]);
    // Probed as qcow2, an image with a backing file is refused: a raw
    // volume's guest could have written that header. Stated, it is served.
    let mut t = ticket(&s, "top", "top.qcow2", image::MAIN.size, &["read", "write"]);
    assert_ticket_refused(&s, "top", &t, 400, "backing file");
    t["format"] = json!("qcow2");
    s.add_ticket(&t);
    let r = s.data("GET", "/images/top", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == image::MAIN.bytes(), "the chain's guest view");

    // A write lands in the top image; the base is not written.
    let piece = pattern(100_000, 3);
    let r = put_at(&s, &work, "top", "", &piece, 12_345);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut want = image::MAIN.bytes();
    want[12_345..112_345].copy_from_slice(&piece);
    let back = work.path("back.raw");
    client(
        &s,
        &["download", &s.image_url("top"), p(&back), &cert, "raw"],
    );
    assert!(fs::read(&back).expect("read") == want);
    image::assert_qcow2_clean(&s.root.join("top.qcow2"));
    assert!(guest_bytes(&s.root.join("top.qcow2"), work.root()) == want);
    image::assert_same_content(&main, &s.root.join("base.qcow2"), "qcow2");
}

// ---------------------------------------------------------------------
// Protocol, through curl.
// ---------------------------------------------------------------------

#[test]
fn ranged_writes_reads_zero_and_flush_on_a_qcow2_volume() {
    let work = Work::new();
    let s = Server::start(&work);
    let size = 4 * MIB;
    let img = s.root.join("v.qcow2");
    create_qcow2(&img, size, "cluster_size=65536");
    s.add_ticket(&ticket(&s, "v", "v.qcow2", size, &["read", "write"]));
    let mut model = vec![0u8; size as usize];

    let r = s.data("OPTIONS", "/images/v", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let features: Vec<String> = r.json()["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| f.as_str().expect("name").to_owned())
        .collect();
    for want in ["zero", "flush", "extents"] {
        assert!(features.iter().any(|f| f == want), "{want} in {features:?}");
    }

    // Writes straddling clusters, unaligned, one without flush.
    for (i, (offset, len, query)) in [
        (0u64, 1000usize, ""),
        (64 * KIB - 10, 20, "?flush=n"),
        (100_000, 300_000, ""),
        (3 * MIB + 7, 500_000, "?flush=y"),
        (size - 3, 3, ""),
    ]
    .into_iter()
    .enumerate()
    {
        let body = pattern(len, i as u8);
        let r = put_at(&s, &work, "v", query, &body, offset);
        assert_eq!(r.status, 200, "PUT at {offset}: {}", r.text());
        model[offset as usize..offset as usize + len].copy_from_slice(&body);
    }
    // Ranged and whole reads give the guest bytes.
    let r = get_range(&s, "v", "bytes=99990-400009");
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 99990-400009/{size}").as_str())
    );
    assert!(r.body == model[99_990..400_010], "ranged read");
    let r = s.data("GET", "/images/v", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body == model, "whole read");
    image::assert_qcow2_clean(&img);
    assert!(
        guest_bytes(&img, work.root()) == model,
        "qemu sees the writes"
    );

    // Zeroing whole clusters makes zero clusters; the unaligned ends get
    // zeros written.
    let r = patch(
        &s,
        "v",
        &json!({"op": "zero", "offset": 128 * KIB, "size": 256 * KIB, "flush": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    model[128 * KIB as usize..384 * KIB as usize].fill(0);
    let r = patch(
        &s,
        "v",
        &json!({"op": "zero", "offset": 3 * MIB + 1000, "size": 200_000}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    model[3 * MIB as usize + 1000..3 * MIB as usize + 201_000].fill(0);
    let r = patch(&s, "v", &json!({"op": "flush"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_range(&s, "v", &format!("bytes={}-{}", 128 * KIB, 384 * KIB - 1));
    assert_eq!(r.status, 206);
    assert!(
        r.body.iter().all(|&b| b == 0),
        "the zeroed range reads zeros"
    );
    image::assert_qcow2_clean(&img);
    assert!(
        guest_bytes(&img, work.root()) == model,
        "qemu sees the zeros"
    );
    for m in map_of(&img, 128 * KIB, 256 * KIB) {
        assert_eq!(m["zero"], true, "not a zero cluster: {m}");
        assert_eq!(m["data"], false, "not a zero cluster: {m}");
        assert_eq!(m["present"], true, "not a zero cluster: {m}");
    }
    let list = extents(&s, "v");
    assert_extents_match(&list, &model, &img);
    let zeroed = list.iter().any(|e| {
        e["zero"] == true
            && e["start"].as_u64().is_some_and(|a| a <= 128 * KIB)
            && e["start"]
                .as_u64()
                .zip(e["length"].as_u64())
                .is_some_and(|(a, l)| a + l >= 384 * KIB)
    });
    assert!(zeroed, "no zero extent over the zeroed clusters: {list:?}");

    // Past the end: 416, nothing changes.
    let r = put_at(&s, &work, "v", "", &pattern(10, 9), size - 5);
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    let r = patch(
        &s,
        "v",
        &json!({"op": "zero", "offset": size - 5, "size": 10}),
    );
    assert_eq!(r.status, 416, "{}", r.text());
    let r = get_range(&s, "v", &format!("bytes={size}-{}", size + 10));
    assert_eq!(r.status, 416, "{}", r.text());
    let r = s.data("GET", "/images/v", &[]);
    assert!(r.body == model, "a refused request changed the image");
    image::assert_qcow2_clean(&img);
    let info = image::info(&img, "qcow2");
    assert_eq!(info["virtual-size"].as_u64(), Some(size));
}

#[test]
fn a_sparse_ticket_gives_zeroed_clusters_back() {
    let work = Work::new();
    let s = Server::start(&work);
    let size = 2 * MIB;
    let img = s.root.join("s.qcow2");
    create_qcow2(&img, size, "cluster_size=65536");
    let mut t = ticket(&s, "s", "s.qcow2", size, &["write"]);
    t["sparse"] = json!(true);
    s.add_ticket(&t);
    let r = put_at(&s, &work, "s", "", &pattern(size as usize, 5), 0);
    assert_eq!(r.status, 200, "{}", r.text());
    let full = support::file_len(&img);
    let r = patch(
        &s,
        "s",
        &json!({"op": "zero", "offset": 0, "size": MIB, "flush": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for m in map_of(&img, 0, MIB) {
        assert_eq!(
            (m["zero"].clone(), m["data"].clone()),
            (json!(true), json!(false)),
            "{m}"
        );
    }
    // The freed clusters are used again before the file grows.
    let r = put_at(&s, &work, "s", "", &pattern(MIB as usize, 6), 0);
    assert_eq!(r.status, 200, "{}", r.text());
    image::assert_qcow2_clean(&img);
    assert_eq!(support::file_len(&img), full, "the file grew");
}

// ---------------------------------------------------------------------
// Formats: probed, stated, refused.
// ---------------------------------------------------------------------

#[test]
fn a_stated_format_must_match_the_file() {
    let work = Work::new();
    let s = Server::start(&work);
    let size = MIB;
    create_qcow2(&s.root.join("q.qcow2"), size, "cluster_size=65536");
    fs::write(s.root.join("r.raw"), pattern(size as usize, 1)).expect("write raw");

    // qcow2 stated for a raw file, or for a file that does not exist.
    let mut t = ticket(&s, "bad", "r.raw", size, &["read", "write"]);
    t["format"] = json!("qcow2");
    assert_ticket_refused(&s, "bad", &t, 400, "no qcow2 header");
    let mut t = ticket(&s, "none", "none.qcow2", size, &["read", "write"]);
    t["format"] = json!("qcow2");
    assert_ticket_refused(&s, "none", &t, 400, "must exist");
    assert!(!s.root.join("none.qcow2").exists());
    let mut t = ticket(&s, "vmdk", "q.qcow2", size, &["read"]);
    t["format"] = json!("vmdk");
    assert_ticket_refused(&s, "vmdk", &t, 400, "not raw or qcow2");

    // raw stated for a qcow2 file: its bytes as they are.
    let mut t = ticket(&s, "as-raw", "q.qcow2", size, &["read"]);
    t["format"] = json!("raw");
    s.add_ticket(&t);
    let r = get_range(&s, "as-raw", "bytes=0-3");
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, b"QFI\xfb");
    assert_eq!(s.ticket("as-raw")["format"], "raw");
    // Probed: the guest view, zeros of the virtual size.
    s.add_ticket(&ticket(&s, "probed", "q.qcow2", size, &["read"]));
    let r = s.data("GET", "/images/probed", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, vec![0u8; size as usize]);

    // The format is decided when the ticket is added: a file that stops
    // being qcow2 afterwards is refused at its next use, and a raw one
    // whose upload begins with a qcow2 header stays raw.
    s.add_ticket(&ticket(&s, "gone", "q.qcow2", size, &["read"]));
    fs::write(s.root.join("q.qcow2"), pattern(size as usize, 2)).expect("overwrite");
    let r = s.data("GET", "/images/gone", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("no qcow2 header"), "{}", r.text());

    create_qcow2(&work.path("upload.qcow2"), size, "cluster_size=65536");
    let file_bytes = fs::read(work.path("upload.qcow2")).expect("read");
    fs::File::create(s.root.join("up.raw"))
        .and_then(|f| f.set_len(file_bytes.len() as u64))
        .expect("create raw volume");
    s.add_ticket(&ticket(
        &s,
        "up",
        "up.raw",
        file_bytes.len() as u64,
        &["read", "write"],
    ));
    let r = put_at(&s, &work, "up", "", &file_bytes[..4096], 0);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = put_at(&s, &work, "up", "", &file_bytes[4096..], 4096);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.data("GET", "/images/up", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.body == file_bytes,
        "the raw volume holds the uploaded file"
    );
}

// ---------------------------------------------------------------------
// Authorization and the storage root.
// ---------------------------------------------------------------------

#[test]
fn tickets_decide_who_touches_a_qcow2_volume() {
    let work = Work::new();
    let s = Server::start(&work);
    let size = MIB;
    let img = s.root.join("k.qcow2");
    create_qcow2(&img, size, "cluster_size=65536");
    let before = fs::read(&img).expect("read");
    s.add_ticket(&ticket(&s, "ro", "k.qcow2", size, &["read"]));

    let body = pattern(100, 1);
    for (what, r) in [
        ("GET unknown", s.data("GET", "/images/unknown", &[])),
        (
            "extents unknown",
            s.data("GET", "/images/unknown/extents", &[]),
        ),
        ("PUT unknown", put_at(&s, &work, "unknown", "", &body, 0)),
        (
            "PATCH unknown",
            patch(&s, "unknown", &json!({"op": "flush"})),
        ),
        ("PUT read-only", put_at(&s, &work, "ro", "", &body, 0)),
        (
            "PATCH zero read-only",
            patch(&s, "ro", &json!({"op": "zero", "offset": 0, "size": 4096})),
        ),
        (
            "PATCH flush read-only",
            patch(&s, "ro", &json!({"op": "flush"})),
        ),
    ] {
        assert_eq!(r.status, 403, "{what}: {}", r.text());
    }
    assert_eq!(
        fs::read(&img).expect("read"),
        before,
        "a refused write landed"
    );
    let r = s.data("OPTIONS", "/images/ro", &[]);
    assert_eq!(r.status, 200);
    let allow = r.header("allow").unwrap_or_default().to_owned();
    assert!(
        !allow.contains("PUT") && !allow.contains("PATCH"),
        "{allow}"
    );
    let r = s.control("DELETE", "/tickets/ro", None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(s.data("GET", "/images/ro", &[]).status, 403);
}

#[test]
fn qcow2_volumes_and_backing_files_outside_the_root_are_refused() {
    let work = Work::new();
    let s = Server::start(&work);
    let outside = work.mkdir("outside");
    let size = MIB;
    // A qcow2 image outside, full of a secret.
    let secret = pattern(size as usize, 77);
    let secret_raw = work.path("secret.raw");
    fs::write(&secret_raw, &secret).expect("write secret");
    let victim = outside.join("victim.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        p(&secret_raw),
        p(&victim),
    ]);
    let victim_bytes = fs::read(&victim).expect("read victim");
    let url = |p: &Path| format!("file://{}", p.display());

    // The image itself outside; through `..`; through a symlink.
    for (id, u) in [
        ("out1", url(&victim)),
        ("out2", url(&s.root.join("../outside/victim.qcow2"))),
    ] {
        let t =
            json!({"uuid": id, "size": size, "url": u, "ops": ["read", "write"], "timeout": 60});
        assert_ticket_refused(&s, id, &t, 400, "outside");
    }
    std::os::unix::fs::symlink(&victim, s.root.join("link.qcow2")).expect("symlink");
    let t = json!({"uuid": "lnk", "size": size, "url": s.file_url("link.qcow2"),
                   "ops": ["read", "write"], "timeout": 60});
    assert_ticket_refused(&s, "lnk", &t, 400, "outside");

    // An overlay in the root whose backing file lies outside: refused
    // when it is opened, the secret never served.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        p(&victim),
        "-F",
        "qcow2",
        p(&s.root.join("overlay.qcow2")),
    ]);
    let mut t = ticket(&s, "ov", "overlay.qcow2", size, &["read", "write"]);
    t["format"] = json!("qcow2");
    s.add_ticket(&t);
    let r = s.data("GET", "/images/ov", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("outside"), "{}", r.text());
    assert!(r.body != secret);
    let r = put_at(&s, &work, "ov", "", &pattern(100, 3), 0);
    assert_eq!(r.status, 400, "{}", r.text());

    // A qcow2 volume renamed away and replaced by a symlink to the
    // outside image after its ticket was added.
    create_qcow2(&s.root.join("late.qcow2"), size, "cluster_size=65536");
    s.add_ticket(&ticket(&s, "late", "late.qcow2", size, &["read", "write"]));
    fs::rename(s.root.join("late.qcow2"), s.root.join("old.qcow2")).expect("rename");
    std::os::unix::fs::symlink(&victim, s.root.join("late.qcow2")).expect("symlink");
    for (what, r) in [
        ("GET", s.data("GET", "/images/late", &[])),
        ("PUT", put_at(&s, &work, "late", "", &pattern(100, 4), 0)),
        (
            "PATCH",
            patch(
                &s,
                "late",
                &json!({"op": "zero", "offset": 0, "size": 4096}),
            ),
        ),
        ("extents", s.data("GET", "/images/late/extents", &[])),
    ] {
        assert!(
            !(200..300).contains(&r.status),
            "{what} through a symlink: {}",
            r.status
        );
        assert!(r.body != secret, "{what} served the secret");
    }
    assert_eq!(
        fs::read(&victim).expect("read victim"),
        victim_bytes,
        "the image outside the root was written"
    );
    let names: Vec<_> = fs::read_dir(&outside)
        .expect("list outside")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("victim.qcow2")]);
}

#[test]
fn a_raw_volume_holding_a_qcow2_header_with_a_backing_file_is_not_followed() {
    // A guest of a raw volume writes a qcow2 header naming another volume
    // of the same root as its backing file; a ticket that does not state
    // the format must not serve that volume's data through it.
    let work = Work::new();
    let s = Server::start(&work);
    let size = 1 << 20;
    let other = pattern(size as usize, 9);
    fs::write(s.root.join("other.raw"), &other).expect("other volume");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        p(&s.root.join("other.raw")),
        "-F",
        "raw",
        p(&s.root.join("guest.raw")),
    ]);
    let mut t = ticket(&s, "g", "guest.raw", size, &["read", "write"]);
    assert_ticket_refused(&s, "g", &t, 400, "backing file");
    // Stated raw, it is served as the bytes it holds: the header, not the
    // other volume.
    t["format"] = json!("raw");
    s.add_ticket(&t);
    let r = s.data("GET", "/images/g", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(&r.body[..4], b"QFI\xfb");
    assert!(r.body != other);
}
