//! OVA tickets and jobs against a real `ovaio serve`: whole packages
//! uploaded by curl (with a Content-Length and chunked) into `ova-import`
//! tickets, uploads that lie, break off, stall or lose their ticket,
//! packages downloaded from `ova-export` tickets, and import and export
//! jobs started over the control API. `qemu-img` and GNU tar judge every
//! volume and archive the server writes.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::image::{self, MAIN, ODD, SMALL, Source, Target};
use support::ova::{self, Manifest, Ova, Prepared};
use support::poll;
use support::server::{self, Reply, Server};
use support::{Work, assert_absent, assert_dir_empty, ovaio, tool};

/// The MAIN image as `source` under `href`, alone in `in.ova` (no
/// manifest).
fn one_disk_ova(w: &Work, source: Source, href: &str) -> PathBuf {
    let p = ova::prepare(w.root(), "a", &MAIN, source);
    Ova::new().disk(p.disk(1, href)).build(w.root(), "in.ova")
}

/// Polls `GET /tickets/{id}` until its state is `want` and returns it;
/// panics at once on another final state.
fn await_ticket(s: &Server, id: &str, want: &str) -> Value {
    poll(&format!("ticket {id} {want}"), || {
        let t = s.ticket(id);
        let state = t["state"].as_str().unwrap_or_default().to_owned();
        if state == want {
            return Some(t);
        }
        assert!(
            state == "pending" || state == "active" || state == "paused",
            "ticket {id} ended {state}, not {want}: {t}\nserver log:\n{}",
            s.log()
        );
        None
    })
}

/// Polls `GET /jobs/{id}` until the job has ended and returns its status.
fn await_job(s: &Server, id: &str) -> Value {
    poll(&format!("job {id} to end"), || {
        let r = s.control("GET", &format!("/jobs/{id}"), None);
        assert_eq!(r.status, 200, "GET /jobs/{id}: {}", r.text());
        let j = r.json();
        match j["state"].as_str() {
            Some("pending" | "active") => None,
            _ => Some(j),
        }
    })
}

/// An `ova-import` ticket mapping `(href, target file in the root,
/// format)` triples.
fn import_ticket(s: &Server, id: &str, disks: &[(&str, &str, &str)], extra: &Value) {
    let disks: Vec<Value> = disks
        .iter()
        .map(
            |(href, file, format)| json!({"href": href, "url": s.file_url(file), "format": format}),
        )
        .collect();
    let mut t = json!({
        "uuid": id, "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "transfer_id": format!("transfer-{id}"),
        "ova": {"disks": disks},
    });
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            t.insert(k.clone(), v.clone());
        }
    }
    s.add_ticket(&t);
}

/// `PUT /images/{id}` of the file `ova` with more curl arguments.
fn upload(s: &Server, id: &str, ova: &Path, how: &[&str]) -> Reply {
    let file = ova.display().to_string();
    let mut args: Vec<String> = how.iter().map(|a| a.replace("{}", &file)).collect();
    args.push("-H".into());
    args.push("content-type: application/octet-stream".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.data("PUT", &format!("/images/{id}"), &args)
}

/// curl arguments sending the file with a Content-Length (`-T`).
const WITH_LENGTH_T: &[&str] = &["-T", "{}"];
/// curl arguments sending the file with a Content-Length (`--data-binary`).
const WITH_LENGTH_DATA: &[&str] = &["--data-binary", "@{}"];
/// curl arguments sending the file chunked.
const CHUNKED: &[&str] = &["-H", "Transfer-Encoding: chunked", "-T", "{}"];

/// Every name in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// The summary's record for `href`.
fn summary_disk<'a>(summary: &'a Value, href: &str) -> &'a Value {
    summary["disks"]
        .as_array()
        .expect("summary disks")
        .iter()
        .find(|d| d["href"] == href)
        .unwrap_or_else(|| panic!("summary names no disk {href}: {summary}"))
}

/// Checks one disk of a successful import summary.
fn check_summary_disk(summary: &Value, href: &str, p: &Prepared, target: &Path, format: Target) {
    let d = summary_disk(summary, href);
    assert_eq!(d["source_format"], p.source.json_format(), "{d}");
    assert_eq!(d["compression"], p.source.json_compression(), "{d}");
    assert_eq!(d["target_format"], format.name(), "{d}");
    assert_eq!(d["capacity"].as_u64(), Some(p.capacity), "{d}");
    assert_eq!(
        d["target"].as_str().map(PathBuf::from),
        Some(target.to_owned()),
        "{d}"
    );
}

/// Checks the per-disk records of a ticket: every href once, all `state`.
fn check_ticket_disks(t: &Value, hrefs: &[&str], state: &str) {
    let disks = t["disks"].as_array().expect("ticket disks");
    let mut got: Vec<&str> = disks.iter().filter_map(|d| d["href"].as_str()).collect();
    got.sort_unstable();
    let mut want = hrefs.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "ticket disks: {t}");
    for d in disks {
        assert_eq!(d["state"], state, "disk record {d}");
    }
}

