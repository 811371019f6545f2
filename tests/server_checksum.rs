//! `GET /images/{ticket}/checksum` against ovirt-imageio's own
//! definition: a sparse raw image (data, holes, an allocated run of
//! zeros, a short last block) is uploaded by the `ovirt_imageio` client
//! into a raw `image` ticket, and `ovirt_imageio.client.checksum()` of the
//! local file must equal what ovaio answers for the volume, for every
//! algorithm and for other block sizes. A qcow2 image's checksum is
//! that of its guest data, as imageio's client computes it: uploaded by
//! the client into a raw ticket, its volume answers the checksum the
//! client computes of the qcow2 file. `…/checksum/algorithms` lists what
//! imageio's checksum computes. An `ova-export` ticket shows the
//! SHA-256 of the package and of its disks once a download completed,
//! checked against the bytes received and GNU tar's extraction.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::image::{Fill, Layout, Run, Source};
use support::server::Server;
use support::{Work, tool};

const MIB: u64 = 1 << 20;

/// 21 MiB and 12 KiB: with 4 MiB blocks, a block of data, a block that
/// is a hole, a block of written zeros, blocks mixing them, and a short
/// last block; unaligned runs for the other block sizes.
const SPARSE: Layout = Layout {
    size: 21 * MIB + 12 * 1024,
    runs: &[
        Run {
            offset: 0,
            len: 4 * MIB,
            fill: Fill::Random(7),
        },
        // 4-8 MiB: a hole.
        Run {
            offset: 8 * MIB,
            len: 4 * MIB,
            fill: Fill::Zeros,
        },
        Run {
            offset: 12 * MIB + 4096,
            len: 300_000,
            fill: Fill::Random(8),
        },
        Run {
            offset: 14 * MIB,
            len: MIB + 777,
            fill: Fill::Zeros,
        },
        Run {
            offset: 17 * MIB - 5000,
            len: 10_000,
            fill: Fill::Text,
        },
        Run {
            offset: 21 * MIB + 4096,
            len: 8192,
            fill: Fill::Random(9),
        },
    ],
};

/// Prints, as JSON, `client.checksum(path, block_size=B, algorithm=A)`
/// for each `A:B` argument after the path (`-` for imageio's default).
const CLIENT_CHECKSUMS: &str = r#"
import json, sys
from ovirt_imageio import client
path = sys.argv[1]
out = []
for arg in sys.argv[2:]:
    alg, bs = arg.split(":")
    kw = {}
    if alg != "-":
        kw["algorithm"] = alg
    if bs != "-":
        kw["block_size"] = int(bs)
    out.append(client.checksum(path, **kw))
print(json.dumps(out))
"#;

/// Uploads `upload FILE URL CAFILE` with the client (sparse-aware: holes
/// and zeros go as PATCH zero).
const CLIENT_UPLOAD: &str = r#"
import sys
from ovirt_imageio import client
client.upload(sys.argv[1], sys.argv[2], sys.argv[3])
print("done")
"#;

/// The algorithms imageio's server lists, and those of them its checksum
/// can compute (`blkhash` builds each with `getattr(hashlib, name)`).
const IMAGEIO_ALGORITHMS: &str = r#"
import json
from ovirt_imageio._internal import blkhash
from ovirt_imageio._internal.handlers import checksum
listed = sorted(checksum.ALGORITHMS)
usable = []
for a in listed:
    try:
        h = blkhash.Hash(block_size=4096, algorithm=a,
                         digest_size=32 if a.startswith("blake2") else None)
        h.update(b"x")
        h.zero(4096)
        h.hexdigest()
        usable.append(a)
    except Exception:
        pass
print(json.dumps({"listed": listed, "usable": usable}))
"#;

fn run_python(s: &Server, script: &str, args: &[&str]) -> String {
    let (ok, out) = s.python(script, args);
    assert!(ok, "python failed:\n{out}");
    out
}

