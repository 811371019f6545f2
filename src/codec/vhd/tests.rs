//! Tests of the VHD decoders: images made by qemu-img and qemu-io judged
//! by qemu's own reading of them, hand-built images for the layouts qemu
//! does not write, split-point invariance, and one test per refusal.

use std::ffi::OsStr;
use std::path::Path;

use super::*;
use crate::codec::select::Decoder;
use crate::codec::test_support::{
    Outcome, decode_cut, qemu, qemu_reading, same_for_every_split, split_points,
};
use crate::codec::{DiskDecoder, SourceFormat};
use crate::error::ErrorKind;
use crate::test_support::Rng;

// ---------------------------------------------------------------- helpers

fn decoder(size: Option<u64>) -> impl Fn() -> VhdDynamicDecoder {
    move || match size {
        Some(n) => VhdDynamicDecoder::new().with_entry_size(n),
        None => VhdDynamicDecoder::new(),
    }
}

fn decode(img: &[u8]) -> Outcome {
    decode_cut(&mut decoder(Some(img.len() as u64))(), img, &[])
}

/// The leaf error of decoding `img` (with its entry size), checked to be
/// the same in random pieces.
fn refusal(img: &[u8]) -> VhdError {
    let mut dec = VhdDynamicDecoder::new().with_entry_size(img.len() as u64);
    let mut sink = crate::codec::test_support::MemSink::default();
    let e = dec
        .feed(img, &mut sink)
        .and_then(|()| dec.finish(&mut sink))
        .expect_err("the image must be refused");
    let leaf = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<VhdError>())
        .cloned()
        .unwrap_or_else(|| panic!("not a VHD error: {e}"));
    let whole = decode(img);
    let mut rng = Rng(img.len() as u64);
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < img.len() {
        at += 1 + rng.below(900) as usize;
        cuts.push(at.min(img.len()));
    }
    let pieces = decode_cut(&mut decoder(Some(img.len() as u64))(), img, &cuts);
    assert_eq!(pieces.result, whole.result, "refusal depends on the split");
    assert_eq!(whole.result.as_ref().unwrap_err().1, e.one_line());
    leaf
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites a footer's checksum after an edit.
fn reseal(f: &mut [u8]) {
    put32(f, 64, 0);
    let sum = f[..512]
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    put32(f, 64, !sum);
}

/// A footer of `kind` for a disk of `size` bytes, sized by its current
/// size (creator `qem2`).
fn footer(size: u64, kind: u32, data_offset: u64) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    f[..8].copy_from_slice(COOKIE);
    put32(&mut f, 8, 2);
    put32(&mut f, 12, 0x0001_0000);
    put64(&mut f, 16, data_offset);
    f[28..32].copy_from_slice(b"qem2");
    f[36..40].copy_from_slice(b"Wi2k");
    put64(&mut f, 40, size);
    put64(&mut f, 48, size);
    f[56..60].copy_from_slice(&[0xff, 0xff, 16, 255]);
    put32(&mut f, 60, kind);
    reseal(&mut f);
    f
}

/// A dynamic VHD laid out by hand.
#[derive(Debug, Clone)]
struct Craft {
    size: u64,
    block_size: u32,
    header_at: u64,
    table_at: u64,
    entries: u32,
    /// `(guest block, sector)` of each allocated block, in file order.
    blocks: Vec<(u32, u32)>,
    /// Bytes after the last block before the footer.
    gap_before_footer: usize,
}

impl Craft {
    /// A 10 KiB disk in 4 KiB blocks: blocks 2, 0 (in that file order),
    /// block 1 unallocated.
    fn small() -> Craft {
        Craft {
            size: 10 * 1024,
            block_size: 4096,
            header_at: 512,
            table_at: 1536,
            entries: 3,
            blocks: vec![(2, 5), (0, 14)],
            gap_before_footer: 0,
        }
    }

