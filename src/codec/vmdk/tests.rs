//! Tests of the streamOptimized decoder: images written by qemu-img and
//! compared with their raw source, a hand-built VMware-style stream with
//! GT/GD/footer/EOS markers, split-point invariance and one regression test
//! per validation rule.

use crate::test_support::Rng;
use std::io::Write;
use std::process::Command;

use flate2::Compression;
use flate2::write::ZlibEncoder;

use super::header::{GD_AT_END, NEWLINE_CHARS};
use super::*;
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::{Classify, ErrorKind};
use crate::limits;

// ---------------------------------------------------------------- helpers

/// What a decoding produced.
#[derive(Debug, Default, PartialEq)]
struct Decoded {
    capacity: Option<u64>,
    extents: Vec<(u64, Vec<u8>)>,
    zero_calls: usize,
}

impl ExtentSink for Decoded {
    fn capacity(&mut self, bytes: u64) -> crate::Result<()> {
        assert!(self.capacity.is_none() && self.extents.is_empty());
        self.capacity = Some(bytes);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
        let cap = self.capacity.expect("capacity first");
        assert!(offset + data.len() as u64 <= cap);
        self.extents.push((offset, data.to_vec()));
        Ok(())
    }

    fn zero(&mut self, _offset: u64, _len: u64) -> crate::Result<()> {
        self.zero_calls += 1;
        Ok(())
    }
}

impl Decoded {
    /// The disk as a reader would see it.
    fn disk(&self) -> Vec<u8> {
        let mut disk = vec![0u8; self.capacity.unwrap_or(0) as usize];
        for (off, data) in &self.extents {
            disk[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        disk
    }
}

fn leaf(e: &crate::Error) -> VmdkError {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<VmdkError>())
        .cloned()
        .unwrap_or_else(|| panic!("not a VmdkError: {e:?}"))
}

/// Decodes `data` cut at the ascending offsets `cuts`.
fn decode_cut(data: &[u8], cuts: &[usize]) -> Result<Decoded, VmdkError> {
    let mut dec = VmdkStreamDecoder::new();
    let mut sink = Decoded::default();
    let mut prev = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        dec.feed(&data[prev..cut], &mut sink)
            .map_err(|e| leaf(&e))?;
        prev = cut;
    }
    dec.finish(&mut sink).map_err(|e| leaf(&e))?;
    assert_eq!(dec.capacity(), sink.capacity);
    Ok(sink)
}

fn decode(data: &[u8]) -> Result<Decoded, VmdkError> {
    decode_cut(data, &[])
}

fn decode_err(data: &[u8]) -> VmdkError {
    decode(data).expect_err("decoding should fail")
}

/// Random cut points, pieces of 1 to `max` bytes.
fn random_cuts(len: usize, seed: u64, max: u64) -> Vec<usize> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut cuts = Vec::new();
    let mut at = 0;
    loop {
        at += (rng.next() % max + 1) as usize;
        if at >= len {
            return cuts;
        }
        cuts.push(at);
    }
}

/// Whole, in random pieces (small and large) and at every `stride`-th
/// split point: all identical.
fn assert_split_invariant(data: &[u8], stride: usize) -> Result<Decoded, VmdkError> {
    let whole = decode(data);
    for seed in 1..=4 {
        assert_eq!(decode_cut(data, &random_cuts(data.len(), seed, 7)), whole);
        assert_eq!(
            decode_cut(data, &random_cuts(data.len(), seed, 70_000)),
            whole
        );
    }
    for at in (0..=data.len()).step_by(stride) {
        assert_eq!(decode_cut(data, &[at]), whole, "split at {at}");
    }
    whole
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

fn pad_sector(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(512), 0);
}

// ---------------------------------------------------------------- qemu-img

/// Converts a raw image with qemu-img into a streamOptimized VMDK.
fn qemu_stream_optimized(raw: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let dst = dir.path().join("dst.vmdk");
    std::fs::write(&src, raw).unwrap();
    let status = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(&src)
        .arg(&dst)
        .status()
        .expect("qemu-img is required to run the VMDK tests");
    assert!(status.success(), "qemu-img convert failed");
    std::fs::read(&dst).unwrap()
}

