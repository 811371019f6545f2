//! `ovaio import` of disks that are not what their OVF says. The content
//! decides: a container format ovaio cannot decode is refused (exit 6, the
//! error names the entry and the format found, nothing is left in the
//! target directory) instead of being copied into a "raw" target, and a
//! decodable format under the wrong declaration is imported as what it is,
//! with the summary and the log saying so. Every image here is made by the
//! real `qemu-img`, which also judges the targets; a missing `qemu-img`
//! fails these tests.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::image::{self, MAIN, QCOW2_URI, SMALL, Source, Target, VMDK_URI};
use support::ova::{self, Disk, Ova, Placement};
use support::{Outcome, Work, assert_dir_empty, ovaio, tool};

/// Exit status for a valid input ovaio does not support.
const EXIT_UNSUPPORTED: i32 = 6;

/// Writes `layout` as `w/<stem>.raw` and converts it with
/// `qemu-img convert -f raw ARGS` to `w/<stem>.img`.
fn convert(w: &Work, stem: &str, layout: &image::Layout, args: &[&str]) -> (PathBuf, PathBuf) {
    let raw = layout.write_raw(&w.path(&format!("{stem}.raw")));
    let out = w.path(&format!("{stem}.img"));
    let mut argv: Vec<&OsStr> = ["convert", "-q", "-f", "raw"]
        .iter()
        .map(OsStr::new)
        .collect();
    argv.extend(args.iter().map(OsStr::new));
    argv.push(raw.as_os_str());
    argv.push(out.as_os_str());
    tool("qemu-img", &argv);
    (raw, out)
}

/// A one-disk OVA at `w/in.ova` whose entry `href` holds `file` and whose
/// OVF declares `format_uri` (and gzip compression when `gzip`).
fn one_disk_ova(
    w: &Work,
    href: &str,
    file: &Path,
    capacity: u64,
    format_uri: Option<&str>,
    gzip: bool,
    placement: Placement,
) -> PathBuf {
    let mut disk = Disk::new(1, href, file, Source::Raw, capacity);
    disk.ovf.format_uri = format_uri.map(str::to_owned);
    disk.ovf.gzip = gzip;
    Ova::new()
        .disk(disk)
        .placement(placement)
        .build(w.root(), "in.ova")
}

fn import(w: &Work, ova: &Path, target: Target, json: bool) -> (Outcome, PathBuf) {
    let out = w.mkdir("out");
    let mut cmd = ovaio()
        .arg("import")
        .arg(ova)
        .arg("--dir")
        .arg(&out)
        .arg("--format")
        .arg(target.name());
    if json {
        cmd = cmd.arg("--json");
    }
    (cmd.run(), out)
}

/// The refusal contract: exit 6, one error line naming the entry and the
/// detected format, an empty target directory.
fn assert_refused(w: &Work, ova: &Path, href: &str, format: &str) {
    for target in [Target::Raw, Target::Qcow2] {
        let (run, out) = import(w, ova, target, false);
        run.assert_error(&[&format!("entry '{href}'"), format]);
        assert_eq!(
            run.status.code(),
            Some(EXIT_UNSUPPORTED),
            "{format} into {}: {}",
            target.name(),
            run.stderr
        );
        assert_dir_empty(&out);
        fs::remove_dir(&out).expect("remove out");
    }
}

/// The one disk record of an import summary.
fn only_disk(json: &Value) -> &Value {
    let disks = json["disks"].as_array().expect("disks array");
    assert_eq!(disks.len(), 1, "{json}");
    &disks[0]
}

/// `qemu-img compare` of the source image (read as `src_format`) with the
/// target (read as `target`).
fn assert_same_as_source(src: &Path, src_format: &str, target_path: &Path, target: Target) {
    tool(
        "qemu-img",
        &[
            OsStr::new("compare"),
            OsStr::new("-f"),
            OsStr::new(src_format),
            OsStr::new("-F"),
            OsStr::new(target.name()),
            src.as_os_str(),
            target_path.as_os_str(),
        ],
    );
}

// ---------------------------------------------------------------------------
// Container formats ovaio cannot decode: refused by name.

#[test]
fn d13_vhd_declared_vmdk_imported_as_vhd_and_said() {
    let w = Work::new();
    let (_, vhd) = convert(&w, "a", &MAIN, &["-O", "vpc"]);
    let ova = one_disk_ova(
        &w,
        "disk1.vmdk",
        &vhd,
        MAIN.size,
        Some(VMDK_URI),
        false,
        Placement::OvfFirst,
    );
    let said =
        "disk1.vmdk: OVF declares vmdk (streamOptimized) but the content is vhd; imported as vhd";
    for target in [Target::Raw, Target::Qcow2] {
        let (run, out) = import(&w, &ova, target, true);
        run.assert_success();
        let json = run.json();
        let d = only_disk(&json);
        assert_eq!(d["source_format"], "vhd", "{d}");
        assert_eq!(d["warnings"], serde_json::json!([said]), "{d}");
        let path = out.join(format!("disk1.{}", target.name()));
        assert_same_as_source(&vhd, "vpc", &path, target);
        fs::remove_dir_all(&out).expect("clear out");
    }
}

