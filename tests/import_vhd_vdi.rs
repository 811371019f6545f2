//! `ovaio import` of VHD (dynamic and fixed) and VDI (dynamic and static)
//! disks, as XenServer and VirtualBox appliances carry them. Every image
//! is made by the real `qemu-img` from a 64 MiB raw disk with scattered
//! data and holes, packed in an OVA by GNU tar, imported into raw and
//! qcow2 targets, and judged by `qemu-img compare` against qemu's own
//! reading of the same image (`qemu-img convert -f vpc|vdi -O raw`) and by
//! `qemu-img check`. A missing `qemu-img` fails these tests.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use support::image::{self, Fill, Layout, Run, Source, Target};
use support::ova::{Disk, Ova, Placement};
use support::{Outcome, Work, assert_dir_empty, file_len, ovaio, tar, tool};

const MIB: u64 = 1 << 20;

/// 64 MiB with data at the start, runs that cross VHD's 2 MiB and VDI's
/// 1 MiB block boundaries, small writes alone in otherwise empty blocks,
/// an allocated all-zero run, long holes, and data up to the last byte.
const DISK: Layout = Layout {
    size: 64 * MIB,
    runs: &[
        Run {
            offset: 0,
            len: 70_000,
            fill: Fill::Random(1),
        },
        Run {
            offset: 2 * MIB - 3000,
            len: 9000,
            fill: Fill::Text,
        },
        Run {
            offset: 5 * MIB + 512,
            len: 512,
            fill: Fill::Random(2),
        },
        Run {
            offset: 9 * MIB,
            len: 3 * MIB + 4096,
            fill: Fill::Random(3),
        },
        Run {
            offset: 20 * MIB,
            len: MIB,
            fill: Fill::Zeros,
        },
        Run {
            offset: 33 * MIB - 100,
            len: 200,
            fill: Fill::Text,
        },
        Run {
            offset: 47 * MIB + 12_345,
            len: 300_000,
            fill: Fill::Random(4),
        },
        Run {
            offset: 64 * MIB - 5000,
            len: 5000,
            fill: Fill::Text,
        },
    ],
};

/// `ovf:format` XenServer writes for VHD disks.
const XENSERVER_VHD_URI: &str = "http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx";

/// One source image and qemu's reading of it.
struct Image {
    /// The VHD or VDI file.
    file: PathBuf,
    /// What qemu reads from it, as a raw file.
    reading: PathBuf,
    /// Its virtual size as qemu reads it.
    capacity: u64,
}

/// Converts the raw `DISK` (written once per test) with
/// `qemu-img convert -O <format> <opts>` and reads it back with qemu.
fn make(w: &Work, name: &str, format: &str, opts: &[&str]) -> Image {
    let raw = w.path("disk.raw");
    if !raw.exists() {
        DISK.write_raw(&raw);
    }
    let file = w.path(name);
    let mut args: Vec<&OsStr> = ["convert", "-q", "-f", "raw", "-O", format]
        .into_iter()
        .map(OsStr::new)
        .collect();
    args.extend(opts.iter().map(OsStr::new));
    args.push(raw.as_os_str());
    args.push(file.as_os_str());
    tool("qemu-img", &args);
    let reading = w.path(&format!("{name}.reading.raw"));
    tool(
        "qemu-img",
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            file.as_os_str(),
            reading.as_os_str(),
        ],
    );
    let capacity = image::info(&file, format)["virtual-size"]
        .as_u64()
        .expect("virtual size");
    assert_eq!(file_len(&reading), capacity);
    Image {
        file,
        reading,
        capacity,
    }
}

