//! Remote volumes: imageio data API URLs (`https://HOST:PORT/images/ID`)
//! in ovaio's tickets, jobs and command line, served by a real
//! ovirt-imageio daemon (file backend on raw files, or qemu-nbd behind it)
//! or by a second `ovaio serve`. OVAs are uploaded into remote volumes and
//! downloaded from them, the `ovirt_imageio` client goes through an
//! `image` ticket to one, and transfers lose their remote midway (the
//! daemon killed, the remote ticket removed) at points the test chooses.
//! `qemu-img compare` judges every volume, GNU tar every archive, and no
//! log of ovaio may hold a remote ticket id whole.
//!
//! The venv with ovirt-imageio (scripts/test.sh makes it, or
//! `OVAIO_TEST_PYTHON`), openssl, qemu-img, qemu-nbd, curl and GNU tar are
//! required: a missing one fails these tests.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};
use support::image::{self, Fill, Layout, MAIN, ODD, Run, SMALL, Source, Target};
use support::imageio::Imageio;
use support::nbd::QemuNbd;
use support::ova::{self, Manifest, Ova};
use support::poll;
use support::server::{self, Reply, Server, TlsStream};
use support::{Work, file_len, ovaio, tool};

const MIB: u64 = 1 << 20;

/// 12 MiB of incompressible data: an import of it needs several requests
/// to its remote volume, so a transfer can be cut between them.
const BIG: Layout = Layout {
    size: 12 * MIB,
    runs: &[Run {
        offset: 0,
        len: 12 * MIB,
        fill: Fill::Random(41),
    }],
};

/// 3 MiB + 12 KiB: a whole number of 4 KiB blocks but not of 64 KiB
/// clusters or 1 MiB, with data in the partial last cluster. (The
/// daemon's file backend writes whole 4 KiB blocks, so a file volume whose
/// size is not a multiple of 4 KiB grows when its tail is written, and
/// then its extents outrun its ticket.)
const TAIL: Layout = Layout {
    size: 3 * MIB + 12288,
    runs: &[
        Run {
            offset: 0,
            len: 70_000,
            fill: Fill::Random(51),
        },
        Run {
            offset: MIB,
            len: 60_000,
            fill: Fill::Text,
        },
        Run {
            offset: MIB + 60_000,
            len: 140_000,
            fill: Fill::Zeros,
        },
        Run {
            offset: MIB + 200_000,
            len: 60_000,
            fill: Fill::Text,
        },
        Run {
            offset: 3 * MIB + 12288 - 3000,
            len: 3000,
            fill: Fill::Random(52),
        },
    ],
};

/// A long remote ticket id starting with `tag` (4 characters, what ovaio
/// may show of it): were it written whole in a log, the search finds it.
fn remote_id(tag: &str) -> String {
    assert_eq!(tag.len(), 4, "tags are the 4 characters shown");
    format!("{tag}-5e1f0c3a-9b7d-4e2a-8c6f-1d3b5a7e9f20-remote-credential")
}

/// The remote URL as ovaio shows it: the ticket id cut to 4 characters.
fn shown(port: u16, id: &str) -> String {
    format!("https://127.0.0.1:{port}/images/{}…", &id[..4])
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Uploads (`upload FILE URL CAFILE`) or downloads (`download URL FILE
/// CAFILE FMT`) with the `ovirt_imageio` client library.
const CLIENT: &str = r#"
import sys
from ovirt_imageio import client
if sys.argv[1] == "upload":
    client.upload(sys.argv[2], sys.argv[3], sys.argv[4])
else:
    client.download(sys.argv[2], sys.argv[3], sys.argv[4], fmt=sys.argv[5])
print("done")
"#;

/// Runs [`CLIENT`]; `log` is shown if it fails.
fn imageio_client(args: &[&str], log: impl FnOnce() -> String) {
    let out = Command::new(server::python())
        .arg("-c")
        .arg(CLIENT)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "ovirt_imageio client {args:?} failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log()
    );
}

/// A sparse raw file of `size` bytes: a fresh volume.
fn fresh_volume(path: &Path, size: u64) -> PathBuf {
    fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .expect("create a raw volume");
    path.to_owned()
}

/// A raw file of `size` bytes of old data (0xaa), which an import must
/// leave no trace of.
fn used_volume(path: &Path, size: u64) -> PathBuf {
    fs::write(path, vec![0xaa; usize::try_from(size).expect("size")]).expect("write old data");
    path.to_owned()
}

