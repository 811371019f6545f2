//! `ovaio upload` and `ovaio download` against a real `ovaio serve`,
//! through a proxy that cuts connections ([`support::proxy`]): an OVA
//! with a VMDK, a qcow2 and a gzip disk (from a file and from a pipe), a
//! package with a lying manifest, a raw disk into an `image` ticket, and
//! downloads of an `ova-export` package and of an `image` disk as raw and
//! qcow2. Every result is judged by `qemu-img compare` (or byte equality
//! with an uncut download), and the server's byte counter must show that
//! no uploaded byte was sent twice beyond what was in flight at the cuts.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::image::{self, MAIN, Source, assert_target};
use support::proxy::CuttingProxy;
use support::resume::{import_ticket, received, three_disks};
use support::server::Server;
use support::{Outcome, Work, file_len};

/// `ovaio ARGS` with the server's CA; `stdin` piped when given.
fn ovaio(s: &Server, args: &[&str], stdin: Option<Vec<u8>>) -> Outcome {
    let mut c = support::ovaio();
    for a in args {
        c = c.arg(a);
    }
    c = c.arg("--cacert").arg(&s.cert).arg("--json");
    if let Some(d) = stdin {
        c = c.stdin(d);
    }
    c.run()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn an_ova_upload_from_a_file_survives_ten_cuts() {
    let w = Work::new();
    let s = Server::start(&w);
    let pkg = three_disks(&w, false);
    let len = file_len(&pkg.path);
    import_ticket(&s, "up", &pkg, json!({}));
    let proxy = CuttingProxy::start(
        s.port,
        12,
        64 << 10,
        (len / 14).max(128 << 10),
        len ^ 0xc11e,
    );
    let o = ovaio(&s, &["upload", p(&pkg.path), &proxy.image_url("up")], None);
    assert!(o.status.success(), "{}\n{}", o.stderr, s.log());
    assert!(proxy.cuts() >= 10, "only {} cuts", proxy.cuts());
    let summary: Value = serde_json::from_str(o.stdout.trim()).expect("summary");
    assert_eq!(summary["manifest"], "verified", "{summary}");
    let t = s.ticket("up");
    assert_eq!(t["state"], "succeeded", "{t}");
    for (d, _, file, target) in &pkg.disks {
        assert_target(&d.raw, &s.root.join(file), *target, d.capacity);
    }
    // Resumes re-send only what was in flight at each cut.
    let got = received(&s);
    let in_cuts: u64 = proxy.conns().iter().filter(|c| c.cut).map(|c| c.up).sum();
    assert!(got >= len, "received {got} < package {len}");
    assert!(
        got - len <= in_cuts,
        "received {got} bytes for {len}: more than the {in_cuts} bytes sent on cut connections"
    );
}

#[test]
fn an_ova_upload_from_a_pipe_survives_cuts() {
    let w = Work::new();
    let s = Server::start(&w);
    let pkg = three_disks(&w, false);
    let len = file_len(&pkg.path);
    import_ticket(&s, "pipe", &pkg, json!({}));
    let proxy = CuttingProxy::start(s.port, 5, 64 << 10, (len / 8).max(128 << 10), len ^ 0x919e);
    let data = std::fs::read(&pkg.path).expect("read package");
    let o = ovaio(&s, &["upload", "-", &proxy.image_url("pipe")], Some(data));
    assert!(o.status.success(), "{}\n{}", o.stderr, s.log());
    assert!(proxy.cuts() >= 3, "only {} cuts", proxy.cuts());
    assert_eq!(s.ticket("pipe")["state"], "succeeded");
    for (d, _, file, target) in &pkg.disks {
        assert_target(&d.raw, &s.root.join(file), *target, d.capacity);
    }
}

#[test]
fn a_lying_manifest_fails_across_cuts_and_leaves_nothing() {
    let w = Work::new();
    let s = Server::start(&w);
    let pkg = three_disks(&w, true);
    let len = file_len(&pkg.path);
    import_ticket(&s, "liar", &pkg, json!({}));
    let proxy = CuttingProxy::start(s.port, 6, 64 << 10, (len / 8).max(128 << 10), len);
    let o = ovaio(
        &s,
        &["upload", p(&pkg.path), &proxy.image_url("liar")],
        None,
    );
    assert!(!o.status.success(), "{}", o.stdout);
    assert!(o.stderr.contains("disk2.qcow2"), "{}", o.stderr);
    assert_eq!(s.ticket("liar")["state"], "failed");
    let left: Vec<_> = std::fs::read_dir(&s.root).expect("root").collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_disk_goes_into_an_image_ticket_and_comes_back_through_cuts() {
    let w = Work::new();
    let s = Server::start(&w);
    let raw = MAIN.write_raw(&w.path("main.raw"));
    let qcow = Source::Qcow2V3.convert(&raw, &w.path("main.qcow2"));
    // The target holds old data everywhere: zero ranges must be zeroed.
    std::fs::write(s.root.join("vol.raw"), vec![0xaa; MAIN.size as usize]).expect("target");
    s.add_ticket(&json!({
        "uuid": "img", "size": MAIN.size, "url": s.file_url("vol.raw"),
        "ops": ["read", "write"], "timeout": 300,
    }));
    let up = CuttingProxy::start(s.port, 4, 16 << 10, 256 << 10, 7);
    let o = ovaio(&s, &["upload", p(&qcow), &up.image_url("img")], None);
    assert!(o.status.success(), "{}\n{}", o.stderr, s.log());
    image::assert_same_content(&raw, &s.root.join("vol.raw"), "raw");
    assert!(up.cuts() >= 1, "no upload request was cut");
    let summary: Value = serde_json::from_str(o.stdout.trim()).expect("summary");
    assert_eq!(summary["capacity"].as_u64(), Some(MAIN.size), "{summary}");

    let down = CuttingProxy::start_down(s.port, 4, 256 << 10, 2 << 20, 11);
    for fmt in ["raw", "qcow2"] {
        let back = w.path(&format!("back.{fmt}"));
        let o = ovaio(
            &s,
            &[
                "download",
                &down.image_url("img"),
                p(&back),
                "--format",
                fmt,
            ],
            None,
        );
        assert!(o.status.success(), "{}\n{}", o.stderr, s.log());
        if fmt == "qcow2" {
            image::assert_qcow2_clean(&back);
        }
        image::assert_same_content(&raw, &back, fmt);
    }
    assert!(down.cuts() >= 1, "no download was cut");
}

#[test]
fn an_ova_download_resumes_after_cuts_and_equals_an_uncut_one() {
    let w = Work::new();
    let s = Server::start(&w);
    let raw = MAIN.write_raw(&s.root.join("d.raw"));
    s.add_ticket(&json!({
        "uuid": "exp", "kind": "ova-export", "ops": ["read"], "timeout": 300,
        "ova": {"name": "vm", "disks": [{"href": "d.qcow2", "url": s.file_url("d.raw")}]},
    }));
    let whole = s.data("GET", "/images/exp", &[]);
    assert_eq!(whole.status, 200, "{}", whole.text());
    let len = whole.body.len() as u64;
    let proxy = CuttingProxy::start_down(s.port, 5, 64 << 10, (len / 6).max(128 << 10), 3);
    let out = w.path("vm.ova");
    let o = ovaio(&s, &["download", &proxy.image_url("exp"), p(&out)], None);
    assert!(o.status.success(), "{}\n{}", o.stderr, s.log());
    assert!(proxy.cuts() >= 3, "only {} cuts", proxy.cuts());
    let summary: Value = serde_json::from_str(o.stdout.trim()).expect("summary");
    assert!(
        summary["resumed"].as_u64().is_some_and(|n| n >= 3),
        "{summary}"
    );
    assert!(
        std::fs::read(&out).expect("read") == whole.body,
        "the package differs"
    );
    assert!(!w.path("vm.ova.partial").exists());
    // It imports back to the disk.
    let back = w.mkdir("back");
    let o = support::ovaio()
        .arg("import")
        .arg(&out)
        .arg("--dir")
        .arg(&back)
        .run();
    assert!(o.status.success(), "{}", o.stderr);
    image::assert_same_content(&raw, &back.join("d.raw"), "raw");

    // An existing destination is refused without --force.
    let o = ovaio(&s, &["download", &s.image_url("exp"), p(&out)], None);
    assert!(!o.status.success());
    assert!(o.stderr.contains("--force"), "{}", o.stderr);
}

#[test]
fn wrong_tickets_and_directions_are_refused() {
    let w = Work::new();
    let s = Server::start(&w);
    let raw = MAIN.write_raw(&w.path("main.raw"));
    let o = ovaio(&s, &["upload", p(&raw), &s.image_url("nosuch")], None);
    assert!(!o.status.success());
    assert!(o.stderr.contains("403"), "{}", o.stderr);
    MAIN.write_raw(&s.root.join("d.raw"));
    s.add_ticket(&json!({
        "uuid": "exp", "kind": "ova-export", "ops": ["read"], "timeout": 300,
        "ova": {"name": "vm", "disks": [{"href": "d.qcow2", "url": s.file_url("d.raw")}]},
    }));
    let o = ovaio(&s, &["upload", p(&raw), &s.image_url("exp")], None);
    assert!(!o.status.success());
    assert!(o.stderr.contains("use ovaio download"), "{}", o.stderr);
    // A certificate nobody trusts.
    let o = support::ovaio()
        .arg("download")
        .arg(s.image_url("exp"))
        .arg(w.path("x.ova"))
        .run();
    assert!(!o.status.success());
    assert!(!w.path("x.ova").exists() && !w.path("x.ova.partial").exists());
    let o = support::ovaio()
        .arg("upload")
        .arg(&raw)
        .arg("http://127.0.0.1:1/images/x")
        .run();
    assert!(!o.status.success());
    assert!(o.stderr.contains("HTTPS only"), "{}", o.stderr);
}