    fn bitmap(&self) -> usize {
        (self.block_size as usize / 4096).next_multiple_of(512)
    }

    /// Data of guest block `g`.
    fn data(&self, g: u32) -> Vec<u8> {
        Rng(u64::from(g) + 1).bytes(self.block_size as usize)
    }

    /// The image and the disk it holds. Blocks are written first and the
    /// metadata over them, so that a block placed over metadata leaves
    /// the metadata readable; the footer copy is written last.
    fn build(&self) -> (Vec<u8>, Vec<u8>) {
        let mut img = Vec::new();
        let put = |img: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            if img.len() < at + bytes.len() {
                img.resize(at + bytes.len(), 0);
            }
            img[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let mut disk = vec![0u8; self.size.min(1 << 20) as usize];
        for &(g, sector) in &self.blocks {
            let at = sector as usize * 512;
            put(&mut img, at, &vec![0xff; self.bitmap()]);
            let data = self.data(g);
            put(&mut img, at + self.bitmap(), &data);
            let start = g as usize * self.block_size as usize;
            if start < disk.len() {
                let n = data.len().min(disk.len() - start);
                disk[start..start + n].copy_from_slice(&data[..n]);
            }
        }
        let mut bat = vec![0xffu8; (self.entries as usize * 4).next_multiple_of(512)];
        for &(g, sector) in &self.blocks {
            put32(&mut bat, g as usize * 4, sector);
        }
        put(&mut img, self.table_at as usize, &bat);
        let mut header = vec![0u8; 1024];
        header[..8].copy_from_slice(b"cxsparse");
        put64(&mut header, 8, u64::MAX);
        put64(&mut header, 16, self.table_at);
        put32(&mut header, 24, 0x0001_0000);
        put32(&mut header, 28, self.entries);
        put32(&mut header, 32, self.block_size);
        put(&mut img, self.header_at as usize, &header);
        put(&mut img, 0, &footer(self.size, 3, self.header_at));
        img.resize(img.len() + self.gap_before_footer, 0x5a);
        img.extend_from_slice(&footer(self.size, 3, self.header_at));
        (img, disk)
    }
}

/// `qemu-img create -f vpc` of `size`, then qemu-io's `writes` (`offset`,
/// `length`, `pattern`) in the order given.
fn qemu_made(dir: &Path, name: &str, size: &str, writes: &[(u64, u64, u8)]) -> std::path::PathBuf {
    let path = dir.join(name);
    qemu(
        "qemu-img",
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "vpc".as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    );
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("write -P {p} {o} {l}"))
        .collect();
    let mut args: Vec<&OsStr> = vec!["-f".as_ref(), "vpc".as_ref()];
    for c in &cmds {
        args.push("-c".as_ref());
        args.push(c.as_ref());
    }
    args.push(path.as_os_str());
    qemu("qemu-io", &args);
    path
}

/// A raw disk with scattered data and holes.
fn scattered(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut rng = Rng(77);
    for (i, chunk) in v.chunks_mut(64 << 10).enumerate() {
        if i % 5 == 1 || i % 7 == 3 {
            let n = chunk.len().min(5000 + i * 97);
            chunk[..n].copy_from_slice(&rng.bytes(n));
        }
    }
    v
}

fn convert(dir: &Path, raw: &[u8], name: &str, opts: &[&str]) -> std::path::PathBuf {
    let src = dir.join("src.raw");
    std::fs::write(&src, raw).unwrap();
    let out = dir.join(name);
    let mut args: Vec<&OsStr> = vec![
        "convert".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "vpc".as_ref(),
    ];
    args.extend(opts.iter().map(OsStr::new));
    args.push(src.as_os_str());
    args.push(out.as_os_str());
    qemu("qemu-img", &args);
    out
}

// ---------------------------------------------------------------- qemu