/// Polls `GET /tickets/{id}` until its state is final and returns it.
fn await_final(s: &Server, id: &str) -> Value {
    s.await_ticket(id, &["pending", "active", "paused"])
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

/// `POST /jobs`, asserting 201; returns the job id.
fn start_job(s: &Server, job: &Value) -> String {
    let r = s.control("POST", "/jobs", Some(job));
    assert_eq!(r.status, 201, "POST /jobs {job}: {}", r.text());
    r.json()["id"].as_str().expect("job id").to_owned()
}

/// `PUT /images/{id}` of the file `package` with curl (Content-Length).
fn upload(s: &Server, id: &str, package: &Path) -> Reply {
    s.data(
        "PUT",
        &format!("/images/{id}"),
        &[
            "-T",
            p(package),
            "-H",
            "content-type: application/octet-stream",
        ],
    )
}

/// An `ova-import` ticket `id` sending each `(href, url)` disk to `url`.
fn import_ticket(s: &Server, id: &str, disks: &[(&str, &str)]) {
    let disks: Vec<Value> = disks
        .iter()
        .map(|(href, url)| json!({"href": href, "url": url}))
        .collect();
    s.add_ticket(&json!({
        "uuid": id, "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "ova": {"disks": disks},
    }));
}

/// The entry names GNU tar lists in `archive`.
fn tar_names(archive: &Path) -> Vec<String> {
    support::tar::list(archive)
        .into_iter()
        .map(|l| l.name)
        .collect()
}

/// Stops the server and panics if anything it logged (the lines in
/// `seen`, then the rest) holds one of `ids` whole.
fn assert_log_keeps(s: Server, seen: &str, ids: &[&str]) {
    let (_, lines) = s.stop_with_log();
    let log = format!("{seen}\n{}", lines.join("\n"));
    for id in ids {
        assert!(
            !log.contains(id),
            "the server log holds the remote ticket id {id} whole:\n{}",
            log.lines()
                .filter(|l| l.contains(id))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Panics unless the ticket failed with an error naming the remote as
/// shown (never its whole id) and every one of `mentions`.
fn assert_failed_naming(t: &Value, remote: &str, id: &str, mentions: &[&str]) {
    assert_eq!(t["state"], "failed", "the ticket must fail: {t}");
    let err = t["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(remote),
        "the error should name the remote {remote}: {t}"
    );
    for m in mentions {
        assert!(err.contains(m), "the error should mention {m:?}: {t}");
    }
    assert!(
        !err.contains(id),
        "the error holds the remote ticket id whole: {err}"
    );
}

// ---------------------------------------------------------------------------
// The daemon itself.

/// The fixture: the `ovirt_imageio` client uploads to the daemon and
/// downloads back from it, and a removed ticket is refused (403).
#[test]
fn imageio_daemon_serves_the_imageio_client() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let src = MAIN.write_raw(&w.path("src.raw"));
    let vol = fresh_volume(&w.path("vol.raw"), MAIN.size);
    im.add_ticket("fixture", &vol, MAIN.size, &["read", "write"], 300);
    let ca = p(im.ca());
    let url = im.url("fixture");
    imageio_client(&["upload", p(&src), &url, ca], || im.log());
    assert_eq!(file_len(&vol), MAIN.size, "the volume changed size");
    image::assert_same_content(&src, &vol, "raw");
    let back = w.path("back.qcow2");
    imageio_client(&["download", &url, p(&back), ca, "qcow2"], || im.log());
    image::assert_same_content(&src, &back, "qcow2");
    assert_eq!(im.ticket("fixture").expect("the ticket")["uuid"], "fixture");

    im.delete_ticket("fixture");
    assert!(im.ticket("fixture").is_none(), "the ticket was removed");
    let r = server::curl(&["--cacert".into(), ca.into(), url]);
    assert_eq!(r.status, 403, "a removed ticket: {}", r.text());
}

// ---------------------------------------------------------------------------
// OVA import into remote volumes.

/// A two-disk OVA (streamOptimized VMDK and qcow2, SHA-256 manifest) PUT
/// to an `ova-import` ticket whose disks are two imageio tickets: each
/// disk's guest bytes land in its daemon file (the old data of a used
/// volume gone), and the ticket succeeds.
#[test]
fn ova_import_writes_each_disk_into_its_imageio_volume() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca())]);
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &TAIL, Source::Qcow2V3);
    let package = Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .disk(b.disk(2, "disk2.qcow2"))
        .manifest(Manifest::Sha256)
        .build(w.root(), "in.ova");
    let vol1 = used_volume(&w.path("vol1.raw"), MAIN.size);
    let vol2 = fresh_volume(&w.path("vol2.raw"), TAIL.size);
    let (id1, id2) = (remote_id("imp1"), remote_id("imp2"));
    im.add_ticket(&id1, &vol1, MAIN.size, &["read", "write"], 300);
    im.add_ticket(&id2, &vol2, TAIL.size, &["read", "write"], 300);
    import_ticket(
        &s,
        "imp",
        &[
            ("disk1.vmdk", &im.url(&id1)),
            ("disk2.qcow2", &im.url(&id2)),
        ],
    );

    let r = upload(&s, "imp", &package);
    assert_eq!(
        r.status,
        200,
        "upload: {}\n{}\ndaemon log:\n{}",
        r.text(),
        s.log(),
        im.log()
    );
    let summary = r.json();
    assert_eq!(summary["manifest"], "verified", "{summary}");
    let t = await_final(&s, "imp");
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(file_len(&vol1), MAIN.size, "volume 1 changed size");
    assert_eq!(file_len(&vol2), TAIL.size, "volume 2 changed size");
    image::assert_same_content(&a.raw, &vol1, "raw");
    image::assert_same_content(&b.raw, &vol2, "raw");
    assert!(
        fs::read_dir(&s.root).expect("root").next().is_none(),
        "nothing is written in the storage root"
    );
    assert!(
        !summary.to_string().contains(&id1) && !summary.to_string().contains(&id2),
        "the summary holds a remote ticket id whole: {summary}"
    );
    assert_log_keeps(s, "", &[&id1, &id2]);
}

