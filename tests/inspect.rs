//! `ovaio inspect` on real packages: the JSON summary against what the
//! generator wrote and what GNU tar lists, and the human table.

mod support;

use std::fs;
use std::path::PathBuf;

use serde_json::Value;
use support::image::{MAIN, ODD, QCOW2_URI, Source, VMDK_URI};
use support::ova::{self, MF_NAME, Manifest, OVF_NAME, Ova, Placement, Prepared, VM_NAME};
use support::tar::{self, TarFormat};
use support::{Work, file_len, ovaio};

/// A three-disk package (VMDK with populatedSize and MiB units, zstd
/// qcow2, gzip raw) plus `tpm.dat`, with the given manifest.
fn package(w: &Work, manifest: Option<Manifest>, placement: Placement) -> (PathBuf, Vec<Prepared>) {
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Qcow2Zstd);
    let c = ova::prepare(w.root(), "c", &ODD, Source::Gzip);
    let mut ova = Ova::new()
        .disk(a.disk(1, "disk1.vmdk").mib_units().populated(1_900_544))
        .disk(b.disk(2, "disk2.qcow2"))
        .disk(c.disk(3, "disk3.img"))
        .extra("tpm.dat", b"tpm state")
        .placement(placement)
        .format(TarFormat::Ustar);
    if let Some(m) = manifest {
        ova = ova.manifest(m);
    }
    (ova.build(w.root(), "in.ova"), vec![a, b, c])
}

fn inspect_json(path: &std::path::Path) -> Value {
    let run = ovaio().arg("inspect").arg(path).arg("--json").run();
    run.assert_success();
    run.json()
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .find(|v| v[key] == value)
        .unwrap_or_else(|| panic!("no {key}={value} in {list}"))
}

#[test]
fn json_for_three_disks_with_manifest() {
    let w = Work::new();
    let (path, prepared) = package(&w, Some(Manifest::Sha256), Placement::OvfFirst);
    let json = inspect_json(&path);

    assert_eq!(json["ovf"], OVF_NAME);
    assert_eq!(json["name"], VM_NAME);

    let files = &json["files"];
    assert_eq!(files.as_array().map(Vec::len), Some(3), "{json}");
    for (i, (p, href)) in prepared
        .iter()
        .zip(["disk1.vmdk", "disk2.qcow2", "disk3.img"])
        .enumerate()
    {
        let f = find(files, "href", href);
        assert_eq!(f["id"], format!("file{}", i + 1));
        assert_eq!(f["size"].as_u64(), Some(file_len(&p.file)), "{href}");
        if p.source.gzip() {
            assert_eq!(f["compression"], "gzip", "{href}");
        } else {
            assert!(
                f["compression"] == "none" || f["compression"].is_null(),
                "{href}: {}",
                f["compression"]
            );
        }
    }

    let disks = &json["disks"];
    assert_eq!(disks.as_array().map(Vec::len), Some(3), "{json}");
    let d1 = find(disks, "disk_id", "vmdisk1");
    assert_eq!(d1["href"], "disk1.vmdk");
    assert_eq!(
        d1["capacity"].as_u64(),
        Some(MAIN.size),
        "MiB units converted"
    );
    assert_eq!(d1["format_uri"], VMDK_URI);
    assert_eq!(d1["populated_size"].as_u64(), Some(1_900_544));
    let d2 = find(disks, "disk_id", "vmdisk2");
    assert_eq!(d2["href"], "disk2.qcow2");
    assert_eq!(d2["capacity"].as_u64(), Some(ODD.size));
    assert_eq!(d2["format_uri"], QCOW2_URI);
    assert!(d2["populated_size"].is_null());
    let d3 = find(disks, "disk_id", "vmdisk3");
    assert_eq!(d3["href"], "disk3.img");
    assert_eq!(d3["capacity"].as_u64(), Some(ODD.size));
    assert!(d3["format_uri"].is_null());

    let mf = &json["manifest"];
    assert_eq!(mf["name"], MF_NAME);
    assert_eq!(mf["algorithm"], Manifest::Sha256.algorithm());
    assert_eq!(mf["entries"].as_u64(), Some(4), "OVF and three disks");

    // Every manifest line checked against the content, every disk's
    // content as the OVF declares it (the gzip one looked into).
    let v = &json["verification"];
    assert_eq!(v["mode"], "full");
    assert_eq!(v["manifest"]["status"], "verified", "{v}");
    assert_eq!(v["manifest"]["verified"].as_u64(), Some(4));
    for (p, href) in prepared
        .iter()
        .zip(["disk1.vmdk", "disk2.qcow2", "disk3.img"])
    {
        let d = find(&v["disks"], "href", href);
        assert_eq!(d["status"], "ok", "{d}");
        assert_eq!(d["content_format"], p.source.json_format(), "{href}");
        assert_eq!(d["compression"], p.source.json_compression(), "{href}");
    }

    // Entries: every regular file in archive order, with GNU tar's sizes;
    // offsets are either all header offsets or all data offsets.
    let listed = tar::list(&path);
    let entries = json["entries"].as_array().expect("entries array");
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().expect("entry name"))
        .collect();
    let expected: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, expected);
    assert_eq!(
        expected,
        [
            OVF_NAME,
            "disk1.vmdk",
            "disk2.qcow2",
            "disk3.img",
            "tpm.dat",
            MF_NAME
        ]
    );
    let delta = entries[0]["offset"].as_u64().expect("offset") - listed[0].header_offset;
    assert!(
        delta == 0 || delta == 512,
        "first offset {}",
        entries[0]["offset"]
    );
    for (e, l) in entries.iter().zip(&listed) {
        assert_eq!(e["size"].as_u64(), Some(l.size), "{}", l.name);
        assert_eq!(
            e["offset"].as_u64(),
            Some(l.header_offset + delta),
            "{}",
            l.name
        );
    }
}

