//! Tickets on NBD exports against a real `ovaio serve`, as an oVirt host
//! hands them out: vdsm starts `qemu-nbd` for the volume, qcow2 or raw,
//! and puts its socket in the ticket (`nbd:unix:/path.sock`). Here
//! qemu-nbd serves a qcow2 and a raw image; the `ovirt_imageio` client
//! uploads and downloads through ovaio; curl zeroes and reads extents,
//! which must match `qemu-img map`; an `ova-import` ticket lands its disk
//! in the qcow2 image behind qemu-nbd; and `qemu-img` judges each image
//! once qemu-nbd has stopped.
//!
//! qemu-nbd and qemu-img (qemu-utils) are required: a missing one fails
//! these tests.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use serde_json::{Value, json};
use support::image::{self, MAIN, Source};
use support::nbd::QemuNbd;
use support::ova::{self, Manifest, Ova};
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

fn qemu_img(args: &[&str]) -> String {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    tool("qemu-img", &args)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// An `image` ticket on the export at `url`.
fn ticket(id: &str, url: &str, size: u64, ops: &[&str]) -> Value {
    json!({"uuid": id, "size": size, "url": url, "ops": ops, "timeout": 300})
}

fn patch(s: &Server, id: &str, msg: &Value) -> Reply {
    s.data(
        "PATCH",
        &format!("/images/{id}"),
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &msg.to_string(),
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

/// `(start, length, zero)` runs of the imageio extents, merged.
fn zero_runs(list: &[Value]) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for e in list {
        let (Some(start), Some(len), Some(zero)) = (
            e["start"].as_u64(),
            e["length"].as_u64(),
            e["zero"].as_bool(),
        ) else {
            panic!("bad extent {e}");
        };
        push(&mut out, start, len, zero);
    }
    out
}

fn push(out: &mut Vec<(u64, u64, bool)>, start: u64, len: u64, zero: bool) {
    match out.last_mut() {
        Some(last) if last.2 == zero && last.0 + last.1 == start => last.1 += len,
        _ => out.push((start, len, zero)),
    }
}

/// `qemu-img map` of `image` as `(start, length, zero)` runs, cut at
/// `size` (a raw file counts whole sectors): "zero" is "not data".
fn qemu_zero_runs(image: &Path, format: &str, size: u64, shared: bool) -> Vec<(u64, u64, bool)> {
    let mut args = vec!["map", "--output=json", "-f", format];
    if shared {
        args.push("-U");
    }
    args.push(p(image));
    let map: Value = serde_json::from_str(&qemu_img(&args)).expect("map JSON");
    let mut out = Vec::new();
    for m in map.as_array().expect("map list") {
        let (Some(start), Some(len)) = (m["start"].as_u64(), m["length"].as_u64()) else {
            panic!("bad map entry {m}");
        };
        if start < size {
            push(&mut out, start, len.min(size - start), m["data"] != true);
        }
    }
    out
}

/// Ranged GET of `[start, start+len)`.
fn get_range(s: &Server, id: &str, start: u64, len: u64) -> Vec<u8> {
    let r = s.data(
        "GET",
        &format!("/images/{id}"),
        &["-H", &format!("Range: bytes={start}-{}", start + len - 1)],
    );
    assert_eq!(r.status, 206, "GET: {}", r.text());
    r.body
}

/// The imageio client through ovaio into the export, and back as raw and
/// as qcow2; then zeroing and extents against `qemu-img map`.
fn upload_download_zero_extents(format: &str) {
    let work = Work::new();
    let s = Server::start(&work);
    let cert = s.cert.display().to_string();
    let main = MAIN.write_raw(&work.path("main.raw"));
    let img = work.path(&format!("vol.{format}"));
    match format {
        "qcow2" => qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=65536",
            p(&img),
            &MAIN.size.to_string(),
        ]),
        _ => {
            fs::File::create(&img)
                .and_then(|f| f.set_len(MAIN.size))
                .expect("raw volume");
            String::new()
        }
    };
    let extra: &[&str] = if format == "qcow2" {
        &["--allocation-depth", "--cache=none", "--aio=native"]
    } else {
        &["--cache=none", "--aio=native"]
    };
    let nbd = QemuNbd::start(&img, format, extra);
    s.add_ticket(&ticket("v", &nbd.url(), MAIN.size, &["read", "write"]));
    let st = s.ticket("v");
    assert_eq!(st["url"], nbd.url(), "{st}");

    client(&s, &["upload", p(&main), &s.image_url("v"), &cert]);
    let raw_back = work.path("back.raw");
    client(
        &s,
        &["download", &s.image_url("v"), p(&raw_back), &cert, "raw"],
    );
    image::assert_same_content(&main, &raw_back, "raw");
    let qcow2_back = work.path("back.qcow2");
    client(
        &s,
        &[
            "download",
            &s.image_url("v"),
            p(&qcow2_back),
            &cert,
            "qcow2",
        ],
    );
    image::assert_qcow2_clean(&qcow2_back);
    image::assert_same_content(&main, &qcow2_back, "qcow2");

    // Zeroing: unaligned, allocated and punched, then a flush.
    let mut model = fs::read(&main).expect("read main");
    for (offset, size) in [(MIB + 100, MIB), (3 * MIB, 2 * MIB + 4 * KIB)] {
        let r = patch(
            &s,
            "v",
            &json!({"op": "zero", "offset": offset, "size": size, "flush": false}),
        );
        assert_eq!(r.status, 200, "zero: {}", r.text());
        model[offset as usize..(offset + size) as usize].fill(0);
    }
    assert_eq!(patch(&s, "v", &json!({"op": "flush"})).status, 200);
    let got = get_range(&s, "v", MIB, 5 * MIB);
    assert!(
        got == model[MIB as usize..6 * MIB as usize],
        "reads after zeroing differ"
    );
    let list = extents(&s, "v");
    for e in &list {
        if e["zero"] == true {
            let (a, n) = (
                e["start"].as_u64().unwrap() as usize,
                e["length"].as_u64().unwrap() as usize,
            );
            assert!(model[a..a + n].iter().all(|&b| b == 0), "{e} holds data");
        }
    }
    let ours = zero_runs(&list);
    // A raw file's map is the file system's, asked beside the server; a
    // qcow2 image's once qemu-nbd has written its tables and stopped.
    let theirs = if format == "raw" {
        Some(qemu_zero_runs(&img, format, MAIN.size, true))
    } else {
        None
    };
    nbd.stop();
    let theirs = theirs.unwrap_or_else(|| qemu_zero_runs(&img, format, MAIN.size, false));
    assert_eq!(ours, theirs, "extents differ from qemu-img map");
    if format == "qcow2" {
        image::assert_qcow2_clean(&img);
    }
    let want = work.path("want.raw");
    fs::write(&want, &model).expect("write model");
    image::assert_same_content(&want, &img, format);
}

