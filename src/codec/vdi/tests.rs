//! Tests of the VDI decoder: images made by qemu-img and qemu-io judged by
//! qemu's own reading of them, hand-built images for the layouts qemu does
//! not write, split-point invariance, and one test per refusal.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::*;
use crate::codec::select::Decoder;
use crate::codec::test_support::{
    MemSink, decode_cut, qemu, qemu_reading, same_for_every_split, split_points,
};
use crate::codec::{DiskDecoder, SourceFormat};
use crate::error::ErrorKind;
use crate::test_support::Rng;

const MIB: usize = 1 << 20;

fn decoder(size: Option<u64>) -> impl Fn() -> VdiDecoder {
    move || match size {
        Some(n) => VdiDecoder::new().with_entry_size(n),
        None => VdiDecoder::new(),
    }
}

/// The leaf error of decoding `img` with its entry size (or without),
/// checked to be the same in random pieces.
fn refusal_with(img: &[u8], sized: bool) -> VdiError {
    let size = sized.then_some(img.len() as u64);
    let mut dec = decoder(size)();
    let mut sink = MemSink::default();
    let e = dec
        .feed(img, &mut sink)
        .and_then(|()| dec.finish(&mut sink))
        .expect_err("the image must be refused");
    let mut rng = Rng(img.len() as u64 + 3);
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < img.len() {
        at += 1 + rng.below(70_000) as usize;
        cuts.push(at.min(img.len()));
    }
    let pieces = decode_cut(&mut decoder(size)(), img, &cuts);
    assert_eq!(
        pieces.result,
        Err((e.kind(), e.one_line())),
        "refusal depends on the split"
    );
    std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<VdiError>())
        .cloned()
        .unwrap_or_else(|| panic!("not a VDI error: {e}"))
}

fn refusal(img: &[u8]) -> VdiError {
    refusal_with(img, true)
}

/// A VDI header as VirtualBox writes it (v1.1, 1 MiB blocks).
fn header(disk_size: u64, blocks: u32, bmap_at: u32, data_at: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let text = b"<<< Oracle VM VirtualBox Disk Image >>>\n";
    h[..text.len()].copy_from_slice(text);
    let mut put = |at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(0x40, SIGNATURE);
    put(0x44, VERSION);
    put(0x48, 0x190);
    put(0x4c, 1);
    put(0x154, bmap_at);
    put(0x158, data_at);
    put(0x168, 512);
    put(0x178, BLOCK_SIZE);
    put(0x180, blocks);
    h[0x170..0x178].copy_from_slice(&disk_size.to_le_bytes());
    h[0x188..0x198].copy_from_slice(&[0x11; 16]);
    h
}

/// Data of file block `n`.
fn block(n: u32) -> Vec<u8> {
    Rng(u64::from(n) + 100).bytes(MIB)
}

/// A VDI of `disk_size` whose map is `map`, map at 512, data after it,
/// with the first `data_blocks` file blocks written; and the disk it holds.
fn craft(disk_size: u64, map: &[u32], data_blocks: u32) -> (Vec<u8>, Vec<u8>) {
    let data_at = (512 + map.len() * 4).next_multiple_of(512);
    let mut img = header(disk_size, map.len() as u32, 512, data_at as u32).to_vec();
    for e in map {
        img.extend_from_slice(&e.to_le_bytes());
    }
    img.resize(data_at, 0);
    for n in 0..data_blocks {
        img.extend_from_slice(&block(n));
    }
    let mut disk = vec![0u8; disk_size.next_multiple_of(512) as usize];
    for (i, &e) in map.iter().enumerate() {
        if e < FIRST_UNALLOCATED && e < data_blocks {
            let start = i * MIB;
            let n = MIB.min(disk.len().saturating_sub(start));
            disk[start..start + n].copy_from_slice(&block(e)[..n]);
        }
    }
    (img, disk)
}

fn qemu_made(dir: &Path, name: &str, size: &str, writes: &[(u64, u64, u8)]) -> PathBuf {
    let path = dir.join(name);
    qemu(
        "qemu-img",
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "vdi".as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    );
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("write -P {p} {o} {l}"))
        .collect();
    let mut args: Vec<&OsStr> = vec!["-f".as_ref(), "vdi".as_ref()];
    for c in &cmds {
        args.push("-c".as_ref());
        args.push(c.as_ref());
    }
    args.push(path.as_os_str());
    qemu("qemu-io", &args);
    path
}