#[test]
fn json_without_manifest_ovf_last() {
    let w = Work::new();
    let (path, _) = package(&w, None, Placement::OvfLast);
    let json = inspect_json(&path);
    assert!(json["manifest"].is_null(), "{json}");
    assert_eq!(json["verification"]["manifest"]["status"], "absent");
    assert_eq!(json["ovf"], OVF_NAME);
    assert_eq!(json["disks"].as_array().map(Vec::len), Some(3));
    let last = json["entries"]
        .as_array()
        .and_then(|e| e.last())
        .expect("entries");
    assert_eq!(last["name"], OVF_NAME);
}

#[test]
fn json_sha1_manifest_after_ovf() {
    let w = Work::new();
    let (path, _) = package(&w, Some(Manifest::Sha1Spaced), Placement::ManifestAfterOvf);
    let json = inspect_json(&path);
    assert_eq!(
        json["manifest"]["algorithm"],
        Manifest::Sha1Spaced.algorithm()
    );
    assert_eq!(json["manifest"]["entries"].as_u64(), Some(4));
    // A manifest before the disks is checked as well as one after them.
    assert_eq!(json["verification"]["manifest"]["status"], "verified");
}

#[test]
fn human_table() {
    let w = Work::new();
    let (path, _) = package(&w, Some(Manifest::Sha256), Placement::OvfFirst);
    let listing = || {
        let mut names: Vec<_> = fs::read_dir(w.root())
            .expect("read scratch dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    let run = ovaio().arg("inspect").arg(&path).run();
    run.assert_success();
    assert_eq!(listing(), before, "inspect writes nothing");
    for word in [
        "disk1.vmdk",
        "disk2.qcow2",
        "disk3.img",
        MF_NAME,
        "Manifest: verified (4 entries)",
        "disk3.img: format ok (raw, gzip)",
    ] {
        assert!(
            run.stdout.contains(word),
            "{word} missing from:\n{}",
            run.stdout
        );
    }
    assert!(
        serde_json::from_str::<Value>(&run.stdout).is_err(),
        "the default output is a table, not JSON"
    );
}
