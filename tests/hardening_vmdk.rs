//! `ovaio import` of streamOptimized VMDKs whose grain tables and grain
//! markers disagree. qemu (like VMware) reads such a file through its grain
//! directory and grain tables and never looks at the lba a grain marker
//! names, so a file whose tables map other grains than the markers name
//! would give ovaio and qemu different disks. ovaio must read the disk qemu
//! reads, or refuse the file: exit status 1, one error line naming the
//! entry, nothing left in the target directory. `qemu-img` is the referee
//! and must be installed.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use support::image::{self, Fill, Layout, MAIN, Run, Source, Target};
use support::ova::{self, Disk, Ova};
use support::vmdk::{GRAIN_SECTORS, GTES, vmware_vmdk};
use support::{Outcome, Work, assert_dir_empty, file_len, ovaio, tool};

/// Bytes per grain.
const GRAIN: usize = GRAIN_SECTORS as usize * 512;
/// Capacity of the small hand-built disks: 4 MiB, one grain table.
const CAPACITY: u64 = 4 << 20;

/// One grain of data that is recognisable at any offset: `tag` then a
/// pattern.
fn grain(tag: u8) -> Vec<u8> {
    (0..GRAIN)
        .map(|i| if i % 4096 == 0 { tag } else { (i % 251) as u8 })
        .collect()
}

/// An OVA with the VMDK `vmdk` as `disk1.vmdk` of `capacity` bytes; also
/// returns the VMDK's own path.
fn package(w: &Work, vmdk: &[u8], capacity: u64) -> (PathBuf, PathBuf) {
    let file = w.path("disk1.vmdk");
    fs::write(&file, vmdk).expect("write vmdk");
    let disk = Disk::new(1, "disk1.vmdk", &file, Source::Vmdk, capacity);
    (Ova::new().disk(disk).build(w.root(), "in.ova"), file)
}

/// qemu's reading of the VMDK at `vmdk`, as a raw image.
fn qemu_reading(w: &Work, vmdk: &Path) -> PathBuf {
    let raw = w.path("qemu-reading.raw");
    tool(
        "qemu-img",
        &[
            OsStr::new("convert"),
            OsStr::new("-f"),
            OsStr::new("vmdk"),
            OsStr::new("-O"),
            OsStr::new("raw"),
            vmdk.as_os_str(),
            raw.as_os_str(),
        ],
    );
    raw
}

/// Imports `ova` into the fresh directory `w/out` as `target`.
fn import(w: &Work, ova: &Path, target: Target) -> (Outcome, PathBuf) {
    let out = w.mkdir(&format!("out-{}", target.name()));
    let run = ovaio()
        .arg("import")
        .arg(ova)
        .arg("--dir")
        .arg(&out)
        .arg("--format")
        .arg(target.name())
        .run();
    (run, out)
}

/// The refusal contract: exit status 1 (corrupt input), one error line
/// naming the entry and every string of `mentions`, an empty target
/// directory.
fn assert_refused(w: &Work, ova: &Path, mentions: &[&str]) {
    let (run, out) = import(w, ova, Target::Raw);
    let mut all = vec!["entry 'disk1.vmdk'"];
    all.extend_from_slice(mentions);
    run.assert_error(&all);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert_dir_empty(&out);
}

/// `len` bytes of the raw image at `path` from `offset`.
fn read_at(path: &Path, offset: usize, len: usize) -> Vec<u8> {
    fs::read(path).expect("read raw")[offset..offset + len].to_vec()
}

#[test]
fn d04_vmdk_grain_table_disagrees_with_stream() {
    // Grain markers name lba 0 (tag 1) and lba 128 (tag 2); the table maps
    // each lba to the other's grain.
    let w = Work::new();
    let grains = [(0, grain(1)), (GRAIN_SECTORS, grain(2))];
    let vmdk = vmware_vmdk(CAPACITY, &grains, |_, gt| gt.swap(0, 1));
    let (ova, file) = package(&w, &vmdk, CAPACITY);
    let qemu = qemu_reading(&w, &file);
    assert_eq!(read_at(&qemu, 0, GRAIN), grain(2), "qemu follows the table");
    assert_eq!(read_at(&qemu, GRAIN, GRAIN), grain(1));
    assert_refused(&w, &ova, &["grain table entry for lba 0 points to sector"]);
}

