//! `ovaio import` against real packages: every source format into every
//! target format, from a file and from a pipe, with the OVF in various
//! places, several tar flavours, several disks, manifests and extra
//! entries. `qemu-img` judges every target.

mod support;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::image::{self, Layout, MAIN, ODD, Source, Target};
use support::ova::{self, Disk, MF_NAME, Manifest, OVF_NAME, Ova, Placement, Prepared};
use support::tar::{self, TarFormat};
use support::{Work, file_len, ovaio, tool};

/// Builds a one-disk OVA of `source` from `layout`, imports it with
/// `--dir` into `target` (from stdin when `pipe`) and checks the result.
fn import_one(layout: &Layout, source: Source, target: Target, pipe: bool) {
    let w = Work::new();
    let p = ova::prepare(w.root(), "src", layout, source);
    let href = format!("disk1.{}", source.extension());
    let ova = Ova::new().disk(p.disk(1, &href)).build(w.root(), "in.ova");
    let out = w.mkdir("out");
    let cmd = ovaio()
        .arg("import")
        .arg(if pipe {
            OsStr::new("-")
        } else {
            ova.as_os_str()
        })
        .arg("--dir")
        .arg(&out)
        .arg("--format")
        .arg(target.name());
    let cmd = if pipe {
        cmd.stdin(fs::read(&ova).expect("read ova"))
    } else {
        cmd
    };
    cmd.run().assert_success();
    let dest = out.join(format!("disk1.{}", target.name()));
    image::assert_target(&p.raw, &dest, target, p.capacity);
    assert_eq!(
        fs::read_dir(&out).expect("read out").count(),
        1,
        "only the target is left in the target directory"
    );
}

macro_rules! matrix {
    ($($name:ident: $layout:expr, $source:expr, $target:expr, $pipe:expr;)*) => {
        $(
            #[test]
            fn $name() {
                import_one(&$layout, $source, $target, $pipe);
            }
        )*
    };
}

matrix! {
    raw_to_raw: MAIN, Source::Raw, Target::Raw, false;
    raw_to_qcow2: MAIN, Source::Raw, Target::Qcow2, false;
    gzip_to_raw: MAIN, Source::Gzip, Target::Raw, false;
    gzip_to_qcow2: MAIN, Source::Gzip, Target::Qcow2, false;
    gzip_multi_member_to_raw: MAIN, Source::GzipMulti, Target::Raw, false;
    gzip_multi_member_to_qcow2: MAIN, Source::GzipMulti, Target::Qcow2, false;
    qcow2_v3_to_raw: MAIN, Source::Qcow2V3, Target::Raw, false;
    qcow2_v3_to_qcow2: MAIN, Source::Qcow2V3, Target::Qcow2, false;
    qcow2_v2_to_raw: MAIN, Source::Qcow2V2, Target::Raw, false;
    qcow2_v2_to_qcow2: MAIN, Source::Qcow2V2, Target::Qcow2, false;
    qcow2_zlib_to_raw: MAIN, Source::Qcow2Zlib, Target::Raw, false;
    qcow2_zlib_to_qcow2: MAIN, Source::Qcow2Zlib, Target::Qcow2, false;
    qcow2_zstd_to_raw: MAIN, Source::Qcow2Zstd, Target::Raw, false;
    qcow2_zstd_to_qcow2: MAIN, Source::Qcow2Zstd, Target::Qcow2, false;
    vmdk_to_raw: MAIN, Source::Vmdk, Target::Raw, false;
    vmdk_to_qcow2: MAIN, Source::Vmdk, Target::Qcow2, false;

    odd_size_raw_to_qcow2: ODD, Source::Raw, Target::Qcow2, false;
    odd_size_gzip_multi_to_raw: ODD, Source::GzipMulti, Target::Raw, false;
    odd_size_qcow2_zlib_to_qcow2: ODD, Source::Qcow2Zlib, Target::Qcow2, false;
    odd_size_qcow2_v2_to_raw: ODD, Source::Qcow2V2, Target::Raw, false;
    odd_size_vmdk_to_raw: ODD, Source::Vmdk, Target::Raw, false;
    odd_size_vmdk_to_qcow2: ODD, Source::Vmdk, Target::Qcow2, false;

    pipe_raw_to_qcow2: MAIN, Source::Raw, Target::Qcow2, true;
    pipe_gzip_multi_member_to_raw: MAIN, Source::GzipMulti, Target::Raw, true;
    pipe_qcow2_v3_to_raw: MAIN, Source::Qcow2V3, Target::Raw, true;
    pipe_qcow2_zstd_to_qcow2: MAIN, Source::Qcow2Zstd, Target::Qcow2, true;
    pipe_vmdk_to_qcow2: ODD, Source::Vmdk, Target::Qcow2, true;
    pipe_vmdk_to_raw: MAIN, Source::Vmdk, Target::Raw, true;
}

