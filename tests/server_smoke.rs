//! The server starts on defaults given only a state directory, prints
//! where it listens, answers both APIs and stops cleanly on SIGTERM.

mod support;

use serde_json::json;
use support::Work;
use support::server::Server;

#[test]
fn starts_answers_and_stops_on_sigterm() {
    let work = Work::new();
    let s = Server::start(&work);
    assert!(s.cert.exists(), "certificate generated");
    assert!(s.socket.exists(), "control socket bound");
    let info = s.data("GET", "/info/", &[]);
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["server"], "ovaio");
    let r = s.control("GET", "/tickets/none", None);
    assert_eq!(r.status, 404, "{}", r.text());
    s.add_ticket(&json!({
        "uuid": "t-1", "size": 1024, "url": s.file_url("a.raw"),
        "ops": ["write"], "timeout": 60,
    }));
    assert_eq!(s.ticket("t-1")["state"], "pending");
    let socket = s.socket.clone();
    let status = s.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "control socket removed on shutdown");
}

#[test]
fn sigterm_during_an_ova_upload_removes_its_targets() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let work = Work::new();
    let s = Server::start(&work);
    let ova =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.ova")).expect("demo OVA");
    s.add_ticket(&json!({
        "uuid": "up-1", "kind": "ova-import", "ops": ["write"], "timeout": 300,
        "inactivity_timeout": 0,
        "ova": {"disks": [{"href": "demo-disk1.qcow2", "url": s.file_url("d1.raw")}]},
    }));
    let mut curl = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&s.cert)
        .args(["-T", "-", "-H", "Transfer-Encoding: chunked"])
        .arg(s.image_url("up-1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start curl");
    let mut stdin = curl.stdin.take().expect("stdin");
    let half = ova.len() / 2;
    stdin.write_all(&ova[..half]).expect("send half");
    stdin.flush().expect("flush");
    // Wait (bounded) until the server has the bytes and the disk began.
    let t0 = std::time::Instant::now();
    loop {
        let t = s.ticket("up-1");
        if t["transferred"].as_u64().unwrap_or(0) >= half as u64
            && s.root.join("d1.raw.partial").exists()
        {
            assert_eq!(t["state"], "active");
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "upload never arrived: {t}"
        );
        std::thread::yield_now();
    }
    let root = s.root.clone();
    let status = s.stop();
    assert!(status.success(), "exit status {status}");
    drop(stdin);
    let _ = curl.wait();
    let left: Vec<_> = std::fs::read_dir(&root)
        .expect("read root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "targets left after shutdown: {left:?}");
}