// ---------------------------------------------------------------------------
// Uploads that succeed.

/// One streamOptimized VMDK disk with a SHA-256 manifest, sent by
/// `curl -T` (Content-Length), into a qcow2 target.
#[test]
fn upload_vmdk_ova_with_content_length() {
    let w = Work::new();
    let s = Server::start(&w);
    let p = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let package = Ova::new()
        .disk(p.disk(1, "disk1.vmdk"))
        .manifest(Manifest::Sha256)
        .build(w.root(), "in.ova");
    import_ticket(
        &s,
        "up-vmdk",
        &[("disk1.vmdk", "d1.qcow2", "qcow2")],
        &json!({}),
    );
    assert_eq!(s.ticket("up-vmdk")["state"], "pending");

    let r = upload(&s, "up-vmdk", &package, WITH_LENGTH_T);
    assert_eq!(r.status, 200, "upload: {}\n{}", r.text(), s.log());
    let summary = r.json();
    assert_eq!(summary["manifest"], "verified", "{summary}");
    assert_eq!(summary["ovf"], ova::OVF_NAME, "{summary}");
    assert_eq!(
        summary["bytes_read"].as_u64(),
        Some(support::file_len(&package)),
        "{summary}"
    );
    assert_eq!(summary["disks"].as_array().map(Vec::len), Some(1));
    let target = s.root.join("d1.qcow2");
    check_summary_disk(&summary, "disk1.vmdk", &p, &target, Target::Qcow2);

    let t = await_ticket(&s, "up-vmdk", "succeeded");
    assert!(
        t.get("error").is_none(),
        "succeeded ticket has an error: {t}"
    );
    check_ticket_disks(&t, &["disk1.vmdk"], "succeeded");
    assert!(
        t["disks"][0]["bytes"].as_u64().is_some_and(|b| b > 0),
        "no bytes recorded for the disk: {t}"
    );
    assert!(
        t["transferred"].as_u64().is_some_and(|b| b > 0),
        "nothing counted as transferred: {t}"
    );
    image::assert_target(&p.raw, &target, Target::Qcow2, p.capacity);
    assert_eq!(
        names_in(&s.root),
        ["d1.qcow2"],
        "only the target in the root"
    );
}

/// Two disks (a qcow2 into a raw target, a VMDK into a qcow2 target),
/// sent once with a Content-Length (`--data-binary`) and once chunked.
#[test]
fn upload_two_disk_ova_with_content_length_and_chunked() {
    let w = Work::new();
    let s = Server::start(&w);
    let a = ova::prepare(w.root(), "a", &ODD, Source::Qcow2V3);
    let b = ova::prepare(w.root(), "b", &MAIN, Source::Vmdk);
    let package = Ova::new()
        .disk(a.disk(1, "disk1.qcow2"))
        .disk(b.disk(2, "disk2.vmdk"))
        .manifest(Manifest::Sha256)
        .build(w.root(), "in.ova");

    for (id, how) in [("up-len", WITH_LENGTH_DATA), ("up-chunked", CHUNKED)] {
        let raw_name = format!("{id}-1.raw");
        let qcow_name = format!("{id}-2.qcow2");
        import_ticket(
            &s,
            id,
            &[
                ("disk1.qcow2", &raw_name, "raw"),
                ("disk2.vmdk", &qcow_name, "qcow2"),
            ],
            &json!({}),
        );
        let r = upload(&s, id, &package, how);
        assert_eq!(r.status, 200, "{id}: {}\n{}", r.text(), s.log());
        let summary = r.json();
        assert_eq!(summary["manifest"], "verified", "{id}: {summary}");
        assert_eq!(
            summary["disks"].as_array().map(Vec::len),
            Some(2),
            "{summary}"
        );
        let raw_target = s.root.join(&raw_name);
        let qcow_target = s.root.join(&qcow_name);
        check_summary_disk(&summary, "disk1.qcow2", &a, &raw_target, Target::Raw);
        check_summary_disk(&summary, "disk2.vmdk", &b, &qcow_target, Target::Qcow2);

        let t = await_ticket(&s, id, "succeeded");
        check_ticket_disks(&t, &["disk1.qcow2", "disk2.vmdk"], "succeeded");
        image::assert_target(&a.raw, &raw_target, Target::Raw, a.capacity);
        image::assert_target(&b.raw, &qcow_target, Target::Qcow2, b.capacity);
    }
    assert_eq!(
        names_in(&s.root),
        [
            "up-chunked-1.raw",
            "up-chunked-2.qcow2",
            "up-len-1.raw",
            "up-len-2.qcow2"
        ],
        "targets only, no .partial"
    );
    // The server saw the first body with its length and the second without
    // one (chunked), so both paths really ran.
    let log = s.log();
    let starts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("OVA upload started"))
        .collect();
    assert_eq!(starts.len(), 2, "upload log lines:\n{log}");
    let length = format!("length={}", support::file_len(&package));
    assert!(starts[0].contains(&length), "first upload: {}", starts[0]);
    assert!(
        !starts[1].contains("length="),
        "second upload was not chunked: {}",
        starts[1]
    );
}

