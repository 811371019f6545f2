//! `ovaio import` of VMDK monolithicSparse disks, what `qemu-img convert
//! -O vmdk` writes by default (and virt-v2v's OVA tests use): images made
//! by qemu-img (with and without `zeroed_grain=on`) and rewritten by
//! qemu-io as a running VM would, packed in OVAs whose OVF declares the
//! subformat, oVirt's `vmdk.html#sparse` or nothing, imported into raw and
//! qcow2 targets and judged by `qemu-img compare` against the source and
//! the VMDK itself, and `qemu-img check`. Images qemu would read otherwise
//! (a delta over a parent disk, an extent of a split disk) and truncated
//! ones fail with one error line and nothing left behind. A missing
//! `qemu-img` or `qemu-io` fails these tests.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::image::{self, Fill, Layout, Run, Target};
use support::ova::{Disk, Ova};
use support::{Outcome, Work, assert_dir_empty, ovaio, tool};

const MIB: u64 = 1 << 20;

/// 64 MiB with data scattered over both grain tables and holes between:
/// runs off grain boundaries, a run across the two tables' ranges (32 MiB),
/// explicit zeros (a hole to qemu-img), and a last run ending at the last
/// byte.
const SCATTERED: Layout = Layout {
    size: 64 * MIB,
    runs: &[
        Run {
            offset: 0,
            len: 200_000,
            fill: Fill::Random(31),
        },
        Run {
            offset: MIB + 4096,
            len: 8192,
            fill: Fill::Text,
        },
        Run {
            offset: 7 * MIB - 512,
            len: 3 * 65536 + 17,
            fill: Fill::Random(32),
        },
        Run {
            offset: 20 * MIB,
            len: 65536,
            fill: Fill::Zeros,
        },
        Run {
            offset: 31 * MIB + 100,
            len: 2 * MIB,
            fill: Fill::Random(33),
        },
        Run {
            offset: 47 * MIB,
            len: 300_000,
            fill: Fill::Text,
        },
        Run {
            offset: 64 * MIB - 5000,
            len: 5000,
            fill: Fill::Random(34),
        },
    ],
};

/// VMware's OVF format URI for a monolithicSparse VMDK.
const SPARSE_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#monolithicSparse";
/// The OVF spec's (and VMware's) `#sparse`: a VMDK.
const VMWARE_SPARSE_URI: &str = "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse";
/// oVirt writes this for its raw volumes, so it declares raw.
const OVIRT_SPARSE_URI: &str = "http://www.vmware.com/specifications/vmdk.html#sparse";

/// Writes `SCATTERED` as `w/src.raw` and converts it with `qemu-img
/// convert -O vmdk OPTS` into `w/src.vmdk`.
fn make_vmdk(w: &Work, opts: &[&str]) -> (PathBuf, PathBuf) {
    let raw = SCATTERED.write_raw(&w.path("src.raw"));
    let vmdk = w.path("src.vmdk");
    let mut args: Vec<&OsStr> = ["convert", "-q", "-f", "raw", "-O", "vmdk"]
        .iter()
        .map(OsStr::new)
        .collect();
    args.extend(opts.iter().map(OsStr::new));
    args.push(raw.as_os_str());
    args.push(vmdk.as_os_str());
    tool("qemu-img", &args);
    (raw, vmdk)
}

/// The create type `qemu-img info` reports for a VMDK.
fn create_type(vmdk: &Path) -> String {
    let info = image::info(vmdk, "vmdk");
    info["format-specific"]["data"]["create-type"]
        .as_str()
        .unwrap_or_else(|| panic!("no create type: {info}"))
        .to_owned()
}