#[test]
fn d04_vmdk_duplicate_grain_refused() {
    // Two grains for lba 0; the table maps the first, which qemu reads,
    // while the second marker would overwrite it.
    let w = Work::new();
    let grains = [(0, grain(1)), (0, grain(2))];
    let vmdk = vmware_vmdk(CAPACITY, &grains, |_, gt| gt[0] = 128);
    let (ova, file) = package(&w, &vmdk, CAPACITY);
    assert_eq!(read_at(&qemu_reading(&w, &file), 0, GRAIN), grain(1));
    assert_refused(
        &w,
        &ova,
        &["grain at lba 0 follows the grain at lba 0", "each once"],
    );
}

#[test]
fn d04_vmdk_decreasing_lba_refused() {
    // The table maps both grains correctly; the order alone is wrong.
    let w = Work::new();
    let grains = [(GRAIN_SECTORS, grain(2)), (0, grain(1))];
    let vmdk = vmware_vmdk(CAPACITY, &grains, |_, _| {});
    let (ova, file) = package(&w, &vmdk, CAPACITY);
    assert_eq!(read_at(&qemu_reading(&w, &file), 0, GRAIN), grain(1));
    assert_refused(&w, &ova, &["grain at lba 0 follows the grain at lba 128"]);
}

#[test]
fn d04_vmdk_grain_missing_from_table_refused() {
    // The table forgets the grain at lba 128: qemu reads zeros there.
    let w = Work::new();
    let grains = [(0, grain(1)), (GRAIN_SECTORS, grain(2))];
    let vmdk = vmware_vmdk(CAPACITY, &grains, |_, gt| gt[1] = 0);
    let (ova, file) = package(&w, &vmdk, CAPACITY);
    assert_eq!(
        read_at(&qemu_reading(&w, &file), GRAIN, GRAIN),
        vec![0; GRAIN]
    );
    assert_refused(&w, &ova, &["grain at lba 128 is not in any grain table"]);
}

#[test]
fn d04_vmdk_table_entry_without_grain_refused() {
    // Entry 2 (lba 256) points to the grain of lba 0: qemu reads it twice.
    let w = Work::new();
    let grains = [(0, grain(1))];
    let vmdk = vmware_vmdk(CAPACITY, &grains, |_, gt| gt[2] = gt[0]);
    let (ova, file) = package(&w, &vmdk, CAPACITY);
    assert_eq!(
        read_at(&qemu_reading(&w, &file), 2 * GRAIN, GRAIN),
        grain(1)
    );
    assert_refused(
        &w,
        &ova,
        &[
            "grain table entry for lba 256",
            "holds no grain for lba 256",
        ],
    );
}

#[test]
fn d04_vmdk_qemu_layout_table_disagrees_refused() {
    // qemu-img keeps its grain directory and tables in the header area.
    // Move one table entry to the next, empty, grain: qemu then reads that
    // grain's data one grain further on.
    let w = Work::new();
    let src = ova::prepare(w.root(), "src", &MAIN, Source::Vmdk);
    let mut vmdk = fs::read(&src.file).expect("read vmdk");
    let gd = u64::from_le_bytes(vmdk[56..64].try_into().expect("8 bytes")) as usize * 512;
    let gt = u32::from_le_bytes(vmdk[gd..gd + 4].try_into().expect("4 bytes")) as usize * 512;
    let entry = |v: &[u8], i: usize| {
        u32::from_le_bytes(v[gt + 4 * i..gt + 4 * i + 4].try_into().expect("4 bytes"))
    };
    let i = (0..GTES as usize - 1)
        .find(|&i| entry(&vmdk, i) != 0 && entry(&vmdk, i + 1) == 0)
        .expect("a mapped grain followed by a hole");
    let moved = entry(&vmdk, i).to_le_bytes();
    vmdk[gt + 4 * (i + 1)..gt + 4 * (i + 2)].copy_from_slice(&moved);
    vmdk[gt + 4 * i..gt + 4 * (i + 1)].fill(0);
    let (ova, file) = package(&w, &vmdk, MAIN.size);
    let qemu = qemu_reading(&w, &file);
    assert_eq!(
        read_at(&qemu, (i + 1) * GRAIN, GRAIN),
        read_at(&src.raw, i * GRAIN, GRAIN),
        "qemu follows the moved entry"
    );
    assert_refused(&w, &ova, &["grain tables", "which are not the"]);
}

