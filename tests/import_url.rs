//! `ovaio import http://…`: a package read with one `GET` from a plain
//! HTTP origin ([`support::http_source`]) and demultiplexed as it arrives.
//! Cut connections (resets, bodies that end early) and `5xx` answers are
//! resumed with `Range: bytes=N-` and `If-Range`; a server that ignores
//! `Range` or a package that changed fails the import and leaves nothing;
//! 403, 404 and redirects are answered as the README says; `https://`
//! is trusted through `--cacert` and refused without it. Every target
//! is judged by `qemu-img compare`, and the server's own record of each
//! request says what was asked and how many bytes went out.
//!
//! The first two tests check the server itself with a raw TCP client.

mod support;

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;

use serde_json::Value;
use support::http_source::{
    Cut, ETAG_1, ETAG_2, HttpSource, LAST_MODIFIED_1, Options, Redirect, Request,
};
use support::image::{Fill, Layout, Run, Source, Target, assert_target};
use support::ova::{self, Manifest, Ova, Prepared};
use support::resume::three_disks;
use support::{Outcome, Work, assert_dir_empty, ovaio};

const MIB: u64 = 1 << 20;

/// What one cut may cost beyond the bytes the client kept: what the
/// server's socket had accepted but not yet sent when it was reset (its
/// send buffer is asked to be 64 KiB, which the kernel doubles), plus what
/// the client had received but not yet consumed when the connection
/// broke. A client that resumes from what it consumed stays well inside
/// this; one that starts over, or skips back a buffer's worth of
/// megabytes, does not.
const IN_FLIGHT: u64 = MIB;

// ---------------------------------------------------------------------------
// Packages.

/// 12 MiB with 8 MiB of incompressible data, runs off cluster and grain
/// boundaries.
const BIG_A: Layout = Layout {
    size: 12 * MIB,
    runs: &[
        Run {
            offset: 0,
            len: 5 * MIB + 1234,
            fill: Fill::Random(101),
        },
        Run {
            offset: 6 * MIB + 4096,
            len: 65_536,
            fill: Fill::Text,
        },
        Run {
            offset: 8 * MIB - 700,
            len: 3 * MIB,
            fill: Fill::Random(102),
        },
    ],
};

/// Like [`BIG_A`], other bytes, and a size that is not a whole number of
/// clusters.
const BIG_B: Layout = Layout {
    size: 10 * MIB + 3584,
    runs: &[
        Run {
            offset: 512,
            len: 4 * MIB,
            fill: Fill::Random(111),
        },
        Run {
            offset: 5 * MIB,
            len: 100_000,
            fill: Fill::Zeros,
        },
        Run {
            offset: 6 * MIB - 3,
            len: 4 * MIB,
            fill: Fill::Random(112),
        },
        Run {
            offset: 10 * MIB + 3584 - 1000,
            len: 1000,
            fill: Fill::Text,
        },
    ],
};

/// Like [`BIG_A`], other bytes.
const BIG_C: Layout = Layout {
    size: 12 * MIB,
    runs: &[
        Run {
            offset: 4096,
            len: 6 * MIB,
            fill: Fill::Random(121),
        },
        Run {
            offset: 9 * MIB,
            len: 2 * MIB + 17,
            fill: Fill::Random(122),
        },
    ],
};

/// A package, its bytes and its disks (source, href).
struct Package {
    bytes: Vec<u8>,
    disks: Vec<(Prepared, String)>,
}

impl Package {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Panics unless `out` holds exactly one target per disk, named after
    /// its href, in `format`, equal to its source.
    fn assert_imported(&self, out: &Path, format: Target) {
        for (d, href) in &self.disks {
            let stem = Path::new(href).file_stem().expect("href stem");
            let target = out.join(format!("{}.{}", stem.to_string_lossy(), format.name()));
            assert_target(&d.raw, &target, format, d.capacity);
        }
        let entries: Vec<_> = fs::read_dir(out)
            .expect("read the target dir")
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        assert_eq!(
            entries.len(),
            self.disks.len(),
            "the target dir should hold the targets only: {entries:?}"
        );
    }
}