/// The manifest's digest of the disk is wrong: every guest byte has gone
/// to the remote volume by the time the manifest is read, yet the ticket
/// fails (never succeeds), naming the entry and saying the remote may hold
/// partial data.
#[test]
fn ova_import_into_an_imageio_volume_with_a_lying_manifest_fails() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca())]);
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let mut package = Ova::new().disk(a.disk(1, "disk1.vmdk"));
    let text = package.manifest_for(Manifest::Sha256, &package.ovf());
    let good = Manifest::Sha256.digest_file(&a.file);
    let mut bad = good.clone().into_bytes();
    bad[9] = if bad[9] == b'0' { b'1' } else { b'0' };
    let bad = String::from_utf8(bad).expect("hex");
    assert!(text.contains(&good), "the manifest names the good digest");
    package.manifest_text = Some(text.replace(&good, &bad));
    let path = package.manifest(Manifest::Sha256).build(w.root(), "in.ova");
    let vol = fresh_volume(&w.path("vol.raw"), MAIN.size);
    let id = remote_id("liar");
    im.add_ticket(&id, &vol, MAIN.size, &["read", "write"], 300);
    import_ticket(&s, "liar", &[("disk1.vmdk", &im.url(&id))]);

    let r = upload(&s, "liar", &path);
    assert!(
        (400..500).contains(&r.status),
        "a lying manifest must be refused with 4xx, got {}: {}",
        r.status,
        r.text()
    );
    let t = await_final(&s, "liar");
    assert_failed_naming(
        &t,
        &shown(im.port(), &id),
        &id,
        &["disk1.vmdk", "digest", "may hold partial data"],
    );
    assert_log_keeps(s, "", &[&id]);
}

/// An import job from an OVA in the storage root into an imageio volume,
/// and an export job from it back into the root.
#[test]
fn import_and_export_jobs_on_an_imageio_volume() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca())]);
    let a = ova::prepare(w.root(), "a", &TAIL, Source::Vmdk);
    let built = Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .manifest(Manifest::Sha256)
        .build(w.root(), "in.ova");
    fs::copy(&built, s.root.join("in.ova")).expect("copy the package into the root");
    let vol = used_volume(&w.path("vol.raw"), TAIL.size);
    let id = remote_id("jobs");
    im.add_ticket(&id, &vol, TAIL.size, &["read", "write"], 300);

    let job = start_job(
        &s,
        &json!({
            "type": "import", "source": s.file_url("in.ova"), "verify": true,
            "disks": [{"href": "disk1.vmdk", "url": im.url(&id)}],
        }),
    );
    let done = await_job(&s, &job);
    assert_eq!(done["state"], "succeeded", "import job: {done}");
    assert_eq!(done["result"]["manifest"], "verified", "{done}");
    assert_eq!(file_len(&vol), TAIL.size, "the volume changed size");
    image::assert_same_content(&a.raw, &vol, "raw");

    let job = start_job(
        &s,
        &json!({
            "type": "export", "target": s.file_url("out.ova"), "name": "vm1",
            "disks": [{"href": "disk1.qcow2", "url": im.url(&id)}],
        }),
    );
    let done = await_job(&s, &job);
    assert_eq!(done["state"], "succeeded", "export job: {done}");
    let out = s.root.join("out.ova");
    assert_eq!(tar_names(&out), ["vm1.ovf", "disk1.qcow2", "vm1.mf"]);
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
    image::assert_qcow2_clean(&x.join("disk1.qcow2"));
    image::assert_same_content(&a.raw, &x.join("disk1.qcow2"), "qcow2");
    assert_log_keeps(s, "", &[&id]);
}

// ---------------------------------------------------------------------------
// OVA export from remote volumes.

/// An `ova-export` ticket whose disks are read from two imageio tickets:
/// GNU tar lists the download, and `ovaio import` reads it back into
/// files equal to the volumes.
#[test]
fn ova_export_reads_disks_from_imageio_volumes() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca())]);
    let ref1 = MAIN.write_raw(&w.path("vol1.raw"));
    let ref2 = TAIL.write_raw(&w.path("vol2.raw"));
    let (id1, id2) = (remote_id("exp1"), remote_id("exp2"));
    im.add_ticket(&id1, &ref1, MAIN.size, &["read"], 300);
    im.add_ticket(&id2, &ref2, TAIL.size, &["read"], 300);
    s.add_ticket(&json!({
        "uuid": "down", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "vm1", "disks": [
            {"href": "disk1.qcow2", "url": im.url(&id1)},
            {"href": "disk2.qcow2", "url": im.url(&id2)},
        ]},
    }));
    let r = s.data("GET", "/images/down", &[]);
    assert_eq!(
        r.status,
        200,
        "download: {}\n{}\ndaemon log:\n{}",
        r.text(),
        s.log(),
        im.log()
    );
    let dl = w.path("vm1.ova");
    fs::write(&dl, &r.body).expect("save the download");
    assert_eq!(
        r.header("content-length").and_then(|v| v.parse().ok()),
        Some(file_len(&dl)),
        "Content-Length must equal the bytes sent"
    );
    assert_eq!(
        tar_names(&dl),
        ["vm1.ovf", "disk1.qcow2", "disk2.qcow2", "vm1.mf"],
        "entry order"
    );
    let t = await_final(&s, "down");
    assert_eq!(t["state"], "succeeded", "{t}");

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
    image::assert_target(&ref1, &out.join("disk1.raw"), Target::Raw, MAIN.size);
    image::assert_target(&ref2, &out.join("disk2.raw"), Target::Raw, TAIL.size);
    assert_log_keeps(s, "", &[&id1, &id2]);
}