#[test]
fn qemu_small_dynamic_every_split() {
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_made(
        dir.path(),
        "small.vhd",
        "64K",
        &[(0, 4096, 0x5a), (61440, 5000, 0xa5)],
    );
    let img = std::fs::read(&path).unwrap();
    let disk = qemu_reading(&path, "vpc");
    // qemu rounds 64 KiB up to a CHS geometry, and sizes by it.
    assert_eq!(disk.len(), 17 * 4 * 2 * 512);
    // Footer, header, BAT, then the block: bitmap and data.
    let data = 2048 + 512;
    let points = split_points(
        img.len(),
        &[
            0..data + 1024,
            data + disk.len() - 600..data + disk.len() + 600,
            img.len() - 1600..img.len() + 1,
        ],
        4099,
    );
    let whole = same_for_every_split(decoder(Some(img.len() as u64)), &img, &points, 3000);
    assert_eq!(whole.result, Ok(()));
    assert_eq!(whole.capacity, Some(disk.len() as u64));
    assert!(whole.bytes == disk, "content differs from qemu's reading");
    // Without the entry's size: the same disk.
    let unsized_ = same_for_every_split(decoder(None), &img, &[data, img.len() - 512], 0);
    assert_eq!(unsized_, whole);
}

#[test]
fn qemu_blocks_out_of_guest_order() {
    let dir = tempfile::tempdir().unwrap();
    // Blocks are allocated in the order written: guest blocks 2, 0, 1.
    let path = qemu_made(
        dir.path(),
        "order.vhd",
        "6M",
        &[
            (4 << 20, 4096, 0x41),
            (512, 4096, 0x42),
            ((2 << 20) + 99, 512, 0x43),
        ],
    );
    let img = std::fs::read(&path).unwrap();
    let bat: Vec<u32> = (0..3)
        .map(|i| u32::from_be_bytes(img[1536 + i * 4..1540 + i * 4].try_into().unwrap()))
        .collect();
    assert!(bat[2] < bat[0] && bat[0] < bat[1], "BAT {bat:?}");
    let disk = qemu_reading(&path, "vpc");
    let whole = same_for_every_split(decoder(Some(img.len() as u64)), &img, &[], 0);
    assert_eq!(whole.result, Ok(()));
    assert!(whole.bytes == disk, "content differs from qemu's reading");
}

#[test]
fn qemu_converted_images_are_read_as_qemu_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let raw = scattered(5 << 20);
    for (name, opts, creator) in [
        ("chs.vhd", &[][..], b"qemu"),
        ("sized.vhd", &["-o", "force_size=on"][..], b"qem2"),
    ] {
        let path = convert(dir.path(), &raw, name, opts);
        let img = std::fs::read(&path).unwrap();
        let disk = qemu_reading(&path, "vpc");
        let mut dec = VhdDynamicDecoder::new().with_entry_size(img.len() as u64);
        let out = decode_cut(&mut dec, &img, &[]);
        assert_eq!(out.result, Ok(()), "{name}");
        assert_eq!(&dec.footer().unwrap().creator_app, creator);
        assert_eq!(dec.capacity(), Some(disk.len() as u64), "{name}");
        assert!(
            out.bytes == disk,
            "{name}: content differs from qemu's reading"
        );
        assert!(disk[..raw.len()] == raw[..]);
        let pieces = same_for_every_split(decoder(None), &img, &[], 0);
        assert_eq!(pieces, out, "{name}");
    }
}

#[test]
fn qemu_fixed_vhd_is_a_raw_entry_with_its_footer_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let raw = scattered(96 << 10);
    for opts in [
        &["-o", "subformat=fixed"][..],
        &["-o", "subformat=fixed,force_size=on"],
    ] {
        let path = convert(dir.path(), &raw, "fixed.vhd", opts);
        let img = std::fs::read(&path).unwrap();
        let disk = qemu_reading(&path, "vpc");
        assert_eq!(img.len(), disk.len() + 512);
        let make = || Decoder::sniffing_any(Some(img.len() as u64), 1 << 40);
        let points = split_points(img.len(), &[0..600, img.len() - 1100..img.len() + 1], 4099);
        let out = same_for_every_split(make, &img, &points, 1200);
        assert_eq!(out.result, Ok(()));
        assert!(
            out.bytes == disk,
            "{opts:?}: content differs from qemu's reading"
        );
        let mut d = make();
        decode_cut(&mut d, &img, &[]);
        assert_eq!(d.format(), Some(SourceFormat::Vhd), "{opts:?}");
    }
}

