//! Resumable `ova-import` uploads against a real `ovaio serve`, through a
//! proxy that cuts connections ([`support::proxy`]): `curl` resumes by
//! hand, `HEAD` for the committed offset, then `PUT -T package -C offset`
//! (which sends `Content-Range: bytes N-(L-1)/L`). The targets must equal
//! an uninterrupted import's (`qemu-img compare` against the sources), a
//! lying manifest must still fail with nothing left, a resume from a wrong
//! offset must be refused without changing anything, the server's byte
//! counter must show no byte written twice, and a paused upload must go
//! with its ticket. tus 1.0 is spoken by `curl` too, request by request.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::image::{MAIN, SMALL, Source, Target, assert_target};
use support::ova::{self, Manifest, Ova};
use support::poll;
use support::proxy::CuttingProxy;
use support::resume::{Package, import_ticket as ticket, received, three_disks};
use support::server::{Reply, Server, curl};
use support::{Work, assert_absent, file_len};

/// The ticket's state once it is no longer `active` (its writer gone).
fn settled(s: &Server, id: &str) -> Value {
    poll(&format!("ticket {id} to settle"), || {
        let t = s.ticket(id);
        (t["state"] != "active").then_some(t)
    })
}

fn assert_targets(s: &Server, p: &Package) {
    for (d, _, file, t) in &p.disks {
        assert_target(&d.raw, &s.root.join(file), *t, d.capacity);
    }
}

/// Every name in the storage root.
fn root_names(s: &Server) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&s.root)
        .expect("read root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `curl -I`: the upload's committed offset and length.
fn head(s: &Server, url: &str) -> Reply {
    curl(&[
        "--cacert".into(),
        s.cert.display().to_string(),
        "-I".into(),
        url.into(),
    ])
}

fn offset_of(r: &Reply) -> u64 {
    r.header("upload-offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Upload-Offset: {r:?}"))
}