#[test]
fn d13_vhd_declaring_nothing_is_imported_as_vhd() {
    let w = Work::new();
    let (_, vhd) = convert(&w, "a", &SMALL, &["-O", "vpc"]);
    let ova = one_disk_ova(
        &w,
        "disk1.img",
        &vhd,
        SMALL.size,
        None,
        false,
        Placement::OvfFirst,
    );
    let (run, out) = import(&w, &ova, Target::Raw, true);
    run.assert_success();
    let json = run.json();
    let d = only_disk(&json);
    assert_eq!(d["source_format"], "vhd", "{d}");
    assert_eq!(d["warnings"], serde_json::json!([]), "{d}");
    assert_same_as_source(&vhd, "vpc", &out.join("disk1.raw"), Target::Raw);
}

#[test]
fn d13_vhd_before_the_ovf_is_imported() {
    let w = Work::new();
    let (_, vhd) = convert(&w, "a", &SMALL, &["-O", "vpc"]);
    let ova = one_disk_ova(
        &w,
        "disk1.vmdk",
        &vhd,
        SMALL.size,
        Some(VMDK_URI),
        false,
        Placement::OvfLast,
    );
    let (run, out) = import(&w, &ova, Target::Qcow2, true);
    run.assert_success();
    assert_eq!(only_disk(&run.json())["source_format"], "vhd");
    assert_same_as_source(&vhd, "vpc", &out.join("disk1.qcow2"), Target::Qcow2);
}

#[test]
fn d13_vhdx_refused() {
    let w = Work::new();
    let (_, vhdx) = convert(&w, "a", &SMALL, &["-O", "vhdx"]);
    let ova = one_disk_ova(
        &w,
        "disk1.vmdk",
        &vhdx,
        SMALL.size,
        Some(VMDK_URI),
        false,
        Placement::OvfFirst,
    );
    assert_refused(&w, &ova, "disk1.vmdk", "VHDX");
}

#[test]
fn d13_vdi_declared_vmdk_imported_as_vdi_and_said() {
    let w = Work::new();
    let (_, vdi) = convert(&w, "a", &MAIN, &["-O", "vdi"]);
    let ova = one_disk_ova(
        &w,
        "disk1.vmdk",
        &vdi,
        MAIN.size,
        Some(VMDK_URI),
        false,
        Placement::OvfFirst,
    );
    let (run, out) = import(&w, &ova, Target::Qcow2, true);
    run.assert_success();
    let json = run.json();
    let d = only_disk(&json);
    assert_eq!(d["source_format"], "vdi", "{d}");
    assert_eq!(
        d["warnings"],
        serde_json::json!([
            "disk1.vmdk: OVF declares vmdk (streamOptimized) but the content is vdi; imported as vdi"
        ]),
        "{d}"
    );
    assert_same_as_source(&vdi, "vdi", &out.join("disk1.qcow2"), Target::Qcow2);
}

#[test]
fn d13_gzipped_vdi_is_inflated_and_imported() {
    let w = Work::new();
    let (_, vdi) = convert(&w, "a", &SMALL, &["-O", "vdi"]);
    let gz = w.path("a.vdi.gz");
    fs::write(&gz, image::gzip(&fs::read(&vdi).expect("read vdi"))).expect("write gz");
    // A VDI holds whole 1 MiB blocks: inflated, this one is four times
    // its disk's capacity.
    assert!(support::file_len(&vdi) > 4 * SMALL.size);
    for placement in [Placement::OvfFirst, Placement::OvfLast] {
        let ova = one_disk_ova(&w, "disk1.img", &gz, SMALL.size, None, true, placement);
        let (run, out) = import(&w, &ova, Target::Raw, true);
        run.assert_success();
        let json = run.json();
        let d = only_disk(&json);
        assert_eq!(
            (&d["source_format"], &d["compression"]),
            (&"vdi".into(), &"gzip".into())
        );
        assert_same_as_source(&vdi, "vdi", &out.join("disk1.raw"), Target::Raw);
        fs::remove_dir_all(&out).expect("clear out");
        fs::remove_file(&ova).expect("remove ova");
        fs::remove_dir_all(w.path("in.ova.d")).expect("remove scratch");
    }
}