// ---------------------------------------------------------------- qemu

#[test]
fn qemu_small_every_split() {
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_made(
        dir.path(),
        "small.vdi",
        "64K",
        &[(0, 4096, 0x5a), (61440, 4096, 0xa5)],
    );
    let img = std::fs::read(&path).unwrap();
    let disk = qemu_reading(&path, "vdi");
    assert_eq!(disk.len(), 64 << 10);
    let h = Header::parse(img[..512].try_into().unwrap()).unwrap();
    assert_eq!((h.offset_bmap, h.offset_data, h.blocks), (512, 1024, 1));
    let cap_end = 1024 + disk.len();
    let points = split_points(
        img.len(),
        &[
            0..2048,
            cap_end - 600..cap_end + 600,
            img.len() - 600..img.len() + 1,
        ],
        4099,
    );
    let whole = same_for_every_split(decoder(Some(img.len() as u64)), &img, &points, 2048);
    assert_eq!(whole.result, Ok(()));
    assert_eq!(whole.capacity, Some(disk.len() as u64));
    assert!(whole.bytes == disk, "content differs from qemu's reading");
    let unsized_ = same_for_every_split(decoder(None), &img, &[1024, 2000], 0);
    assert_eq!(unsized_, whole);
}

#[test]
fn qemu_blocks_out_of_guest_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_made(
        dir.path(),
        "order.vdi",
        "4M",
        &[
            (3 << 20, 4096, 0x41),
            (100, 4096, 0x42),
            ((1 << 20) + 7, 600, 0x43),
        ],
    );
    let img = std::fs::read(&path).unwrap();
    let map: Vec<u32> = (0..4)
        .map(|i| u32::from_le_bytes(img[512 + i * 4..516 + i * 4].try_into().unwrap()))
        .collect();
    assert_eq!(map, [1, 2, 0xffff_ffff, 0]);
    let disk = qemu_reading(&path, "vdi");
    let whole = same_for_every_split(decoder(Some(img.len() as u64)), &img, &[], 0);
    assert_eq!(whole.result, Ok(()));
    assert!(whole.bytes == disk, "content differs from qemu's reading");
}

#[test]
fn qemu_dynamic_and_static_are_read_as_qemu_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = vec![0u8; 5 * MIB + 3 * 512];
    let mut rng = Rng(5);
    for (i, chunk) in raw.chunks_mut(96 << 10).enumerate() {
        if i % 4 == 1 || i == 0 {
            let n = chunk.len().min(7000 + i * 131);
            chunk[..n].copy_from_slice(&rng.bytes(n));
        }
    }
    let src = dir.path().join("src.raw");
    std::fs::write(&src, &raw).unwrap();
    for (name, opts) in [
        ("dyn.vdi", &[][..]),
        ("static.vdi", &["-o", "static=on"][..]),
    ] {
        let out = dir.path().join(name);
        let mut args: Vec<&OsStr> = ["convert", "-q", "-f", "raw", "-O", "vdi"]
            .iter()
            .map(OsStr::new)
            .collect();
        args.extend(opts.iter().map(OsStr::new));
        args.push(src.as_os_str());
        args.push(out.as_os_str());
        qemu("qemu-img", &args);
        let img = std::fs::read(&out).unwrap();
        let disk = qemu_reading(&out, "vdi");
        assert_eq!(disk, raw, "{name}: qemu reads the source back");
        let make = || Decoder::sniffing_any(Some(img.len() as u64), 1 << 40);
        let whole = same_for_every_split(make, &img, &[512, 513, 1024, 1536], 0);
        assert_eq!(whole.result, Ok(()), "{name}");
        assert_eq!(whole.capacity, Some(raw.len() as u64));
        assert!(
            whole.bytes == disk,
            "{name}: content differs from qemu's reading"
        );
        let mut d = make();
        decode_cut(&mut d, &img, &[]);
        assert_eq!(d.format(), Some(SourceFormat::Vdi));
        let h = Header::parse(img[..512].try_into().unwrap()).unwrap();
        assert_eq!(h.image_type, if name == "dyn.vdi" { 1 } else { 2 });
    }
}