// ---------------------------------------------------------------------------
// Fixture self-checks: these pass without ovaio and prove the builders make
// what the import tests claim to feed it.

#[test]
fn fixture_source_images_match_the_raw_image() {
    let w = Work::new();
    for layout in [&MAIN, &ODD] {
        for source in Source::ALL {
            let stem = format!("{}-{source:?}", layout.size);
            let p = ova::prepare(w.root(), &stem, layout, source);
            assert_eq!(file_len(&p.raw), layout.size);
            assert_eq!(
                fs::read(&p.raw).expect("read raw"),
                layout.bytes(),
                "raw writer"
            );
            let readable = if source.gzip() {
                let plain = w.path(&format!("{stem}.gunzipped"));
                let data = image::gunzip(&fs::read(&p.file).expect("read gzip"));
                fs::write(&plain, data).expect("write gunzipped");
                plain
            } else {
                p.file.clone()
            };
            let info = image::info(&readable, source.qemu_format());
            assert_eq!(
                info["virtual-size"].as_u64(),
                Some(layout.size),
                "{source:?}"
            );
            match source {
                Source::Qcow2V2 => assert_eq!(info["format-specific"]["data"]["compat"], "0.10"),
                Source::Qcow2V3 | Source::Qcow2Zlib => {
                    assert_eq!(info["format-specific"]["data"]["compat"], "1.1")
                }
                Source::Qcow2Zstd => {
                    assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd")
                }
                Source::Vmdk => assert_eq!(
                    info["format-specific"]["data"]["create-type"],
                    "streamOptimized"
                ),
                _ => {}
            }
            image::assert_same_content(&p.raw, &readable, source.qemu_format());
        }
    }
}

#[test]
fn fixture_raw_image_is_sparse_with_an_allocated_zero_run() {
    let w = Work::new();
    let raw = MAIN.write_raw(&w.path("main.raw"));
    let allocated = fs::metadata(&raw).expect("stat").blocks() * 512;
    let written: u64 = MAIN.runs.iter().map(|r| r.len).sum();
    assert!(
        allocated >= written && allocated < MAIN.size - (2 << 20),
        "allocated {allocated} of {} (written {written})",
        MAIN.size
    );
    // The zero run is data in the raw image but not in qemu-img's map.
    let map = tool(
        "qemu-img",
        &[
            OsStr::new("map"),
            OsStr::new("--output=json"),
            OsStr::new("-f"),
            OsStr::new("raw"),
            raw.as_os_str(),
        ],
    );
    let map: serde_json::Value = serde_json::from_str(&map).expect("map JSON");
    let zero_cluster = 327_680u64;
    let covering = map
        .as_array()
        .expect("map array")
        .iter()
        .find(|e| {
            let start = e["start"].as_u64().expect("start");
            start <= zero_cluster && zero_cluster < start + e["length"].as_u64().expect("length")
        })
        .expect("extent covering the zero run");
    assert_eq!(covering["data"], true, "zero run must be allocated");
}