#[test]
fn d13_qed_refused() {
    let w = Work::new();
    let (_, qed) = convert(&w, "a", &SMALL, &["-O", "qed"]);
    let ova = one_disk_ova(
        &w,
        "disk1.qcow2",
        &qed,
        SMALL.size,
        Some(QCOW2_URI),
        false,
        Placement::OvfFirst,
    );
    assert_refused(&w, &ova, "disk1.qcow2", "QED");
}

#[test]
fn d13_luks_refused() {
    let w = Work::new();
    let (_, luks) = convert(
        &w,
        "a",
        &SMALL,
        &[
            "--object",
            "secret,id=sec0,data=ovaio-test",
            "-O",
            "luks",
            "-o",
            "key-secret=sec0,iter-time=10",
        ],
    );
    let ova = one_disk_ova(
        &w,
        "disk1.img",
        &luks,
        SMALL.size,
        None,
        false,
        Placement::OvfFirst,
    );
    assert_refused(&w, &ova, "disk1.img", "LUKS");
}

#[test]
fn d13_qcow_version_1_refused() {
    let w = Work::new();
    let (_, qcow) = convert(&w, "a", &SMALL, &["-O", "qcow"]);
    let ova = one_disk_ova(
        &w,
        "disk1.qcow2",
        &qcow,
        SMALL.size,
        Some(QCOW2_URI),
        false,
        Placement::OvfFirst,
    );
    assert_refused(&w, &ova, "disk1.qcow2", "qcow version 1");
}

#[test]
fn d13_parallels_refused() {
    let w = Work::new();
    let (_, img) = convert(&w, "a", &SMALL, &["-O", "parallels"]);
    let ova = one_disk_ova(
        &w,
        "disk1.vmdk",
        &img,
        SMALL.size,
        Some(VMDK_URI),
        false,
        Placement::OvfFirst,
    );
    assert_refused(&w, &ova, "disk1.vmdk", "Parallels");
}

#[test]
fn d13_vmdk_descriptor_refused() {
    let w = Work::new();
    // monolithicFlat writes the descriptor to the named file and the data
    // beside it: the package carries only the descriptor.
    let (_, descriptor) = convert(
        &w,
        "a",
        &SMALL,
        &["-O", "vmdk", "-o", "subformat=monolithicFlat"],
    );
    let text = fs::read_to_string(&descriptor).expect("descriptor is text");
    assert!(text.starts_with("# Disk DescriptorFile"), "{text}");
    let ova = one_disk_ova(
        &w,
        "disk1.vmdk",
        &descriptor,
        SMALL.size,
        Some(VMDK_URI),
        false,
        Placement::OvfFirst,
    );
    assert_refused(&w, &ova, "disk1.vmdk", "VMDK text descriptor");
}

// ---------------------------------------------------------------------------
// Decodable formats under the wrong declaration: the content wins, and says so.

#[test]
fn d13_qcow2_declared_vmdk_imported_as_qcow2_and_said() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &MAIN, Source::Qcow2V3);
    let ova = one_disk_ova(
        &w,
        "disk1.vmdk",
        &p.file,
        p.capacity,
        Some(VMDK_URI),
        false,
        Placement::OvfFirst,
    );
    let said = "disk1.vmdk: OVF declares vmdk (streamOptimized) but the content is qcow2; imported as qcow2";

    let (run, out) = import(&w, &ova, Target::Raw, true);
    run.assert_success();
    let json = run.json();
    let d = only_disk(&json);
    assert_eq!(d["source_format"], "qcow2", "{d}");
    assert_eq!(d["declared_format"], "vmdk (streamOptimized)", "{d}");
    assert_eq!(d["warnings"], serde_json::json!([said]), "{d}");
    assert!(
        run.stderr.contains(said),
        "the log says it too: {}",
        run.stderr
    );
    let target = out.join("disk1.raw");
    image::assert_target(&p.raw, &target, Target::Raw, p.capacity);
    assert_same_as_source(&p.file, "qcow2", &target, Target::Raw);

    // The text summary carries the same line.
    fs::remove_dir_all(&out).expect("clear out");
    let (run, out) = import(&w, &ova, Target::Qcow2, false);
    run.assert_success();
    assert!(
        run.stdout.lines().any(|l| l == format!("warning: {said}")),
        "{}",
        run.stdout
    );
    assert_same_as_source(&p.file, "qcow2", &out.join("disk1.qcow2"), Target::Qcow2);
}