/// `curl -T package -C offset`: the rest of the package from `offset`.
fn put_from(s: &Server, url: &str, package: &Path, offset: u64, extra: &[&str]) -> Reply {
    let mut args: Vec<String> = vec![
        "--cacert".into(),
        s.cert.display().to_string(),
        "-T".into(),
        package.display().to_string(),
        "-C".into(),
        offset.to_string(),
        "-H".into(),
        "content-type: application/octet-stream".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(url.into());
    curl(&args)
}

/// What [`resume_until_done`] saw.
struct Run {
    /// The last answer to a `PUT` (the summary or the failure), if one
    /// arrived: a cut may also take the answer of a complete upload.
    last: Option<Reply>,
    /// `PUT`s cut off.
    cut_puts: usize,
    /// Package bytes committed during the `PUT`s that were cut.
    committed_in_cut_puts: u64,
}

/// Resumes the upload through `url` as a person with curl would, until the
/// ticket has its outcome: `HEAD`, `PUT` from the offset, and after a cut
/// (or a 409 while the server has not yet seen the cut) again.
fn resume_until_done(s: &Server, id: &str, url: &str, package: &Path) -> Run {
    let len = file_len(package);
    let mut run = Run {
        last: None,
        cut_puts: 0,
        committed_in_cut_puts: 0,
    };
    for _ in 0..200 {
        let h = head(s, url);
        if h.status == 409 {
            // The transfer ended (failed) while its answer was cut.
            return run;
        }
        assert_eq!(h.status, 200, "HEAD: {h:?}\n{}", s.log());
        let offset = offset_of(&h);
        // Known once the first PUT declared it (this ticket has no size).
        if offset > 0 {
            assert_eq!(
                h.header("upload-length"),
                Some(len.to_string().as_str()),
                "{h:?}"
            );
        }
        if offset == len && s.ticket(id)["state"] == "succeeded" {
            return run;
        }
        let r = put_from(s, url, package, offset, &[]);
        match r.status {
            200 | 400 => {
                run.last = Some(r);
                return run;
            }
            0 => {
                let t = settled(s, id);
                run.cut_puts += 1;
                let now = t["offset"].as_u64().expect("offset");
                run.committed_in_cut_puts += now - offset;
                if t["state"] != "paused" {
                    return run;
                }
            }
            409 => {
                settled(s, id);
            }
            other => panic!("PUT from {offset}: {other} {}\n{}", r.text(), s.log()),
        }
    }
    panic!("the upload did not end in 200 attempts");
}

/// The proof: an OVA with a VMDK, a qcow2 and a gzip disk goes up through
/// a proxy that cuts at least ten connections, each resumed with `HEAD`
/// and a `Content-Range` `PUT`; the targets equal the sources; the bytes
/// the server received exceed the package by at most what was in flight
/// (forwarded but not committed) at each cut.
#[test]
fn ova_upload_resumes_through_ten_cuts() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    let len = file_len(&p.path);
    ticket(&s, "cuts", &p, json!({}));
    let seed = 0x5eed_0000 ^ len;
    let proxy = CuttingProxy::start(s.port, 12, 64 << 10, (len / 14).max(128 << 10), seed);
    let url = proxy.image_url("cuts");

    let run = resume_until_done(&s, "cuts", &url, &p.path);

    assert!(proxy.cuts() >= 10, "only {} cuts", proxy.cuts());
    assert_eq!(run.cut_puts, proxy.cuts(), "every cut hit a PUT");
    let t = s.ticket("cuts");
    assert_eq!(t["state"], "succeeded", "{t}\n{}", s.log());
    assert_eq!(t["offset"].as_u64(), Some(len), "{t}");
    for d in t["disks"].as_array().expect("disks") {
        assert_eq!(d["state"], "succeeded", "{t}");
    }
    if let Some(r) = &run.last {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["manifest"], "verified", "{}", r.text());
    }
    assert_targets(&s, &p);
    assert_eq!(root_names(&s), ["t1.qcow2", "t2.raw", "t3.raw"]);

    let got = received(&s);
    let forwarded_in_cuts: u64 = proxy.conns().iter().filter(|c| c.cut).map(|c| c.up).sum();
    let in_flight = forwarded_in_cuts - run.committed_in_cut_puts;
    eprintln!(
        "package {len} bytes, {} cuts, received {got} (+{}), in flight at the cuts at most {in_flight}",
        proxy.cuts(),
        got - len.min(got)
    );
    assert!(got >= len, "received {got} < package {len}");
    assert!(
        got - len <= in_flight,
        "received {got} bytes for a {len}-byte package: more than the {in_flight} bytes in flight at the cuts"
    );
}

/// A package whose manifest lies about one disk, uploaded across cuts,
/// still fails once complete, and leaves no target, partial or whole.
#[test]
fn lying_manifest_fails_across_cuts_and_leaves_nothing() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, true);
    let len = file_len(&p.path);
    ticket(&s, "liar", &p, json!({}));
    let proxy = CuttingProxy::start(s.port, 10, 64 << 10, (len / 12).max(128 << 10), len);
    let url = proxy.image_url("liar");

    let run = resume_until_done(&s, "liar", &url, &p.path);

    assert!(proxy.cuts() >= 10, "only {} cuts", proxy.cuts());
    if let Some(r) = &run.last {
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("disk2.qcow2"), "{}", r.text());
    }
    let t = poll("the ticket to fail", || {
        let t = s.ticket("liar");
        (t["state"] == "failed").then_some(t)
    });
    assert!(
        t["error"].as_str().unwrap_or_default().contains("digest"),
        "{t}"
    );
    poll("every partial target to go", || {
        root_names(&s).is_empty().then_some(())
    });
    for (_, _, file, _) in &p.disks {
        assert_absent(&s.root.join(file));
    }
}