// ---------------------------------------------------------------- crafted

#[test]
fn crafted_map_with_discarded_blocks_and_trailing_bytes() {
    // Guest block 0 in file block 1, block 1 discarded, block 2 in file
    // block 0, block 3 never written; a disk that ends inside block 2.
    let (mut img, disk) = craft(2 * MIB as u64 + 1000, &[1, 0xffff_fffe, 0], 2);
    img.extend_from_slice(b"bytes qemu never reads");
    let whole = same_for_every_split(
        decoder(Some(img.len() as u64)),
        &img,
        &split_points(
            img.len(),
            &[0..64, 500..530, 1000..1040, img.len() - 30..img.len() + 1],
            65537,
        ),
        1100,
    );
    assert_eq!(whole.result, Ok(()));
    // The size is rounded up to whole sectors, as qemu reads it.
    assert_eq!(whole.capacity, Some(2 * MIB as u64 + 1024));
    assert_eq!(whole.bytes, disk);
    assert!(whole.bytes[MIB..2 * MIB].iter().all(|&b| b == 0));
}

// ---------------------------------------------------------------- refusals

#[test]
fn header_fields_as_qemu_checks_them() {
    let (img, _) = craft(MIB as u64, &[0xffff_ffff], 0);
    let with = |at: usize, v: u32| {
        let mut i = img.clone();
        i[at..at + 4].copy_from_slice(&v.to_le_bytes());
        i
    };
    let cases = [
        (with(0x44, 0x0001_0000), 0x44, "version 1.0"),
        (with(0x154, 700), 0x154, "block map offset 700"),
        (with(0x158, 1000), 0x158, "data offset 1000"),
        (with(0x168, 4096), 0x168, "sector size 4096"),
        (with(0x178, 2 << 20), 0x178, "block size 2097152"),
        (with(0x4c, 3), 0x4c, "image type 3 (undo)"),
        (with(0x4c, 4), 0x4c, "image type 4 (differencing)"),
        (with(0x4c, 0), 0x4c, "image type 0;"),
        (with(0x4c, 7), 0x4c, "image type 7;"),
    ];
    for (img, offset, what) in cases {
        let e = refusal(&img);
        assert_eq!(e.offset(), Some(offset));
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains(what), "{e}");
    }
    // Both types qemu-img writes are read.
    let whole = |i: &[u8]| decode_cut(&mut decoder(Some(i.len() as u64))(), i, &[]);
    for t in [1, 2] {
        let o = whole(&with(0x4c, t));
        assert!(o.result.is_ok(), "type {t}: {:?}", o.result);
        assert_eq!(o, whole(&img));
    }
    let e = refusal(&with(0x40, 0x1234));
    assert!(matches!(e, VdiError::BadSignature { found: 0x1234, .. }));
    // A disk larger than its map holds.
    let mut big = img.clone();
    big[0x170..0x178].copy_from_slice(&(MIB as u64 + 512).to_le_bytes());
    assert!(matches!(
        refusal(&big),
        VdiError::Invalid {
            field: "disk size",
            ..
        }
    ));
    let e = refusal(&with(0x154, 0));
    assert_eq!(
        e,
        VdiError::MapPlacement {
            offset: 0x154,
            at: 0
        }
    );
}

#[test]
fn linked_images_are_refused() {
    let (img, _) = craft(MIB as u64, &[0xffff_ffff], 0);
    for (at, field) in [(0x1b8, "parent"), (0x1a8, "link")] {
        let mut i = img.clone();
        i[at + 3] = 1;
        let e = refusal(&i);
        assert_eq!(
            e,
            VdiError::Linked {
                offset: at as u64,
                field
            }
        );
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }
}

#[test]
fn capacity_over_the_limit() {
    let tib = 1u64 << 40;
    let blocks = (65 * tib / MIB as u64) as u32;
    let img = header(65 * tib, blocks, 512, 512 + blocks * 4).to_vec();
    let e = refusal(&img);
    assert_eq!(
        e,
        VdiError::CapacityLimit {
            offset: 0x170,
            bytes: 65 * tib,
            limit: limits::MAX_CAPACITY
        }
    );
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    let too_many = header(MIB as u64, MAX_BLOCKS + 1, 512, 4096);
    assert!(matches!(
        refusal(&too_many),
        VdiError::Unsupported { offset: 0x180, .. }
    ));
}

