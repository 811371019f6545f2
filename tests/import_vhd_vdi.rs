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
    /// The raw disk it was converted from, when it holds that disk
    /// unchanged: targets are compared with it too.
    source: Option<PathBuf>,
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
    Image {
        source: Some(raw),
        ..read_back(w, &file, format)
    }
}

/// `file` (a `format` image) and qemu's reading of it.
fn read_back(w: &Work, file: &Path, format: &str) -> Image {
    let name = file.file_name().expect("name").to_string_lossy();
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
    let capacity = image::info(file, format)["virtual-size"]
        .as_u64()
        .expect("virtual size");
    assert_eq!(file_len(&reading), capacity);
    Image {
        file: file.to_owned(),
        reading,
        capacity,
        source: None,
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
        // And against the raw disk the image was made from (a VHD sized
        // by its geometry is larger, by sectors that read as zero).
        if let Some(source) = &img.source {
            image::assert_same_content(source, &path, target.name());
        }
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
        source: None,
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
        source: None,
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

// ---------------------------------------------------------------------------
// Images edited after qemu-img wrote them: blocks out of guest order are
// read in one pass; broken tables and footers are refused, naming the
// entry, the package offset and what is wrong, with nothing left behind.

/// `ovf:format` VirtualBox writes for VHD disks.
const VIRTUALBOX_VHD_URI: &str = "http://go.microsoft.com/fwlink/?LinkId=137171";
/// An `ovf:format` naming VDI, as a VirtualBox appliance would.
const VIRTUALBOX_VDI_URI: &str = "http://www.virtualbox.org/manual/ch12.html#vdi";

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Where a dynamic VHD's BAT lies: `(offset, entries)`, read through the
/// footer copy and the dynamic header.
fn vhd_bat(img: &[u8]) -> (usize, usize) {
    assert_eq!(&img[..8], b"conectix");
    let header = usize::try_from(be64(img, 16)).expect("header offset");
    assert_eq!(&img[header..header + 8], b"cxsparse");
    let bat = usize::try_from(be64(img, header + 16)).expect("BAT offset");
    (bat, be32(img, header + 28) as usize)
}

/// Where a VDI's block map lies: `(offset, entries)`.
fn vdi_map(img: &[u8]) -> (usize, usize) {
    assert_eq!(le32(img, 0x40), 0xbeda_107f);
    (le32(img, 0x154) as usize, le32(img, 0x180) as usize)
}

/// Indexes of the allocated entries of a table of `u32`s (big-endian for
/// VHD, little-endian for VDI) at `at`.
fn allocated(img: &[u8], at: usize, n: usize, big_endian: bool) -> Vec<usize> {
    (0..n)
        .filter(|i| {
            let e = if big_endian {
                be32(img, at + 4 * i)
            } else {
                le32(img, at + 4 * i)
            };
            e < 0xffff_fffe
        })
        .collect()
}

/// Rewrites the checksum of the VHD footer at `at` after an edit.
fn reseal(img: &mut [u8], at: usize) {
    img[at + 64..at + 68].fill(0);
    let sum = img[at..at + 512]
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    img[at + 64..at + 68].copy_from_slice(&(!sum).to_be_bytes());
}

/// `img`'s file edited by `edit`, written as `name`.
fn edited(w: &Work, img: &Image, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = fs::read(&img.file).expect("read image");
    edit(&mut bytes);
    let path = w.path(name);
    fs::write(&path, &bytes).expect("write edited image");
    path
}

/// Packs `file` as `href` (declared with `format_uri` and `capacity`)
/// into `<name>.ova`, and returns the package and the package offset of
/// the entry's first byte.
fn packed(
    w: &Work,
    name: &str,
    href: &str,
    file: &Path,
    capacity: u64,
    format_uri: &str,
) -> (PathBuf, u64) {
    let img = Image {
        file: file.to_owned(),
        reading: file.to_owned(),
        capacity,
        source: None,
    };
    let ova = package(
        w,
        &format!("{name}.ova"),
        href,
        &img,
        Some(format_uri),
        Placement::OvfFirst,
    );
    let listing = tar::list(&ova);
    let entry = listing.iter().find(|l| l.name == href).expect("listed");
    (ova, entry.header_offset + 512)
}

/// The refusal of `file` packed as `href`: exit `code`, one line naming
/// the entry, the package offset `start + at`, and `what`.
fn assert_image_refused(
    w: &Work,
    name: &str,
    href: &str,
    (file, capacity, uri): (&Path, u64, &str),
    code: i32,
    at: usize,
    what: &str,
) {
    let (ova, start) = packed(w, name, href, file, capacity, uri);
    let place = format!("entry '{href}' at byte {}: ", start + at as u64);
    assert_refused(w, &ova, code, &[&place, what]);
}

#[test]
fn vhd_blocks_out_of_guest_order_are_read_in_one_pass() {
    let w = Work::new();
    let img = make(&w, "disk.vhd", "vpc", &[]);
    let bytes = fs::read(&img.file).expect("read");
    let (bat, n) = vhd_bat(&bytes);
    let used = allocated(&bytes, bat, n, true);
    assert!(used.len() >= 6, "{used:?}");
    // Reverse the BAT's allocated entries: the file holds the last guest
    // block first.
    let file = edited(&w, &img, "reversed.vhd", |b| {
        let entries: Vec<[u8; 4]> = used
            .iter()
            .map(|i| b[bat + 4 * i..bat + 4 * i + 4].try_into().expect("entry"))
            .collect();
        for (i, e) in used.iter().zip(entries.iter().rev()) {
            b[bat + 4 * i..bat + 4 * i + 4].copy_from_slice(e);
        }
    });
    let reversed = read_back(&w, &file, "vpc");
    assert_ne!(
        fs::read(&reversed.reading).expect("read"),
        fs::read(&img.reading).expect("read"),
        "the edit must move data"
    );
    let ova = package(
        &w,
        "reversed.ova",
        "disk1.vhd",
        &reversed,
        Some(VIRTUALBOX_VHD_URI),
        Placement::OvfFirst,
    );
    assert_imports(&w, &ova, "disk1.vhd", &reversed, "vhd");
}

#[test]
fn vdi_blocks_out_of_guest_order_are_read_in_one_pass() {
    let w = Work::new();
    let img = make(&w, "disk.vdi", "vdi", &[]);
    let bytes = fs::read(&img.file).expect("read");
    let (map, n) = vdi_map(&bytes);
    let used = allocated(&bytes, map, n, false);
    assert!(used.len() >= 6, "{used:?}");
    let file = edited(&w, &img, "reversed.vdi", |b| {
        let entries: Vec<[u8; 4]> = used
            .iter()
            .map(|i| b[map + 4 * i..map + 4 * i + 4].try_into().expect("entry"))
            .collect();
        for (i, e) in used.iter().zip(entries.iter().rev()) {
            b[map + 4 * i..map + 4 * i + 4].copy_from_slice(e);
        }
    });
    let reversed = read_back(&w, &file, "vdi");
    assert_ne!(
        fs::read(&reversed.reading).expect("read"),
        fs::read(&img.reading).expect("read"),
        "the edit must move data"
    );
    let ova = package(
        &w,
        "reversed.ova",
        "disk1.vdi",
        &reversed,
        Some(VIRTUALBOX_VDI_URI),
        Placement::OvfFirst,
    );
    assert_imports(&w, &ova, "disk1.vdi", &reversed, "vdi");
}

#[test]
fn vhd_footer_checksums_are_checked() {
    let w = Work::new();
    let img = make(&w, "disk.vhd", "vpc", &[]);
    let len = file_len(&img.file) as usize;
    // The copy at the start: refused before anything is written.
    let file = edited(&w, &img, "copy.vhd", |b| b[30] ^= 1);
    assert_image_refused(
        &w,
        "copy",
        "disk1.vhd",
        (&file, img.capacity, XENSERVER_VHD_URI),
        1,
        0,
        "VHD footer checksum",
    );
    // The footer at the end: refused after every block was written; the
    // target is removed.
    let file = edited(&w, &img, "end.vhd", |b| b[len - 512 + 30] ^= 1);
    assert_image_refused(
        &w,
        "end",
        "disk1.vhd",
        (&file, img.capacity, XENSERVER_VHD_URI),
        1,
        len - 512,
        "VHD footer checksum",
    );
    // A sound footer at the end that describes another disk.
    let file = edited(&w, &img, "other.vhd", |b| {
        b[len - 512 + 40] ^= 1;
        b[len - 512 + 48] ^= 1;
        reseal(b, len - 512);
    });
    assert_image_refused(
        &w,
        "other",
        "disk1.vhd",
        (&file, img.capacity, XENSERVER_VHD_URI),
        1,
        len - 512,
        "differs from the copy at its start in current size",
    );
}

#[test]
fn vhd_bat_entries_that_cannot_be_read_in_one_pass_are_refused() {
    let w = Work::new();
    let img = make(&w, "disk.vhd", "vpc", &[]);
    let bytes = fs::read(&img.file).expect("read");
    let (bat, n) = vhd_bat(&bytes);
    let used = allocated(&bytes, bat, n, true);
    let (first, second) = (used[0], used[1]);
    let sector = |i: usize| be32(&bytes, bat + 4 * i);
    let set = |b: &mut Vec<u8>, i: usize, v: u32| {
        b[bat + 4 * i..bat + 4 * i + 4].copy_from_slice(&v.to_be_bytes());
    };
    let uri = XENSERVER_VHD_URI;
    // Pointing back into the metadata.
    let file = edited(&w, &img, "header.vhd", |b| set(b, second, 1));
    assert_image_refused(
        &w,
        "header",
        "disk1.vhd",
        (&file, img.capacity, uri),
        1,
        bat + 4 * second,
        "the BAT places the block for guest offset 2097152 at entry offset 512, inside the dynamic header",
    );
    let file = edited(&w, &img, "bat.vhd", |b| set(b, first, (bat / 512) as u32));
    assert_image_refused(
        &w,
        "bat",
        "disk1.vhd",
        (&file, img.capacity, uri),
        1,
        bat + 4 * first,
        "inside the BAT",
    );
    // Two blocks sharing sectors.
    let file = edited(&w, &img, "overlap.vhd", |b| {
        set(b, second, sector(first) + 8);
    });
    assert_image_refused(
        &w,
        "overlap",
        "disk1.vhd",
        (&file, img.capacity, uri),
        1,
        bat + 4 * second,
        "the BAT places the blocks for guest offsets 0 and 2097152 so that they overlap",
    );
    // Past the end of the entry.
    let file = edited(&w, &img, "beyond.vhd", |b| set(b, second, 0x00ff_0000));
    assert_image_refused(
        &w,
        "beyond",
        "disk1.vhd",
        (&file, img.capacity, uri),
        1,
        bat + 4 * second,
        "beyond the entry's",
    );
}

#[test]
fn differencing_vhd_is_refused() {
    let w = Work::new();
    let img = make(&w, "disk.vhd", "vpc", &[]);
    let len = file_len(&img.file) as usize;
    let file = edited(&w, &img, "child.vhd", |b| {
        for at in [0, len - 512] {
            b[at + 60..at + 64].copy_from_slice(&4u32.to_be_bytes());
            reseal(b, at);
        }
    });
    assert_image_refused(
        &w,
        "child",
        "disk1.vhd",
        (&file, img.capacity, VIRTUALBOX_VHD_URI),
        6,
        60,
        "differencing VHD not supported",
    );
}

#[test]
fn vdi_of_another_image_type_is_refused() {
    let w = Work::new();
    let img = make(&w, "disk.vdi", "vdi", &[]);
    for (t, name) in [(3u32, "undo"), (4, "differencing")] {
        let file = edited(&w, &img, &format!("{name}.vdi"), |b| {
            b[0x4c..0x50].copy_from_slice(&t.to_le_bytes());
        });
        assert_image_refused(
            &w,
            name,
            "disk1.vdi",
            (&file, img.capacity, VIRTUALBOX_VDI_URI),
            6,
            0x4c,
            &format!("unsupported VDI image: image type {t} ({name})"),
        );
    }
    let file = edited(&w, &img, "parent.vdi", |b| b[0x1b8] = 1);
    assert_image_refused(
        &w,
        "parent",
        "disk1.vdi",
        (&file, img.capacity, VIRTUALBOX_VDI_URI),
        6,
        0x1b8,
        "VDI image with a parent UUID not supported",
    );
}

#[test]
fn vdi_block_map_entries_that_cannot_be_read_are_refused() {
    let w = Work::new();
    let img = make(&w, "disk.vdi", "vdi", &[]);
    let bytes = fs::read(&img.file).expect("read");
    let (map, n) = vdi_map(&bytes);
    let used = allocated(&bytes, map, n, false);
    let (first, second) = (used[0], used[1]);
    let set = |b: &mut Vec<u8>, i: usize, v: u32| {
        b[map + 4 * i..map + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    };
    let uri = VIRTUALBOX_VDI_URI;
    let block = le32(&bytes, map + 4 * first);
    let file = edited(&w, &img, "twice.vdi", |b| set(b, second, block));
    assert_image_refused(
        &w,
        "twice",
        "disk1.vdi",
        (&file, img.capacity, uri),
        1,
        map + 4 * second.max(first),
        "overlap",
    );
    let file = edited(&w, &img, "number.vdi", |b| set(b, second, n as u32));
    assert_image_refused(
        &w,
        "number",
        "disk1.vdi",
        (&file, img.capacity, uri),
        1,
        map + 4 * second,
        &format!(
            "names block {n} for guest offset {}, beyond the image's {n} blocks",
            second << 20
        ),
    );
    // A block the map may name but the sparse file does not hold.
    let file = edited(&w, &img, "beyond.vdi", |b| set(b, second, n as u32 - 1));
    assert_image_refused(
        &w,
        "beyond",
        "disk1.vdi",
        (&file, img.capacity, uri),
        1,
        map + 4 * second,
        "beyond the entry's",
    );
}