// ---------------------------------------------------------------------------
// Uploads that fail.

/// The manifest's digest for `disk1.vmdk` is wrong: 400, the ticket fails
/// naming the entry and the digest, and nothing is left in the root.
#[test]
fn upload_with_lying_manifest_fails_and_leaves_nothing() {
    let w = Work::new();
    let s = Server::start(&w);
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Qcow2Zlib);
    let mut package = Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .disk(b.disk(2, "disk2.qcow2"));
    let text = package.manifest_for(Manifest::Sha256, &package.ovf());
    let good = Manifest::Sha256.digest_file(&a.file);
    let mut bad = good.clone().into_bytes();
    bad[9] = if bad[9] == b'0' { b'1' } else { b'0' };
    let bad = String::from_utf8(bad).expect("hex");
    assert!(text.contains(&good), "manifest names the good digest");
    package.manifest_text = Some(text.replace(&good, &bad));
    let path = package.manifest(Manifest::Sha256).build(w.root(), "in.ova");

    import_ticket(
        &s,
        "liar",
        &[
            ("disk1.vmdk", "d1.raw", "raw"),
            ("disk2.qcow2", "d2.qcow2", "qcow2"),
        ],
        &json!({}),
    );
    let r = upload(&s, "liar", &path, WITH_LENGTH_T);
    assert!(
        (400..500).contains(&r.status),
        "a lying manifest must be refused with 4xx, got {}: {}",
        r.status,
        r.text()
    );
    assert!(r.text().contains("disk1.vmdk"), "reply: {}", r.text());
    let t = await_ticket(&s, "liar", "failed");
    let err = t["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("disk1.vmdk") && err.contains("digest"),
        "ticket error should name the entry and the digest: {t}"
    );
    check_ticket_disks(&t, &["disk1.vmdk", "disk2.qcow2"], "failed");
    assert_absent(&s.root.join("d1.raw"));
    assert_absent(&s.root.join("d2.qcow2"));
    assert_dir_empty(&s.root);
}

/// A Python client that speaks HTTP over TLS by hand, to send a request
/// head and half a body and then break off or stall.
const RAW_CLIENT: &str = r#"
import socket, ssl, sys, time
sys.stderr = sys.stdout
port, cafile, ticket, path, mode, wait = sys.argv[1:7]
data = open(path, 'rb').read()
half = len(data) // 2
ctx = ssl.create_default_context(cafile=cafile)
raw = socket.create_connection(('127.0.0.1', int(port)), timeout=float(wait))
s = ctx.wrap_socket(raw, server_hostname='127.0.0.1')
print('connected', flush=True)
sys.stdin.readline()
head = ('PUT /images/%s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n'
        'Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n'
        % (ticket, port, len(data))).encode()
s.sendall(head)
s.sendall(data[:half])
print('sent %d of %d' % (half, len(data)), flush=True)
if mode == 'close':
    sys.stdin.readline()
    s.close()
    print('closed by client', flush=True)
    sys.exit(0)
start = time.monotonic()
got = b''
try:
    while True:
        if b'\r\n\r\n' in got:
            head_end = got.index(b'\r\n\r\n') + 4
            length = 0
            for line in got[:head_end].split(b'\r\n'):
                if line.lower().startswith(b'content-length:'):
                    length = int(line.split(b':', 1)[1])
            if len(got) >= head_end + length:
                break
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except socket.timeout:
    print('no answer within %s s' % wait, flush=True)
    sys.exit(3)
except (OSError, ssl.SSLError) as e:
    print('connection error: %r' % (e,), flush=True)
status = got.split(b'\r\n', 1)[0].decode('latin-1') if got else 'none'
print('status: %s' % status, flush=True)
print('body: %s' % got.split(b'\r\n\r\n', 1)[-1].decode('utf-8', 'replace').strip(), flush=True)
print('after %.1f s' % (time.monotonic() - start), flush=True)
"#;

/// A running [`RAW_CLIENT`].
struct RawUpload {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl RawUpload {
    /// Connects (TLS done) without sending anything yet.
    fn connect(s: &Server, ticket: &str, ova: &Path, mode: &str, wait_secs: u64) -> RawUpload {
        let mut child = Command::new(server::python())
            .arg("-c")
            .arg(RAW_CLIENT)
            .arg(s.port.to_string())
            .arg(&s.cert)
            .arg(ticket)
            .arg(ova)
            .arg(mode)
            .arg(wait_secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut up = RawUpload {
            child,
            stdin,
            stdout,
        };
        up.expect_line("connected");
        up
    }

    /// The client's next line, which must start with `prefix`.
    fn expect_line(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read client output");
        if !line.starts_with(prefix) {
            let mut rest = String::new();
            let _ = self.stdout.read_to_string(&mut rest);
            panic!("client printed {line:?} instead of {prefix:?}:\n{rest}");
        }
        line
    }

    /// Sends the request head and half the package; returns the bytes
    /// of the body sent.
    fn send_half(&mut self) -> u64 {
        self.stdin.write_all(b"go\n").expect("signal the client");
        self.stdin.flush().expect("flush");
        let line = self.expect_line("sent ");
        line.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("client line {line:?}"))
    }