#[test]
fn imageio_client_through_qemu_nbd_on_qcow2() {
    upload_download_zero_extents("qcow2");
}

#[test]
fn imageio_client_through_qemu_nbd_on_raw() {
    upload_download_zero_extents("raw");
}

#[test]
fn nbd_ticket_urls_are_checked() {
    let work = Work::new();
    let s = Server::start(&work);
    for (url, why) in [
        ("nbd:unix:relative.sock", "absolute"),
        ("nbds://h/x", "TLS"),
        ("nbd:tcp:h", "supported form"),
    ] {
        let r = s.control("PUT", "/tickets/t", Some(&ticket("t", url, MIB, &["read"])));
        assert_eq!(r.status, 400, "{url}: {}", r.text());
        assert!(r.text().contains(why), "{url}: {}", r.text());
    }
    // A socket nobody listens on: the ticket is accepted (the server is
    // reached at the first request), and the request fails naming it.
    let gone = work.path("gone.sock");
    let url = format!("nbd:unix:{}", gone.display());
    s.add_ticket(&ticket("t", &url, MIB, &["read"]));
    let r = s.data("GET", "/images/t", &["-H", "Range: bytes=0-99"]);
    assert!(r.status >= 400, "{}", r.text());
    assert!(
        r.text().contains("gone.sock") || s.log().contains("gone.sock"),
        "status {}: {}\nlog:\n{}",
        r.status,
        r.text(),
        s.log()
    );
}

/// Polls `GET /tickets/{id}` until its state is final.
fn await_final(s: &Server, id: &str) -> Value {
    s.await_ticket(id, &["pending", "active"])
}