#[test]
fn d04_vmdk_vmware_layout_matches_qemu() {
    // 80 MiB, three grain tables' ranges of 32 MiB: grains in the first
    // and the last, none (and no table) in the middle one, the last grain
    // of the disk included.
    let w = Work::new();
    let capacity: u64 = 80 << 20;
    let per_table = GRAIN_SECTORS * GTES;
    let last = capacity / 512 - GRAIN_SECTORS;
    let grains = [
        (0, grain(1)),
        (5 * GRAIN_SECTORS, grain(2)),
        (2 * per_table, grain(3)),
        (2 * per_table + 7 * GRAIN_SECTORS, grain(4)),
        (last, grain(5)),
    ];
    let vmdk = vmware_vmdk(capacity, &grains, |_, _| {});
    let (ova, file) = package(&w, &vmdk, capacity);
    let qemu = qemu_reading(&w, &file);
    assert_eq!(file_len(&qemu), capacity);
    for (lba, data) in &grains {
        assert_eq!(&read_at(&qemu, *lba as usize * 512, GRAIN), data);
    }
    for target in [Target::Raw, Target::Qcow2] {
        let (run, out) = import(&w, &ova, target);
        run.assert_success();
        let dest = out.join(format!("disk1.{}", target.name()));
        image::assert_target(&qemu, &dest, target, capacity);
    }
}

/// 100 MiB: data in the first, second and third of qemu-img's four grain
/// tables' ranges, and in the last sectors of the disk.
const SEVERAL_TABLES: Layout = Layout {
    size: 100 << 20,
    runs: &[
        Run {
            offset: 0,
            len: 70_000,
            fill: Fill::Random(3),
        },
        Run {
            offset: 33 << 20,
            len: 200_000,
            fill: Fill::Random(4),
        },
        Run {
            offset: 70 << 20,
            len: 4096,
            fill: Fill::Random(5),
        },
        Run {
            offset: (100 << 20) - 1000,
            len: 1000,
            fill: Fill::Random(6),
        },
    ],
};

#[test]
fn d04_vmdk_qemu_img_layout_still_matches() {
    // What qemu-img writes today still imports as qemu reads it.
    let w = Work::new();
    let src = ova::prepare(w.root(), "src", &SEVERAL_TABLES, Source::Vmdk);
    let vmdk = fs::read(&src.file).expect("read vmdk");
    let gd = u64::from_le_bytes(vmdk[56..64].try_into().expect("8 bytes")) as usize * 512;
    assert!(
        u32::from_le_bytes(vmdk[gd + 12..gd + 16].try_into().expect("4 bytes")) != 0,
        "four grain tables"
    );
    let (ova, file) = package(&w, &vmdk, SEVERAL_TABLES.size);
    let qemu = qemu_reading(&w, &file);
    let (run, out) = import(&w, &ova, Target::Raw);
    run.assert_success();
    let dest = out.join("disk1.raw");
    image::assert_target(&qemu, &dest, Target::Raw, SEVERAL_TABLES.size);
    image::assert_target(&src.raw, &dest, Target::Raw, SEVERAL_TABLES.size);
}

/// `vmdk` with its header's gdOffset set to the sector its footer names,
/// as vmdktool writes it (it rewrites the header once the grain directory
/// is written).
fn header_names_directory(mut vmdk: Vec<u8>) -> Vec<u8> {
    let footer = vmdk.len() - 1024;
    let gd: [u8; 8] = vmdk[footer + 56..footer + 64].try_into().expect("8 bytes");
    assert_ne!(gd, [0xff; 8]);
    vmdk[56..64].copy_from_slice(&gd);
    vmdk
}

#[test]
fn d04_vmdk_vmdktool_layout_matches_qemu() {
    let w = Work::new();
    let grains = [(0, grain(1)), (3 * GRAIN_SECTORS, grain(2))];
    let vmdk = header_names_directory(vmware_vmdk(CAPACITY, &grains, |_, _| {}));
    let (ova, file) = package(&w, &vmdk, CAPACITY);
    let qemu = qemu_reading(&w, &file);
    assert_eq!(read_at(&qemu, 3 * GRAIN, GRAIN), grain(2));
    let (run, out) = import(&w, &ova, Target::Raw);
    run.assert_success();
    image::assert_target(&qemu, &out.join("disk1.raw"), Target::Raw, CAPACITY);
}

#[test]
fn d04_vmdk_vmdktool_layout_table_disagrees_refused() {
    let w = Work::new();
    let grains = [(0, grain(1)), (GRAIN_SECTORS, grain(2))];
    let vmdk = header_names_directory(vmware_vmdk(CAPACITY, &grains, |_, gt| gt.swap(0, 1)));
    let (ova, file) = package(&w, &vmdk, CAPACITY);
    assert_eq!(read_at(&qemu_reading(&w, &file), 0, GRAIN), grain(2));
    assert_refused(&w, &ova, &["grain table entry for lba 0 points to sector"]);
}