    /// Tells a client in `close` mode to drop the connection.
    fn close(&mut self) {
        self.stdin.write_all(b"close\n").expect("signal the client");
        self.stdin.flush().expect("flush");
        self.expect_line("closed by client");
    }

    /// Waits for the client to end (it gives up on its own) and returns
    /// its exit success and the rest of its output.
    fn finish(mut self) -> (bool, String) {
        let mut rest = String::new();
        self.stdout
            .read_to_string(&mut rest)
            .expect("read client output");
        let status = self.child.wait().expect("wait for client");
        (status.success(), rest)
    }
}

/// The client declares the whole package, sends half and drops the
/// connection: the upload pauses at the committed offset (everything the
/// server received), the targets stay partial, and when no client resumes
/// it within the ticket's `inactivity_timeout` the ticket fails and no
/// target is left.
#[test]
fn upload_cut_off_by_a_dropped_connection_pauses_then_fails() {
    let w = Work::new();
    let s = Server::start(&w);
    let a = ova::prepare(w.root(), "a", &ODD, Source::Raw);
    let b = ova::prepare(w.root(), "b", &MAIN, Source::Qcow2V3);
    let package = Ova::new()
        .disk(a.disk(1, "disk1.img"))
        .disk(b.disk(2, "disk2.qcow2"))
        .build(w.root(), "in.ova");
    let mut up = RawUpload::connect(&s, "cut", &package, "close", 15);
    import_ticket(
        &s,
        "cut",
        &[
            ("disk1.img", "d1.qcow2", "qcow2"),
            ("disk2.qcow2", "d2.raw", "raw"),
        ],
        &json!({"inactivity_timeout": 3}),
    );
    let sent = up.send_half();
    up.close();
    let (ok, out) = up.finish();
    assert!(ok, "client failed: {out}");
    let t = await_ticket(&s, "cut", "paused");
    // What the server read before the connection went (a reset discards
    // what its socket still held): all of it went into the import.
    let offset = t["offset"].as_u64().unwrap_or_default();
    assert!(offset > 0 && offset <= sent, "committed offset: {t}");
    assert_eq!(t["transferred"].as_u64(), Some(offset), "{t}");
    assert_eq!(
        t["length"].as_u64(),
        Some(support::file_len(&package)),
        "{t}"
    );
    let partials = names_in(&s.root);
    assert!(
        !partials.is_empty() && partials.iter().all(|n| n.contains(".partial")),
        "a paused upload keeps its targets partial: {partials:?}"
    );
    let t = await_ticket(&s, "cut", "failed");
    let err = t["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("paused") && err.contains("no client resumed it"),
        "ticket error should say the paused upload was not resumed: {t}"
    );
    check_ticket_disks(&t, &["disk1.img", "disk2.qcow2"], "failed");
    assert_absent(&s.root.join("d1.qcow2"));
    assert_absent(&s.root.join("d2.raw"));
    assert_dir_empty(&s.root);
}

/// The client sends half and then stays silent longer than the ticket's
/// `inactivity_timeout` of 1 s: the server answers 4xx saying so and
/// pauses the upload, and after another second without a client resuming
/// it fails the ticket.
#[test]
fn upload_stalled_past_the_inactivity_timeout_fails() {
    let w = Work::new();
    let s = Server::start(&w);
    let package = one_disk_ova(&w, Source::Qcow2V3, "disk1.qcow2");
    let mut up = RawUpload::connect(&s, "stall", &package, "stall", 15);
    import_ticket(
        &s,
        "stall",
        &[("disk1.qcow2", "d1.raw", "raw")],
        &json!({"inactivity_timeout": 1}),
    );
    assert_eq!(s.ticket("stall")["inactivity_timeout"], 1);
    up.send_half();
    let (ok, out) = up.finish();
    assert!(ok, "the server did not end the stalled upload: {out}");
    let status = out
        .lines()
        .find_map(|l| l.strip_prefix("status: "))
        .unwrap_or("none");
    assert!(
        status.starts_with("HTTP/1.1 4"),
        "a stalled upload should be answered 4xx: {out}"
    );
    let body = out
        .lines()
        .find_map(|l| l.strip_prefix("body: "))
        .unwrap_or_default();
    assert!(
        body.contains("sent nothing for 1 s") && body.contains("paused"),
        "the answer should say the client went silent and the upload paused: {out}"
    );
    let t = await_ticket(&s, "stall", "failed");
    let err = t["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("no client resumed it"),
        "ticket error should say the paused upload was not resumed: {t}"
    );
    assert_absent(&s.root.join("d1.raw"));
    assert_dir_empty(&s.root);
}

/// While a client holds an upload open mid-body, a second upload on the
/// ticket is refused (409) and the target has no final name yet; when the
/// client then drops the connection the upload pauses, and removing the
/// ticket removes its partial target.
#[test]
fn second_upload_on_a_busy_ticket_is_refused() {
    let w = Work::new();
    let s = Server::start(&w);
    let package = one_disk_ova(&w, Source::Raw, "disk1.img");
    let mut up = RawUpload::connect(&s, "busy", &package, "close", 15);
    import_ticket(
        &s,
        "busy",
        &[("disk1.img", "d1.qcow2", "qcow2")],
        &json!({}),
    );
    let sent = up.send_half();
    await_consumed(&s, "busy", sent);
    assert!(
        !s.root.join("d1.qcow2").exists(),
        "the target has its final name before the upload ended"
    );
    let second = upload(&s, "busy", &package, WITH_LENGTH_T);
    assert_eq!(
        second.status,
        409,
        "a second upload on a busy OVA ticket: {}",
        second.text()
    );
    assert_eq!(s.ticket("busy")["state"], "active");
    up.close();
    let (ok, out) = up.finish();
    assert!(ok, "client failed: {out}");
    let t = await_ticket(&s, "busy", "paused");
    assert_eq!(t["offset"].as_u64(), Some(sent), "{t}");
    let r = s.control("DELETE", "/tickets/busy", None);
    assert_eq!(r.status, 204, "{}", r.text());
    poll("the partial target to be removed", || {
        names_in(&s.root).is_empty().then_some(())
    });
    assert_absent(&s.root.join("d1.qcow2"));
}

/// Polls the ticket until the server has taken `sent` bytes of the body:
/// it is now waiting for more.
fn await_consumed(s: &Server, id: &str, sent: u64) {
    poll(
        &format!("{sent} bytes of the upload to be consumed"),
        || {
            let t = s.ticket(id);
            (t["active"] == true && t["transferred"].as_u64().is_some_and(|b| b >= sent))
                .then_some(())
        },
    );
}

/// Deleting the ticket while its client is silent mid-body ends the upload
/// at once (well before the ticket's 30 s inactivity limit) and removes
/// the partial target.
#[test]
fn deleting_the_ticket_ends_a_stalled_upload() {
    let w = Work::new();
    let s = Server::start(&w);
    let package = one_disk_ova(&w, Source::Raw, "disk1.img");
    // The client waits at most 10 s for the server; the ticket's own
    // inactivity limit (30 s) must not be what ends the upload.
    let mut up = RawUpload::connect(&s, "gone", &package, "stall", 10);
    import_ticket(
        &s,
        "gone",
        &[("disk1.img", "d1.qcow2", "qcow2")],
        &json!({"inactivity_timeout": 30}),
    );
    let sent = up.send_half();
    await_consumed(&s, "gone", sent);

    let started = Instant::now();
    let r = s.control("DELETE", "/tickets/gone", None);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = s.control("GET", "/tickets/gone", None);
    assert_eq!(r.status, 404, "deleted ticket: {}", r.text());
    let (ok, out) = up.finish();
    assert!(
        ok,
        "the stalled upload went on after its ticket was deleted ({:?}): {out}\nserver log:\n{}",
        started.elapsed(),
        s.log()
    );
    poll("the partial target to be removed", || {
        fs::read_dir(&s.root)
            .expect("read root")
            .next()
            .is_none()
            .then_some(())
    });
    assert_absent(&s.root.join("d1.qcow2"));
}

// ---------------------------------------------------------------------------
// Downloads.

/// Parses `SHA256(name)= hex` manifest lines.
fn manifest_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let rest = l
                .strip_prefix("SHA256(")
                .unwrap_or_else(|| panic!("not a SHA256 manifest line: {l:?}"));
            let (name, hex) = rest
                .split_once(")= ")
                .unwrap_or_else(|| panic!("malformed manifest line: {l:?}"));
            (name.to_owned(), hex.trim().to_owned())
        })
        .collect()
}