/// A one-disk OVA `w/NAME` whose entry `disk1.vmdk` holds `file`, declared
/// with `format_uri`, gzip-compressed in the package when `gzip`.
fn one_disk_ova(
    w: &Work,
    name: &str,
    file: &Path,
    format_uri: Option<&str>,
    gzip: bool,
) -> PathBuf {
    let entry = if gzip {
        let z = w.path(&format!("{name}.gz"));
        fs::write(&z, image::gzip(&fs::read(file).expect("read vmdk"))).expect("write gzip");
        z
    } else {
        file.to_owned()
    };
    let mut disk = Disk::new(1, "disk1.vmdk", &entry, image::Source::Raw, SCATTERED.size);
    disk.ovf.format_uri = format_uri.map(str::to_owned);
    disk.ovf.gzip = gzip;
    Ova::new().disk(disk).build(w.root(), name)
}

fn import(ova: &Path, out: &Path, target: Target) -> Outcome {
    ovaio()
        .arg("import")
        .arg(ova)
        .arg("--dir")
        .arg(out)
        .arg("--format")
        .arg(target.name())
        .arg("--json")
        .run()
}

/// `qemu-img compare` of the VMDK as qemu reads it with the target.
fn assert_same_as_vmdk(vmdk: &Path, target_path: &Path, target: Target) {
    tool(
        "qemu-img",
        &[
            OsStr::new("compare"),
            OsStr::new("-f"),
            OsStr::new("vmdk"),
            OsStr::new("-F"),
            OsStr::new(target.name()),
            vmdk.as_os_str(),
            target_path.as_os_str(),
        ],
    );
}

/// Imports `ova` into both target formats and judges each target against
/// the source raw image and the VMDK; returns the disk records of the
/// summaries.
fn import_both(w: &Work, ova: &Path, raw: &Path, vmdk: &Path) -> Vec<Value> {
    let mut records = Vec::new();
    for target in [Target::Raw, Target::Qcow2] {
        let out = w.mkdir(&format!("out-{}", target.name()));
        let run = import(ova, &out, target);
        run.assert_success();
        let dest = out.join(format!("disk1.{}", target.name()));
        image::assert_target(raw, &dest, target, SCATTERED.size);
        assert_same_as_vmdk(vmdk, &dest, target);
        assert_eq!(
            fs::read_dir(&out).expect("read out").count(),
            1,
            "only the target is left"
        );
        let json = run.json();
        let disks = json["disks"].as_array().expect("disks");
        assert_eq!(disks.len(), 1, "{json}");
        let d = disks[0].clone();
        assert_eq!(d["source_format"], "vmdk", "{d}");
        assert_eq!(d["compression"], "none", "{d}");
        assert_eq!(d["target_format"], target.name(), "{d}");
        assert_eq!(d["capacity"].as_u64(), Some(SCATTERED.size), "{d}");
        records.push(d);
    }
    records
}