#[test]
fn d13_vmdk_declared_qcow2_imported_as_vmdk_and_said() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let ova = one_disk_ova(
        &w,
        "disk1.qcow2",
        &p.file,
        p.capacity,
        Some(QCOW2_URI),
        false,
        Placement::OvfFirst,
    );
    let (run, out) = import(&w, &ova, Target::Qcow2, true);
    run.assert_success();
    let json = run.json();
    let d = only_disk(&json);
    assert_eq!(d["source_format"], "vmdk", "{d}");
    assert_eq!(d["declared_format"], "qcow2", "{d}");
    assert_eq!(
        d["warnings"],
        serde_json::json!([
            "disk1.qcow2: OVF declares qcow2 but the content is vmdk; imported as vmdk"
        ]),
        "{d}"
    );
    let target = out.join("disk1.qcow2");
    image::assert_target(&p.raw, &target, Target::Qcow2, p.capacity);
    assert_same_as_source(&p.file, "vmdk", &target, Target::Qcow2);
}

#[test]
fn d13_undeclared_gzip_is_inflated_and_said() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &MAIN, Source::Gzip);
    // The File element says nothing about compression.
    let ova = one_disk_ova(
        &w,
        "disk1.img",
        &p.file,
        p.capacity,
        None,
        false,
        Placement::OvfFirst,
    );
    let (run, out) = import(&w, &ova, Target::Raw, true);
    run.assert_success();
    let json = run.json();
    let d = only_disk(&json);
    assert_eq!(d["source_format"], "raw", "{d}");
    assert_eq!(d["compression"], "gzip", "{d}");
    assert!(d["declared_format"].is_null(), "{d}");
    assert_eq!(
        d["warnings"],
        serde_json::json!([
            "disk1.img: OVF declares no compression but the content is gzip-compressed; inflated"
        ]),
        "{d}"
    );
    image::assert_target(&p.raw, &out.join("disk1.raw"), Target::Raw, p.capacity);
}

#[test]
fn d13_declared_gzip_holding_plain_qcow2_imported_and_said() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &MAIN, Source::Qcow2V3);
    let ova = one_disk_ova(
        &w,
        "disk1.qcow2",
        &p.file,
        p.capacity,
        Some(QCOW2_URI),
        true,
        Placement::OvfFirst,
    );
    let (run, out) = import(&w, &ova, Target::Qcow2, true);
    run.assert_success();
    let json = run.json();
    let d = only_disk(&json);
    assert_eq!(d["source_format"], "qcow2", "{d}");
    assert_eq!(d["compression"], "none", "{d}");
    assert_eq!(d["declared_format"], "qcow2", "{d}");
    assert_eq!(
        d["warnings"],
        serde_json::json!([
            "disk1.qcow2: OVF declares gzip compression but the content is not compressed; imported as it is"
        ]),
        "{d}"
    );
    let target = out.join("disk1.qcow2");
    image::assert_target(&p.raw, &target, Target::Qcow2, p.capacity);
    assert_same_as_source(&p.file, "qcow2", &target, Target::Qcow2);
}

#[test]
fn d13_agreeing_declaration_says_nothing() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &SMALL, Source::Vmdk);
    let ova = one_disk_ova(
        &w,
        "disk1.vmdk",
        &p.file,
        p.capacity,
        Some(VMDK_URI),
        false,
        Placement::OvfFirst,
    );
    let (run, out) = import(&w, &ova, Target::Raw, true);
    run.assert_success();
    let json = run.json();
    let d = only_disk(&json);
    assert_eq!(d["declared_format"], "vmdk (streamOptimized)", "{d}");
    assert_eq!(d["warnings"], serde_json::json!([]), "{d}");
    assert!(!run.stderr.contains("OVF declares"), "{}", run.stderr);
    image::assert_target(&p.raw, &out.join("disk1.raw"), Target::Raw, p.capacity);
}

// ---------------------------------------------------------------------------
// `inspect` reports what import decides on.

#[test]
fn d13_inspect_names_the_container_import_refuses() {
    let w = Work::new();
    let (_, vhdx) = convert(&w, "a", &SMALL, &["-O", "vhdx"]);
    let ova = one_disk_ova(
        &w,
        "disk1.vmdk",
        &vhdx,
        SMALL.size,
        Some(VMDK_URI),
        false,
        Placement::OvfFirst,
    );
    let run = ovaio().arg("inspect").arg(&ova).arg("--json").run();
    run.assert_success();
    let json = run.json();
    let disks = json["disks"].as_array().expect("disks");
    assert_eq!(disks.len(), 1, "{json}");
    assert_eq!(disks[0]["detected_format"], "vhdx", "{json}");
    assert_eq!(
        disks[0]["declared_format"], "vmdk (streamOptimized)",
        "{json}"
    );
}