#[test]
fn fixture_ova_layouts_list_with_gnu_tar() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Qcow2V3);
    let long = format!("{}.qcow2", "long-name-".repeat(12));
    for (i, (placement, format)) in [
        (Placement::OvfFirst, TarFormat::Ustar),
        (Placement::ManifestAfterOvf, TarFormat::Gnu),
        (Placement::OvfAfterFirstDisk, TarFormat::Pax),
        (Placement::OvfLast, TarFormat::Gnu),
    ]
    .into_iter()
    .enumerate()
    {
        let second = if format == TarFormat::Ustar {
            "disk2.qcow2".to_owned()
        } else {
            long.clone()
        };
        let path = Ova::new()
            .disk(a.disk(1, "disk1.vmdk"))
            .disk(b.disk(2, &second))
            .extra("tpm.dat", b"tpm state")
            .manifest(Manifest::Sha256)
            .placement(placement)
            .format(format)
            .build(w.root(), &format!("t{i}.ova"));
        let names: Vec<String> = tar::list(&path).into_iter().map(|l| l.name).collect();
        let expected: Vec<&str> = match placement {
            Placement::OvfFirst => vec![OVF_NAME, "disk1.vmdk", &second, "tpm.dat", MF_NAME],
            Placement::ManifestAfterOvf => {
                vec![OVF_NAME, MF_NAME, "disk1.vmdk", &second, "tpm.dat"]
            }
            Placement::OvfAfterFirstDisk => {
                vec!["disk1.vmdk", OVF_NAME, &second, "tpm.dat", MF_NAME]
            }
            Placement::OvfLast => vec!["disk1.vmdk", &second, "tpm.dat", MF_NAME, OVF_NAME],
        };
        assert_eq!(names, expected, "{placement:?} {format:?}");
        // The manifest lists the OVF and both disks, with correct digests.
        let listing = tool(
            "tar",
            &[OsStr::new("-xOf"), path.as_os_str(), OsStr::new(MF_NAME)],
        );
        let digest = Manifest::Sha256.digest_file(&a.file);
        assert!(listing.contains(&format!("SHA256(disk1.vmdk)= {digest}\n")));
        assert_eq!(listing.lines().count(), 3);
    }
}

// ---------------------------------------------------------------------------
// Package layouts.

fn import_dir(ova: &Path, out: &Path, format: Option<Target>) -> support::Outcome {
    let mut cmd = ovaio().arg("import").arg(ova).arg("--dir").arg(out);
    if let Some(f) = format {
        cmd = cmd.arg("--format").arg(f.name());
    }
    cmd.run()
}

#[test]
fn ovf_after_the_first_disk() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Qcow2Zlib);
    let ova = Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .disk(b.disk(2, "disk2.qcow2"))
        .manifest(Manifest::Sha256)
        .placement(Placement::OvfAfterFirstDisk)
        .build(w.root(), "in.ova");
    let out = w.mkdir("out");
    import_dir(&ova, &out, Some(Target::Qcow2)).assert_success();
    image::assert_target(&a.raw, &out.join("disk1.qcow2"), Target::Qcow2, a.capacity);
    image::assert_target(&b.raw, &out.join("disk2.qcow2"), Target::Qcow2, b.capacity);
}

#[test]
fn ovf_last_gzip_and_qcow2() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &ODD, Source::Gzip);
    let b = ova::prepare(w.root(), "b", &MAIN, Source::Qcow2V3);
    let ova = Ova::new()
        .disk(a.disk(1, "disk1.img"))
        .disk(b.disk(2, "disk2.qcow2"))
        .manifest(Manifest::Sha256)
        .placement(Placement::OvfLast)
        .build(w.root(), "in.ova");
    let out = w.mkdir("out");
    import_dir(&ova, &out, Some(Target::Raw)).assert_success();
    image::assert_target(&a.raw, &out.join("disk1.raw"), Target::Raw, a.capacity);
    image::assert_target(&b.raw, &out.join("disk2.raw"), Target::Raw, b.capacity);
}

