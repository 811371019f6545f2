//! Replication between two `ovaio serve`: server A holds a raw and a
//! qcow2 volume (written by `qemu-io`) behind an `ova-export` ticket, and
//! server B runs an import job whose `source` is that ticket's URL. The
//! package streams from A to B with no copy on disk between; B goes
//! through a proxy that cuts the download several times
//! ([`support::proxy`]), and its job must resume each time with a ranged
//! `GET`. `qemu-img compare` judges B's targets against A's sources, and
//! the proxy's byte counts show that A sent the package once, plus what
//! was on its way to B at each cut. A job from a ticket A does not have
//! fails with A's refusal and leaves nothing.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::proxy::CuttingProxy;
use support::server::{Server, curl};
use support::{Work, assert_absent, poll, tool};

const MIB: u64 = 1 << 20;

/// The `ova-export` ticket on A: its id is a credential, long like a real one.
const EXPORT_ID: &str = "repl-7c0e52d4-8a1b-4f63-9e27-b5d13c8f0a46-export";

/// Per cut, what A sent that B could not use. The proxy cuts in order
/// (the bytes it forwarded, then FIN), so B's kernel still hands B every
/// byte queued for it, however much was in flight (megabytes at a time on
/// loopback); what is lost is the TLS record the cut split (at most
/// 16 KiB and its header and tag) and anything B's TLS and HTTP layers had
/// decrypted but not yet handed to the import when the read failed.
const CUT_SLACK: u64 = 256 << 10;

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs `qemu-io` commands on the image `path` of `format`.
fn qemu_io(path: &Path, format: &str, cmds: &[String]) {
    let mut args: Vec<&OsStr> = vec![OsStr::new("-f"), OsStr::new(format)];
    for c in cmds {
        args.push(OsStr::new("-c"));
        args.push(OsStr::new(c));
    }
    args.push(path.as_os_str());
    tool("qemu-io", &args);
}

/// A file of `len` seeded pseudo-random bytes, a pattern for `qemu-io
/// write -s` (which repeats it over the whole write).
fn pattern(path: &Path, seed: u64, len: usize) -> String {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    fs::write(path, out).expect("write the pattern");
    p(path).to_owned()
}

/// A's volumes in its storage root: `a.raw`, 20 MiB, and `b.qcow2`, 32
/// MiB virtual; about 26 MiB of data between them, in runs that start
/// and end off cluster boundaries, pseudo-random (three patterns whose
/// lengths are no multiple of a cluster), constant bytes, explicitly
/// written zeros, compressed clusters in the qcow2, and data in the last
/// cluster of each.
fn volumes(w: &Work, a: &Server) {
    let pats = w.mkdir("patterns");
    let p1 = pattern(&pats.join("1"), 1, (MIB + 4093) as usize);
    let p2 = pattern(&pats.join("2"), 2, 777_777);
    let p3 = pattern(&pats.join("3"), 3, 65_521);

    let raw = a.root.join("a.raw");
    fs::File::create(&raw)
        .and_then(|f| f.set_len(20 * MIB))
        .expect("create a.raw");
    qemu_io(
        &raw,
        "raw",
        &[
            format!("write -q -s {p1} 0 {}", 3 * MIB + 1000),
            format!("write -q -P 0x5a {} {}", 3 * MIB + 1000, 300_000),
            format!("write -q -s {p2} {} {}", 4 * MIB + 512, 5 * MIB - 4096),
            format!("write -q -z {} {}", 10 * MIB, MIB),
            format!("write -q -s {p3} {} {}", 12 * MIB + 333, 2 * MIB),
            format!("write -q -P 0x00 {} {}", 15 * MIB, 100_000),
            format!("write -q -s {p1} {} {}", 16 * MIB, 3 * MIB),
            format!("write -q -P 0xa5 {} {}", 20 * MIB - 7000, 7000),
        ],
    );

    let qcow = a.root.join("b.qcow2");
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            qcow.as_os_str(),
            OsStr::new("32M"),
        ],
    );
    qemu_io(
        &qcow,
        "qcow2",
        &[
            format!("write -q -s {p2} 4096 {}", 4 * MIB),
            format!("write -q -c -s {p3} {} {}", 6 * MIB, MIB),
            format!("write -q -c -P 0x11 {} {}", 7 * MIB, 512 << 10),
            format!("write -q -s {p1} {} {}", 9 * MIB + 100, 6 * MIB),
            // Zeros over data: a zero cluster hiding what was written.
            format!("write -q -z {} {}", 11 * MIB, 256 << 10),
            format!("write -q -P 0x3c {} {}", 20 * MIB + 65_000, 70_000),
            format!("write -q -s {p3} {} {}", 24 * MIB, 4 * MIB),
            format!("write -q -P 0xee {} {}", 32 * MIB - 512, 512),
        ],
    );
}