/// An `ova-export` ticket over a raw and a qcow2 volume: the download has
/// its exact length and name, GNU tar lists the OVF first and the manifest
/// last, the extracted disks equal their sources, the manifest's digests
/// are right, and `ovaio import` reads the package back.
#[test]
fn download_exported_ova() {
    let w = Work::new();
    let s = Server::start(&w);
    let raw1 = MAIN.write_raw(&s.root.join("vol1.raw"));
    let ref2 = ODD.write_raw(&w.path("ref2.raw"));
    Source::Qcow2V3.convert(&ref2, &s.root.join("vol2.qcow2"));
    s.add_ticket(&json!({
        "uuid": "down", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "vm1", "disks": [
            {"href": "disk1.qcow2", "url": s.file_url("vol1.raw")},
            {"href": "disk2.qcow2", "url": s.file_url("vol2.qcow2")},
        ]},
    }));
    let r = s.data("GET", "/images/down", &[]);
    assert_eq!(r.status, 200, "download: {}\n{}", r.text(), s.log());
    let dl = w.path("vm1.ova");
    fs::write(&dl, &r.body).expect("save the download");
    let received = support::file_len(&dl);
    assert!(received > 0, "nothing downloaded");
    assert_eq!(
        r.header("content-length")
            .and_then(|v| v.parse::<u64>().ok()),
        Some(received),
        "Content-Length must equal the bytes sent: {:?}",
        r.headers
    );
    assert_eq!(received % 512, 0, "a tar archive is whole blocks");
    let disposition = r.header("content-disposition").unwrap_or_default();
    assert!(
        disposition.contains("attachment") && disposition.contains("vm1.ova"),
        "Content-Disposition: {disposition:?}"
    );
    assert_eq!(r.header("content-type"), Some("application/x-tar"));

    let listing: Vec<String> = support::tar::list(&dl)
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(
        listing,
        ["vm1.ovf", "disk1.qcow2", "disk2.qcow2", "vm1.mf"],
        "entry order"
    );
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
    for (disk, reference) in [("disk1.qcow2", &raw1), ("disk2.qcow2", &ref2)] {
        let extracted = x.join(disk);
        image::assert_qcow2_clean(&extracted);
        image::assert_same_content(reference, &extracted, "qcow2");
    }
    let mf = fs::read_to_string(x.join("vm1.mf")).expect("read manifest");
    let lines = manifest_lines(&mf);
    let named: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(named, ["vm1.ovf", "disk1.qcow2", "disk2.qcow2"], "{mf}");
    for (name, hex) in &lines {
        let data = fs::read(x.join(name)).expect("read extracted entry");
        assert_eq!(
            &hex::encode(Sha256::digest(&data)),
            hex,
            "manifest digest of {name}"
        );
    }

    let t = await_ticket(&s, "down", "succeeded");
    check_ticket_disks(&t, &["disk1.qcow2", "disk2.qcow2"], "succeeded");

    // ovaio reads what the server wrote.
    let out = w.mkdir("imported");
    ovaio()
        .arg("import")
        .arg(&dl)
        .arg("--dir")
        .arg(&out)
        .arg("--format")
        .arg("raw")
        .run()
        .assert_success();
    image::assert_target(&raw1, &out.join("disk1.raw"), Target::Raw, MAIN.size);
    image::assert_target(&ref2, &out.join("disk2.raw"), Target::Raw, ODD.size);
}