/// A one-disk OVA `name` holding `img` as `href`, declared with
/// `format_uri` and the capacity qemu reads.
fn package(
    w: &Work,
    name: &str,
    href: &str,
    img: &Image,
    format_uri: Option<&str>,
    placement: Placement,
) -> PathBuf {
    let mut disk = Disk::new(1, href, &img.file, Source::Raw, img.capacity);
    disk.ovf.format_uri = format_uri.map(str::to_owned);
    Ova::new()
        .disk(disk)
        .placement(placement)
        .build(w.root(), name)
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

/// Imports `ova` into raw and qcow2 targets: each must succeed, name the
/// source format, carry no warning, and hold what qemu reads from `img`.
fn assert_imports(w: &Work, ova: &Path, href: &str, img: &Image, format: &str) {
    let stem = Path::new(href).file_stem().expect("stem");
    for target in [Target::Raw, Target::Qcow2] {
        let out = w.path(&format!(
            "{}-{}",
            ova.file_name().expect("name").to_string_lossy(),
            target.name()
        ));
        fs::create_dir(&out).expect("mkdir out");
        let run = import(ova, &out, target);
        run.assert_success();
        let json = run.json();
        let d = &json["disks"][0];
        assert_eq!(d["source_format"], format, "{json}");
        assert_eq!(d["capacity"].as_u64(), Some(img.capacity), "{json}");
        assert_eq!(d["warnings"], serde_json::json!([]), "{json}");
        let path = out.join(format!("{}.{}", stem.to_string_lossy(), target.name()));
        // Raw length or clean qcow2 of the capacity, and qemu-img compare
        // against qemu's reading of the source image.
        image::assert_target(&img.reading, &path, target, img.capacity);
        fs::remove_dir_all(&out).expect("clear out");
    }
}

/// Runs every import of `ova` expecting a refusal that mentions
/// `mentions`, with exit status `code` and nothing left behind.
fn assert_refused(w: &Work, ova: &Path, code: i32, mentions: &[&str]) {
    for target in [Target::Raw, Target::Qcow2] {
        let out = w.mkdir(&format!("refused-{}", target.name()));
        let run = import(ova, &out, target);
        run.assert_error(mentions);
        assert_eq!(run.status.code(), Some(code), "{}", run.stderr);
        assert_dir_empty(&out);
        fs::remove_dir(&out).expect("remove out");
    }
}

// ---------------------------------------------------------------------------
// VHD

#[test]
fn vhd_dynamic_is_imported_as_qemu_reads_it() {
    let w = Work::new();
    let img = make(&w, "disk.vhd", "vpc", &[]);
    // qemu-img sizes a VHD by its CHS geometry, rounded up.
    assert!(img.capacity > DISK.size, "{}", img.capacity);
    let ova = package(
        &w,
        "vm.ova",
        "disk1.vhd",
        &img,
        Some(XENSERVER_VHD_URI),
        Placement::OvfFirst,
    );
    assert_imports(&w, &ova, "disk1.vhd", &img, "vhd");
    let late = package(&w, "late.ova", "disk1.vhd", &img, None, Placement::OvfLast);
    assert_imports(&w, &late, "disk1.vhd", &img, "vhd");
}

#[test]
fn vhd_dynamic_sized_exactly_is_imported() {
    let w = Work::new();
    let img = make(&w, "disk.vhd", "vpc", &["-o", "force_size=on"]);
    assert_eq!(img.capacity, DISK.size);
    let ova = package(
        &w,
        "vm.ova",
        "disk1.vhd",
        &img,
        Some(XENSERVER_VHD_URI),
        Placement::OvfFirst,
    );
    assert_imports(&w, &ova, "disk1.vhd", &img, "vhd");
}

#[test]
fn vhd_fixed_declared_is_imported_without_its_footer() {
    let w = Work::new();
    for (name, opts) in [
        ("chs.vhd", "subformat=fixed"),
        ("sized.vhd", "subformat=fixed,force_size=on"),
    ] {
        let img = make(&w, name, "vpc", &["-o", opts]);
        assert_eq!(file_len(&img.file), img.capacity + 512);
        let ova = package(
            &w,
            &format!("{name}.ova"),
            "disk1.vhd",
            &img,
            Some(XENSERVER_VHD_URI),
            Placement::OvfFirst,
        );
        assert_imports(&w, &ova, "disk1.vhd", &img, "vhd");
    }
}

#[test]
fn vhd_fixed_undeclared_is_known_by_its_footer_in_either_order() {
    let w = Work::new();
    let img = make(&w, "disk.vhd", "vpc", &["-o", "subformat=fixed"]);
    for (name, placement) in [
        ("first.ova", Placement::OvfFirst),
        ("last.ova", Placement::OvfLast),
    ] {
        let ova = package(&w, name, "disk1.img", &img, None, placement);
        assert_imports(&w, &ova, "disk1.img", &img, "vhd");
    }
}

#[test]
fn a_raw_disk_is_still_imported_whole() {
    // The same bytes with the footer's checksum broken: not a VHD, so
    // its last 512 bytes are disk data, and the disk is the entry.
    let w = Work::new();
    let img = make(&w, "disk.vhd", "vpc", &["-o", "subformat=fixed"]);
    let mut bytes = fs::read(&img.file).expect("read");
    let n = bytes.len();
    bytes[n - 512 + 100] ^= 1;
    let raw = w.path("broken.raw");
    fs::write(&raw, &bytes).expect("write");
    let raw_img = Image {
        file: raw.clone(),
        reading: raw,
        capacity: n as u64,
    };
    let ova = package(
        &w,
        "raw.ova",
        "disk1.img",
        &raw_img,
        None,
        Placement::OvfFirst,
    );
    assert_imports(&w, &ova, "disk1.img", &raw_img, "raw");
}

// ---------------------------------------------------------------------------
// VDI

#[test]
fn vdi_dynamic_is_imported_as_qemu_reads_it() {
    let w = Work::new();
    let img = make(&w, "disk.vdi", "vdi", &[]);
    assert_eq!(img.capacity, DISK.size);
    assert!(
        file_len(&img.file) < DISK.size / 2,
        "a dynamic VDI is sparse"
    );
    let ova = package(&w, "vm.ova", "disk1.vdi", &img, None, Placement::OvfFirst);
    assert_imports(&w, &ova, "disk1.vdi", &img, "vdi");
    let late = package(
        &w,
        "late.ova",
        "disk1.vdi",
        &img,
        None,
        Placement::OvfAfterFirstDisk,
    );
    assert_imports(&w, &late, "disk1.vdi", &img, "vdi");
}

#[test]
fn vdi_static_is_imported_as_qemu_reads_it() {
    let w = Work::new();
    let img = make(&w, "disk.vdi", "vdi", &["-o", "static=on"]);
    assert!(
        file_len(&img.file) > DISK.size,
        "a static VDI holds every block"
    );
    let ova = package(&w, "vm.ova", "disk1.vdi", &img, None, Placement::OvfFirst);
    assert_imports(&w, &ova, "disk1.vdi", &img, "vdi");
}

// ---------------------------------------------------------------------------
// Truncated images and packages: refused, nothing left behind.

/// `img`'s file cut to `len` bytes, as `name`, declared with `img`'s
/// capacity.
fn cut(w: &Work, img: &Image, len: u64, name: &str) -> Image {
    let bytes = fs::read(&img.file).expect("read");
    let path = w.path(name);
    fs::write(&path, &bytes[..len as usize]).expect("write");
    Image {
        file: path.clone(),
        reading: path,
        capacity: img.capacity,
    }
}

#[test]
fn truncated_images_fail_and_leave_nothing() {
    let w = Work::new();
    let vhd = make(&w, "disk.vhd", "vpc", &[]);
    let vdi = make(&w, "disk.vdi", "vdi", &[]);
    let half_vhd = cut(&w, &vhd, file_len(&vhd.file) / 2, "half.vhd");
    let ova = package(
        &w,
        "vhd.ova",
        "disk1.vhd",
        &half_vhd,
        None,
        Placement::OvfFirst,
    );
    assert_refused(&w, &ova, 1, &["entry 'disk1.vhd'", "beyond the entry's"]);
    let half_vdi = cut(&w, &vdi, file_len(&vdi.file) / 2, "half.vdi");
    let ova = package(
        &w,
        "vdi.ova",
        "disk1.vdi",
        &half_vdi,
        None,
        Placement::OvfLast,
    );
    assert_refused(&w, &ova, 1, &["entry 'disk1.vdi'", "beyond the entry's"]);
    // The VHD without its closing footer: every block is there.
    let no_footer = cut(&w, &vhd, file_len(&vhd.file) - 512, "nofooter.vhd");
    let ova = package(
        &w,
        "nofooter.ova",
        "disk1.vhd",
        &no_footer,
        None,
        Placement::OvfFirst,
    );
    assert_refused(&w, &ova, 1, &["entry 'disk1.vhd'", "beyond the entry's"]);
}

#[test]
fn a_package_cut_inside_the_image_fails_and_leaves_nothing() {
    let w = Work::new();
    for (format, name) in [("vpc", "disk1.vhd"), ("vdi", "disk1.vdi")] {
        let img = make(&w, &format!("{name}.src"), format, &[]);
        let ova = package(
            &w,
            &format!("{name}.ova"),
            name,
            &img,
            None,
            Placement::OvfFirst,
        );
        let listing = tar::list(&ova);
        let entry = listing.iter().find(|l| l.name == name).expect("listed");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&ova)
            .expect("open ova");
        f.set_len(entry.header_offset + 512 + entry.size * 2 / 3)
            .expect("cut ova");
        assert_refused(&w, &ova, 1, &[&format!("entry '{name}'")]);
    }
}