/// The last line of `out` as JSON.
fn last_json(out: &str) -> Value {
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn server_checksum(s: &Server, id: &str, query: &str) -> Value {
    let r = s.data("GET", &format!("/images/{id}/checksum{query}"), &[]);
    assert_eq!(r.status, 200, "checksum{query}: {}", r.text());
    r.json()
}

#[test]
fn checksums_equal_the_imageio_clients() {
    let w = Work::new();
    let s = Server::start(&w);
    let local = SPARSE.write_raw(&w.path("local.raw"));
    fs::File::create(s.root.join("vol.raw"))
        .and_then(|f| f.set_len(SPARSE.size))
        .expect("create the volume");
    s.add_ticket(&json!({
        "uuid": "sum", "size": SPARSE.size, "url": s.file_url("vol.raw"),
        "ops": ["read", "write"], "timeout": 300, "sparse": true,
    }));
    let local_arg = local.display().to_string();
    let cert = s.cert.display().to_string();
    run_python(&s, CLIENT_UPLOAD, &[&local_arg, &s.image_url("sum"), &cert]);
    assert_eq!(
        fs::read(s.root.join("vol.raw")).expect("read the volume"),
        SPARSE.bytes(),
        "the upload is the image"
    );

    // Every algorithm at the default block size, imageio's defaults, and
    // other block sizes (the smallest, the largest, one that is not a
    // power of two).
    let algorithms = [
        "blake2b", "blake2s", "md5", "sha1", "sha224", "sha256", "sha384", "sha3_224", "sha3_256",
        "sha3_384", "sha3_512", "sha512",
    ];
    let mut cases: Vec<(Option<&str>, Option<u64>)> =
        algorithms.iter().map(|a| (Some(*a), None)).collect();
    cases.push((None, None));
    cases.push((None, Some(MIB)));
    cases.push((None, Some(16 * MIB)));
    cases.push((Some("sha256"), Some(MIB + 3 * 4096)));
    cases.push((Some("blake2s"), Some(5 * MIB)));
    let args: Vec<String> = cases
        .iter()
        .map(|(a, b)| {
            format!(
                "{}:{}",
                a.unwrap_or("-"),
                b.map_or("-".to_owned(), |b| b.to_string())
            )
        })
        .collect();
    let mut py_args = vec![local_arg.as_str()];
    py_args.extend(args.iter().map(String::as_str));
    let want = last_json(&run_python(&s, CLIENT_CHECKSUMS, &py_args));
    let want = want.as_array().expect("a list of checksums");
    assert_eq!(want.len(), cases.len());
    for ((a, b), expected) in cases.iter().zip(want) {
        let mut q = Vec::new();
        if let Some(a) = a {
            q.push(format!("algorithm={a}"));
        }
        if let Some(b) = b {
            q.push(format!("block_size={b}"));
        }
        let query = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        let got = server_checksum(&s, "sum", &query);
        assert_eq!(&got, expected, "checksum{query}");
    }
    // imageio's defaults: blake2b, 4 MiB; another block size is another
    // checksum.
    assert_eq!(want[algorithms.len()]["algorithm"], "blake2b");
    assert_eq!(want[algorithms.len()]["block_size"], 4 * MIB);
    assert_ne!(
        want[algorithms.len()]["checksum"],
        want[algorithms.len() + 1]["checksum"]
    );

    // Writing one byte changes it.
    let before = server_checksum(&s, "sum", "");
    let r = s.data(
        "PUT",
        "/images/sum",
        &[
            "-H",
            "Content-Range: bytes 5000000-5000000/*",
            "--data-binary",
            "x",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(server_checksum(&s, "sum", ""), before);
}

/// imageio's checksum of a qcow2 image is over the guest data its
/// `qemu-nbd` shows. Uploading the qcow2 file with the client converts it
/// into a raw volume, whose checksum must then be the client's checksum
/// of the qcow2 file (and of the raw image it was made from), and not one
/// of the file's bytes; a ticket on the qcow2 file itself sums its guest
/// data too, unless it states `raw`.
#[test]
fn a_qcow2_image_checksums_as_its_guest_data() {
    let w = Work::new();
    let s = Server::start(&w);
    let raw = SPARSE.write_raw(&w.path("local.raw"));
    let qcow2 = Source::Qcow2V3.convert(&raw, &w.path("local.qcow2"));
    let qcow2_len = fs::metadata(&qcow2).expect("qcow2 size").len();
    assert_ne!(
        qcow2_len, SPARSE.size,
        "the qcow2 file is not its guest data"
    );
    fs::File::create(s.root.join("vol.raw"))
        .and_then(|f| f.set_len(SPARSE.size))
        .expect("create the volume");
    s.add_ticket(&json!({
        "uuid": "q", "size": SPARSE.size, "url": s.file_url("vol.raw"),
        "ops": ["read", "write"], "timeout": 300, "sparse": true,
    }));
    let qcow2_arg = qcow2.display().to_string();
    let cert = s.cert.display().to_string();
    run_python(&s, CLIENT_UPLOAD, &[&qcow2_arg, &s.image_url("q"), &cert]);
    assert_eq!(
        fs::read(s.root.join("vol.raw")).expect("read the volume"),
        SPARSE.bytes(),
        "the upload is the guest data"
    );

    let cases = ["-:-", "sha256:1048576", "blake2b:16777216"];
    let of_qcow2 = {
        let mut a = vec![qcow2_arg.as_str()];
        a.extend(cases);
        last_json(&run_python(&s, CLIENT_CHECKSUMS, &a))
    };
    let raw_arg = raw.display().to_string();
    let of_raw = {
        let mut a = vec![raw_arg.as_str()];
        a.extend(cases);
        last_json(&run_python(&s, CLIENT_CHECKSUMS, &a))
    };
    assert_eq!(of_qcow2, of_raw, "imageio's checksum is of the guest data");
    let of_qcow2 = of_qcow2.as_array().expect("a list of checksums");
    assert_eq!(of_qcow2.len(), cases.len());
    for (case, want) in cases.iter().zip(of_qcow2) {
        let query = match case.split_once(':').expect("A:B") {
            ("-", "-") => String::new(),
            (a, b) => format!("?algorithm={a}&block_size={b}"),
        };
        assert_eq!(&server_checksum(&s, "q", &query), want, "checksum{query}");
    }

    // The qcow2 file's own bytes behind a ticket are another checksum:
    // an image ticket that states `raw` serves and sums its file as it is.
    fs::copy(&qcow2, s.root.join("file.qcow2")).expect("copy the qcow2 file");
    s.add_ticket(&json!({
        "uuid": "f", "size": qcow2_len, "url": s.file_url("file.qcow2"),
        "ops": ["read"], "timeout": 60, "format": "raw",
    }));
    assert_ne!(
        server_checksum(&s, "f", "")["checksum"],
        of_qcow2[0]["checksum"]
    );
    // Behind a ticket that leaves the format to the header, the qcow2
    // file is its guest data, as imageio's nbd backend serves it.
    s.add_ticket(&json!({
        "uuid": "g", "size": SPARSE.size, "url": s.file_url("file.qcow2"),
        "ops": ["read"], "timeout": 60,
    }));
    assert_eq!(
        server_checksum(&s, "g", "")["checksum"],
        of_qcow2[0]["checksum"]
    );
}

#[test]
fn algorithms_and_refusals_follow_imageio() {
    let w = Work::new();
    let s = Server::start(&w);
    fs::File::create(s.root.join("v.raw"))
        .and_then(|f| f.set_len(MIB))
        .expect("create the volume");
    s.add_ticket(&json!({
        "uuid": "ro", "size": MIB, "url": s.file_url("v.raw"),
        "ops": ["read"], "timeout": 60,
    }));

    let imageio = last_json(&run_python(&s, IMAGEIO_ALGORITHMS, &[]));
    let r = s.data("GET", "/images/ro/checksum/algorithms", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let ours = r.json()["algorithms"].clone();
    assert_eq!(
        ours, imageio["usable"],
        "ovaio lists what imageio's checksum computes"
    );
    let listed = imageio["listed"].as_array().expect("imageio's list");
    for a in ours.as_array().expect("a list") {
        assert!(
            listed.contains(a),
            "{a} is not in imageio's list {listed:?}"
        );
    }
    // Like imageio, the list needs no ticket.
    let r = s.data("GET", "/images/nosuch/checksum/algorithms", &[]);
    assert_eq!(r.status, 200, "{}", r.text());

    // The whole 1 MiB hole, as imageio's client computes it for a file
    // of zeros.
    let zeros = w.path("zeros.raw");
    fs::File::create(&zeros)
        .and_then(|f| f.set_len(MIB))
        .expect("zeros");
    let want = last_json(&run_python(
        &s,
        CLIENT_CHECKSUMS,
        &[&zeros.display().to_string(), "md5:1048576"],
    ));
    assert_eq!(
        server_checksum(&s, "ro", "?algorithm=md5&block_size=1048576"),
        want[0]
    );

    for query in [
        "?algorithm=shake_128",
        "?algorithm=SHA256",
        "?algorithm=sm3",
        "?block_size=1048575",
        "?block_size=524288",
        "?block_size=33554432",
        "?block_size=1050000",
        "?block_size=lots",
        "?algorithm=md5&algorithm=sha1",
    ] {
        let r = s.data("GET", &format!("/images/ro/checksum{query}"), &[]);
        assert_eq!(r.status, 400, "{query}: {}", r.text());
    }
    // A checksum reads: it needs a ticket that allows reading.
    let r = s.data("GET", "/images/nosuch/checksum", &[]);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = s.data("PUT", "/images/ro/checksum", &["--data-binary", "x"]);
    assert_eq!(r.status, 405, "{}", r.text());

    // OPTIONS advertises it, as imageio does.
    let r = s.data("OPTIONS", "/images/ro", &[]);
    let features = r.json()["features"].clone();
    assert!(
        features
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "checksum")),
        "{features}"
    );
}

/// Polls `GET /tickets/{id}` until `done` holds.
fn await_ticket(s: &Server, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = s.ticket(id);
        if done(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "ticket {id}: {t}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ova_export_tickets_show_the_sha256_of_what_was_sent() {
    let w = Work::new();
    let s = Server::start(&w);
    support::image::MAIN.write_raw(&s.root.join("vol.raw"));
    s.add_ticket(&json!({
        "uuid": "exp", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "vm", "disks": [{"href": "disk1.qcow2", "url": s.file_url("vol.raw")}]},
    }));

    // Unknown until a whole download completed; a range is not one.
    let r = s.data("GET", "/images/exp/checksum", &[]);
    assert_eq!(r.status, 409, "{}", r.text());
    let r = s.data("GET", "/images/exp", &["-H", "Range: bytes=0-1023"]);
    assert_eq!(r.status, 206, "{}", r.text());
    let r = s.data("GET", "/images/exp/checksum", &[]);
    assert_eq!(r.status, 409, "after a range: {}", r.text());
    assert!(s.ticket("exp").get("sha256").is_none());

    let r = s.data("GET", "/images/exp", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let package = hex::encode(Sha256::digest(&r.body));
    let dl = w.path("vm.ova");
    fs::write(&dl, &r.body).expect("save");
    let x = w.mkdir("x");
    tool(
        "tar",
        &[
            OsStr::new("-xf"),
            dl.as_os_str(),
            OsStr::new("-C"),
            x.as_os_str(),
        ],
    );
    let disk = hex::encode(Sha256::digest(
        fs::read(x.join("disk1.qcow2")).expect("extracted disk"),
    ));

    let t = await_ticket(&s, "exp", |t| t["state"] == "succeeded");
    assert_eq!(t["sha256"], package.as_str(), "{t}");
    assert_eq!(t["disks"][0]["href"], "disk1.qcow2", "{t}");
    assert_eq!(t["disks"][0]["sha256"], disk.as_str(), "{t}");
    let sum = server_checksum(&s, "exp", "");
    assert_eq!(
        sum,
        json!({"algorithm": "sha256", "checksum": package,
               "disks": [{"href": "disk1.qcow2", "sha256": disk}]})
    );
    assert_eq!(server_checksum(&s, "exp", "?algorithm=sha256"), sum);
    for query in ["?algorithm=blake2b", "?block_size=1048576"] {
        let r = s.data("GET", &format!("/images/exp/checksum{query}"), &[]);
        assert_eq!(r.status, 400, "{query}: {}", r.text());
    }
    // An import ticket cannot be read.
    s.add_ticket(&json!({
        "uuid": "imp", "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "ova": {"disks": [{"href": "d.img", "url": s.file_url("d.raw")}]},
    }));
    let r = s.data("GET", "/images/imp/checksum", &[]);
    assert_eq!(r.status, 403, "{}", r.text());
}