#[test]
fn ovf_last_from_pipe() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let ova = Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .placement(Placement::OvfLast)
        .build(w.root(), "in.ova");
    let out = w.mkdir("out");
    ovaio()
        .arg("import")
        .arg("-")
        .arg("--dir")
        .arg(&out)
        .stdin(fs::read(&ova).expect("read ova"))
        .run()
        .assert_success();
    image::assert_target(&a.raw, &out.join("disk1.raw"), Target::Raw, a.capacity);
}

#[test]
fn manifest_right_after_ovf() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Qcow2Zstd);
    let ova = Ova::new()
        .disk(a.disk(1, "disk1.qcow2"))
        .manifest(Manifest::Sha256)
        .placement(Placement::ManifestAfterOvf)
        .build(w.root(), "in.ova");
    let out = w.mkdir("out");
    let run = ovaio()
        .arg("import")
        .arg(&ova)
        .arg("--dir")
        .arg(&out)
        .arg("--format")
        .arg("qcow2")
        .arg("--json")
        .run();
    run.assert_success();
    assert_eq!(run.json()["manifest"], "verified");
    image::assert_target(&a.raw, &out.join("disk1.qcow2"), Target::Qcow2, a.capacity);
}

fn tar_flavour(format: TarFormat, href: &str) {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Qcow2V3);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Vmdk);
    let ova = Ova::new()
        .disk(a.disk(1, href))
        .disk(b.disk(2, "disk2.vmdk"))
        .manifest(Manifest::Sha256)
        .format(format)
        .build(w.root(), "in.ova");
    let out = w.mkdir("out");
    import_dir(&ova, &out, None).assert_success();
    let stem = href.strip_suffix(".qcow2").expect("qcow2 href");
    image::assert_target(
        &a.raw,
        &out.join(format!("{stem}.raw")),
        Target::Raw,
        a.capacity,
    );
    image::assert_target(&b.raw, &out.join("disk2.raw"), Target::Raw, b.capacity);
}

#[test]
fn tar_ustar() {
    tar_flavour(TarFormat::Ustar, "disk1.qcow2");
}

#[test]
fn tar_gnu_long_name() {
    tar_flavour(
        TarFormat::Gnu,
        &format!("{}.qcow2", "gnu-long-name-".repeat(9)),
    );
}

#[test]
fn tar_pax_long_name() {
    tar_flavour(
        TarFormat::Pax,
        &format!("{}.qcow2", "pax-long-name-".repeat(9)),
    );
}

// ---------------------------------------------------------------------------
// Several disks, explicit mapping, extras, manifests, summary.

/// Three disks of three formats: VMDK, zstd qcow2 and multi-member gzip raw.
fn three_disks(w: &Work) -> (Vec<Prepared>, Vec<Disk>) {
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Qcow2Zstd);
    let c = ova::prepare(w.root(), "c", &MAIN, Source::GzipMulti);
    let disks = vec![
        a.disk(1, "vm-disk1.vmdk").mib_units(),
        b.disk(2, "vm-disk2.qcow2"),
        c.disk(3, "vm-disk3.img").mib_units(),
    ];
    (vec![a, b, c], disks)
}

#[test]
fn three_disks_into_dir_default_raw() {
    let w = Work::new();
    let (prepared, disks) = three_disks(&w);
    let mut ova = Ova::new().manifest(Manifest::Sha256);
    for d in disks {
        ova = ova.disk(d);
    }
    let path = ova.build(w.root(), "in.ova");
    let out = w.mkdir("out");
    import_dir(&path, &out, None).assert_success();
    for (p, stem) in prepared.iter().zip(["vm-disk1", "vm-disk2", "vm-disk3"]) {
        image::assert_target(
            &p.raw,
            &out.join(format!("{stem}.raw")),
            Target::Raw,
            p.capacity,
        );
    }
    assert_eq!(fs::read_dir(&out).expect("read out").count(), 3);
    // Raw targets are sparse: MAIN has over 4 MiB of holes.
    let allocated = fs::metadata(out.join("vm-disk1.raw"))
        .expect("stat")
        .blocks()
        * 512;
    assert!(
        allocated < MAIN.size - (3 << 20),
        "raw target not sparse: {allocated} bytes allocated"
    );
}