/// Sends the first `n` bytes of `package` as a `Content-Range` part of
/// the whole: the upload pauses after it.
fn put_part(s: &Server, id: &str, package: &Path, n: u64) -> Reply {
    let len = file_len(package);
    let data = std::fs::read(package).expect("read package");
    let part = package.with_extension("part");
    std::fs::write(&part, &data[..n as usize]).expect("write part");
    s.data(
        "PUT",
        &format!("/images/{id}"),
        &[
            "--data-binary",
            &format!("@{}", part.display()),
            "-H",
            &format!("content-range: bytes 0-{}/{len}", n - 1),
        ],
    )
}

/// A resume that starts after the committed offset is refused (416 for a
/// `PUT`, 409 for a tus `PATCH`) and changes nothing; one that starts
/// before it has the overlap skipped, so the package completes with the
/// same targets and the server counts the overlap as received once more.
#[test]
fn wrong_offsets_are_refused_and_overlaps_skipped() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    let len = file_len(&p.path);
    ticket(&s, "off", &p, json!({}));
    let url = s.image_url("off");

    let first = len / 3;
    let r = put_part(&s, "off", &p.path, first);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "paused", "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some(first.to_string().as_str()));
    let t = s.ticket("off");
    assert_eq!(t["state"], "paused", "{t}");
    assert_eq!(t["offset"].as_u64(), Some(first), "{t}");
    let partials = root_names(&s);

    // Past the offset: PUT 416, PATCH 409; nothing moves.
    let r = put_from(&s, &url, &p.path, first + 4096, &[]);
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    assert_eq!(r.header("upload-offset"), Some(first.to_string().as_str()));
    let r = s.data(
        "PATCH",
        "/images/off",
        &[
            "-H",
            "tus-resumable: 1.0.0",
            "-H",
            "content-type: application/offset+octet-stream",
            "-H",
            &format!("upload-offset: {}", first + 1),
            "--data-binary",
            "x",
        ],
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.header("tus-resumable"), Some("1.0.0"));
    assert_eq!(r.header("upload-offset"), Some(first.to_string().as_str()));
    let h = head(&s, &url);
    assert_eq!(offset_of(&h), first);
    let t = s.ticket("off");
    assert_eq!(
        (t["state"].as_str(), t["offset"].as_u64()),
        (Some("paused"), Some(first)),
        "{t}"
    );
    assert_eq!(
        root_names(&s),
        partials,
        "a refused resume touched the targets"
    );
    let before = received(&s);

    // Before the offset: 1000 bytes sent again are skipped.
    let overlap = 1000;
    let r = put_from(&s, &url, &p.path, first - overlap, &[]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_eq!(r.json()["manifest"], "verified", "{}", r.text());
    assert_eq!(s.ticket("off")["state"], "succeeded");
    assert_targets(&s, &p);
    assert_eq!(received(&s) - before, len - first + overlap);
    // A finished upload tells tus clients it is complete.
    let h = head(&s, &url);
    assert_eq!(h.status, 200);
    assert_eq!(offset_of(&h), len);
    assert_eq!(h.header("upload-length"), Some(len.to_string().as_str()));
}

/// A paused upload whose ticket is deleted, or expires, removes its
/// partial targets.
#[test]
fn a_paused_upload_goes_with_its_ticket() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    let len = file_len(&p.path);

    ticket(&s, "del", &p, json!({}));
    assert_eq!(put_part(&s, "del", &p.path, len / 2).status, 200);
    assert_eq!(s.ticket("del")["state"], "paused");
    assert!(
        root_names(&s).iter().any(|n| n.contains(".partial")),
        "{:?}",
        root_names(&s)
    );
    let r = s.control("DELETE", "/tickets/del", None);
    assert_eq!(r.status, 204, "{}", r.text());
    poll("the deleted ticket's partial targets to go", || {
        root_names(&s).is_empty().then_some(())
    });

    // The ticket lives 3 s after its last activity; its pause would last 60.
    ticket(&s, "exp", &p, json!({"timeout": 3}));
    assert_eq!(put_part(&s, "exp", &p.path, len / 2).status, 200);
    assert_eq!(s.ticket("exp")["state"], "paused");
    assert!(!root_names(&s).is_empty());
    poll("the expired ticket's partial targets to go", || {
        root_names(&s).is_empty().then_some(())
    });
    let r = s.control("GET", "/tickets/exp", None);
    assert_eq!(r.status, 404, "{}", r.text());
}

