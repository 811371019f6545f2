//! `GET /tickets` against a real `ovaio serve`: every live ticket of each
//! kind with its state, bytes and disks, filtered by state and kind, gone
//! once expired or deleted; and the server log, which must never hold a
//! whole ticket id (the data API's credential), whatever the requests.

mod support;

use std::fs;
use std::path::Path;

use serde_json::{Value, json};
use support::Work;
use support::image::{SMALL, Source};
use support::ova::{self, Ova};
use support::poll;
use support::server::{Reply, Server};

/// Ticket ids as the engine makes them: long enough that the log's
/// 8-character form is a real cut, and no two alike in those 8.
const IMAGE: &str = "3f6c1a2e-7b4d-4e8a-9c0f-5d2b8e1a6c34";
const IMPORT: &str = "8a0d5e7c-2f1b-4c9e-b6a3-0e4d7f2c9b15";
const EXPORT: &str = "c47e9b12-5a3d-4f6e-8b0c-1d9a2e5f7c68";
const BROKEN: &str = "e15b2d8f-9c4a-4b7e-a3f0-6c8d1e4b2a97";
/// Ids a client sends that name no ticket.
const UNKNOWN: &str = "5d9e0c3b-1a7f-4e2d-8c6b-7f0a3e9d1b52";
const MISMATCH: &str = "b2c8f4e1-6d0a-4a9b-9e3c-2a7d5f8b0e46";

/// The 8 characters logs show of `id`.
fn log_id(id: &str) -> &str {
    &id[..8]
}

/// `GET /tickets{query}`: the list, asserting 200 and an array.
fn list(s: &Server, query: &str) -> Vec<Value> {
    let r = s.control("GET", &format!("/tickets{query}"), None);
    assert_eq!(r.status, 200, "GET /tickets{query}: {}", r.text());
    match r.json() {
        Value::Array(v) => v,
        other => panic!("GET /tickets{query} is not a list: {other}"),
    }
}

/// The `uuid` of each listed ticket, in list order.
fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|t| t["uuid"].as_str().expect("uuid").to_owned())
        .collect()
}

/// The listed ticket `id`.
fn entry<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter()
        .find(|t| t["uuid"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {list:?}"))
}

/// `t` without the fields that move with the clock between two requests.
fn without_clock(t: &Value) -> Value {
    let mut t = t.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("idle_time");
        o.remove("expires");
    }
    t
}

/// Polls the list until ticket `id` is in `state`, and returns it.
fn await_listed(s: &Server, id: &str, state: &str) -> Value {
    poll(&format!("{id} listed as {state}"), || {
        let l = list(s, "");
        let t = entry(&l, id);
        (t["state"] == state).then(|| t.clone())
    })
}

/// `PUT /images/{id}` of the file `body`, with a Content-Length.
fn upload(s: &Server, id: &str, body: &Path) -> Reply {
    s.data(
        "PUT",
        &format!("/images/{id}"),
        &[
            "-H",
            "content-type: application/octet-stream",
            "--data-binary",
            &format!("@{}", body.display()),
        ],
    )
}

/// Installs one ticket of each kind, plus an `ova-import` ticket that
/// will get a broken upload; returns the package for `IMPORT`.
fn four_tickets(w: &Work, s: &Server) -> std::path::PathBuf {
    fs::File::create(s.root.join("image.raw"))
        .and_then(|f| f.set_len(8192))
        .expect("image volume");
    SMALL.write_raw(&s.root.join("source.raw"));
    let p = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    let package = Ova::new()
        .disk(p.disk(1, "disk1.img"))
        .build(w.root(), "in.ova");

    // Transfer ids deliberately differ from the ticket ids: the log shows
    // them whole.
    s.add_ticket(&json!({
        "uuid": IMAGE, "size": 8192, "url": s.file_url("image.raw"),
        "ops": ["read", "write"], "timeout": 300, "transfer_id": "tr-image",
    }));
    for (id, target, tr) in [
        (IMPORT, "imported.raw", "tr-import"),
        (BROKEN, "broken.raw", "tr-broken"),
    ] {
        s.add_ticket(&json!({
            "uuid": id, "kind": "ova-import", "ops": ["write"], "timeout": 300,
            "transfer_id": tr,
            "ova": {"disks": [{"href": "disk1.img", "url": s.file_url(target)}]},
        }));
    }
    s.add_ticket(&json!({
        "uuid": EXPORT, "kind": "ova-export", "ops": ["read"], "timeout": 300,
        "transfer_id": "tr-export",
        "ova": {"name": "vm", "disks": [{"href": "disk1.qcow2", "url": s.file_url("source.raw")}]},
    }));
    package
}