// ---------------------------------------------------------------- crafted

#[test]
fn crafted_every_split_point() {
    let mut c = Craft::small();
    c.gap_before_footer = 700;
    let (img, disk) = c.build();
    let all: Vec<usize> = (0..=img.len()).collect();
    let whole = same_for_every_split(decoder(Some(img.len() as u64)), &img, &all, img.len());
    assert_eq!(whole.result, Ok(()));
    assert_eq!(whole.bytes, disk);
    // Block 1 is a hole; block 2's data past the capacity is not read.
    assert!(disk[4096..8192].iter().all(|&b| b == 0));
    assert_eq!(decode_cut(&mut decoder(None)(), &img, &[]), whole);
}

#[test]
fn a_disk_of_no_blocks() {
    let mut c = Craft::small();
    c.blocks.clear();
    let (img, disk) = c.build();
    let out = same_for_every_split(decoder(Some(img.len() as u64)), &img, &[], img.len());
    assert_eq!(out.result, Ok(()));
    assert_eq!(out.bytes, disk);
    c.entries = 0;
    c.size = 0;
    let (img, _) = c.build();
    let out = decode(&img);
    assert_eq!((out.result, out.capacity), (Ok(()), Some(0)));
}

// ---------------------------------------------------------------- refusals

#[test]
fn differencing_and_fixed_footers_at_the_start_are_refused() {
    let (mut img, _) = Craft::small().build();
    put32(&mut img, 60, 4);
    reseal(&mut img);
    let e = refusal(&img);
    assert_eq!(e, VhdError::Differencing { offset: 60 });
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("parent image"), "{e}");
    put32(&mut img, 60, 2);
    reseal(&mut img);
    assert!(matches!(refusal(&img), VhdError::DiskType { found: 2, .. }));
    put32(&mut img, 60, 7);
    reseal(&mut img);
    assert!(matches!(refusal(&img), VhdError::DiskType { found: 7, .. }));
}

#[test]
fn differencing_image_made_by_qemu_is_refused() {
    // qemu-img writes no differencing VHD; make its dynamic image one.
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_made(dir.path(), "child.vhd", "64K", &[(0, 512, 1)]);
    let mut img = std::fs::read(&path).unwrap();
    put32(&mut img, 60, 4);
    reseal(&mut img);
    let e = crate::Error::from(refusal(&img));
    assert_eq!(e.kind().exit_code(), 6);
    assert!(
        e.one_line().starts_with("at byte 60: differencing VHD"),
        "{}",
        e.one_line()
    );
}