/// `(offset, size)` of every data read the daemon logged.
fn daemon_reads(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split(" READ size=").nth(1)?;
            let (size, rest) = rest.split_once(" offset=")?;
            let offset = rest.split_whitespace().next()?;
            Some((size.parse().ok()?, offset.parse().ok()?))
        })
        .map(|(size, offset)| (offset, size))
        .collect()
}

/// The daemon serving a qcow2 volume through qemu-nbd reports its holes
/// in its extents; the export asks for them first and reads no byte of a
/// hole, and the package still holds the whole disk.
#[test]
fn ova_export_reads_only_the_data_extents_of_a_remote_volume() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca())]);
    let raw = MAIN.write_raw(&w.path("ref.raw"));
    let vol = Source::Qcow2V3.convert(&raw, &w.path("vol.qcow2"));
    let nbd = QemuNbd::start(&vol, "qcow2", &["--read-only"]);
    let id = remote_id("hole");
    im.add_ticket_url(&id, &nbd.url(), MAIN.size, &["read"], 300);
    s.add_ticket(&json!({
        "uuid": "down", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "vm1", "disks": [{"href": "disk1.qcow2", "url": im.url(&id)}]},
    }));
    let r = s.data("GET", "/images/down", &[]);
    assert_eq!(r.status, 200, "download: {}\n{}", r.text(), im.log());
    let dl = w.path("vm1.ova");
    fs::write(&dl, &r.body).expect("save the download");
    assert_eq!(await_final(&s, "down")["state"], "succeeded");

    let log = im.log();
    assert!(
        log.contains("EXTENTS"),
        "the export did not ask for extents:\n{log}"
    );
    let reads = daemon_reads(&log);
    assert!(!reads.is_empty(), "the daemon logged no reads:\n{log}");
    // MAIN's qcow2 (64 KiB clusters) has no cluster in these ranges.
    for (hole_start, hole_end) in [(MIB, 2 * MIB), (4 * MIB, 5 * MIB)] {
        for &(offset, size) in &reads {
            assert!(
                offset + size <= hole_start || offset >= hole_end,
                "read {offset}+{size} fetches the hole {hole_start}..{hole_end}"
            );
        }
    }
    let read: u64 = reads.iter().map(|r| r.1).sum();
    assert!(read < MAIN.size, "{read} bytes read of {}", MAIN.size);

    let out = w.mkdir("imported");
    ovaio()
        .arg("import")
        .arg(&dl)
        .arg("--dir")
        .arg(&out)
        .run()
        .assert_success();
    image::assert_target(&raw, &out.join("disk1.raw"), Target::Raw, MAIN.size);
    assert_log_keeps(s, "", &[&id]);
}

// ---------------------------------------------------------------------------
// Image tickets on remote volumes.

/// An `image` ticket whose url is an imageio ticket: the `ovirt_imageio`
/// client uploads through ovaio into the daemon's file and downloads it
/// back as raw and qcow2; a zeroed range and a flush go through too.
#[test]
fn image_ticket_forwards_the_imageio_client_to_an_imageio_volume() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca())]);
    let main = MAIN.write_raw(&w.path("main.raw"));
    let vol = used_volume(&w.path("vol.raw"), MAIN.size);
    let id = remote_id("imgv");
    im.add_ticket(&id, &vol, MAIN.size, &["read", "write"], 300);
    s.add_ticket(&json!({
        "uuid": "img", "size": MAIN.size, "url": im.url(&id),
        "ops": ["read", "write"], "timeout": 300,
    }));
    let cert = p(&s.cert).to_owned();
    let url = s.image_url("img");
    let log = || format!("ovaio:\n{}\ndaemon:\n{}", s.log(), im.log());

    imageio_client(&["upload", p(&main), &url, &cert], log);
    assert_eq!(file_len(&vol), MAIN.size, "the volume changed size");
    image::assert_same_content(&main, &vol, "raw");
    let raw_back = w.path("back.raw");
    imageio_client(&["download", &url, p(&raw_back), &cert, "raw"], log);
    image::assert_same_content(&main, &raw_back, "raw");
    let qcow2_back = w.path("back.qcow2");
    imageio_client(&["download", &url, p(&qcow2_back), &cert, "qcow2"], log);
    image::assert_qcow2_clean(&qcow2_back);
    image::assert_same_content(&main, &qcow2_back, "qcow2");

    let mut model = fs::read(&main).expect("read main");
    let (offset, size) = (MIB + 100, MIB);
    let r = s.data(
        "PATCH",
        "/images/img",
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &json!({"op": "zero", "offset": offset, "size": size, "flush": true}).to_string(),
        ],
    );
    assert_eq!(r.status, 200, "zero: {}\n{}", r.text(), log());
    model[offset as usize..(offset + size) as usize].fill(0);
    let r = s.data(
        "GET",
        "/images/img",
        &["-H", &format!("Range: bytes={}-{}", MIB, 3 * MIB - 1)],
    );
    assert_eq!(r.status, 206, "GET: {}", r.text());
    assert!(
        r.body == model[MIB as usize..3 * MIB as usize],
        "a read through ovaio after zeroing differs"
    );
    let want = w.path("want.raw");
    fs::write(&want, &model).expect("write the model");
    image::assert_same_content(&want, &vol, "raw");
    assert_log_keeps(s, "", &[&id]);
}