/// A resume with an open range, `bytes N-*/*`, sent chunked (its length
/// unknown): the end of the body is the end of the package.
#[test]
fn chunked_resume_with_an_open_range() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    let len = file_len(&p.path);
    ticket(&s, "open", &p, json!({}));
    let first = len / 2;
    assert_eq!(put_part(&s, "open", &p.path, first).status, 200);
    let data = std::fs::read(&p.path).expect("read");
    let tail = w.path("tail");
    std::fs::write(&tail, &data[first as usize..]).expect("write tail");
    let r = s.data(
        "PUT",
        "/images/open",
        &[
            "--http1.1",
            "-H",
            "transfer-encoding: chunked",
            "-H",
            &format!("content-range: bytes {first}-*/*"),
            "-T",
            &tail.display().to_string(),
        ],
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_eq!(r.json()["manifest"], "verified");
    assert_targets(&s, &p);
}

/// tus 1.0 spoken request by request: `OPTIONS` advertises the version
/// and extensions, a version other than 1.0.0 is refused (412), `POST`
/// creates (201, `Location` the ticket's own URL), `PATCH` needs its
/// content type (415) and writes from `Upload-Offset` (204 with the new
/// offset), `HEAD` tells the offset, and the last `PATCH` completes the
/// import. `DELETE` on another upload terminates it.
#[test]
fn tus_requests_with_curl() {
    let w = Work::new();
    let s = Server::start(&w);
    let src = w.mkdir("src");
    let d = ova::prepare(&src, "s", &SMALL, Source::Qcow2V3);
    let package = Ova::new()
        .disk(d.disk(1, "disk1.qcow2"))
        .manifest(Manifest::Sha256)
        .build(&src, "small.ova");
    let len = file_len(&package);
    let data = std::fs::read(&package).expect("read");
    let p = Package {
        path: package.clone(),
        disks: vec![(d, "disk1.qcow2", "small.raw", Target::Raw)],
    };
    ticket(&s, "tus", &p, json!({"size": len + 1_000_000}));
    let tus = |method: &str, extra: &[&str]| {
        let mut a = vec!["-H", "tus-resumable: 1.0.0"];
        a.extend_from_slice(extra);
        s.data(method, "/images/tus", &a)
    };

    let r = s.data("OPTIONS", "/images/tus", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("tus-version"), Some("1.0.0"));
    let ext = r.header("tus-extension").unwrap_or_default();
    assert!(
        ext.contains("creation") && ext.contains("termination"),
        "{ext}"
    );
    assert_eq!(
        r.header("tus-max-size"),
        Some((len + 1_000_000).to_string().as_str())
    );
    let allow = r.header("allow").unwrap_or_default();
    for m in ["HEAD", "PATCH", "POST", "DELETE"] {
        assert!(allow.contains(m), "Allow: {allow}");
    }

    let r = s.data("HEAD", "/images/tus", &["-I", "-H", "tus-resumable: 0.2.2"]);
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(r.header("tus-version"), Some("1.0.0"));

    let r = tus(
        "POST",
        &[
            "-H",
            &format!("upload-length: {len}"),
            "-H",
            "upload-metadata: filename c21hbGwub3Zh",
        ],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), Some("/images/tus"));
    assert_eq!(r.header("tus-resumable"), Some("1.0.0"));

    let r = tus("HEAD", &["-I"]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("upload-offset"), Some("0"));
    assert_eq!(r.header("upload-length"), Some(len.to_string().as_str()));
    assert_eq!(r.header("upload-metadata"), Some("filename c21hbGwub3Zh"));
    assert_eq!(r.header("cache-control"), Some("no-store"));

    let first = w.path("first");
    let rest = w.path("rest");
    let half = len as usize / 2;
    std::fs::write(&first, &data[..half]).expect("write");
    std::fs::write(&rest, &data[half..]).expect("write");
    let r = tus(
        "PATCH",
        &[
            "-H",
            "upload-offset: 0",
            "--data-binary",
            &format!("@{}", first.display()),
        ],
    );
    assert_eq!(r.status, 415, "{}", r.text());
    let patch = |offset: usize, file: &Path| {
        tus(
            "PATCH",
            &[
                "-H",
                "content-type: application/offset+octet-stream",
                "-H",
                &format!("upload-offset: {offset}"),
                "--data-binary",
                &format!("@{}", file.display()),
            ],
        )
    };
    let r = patch(0, &first);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some(half.to_string().as_str()));
    assert_eq!(s.ticket("tus")["state"], "paused");
    let r = tus("HEAD", &["-I"]);
    assert_eq!(r.header("upload-offset"), Some(half.to_string().as_str()));
    let r = patch(half, &rest);
    assert_eq!(r.status, 204, "{}\n{}", r.text(), s.log());
    assert_eq!(r.header("upload-offset"), Some(len.to_string().as_str()));
    let t = s.ticket("tus");
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_targets(&s, &p);

    // Termination: a second upload, paused half way, deleted by its client.
    std::fs::remove_file(s.root.join("small.raw")).expect("remove target");
    ticket(&s, "tus", &p, json!({"transfer_id": "again"}));
    assert_eq!(patch(0, &first).status, 204);
    assert!(root_names(&s).iter().all(|n| n.contains(".partial")));
    let r = tus("DELETE", &[]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(root_names(&s).is_empty(), "{:?}", root_names(&s));
    let r = s.control("GET", "/tickets/tus", None);
    assert_eq!(r.status, 404, "{}", r.text());
}