/// About 24 MiB: a streamOptimized VMDK, a qcow2 and a gzip raw disk of
/// mostly random data, with a SHA-256 manifest.
fn big_package(w: &Work) -> Package {
    let src = w.mkdir("src");
    let disks = vec![
        (
            ova::prepare(&src, "a", &BIG_A, Source::Vmdk),
            "vm-disk1.vmdk",
        ),
        (
            ova::prepare(&src, "b", &BIG_B, Source::Qcow2V3),
            "vm-disk2.qcow2",
        ),
        (
            ova::prepare(&src, "c", &BIG_C, Source::Gzip),
            "vm-disk3.img",
        ),
    ];
    let mut o = Ova::new().manifest(Manifest::Sha256);
    for (i, (d, href)) in disks.iter().enumerate() {
        o = o.disk(d.disk(i + 1, href));
    }
    let path = o.build(&src, "vm.ova");
    let bytes = fs::read(&path).expect("read the package");
    assert!(
        bytes.len() as u64 > 20 * MIB,
        "the package is only {} bytes",
        bytes.len()
    );
    Package {
        bytes,
        disks: disks.into_iter().map(|(d, h)| (d, h.to_owned())).collect(),
    }
}

/// The three-disk package of the resume tests (a few MiB).
fn small_package(w: &Work) -> Package {
    let p = three_disks(w, false);
    Package {
        bytes: fs::read(&p.path).expect("read the package"),
        disks: p
            .disks
            .into_iter()
            .map(|(d, href, _, _)| (d, href.to_owned()))
            .collect(),
    }
}

/// `ovaio import URL --dir OUT --json` and `extra`.
fn import(url: &str, out: &Path, extra: &[&str]) -> Outcome {
    let mut c = ovaio().arg("import").arg(url).arg("--dir").arg(out);
    for a in extra {
        c = c.arg(a);
    }
    c.arg("--json").run()
}

/// The number `key` of the summary.
fn number(summary: &Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary without a number {key:?}: {summary}"))
}

/// Checks a run of requests in which every connection but the last was
/// cut: the first asks for the whole package; each next one asks for the
/// rest (`Range: bytes=N-`) from no further than what the server had sent
/// and no more than [`IN_FLIGHT`] before it, carrying `validator` in
/// `If-Range`, and is answered 206; the last one ends the package.
fn assert_resumed(reqs: &[Request], len: u64, validator: &str) {
    let first = &reqs[0];
    assert_eq!(first.method, "GET", "{first:?}");
    assert!(
        first.range.is_none() || first.range_start() == Some(0),
        "the first request asks for part of the package: {first:?}"
    );
    assert_eq!(first.if_range, None, "{first:?}");
    assert_eq!(first.status, 200, "{first:?}");
    for (i, pair) in reqs.windows(2).enumerate() {
        let (prev, next) = (&pair[0], &pair[1]);
        assert!(
            prev.cut,
            "request {i} was not cut, yet another followed: {reqs:#?}"
        );
        let sent_to = prev.start + prev.sent;
        let n = next
            .range_start()
            .unwrap_or_else(|| panic!("request {} has no `Range: bytes=N-`: {next:?}", i + 1));
        assert!(
            n > prev.start,
            "request {} resumes at {n}, no further than the cut one's start {}",
            i + 1,
            prev.start
        );
        assert!(
            n <= sent_to,
            "request {} resumes at {n}, beyond the {sent_to} bytes the server had sent",
            i + 1
        );
        assert!(
            sent_to - n <= IN_FLIGHT,
            "request {} resumes at {n}, {} bytes before what the server had sent",
            i + 1,
            sent_to - n
        );
        assert_eq!(
            next.if_range.as_deref(),
            Some(validator),
            "request {} `If-Range`",
            i + 1
        );
        assert_eq!(next.status, 206, "{next:?}");
    }
    let last = reqs.last().expect("a request");
    assert!(!last.cut && !last.broken, "{last:?}");
    assert_eq!(
        last.start + last.sent,
        len,
        "the last answer ends the package"
    );
}

// ---------------------------------------------------------------------------
// The server on its own.

