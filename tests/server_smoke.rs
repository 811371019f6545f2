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