/// `HEAD` answers every kind's size as a `GET` would send it.
#[test]
fn head_answers_sizes_on_every_kind() {
    let w = Work::new();
    let s = Server::start(&w);
    MAIN.write_raw(&s.root.join("vol.raw"));
    s.add_ticket(&json!({
        "uuid": "img", "size": MAIN.size, "url": s.file_url("vol.raw"),
        "ops": ["read"], "timeout": 60,
    }));
    let r = s.data("HEAD", "/images/img", &["-I"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-length"),
        Some(MAIN.size.to_string().as_str())
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"));

    s.add_ticket(&json!({
        "uuid": "exp", "kind": "ova-export", "ops": ["read"], "timeout": 60,
        "ova": {"name": "vm", "disks": [{"href": "disk1.qcow2", "url": s.file_url("vol.raw")}]},
    }));
    let h = s.data("HEAD", "/images/exp", &["-I"]);
    assert_eq!(h.status, 200, "{h:?}");
    let g = s.data("GET", "/images/exp", &[]);
    assert_eq!(g.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(g.body.len().to_string().as_str()),
        "HEAD and GET disagree"
    );
    assert_eq!(h.header("etag"), g.header("etag"));

    let src = w.mkdir("src");
    let d = ova::prepare(&src, "s", &SMALL, Source::Raw);
    let package = Ova::new().disk(d.disk(1, "d.img")).build(&src, "x.ova");
    let p = Package {
        path: package,
        disks: vec![(d, "d.img", "d.raw", Target::Raw)],
    };
    ticket(&s, "imp", &p, json!({"size": 123_456}));
    let r = s.data("HEAD", "/images/imp", &["-I"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("upload-offset"), Some("0"));
    assert_eq!(r.header("upload-length"), Some("123456"));
    assert_eq!(r.header("tus-resumable"), Some("1.0.0"));
}
