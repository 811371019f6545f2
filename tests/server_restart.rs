//! A restarted `ovaio serve` knows its tickets and jobs again: after a
//! stop (SIGTERM) every ticket and job answers `GET` as before, expiry
//! included, and can be used; after a kill (SIGKILL) mid-transfer the
//! interrupted import ticket and job are `failed` with "server
//! restarted", and no partial file is left under the storage root.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use serde_json::{Value, json};
use support::Work;
use support::poll;
use support::server::Server;

fn demo_ova() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.ova")).expect("demo OVA")
}

fn job(s: &Server, id: &str) -> Value {
    let r = s.control("GET", &format!("/jobs/{id}"), None);
    assert_eq!(r.status, 200, "GET /jobs/{id}: {}", r.text());
    r.json()
}

/// The ticket as `GET` shows it, less the idle time (which a restart
/// starts afresh).
fn ticket_without_idle(s: &Server, id: &str) -> Value {
    let mut t = s.ticket(id);
    let idle = t
        .as_object_mut()
        .and_then(|o| o.remove("idle_time"))
        .unwrap_or_else(|| panic!("no idle_time in {id}"));
    assert!(idle.is_u64());
    t
}

/// Every `.partial` file under `dir`.
fn partials(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(partials(&p));
        } else if p.to_string_lossy().ends_with(".partial") {
            out.push(p);
        }
    }
    out
}

