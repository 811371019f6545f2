//! The data API on a Unix socket (`--data-socket`): plain HTTP for
//! clients on this host. `OPTIONS` advertises it as `unix_socket` only
//! when it is served; the `ovirt_imageio` client, seeing it, moves its
//! transfer there by itself (its debug log says so) and the volume is
//! right by `qemu-img`; tickets authorize requests on it as over TLS.

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use serde_json::{Value, json};
use support::Work;
use support::image::{self, Source};
use support::server::{Reply, Server, curl};

/// Uploads (`upload FILE URL CAFILE`) or downloads (`download URL FILE
/// CAFILE FMT`) with the `ovirt_imageio` client library, its log at
/// debug level on stderr.
const CLIENT: &str = r#"
import logging
import sys
from ovirt_imageio import client
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
if sys.argv[1] == "upload":
    client.upload(sys.argv[2], sys.argv[3], sys.argv[4])
else:
    client.download(sys.argv[2], sys.argv[3], sys.argv[4], fmt=sys.argv[5])
print("done")
"#;

/// Runs the client; returns its output (log included).
fn client(s: &Server, args: &[&str]) -> String {
    let (ok, out) = s.python(CLIENT, args);
    assert!(
        ok,
        "ovirt_imageio client {args:?} failed:\n{out}\nserver log:\n{}",
        s.log()
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The client's log shows it moved to `socket` and stayed there.
fn assert_moved_to(out: &str, socket: &Path) {
    assert!(
        out.contains(&format!("Connecting to unix socket '{}'", socket.display())),
        "the client did not move to the data socket:\n{out}"
    );
    assert!(
        !out.contains("Cannot use unix socket"),
        "the client could not use the data socket:\n{out}"
    );
}

/// A request on the data socket with curl.
fn local(socket: &Path, method: &str, path: &str, extra: &[&str]) -> Reply {
    let mut args: Vec<String> = vec![
        "--unix-socket".into(),
        socket.display().to_string(),
        "-X".into(),
        method.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("http://localhost{path}"));
    curl(&args)
}

fn options(s: &Server, id: &str) -> Value {
    let r = s.data("OPTIONS", &format!("/images/{id}"), &[]);
    assert_eq!(r.status, 200, "OPTIONS: {}", r.text());
    r.json()
}

#[test]
fn the_imageio_client_moves_to_the_data_socket_and_tickets_still_rule() {
    let work = Work::new();
    let socket = work.path("state/data.sock");
    let s = Server::start_with(&work, &["--data-socket", p(&socket)]);
    let cert = s.cert.display().to_string();

    let meta = fs::symlink_metadata(&socket).expect("the data socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // An upload into a qcow2 volume and downloads back, all moved to
    // the socket by the client itself.
    let main = image::MAIN.write_raw(&work.path("main.raw"));
    let vol = s.root.join("a.qcow2");
    let raw = work.path("blank.raw");
    fs::File::create(&raw)
        .and_then(|f| f.set_len(image::MAIN.size))
        .expect("blank raw");
    Source::Qcow2V3.convert(&raw, &vol);
    s.add_ticket(&json!({
        "uuid": "a", "size": image::MAIN.size, "url": s.file_url("a.qcow2"),
        "ops": ["read", "write"], "timeout": 300,
    }));
    assert_eq!(
        options(&s, "a")["unix_socket"].as_str(),
        Some(p(&socket)),
        "OPTIONS advertises the socket"
    );
    let out = client(&s, &["upload", p(&main), &s.image_url("a"), &cert]);
    assert_moved_to(&out, &socket);
    image::assert_qcow2_clean(&vol);
    image::assert_same_content(&main, &vol, "qcow2");
    let st = s.ticket("a");
    assert!(
        st["transferred"].as_u64().is_some_and(|n| n > 0),
        "bytes over the socket count on the ticket: {st}"
    );
    for fmt in ["raw", "qcow2"] {
        let back = work.path(&format!("back.{fmt}"));
        let out = client(&s, &["download", &s.image_url("a"), p(&back), &cert, fmt]);
        assert_moved_to(&out, &socket);
        image::assert_same_content(&main, &back, fmt);
    }

    // curl on the socket: a ranged read, and the same refusals as TLS.
    let r = local(&socket, "GET", "/images/a", &["-H", "Range: bytes=0-4095"]);
    assert_eq!(r.status, 206, "{}", r.text());
    let want = fs::read(&main).expect("read source");
    assert!(r.body == want[..4096], "the ranged read over the socket");
    let r = local(
        &socket,
        "GET",
        "/images/nosuch",
        &["-H", "Range: bytes=0-1"],
    );
    assert_eq!(r.status, 403, "an unknown ticket: {}", r.text());
    s.add_ticket(&json!({
        "uuid": "ro", "size": image::MAIN.size, "url": s.file_url("a.qcow2"),
        "ops": ["read"], "timeout": 300,
    }));
    let body = work.path("body");
    fs::write(&body, b"x").expect("body");
    let r = local(
        &socket,
        "PUT",
        "/images/ro",
        &["--data-binary", &format!("@{}", body.display())],
    );
    assert_eq!(r.status, 403, "a write on a read-only ticket: {}", r.text());
    image::assert_same_content(&main, &vol, "qcow2");

    // Stopping removes the socket.
    let status = s.stop();
    assert!(status.success(), "ovaio serve exited with {status}");
    assert!(
        fs::symlink_metadata(&socket).is_err(),
        "the data socket is removed at stop"
    );
}

#[test]
fn without_a_data_socket_none_is_advertised_and_the_client_stays_on_tls() {
    let work = Work::new();
    let s = Server::start(&work);
    let cert = s.cert.display().to_string();
    let main = image::MAIN.write_raw(&work.path("main.raw"));
    fs::File::create(s.root.join("a.raw"))
        .and_then(|f| f.set_len(image::MAIN.size))
        .expect("target");
    s.add_ticket(&json!({
        "uuid": "a", "size": image::MAIN.size, "url": s.file_url("a.raw"),
        "ops": ["read", "write"], "timeout": 300,
    }));
    let o = options(&s, "a");
    assert!(o.get("unix_socket").is_none(), "{o}");
    let out = client(&s, &["upload", p(&main), &s.image_url("a"), &cert]);
    assert!(!out.contains("Connecting to unix socket"), "{out}");
    image::assert_same_content(&main, &s.root.join("a.raw"), "raw");
}

#[test]
fn a_data_socket_path_in_use_or_not_a_socket_is_refused() {
    let work = Work::new();
    let taken = work.path("taken");
    fs::write(&taken, b"a file").expect("file");
    let out = support::ovaio()
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--state-dir")
        .arg(work.path("state"))
        .arg("--data-socket")
        .arg(&taken)
        .run();
    assert!(!out.status.success());
    let err = &out.stderr;
    assert!(
        err.contains("the data socket path exists and is not a socket"),
        "{err}"
    );
    assert_eq!(fs::read(&taken).expect("file"), b"a file", "left alone");

    let out = support::ovaio()
        .arg("serve")
        .arg("--state-dir")
        .arg(work.path("state"))
        .arg("--data-socket")
        .arg("relative.sock")
        .run();
    assert!(!out.status.success());
    let err = &out.stderr;
    assert!(err.contains("not an absolute path"), "{err}");
}