// ---------------------------------------------------------------------------
// Remotes lost midway.

/// An upload sent in two parts over one connection: the request head and
/// the first `first` bytes now, the rest when the test says.
struct Split {
    tls: TlsStream,
    package: Vec<u8>,
    first: usize,
}

impl Split {
    /// Sends the head (the whole length declared) and `first` bytes.
    fn start(s: &Server, id: &str, package: Vec<u8>, first: usize) -> Split {
        let mut tls = s.tls();
        tls.sock
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("write timeout");
        let head = format!(
            "PUT /images/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            package.len()
        );
        tls.write_all(head.as_bytes()).expect("send the head");
        tls.write_all(&package[..first])
            .expect("send the first part");
        tls.flush().expect("flush");
        Split {
            tls,
            package,
            first,
        }
    }

    /// Sends the rest in a thread of its own (the server may stop reading
    /// once its remote is gone) and reads the answer there; the thread
    /// returns the status line, or why there is none.
    fn finish(mut self) -> thread::JoinHandle<String> {
        thread::spawn(move || {
            let sent = self
                .tls
                .write_all(&self.package[self.first..])
                .and_then(|()| self.tls.flush());
            let mut got = Vec::new();
            let mut buf = [0u8; 16 << 10];
            loop {
                match self.tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let status = String::from_utf8_lossy(&got)
                .lines()
                .next()
                .unwrap_or("no answer")
                .to_owned();
            format!("{status} (rest sent: {sent:?})")
        })
    }
}

/// Panics unless the uploader was answered with an error status, or had
/// its connection closed without an answer (never a success).
fn assert_error_answer(answer: &str) {
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok());
    assert!(
        status.is_none_or(|c| c >= 400),
        "the upload was answered {answer}"
    );
}

/// A one-disk OVA of [`BIG`] (a raw entry) in `w`; returns its bytes, the
/// reference raw image and the offset of the disk's first byte.
fn big_package(w: &Work) -> (Vec<u8>, PathBuf, usize) {
    let d = ova::prepare(w.root(), "big", &BIG, Source::Raw);
    let package = Ova::new()
        .disk(d.disk(1, "disk1.img"))
        .manifest(Manifest::Sha256)
        .build(w.root(), "big.ova");
    let entry = support::tar::list(&package)
        .into_iter()
        .find(|e| e.name == "disk1.img")
        .expect("the disk entry");
    let data = usize::try_from(entry.header_offset).expect("offset") + 512;
    (fs::read(&package).expect("read the package"), d.raw, data)
}

/// Waits until ovaio has taken the first `sent` bytes of the body, the
/// remote volume holds the disk's first `landed` bytes, and the daemon
/// has no request on the remote ticket `remote` in progress.
fn await_remote_data(
    s: &Server,
    id: &str,
    sent: usize,
    (im, remote): (&Imageio, &str),
    vol: &Path,
    want: &[u8],
) {
    poll("the first part to reach the remote volume", || {
        let t = s.ticket(id);
        let taken = t["transferred"].as_u64().is_some_and(|n| n >= sent as u64);
        let mut head = vec![0u8; want.len()];
        let landed = fs::File::open(vol)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
            && head == want;
        let idle = im.ticket(remote).is_some_and(|r| r["active"] == false);
        (taken && landed && idle).then_some(())
    });
}

/// The daemon is killed (SIGKILL) once ovaio has taken the first 9 MiB of
/// the disk and written two whole requests (4 MiB each, as the README
/// says) into the volume, with none in progress; the rest of the OVA then
/// arrives. ovaio cannot
/// reach the remote again, so the ticket fails (never succeeds) with an
/// error naming the remote and its partial data.
#[test]
fn import_fails_when_the_imageio_daemon_dies_midway() {
    let w = Work::new();
    let mut im = Imageio::start(&w);
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca())]);
    let (package, reference, data) = big_package(&w);
    let vol = fresh_volume(&w.path("vol.raw"), BIG.size);
    let id = remote_id("kill");
    im.add_ticket(&id, &vol, BIG.size, &["read", "write"], 300);
    import_ticket(&s, "imp", &[("disk1.img", &im.url(&id))]);

    let first = data + 9 * MIB as usize;
    let split = Split::start(&s, "imp", package, first);
    let want = &fs::read(&reference).expect("read the reference")[..8 * MIB as usize];
    await_remote_data(&s, "imp", first, (&im, &id), &vol, want);
    let port = im.port();
    im.kill();
    let answer = split.finish();

    let t = await_final(&s, "imp");
    let answer = answer.join().expect("the sending thread");
    // Every request sent again finds the port closed.
    assert_failed_naming(
        &t,
        &shown(port, &id),
        &id,
        &["refused", "may hold partial data"],
    );
    assert_error_answer(&answer);
    let seen = s.log();
    assert_eq!(s.ticket("imp")["state"], "failed", "the failure stands");
    assert_log_keeps(s, &seen, &[&id]);
}