/// `qemu-img compare` of `a` (`fa`) and `b` (`fb`): equal guest content.
fn assert_same(a: &Path, fa: &str, b: &Path, fb: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .output()
        .expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {} ({fa}) {} ({fb}): {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `ova-export` ticket on A: `a.raw` as `disk1.qcow2`, `b.qcow2` as
/// `disk2.qcow2`.
fn export_ticket(a: &Server) {
    a.add_ticket(&json!({
        "uuid": EXPORT_ID, "kind": "ova-export", "ops": ["read"], "timeout": 300,
        "ova": {"name": "vm", "disks": [
            {"href": "disk1.qcow2", "url": a.file_url("a.raw"), "format": "raw"},
            {"href": "disk2.qcow2", "url": a.file_url("b.qcow2"), "format": "qcow2"},
        ]},
    }));
}

/// The package's size, from `HEAD` on A's ticket (not through the proxy).
fn package_size(a: &Server) -> u64 {
    let r = a.data("HEAD", &format!("/images/{EXPORT_ID}"), &["-I"]);
    assert_eq!(r.status, 200, "HEAD: {}", r.text());
    r.header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("Content-Length")
}

/// An import job on B from `source`: `disk1.qcow2` into `t1.qcow2`,
/// `disk2.qcow2` into `t2.raw`. Returns the job id.
fn import_job(b: &Server, source: &str) -> String {
    let job = json!({
        "type": "import", "source": source,
        "disks": [
            {"href": "disk1.qcow2", "url": b.file_url("t1.qcow2"), "format": "qcow2"},
            {"href": "disk2.qcow2", "url": b.file_url("t2.raw"), "format": "raw"},
        ],
    });
    let r = b.control("POST", "/jobs", Some(&job));
    assert_eq!(r.status, 201, "POST /jobs {job}: {}", r.text());
    r.json()["id"].as_str().expect("job id").to_owned()
}

/// Polls `GET /jobs/{id}` until the job has ended; returns its status.
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

/// A proxy gate: returns once A's ticket has no request left, i.e. the
/// download a cut ended has let the ticket go.
fn ticket_idle(a: &Server) -> impl Fn() + Send + Sync + 'static {
    let socket = a.socket.display().to_string();
    move || {
        poll("A to let the cut download go", || {
            let r = curl(&[
                "--unix-socket".into(),
                socket.clone(),
                format!("http://localhost/tickets/{EXPORT_ID}"),
            ]);
            assert_eq!(r.status, 200, "GET A's ticket: {}", r.text());
            (r.json()["connections"].as_u64() == Some(0)).then_some(())
        });
    }
}

/// A's package, pulled by B's import job through a proxy that cuts the
/// download five times: the job succeeds having resumed, B's targets
/// equal A's sources, and A sent each byte of the package once, but for
/// what was on its way at the cuts.
///
/// The proxy holds each new connection until A has let the last one go,
/// so that every resumption is answered at once (the next test lets B's
/// first request for the rest meet A's 409, which B waits out).
#[test]
fn an_import_job_replicates_an_export_ticket_across_cuts() {
    replicate(5, true);
}

/// The same without waiting for A: B's resumption may reach A before A
/// has seen the cut connection go.
#[test]
fn an_import_job_resumes_at_once_after_cuts() {
    replicate(12, false);
}

/// Replicates A's package to B through a proxy cutting the download
/// `cuts` times; `gated`: each connection waits for A to be idle.
fn replicate(cuts: usize, gated: bool) {
    let (wa, wb) = (Work::new(), Work::new());
    let a = Server::start(&wa);
    volumes(&wa, &a);
    export_ticket(&a);
    let size = package_size(&a);
    assert!(size > 20 * MIB, "a package of {size} bytes");

    // Cuts between 256 KiB (past every TLS handshake and response head)
    // and a (cuts + 1)th of the package: every cut falls inside the
    // package, whatever the seed, and each needs a resumption.
    let (min, max, seed) = (256 << 10, size / (cuts as u64 + 1), size ^ 0x5e1f);
    let proxy = if gated {
        CuttingProxy::start_down_gated(a.port, cuts, min, max, seed, ticket_idle(&a))
    } else {
        CuttingProxy::start_down(a.port, cuts, min, max, seed)
    };
    // B trusts A's certificate for the proxy's host:port alone.
    let config = wb.path("b.toml");
    fs::write(
        &config,
        format!(
            "[remote.ca_files]\n\"127.0.0.1:{}\" = {:?}\n",
            proxy.port,
            p(&a.cert)
        ),
    )
    .expect("write B's configuration");
    let b = Server::start_with(&wb, &["--config", p(&config)]);

    let id = import_job(&b, &proxy.image_url(EXPORT_ID));
    let st = await_job(&b, &id);
    assert_eq!(
        st["state"],
        "succeeded",
        "{st}\nB:\n{}\nA:\n{}",
        b.log(),
        a.log()
    );
    let result = &st["result"];
    assert_eq!(result["manifest"], "verified", "{st}");
    assert_eq!(st["bytes"].as_u64(), Some(size), "{st}");
    assert_eq!(st["total"].as_u64(), Some(size), "{st}");
    assert!(
        st["rate"].as_u64().is_some_and(|r| r > 0),
        "no rate in {st}"
    );
    assert_eq!(proxy.cuts(), cuts, "{:?}", proxy.conns());
    assert_eq!(st["retries"].as_u64(), Some(cuts as u64), "{st}");

    assert_same(
        &a.root.join("a.raw"),
        "raw",
        &b.root.join("t1.qcow2"),
        "qcow2",
    );
    assert_same(
        &a.root.join("b.qcow2"),
        "qcow2",
        &b.root.join("t2.raw"),
        "raw",
    );
    support::image::assert_qcow2_clean(&b.root.join("t1.qcow2"));
    assert_eq!(support::file_len(&b.root.join("t2.raw")), 32 * MIB);
    for t in ["t1.qcow2", "t2.raw"] {
        assert!(!b.root.join(format!("{t}.partial")).exists());
    }

    // What A sent: the package once; per connection its TLS handshake,
    // response head and record framing (22 to 29 bytes a 16 KiB record):
    // together far below 1 % of the package; and per cut what was in
    // flight and lost with the connection ([`CUT_SLACK`]).
    let conns = proxy.conns();
    let sent: u64 = conns.iter().map(|c| c.down).sum();
    let bound = size + size / 100 + cuts as u64 * CUT_SLACK;
    eprintln!(
        "package {size} bytes; A sent {sent} ({} more) over {} connections, {cuts} cut; bound {bound}",
        sent.saturating_sub(size),
        conns.len(),
    );
    assert!(
        sent <= bound,
        "A sent {sent} bytes for a package of {size}: more than {bound} \
         (1.01 x the package + {CUT_SLACK} a cut for {cuts} cuts): {conns:?}"
    );
    assert!(sent >= size, "A sent {sent} bytes, less than the package");
}

/// An import job whose source names a ticket A does not have fails with
/// A's refusal, and leaves no target behind.
#[test]
fn an_import_job_from_a_missing_ticket_fails_and_leaves_nothing() {
    let (wa, wb) = (Work::new(), Work::new());
    let a = Server::start(&wa);
    let b = Server::start_with(&wb, &["--remote-ca", p(&a.cert)]);
    let id = import_job(&b, &a.image_url(EXPORT_ID));
    let st = await_job(&b, &id);
    assert_eq!(st["state"], "failed", "{st}\nB:\n{}", b.log());
    let err = st["error"].as_str().expect("error");
    assert!(
        err.contains("403") || err.contains("404"),
        "the error does not say A refused: {err}"
    );
    assert!(st["result"].is_null(), "{st}");
    for t in ["t1.qcow2", "t2.raw"] {
        assert_absent(&b.root.join(t));
    }
    support::assert_dir_empty(&b.root);
}

/// A source URL naming another server's ticket holds a credential: B's
/// job error and log show the ticket id cut short, as they do for a
/// remote volume's (`https://host:port/images/3f2a…`).
#[test]
fn a_source_ticket_id_is_never_shown_whole() {
    let (wa, wb) = (Work::new(), Work::new());
    let a = Server::start(&wa);
    let b = Server::start_with(&wb, &["--remote-ca", p(&a.cert)]);
    let id = import_job(&b, &a.image_url(EXPORT_ID));
    let st = await_job(&b, &id);
    assert_eq!(st["state"], "failed", "{st}");
    let err = st["error"].as_str().expect("error");
    assert!(
        !err.contains(EXPORT_ID),
        "the error holds A's ticket id whole: {err}"
    );
    let (_, lines) = b.stop_with_log();
    let whole: Vec<&String> = lines.iter().filter(|l| l.contains(EXPORT_ID)).collect();
    assert!(
        whole.is_empty(),
        "B's log holds A's ticket id whole:\n{whole:?}"
    );
}