const GRAIN64K: usize = 64 << 10;

/// A raw disk with data, holes, a partial grain and a capacity that is not
/// a grain multiple.
fn mixed_raw() -> Vec<u8> {
    let mut rng = Rng(7);
    let mut raw = vec![0u8; 3 * (1 << 20) + 40 * 1024];
    raw[..GRAIN64K].fill(0xab);
    let g5 = 5 * GRAIN64K;
    raw[g5..g5 + GRAIN64K].copy_from_slice(&rng.bytes(GRAIN64K));
    let g10 = 10 * GRAIN64K + 12 * 1024;
    raw[g10..g10 + 4096].fill(0xcd);
    raw[20 * GRAIN64K + 511] = 1;
    let tail = raw.len() - 40 * 1024;
    for (i, b) in raw[tail..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    raw
}

/// Every emitted extent covers a grain that holds data in `raw`: holes
/// are never emitted as zeros.
fn assert_no_hole_emitted(d: &Decoded, raw: &[u8]) {
    assert_eq!(d.zero_calls, 0);
    for (off, data) in &d.extents {
        let src = &raw[*off as usize..*off as usize + data.len()];
        assert!(src.iter().any(|&b| b != 0), "hole at {off} emitted");
    }
}

#[test]
fn qemu_mixed_image_matches_source() {
    let raw = mixed_raw();
    let vmdk = qemu_stream_optimized(&raw);
    let d = assert_split_invariant(&vmdk, 4099).unwrap();
    assert_eq!(d.capacity, Some(raw.len() as u64));
    assert_eq!(d.disk(), raw);
    assert_no_hole_emitted(&d, &raw);
    assert_eq!(d.extents.len(), 5);
}

#[test]
fn qemu_file_ending_after_last_grain_is_complete() {
    // qemu-img leaves zero sectors after the last grain (read as an
    // end-of-stream marker); without them the file simply ends.
    let raw = mixed_raw();
    let mut vmdk = qemu_stream_optimized(&raw);
    while vmdk.len() > 512 && vmdk[vmdk.len() - 512..].iter().all(|&b| b == 0) {
        vmdk.truncate(vmdk.len() - 512);
    }
    let d = decode(&vmdk).unwrap();
    assert_eq!(d.disk(), raw);
    // Ending inside the last grain's padding or data is truncation.
    let e = decode_err(&vmdk[..vmdk.len() - 1]);
    assert!(
        matches!(
            e,
            VmdkError::Truncated {
                what: "grain marker",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn qemu_all_zero_disk_emits_nothing() {
    let raw = vec![0u8; 2 << 20];
    let d = decode(&qemu_stream_optimized(&raw)).unwrap();
    assert_eq!(d.capacity, Some(2 << 20));
    assert!(d.extents.is_empty());
    assert_eq!(d.zero_calls, 0);
}

#[test]
fn qemu_incompressible_disk_matches_source() {
    let raw = Rng(99).bytes(1 << 20);
    let vmdk = qemu_stream_optimized(&raw);
    let d = decode_cut(&vmdk, &random_cuts(vmdk.len(), 3, 5000)).unwrap();
    assert_eq!(d.disk(), raw);
    assert_eq!(d.extents.len(), 16);
}

// ------------------------------------------------ hand-built VMware stream

const GRAIN_SECTORS: u64 = 8;
const CAP_SECTORS: u64 = 100;
const OVERHEAD_SECTORS: u64 = 4;
const DATA_START: usize = OVERHEAD_SECTORS as usize * 512;
const FLAGS: u32 = 0x0003_0001;

fn header_bytes(gd_offset: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(b"KDMV");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&FLAGS.to_le_bytes());
    h.extend_from_slice(&CAP_SECTORS.to_le_bytes());
    h.extend_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h.extend_from_slice(&1u64.to_le_bytes()); // descriptorOffset
    h.extend_from_slice(&1u64.to_le_bytes()); // descriptorSize
    h.extend_from_slice(&512u32.to_le_bytes()); // numGTEsPerGT
    h.extend_from_slice(&0u64.to_le_bytes()); // rgdOffset
    h.extend_from_slice(&gd_offset.to_le_bytes());
    h.extend_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
    h.push(0); // uncleanShutdown
    h.extend_from_slice(&NEWLINE_CHARS);
    h.extend_from_slice(&1u16.to_le_bytes()); // compressAlgorithm
    h.resize(512, 0);
    h
}

/// Writes streams the way VMware tools lay them out.
struct Builder {
    buf: Vec<u8>,
    /// (lba, file sector of the grain marker), for the grain table.
    grains: Vec<(u64, u64)>,
}

impl Builder {
    fn new() -> Self {
        let mut buf = header_bytes(GD_AT_END);
        buf.extend_from_slice(
            b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
              createType=\"streamOptimized\"\nRW 100 SPARSE \"disk.vmdk\"\n",
        );
        buf.resize(DATA_START, 0);
        Builder {
            buf,
            grains: Vec::new(),
        }
    }

    fn raw_grain(&mut self, lba: u64, compressed: &[u8]) -> &mut Self {
        self.grains.push((lba, self.buf.len() as u64 / 512));
        self.buf.extend_from_slice(&lba.to_le_bytes());
        self.buf
            .extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(compressed);
        pad_sector(&mut self.buf);
        self
    }

    fn grain(&mut self, lba: u64, data: &[u8]) -> &mut Self {
        self.raw_grain(lba, &zlib(data))
    }

    fn meta(&mut self, kind: u32, payload: &[u8]) -> &mut Self {
        let sectors = payload.len().div_ceil(512) as u64;
        self.buf.extend_from_slice(&sectors.to_le_bytes());
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.buf.extend_from_slice(&kind.to_le_bytes());
        pad_sector(&mut self.buf);
        self.buf.extend_from_slice(payload);
        pad_sector(&mut self.buf);
        self
    }

    /// Grain table, grain directory, footer and end-of-stream markers.
    fn vmware_tail(&mut self) -> &mut Self {
        let mut gt = vec![0u8; 512 * 4];
        for &(lba, sector) in &self.grains {
            let i = (lba / GRAIN_SECTORS) as usize * 4;
            gt[i..i + 4].copy_from_slice(&(sector as u32).to_le_bytes());
        }
        let gt_sector = self.buf.len() as u64 / 512 + 1;
        self.meta(1, &gt);
        let gd_sector = self.buf.len() as u64 / 512 + 1;
        let mut gd = (gt_sector as u32).to_le_bytes().to_vec();
        gd.resize(512, 0);
        self.meta(2, &gd);
        self.meta(3, &header_bytes(gd_sector));
        self.meta(0, &[]);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        self.buf.clone()
    }
}

/// The disk of the VMware-style sample, as raw bytes.
fn vmware_sample_raw() -> Vec<u8> {
    let mut raw = vec![0u8; CAP_SECTORS as usize * 512];
    raw[..4096].fill(0x11);
    for (i, b) in raw[3 * 4096..4 * 4096].iter_mut().enumerate() {
        *b = (i * 7 % 256) as u8;
    }
    // Last grain: sectors 96..100, half a grain.
    raw[96 * 512..].fill(0xee);
    raw
}

fn vmware_sample() -> Vec<u8> {
    let raw = vmware_sample_raw();
    Builder::new()
        .grain(0, &raw[..4096])
        .grain(24, &raw[3 * 4096..4 * 4096])
        .grain(96, &raw[96 * 512..])
        .vmware_tail()
        .bytes()
}

#[test]
fn vmware_stream_with_metadata_markers() {
    let vmdk = vmware_sample();
    let d = decode(&vmdk).unwrap();
    assert_eq!(d.capacity, Some(CAP_SECTORS * 512));
    assert_eq!(d.disk(), vmware_sample_raw());
    let offsets: Vec<u64> = d.extents.iter().map(|e| e.0).collect();
    assert_eq!(offsets, [0, 3 * 4096, 96 * 512]);
    assert_eq!(d.extents[2].1.len(), 2048);
}

#[test]
fn vmware_stream_every_split_point() {
    let vmdk = vmware_sample();
    let whole = assert_split_invariant(&vmdk, 1).unwrap();
    assert_eq!(whole.disk(), vmware_sample_raw());
}

#[test]
fn errors_do_not_depend_on_split_points() {
    let mut bomb = Builder::new();
    bomb.grain(0, &vec![0u8; 64 << 10]);
    let bomb = bomb.bytes();
    assert_split_invariant(&bomb, 1).unwrap_err();
    let vmdk = vmware_sample();
    let truncated = &vmdk[..vmdk.len() - 700];
    assert_split_invariant(truncated, 1).unwrap_err();
}

#[test]
fn trailing_zeros_after_eos_are_accepted() {
    let mut vmdk = vmware_sample();
    vmdk.resize(vmdk.len() + 10_000, 0);
    assert_eq!(decode(&vmdk).unwrap().disk(), vmware_sample_raw());
}

#[test]
fn last_grain_filled_to_a_whole_grain_with_zeros() {
    let mut data = vec![0xeeu8; 2048];
    data.resize(4096, 0);
    let vmdk = Builder::new().grain(96, &data).bytes();
    let d = decode(&vmdk).unwrap();
    assert_eq!(d.extents, [(96 * 512, vec![0xee; 2048])]);
}

#[test]
fn empty_stream_after_header_area() {
    let d = decode(&Builder::new().bytes()).unwrap();
    assert_eq!(d.capacity, Some(CAP_SECTORS * 512));
    assert!(d.extents.is_empty());
}

#[test]
fn grain_buffer_stays_one_grain() {
    let mut dec = VmdkStreamDecoder::new();
    let mut sink = Decoded::default();
    let mut b = Builder::new();
    b.grain(0, &vec![0u8; 4 << 20]);
    assert!(dec.feed(&b.bytes(), &mut sink).is_err());
    assert_eq!(dec.grain_buffer_capacity(), 4096 + 1);
}

// ------------------------------------------------------ header validation

fn patched(at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut v = vmware_sample();
    v[at..at + bytes.len()].copy_from_slice(bytes);
    v
}

fn assert_kind(e: &VmdkError, kind: ErrorKind) {
    assert_eq!(e.kind(), kind, "{e}");
    // Lifted into the crate error with the same kind.
    assert_eq!(crate::Error::from(e.clone()).kind(), kind);
}

#[test]
fn bad_magic() {
    let e = decode_err(&patched(0, b"KDMW"));
    assert_eq!(
        e,
        VmdkError::BadMagic {
            offset: 0,
            found: *b"KDMW"
        }
    );
    assert_kind(&e, ErrorKind::InvalidFormat);
}

#[test]
fn bad_version() {
    let e = decode_err(&patched(4, &4u32.to_le_bytes()));
    assert_eq!(
        e,
        VmdkError::UnsupportedVersion {
            offset: 4,
            version: 4
        }
    );
    assert_kind(&e, ErrorKind::Unsupported);
    assert!(
        decode_err(&patched(4, &0u32.to_le_bytes()))
            .to_string()
            .contains("version 0")
    );
    for v in [1u32, 2] {
        decode(&patched(4, &v.to_le_bytes())).unwrap();
    }
}

#[test]
fn monolithic_sparse_flags_are_unsupported() {
    for flags in [0x0000_0003u32, 0x0001_0001, 0x0002_0001] {
        let e = decode_err(&patched(8, &flags.to_le_bytes()));
        assert_eq!(e, VmdkError::NotStreamOptimized { offset: 8, flags });
        assert_kind(&e, ErrorKind::Unsupported);
    }
}

#[test]
fn newline_characters_altered() {
    let e = decode_err(&patched(73, b"\n \n\n"));
    assert_eq!(
        e,
        VmdkError::NewlineCorrupted {
            offset: 73,
            found: *b"\n \n\n"
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
}

#[test]
fn compress_algorithm_not_deflate() {
    let e = decode_err(&patched(77, &0u16.to_le_bytes()));
    assert_eq!(
        e,
        VmdkError::UnsupportedCompression {
            offset: 77,
            algorithm: 0
        }
    );
    assert_kind(&e, ErrorKind::Unsupported);
}

#[test]
fn grain_size_rules() {
    for sectors in [0u64, 4, 12, 127] {
        let e = decode_err(&patched(20, &sectors.to_le_bytes()));
        assert_eq!(
            e,
            VmdkError::BadGrainSize {
                offset: 20,
                sectors
            }
        );
        assert_kind(&e, ErrorKind::InvalidFormat);
    }
    let sectors = limits::MAX_GRAIN_SIZE / 512 * 2;
    let e = decode_err(&patched(20, &sectors.to_le_bytes()));
    assert_eq!(
        e,
        VmdkError::GrainSizeLimit {
            offset: 20,
            sectors,
            limit: limits::MAX_GRAIN_SIZE
        }
    );
    assert_kind(&e, ErrorKind::LimitExceeded);
}

#[test]
fn capacity_over_limit() {
    let sectors = limits::MAX_CAPACITY / 512 + 1;
    let e = decode_err(&patched(12, &sectors.to_le_bytes()));
    assert_eq!(
        e,
        VmdkError::CapacityLimit {
            offset: 12,
            sectors,
            limit: limits::MAX_CAPACITY
        }
    );
    assert_kind(&e, ErrorKind::LimitExceeded);
}

#[test]
fn overhead_inside_header() {
    for sectors in [0u64, u64::MAX / 256] {
        let e = decode_err(&patched(64, &sectors.to_le_bytes()));
        assert_eq!(
            e,
            VmdkError::BadOverhead {
                offset: 64,
                sectors
            }
        );
        assert_kind(&e, ErrorKind::InvalidFormat);
    }
}

#[test]
fn capacity_is_announced_before_any_grain() {
    let mut dec = VmdkStreamDecoder::new();
    let mut sink = Decoded::default();
    dec.feed(&vmware_sample()[..512], &mut sink).unwrap();
    assert_eq!(sink.capacity, Some(CAP_SECTORS * 512));
    assert_eq!(dec.capacity(), Some(CAP_SECTORS * 512));
    assert_eq!(dec.header().map(|h| h.gd_offset), Some(GD_AT_END));
}

// ------------------------------------------------------- grain validation

#[test]
fn unaligned_lba() {
    let e = decode_err(&Builder::new().grain(4, &[1; 4096]).bytes());
    assert_eq!(
        e,
        VmdkError::UnalignedGrain {
            offset: DATA_START as u64,
            lba: 4,
            grain_sectors: 8
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
}

#[test]
fn grain_beyond_capacity() {
    // Starts past the end.
    let e = decode_err(&Builder::new().grain(104, &[1; 4096]).bytes());
    let expected = VmdkError::GrainBeyondCapacity {
        offset: DATA_START as u64,
        lba: 104,
        capacity: CAP_SECTORS * 512,
    };
    assert_eq!(e, expected);
    // Lba far past the end: no overflow.
    let e = decode_err(&Builder::new().grain(u64::MAX - 7, &[1; 4096]).bytes());
    assert!(matches!(e, VmdkError::GrainBeyondCapacity { .. }), "{e}");
    // Non-zero data past the end of the last, partial grain.
    let e = decode_err(&Builder::new().grain(96, &[1; 4096]).bytes());
    assert_eq!(
        e,
        VmdkError::GrainBeyondCapacity {
            offset: DATA_START as u64,
            lba: 96,
            capacity: CAP_SECTORS * 512,
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
}

#[test]
fn decompression_bomb_stops_at_one_grain() {
    let e = decode_err(&Builder::new().grain(0, &vec![0; 1 << 20]).bytes());
    assert_eq!(
        e,
        VmdkError::GrainOverflow {
            offset: DATA_START as u64,
            lba: 0,
            grain: 4096
        }
    );
    // One byte over is already too much.
    let e = decode_err(&Builder::new().grain(8, &[0; 4097]).bytes());
    assert!(matches!(e, VmdkError::GrainOverflow { lba: 8, .. }), "{e}");
    assert_kind(&e, ErrorKind::CorruptImage);
}

#[test]
fn short_grain_that_is_not_last() {
    let e = decode_err(&Builder::new().grain(8, &[3; 4000]).bytes());
    assert_eq!(
        e,
        VmdkError::ShortGrain {
            offset: DATA_START as u64,
            lba: 8,
            len: 4000,
            expected: 4096
        }
    );
    // The last grain must still reach the capacity.
    let e = decode_err(&Builder::new().grain(96, &[3; 1024]).bytes());
    assert!(
        matches!(e, VmdkError::ShortGrain { expected: 2048, .. }),
        "{e}"
    );
}

#[test]
fn compressed_size_over_limit() {
    let mut v = Builder::new().bytes();
    v.extend_from_slice(&0u64.to_le_bytes());
    let size = limits::MAX_VMDK_COMPRESSED_GRAIN as u32 + 1;
    v.extend_from_slice(&size.to_le_bytes());
    // Refused from the marker alone, before any data arrives.
    let mut dec = VmdkStreamDecoder::new();
    let e = dec.feed(&v, &mut Decoded::default()).unwrap_err();
    assert_eq!(
        leaf(&e),
        VmdkError::CompressedGrainLimit {
            offset: DATA_START as u64,
            size: u64::from(size),
            limit: limits::MAX_VMDK_COMPRESSED_GRAIN
        }
    );
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
}

#[test]
fn zlib_errors() {
    let garbage = decode_err(
        &Builder::new()
            .raw_grain(0, &[0x78, 0x9c, 0xff, 0xff, 0xff])
            .bytes(),
    );
    assert!(
        matches!(garbage, VmdkError::Zlib { lba: 0, offset, .. } if offset == DATA_START as u64),
        "{garbage}"
    );
    assert_kind(&garbage, ErrorKind::CorruptImage);
    // Raw deflate without the zlib header.
    let e = decode_err(&Builder::new().raw_grain(0, &zlib(&[1; 4096])[2..]).bytes());
    assert!(matches!(e, VmdkError::Zlib { .. }), "{e}");
    // Wrong Adler-32.
    let mut z = zlib(&[1; 4096]);
    let n = z.len();
    z[n - 1] ^= 1;
    let e = decode_err(&Builder::new().raw_grain(0, &z).bytes());
    assert!(matches!(e, VmdkError::Zlib { .. }), "{e}");
}

#[test]
fn zlib_stream_shorter_or_longer_than_marker_size() {
    let z = zlib(&[5; 4096]);
    let e = decode_err(&Builder::new().raw_grain(0, &z[..z.len() - 3]).bytes());
    assert_eq!(
        e,
        VmdkError::ZlibIncomplete {
            offset: DATA_START as u64,
            lba: 0,
            size: z.len() as u64 - 3
        }
    );
    let mut long = z.clone();
    long.extend_from_slice(&[0, 0, 0]);
    let e = decode_err(&Builder::new().raw_grain(0, &long).bytes());
    assert_eq!(
        e,
        VmdkError::ZlibTrailing {
            offset: DATA_START as u64,
            lba: 0,
            size: long.len() as u64
        }
    );
}

// ------------------------------------------------- markers and the ending

#[test]
fn unknown_marker_type() {
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).meta(7, &[]);
    let e = decode_err(&b.bytes());
    assert_eq!(
        e,
        VmdkError::UnknownMarker {
            offset: DATA_START as u64 + 512,
            kind: 7
        }
    );
}

#[test]
fn metadata_marker_too_large() {
    let mut v = Builder::new().bytes();
    v.extend_from_slice(&u64::MAX.to_le_bytes());
    v.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]);
    let e = decode_err(&v);
    assert_eq!(
        e,
        VmdkError::MarkerTooLarge {
            offset: DATA_START as u64,
            sectors: u64::MAX
        }
    );
}

#[test]
fn footer_checks() {
    let mut b = Builder::new();
    b.meta(3, &[0; 1024]);
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::BadFooterSize {
            offset: DATA_START as u64,
            sectors: 2
        }
    );
    let mut footer = header_bytes(GD_AT_END);
    footer[12..20].copy_from_slice(&64u64.to_le_bytes());
    let mut b = Builder::new();
    b.meta(3, &footer);
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::FooterMismatch {
            offset: DATA_START as u64 + 512,
            field: "capacity"
        }
    );
    let mut b = Builder::new();
    b.meta(3, &[0; 512]);
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::BadMagic {
            offset: DATA_START as u64 + 512,
            found: [0; 4]
        }
    );
}

#[test]
fn trailing_garbage_after_eos() {
    let mut v = vmware_sample();
    let eos_end = v.len();
    v.extend_from_slice(&[0, 0, 0, 9]);
    let e = decode_err(&v);
    assert_eq!(
        e,
        VmdkError::TrailingGarbage {
            offset: eos_end as u64 + 3
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
}

#[test]
fn truncation_names_the_structure() {
    let v = vmware_sample();
    let cases: &[(usize, u64, &str)] = &[
        (0, 0, "header"),
        (100, 0, "header"),
        (512, 0, "header area"),
        (DATA_START + 5, DATA_START as u64, "marker"),
        (DATA_START + 20, DATA_START as u64, "grain marker"),
    ];
    for &(end, offset, what) in cases {
        assert_eq!(
            decode_err(&v[..end]),
            VmdkError::Truncated {
                offset,
                end: end as u64,
                what
            }
        );
    }
    // Inside the padding of the end-of-stream marker, the footer, the
    // grain directory's payload.
    let n = v.len();
    let e = decode_err(&v[..n - 1]);
    assert!(
        matches!(
            e,
            VmdkError::Truncated {
                what: "end-of-stream marker",
                ..
            }
        ),
        "{e}"
    );
    let e = decode_err(&v[..n - 600]);
    assert!(
        matches!(e, VmdkError::Truncated { what: "footer", .. }),
        "{e}"
    );
    let e = decode_err(&v[..n - 1600]);
    assert!(
        matches!(
            e,
            VmdkError::Truncated {
                what: "grain directory marker",
                ..
            }
        ),
        "{e}"
    );
    assert_kind(&e, ErrorKind::CorruptImage);
}

#[test]
fn decoder_refuses_input_after_an_error() {
    let mut dec = VmdkStreamDecoder::new();
    let mut sink = Decoded::default();
    assert!(dec.feed(b"nope", &mut sink).is_ok());
    assert!(dec.finish(&mut sink).is_err());
    let e = dec.feed(b"more", &mut sink).unwrap_err();
    assert_eq!(leaf(&e), VmdkError::Poisoned { offset: 4 });
}

#[test]
fn error_message_names_offset() {
    let e = crate::Error::from(decode_err(&patched(0, b"XXXX"))).in_entry("disk1.vmdk");
    assert_eq!(
        e.to_string(),
        "entry 'disk1.vmdk': at byte 0: bad magic [58, 58, 58, 58], expected \"KDMV\""
    );
}

#[test]
fn fuzz_entry_survives_mutations() {
    let base = vmware_sample();
    let mut rng = Rng(42);
    for _ in 0..300 {
        let mut v = base.clone();
        for _ in 0..(rng.next() % 8 + 1) {
            let i = (rng.next() % v.len() as u64) as usize;
            v[i] = rng.next() as u8;
        }
        let cut = (rng.next() % (v.len() as u64 + 1)) as usize;
        fuzz_entry(&v[..cut]);
        fuzz_entry(&v);
    }
    fuzz_entry(&[]);
    fuzz_entry(b"KDMV");
}