/// The ticket's `filename` names the download.
#[test]
fn download_uses_the_ticket_filename() {
    let w = Work::new();
    let s = Server::start(&w);
    let raw = SMALL.write_raw(&s.root.join("small.raw"));
    s.add_ticket(&json!({
        "uuid": "named", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "filename": "backup-2024.ova",
        "ova": {"name": "vm1", "disks": [{"href": "disk1.qcow2", "url": s.file_url("small.raw"), "format": "raw"}]},
    }));
    let r = s.data("GET", "/images/named", &[]);
    assert_eq!(r.status, 200, "download: {}", r.text());
    let dl = w.path("got.ova");
    fs::write(&dl, &r.body).expect("save the download");
    let disposition = r.header("content-disposition").unwrap_or_default();
    assert!(
        disposition.contains("backup-2024.ova"),
        "Content-Disposition: {disposition:?}"
    );
    assert_eq!(
        r.header("content-length")
            .and_then(|v| v.parse::<u64>().ok()),
        Some(support::file_len(&dl))
    );
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
    image::assert_same_content(&raw, &x.join("disk1.qcow2"), "qcow2");
}

/// An `ova-import` ticket does not allow reading, an `ova-export` ticket
/// does not allow writing: 403, and nothing is written.
#[test]
fn ova_tickets_refuse_the_other_direction() {
    let w = Work::new();
    let s = Server::start(&w);
    SMALL.write_raw(&s.root.join("small.raw"));
    import_ticket(&s, "in", &[("disk1.img", "t.raw", "raw")], &json!({}));
    s.add_ticket(&json!({
        "uuid": "out", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"disks": [{"href": "disk1.qcow2", "url": s.file_url("small.raw")}]},
    }));
    let r = s.data("GET", "/images/in", &[]);
    assert_eq!(r.status, 403, "GET on an ova-import ticket: {}", r.text());
    let body = w.path("body");
    fs::write(&body, vec![0u8; 4096]).expect("write body");
    let r = upload(&s, "out", &body, WITH_LENGTH_T);
    assert_eq!(r.status, 403, "PUT on an ova-export ticket: {}", r.text());
    assert_eq!(names_in(&s.root), ["small.raw"], "nothing written");
    assert_ne!(s.ticket("in")["state"], "succeeded");
    assert_ne!(s.ticket("out")["state"], "succeeded");
}

// ---------------------------------------------------------------------------
// Jobs.