fn warnings(d: &Value) -> Vec<String> {
    d["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|s| s.as_str().expect("warning text").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn default_conversion_is_monolithic_sparse_and_imports() {
    let w = Work::new();
    let (raw, vmdk) = make_vmdk(&w, &[]);
    assert_eq!(create_type(&vmdk), "monolithicSparse");
    let ova = one_disk_ova(&w, "in.ova", &vmdk, Some(SPARSE_URI), false);
    for d in import_both(&w, &ova, &raw, &vmdk) {
        assert_eq!(d["declared_format"], "vmdk (monolithicSparse)", "{d}");
        assert!(warnings(&d).is_empty(), "{d}");
    }
}

#[test]
fn zeroed_grain_conversion_declaring_nothing_imports() {
    let w = Work::new();
    let (raw, vmdk) = make_vmdk(&w, &["-o", "zeroed_grain=on"]);
    assert_eq!(create_type(&vmdk), "monolithicSparse");
    let ova = one_disk_ova(&w, "in.ova", &vmdk, None, false);
    for d in import_both(&w, &ova, &raw, &vmdk) {
        assert!(d["declared_format"].is_null(), "{d}");
        assert!(warnings(&d).is_empty(), "{d}");
    }
}

#[test]
fn explicit_subformat_option_and_vmware_sparse_uri() {
    let w = Work::new();
    let (raw, vmdk) = make_vmdk(&w, &["-o", "subformat=monolithicSparse"]);
    let ova = one_disk_ova(&w, "in.ova", &vmdk, Some(VMWARE_SPARSE_URI), false);
    for d in import_both(&w, &ova, &raw, &vmdk) {
        assert_eq!(d["declared_format"], "vmdk (sparse)", "{d}");
        assert!(warnings(&d).is_empty(), "{d}");
    }
}

#[test]
fn ovirt_sparse_uri_declares_raw_and_the_content_wins() {
    let w = Work::new();
    let (raw, vmdk) = make_vmdk(&w, &[]);
    let ova = one_disk_ova(&w, "in.ova", &vmdk, Some(OVIRT_SPARSE_URI), false);
    for d in import_both(&w, &ova, &raw, &vmdk) {
        assert_eq!(d["declared_format"], "raw", "{d}");
        assert_eq!(
            warnings(&d),
            ["disk1.vmdk: OVF declares raw but the content is vmdk; imported as vmdk"],
            "{d}"
        );
    }
}

#[test]
fn image_rewritten_by_qemu_io_imports_as_qemu_reads_it() {
    // Grains allocated out of disk order at the end of the file, grains
    // of data zeroed (a table entry of 1) and left orphaned in the file.
    let w = Work::new();
    let (raw, vmdk) = make_vmdk(&w, &["-o", "zeroed_grain=on"]);
    let mut args: Vec<&OsStr> = vec![OsStr::new("-f"), OsStr::new("vmdk")];
    for cmd in [
        "write -P 0x11 60M 64k",
        "write -P 0x22 40M 128k",
        "write -z 0 64k",
        "write -z 31M 1M",
        "write -P 0x33 10M 64k",
        "write -z 60M 64k",
    ] {
        args.push(OsStr::new("-c"));
        args.push(OsStr::new(cmd));
    }
    args.push(vmdk.as_os_str());
    tool("qemu-io", &args);
    // The disk is no longer the source: zeroed data, new data.
    let differs = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "vmdk"])
        .arg(&raw)
        .arg(&vmdk)
        .status()
        .expect("run qemu-img compare");
    assert_eq!(differs.code(), Some(1), "qemu-io changed the disk");
    let ova = one_disk_ova(&w, "in.ova", &vmdk, Some(SPARSE_URI), false);
    for target in [Target::Raw, Target::Qcow2] {
        let out = w.mkdir(&format!("out-{}", target.name()));
        import(&ova, &out, target).assert_success();
        let dest = out.join(format!("disk1.{}", target.name()));
        if target == Target::Qcow2 {
            image::assert_qcow2_clean(&dest);
        }
        assert_same_as_vmdk(&vmdk, &dest, target);
    }
}

#[test]
fn gzip_compressed_entry_imports() {
    let w = Work::new();
    let (raw, vmdk) = make_vmdk(&w, &[]);
    let ova = one_disk_ova(&w, "in.ova", &vmdk, Some(SPARSE_URI), true);
    let out = w.mkdir("out");
    let run = import(&ova, &out, Target::Qcow2);
    run.assert_success();
    let d = &run.json()["disks"][0];
    assert_eq!(d["source_format"], "vmdk", "{d}");
    assert_eq!(d["compression"], "gzip", "{d}");
    image::assert_target(
        &raw,
        &out.join("disk1.qcow2"),
        Target::Qcow2,
        SCATTERED.size,
    );
}