/// The remote ticket is removed (as the engine does when it cancels a
/// transfer) once ovaio has taken the first 9 MiB of the disk and written
/// two whole requests (4 MiB each, as the README says) into the volume,
/// with none in progress; the rest of the OVA then arrives. The daemon
/// refuses the next request with 403 (before reading its body), and the
/// ticket fails with an error naming the remote and that status.
#[test]
fn import_fails_when_the_remote_ticket_is_removed_midway() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca())]);
    let (package, reference, data) = big_package(&w);
    let vol = fresh_volume(&w.path("vol.raw"), BIG.size);
    let id = remote_id("gone");
    im.add_ticket(&id, &vol, BIG.size, &["read", "write"], 300);
    import_ticket(&s, "imp", &[("disk1.img", &im.url(&id))]);

    let first = data + 9 * MIB as usize;
    let split = Split::start(&s, "imp", package, first);
    let want = &fs::read(&reference).expect("read the reference")[..8 * MIB as usize];
    await_remote_data(&s, "imp", first, (&im, &id), &vol, want);
    im.delete_ticket(&id);
    assert!(im.ticket(&id).is_none(), "the remote ticket was removed");
    let answer = split.finish();

    let t = await_final(&s, "imp");
    let answer = answer.join().expect("the sending thread");
    assert_failed_naming(
        &t,
        &shown(im.port(), &id),
        &id,
        &["403", "may hold partial data"],
    );
    assert_error_answer(&answer);
    assert_log_keeps(s, "", &[&id]);
}

/// A remote's error answer (the daemon's 403 for a removed ticket, whose
/// text names the ticket whole) reaches the client of an `image` ticket
/// with the remote's status, and neither the answer nor the log holds the
/// remote ticket id whole.
#[test]
fn a_remote_error_is_passed_on_without_the_ticket_id() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca())]);
    let vol = SMALL.write_raw(&w.path("vol.raw"));
    let id = remote_id("deny");
    im.add_ticket(&id, &vol, SMALL.size, &["read"], 300);
    s.add_ticket(&json!({
        "uuid": "img", "size": SMALL.size, "url": im.url(&id),
        "ops": ["read"], "timeout": 300,
    }));
    let range = ["-H", "Range: bytes=0-4095"];
    let r = s.data("GET", "/images/img", &range);
    assert_eq!(r.status, 206, "a read of the remote: {}", r.text());
    assert!(r.body == fs::read(&vol).expect("read the volume")[..4096]);

    im.delete_ticket(&id);
    let r = s.data("GET", "/images/img", &range);
    assert!(
        r.status >= 400,
        "a read of a removed remote ticket: {} {}",
        r.status,
        r.text()
    );
    let text = r.text();
    assert!(
        text.contains("403") && text.contains(&shown(im.port(), &id)),
        "the answer should name the remote and its status: {text}"
    );
    assert!(
        !text.contains(&id),
        "the answer holds the remote ticket id whole: {text}"
    );
    assert_log_keeps(s, "", &[&id]);
}

// ---------------------------------------------------------------------------
// ovaio as the remote of ovaio.

/// Two `ovaio serve`: an `image` ticket on the second (a file in its
/// storage root) is the remote volume of an `ova-import` ticket on the
/// first, which trusts the second's certificate; then the source of an
/// `ova-export` ticket on the first.
#[test]
fn ovaio_imports_into_a_volume_served_by_another_ovaio() {
    let (w1, w2) = (Work::new(), Work::new());
    let s2 = Server::start(&w2);
    let a = ova::prepare(w1.root(), "a", &MAIN, Source::Qcow2V3);
    let package = Ova::new()
        .disk(a.disk(1, "disk1.qcow2"))
        .manifest(Manifest::Sha256)
        .build(w1.root(), "in.ova");
    let vol = used_volume(&s2.root.join("disk.raw"), MAIN.size);
    let id = remote_id("peer");
    s2.add_ticket(&json!({
        "uuid": id, "size": MAIN.size, "url": s2.file_url("disk.raw"),
        "ops": ["read", "write"], "timeout": 300,
    }));
    let s1 = Server::start_with(&w1, &["--remote-ca", p(&s2.cert)]);
    import_ticket(&s1, "imp", &[("disk1.qcow2", &s2.image_url(&id))]);
    let r = upload(&s1, "imp", &package);
    assert_eq!(
        r.status,
        200,
        "upload: {}\nfirst:\n{}\nsecond:\n{}",
        r.text(),
        s1.log(),
        s2.log()
    );
    assert_eq!(r.json()["manifest"], "verified");
    assert_eq!(await_final(&s1, "imp")["state"], "succeeded");
    assert_eq!(file_len(&vol), MAIN.size, "the volume changed size");
    image::assert_same_content(&a.raw, &vol, "raw");
    let st = s2.ticket(&id);
    assert!(
        st["transferred"].as_u64().is_some_and(|n| n > 0),
        "the second server counted no bytes: {st}"
    );

    // And back: an `ova-export` ticket on the first reads the volume
    // through the second's extents and ranged reads.
    s1.add_ticket(&json!({
        "uuid": "down", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "vm1", "disks": [{"href": "disk1.qcow2", "url": s2.image_url(&id)}]},
    }));
    let r = s1.data("GET", "/images/down", &[]);
    assert_eq!(r.status, 200, "download: {}\n{}", r.text(), s2.log());
    let dl = w1.path("vm1.ova");
    fs::write(&dl, &r.body).expect("save the download");
    assert_eq!(await_final(&s1, "down")["state"], "succeeded");
    assert_eq!(tar_names(&dl), ["vm1.ovf", "disk1.qcow2", "vm1.mf"]);
    let back = w1.mkdir("back");
    ovaio()
        .arg("import")
        .arg(&dl)
        .arg("--dir")
        .arg(&back)
        .run()
        .assert_success();
    image::assert_target(&a.raw, &back.join("disk1.raw"), Target::Raw, MAIN.size);
    assert_log_keeps(s1, "", &[&id]);
}