/// One raw response: status, headers, body and how reading ended.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The error that ended the read, if it did not end at EOF.
    error: Option<ErrorKind>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET target` with `headers`, read to the end of the connection.
fn raw_get(port: u16, target: &str, headers: &[(&str, &str)]) -> Raw {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).expect("send the request");
    let mut all = Vec::new();
    let error = c.read_to_end(&mut all).err().map(|e| e.kind());
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(all[..end].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Raw {
        status,
        headers,
        body: all[end + 4..].to_vec(),
        error,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn http_source_answers_ranges_and_validators() {
    let data = pattern(10_000);
    let s = HttpSource::start(data.clone(), Options::default());
    let port = s.port;

    let whole = raw_get(port, "/vm.ova", &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data);
    assert_eq!(whole.error, None);
    assert_eq!(whole.header("Content-Length"), Some("10000"));
    assert_eq!(whole.header("ETag"), Some(ETAG_1));
    assert_eq!(whole.header("Last-Modified"), Some(LAST_MODIFIED_1));
    assert_eq!(whole.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(whole.header("Connection"), Some("close"));

    let part = raw_get(port, "/vm.ova?x=1", &[("Range", "bytes=100-")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.header("Content-Range"), Some("bytes 100-9999/10000"));
    assert_eq!(part.header("Content-Length"), Some("9900"));
    assert_eq!(part.body, data[100..]);

    for validator in [ETAG_1, LAST_MODIFIED_1] {
        let r = raw_get(
            port,
            "/vm.ova",
            &[("Range", "bytes=9000-"), ("If-Range", validator)],
        );
        assert_eq!(r.status, 206, "If-Range {validator}");
        assert_eq!(r.body, data[9000..]);
    }
    let stale = raw_get(
        port,
        "/vm.ova",
        &[("Range", "bytes=9000-"), ("If-Range", "\"other\"")],
    );
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, data);

    let bounded = raw_get(port, "/vm.ova", &[("Range", "bytes=10-19")]);
    assert_eq!(bounded.status, 206);
    assert_eq!(bounded.body, data[10..20]);
    assert_eq!(
        raw_get(port, "/vm.ova", &[("Range", "bytes=10000-")]).status,
        416
    );
    assert_eq!(raw_get(port, "/other.ova", &[]).status, 404);

    let reqs = s.requests();
    assert_eq!(reqs.len(), 8, "{reqs:#?}");
    assert_eq!(reqs[1].target, "/vm.ova?x=1");
    assert_eq!(reqs[1].range_start(), Some(100));
    assert_eq!(reqs[1].start, 100);
    assert_eq!(reqs[1].sent, 9900);
    assert_eq!(reqs[2].if_range.as_deref(), Some(ETAG_1));
    assert_eq!(reqs[7].index, None);
    let package = s.package_requests();
    assert_eq!(package.len(), 7);
    assert!(package.iter().enumerate().all(|(i, r)| r.index == Some(i)));
    assert_eq!(s.body_bytes(), 10_000 + 9900 + 2 * 1000 + 10_000 + 10);
}

#[test]
fn http_source_cuts_and_misbehaves_on_request() {
    let data = pattern(100_000);
    let start = |o: Options| HttpSource::start(data.clone(), o);

    let reset = start(Options {
        reset_every: Some(30_000),
        ..Options::default()
    });
    let r = raw_get(reset.port, "/vm.ova", &[]);
    assert_eq!(r.header("Content-Length"), Some("100000"));
    assert_eq!(r.error, Some(ErrorKind::ConnectionReset));
    assert!(r.body.len() <= 30_000 && data.starts_with(&r.body));
    let r = raw_get(reset.port, "/vm.ova", &[("Range", "bytes=90000-")]);
    assert_eq!((r.status, r.error), (206, None), "a short rest is not cut");
    assert_eq!(r.body, data[90_000..]);
    let reqs = reset.requests();
    assert!(reqs[0].cut && reqs[0].sent == 30_000, "{:?}", reqs[0]);
    assert!(!reqs[1].cut && reqs[1].sent == 10_000, "{:?}", reqs[1]);

    let close = start(Options {
        reset_every: Some(30_000),
        cut: Cut::Close,
        ..Options::default()
    });
    let r = raw_get(close.port, "/vm.ova", &[]);
    assert_eq!(r.error, None);
    assert_eq!(r.body, data[..30_000], "a clean cut delivers what was sent");

    let ignoring = start(Options {
        ignore_range: true,
        ..Options::default()
    });
    let r = raw_get(ignoring.port, "/vm.ova", &[("Range", "bytes=100-")]);
    assert_eq!((r.status, r.body.len()), (200, data.len()));

    let changing = start(Options {
        change_etag_after: Some(1),
        ..Options::default()
    });
    assert_eq!(
        raw_get(changing.port, "/vm.ova", &[]).header("ETag"),
        Some(ETAG_1)
    );
    let r = raw_get(
        changing.port,
        "/vm.ova",
        &[("Range", "bytes=100-"), ("If-Range", ETAG_1)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ETag"), Some(ETAG_2));
    assert_eq!(r.body.len(), data.len());
    assert_ne!(r.body, data, "the changed package has other bytes");

    let dated = start(Options {
        no_etag: true,
        ..Options::default()
    });
    let r = raw_get(
        dated.port,
        "/vm.ova",
        &[("Range", "bytes=100-"), ("If-Range", LAST_MODIFIED_1)],
    );
    assert_eq!((r.status, r.header("ETag")), (206, None));
    assert_eq!(r.header("Last-Modified"), Some(LAST_MODIFIED_1));

    let failing = start(Options {
        status: Some(403),
        ..Options::default()
    });
    let r = raw_get(failing.port, "/vm.ova", &[]);
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("403"));
    let flaky = start(Options {
        status_at: HashMap::from([(0, 503)]),
        ..Options::default()
    });
    assert_eq!(raw_get(flaky.port, "/vm.ova", &[]).status, 503);
    assert_eq!(raw_get(flaky.port, "/vm.ova", &[]).status, 200);

    let moving = start(Options {
        redirects: vec![Redirect {
            from: "/old.ova".to_owned(),
            to: "/vm.ova".to_owned(),
            status: 302,
        }],
        ..Options::default()
    });
    let r = raw_get(moving.port, "/old.ova?t=1", &[]);
    assert_eq!((r.status, r.header("Location")), (302, Some("/vm.ova")));
    assert_eq!(moving.package_requests().len(), 0);
}

// ---------------------------------------------------------------------------
// Imports.

#[test]
fn a_package_survives_connection_resets() {
    let w = Work::new();
    let pkg = big_package(&w);
    let len = pkg.len();
    let s = HttpSource::start(
        pkg.bytes.clone(),
        Options {
            reset_every: Some(3 * MIB),
            cut: Cut::Reset,
            ..Options::default()
        },
    );
    let out = w.mkdir("out");
    let o = import(&s.url(), &out, &["--format", "qcow2"]);
    o.assert_success();
    pkg.assert_imported(&out, Target::Qcow2);

    let reqs = s.requests();
    assert_eq!(reqs.len(), s.package_requests().len(), "{reqs:#?}");
    assert!(
        reqs.len() as u64 > len / (3 * MIB),
        "{} requests for {len} bytes cut every 3 MiB",
        reqs.len()
    );
    assert_resumed(&reqs, len, ETAG_1);
    let cuts = reqs.iter().filter(|r| r.cut).count() as u64;
    // Each cut may cost what was in flight (see IN_FLIGHT); beyond that,
    // 1 % of slack, and no byte of the package is fetched twice.
    let sent = s.body_bytes();
    assert!(
        sent <= len + len / 100 + cuts * IN_FLIGHT,
        "the server sent {sent} bytes for a {len}-byte package over {cuts} cuts"
    );

    let summary = o.json();
    assert_eq!(summary["source"], s.url(), "{summary}");
    assert_eq!(number(&summary, "bytes_read"), len, "{summary}");
    assert_eq!(
        number(&summary, "resumed"),
        cuts,
        "one resume per cut: {summary}"
    );
}

#[test]
fn an_uncut_package_takes_one_get() {
    let w = Work::new();
    let pkg = big_package(&w);
    let s = HttpSource::start(pkg.bytes.clone(), Options::default());
    let out = w.mkdir("out");
    let o = import(&s.url(), &out, &[]);
    o.assert_success();
    pkg.assert_imported(&out, Target::Raw);

    let reqs = s.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[0].sent, pkg.len());
    let summary = o.json();
    assert_eq!(number(&summary, "bytes_read"), pkg.len(), "{summary}");
    assert_eq!(number(&summary, "resumed"), 0, "{summary}");
}

#[test]
fn bodies_that_end_early_resume_with_last_modified_when_there_is_no_etag() {
    let w = Work::new();
    let pkg = small_package(&w);
    let len = pkg.len();
    let s = HttpSource::start(
        pkg.bytes.clone(),
        Options {
            reset_every: Some(len / 4 + 1),
            cut: Cut::Close,
            no_etag: true,
            ..Options::default()
        },
    );
    let out = w.mkdir("out");
    let o = import(&s.url(), &out, &[]);
    o.assert_success();
    pkg.assert_imported(&out, Target::Raw);
    let reqs = s.requests();
    assert!(reqs.len() >= 4, "{reqs:#?}");
    assert_resumed(&reqs, len, LAST_MODIFIED_1);
    assert!(number(&o.json(), "resumed") >= 3, "{}", o.stdout);
}

#[test]
fn five_hundreds_between_cuts_are_retried_from_the_same_offset() {
    let w = Work::new();
    let pkg = small_package(&w);
    let len = pkg.len();
    let s = HttpSource::start(
        pkg.bytes.clone(),
        Options {
            reset_every: Some(len / 3 + 1),
            cut: Cut::Close,
            status_at: HashMap::from([(1, 503), (2, 502)]),
            ..Options::default()
        },
    );
    let out = w.mkdir("out");
    let o = import(&s.url(), &out, &[]);
    o.assert_success();
    pkg.assert_imported(&out, Target::Raw);
    let reqs = s.requests();
    assert!(reqs.len() >= 5, "{reqs:#?}");
    assert_eq!((reqs[1].status, reqs[2].status), (503, 502), "{reqs:#?}");
    let n = reqs[1]
        .range_start()
        .expect("a ranged request after the cut");
    for r in &reqs[1..4] {
        assert_eq!(r.range_start(), Some(n), "the 5xx moved nothing on: {r:?}");
        assert_eq!(r.if_range.as_deref(), Some(ETAG_1), "{r:?}");
    }
    let answered: Vec<Request> = reqs.into_iter().filter(|r| r.status < 500).collect();
    assert_resumed(&answered, len, ETAG_1);
}

#[test]
fn a_server_that_ignores_range_fails_the_import_and_leaves_nothing() {
    let w = Work::new();
    let pkg = small_package(&w);
    let s = HttpSource::start(
        pkg.bytes.clone(),
        Options {
            reset_every: Some(pkg.len() / 4),
            ignore_range: true,
            ..Options::default()
        },
    );
    let out = w.mkdir("out");
    import(&s.url(), &out, &[]).assert_error(&["Range"]);
    assert_dir_empty(&out);
    let reqs = s.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert!(reqs[1].range_start().is_some_and(|n| n > 0), "{reqs:#?}");
    assert_eq!(reqs[1].status, 200);
}

#[test]
fn a_package_that_changed_between_requests_fails_the_import_and_leaves_nothing() {
    let w = Work::new();
    let pkg = small_package(&w);
    let s = HttpSource::start(
        pkg.bytes.clone(),
        Options {
            reset_every: Some(pkg.len() / 4),
            change_etag_after: Some(1),
            ..Options::default()
        },
    );
    let out = w.mkdir("out");
    let o = import(&s.url(), &out, &["--format", "qcow2"]);
    o.assert_error(&["changed"]);
    // An integrity failure, as a manifest mismatch is.
    assert_eq!(o.status.code(), Some(5));
    assert_dir_empty(&out);
    let reqs = s.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(reqs[1].if_range.as_deref(), Some(ETAG_1));
    assert_eq!(
        (reqs[1].status, reqs[1].etag.as_deref()),
        (200, Some(ETAG_2))
    );
}

#[test]
fn a_package_that_changed_without_an_etag_fails_the_import_and_leaves_nothing() {
    let w = Work::new();
    let pkg = small_package(&w);
    let s = HttpSource::start(
        pkg.bytes.clone(),
        Options {
            reset_every: Some(pkg.len() / 4),
            cut: Cut::Close,
            no_etag: true,
            change_etag_after: Some(1),
            ..Options::default()
        },
    );
    let out = w.mkdir("out");
    let o = import(&s.url(), &out, &[]);
    // Without an ETag, the change of Last-Modified is what shows it.
    o.assert_error(&["changed", "last modified"]);
    assert_eq!(o.status.code(), Some(5));
    assert_dir_empty(&out);
    let reqs = s.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(reqs[1].if_range.as_deref(), Some(LAST_MODIFIED_1));
    assert_eq!(reqs[1].status, 200);
}

/// A package answered with `status`: the import fails at once with
/// `exit`, naming the status, asks nothing again and leaves nothing.
fn refused_at_once(status: u16, exit: i32) {
    let w = Work::new();
    let pkg = small_package(&w);
    let s = HttpSource::start(
        pkg.bytes,
        Options {
            status: Some(status),
            ..Options::default()
        },
    );
    let out = w.mkdir("out");
    let o = import(&s.url(), &out, &[]);
    o.assert_error(&[&status.to_string()]);
    assert_eq!(o.status.code(), Some(exit), "{}", o.stderr);
    assert_dir_empty(&out);
    assert_eq!(s.requests().len(), 1, "a {status} is not asked again");
}

#[test]
fn not_found_exits_4_and_leaves_nothing() {
    refused_at_once(404, 4);
}

#[test]
fn forbidden_fails_at_once_and_leaves_nothing() {
    refused_at_once(403, 1);
}

#[test]
fn five_redirects_are_followed_even_across_cuts() {
    let w = Work::new();
    let pkg = small_package(&w);
    let hops = ["/r1", "/r2", "/r3", "/r4", "/r5", "/vm.ova"];
    let redirects = hops
        .windows(2)
        .zip([301, 302, 307, 308, 302])
        .map(|(p, status)| Redirect {
            from: p[0].to_owned(),
            to: p[1].to_owned(),
            status,
        })
        .collect();
    let s = HttpSource::start(
        pkg.bytes.clone(),
        Options {
            reset_every: Some(pkg.len() / 2 + 1),
            cut: Cut::Close,
            redirects,
            ..Options::default()
        },
    );
    let out = w.mkdir("out");
    let o = import(&s.url_of("/r1"), &out, &[]);
    o.assert_success();
    pkg.assert_imported(&out, Target::Raw);
    let reqs = s.requests();
    let firsts: Vec<&str> = reqs.iter().take(6).map(|r| r.target.as_str()).collect();
    assert_eq!(firsts, hops, "{reqs:#?}");
    assert_resumed(&s.package_requests(), pkg.len(), ETAG_1);
}

#[test]
fn a_redirect_loop_fails_and_leaves_nothing() {
    let w = Work::new();
    let pkg = small_package(&w);
    let s = HttpSource::start(
        pkg.bytes,
        Options {
            redirects: vec![Redirect {
                from: "/loop".to_owned(),
                to: "/loop".to_owned(),
                status: 302,
            }],
            ..Options::default()
        },
    );
    let out = w.mkdir("out");
    import(&s.url_of("/loop"), &out, &[]).assert_error(&[]);
    assert_dir_empty(&out);
    let n = s.requests().len();
    assert!(
        (2..=6).contains(&n),
        "{n} requests: a redirect loop is followed 5 times at most"
    );
}

#[test]
fn the_summary_hides_the_query_string() {
    let w = Work::new();
    let pkg = small_package(&w);
    let s = HttpSource::start(
        pkg.bytes.clone(),
        Options {
            reset_every: Some(pkg.len() / 2 + 1),
            cut: Cut::Close,
            ..Options::default()
        },
    );
    let query = "?token=s3cret&expires=1";
    let out = w.mkdir("out");
    let o = import(&s.url_of(&format!("/vm.ova{query}")), &out, &[]);
    o.assert_success();
    pkg.assert_imported(&out, Target::Raw);
    let summary = o.json();
    assert_eq!(summary["source"], format!("{}?…", s.url()), "{summary}");
    assert_eq!(number(&summary, "bytes_read"), pkg.len());
    assert!(
        !o.stdout.contains("s3cret") && !o.stderr.contains("s3cret"),
        "the query string shows:\n{}\n{}",
        o.stdout,
        o.stderr
    );
    let reqs = s.requests();
    assert!(reqs.len() >= 2, "{reqs:#?}");
    for r in &reqs {
        assert_eq!(
            r.target,
            format!("/vm.ova{query}"),
            "every request keeps the query"
        );
    }
    assert_resumed(&reqs, pkg.len(), ETAG_1);
}

#[test]
fn an_https_package_resumes_with_its_ca_and_is_refused_without_it() {
    let w = Work::new();
    let pkg = small_package(&w);
    let len = pkg.len();
    let s = HttpSource::start(
        pkg.bytes.clone(),
        Options {
            tls: true,
            reset_every: Some(len / 3 + 1),
            ..Options::default()
        },
    );
    assert!(s.url().starts_with("https://"), "{}", s.url());
    let ca = w.path("ca.pem");
    fs::write(&ca, s.cert_pem().expect("a certificate")).expect("write the CA");

    let untrusted = w.mkdir("untrusted");
    import(&s.url(), &untrusted, &[]).assert_error(&[]);
    assert_dir_empty(&untrusted);
    assert!(
        s.requests().is_empty(),
        "a request went out over an unverified connection: {:#?}",
        s.requests()
    );

    let out = w.mkdir("out");
    let o = import(
        &s.url(),
        &out,
        &["--cacert", ca.to_str().expect("utf-8 path")],
    );
    o.assert_success();
    pkg.assert_imported(&out, Target::Raw);
    let reqs = s.requests();
    assert!(reqs.len() >= 3, "{reqs:#?}");
    assert_resumed(&reqs, len, ETAG_1);
    let cuts = reqs.iter().filter(|r| r.cut).count() as u64;
    assert_eq!(number(&o.json(), "resumed"), cuts, "{}", o.stdout);
}