#[test]
fn truncated_image_fails_and_leaves_nothing() {
    let w = Work::new();
    let (_, vmdk) = make_vmdk(&w, &[]);
    let bytes = fs::read(&vmdk).expect("read vmdk");
    let cut = w.path("cut.vmdk");
    // Half of the last grain is missing.
    fs::write(&cut, &bytes[..bytes.len() - 32 * 1024]).expect("write cut");
    for gzip in [false, true] {
        let ova = one_disk_ova(&w, &format!("cut-{gzip}.ova"), &cut, Some(SPARSE_URI), gzip);
        for target in [Target::Raw, Target::Qcow2] {
            let out = w.mkdir(&format!("out-{gzip}-{}", target.name()));
            let run = import(&ova, &out, target);
            // Inside gzip the entry's size is unknown, so the end of the
            // input is where the decoder finds out.
            let why = if gzip {
                "input ends inside the grain"
            } else {
                "beyond the entry's"
            };
            run.assert_error(&["entry 'disk1.vmdk'", why]);
            assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
            assert!(run.stdout.is_empty(), "{}", run.stdout);
            assert_dir_empty(&out);
        }
    }
}

#[test]
fn delta_over_a_parent_disk_is_refused() {
    // qemu reads the unallocated grains of a delta from its parent, which
    // is not in the package: importing the delta alone would give another
    // disk.
    let w = Work::new();
    let (_, base) = make_vmdk(&w, &[]);
    let child = w.path("child.vmdk");
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("vmdk"),
            OsStr::new("-b"),
            base.as_os_str(),
            OsStr::new("-F"),
            OsStr::new("vmdk"),
            child.as_os_str(),
        ],
    );
    tool(
        "qemu-io",
        &[
            OsStr::new("-f"),
            OsStr::new("vmdk"),
            OsStr::new("-c"),
            OsStr::new("write -P 0x44 1M 64k"),
            child.as_os_str(),
        ],
    );
    let ova = one_disk_ova(&w, "in.ova", &child, Some(SPARSE_URI), false);
    for target in [Target::Raw, Target::Qcow2] {
        let out = w.mkdir(&format!("out-{}", target.name()));
        let run = import(&ova, &out, target);
        run.assert_error(&["entry 'disk1.vmdk'", "parentFileNameHint", "src.vmdk"]);
        assert_eq!(run.status.code(), Some(6), "{}", run.stderr);
        assert_dir_empty(&out);
    }
}

#[test]
fn extent_of_a_split_disk_is_refused() {
    // twoGbMaxExtentSparse keeps the descriptor in its own file; an extent
    // alone is not the disk (and qemu cannot open it).
    let w = Work::new();
    let (_, descriptor) = make_vmdk(&w, &["-o", "subformat=twoGbMaxExtentSparse"]);
    let extent = w.path("src-s001.vmdk");
    assert!(extent.is_file(), "{} missing", extent.display());
    assert!(
        fs::read_to_string(&descriptor)
            .expect("descriptor is text")
            .contains("twoGbMaxExtentSparse")
    );
    let ova = one_disk_ova(&w, "in.ova", &extent, Some(SPARSE_URI), false);
    let out = w.mkdir("out");
    let run = import(&ova, &out, Target::Raw);
    run.assert_error(&["entry 'disk1.vmdk'", "no CID", "split over several files"]);
    assert_eq!(run.status.code(), Some(6), "{}", run.stderr);
    assert_dir_empty(&out);
}

#[test]
fn inspect_reports_monolithic_sparse() {
    let w = Work::new();
    let (_, vmdk) = make_vmdk(&w, &[]);
    let ova = one_disk_ova(&w, "in.ova", &vmdk, Some(SPARSE_URI), false);
    let json = ovaio()
        .arg("inspect")
        .arg(&ova)
        .arg("--json")
        .run()
        .assert_success()
        .json();
    assert_eq!(json["disks"][0]["detected_format"], "vmdk-sparse", "{json}");
    assert_eq!(
        json["disks"][0]["declared_format"], "vmdk (monolithicSparse)",
        "{json}"
    );
    let v = &json["verification"]["disks"][0];
    assert_eq!(v["status"], "ok", "{json}");
    assert_eq!(v["content_format"], "vmdk-sparse", "{json}");
    let text = ovaio().arg("inspect").arg(&ova).run();
    text.assert_success();
    assert!(
        text.stdout.contains("disk1.vmdk: format ok (vmdk-sparse)"),
        "{}",
        text.stdout
    );
}