// ---------------------------------------------------------------------------
// Which remotes a ticket may name.

/// With `--remote-allow 127.0.0.1:PORT`, tickets naming another host or
/// port are refused at installation (400, saying so) and one naming the
/// allowed daemon is accepted; `http://` remotes are refused whatever the
/// list; nothing the server logs holds a remote ticket id whole.
#[test]
fn remote_hosts_and_schemes_are_checked_at_ticket_installation() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let allowed = format!("127.0.0.1:{}", im.port());
    let s = Server::start_with(&w, &["--remote-ca", p(im.ca()), "--remote-allow", &allowed]);
    let vol = fresh_volume(&w.path("vol.raw"), SMALL.size);
    let id = remote_id("allo");
    im.add_ticket(&id, &vol, SMALL.size, &["read", "write"], 300);
    let image_ticket = |uuid: &str, url: &str| json!({"uuid": uuid, "size": SMALL.size, "url": url, "ops": ["read"], "timeout": 60});
    let ova_ticket = |uuid: &str, url: &str| {
        json!({
            "uuid": uuid, "kind": "ova-import", "ops": ["write"], "timeout": 60,
            "ova": {"disks": [{"href": "disk1.img", "url": url}]},
        })
    };

    let others = [
        format!("https://localhost:{}/images/{id}", im.port()),
        format!("https://127.0.0.1:1/images/{id}"),
        format!("https://192.0.2.7:{}/images/{id}", im.port()),
    ];
    for url in &others {
        for t in [image_ticket("no", url), ova_ticket("no", url)] {
            let r = s.control("PUT", "/tickets/no", Some(&t));
            assert_eq!(r.status, 400, "{url}: {}", r.text());
            assert!(r.text().contains("remote.allow"), "{url}: {}", r.text());
        }
    }
    let plain = format!("http://127.0.0.1:{}/images/{id}", im.port());
    for t in [image_ticket("no", &plain), ova_ticket("no", &plain)] {
        let r = s.control("PUT", "/tickets/no", Some(&t));
        assert_eq!(r.status, 400, "{plain}: {}", r.text());
    }
    assert_eq!(
        s.control("GET", "/tickets/no", None).status,
        404,
        "a refused ticket is not installed"
    );

    s.add_ticket(&image_ticket("yes", &im.url(&id)));
    let r = s.data("GET", "/images/yes", &["-H", "Range: bytes=0-4095"]);
    assert_eq!(r.status, 206, "a read of the allowed remote: {}", r.text());
    assert_eq!(r.body, vec![0u8; 4096]);
    s.add_ticket(&ova_ticket("yes-ova", &im.url(&id)));

    // An unrestricted server refuses http:// all the same.
    let w2 = Work::new();
    let open = Server::start_with(&w2, &["--remote-ca", p(im.ca())]);
    for t in [image_ticket("no", &plain), ova_ticket("no", &plain)] {
        let r = open.control("PUT", "/tickets/no", Some(&t));
        assert_eq!(r.status, 400, "{plain}: {}", r.text());
    }
    assert_log_keeps(open, "", &[&id]);
    assert_log_keeps(s, "", &[&id]);
}

/// `[remote] ca_file` and `allow` in the configuration file: the CA is
/// trusted (a read goes through) and another host is refused; then the
/// CA named for the daemon's `host:port` alone in `[remote.ca_files]`.
#[test]
fn remote_settings_from_the_configuration_file() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let config = w.path("ovaio.toml");
    fs::write(
        &config,
        format!(
            "[remote]\nca_file = {:?}\nallow = [\"127.0.0.1:{}\"]\n",
            p(im.ca()),
            im.port()
        ),
    )
    .expect("write the configuration");
    let s = Server::start_with(&w, &["--config", p(&config)]);
    let vol = SMALL.write_raw(&w.path("vol.raw"));
    let id = remote_id("conf");
    im.add_ticket(&id, &vol, SMALL.size, &["read"], 300);
    let ticket = |url: &str| json!({"uuid": "img", "size": SMALL.size, "url": url, "ops": ["read"], "timeout": 60});
    let other = format!("https://localhost:{}/images/{id}", im.port());
    let r = s.control("PUT", "/tickets/img", Some(&ticket(&other)));
    assert_eq!(r.status, 400, "{other}: {}", r.text());
    assert!(r.text().contains("remote.allow"), "{}", r.text());
    s.add_ticket(&ticket(&im.url(&id)));
    let r = s.data("GET", "/images/img", &[]);
    assert_eq!(r.status, 200, "a read of the remote: {}", r.text());
    assert!(r.body == fs::read(&vol).expect("read the volume"));
    assert_log_keeps(s, "", &[&id]);

    // A CA for this host:port alone, in `[remote.ca_files]`.
    let w2 = Work::new();
    let config = w2.path("ovaio.toml");
    fs::write(
        &config,
        format!(
            "[remote.ca_files]\n\"127.0.0.1:{}\" = {:?}\n",
            im.port(),
            p(im.ca())
        ),
    )
    .expect("write the configuration");
    let s = Server::start_with(&w2, &["--config", p(&config)]);
    s.add_ticket(&ticket(&im.url(&id)));
    let r = s.data("GET", "/images/img", &[]);
    assert_eq!(r.status, 200, "a read of the remote: {}", r.text());
    assert!(r.body == fs::read(&vol).expect("read the volume"));
    assert_log_keeps(s, "", &[&id]);
}