/// `POST /jobs`, asserting 201, returning the job status.
fn start_job(s: &Server, job: &Value) -> Value {
    let r = s.control("POST", "/jobs", Some(job));
    assert_eq!(r.status, 201, "POST /jobs {job}: {}", r.text());
    let st = r.json();
    let id = st["id"].as_str().expect("job id").to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/jobs/{id}").as_str()),
        "Location header"
    );
    assert!(
        matches!(
            st["state"].as_str(),
            Some("pending" | "active" | "succeeded")
        ),
        "new job state: {st}"
    );
    st
}

/// An import job from an OVA in the root, an export job back into the
/// root, refused jobs whose paths leave the root, the list, and delete.
#[test]
fn import_and_export_jobs() {
    let w = Work::new();
    let s = Server::start(&w);
    let a = ova::prepare(w.root(), "a", &ODD, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &SMALL, Source::Gzip);
    let built = Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .disk(b.disk(2, "disk2.img"))
        .manifest(Manifest::Sha256)
        .build(w.root(), "in.ova");
    fs::copy(&built, s.root.join("in.ova")).expect("copy the package into the root");

    let import = start_job(
        &s,
        &json!({
            "type": "import", "source": s.file_url("in.ova"), "verify": true,
            "disks": [
                {"href": "disk1.vmdk", "url": s.file_url("j1.qcow2"), "format": "qcow2"},
                {"href": "disk2.img", "url": s.file_url("j2.raw")},
            ],
        }),
    );
    let import_id = import["id"].as_str().expect("id").to_owned();
    let done = await_job(&s, &import_id);
    assert_eq!(
        done["state"],
        "succeeded",
        "import job: {done}\n{}",
        s.log()
    );
    assert!(done["finished"].as_u64().is_some(), "{done}");
    assert_eq!(done["result"]["manifest"], "verified", "{done}");
    assert_eq!(done["request"]["type"], "import", "{done}");
    let j1 = s.root.join("j1.qcow2");
    let j2 = s.root.join("j2.raw");
    check_summary_disk(&done["result"], "disk1.vmdk", &a, &j1, Target::Qcow2);
    check_summary_disk(&done["result"], "disk2.img", &b, &j2, Target::Raw);
    image::assert_target(&a.raw, &j1, Target::Qcow2, a.capacity);
    image::assert_target(&b.raw, &j2, Target::Raw, b.capacity);

    let export = start_job(
        &s,
        &json!({
            "type": "export", "target": s.file_url("out.ova"), "name": "vm1",
            "disks": [
                {"href": "disk1.qcow2", "url": s.file_url("j1.qcow2"), "format": "qcow2"},
                {"href": "disk2.qcow2", "url": s.file_url("j2.raw")},
            ],
        }),
    );
    let export_id = export["id"].as_str().expect("id").to_owned();
    let done = await_job(&s, &export_id);
    assert_eq!(
        done["state"],
        "succeeded",
        "export job: {done}\n{}",
        s.log()
    );
    let out = s.root.join("out.ova");
    assert!(out.is_file(), "out.ova written");
    assert!(
        !s.root.join("out.ova.partial").exists(),
        "no out.ova.partial left"
    );
    let listing: Vec<String> = support::tar::list(&out)
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(listing, ["vm1.ovf", "disk1.qcow2", "disk2.qcow2", "vm1.mf"]);
    let x = w.mkdir("x");
    tool(
        "tar",
        &[
            OsStr::new("-xf"),
            out.as_os_str(),
            OsStr::new("-C"),
            x.as_os_str(),
        ],
    );
    image::assert_same_content(&a.raw, &x.join("disk1.qcow2"), "qcow2");
    image::assert_same_content(&b.raw, &x.join("disk2.qcow2"), "qcow2");

    // Paths outside the root are refused before anything starts.
    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({
            "type": "import", "source": format!("file://{}", built.display()),
            "disks": [{"href": "disk1.vmdk", "url": s.file_url("k1.raw")}],
        })),
    );
    assert_eq!(
        r.status,
        400,
        "import source outside the root: {}",
        r.text()
    );
    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({
            "type": "export", "target": format!("file://{}", w.path("escape.ova").display()),
            "disks": [{"href": "disk1.qcow2", "url": s.file_url("j2.raw")}],
        })),
    );
    assert_eq!(
        r.status,
        400,
        "export target outside the root: {}",
        r.text()
    );
    assert!(!w.path("escape.ova").exists(), "nothing written outside");
    assert_absent(&s.root.join("k1.raw"));

    let r = s.control("GET", "/jobs", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    let ids: Vec<&str> = list
        .as_array()
        .expect("job list")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert!(
        ids.contains(&import_id.as_str()) && ids.contains(&export_id.as_str()),
        "GET /jobs lists both jobs: {list}"
    );

    let r = s.control("DELETE", &format!("/jobs/{import_id}"), None);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = s.control("GET", &format!("/jobs/{import_id}"), None);
    assert_eq!(r.status, 404, "deleted job: {}", r.text());
    let r = s.control("GET", &format!("/jobs/{export_id}"), None);
    assert_eq!(r.status, 200, "the other job stays: {}", r.text());
}

