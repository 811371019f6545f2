//! Files that a client, a job or a package can influence are opened
//! beneath the storage root at the moment of the open: a `.partial` name
//! or a parent directory swapped for a symbolic link after the check
//! leads nowhere, and a partial file left by a killed process does not
//! block its target. Each test plants the trap a hostile local user
//! would, then checks that nothing outside the root changed.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::image::{self, MAIN, SMALL, Source, Target};
use support::ova::{self, Ova};
use support::server::Server;
use support::{Work, ovaio};

/// How long a polled condition may take.
const POLL_LIMIT: Duration = Duration::from_secs(20);

/// Calls `probe` until it is true, for at most [`POLL_LIMIT`].
fn wait_for(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + POLL_LIMIT;
    while !probe() {
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {POLL_LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `GET /jobs/{id}` until the job has ended.
fn await_job(s: &Server, id: &str) -> Value {
    let mut out = Value::Null;
    wait_for(&format!("job {id} to end"), || {
        let r = s.control("GET", &format!("/jobs/{id}"), None);
        assert_eq!(r.status, 200, "GET /jobs/{id}: {}", r.text());
        out = r.json();
        !matches!(out["state"].as_str(), Some("pending" | "active"))
    });
    out
}

/// Every name in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A file outside every root whose bytes must survive the test.
struct Victim {
    dir: PathBuf,
    file: PathBuf,
}

impl Victim {
    fn plant(w: &Work) -> Victim {
        let dir = w.mkdir("outside");
        let file = dir.join("victim");
        fs::write(&file, b"precious bytes outside the root").expect("write victim");
        Victim { dir, file }
    }

    /// Nothing outside changed: the victim keeps its bytes and no other
    /// file appeared beside it.
    fn assert_untouched(&self) {
        assert_eq!(
            fs::read(&self.file).expect("read victim"),
            b"precious bytes outside the root",
            "a file outside the root was written"
        );
        assert_eq!(
            names_in(&self.dir),
            vec!["victim".to_owned()],
            "files appeared outside the root"
        );
    }
}

/// The MAIN image as raw under `disk1.raw`, alone in `in.ova`.
fn main_ova(w: &Work) -> (PathBuf, ova::Prepared) {
    let p = ova::prepare(w.root(), "a", &MAIN, Source::Raw);
    let path = Ova::new()
        .disk(p.disk(1, "disk1.raw"))
        .build(w.root(), "in.ova");
    (path, p)
}

#[test]
fn d01_export_force_through_a_symlinked_partial_writes_nothing_outside() {
    let w = Work::new();
    let victim = Victim::plant(&w);
    let root = w.mkdir("root");
    let src = SMALL.write_raw(&root.join("small.raw"));
    let out = root.join("vm.ova");
    symlink(&victim.file, root.join("vm.ova.partial")).expect("plant the link");
    ovaio()
        .arg("export")
        .arg("--name")
        .arg("vm")
        .arg("--disk")
        .arg(format!("disk1.qcow2={}", src.display()))
        .arg("-o")
        .arg(&out)
        .arg("--force")
        .run()
        .assert_success();
    victim.assert_untouched();
    let meta = fs::symlink_metadata(&out).expect("stat vm.ova");
    assert!(
        meta.file_type().is_file(),
        "vm.ova is a regular file, not the planted link"
    );
    assert_eq!(support::tar::list(&out).len(), 3, "vm.ovf, disk, vm.mf");
    assert!(
        fs::symlink_metadata(root.join("vm.ova.partial")).is_err(),
        "no partial left"
    );
}

#[test]
fn d01_export_job_with_overwrite_through_a_symlinked_partial_writes_nothing_outside() {
    let w = Work::new();
    let victim = Victim::plant(&w);
    let s = Server::start(&w);
    SMALL.write_raw(&s.root.join("small.raw"));
    symlink(&victim.file, s.root.join("vm.ova.partial")).expect("plant the link");
    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({
            "type": "export", "target": s.file_url("vm.ova"), "overwrite": true,
            "disks": [{"href": "disk1.qcow2", "url": s.file_url("small.raw")}],
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let done = await_job(&s, &id);
    assert_eq!(done["state"], "succeeded", "{done}");
    victim.assert_untouched();
    let out = s.root.join("vm.ova");
    assert!(
        fs::symlink_metadata(&out)
            .expect("stat")
            .file_type()
            .is_file()
    );
    assert_eq!(support::tar::list(&out).len(), 3, "vm.ovf, disk, vm.mf");
}

#[test]
fn d02_image_ticket_parent_swapped_for_a_symlink_writes_nothing_outside() {
    let w = Work::new();
    let s = Server::start(&w);
    let victim_dir = w.mkdir("outside");
    fs::write(victim_dir.join("img.raw"), vec![7u8; 4096]).expect("outside image");
    let sub = s.root.join("sub");
    fs::create_dir(&sub).expect("mkdir sub");
    fs::write(sub.join("img.raw"), vec![0u8; 4096]).expect("inside image");
    s.add_ticket(&json!({
        "uuid": "swap", "size": 4096, "url": s.file_url("sub/img.raw"),
        "ops": ["read", "write"], "timeout": 60,
    }));
    // The directory the ticket was checked in is swapped for a link out.
    fs::rename(&sub, s.root.join("sub.old")).expect("move sub away");
    symlink(&victim_dir, &sub).expect("plant the link");
    let body = w.path("body");
    fs::write(&body, vec![0xAAu8; 4096]).expect("body");
    let r = s.data(
        "PUT",
        "/images/swap",
        &["--data-binary", &format!("@{}", body.display())],
    );
    assert_eq!(r.status, 400, "PUT through a swapped parent: {}", r.text());
    assert!(r.text().contains("symbolic link"), "{}", r.text());
    assert_eq!(
        fs::read(victim_dir.join("img.raw")).expect("read"),
        vec![7u8; 4096]
    );
    let r = s.data("GET", "/images/swap", &[]);
    assert_eq!(r.status, 400, "GET through a swapped parent: {}", r.text());
    assert_eq!(names_in(&victim_dir), vec!["img.raw".to_owned()]);
}

#[test]
fn d02_ova_import_target_parent_swapped_for_a_symlink_writes_nothing_outside() {
    let w = Work::new();
    let victim = Victim::plant(&w);
    let s = Server::start(&w);
    let (package, _) = main_ova(&w);
    let sub = s.root.join("vms");
    fs::create_dir(&sub).expect("mkdir vms");
    s.add_ticket(&json!({
        "uuid": "imp", "kind": "ova-import", "ops": ["write"], "timeout": 60,
        "ova": {"disks": [{"href": "disk1.raw", "url": s.file_url("vms/disk1.raw"), "format": "raw"}]},
    }));
    fs::rename(&sub, s.root.join("vms.old")).expect("move vms away");
    symlink(&victim.dir, &sub).expect("plant the link");
    let r = s.data(
        "PUT",
        "/images/imp",
        &["-T", &package.display().to_string()],
    );
    assert_eq!(
        r.status,
        400,
        "upload through a swapped parent: {}",
        r.text()
    );
    assert!(r.text().contains("symbolic link"), "{}", r.text());
    victim.assert_untouched();
    let t = s.ticket("imp");
    assert_eq!(t["state"], "failed", "{t}");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(error.contains("symbolic link"), "{t}");
}

#[test]
fn d10_a_partial_left_by_a_killed_import_does_not_block_the_next_one() {
    let w = Work::new();
    let (package, p) = main_ova(&w);
    let out = w.mkdir("out");
    let target = out.join("disk1.raw");
    let partial = out.join("disk1.raw.partial");
    let bytes = fs::read(&package).expect("read package");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovaio"))
        .arg("import")
        .arg("-")
        .arg("--disk")
        .arg(format!("disk1.raw={}", target.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ovaio import");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&bytes[..bytes.len() / 2])
        .expect("feed half");
    wait_for("the partial target", || partial.exists());
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    drop(stdin);
    assert!(partial.exists(), "the killed import left its partial file");

    let run = ovaio()
        .arg("import")
        .arg(&package)
        .arg("--disk")
        .arg(format!("disk1.raw={}", target.display()))
        .run();
    run.assert_success();
    image::assert_target(&p.raw, &target, Target::Raw, p.capacity);
    assert!(!partial.exists());
}

#[test]
fn d10_a_partial_held_by_a_live_transfer_is_kept_and_named() {
    let w = Work::new();
    let (package, _) = main_ova(&w);
    let out = w.mkdir("out");
    let target = out.join("disk1.raw");
    let partial = out.join("disk1.raw.partial");
    fs::write(&partial, b"live transfer's bytes").expect("plant partial");
    let held = fs::File::open(&partial).expect("open partial");
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).expect("lock");
    ovaio()
        .arg("import")
        .arg(&package)
        .arg("--disk")
        .arg(format!("disk1.raw={}", target.display()))
        .run()
        .assert_error(&["disk1.raw.partial", "another transfer"]);
    assert_eq!(fs::read(&partial).expect("read"), b"live transfer's bytes");
    assert!(!target.exists());
}

#[test]
fn d10_serve_removes_unheld_partials_at_start_and_keeps_held_ones() {
    let w = Work::new();
    let root = w.mkdir("storage");
    let deep = w.mkdir("storage/a/b");
    fs::write(root.join("dead.raw.partial"), b"dead").expect("plant");
    fs::write(deep.join("dead.qcow2.partial"), b"dead").expect("plant");
    fs::write(root.join("live.raw.partial"), b"live").expect("plant");
    fs::write(root.join("keep.raw"), b"done").expect("plant");
    let held = fs::File::open(root.join("live.raw.partial")).expect("open");
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).expect("lock");
    let s = Server::start(&w);
    assert_eq!(names_in(&s.root), vec!["a", "keep.raw", "live.raw.partial"]);
    assert!(
        names_in(&s.root.join("a/b")).is_empty(),
        "the deep partial was swept"
    );
    let log = s.log();
    assert!(
        log.contains("dead.raw.partial") && log.contains("dead.qcow2.partial"),
        "each removal is logged:\n{log}"
    );
}