#[test]
fn three_disks_into_dir_qcow2() {
    let w = Work::new();
    let (prepared, disks) = three_disks(&w);
    let mut ova = Ova::new();
    for d in disks {
        ova = ova.disk(d);
    }
    let path = ova.build(w.root(), "in.ova");
    let out = w.mkdir("out");
    import_dir(&path, &out, Some(Target::Qcow2)).assert_success();
    for (p, stem) in prepared.iter().zip(["vm-disk1", "vm-disk2", "vm-disk3"]) {
        image::assert_target(
            &p.raw,
            &out.join(format!("{stem}.qcow2")),
            Target::Qcow2,
            p.capacity,
        );
    }
}

#[test]
fn disk_mapping_with_explicit_formats() {
    let w = Work::new();
    let (prepared, disks) = three_disks(&w);
    let mut ova = Ova::new().manifest(Manifest::Sha1Spaced);
    for d in disks {
        ova = ova.disk(d);
    }
    let path = ova.build(w.root(), "in.ova");
    let vols = w.mkdir("volumes");
    let targets: [(PathBuf, Target); 3] = [
        (vols.join("first-volume"), Target::Qcow2),
        (vols.join("second.img"), Target::Raw),
        (vols.join("third.qcow2"), Target::Qcow2),
    ];
    let mut cmd = ovaio().arg("import").arg(&path);
    for (href, (t, f)) in ["vm-disk1.vmdk", "vm-disk2.qcow2", "vm-disk3.img"]
        .iter()
        .zip(&targets)
    {
        cmd = cmd
            .arg("--disk")
            .arg(format!("{href}={}:{}", t.display(), f.name()));
    }
    cmd.run().assert_success();
    for (p, (t, f)) in prepared.iter().zip(&targets) {
        image::assert_target(&p.raw, t, *f, p.capacity);
    }
    assert_eq!(fs::read_dir(&vols).expect("read volumes").count(), 3);
}

#[test]
fn tpm_and_nvram_entries_are_skipped() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Qcow2V3);
    let ova = Ova::new()
        .disk(a.disk(1, "disk1.qcow2"))
        .extra("tpm.dat", &[0x5a; 3000])
        .extra("nvram.dat", b"NVRAM contents\n")
        .manifest(Manifest::Sha256)
        .build(w.root(), "in.ova");
    let out = w.mkdir("out");
    let run = ovaio()
        .arg("import")
        .arg(&ova)
        .arg("--dir")
        .arg(&out)
        .arg("--json")
        .run();
    run.assert_success();
    let json = run.json();
    let skipped: BTreeSet<&str> = json["skipped"]
        .as_array()
        .expect("skipped array")
        .iter()
        .map(|v| v.as_str().expect("skipped name"))
        .collect();
    assert_eq!(skipped, BTreeSet::from(["nvram.dat", "tpm.dat"]));
    image::assert_target(&a.raw, &out.join("disk1.raw"), Target::Raw, a.capacity);
    assert_eq!(
        fs::read_dir(&out).expect("read out").count(),
        1,
        "extras are not written anywhere"
    );
}

fn manifest_verified(style: Manifest) {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Gzip);
    let ova = Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .disk(b.disk(2, "disk2.img"))
        .manifest(style)
        .build(w.root(), "in.ova");
    let out = w.mkdir("out");
    let run = ovaio()
        .arg("import")
        .arg(&ova)
        .arg("--dir")
        .arg(&out)
        .arg("--json")
        .run();
    run.assert_success();
    assert_eq!(run.json()["manifest"], "verified");
    image::assert_target(&a.raw, &out.join("disk1.raw"), Target::Raw, a.capacity);
    image::assert_target(&b.raw, &out.join("disk2.raw"), Target::Raw, b.capacity);
}