#[test]
fn ova_import_lands_in_the_qcow2_behind_qemu_nbd() {
    let w = Work::new();
    let s = Server::start(&w);
    let prep = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let package = Ova::new()
        .disk(prep.disk(1, "disk1.vmdk"))
        .manifest(Manifest::Sha256)
        .build(w.root(), "in.ova");
    // The target has old data everywhere, which must not show through.
    let img = w.path("target.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        p(&img),
        &prep.capacity.to_string(),
    ]);
    tool(
        "qemu-io",
        &[
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            OsStr::new("-c"),
            OsStr::new(&format!("write -P 0xaa 0 {}", prep.capacity)),
            img.as_os_str(),
        ],
    );
    let nbd = QemuNbd::start(&img, "qcow2", &["--allocation-depth"]);
    let t = json!({
        "uuid": "imp", "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "ova": {"disks": [{"href": "disk1.vmdk", "url": nbd.url(), "format": "qcow2"}]},
    });
    s.add_ticket(&t);
    let file = package.display().to_string();
    let r = s.data(
        "PUT",
        "/images/imp",
        &["-T", &file, "-H", "content-type: application/octet-stream"],
    );
    assert_eq!(r.status, 200, "upload: {}\n{}", r.text(), s.log());
    let summary = r.json();
    assert_eq!(summary["manifest"], "verified", "{summary}");
    assert_eq!(summary["disks"][0]["target"], nbd.url(), "{summary}");
    assert_eq!(await_final(&s, "imp")["state"], "succeeded");
    nbd.stop();
    image::assert_qcow2_clean(&img);
    image::assert_same_content(&prep.raw, &img, "qcow2");
    // Nothing was written beside it in the storage root.
    assert!(fs::read_dir(&s.root).expect("root").next().is_none());

    // A package cut short fails, and the ticket says that the export may
    // hold partial data (there is no partial file to remove).
    let nbd = QemuNbd::start(&img, "qcow2", &[]);
    let t = json!({
        "uuid": "cut", "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "ova": {"disks": [{"href": "disk1.vmdk", "url": nbd.url()}]},
    });
    s.add_ticket(&t);
    let bytes = fs::read(&package).expect("read package");
    let cut = w.path("cut.ova");
    fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write cut");
    let file = cut.display().to_string();
    let r = s.data(
        "PUT",
        "/images/cut",
        &["-T", &file, "-H", "content-type: application/octet-stream"],
    );
    assert!(r.status >= 400, "{}", r.text());
    let t = await_final(&s, "cut");
    assert_eq!(t["state"], "failed", "{t}");
    let err = t["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("may hold partial data") && err.contains(&nbd.url()),
        "{t}"
    );
}

/// An upload into an NBD target paused past its `inactivity_timeout`
/// fails, and its error, made outside the import's own thread, still says
/// that the export may hold partial data.
#[test]
fn a_paused_upload_into_an_export_that_times_out_names_it() {
    let w = Work::new();
    let s = Server::start(&w);
    let prep = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let package = Ova::new()
        .disk(prep.disk(1, "disk1.vmdk"))
        .build(w.root(), "in.ova");
    let img = w.path("target.raw");
    fs::File::create(&img)
        .and_then(|f| f.set_len(prep.capacity))
        .expect("target");
    let nbd = QemuNbd::start(&img, "raw", &[]);
    s.add_ticket(&json!({
        "uuid": "idle", "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "inactivity_timeout": 1,
        "ova": {"disks": [{"href": "disk1.vmdk", "url": nbd.url()}]},
    }));
    let bytes = fs::read(&package).expect("read package");
    let n = bytes.len() * 2 / 3;
    let part = w.path("part");
    fs::write(&part, &bytes[..n]).expect("write part");
    let r = s.data(
        "PUT",
        "/images/idle",
        &[
            "--data-binary",
            &format!("@{}", part.display()),
            "-H",
            &format!("content-range: bytes 0-{}/{}", n - 1, bytes.len()),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "paused", "{}", r.text());
    let t = s.await_ticket("idle", &["pending", "active", "paused"]);
    assert_eq!(t["state"], "failed", "{t}");
    let err = t["error"].as_str().unwrap_or_default();
    assert!(err.contains("no client resumed it"), "{t}");
    assert!(
        err.contains("may hold partial data") && err.contains(&nbd.url()),
        "{t}"
    );
}

/// An `ova-export` ticket whose source is an NBD export (a qcow2 behind
/// qemu-nbd): the downloaded package imports back to the same guest
/// bytes, and GNU tar reads it.
#[test]
fn an_export_reads_its_disk_from_qemu_nbd() {
    let w = Work::new();
    let s = Server::start(&w);
    let raw = MAIN.write_raw(&w.path("main.raw"));
    let img = Source::Qcow2V3.convert(&raw, &w.path("src.qcow2"));
    let nbd = QemuNbd::start(&img, "qcow2", &["--allocation-depth"]);
    s.add_ticket(&json!({
        "uuid": "exp", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "vm", "disks": [{"href": "disk1.qcow2", "url": nbd.url()}]},
    }));
    let out = w.path("out.ova");
    let r = s.data("GET", "/images/exp", &[]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    fs::write(&out, &r.body).expect("write package");
    let listing = tool("tar", &[OsStr::new("tf"), out.as_os_str()]);
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        ["vm.ovf", "disk1.qcow2", "vm.mf"]
    );
    let back = w.mkdir("back");
    let o = support::ovaio()
        .arg("import")
        .arg(&out)
        .arg("--dir")
        .arg(&back)
        .run();
    assert!(o.status.success(), "{}", o.stderr);
    image::assert_same_content(&raw, &back.join("disk1.raw"), "raw");
}
