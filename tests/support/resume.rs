//! What the resumable-upload tests share: a package of three disks of
//! different sources (a streamOptimized VMDK, a qcow2 and a gzip raw
//! image) with a SHA-256 manifest, true or lying; its `ova-import`
//! ticket; and the server's count of bytes received for OVA imports.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::Work;
use super::image::{MAIN, ODD, Source, Target};
use super::ova::{self, Manifest, OVF_NAME, Ova, Prepared};
use super::server::Server;

/// The package, the prepared disks and where each goes:
/// (disk, href, target file name in the storage root, target format).
pub struct Package {
    pub path: PathBuf,
    pub disks: Vec<(Prepared, &'static str, &'static str, Target)>,
}

/// Builds the package in `w`; with `lying`, the manifest's digest of
/// `disk2.qcow2` is wrong.
pub fn three_disks(w: &Work, lying: bool) -> Package {
    let src = w.mkdir("src");
    let vmdk = ova::prepare(&src, "v", &MAIN, Source::Vmdk);
    let qcow = ova::prepare(&src, "q", &ODD, Source::Qcow2V3);
    let gz = ova::prepare(&src, "g", &MAIN, Source::Gzip);
    let mut o = Ova::new()
        .disk(vmdk.disk(1, "disk1.vmdk"))
        .disk(qcow.disk(2, "disk2.qcow2"))
        .disk(gz.disk(3, "disk3.img.gz"))
        .manifest(Manifest::Sha256);
    if lying {
        let ovf = o.ovf();
        o.manifest_text = Some(format!(
            "{}{}",
            Manifest::Sha256.line(OVF_NAME, &Manifest::Sha256.digest(ovf.as_bytes())),
            Manifest::Sha256.line("disk2.qcow2", &"0".repeat(64)),
        ));
    }
    let path = o.build(&src, "vm.ova");
    Package {
        path,
        disks: vec![
            (vmdk, "disk1.vmdk", "t1.qcow2", Target::Qcow2),
            (qcow, "disk2.qcow2", "t2.raw", Target::Raw),
            (gz, "disk3.img.gz", "t3.raw", Target::Raw),
        ],
    }
}

/// An `ova-import` ticket for `p` (300 s, paused uploads kept 60 s), with
/// more fields from `extra`.
pub fn import_ticket(s: &Server, id: &str, p: &Package, extra: Value) {
    let disks: Vec<Value> = p
        .disks
        .iter()
        .map(
            |(_, href, file, t)| json!({"href": href, "url": s.file_url(file), "format": t.name()}),
        )
        .collect();
    let mut t = json!({
        "uuid": id, "kind": "ova-import", "ops": ["write"], "timeout": 300,
        "inactivity_timeout": 60, "ova": {"disks": disks},
    });
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        t.extend(extra.clone());
    }
    s.add_ticket(&t);
}

/// The server's `ovaio_received_bytes_total` for OVA imports.
pub fn received(s: &Server) -> u64 {
    let r = s.control("GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("ovaio_received_bytes_total{kind=\"ova-import\",op=\"write\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("received bytes counter")
}