#[test]
fn a_map_entry_inside_the_header_is_refused() {
    let (mut img, _) = craft(2 * MIB as u64, &[0xffff_ffff, 0], 1);
    img[0x158..0x15c].copy_from_slice(&0u32.to_le_bytes());
    let e = refusal(&img);
    assert_eq!(
        e,
        VdiError::Blocks(BlockError::InsideMetadata {
            offset: 516,
            table: "block map",
            guest: MIB as u64,
            start: 0,
            what: "header"
        })
    );
    assert_eq!(e.kind(), ErrorKind::CorruptImage);
}

#[test]
fn blocks_before_their_map_are_refused_naming_the_layout() {
    // Map at 2 MiB + 512, file block 0 at 1024.
    let mut img = header(MIB as u64, 1, 2 * MIB as u32 + 512, 1024).to_vec();
    img.resize(1024, 0);
    img.extend_from_slice(&block(0));
    img.resize(2 * MIB + 512, 0);
    img.extend_from_slice(&0u32.to_le_bytes());
    let e = refusal(&img);
    assert!(
        matches!(
            e,
            VdiError::Blocks(BlockError::BeforeTable { start: 1024, .. })
        ),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

#[test]
fn a_block_number_beyond_the_image_is_refused() {
    let (img, _) = craft(2 * MIB as u64, &[0, 7], 1);
    assert_eq!(
        refusal(&img),
        VdiError::BlockNumber {
            offset: 516,
            guest: MIB as u64,
            number: 7,
            blocks: 2
        }
    );
}

#[test]
fn a_block_beyond_the_entry_is_refused_before_any_data() {
    let (img, _) = craft(3 * MIB as u64, &[0, 2, 1], 2);
    let e = refusal(&img);
    assert!(matches!(
        e,
        VdiError::Blocks(BlockError::OutsideEntry {
            guest: 1_048_576,
            ..
        })
    ));
    let out = decode_cut(&mut decoder(Some(img.len() as u64))(), &img, &[]);
    assert!(
        out.bytes.iter().all(|&b| b == 0),
        "no data before the refusal"
    );
    // Without the entry's size, the end of the image says it.
    let e = refusal_with(&img, false);
    assert!(
        matches!(
            e,
            VdiError::Blocks(BlockError::Truncated {
                guest: 1_048_576,
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn two_entries_for_one_block_are_refused() {
    let (img, _) = craft(2 * MIB as u64, &[0, 0], 1);
    assert!(matches!(
        refusal(&img),
        VdiError::Blocks(BlockError::Overlap {
            first: 0,
            second: 1_048_576,
            ..
        })
    ));
}

#[test]
fn truncated_images_name_what_is_missing() {
    let (img, _) = craft(2 * MIB as u64 - 512, &[1, 0], 2);
    for (len, what) in [
        (100, "header"),
        (514, "block map"),
        (1000, "block for guest offset 1048576"),
        (MIB + 1200, "block for guest offset 0"),
    ] {
        let out = decode_cut(&mut VdiDecoder::new(), &img[..len], &[]);
        let (kind, line) = out.result.unwrap_err();
        assert_eq!(kind, ErrorKind::CorruptImage, "{line}");
        assert!(line.contains(what), "cut at {len}: {line}");
        assert!(line.starts_with(&format!("at byte {len}: ")), "{line}");
    }
}

#[test]
fn errors_are_sticky() {
    let mut dec = VdiDecoder::new();
    let mut sink = MemSink::default();
    assert!(dec.feed(&[0u8; 600], &mut sink).is_err());
    let again = dec.feed(b"more", &mut sink).unwrap_err();
    assert!(
        again.to_string().contains("after an earlier error"),
        "{again}"
    );
    assert!(dec.finish(&mut sink).is_err());
}

#[test]
fn fuzz_entry_survives_mutations() {
    // A small disk: one map entry, one block.
    let (img, _) = craft(4096, &[0], 1);
    let img = &img[..1024 + 8192];
    let mut rng = Rng(17);
    for _ in 0..300 {
        let mut m = img.to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(1100) as usize;
            m[at] = rng.next() as u8;
        }
        fuzz_entry(&m);
    }
    fuzz_entry(img);
    fuzz_entry(&[]);
}