/// An export job does not replace an existing target unless asked to
/// (`overwrite`, default false).
#[test]
fn export_job_keeps_an_existing_target() {
    let w = Work::new();
    let s = Server::start(&w);
    SMALL.write_raw(&s.root.join("small.raw"));
    let out = s.root.join("out.ova");
    fs::write(&out, b"precious").expect("write the existing target");
    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({
            "type": "export", "target": s.file_url("out.ova"),
            "disks": [{"href": "disk1.qcow2", "url": s.file_url("small.raw")}],
        })),
    );
    let outcome = if r.status == 201 {
        let id = r.json()["id"].as_str().expect("id").to_owned();
        await_job(&s, &id).to_string()
    } else {
        format!("refused {}: {}", r.status, r.text())
    };
    let now = fs::read(&out).expect("read out.ova");
    assert!(
        now == b"precious",
        "out.ova was replaced without overwrite ({} bytes now; job {outcome})",
        now.len()
    );
    assert!(
        !outcome.contains("\"succeeded\""),
        "the job claims success without writing: {outcome}"
    );
    assert!(!s.root.join("out.ova.partial").exists(), "no .partial left");

    // With overwrite the target is replaced.
    let job = start_job(
        &s,
        &json!({
            "type": "export", "target": s.file_url("out.ova"), "overwrite": true,
            "disks": [{"href": "disk1.qcow2", "url": s.file_url("small.raw")}],
        }),
    );
    let id = job["id"].as_str().expect("id").to_owned();
    let done = await_job(&s, &id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(support::tar::list(&out).len(), 3, "vm.ovf, disk, vm.mf");
}

/// An interrupted download resumes: the export of unchanged sources is
/// the same bytes every time, so any range of it matches the whole
/// download; `If-Range` with another validator gets the whole package.
#[test]
fn export_download_resumes_with_a_range() {
    let w = Work::new();
    let s = Server::start(&w);
    MAIN.write_raw(&s.root.join("vol1.raw"));
    s.add_ticket(&json!({
        "uuid": "resume", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "vm1", "disks": [
            {"href": "disk1.qcow2", "url": s.file_url("vol1.raw")},
        ]},
    }));
    let whole = s.data("GET", "/images/resume", &[]);
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let etag = whole.header("etag").expect("ETag").to_owned();
    let total = whole.body.len() as u64;
    assert!(total > 2 << 20, "a package of some size: {total}");

    // The rest after a cut at an odd place.
    let cut = total / 3 + 7;
    let rest = s.data(
        "GET",
        "/images/resume",
        &["-H", &format!("Range: bytes={cut}-")],
    );
    assert_eq!(rest.status, 206, "{}", rest.text());
    assert_eq!(
        rest.header("content-range"),
        Some(format!("bytes {cut}-{}/{total}", total - 1).as_str())
    );
    assert_eq!(rest.header("etag"), Some(etag.as_str()));
    assert!(
        rest.body == whole.body[cut as usize..],
        "the resumed tail differs"
    );

    // A piece from the middle (the export stops after it).
    let (a, b) = (1_000_000u64, 1_500_000u64);
    let mid = s.data(
        "GET",
        "/images/resume",
        &["-H", &format!("Range: bytes={a}-{b}")],
    );
    assert_eq!(mid.status, 206, "{}", mid.text());
    assert!(
        mid.body == whole.body[a as usize..=b as usize],
        "the middle range differs"
    );

    // A validator from another package: the whole package again.
    let other = s.data(
        "GET",
        "/images/resume",
        &["-H", "Range: bytes=10-", "-H", "If-Range: \"0-0\""],
    );
    assert_eq!(other.status, 200);
    assert!(
        other.body == whole.body,
        "If-Range mismatch must send the whole package"
    );

    // Past the end.
    let past = s.data(
        "GET",
        "/images/resume",
        &["-H", &format!("Range: bytes={total}-")],
    );
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{total}").as_str())
    );
    assert_eq!(s.ticket("resume")["state"], "succeeded");
}

/// An import job does not replace an existing target unless asked to
/// (`overwrite`, default false), as export jobs and `ovaio import` do.
#[test]
fn import_job_keeps_an_existing_target() {
    let w = Work::new();
    let s = Server::start(&w);
    let package = one_disk_ova(&w, Source::Raw, "disk1.img");
    fs::copy(&package, s.root.join("in.ova")).expect("copy package");
    fs::write(s.root.join("d1.raw"), b"precious").expect("existing target");
    let job = json!({
        "type": "import", "source": s.file_url("in.ova"),
        "disks": [{"href": "disk1.img", "url": s.file_url("d1.raw"), "format": "raw"}],
    });
    let r = s.control("POST", "/jobs", Some(&job));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("exists"), "{}", r.text());
    assert_eq!(fs::read(s.root.join("d1.raw")).expect("read"), b"precious");
    let mut job = job;
    job["overwrite"] = json!(true);
    let started = start_job(&s, &job);
    let id = started["id"].as_str().expect("id").to_owned();
    let done = await_job(&s, &id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(support::file_len(&s.root.join("d1.raw")), MAIN.size);
}