// ---------------------------------------------------------------------------
// The command line.

/// `ovaio import --disk HREF=https://…` writes one disk into an imageio
/// volume (trusted with `--remote-ca`) and the other into a local file.
#[test]
fn cli_import_writes_a_disk_into_an_imageio_volume() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Raw);
    let package = Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .disk(b.disk(2, "disk2.img"))
        .manifest(Manifest::Sha256)
        .build(w.root(), "in.ova");
    let vol = used_volume(&w.path("vol.raw"), MAIN.size);
    let id = remote_id("clii");
    im.add_ticket(&id, &vol, MAIN.size, &["read", "write"], 300);
    let local = w.path("disk2.qcow2");

    let out = ovaio()
        .arg("import")
        .arg(&package)
        .arg("--disk")
        .arg(format!("disk1.vmdk={}", im.url(&id)))
        .arg("--disk")
        .arg(format!("disk2.img={}:qcow2", local.display()))
        .arg("--remote-ca")
        .arg(im.ca())
        .arg("--json")
        .arg("-vv")
        .run();
    out.assert_success();
    assert!(
        !out.stderr.contains(&id) && !out.stdout.contains(&id),
        "the output holds the remote ticket id whole:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.json()["manifest"], "verified", "{}", out.stdout);
    assert_eq!(file_len(&vol), MAIN.size, "the volume changed size");
    image::assert_same_content(&a.raw, &vol, "raw");
    image::assert_target(&b.raw, &local, Target::Qcow2, ODD.size);
}

/// Without `--remote-ca` the daemon's certificate (signed by the test's
/// CA) is not trusted: `ovaio import` fails in one line naming the remote
/// as shown, and writes nothing into the volume.
#[test]
fn cli_import_refuses_an_untrusted_remote_in_one_line() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let a = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    let package = Ova::new()
        .disk(a.disk(1, "disk1.img"))
        .build(w.root(), "in.ova");
    let vol = used_volume(&w.path("vol.raw"), SMALL.size);
    let id = remote_id("trus");
    im.add_ticket(&id, &vol, SMALL.size, &["read", "write"], 300);
    let out = ovaio()
        .arg("import")
        .arg(&package)
        .arg("--disk")
        .arg(format!("disk1.img={}", im.url(&id)))
        .run();
    assert!(!out.stderr.contains(&id), "{}", out.stderr);
    out.assert_error(&[&shown(im.port(), &id), "certificate"]);
    assert!(
        fs::read(&vol)
            .expect("read the volume")
            .iter()
            .all(|&b| b == 0xaa),
        "the untrusted remote was written"
    );
}

/// `ovaio export --disk HREF=https://…` reads an imageio volume into an
/// OVA that GNU tar lists and `ovaio import` reads back equal.
#[test]
fn cli_export_reads_a_disk_from_an_imageio_volume() {
    let w = Work::new();
    let im = Imageio::start(&w);
    let reference = MAIN.write_raw(&w.path("vol.raw"));
    let id = remote_id("clie");
    im.add_ticket(&id, &reference, MAIN.size, &["read"], 300);
    let local = ODD.write_raw(&w.path("local.raw"));
    let package = w.path("out.ova");
    let out = ovaio()
        .arg("export")
        .arg("--name")
        .arg("vm1")
        .arg("--disk")
        .arg(format!("disk1.qcow2={}", im.url(&id)))
        .arg("--disk")
        .arg(format!("disk2.qcow2={}", local.display()))
        .arg("--remote-ca")
        .arg(im.ca())
        .arg("-o")
        .arg(&package)
        .arg("-vv")
        .run();
    out.assert_success();
    assert!(!out.stderr.contains(&id), "{}", out.stderr);
    assert_eq!(
        tar_names(&package),
        ["vm1.ovf", "disk1.qcow2", "disk2.qcow2", "vm1.mf"]
    );
    let back = w.mkdir("back");
    ovaio()
        .arg("import")
        .arg(&package)
        .arg("--dir")
        .arg(&back)
        .run()
        .assert_success();
    image::assert_target(&reference, &back.join("disk1.raw"), Target::Raw, MAIN.size);
    image::assert_target(&local, &back.join("disk2.raw"), Target::Raw, ODD.size);
}