#[test]
fn footer_checksum_and_cookie() {
    let (mut img, _) = Craft::small().build();
    img[100] ^= 0x10;
    let e = refusal(&img);
    assert!(matches!(e, VhdError::BadChecksum { offset: 0, .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    let (mut img, _) = Craft::small().build();
    img[512] = b'C';
    let e = refusal(&img);
    assert!(
        matches!(
            e,
            VhdError::Header {
                offset: 512,
                field: "cookie",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn capacity_over_the_limit() {
    let mut c = Craft::small();
    c.size = 2041 << 30;
    let (img, _) = c.build();
    let e = refusal(&img);
    assert_eq!(
        e,
        VhdError::CapacityLimit {
            offset: 48,
            bytes: 2041 << 30,
            limit: 0xff00_0000 * 512
        }
    );
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    // 2040 GiB itself is what qemu reads; then the BAT must cover it.
    c.size = 0xff00_0000 * 512;
    let (img, _) = c.build();
    assert!(matches!(
        refusal(&img),
        VhdError::Header {
            field: "max table entries",
            ..
        }
    ));
}

#[test]
fn header_fields_as_qemu_checks_them() {
    let mut c = Craft::small();
    c.block_size = 3000;
    let (img, _) = c.build();
    assert!(matches!(
        refusal(&img),
        VhdError::Header {
            field: "block size",
            ..
        }
    ));
    let mut c = Craft::small();
    c.entries = 2;
    let (img, _) = c.build();
    let e = refusal(&img);
    assert!(e.to_string().contains("do not cover the disk size"), "{e}");
}

#[test]
fn metadata_out_of_one_pass_order_is_refused() {
    let mut c = Craft::small();
    c.header_at = 256;
    let (img, _) = c.build();
    let e = refusal(&img);
    assert!(
        matches!(
            e,
            VhdError::Placement {
                what: "dynamic header",
                at: 256,
                ..
            }
        ),
        "{e}"
    );
    let mut c = Craft::small();
    c.table_at = 768;
    let (img, _) = c.build();
    let e = refusal(&img);
    assert!(
        matches!(
            e,
            VhdError::Placement {
                what: "BAT",
                at: 768,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

#[test]
fn a_bat_entry_inside_the_header_is_refused() {
    for (sector, what) in [(1, "dynamic header"), (0, "footer copy"), (3, "BAT")] {
        let mut c = Craft::small();
        c.blocks[1].1 = sector;
        let (img, _) = c.build();
        let e = refusal(&img);
        assert_eq!(
            e,
            VhdError::Blocks(BlockError::InsideMetadata {
                offset: 1536,
                table: "BAT",
                guest: 0,
                start: u64::from(sector) * 512,
                what
            }),
        );
        assert_eq!(e.kind(), ErrorKind::CorruptImage);
    }
}

#[test]
fn blocks_before_their_table_are_refused_naming_the_layout() {
    let mut c = Craft::small();
    c.table_at = 8192;
    c.blocks = vec![(0, 4), (2, 20)];
    let (img, _) = c.build();
    let e = refusal(&img);
    assert!(
        matches!(
            e,
            VhdError::Blocks(BlockError::BeforeTable { start: 2048, .. })
        ),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("cannot be read in one pass"), "{e}");
}

#[test]
fn a_block_beyond_the_entry_is_refused_before_any_data() {
    let mut c = Craft::small();
    c.blocks.push((1, 200));
    let (img, _) = c.build();
    // The image without its last block: the BAT still names it.
    let cut_at = 200 * 512;
    let mut cut = img[..cut_at].to_vec();
    cut.extend_from_slice(&img[img.len() - 512..]);
    let e = refusal(&cut);
    assert!(
        matches!(
            e,
            VhdError::Blocks(BlockError::OutsideEntry { guest: 4096, .. })
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.ends_with("less its 512-byte footer"), "{msg}");
    let out = decode(&cut);
    assert!(
        out.bytes.iter().all(|&b| b == 0),
        "no data before the refusal"
    );
    // Not knowing the entry's size, the end of the image says it.
    let late = decode_cut(&mut VhdDynamicDecoder::new(), &cut, &[]);
    let (kind, line) = late.result.unwrap_err();
    assert_eq!(kind, ErrorKind::CorruptImage);
    assert!(
        line.contains("image ends before the end of the block for guest offset 4096"),
        "{line}"
    );
}

#[test]
fn overlapping_blocks_are_refused() {
    let mut c = Craft::small();
    c.blocks = vec![(2, 5), (0, 10)];
    let (img, _) = c.build();
    assert!(matches!(
        refusal(&img),
        VhdError::Blocks(BlockError::Overlap {
            first: 8192,
            second: 0,
            ..
        })
    ));
}

#[test]
fn truncated_images_name_what_is_missing() {
    let (img, _) = Craft::small().build();
    let cases = [
        (300, "footer copy"),
        (600, "dynamic header"),
        (1200, "BAT"),
        (1540, "BAT"),
        (1600, "block for guest offset 8192"),
        (2600, "block for guest offset 8192"),
        (8000, "block for guest offset 0"),
        (img.len() - 100, "footer that closes the image"),
    ];
    for (len, what) in cases {
        let out = decode_cut(&mut VhdDynamicDecoder::new(), &img[..len], &[]);
        let (kind, line) = out.result.unwrap_err();
        assert_eq!(kind, ErrorKind::CorruptImage, "{line}");
        assert!(line.contains(what), "cut at {len}: {line}");
        assert!(line.starts_with(&format!("at byte {len}: ")), "{line}");
    }
}

#[test]
fn the_image_must_end_with_its_footer() {
    let (img, _) = Craft::small().build();
    let mut other = img.clone();
    let n = other.len();
    put64(&mut other[n - 512..], 48, 8192);
    reseal(&mut other[n - 512..]);
    assert_eq!(
        refusal(&other),
        VhdError::FooterMismatch {
            offset: n as u64 - 512,
            field: "current size"
        }
    );
    let mut garbage = img.clone();
    garbage.truncate(n - 512);
    garbage.extend_from_slice(&[0u8; 512]);
    assert_eq!(
        refusal(&garbage),
        VhdError::NoFooter {
            offset: n as u64 - 512,
            place: "at the end of the image"
        }
    );
}

#[test]
fn errors_are_sticky() {
    let (mut img, _) = Craft::small().build();
    img[0] = b'x';
    let mut dec = VhdDynamicDecoder::new();
    let mut sink = crate::codec::test_support::MemSink::default();
    assert!(dec.feed(&img, &mut sink).is_err());
    let again = dec.feed(b"more", &mut sink).unwrap_err();
    assert!(
        again.to_string().contains("after an earlier error"),
        "{again}"
    );
    assert!(dec.finish(&mut sink).is_err());
}

#[test]
fn fuzz_entry_survives_mutations() {
    let (img, _) = Craft::small().build();
    let mut rng = Rng(41);
    for _ in 0..300 {
        let mut m = img.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(m.len() as u64) as usize;
            m[at] = rng.next() as u8;
        }
        if rng.below(3) == 0 {
            // Keep the footer copy sound, so mutations reach further.
            let mut f = [0u8; 512];
            f.copy_from_slice(&m[..512]);
            reseal(&mut f);
            m[..512].copy_from_slice(&f);
        }
        fuzz_entry(&m);
    }
    fuzz_entry(&img);
    fuzz_entry(&[]);
}

#[test]
fn footer_capacity_follows_qemu() {
    let mut f = footer(1 << 20, 3, 512);
    let parse = |f: &[u8; 512]| Footer::parse(f, 0, "at the start").unwrap();
    // qem2: the current size.
    assert_eq!(parse(&f).capacity(0), Ok(1 << 20));
    // qemu and vpc: the CHS geometry, unless it is the largest.
    f[28..32].copy_from_slice(b"qemu");
    reseal(&mut f);
    assert_eq!(parse(&f).capacity(0), Ok(1 << 20));
    f[56..60].copy_from_slice(&[0, 30, 4, 17]);
    reseal(&mut f);
    assert_eq!(parse(&f).capacity(0), Ok(30 * 4 * 17 * 512));
    f[28..32].copy_from_slice(b"vpc ");
    reseal(&mut f);
    assert_eq!(parse(&f).capacity(0), Ok(30 * 4 * 17 * 512));
    // Other creators (XenServer's tap, Hyper-V, Azure): the current size.
    for creator in [b"tap\0", b"win ", b"wa\0\0"] {
        f[28..32].copy_from_slice(creator);
        reseal(&mut f);
        assert_eq!(parse(&f).capacity(0), Ok(1 << 20), "{creator:?}");
    }
}