#[test]
fn manifest_sha256_verified() {
    manifest_verified(Manifest::Sha256);
}

#[test]
fn manifest_sha1_spaced_verified() {
    manifest_verified(Manifest::Sha1Spaced);
}

fn check_summary(json: &serde_json::Value, prepared: &[Prepared], out: &Path, target: Target) {
    assert_eq!(json["ovf"], OVF_NAME);
    let disks = json["disks"].as_array().expect("disks array");
    assert_eq!(disks.len(), prepared.len());
    for (p, stem) in prepared.iter().zip(["vm-disk1", "vm-disk2", "vm-disk3"]) {
        let href = format!("{stem}.{}", p.source.extension());
        let d = disks
            .iter()
            .find(|d| d["href"] == href.as_str())
            .unwrap_or_else(|| panic!("no summary for {href}: {json}"));
        assert_eq!(d["source_format"], p.source.json_format(), "{href}");
        assert_eq!(d["compression"], p.source.json_compression(), "{href}");
        assert_eq!(d["target_format"], target.name(), "{href}");
        assert_eq!(d["capacity"].as_u64(), Some(p.capacity), "{href}");
        let expected = out.join(format!("{stem}.{}", target.name()));
        let reported = PathBuf::from(d["target"].as_str().expect("target path"));
        assert_eq!(
            fs::canonicalize(&reported).expect("reported target exists"),
            fs::canonicalize(&expected).expect("expected target exists"),
            "{href}"
        );
        image::assert_target(&p.raw, &expected, target, p.capacity);
    }
}

#[test]
fn json_summary_from_file() {
    let w = Work::new();
    let (prepared, disks) = three_disks(&w);
    let mut ova = Ova::new()
        .manifest(Manifest::Sha256)
        .extra("tpm.dat", b"tpm")
        .extra("nvram.dat", b"nvram");
    for d in disks {
        ova = ova.disk(d);
    }
    let path = ova.build(w.root(), "in.ova");
    let out = w.mkdir("out");
    let run = ovaio()
        .arg("import")
        .arg(&path)
        .arg("--dir")
        .arg(&out)
        .arg("--format")
        .arg("qcow2")
        .arg("--json")
        .run();
    run.assert_success();
    let json = run.json();
    assert_eq!(json["source"], path.to_str().expect("utf-8 path"));
    let len = file_len(&path);
    let read = json["bytes_read"].as_u64().expect("bytes_read");
    // GNU tar pads to 10 KiB records after the end-of-archive blocks; a
    // reader may stop at the end marker.
    assert!(
        read <= len && read + 10_240 >= len,
        "bytes_read {read} for a {len}-byte package"
    );
    assert_eq!(json["manifest"], "verified");
    let skipped: BTreeSet<&str> = json["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(skipped, BTreeSet::from(["nvram.dat", "tpm.dat"]));
    check_summary(&json, &prepared, &out, Target::Qcow2);
}

#[test]
fn json_summary_from_pipe_without_manifest() {
    let w = Work::new();
    let (prepared, disks) = three_disks(&w);
    let mut ova = Ova::new().format(TarFormat::Pax);
    for d in disks {
        ova = ova.disk(d);
    }
    let path = ova.build(w.root(), "in.ova");
    let out = w.mkdir("out");
    let run = ovaio()
        .arg("import")
        .arg("-")
        .arg("--dir")
        .arg(&out)
        .arg("--json")
        .stdin(fs::read(&path).expect("read ova"))
        .run();
    run.assert_success();
    let json = run.json();
    assert_eq!(json["source"], "-");
    assert_eq!(json["manifest"], "absent");
    let read = json["bytes_read"].as_u64().expect("bytes_read");
    let len = file_len(&path);
    assert!(
        read <= len && read + 10_240 >= len,
        "bytes_read {read} of {len}"
    );
    assert_eq!(json["skipped"].as_array().map(Vec::len), Some(0));
    check_summary(&json, &prepared, &out, Target::Raw);
}