#[test]
fn an_empty_server_lists_nothing() {
    let w = Work::new();
    let s = Server::start(&w);
    let r = s.control("GET", "/tickets", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "[]");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{:?}",
        r.headers
    );
    assert!(list(&s, "?state=active&kind=image").is_empty());

    // Only GET lists; filters name real states and kinds.
    let r = s.control("POST", "/tickets", Some(&json!({})));
    assert_eq!(r.status, 405, "{}", r.text());
    for q in ["?state=running", "?kind=vmdk", "?sort=id"] {
        let r = s.control("GET", &format!("/tickets{q}"), None);
        assert_eq!(r.status, 400, "GET /tickets{q}: {}", r.text());
    }
}

/// One ticket of each kind through its life: listed pending, then with
/// the outcome and bytes of its transfers, filtered, and gone once expired
/// or deleted.
#[test]
fn lists_every_kind_with_its_live_state() {
    let w = Work::new();
    let s = Server::start(&w);
    let package = four_tickets(&w, &s);

    let l = list(&s, "");
    // Sorted by id, whatever the order they were added in.
    assert_eq!(ids(&l), [IMAGE, IMPORT, EXPORT, BROKEN]);
    for (id, kind, ops) in [
        (IMAGE, "image", json!(["read", "write"])),
        (IMPORT, "ova-import", json!(["write"])),
        (EXPORT, "ova-export", json!(["read"])),
        (BROKEN, "ova-import", json!(["write"])),
    ] {
        let t = entry(&l, id);
        assert_eq!(t["kind"], kind, "{t}");
        assert_eq!(t["ops"], ops, "{t}");
        assert_eq!(t["state"], "pending", "{t}");
        assert_eq!(t["transferred"], 0, "{t}");
        assert_eq!(t["connections"], 0, "{t}");
        assert_eq!(t["active"], false, "{t}");
        assert!(t["expires"].as_u64().is_some(), "{t}");
        assert!(t["idle_time"].as_u64().is_some(), "{t}");
        // Each item is what GET /tickets/{id} shows.
        assert_eq!(without_clock(t), without_clock(&s.ticket(id)), "{id}");
    }
    assert_eq!(entry(&l, IMAGE)["size"], 8192);
    assert_eq!(entry(&l, IMAGE)["disks"], json!([]));
    assert_eq!(
        entry(&l, EXPORT)["disks"],
        json!([{"href": "disk1.qcow2", "bytes": 0, "state": "pending"}])
    );

    let r = upload(&s, IMPORT, &package);
    assert_eq!(r.status, 200, "upload: {}\n{}", r.text(), s.log());
    let t = await_listed(&s, IMPORT, "succeeded");
    assert_eq!(
        t["transferred"].as_u64(),
        Some(support::file_len(&package)),
        "{t}"
    );
    assert_eq!(t["disks"][0]["state"], "succeeded", "{t}");
    assert_eq!(t["disks"][0]["bytes"].as_u64(), Some(SMALL.size), "{t}");
    assert!(t.get("error").is_none(), "{t}");

    let body = w.path("body");
    fs::write(&body, vec![0x5a; 4096]).expect("write body");
    let r = upload(&s, IMAGE, &body);
    assert_eq!(r.status, 200, "image write: {}", r.text());
    let t = await_listed(&s, IMAGE, "active");
    assert_eq!(t["transferred"], 4096, "{t}");

    let l = list(&s, "");
    assert_eq!(entry(&l, EXPORT)["state"], "pending");
    assert_eq!(entry(&l, BROKEN)["state"], "pending");

    assert_eq!(ids(&list(&s, "?state=succeeded")), [IMPORT]);
    assert_eq!(ids(&list(&s, "?kind=ova-import")), [IMPORT, BROKEN]);
    assert_eq!(
        ids(&list(&s, "?state=active&state=succeeded")),
        [IMAGE, IMPORT]
    );
    assert_eq!(ids(&list(&s, "?state=pending&kind=ova-export")), [EXPORT]);

    let r = s.control(
        "PATCH",
        &format!("/tickets/{EXPORT}"),
        Some(&json!({"timeout": 0})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ids(&list(&s, "")), [IMAGE, IMPORT, BROKEN]);
    let r = s.control("DELETE", &format!("/tickets/{IMAGE}"), None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(ids(&list(&s, "")), [IMPORT, BROKEN]);
    for id in [IMPORT, BROKEN] {
        let r = s.control("DELETE", &format!("/tickets/{id}"), None);
        assert_eq!(r.status, 204, "{}", r.text());
    }
    assert!(list(&s, "").is_empty());
}

/// Requests that succeed, are refused, or fail half-way all leave log
/// lines that name tickets by 8 characters, never whole.
#[test]
fn the_log_never_holds_a_whole_ticket_id() {
    let w = Work::new();
    let s = Server::start(&w);
    let package = four_tickets(&w, &s);
    let mut log = String::new();

    let r = upload(&s, IMPORT, &package);
    assert_eq!(r.status, 200, "upload: {}", r.text());
    assert_eq!(s.data("GET", &format!("/images/{IMAGE}"), &[]).status, 200);
    let r = s.data("GET", &format!("/images/{EXPORT}"), &[]);
    assert_eq!(r.status, 200, "download: {}", r.text());

    // 403s: an unknown ticket, and an operation the ticket does not allow.
    assert_eq!(
        s.data("GET", &format!("/images/{UNKNOWN}"), &[]).status,
        403
    );
    assert_eq!(s.data("GET", &format!("/images/{IMPORT}"), &[]).status, 403);

    // An upload that breaks off: not a tar archive at all.
    let junk = w.path("junk");
    fs::write(&junk, vec![0x5a; 10_240]).expect("write junk");
    let r = upload(&s, BROKEN, &junk);
    assert!(r.status >= 400, "junk upload: {} {}", r.status, r.text());
    let t = await_listed(&s, BROKEN, "failed");
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t}");

    // Control requests that are refused: an error may quote the path or
    // the ids.
    let r = s.control("GET", &format!("/tickets/{UNKNOWN}"), None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.control(
        "PATCH",
        &format!("/tickets/{UNKNOWN}"),
        Some(&json!({"timeout": 5})),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let mut t = s.ticket(IMAGE);
    t["uuid"] = json!(MISMATCH);
    let r = s.control("PUT", &format!("/tickets/{IMAGE}"), Some(&t));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.control("GET", &format!("/tickets/{IMAGE}/{UNKNOWN}"), None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.control("GET", &format!("/{UNKNOWN}"), None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.control(
        "PUT",
        &format!("/tickets/{UNKNOWN}"),
        Some(&json!({"uuid": UNKNOWN})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(list(&s, "").len(), 4);

    // The last request: once its line is in, every earlier one is (one
    // pipe, read in order).
    let r = s.control("DELETE", &format!("/tickets/{IMAGE}"), None);
    assert_eq!(r.status, 204, "{}", r.text());
    poll("the DELETE logged", || {
        log.push_str(&s.log());
        log.push('\n');
        (log.contains("ticket removed") && log.contains(&format!("ticket={}", log_id(IMAGE))))
            .then_some(())
    });

    for id in [IMAGE, IMPORT, EXPORT, BROKEN, UNKNOWN, MISMATCH] {
        assert!(
            !log.contains(id),
            "the log holds the whole id {id}:\n{}",
            log.lines()
                .filter(|l| l.contains(id))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The requests were logged, by their ids' 8 characters: the check
    // above looked at real lines.
    for want in [
        format!("/tickets/{}...", log_id(UNKNOWN)),
        format!("/tickets/{}.../{}...", log_id(IMAGE), log_id(UNKNOWN)),
        format!("no such ticket '{}...'", log_id(UNKNOWN)),
        format!("'{}...' does not match", log_id(MISMATCH)),
        format!("id={}", log_id(BROKEN)),
        "OVA import failed".to_owned(),
        "refused".to_owned(),
    ] {
        assert!(log.contains(&want), "the log lacks {want:?}:\n{log}");
    }
}

/// `GET /jobs/{id}` of an import shows the package size as `total`, and
/// `GET /jobs` lists the job.
#[test]
fn an_import_job_shows_its_total() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    let built = Ova::new()
        .disk(p.disk(1, "disk1.img"))
        .build(w.root(), "in.ova");
    let package = s.root.join("in.ova");
    fs::copy(&built, &package).expect("copy the package into the root");
    let size = support::file_len(&package);

    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({"type": "import", "source": s.file_url("in.ova"),
                     "disks": [{"href": "disk1.img", "url": s.file_url("j.raw")}]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().expect("job id").to_owned();
    assert_eq!(r.json()["total"].as_u64(), Some(size), "{}", r.text());
    let done = poll("the job to end", || {
        let r = s.control("GET", &format!("/jobs/{id}"), None);
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        (j["state"] != "pending" && j["state"] != "active").then_some(j)
    });
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log());
    assert_eq!(done["total"].as_u64(), Some(size), "{done}");
    assert_eq!(done["bytes"].as_u64(), Some(size), "{done}");
    let r = s.control("GET", "/jobs", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()[0]["id"], id.as_str(), "{}", r.text());
}
