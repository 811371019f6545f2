//! The upload page and the status endpoint over HTTP, without a browser
//! (`tests/server_browser_page.rs` drives the page in Chromium):
//!
//! - `GET /upload/{ticket}` answers a form for `ova-import` and writable
//!   `image` tickets, words instead of a form for an unknown, expired or
//!   other ticket, always with a policy that lets the page run only its
//!   own script, from `/upload/assets/`;
//! - `GET /images/{ticket}/status` tells the ticket's holder where the
//!   transfer stands (state, offset, each disk's bytes, state and error,
//!   the manifest verdict), without what only the engine should see, and
//!   reading it does not keep a ticket alive;
//! - the log never holds a whole ticket id from these paths.

mod support;

use serde_json::{Value, json};
use support::resume::{import_ticket, three_disks};
use support::server::{Reply, Server};
use support::{Work, file_len};

/// The policy every answer under `/upload/` carries.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const ID: &str = "7f3c0b2e-9d41-4f0e-8a66-5b1d2c3e4f50";

fn page(s: &Server, id: &str) -> Reply {
    s.data("GET", &format!("/upload/{id}"), &[])
}

fn status(s: &Server, id: &str) -> Reply {
    s.data("GET", &format!("/images/{id}/status"), &[])
}

/// The headers every answer under `/upload/` has, whatever it is.
fn assert_guarded(r: &Reply) {
    assert_eq!(r.header("content-security-policy"), Some(CSP), "{r:?}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}

fn assert_html(r: &Reply) {
    assert_guarded(r);
    assert_eq!(
        r.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{r:?}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let html = r.text();
    // The policy allows no inline script or style: there is none.
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("<style"), "{html}");
    assert!(!html.contains(" style="), "{html}");
    assert!(!html.contains(" onclick="), "{html}");
}

fn image_ticket(s: &Server, id: &str, ops: &[&str]) {
    let target = s.root.join(format!("{id}.raw"));
    std::fs::File::create(&target)
        .and_then(|f| f.set_len(1 << 20))
        .expect("create the volume");
    s.add_ticket(&json!({
        "uuid": id, "size": 1 << 20, "url": s.file_url(&format!("{id}.raw")), "ops": ops,
        "timeout": 300, "transfer_id": "engine-transfer-42",
    }));
}

#[test]
fn the_page_is_a_form_with_its_own_script_and_style() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    import_ticket(&s, ID, &p, json!({}));

    let r = page(&s, ID);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_html(&r);
    let html = r.text();
    assert!(html.contains("Upload a virtual machine"), "{html}");
    assert!(html.contains("data-kind=\"ova-import\""), "{html}");
    assert!(html.contains("<input type=\"file\" id=\"file\""), "{html}");
    // The script and style sheet come from the server itself, by a path
    // without the ticket, which names the build.
    let src = html
        .split("<script src=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("a script element");
    assert!(src.starts_with("/upload/assets/upload.js?v="), "{src}");
    let css = html
        .split("<link rel=\"stylesheet\" href=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("a style sheet");
    assert!(css.starts_with("/upload/assets/upload.css?v="), "{css}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    for (path, ctype, marker) in [
        (src, "text/javascript; charset=utf-8", "\"use strict\""),
        (css, "text/css; charset=utf-8", ".bar"),
    ] {
        let a = s.data("GET", path, &[]);
        assert_eq!(a.status, 200, "{path}");
        assert_guarded(&a);
        assert_eq!(a.header("content-type"), Some(ctype));
        assert_eq!(a.header("cache-control"), Some("public, max-age=86400"));
        assert!(a.text().contains(marker), "{path}");
    }
    // HEAD answers as GET does, without a body.
    let h = s.data("HEAD", &format!("/upload/{ID}"), &["-I"]);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-security-policy"), Some(CSP));

    // Looking at the page is no activity: the ticket stays pending, with
    // no connection.
    let t = s.ticket(ID);
    assert_eq!(t["state"], "pending", "{t:#}");
    assert_eq!(t["connections"], 0, "{t:#}");
}

#[test]
fn a_page_says_in_words_when_it_cannot_upload() {
    let w = Work::new();
    let s = Server::start(&w);

    // Unknown.
    let r = page(&s, "no-such-ticket");
    assert_eq!(r.status, 403);
    assert_html(&r);
    assert!(
        r.text().contains("This upload link does not work"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("<input"), "no form: {}", r.text());

    // Expired: the same words (an expired ticket is forgotten).
    let p = three_disks(&w, false);
    import_ticket(&s, ID, &p, json!({}));
    assert_eq!(page(&s, ID).status, 200);
    let e = s.control(
        "PATCH",
        &format!("/tickets/{ID}"),
        Some(&json!({"timeout": 0})),
    );
    assert_eq!(e.status, 200, "{}", e.text());
    let r = page(&s, ID);
    assert_eq!(r.status, 403);
    assert!(r.text().contains("This upload link does not work"));
    assert!(
        r.text()
            .contains("Ask whoever gave you the link for a new one")
    );
    assert!(!r.text().contains("<input"));

    // A read-only image ticket cannot upload; a writable one can.
    image_ticket(&s, "image-ro", &["read"]);
    let r = page(&s, "image-ro");
    assert_eq!(r.status, 403);
    assert_html(&r);
    assert!(r.text().contains("This link cannot upload"), "{}", r.text());
    image_ticket(&s, "image-rw", &["write"]);
    let r = page(&s, "image-rw");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Upload a disk image"), "{}", r.text());
    assert!(
        r.text().contains("1.0\u{a0}MiB"),
        "the disk's size: {}",
        r.text()
    );
    assert!(r.text().contains("data-kind=\"image\""));

    // An export ticket is a download: the page links to it.
    s.add_ticket(&json!({
        "uuid": "export-1", "kind": "ova-export", "ops": ["read"], "timeout": 300,
        "ova": {"disks": [{"href": "d.qcow2", "url": s.file_url("image-rw.raw")}]},
    }));
    let r = page(&s, "export-1");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("This link is a download"), "{}", r.text());
    assert!(
        r.text().contains("href=\"/images/export-1\""),
        "{}",
        r.text()
    );

    // Not a page.
    for path in ["/upload/assets/nothing.js", "/upload/a/b", "/upload/"] {
        let r = s.data("GET", path, &[]);
        assert_eq!(r.status, 404, "{path}");
        assert_html(&r);
    }
    let r = s.data("POST", &format!("/upload/{ID}"), &["--data-binary", "x"]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn status_tells_the_holder_where_the_upload_stands() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    import_ticket(&s, ID, &p, json!({"transfer_id": "engine-transfer-42"}));

    let r = status(&s, ID);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["kind"], "ova-import");
    assert_eq!(v["state"], "pending");
    assert_eq!(v["writable"], true);
    assert_eq!(v["inactivity_timeout"], 60);
    assert!(
        v["expires"].as_u64().is_some_and(|e| e > 1_700_000_000),
        "{v:#}"
    );
    let hrefs: Vec<&str> = v["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .map(|d| d["href"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(hrefs, ["disk1.vmdk", "disk2.qcow2", "disk3.img.gz"]);
    assert_no_engine_fields(&v);

    // An upload with curl: the status shows the outcome and the verdict.
    let len = file_len(&p.path);
    let up = s.data(
        "PUT",
        &format!("/images/{ID}"),
        &["-T", &p.path.display().to_string()],
    );
    assert_eq!(up.status, 200, "{}", up.text());
    let v = status(&s, ID).json();
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["manifest"], "verified", "{v:#}");
    assert_eq!(v["offset"], len);
    assert_eq!(v["length"], len);
    for d in v["disks"].as_array().expect("disks") {
        assert_eq!(d["state"], "succeeded", "{v:#}");
        assert!(d["bytes"].as_u64().is_some_and(|b| b > 0), "{v:#}");
        assert!(d.get("error").is_none(), "{v:#}");
    }
    assert_no_engine_fields(&v);
    // The engine sees the verdict too.
    assert_eq!(s.ticket(ID)["manifest"], "verified");

    // Unknown ids are refused as by the rest of the data API.
    let r = status(&s, "no-such-ticket");
    assert_eq!(r.status, 403);
    assert!(r.text().contains("no such ticket"), "{}", r.text());
    let r = s.data(
        "PUT",
        &format!("/images/{ID}/status"),
        &["--data-binary", "x"],
    );
    assert_eq!(r.status, 405);
}

/// What only the engine sees stays out of the holder's status.
fn assert_no_engine_fields(v: &Value) {
    for field in [
        "url",
        "uuid",
        "transfer_id",
        "ova",
        "ops",
        "filename",
        "connections",
    ] {
        assert!(v.get(field).is_none(), "status shows {field}: {v:#}");
    }
    assert!(!v.to_string().contains("engine-transfer-42"), "{v:#}");
    assert!(!v.to_string().contains("file://"), "{v:#}");
}

#[test]
fn status_names_the_disk_a_failure_lies_in() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, true);
    import_ticket(&s, ID, &p, json!({}));

    let up = s.data(
        "PUT",
        &format!("/images/{ID}"),
        &["-T", &p.path.display().to_string()],
    );
    assert_eq!(up.status, 400, "{}", up.text());
    let v = status(&s, ID).json();
    assert_eq!(v["state"], "failed", "{v:#}");
    assert!(v.get("manifest").is_none(), "{v:#}");
    let error = v["error"].as_str().expect("error");
    assert!(error.contains("digest mismatch"), "{error}");
    let disks = v["disks"].as_array().expect("disks");
    for d in disks {
        assert_eq!(d["state"], "failed", "{v:#}");
        if d["href"] == "disk2.qcow2" {
            assert_eq!(d["error"].as_str(), Some(error), "{v:#}");
        } else {
            assert!(d.get("error").is_none(), "{v:#}");
        }
    }
    // The engine's view has the same per-disk error.
    let t = s.ticket(ID);
    assert_eq!(t["disks"][1]["error"].as_str(), Some(error), "{t:#}");
}

#[test]
fn status_of_an_image_ticket() {
    let w = Work::new();
    let s = Server::start(&w);
    image_ticket(&s, "image-1", &["write"]);
    let v = status(&s, "image-1").json();
    assert_eq!(v["kind"], "image");
    assert_eq!(v["size"], 1 << 20);
    assert_eq!(v["format"], "raw");
    assert_eq!(v["writable"], true);
    assert_eq!(v["disks"], json!([]));
    assert_no_engine_fields(&v);
    image_ticket(&s, "image-2", &["read"]);
    assert_eq!(status(&s, "image-2").json()["writable"], false);
}

#[test]
fn reading_the_status_does_not_keep_a_ticket_alive() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    import_ticket(&s, ID, &p, json!({"inactivity_timeout": 1}));
    // A page left open asks every second; here, as fast as curl goes.
    support::poll("the idle ticket to expire while its status is read", || {
        (status(&s, ID).status == 403).then_some(())
    });
    assert_eq!(page(&s, ID).status, 403);
}

#[test]
fn logs_never_hold_a_whole_ticket_id() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    import_ticket(&s, ID, &p, json!({}));
    assert_eq!(page(&s, ID).status, 200);
    assert_eq!(status(&s, ID).status, 200);
    assert_eq!(page(&s, &format!("{ID}-unknown")).status, 403);
    assert_eq!(s.data("GET", &format!("/upload/{ID}/x"), &[]).status, 404);
    let (_, log) = s.stop_with_log();
    let log = log.join("\n");
    assert!(log.contains("/upload/7f3c0b2e..."), "{log}");
    assert!(log.contains("/images/7f3c0b2e.../status"), "{log}");
    assert!(!log.contains(ID), "a whole ticket id in the log:\n{log}");
}