#[test]
fn tickets_and_jobs_survive_a_stop_and_start() {
    let w = Work::new();
    let s = Server::start(&w);
    let ova = demo_ova();

    // An image ticket that moved bytes.
    let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let block_file = w.path("block");
    std::fs::write(&block_file, &block).expect("write");
    std::fs::write(s.root.join("img.raw"), vec![0u8; 1 << 20]).expect("volume");
    s.add_ticket(&json!({
        "uuid": "img-1", "size": 1 << 20, "url": s.file_url("img.raw"),
        "ops": ["write"], "timeout": 3600, "transfer_id": "tr-img",
    }));
    let r = s.data(
        "PUT",
        "/images/img-1",
        &["--data-binary", &format!("@{}", block_file.display())],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // An OVA import that succeeded.
    let package = w.path("demo.ova");
    std::fs::write(&package, &ova).expect("write");
    s.add_ticket(&json!({
        "uuid": "imp-1", "kind": "ova-import", "ops": ["write"], "timeout": 3600,
        "ova": {"disks": [{"href": "demo-disk1.qcow2", "url": s.file_url("d1.qcow2"), "format": "qcow2"}]},
    }));
    let r = s.data(
        "PUT",
        "/images/imp-1",
        &["-T", package.to_str().expect("utf-8")],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // An export not yet downloaded, and a finished job.
    s.add_ticket(&json!({
        "uuid": "exp-1", "kind": "ova-export", "ops": ["read"], "timeout": 1800,
        "ova": {"name": "demo", "disks": [{"href": "disk1.qcow2", "url": s.file_url("d1.qcow2")}]},
    }));
    std::fs::write(s.root.join("job.ova"), &ova).expect("write");
    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({"type": "import", "source": s.file_url("job.ova"),
                     "disks": [{"href": "demo-disk1.qcow2", "url": s.file_url("job.raw")}]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let job_id = r.json()["id"].as_str().expect("job id").to_owned();
    let job_before = poll("the job to end", || {
        let j = job(&s, &job_id);
        (j["state"] != "pending" && j["state"] != "active").then_some(j)
    });
    assert_eq!(job_before["state"], "succeeded", "{job_before}");

    let ids = ["exp-1", "imp-1", "img-1"];
    let before: Vec<Value> = ids.iter().map(|id| ticket_without_idle(&s, id)).collect();
    assert_eq!(before[0]["state"], "pending");
    assert_eq!(before[1]["state"], "succeeded");
    assert_eq!(before[2]["state"], "active");
    assert_eq!(before[2]["transferred"], 65536);
    let status = s.stop();
    assert!(status.success(), "exit status {status}");

    // The journal is private and names no ticket id.
    let journal = w.path("state/journal");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&journal), 0o700);
    let mut records = 0;
    for sub in ["tickets", "jobs"] {
        assert_eq!(mode(&journal.join(sub)), 0o700);
        for e in std::fs::read_dir(journal.join(sub)).expect("list") {
            let p = e.expect("entry").path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            assert!(ids.iter().all(|id| !name.contains(id)), "{name}");
            let v: Value = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("JSON");
            let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
            let allowed: &[&str] = if sub == "tickets" {
                &[
                    "version",
                    "ticket",
                    "expires",
                    "state",
                    "error",
                    "transferred",
                    "disks",
                    "path",
                    "ova",
                    "upload",
                    "manifest",
                ]
            } else {
                &["version", "status", "targets"]
            };
            assert!(keys.iter().all(|k| allowed.contains(&k.as_str())), "{v}");
            records += 1;
        }
    }
    assert_eq!(records, 4);

    let s = Server::start(&w);
    let after: Vec<Value> = ids.iter().map(|id| ticket_without_idle(&s, id)).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a, b, "a ticket changed across the restart");
    }
    assert_eq!(job(&s, &job_id), job_before);
    let listed: Vec<Value> = s
        .control("GET", "/tickets", None)
        .json()
        .as_array()
        .expect("list")
        .clone();
    assert_eq!(listed.len(), 3);

    // The restored tickets work: the image reads back, the import has
    // had its one upload, the export downloads.
    let r = s.data("GET", "/images/img-1", &["-H", "Range: bytes=0-65535"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, block);
    let r = s.data(
        "PUT",
        "/images/imp-1",
        &["-T", package.to_str().expect("utf-8")],
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("succeeded"), "{}", r.text());
    let r = s.data("GET", "/images/exp-1", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-length").and_then(|v| v.parse().ok()),
        Some(r.body.len())
    );
    assert_eq!(&r.body[257..262], b"ustar");
    poll("the export to succeed", || {
        (s.ticket("exp-1")["state"] == "succeeded").then_some(())
    });
    // A new job gets a new id.
    std::fs::write(s.root.join("job2.ova"), &ova).expect("write");
    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({"type": "import", "source": s.file_url("job2.ova"),
                     "disks": [{"href": "demo-disk1.qcow2", "url": s.file_url("job2.raw")}]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_ne!(r.json()["id"], job_before["id"]);
    // A removed ticket stays removed across the next restart.
    assert_eq!(s.control("DELETE", "/tickets/img-1", None).status, 204);
    let status = s.stop();
    assert!(status.success(), "exit status {status}");
    let s = Server::start(&w);
    assert_eq!(s.control("GET", "/tickets/img-1", None).status, 404);
    assert_eq!(s.ticket("imp-1")["state"], "succeeded");
}

#[test]
fn a_killed_import_is_failed_after_a_restart_and_leaves_no_partial_file() {
    let w = Work::new();
    let s = Server::start(&w);
    let ova = demo_ova();
    let half = ova.len() / 2;

    // An upload sends half the package...
    s.add_ticket(&json!({
        "uuid": "up-k", "kind": "ova-import", "ops": ["write"], "timeout": 300,
        "inactivity_timeout": 0,
        "ova": {"disks": [{"href": "demo-disk1.qcow2", "url": s.file_url("d1.raw")}]},
    }));
    let mut curl = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&s.cert)
        .args(["-T", "-", "-H", "Transfer-Encoding: chunked"])
        .arg(s.image_url("up-k"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start curl");
    let mut stdin = curl.stdin.take().expect("stdin");
    stdin.write_all(&ova[..half]).expect("send half");
    stdin.flush().expect("flush");

    // ...and a job reads half of it from a pipe.
    let fifo = s.root.join("pipe.ova");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({"type": "import", "source": s.file_url("pipe.ova"),
                     "disks": [{"href": "demo-disk1.qcow2", "url": s.file_url("job.raw")}]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let job_id = r.json()["id"].as_str().expect("job id").to_owned();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let writer = {
        let fifo = fifo.clone();
        let first = ova[..half].to_vec();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open the pipe");
            f.write_all(&first).expect("feed the job");
            // Held open until the test is done with the server.
            let _ = done_rx.recv();
        })
    };
    poll("both transfers to be under way", || {
        let t = s.ticket("up-k");
        let j = job(&s, &job_id);
        (t["transferred"].as_u64().unwrap_or(0) >= half as u64
            && t["state"] == "active"
            && j["bytes"].as_u64().unwrap_or(0) > 0
            && s.root.join("d1.raw.partial").exists()
            && s.root.join("job.raw.partial").exists())
        .then_some(())
    });
    s.kill();
    drop(stdin);
    let _ = curl.wait();
    let _ = done_tx.send(());
    writer.join().expect("pipe writer");

    let s = Server::start(&w);
    let t = s.ticket("up-k");
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["error"], "server restarted", "{t}");
    assert_eq!(t["disks"][0]["state"], "failed", "{t}");
    let j = job(&s, &job_id);
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["error"], "server restarted", "{j}");
    assert!(j["finished"].is_u64(), "{j}");
    let left = partials(&s.root);
    assert!(left.is_empty(), "partial files left: {left:?}");
    assert!(!s.root.join("d1.raw").exists() && !s.root.join("job.raw").exists());
    let log = s.log();
    assert!(log.contains("restored from the journal"), "{log}");

    // The outcome holds: the ticket takes no second upload.
    let package = w.path("demo.ova");
    std::fs::write(&package, &ova).expect("write");
    let r = s.data(
        "PUT",
        "/images/up-k",
        &["-T", package.to_str().expect("utf-8")],
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(s.ticket("up-k")["error"], "server restarted");
}
