//! Tests of the streamOptimized decoder: images written by qemu-img and
//! compared with their raw source, a hand-built VMware-style stream with
//! GT/GD/footer/EOS markers, split-point invariance and one regression test
//! per validation rule.

use crate::test_support::Rng;
use std::io::Write;
use std::process::Command;

use flate2::Compression;
use flate2::write::ZlibEncoder;

use super::header::{FLAG_ZERO_GRAIN, GD_AT_END, NEWLINE_CHARS};
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
    header_with(gd_offset, 512, FLAGS)
}

fn header_with(gd_offset: u64, gtes: u32, flags: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(b"KDMV");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&CAP_SECTORS.to_le_bytes());
    h.extend_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h.extend_from_slice(&1u64.to_le_bytes()); // descriptorOffset
    h.extend_from_slice(&1u64.to_le_bytes()); // descriptorSize
    h.extend_from_slice(&gtes.to_le_bytes()); // numGTEsPerGT
    h.extend_from_slice(&0u64.to_le_bytes()); // rgdOffset
    h.extend_from_slice(&gd_offset.to_le_bytes());
    h.extend_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
    h.push(0); // uncleanShutdown
    h.extend_from_slice(&NEWLINE_CHARS);
    h.extend_from_slice(&1u16.to_le_bytes()); // compressAlgorithm
    h.resize(512, 0);
    h
}

/// Writes streams the way VMware tools lay them out: grains, after the
/// grains of each grain table's range that table, then the grain
/// directory, the footer and the end-of-stream marker. Each step can also
/// be written wrong on purpose.
#[derive(Clone)]
struct Builder {
    buf: Vec<u8>,
    gtes: u32,
    flags: u32,
    /// (lba, file sector of the grain marker) of the grains not yet in a
    /// grain table.
    pending: Vec<(u64, u64)>,
    /// (range, payload sector) of the grain tables written.
    tables: Vec<(u64, u64)>,
    /// Payload sector of the grain directory.
    gd_sector: u64,
}

impl Builder {
    fn new() -> Self {
        Self::with(512, FLAGS)
    }

    /// A stream whose header has `gtes` entries per grain table and
    /// `flags`.
    fn with(gtes: u32, flags: u32) -> Self {
        let mut buf = header_with(GD_AT_END, gtes, flags);
        buf.extend_from_slice(
            b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
              createType=\"streamOptimized\"\nRW 100 SPARSE \"disk.vmdk\"\n",
        );
        buf.resize(DATA_START, 0);
        Builder {
            buf,
            gtes,
            flags,
            pending: Vec::new(),
            tables: Vec::new(),
            gd_sector: 0,
        }
    }

    /// File sector the next structure starts at.
    fn sector(&self) -> u64 {
        self.buf.len() as u64 / 512
    }

    fn raw_grain(&mut self, lba: u64, compressed: &[u8]) -> &mut Self {
        self.pending.push((lba, self.sector()));
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

    /// The entries of a grain table mapping the pending grains.
    fn gt_entries(&self) -> Vec<u32> {
        let mut gt = vec![0u32; self.gtes as usize];
        for &(lba, sector) in &self.pending {
            gt[(lba / GRAIN_SECTORS) as usize % self.gtes as usize] = sector as u32;
        }
        gt
    }

    /// The range of the pending grains, or the one after the last table.
    fn next_range(&self) -> u64 {
        match self.pending.first() {
            Some(&(lba, _)) => lba / GRAIN_SECTORS / u64::from(self.gtes),
            None => self.tables.last().map_or(0, |t| t.0 + 1),
        }
    }

    /// A grain table holding `entries`, recorded for range `range`.
    fn gt_raw(&mut self, range: u64, entries: &[u32]) -> &mut Self {
        self.tables.push((range, self.sector() + 1));
        let payload: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.pending.clear();
        self.meta(1, &payload)
    }

    /// The grain table of the pending grains.
    fn gt(&mut self) -> &mut Self {
        let (range, entries) = (self.next_range(), self.gt_entries());
        self.gt_raw(range, &entries)
    }

    /// The grain table of the pending grains, then `edit` applied to its
    /// entries.
    fn gt_edited(&mut self, edit: impl FnOnce(&mut Vec<u32>)) -> &mut Self {
        let (range, mut entries) = (self.next_range(), self.gt_entries());
        edit(&mut entries);
        self.gt_raw(range, &entries)
    }

    /// The entries of a grain directory pointing to the tables written.
    fn gd_entries(&self) -> Vec<u32> {
        let per_table = GRAIN_SECTORS * u64::from(self.gtes);
        let mut gd = vec![0u32; CAP_SECTORS.div_ceil(per_table) as usize];
        for &(range, sector) in &self.tables {
            gd[range as usize] = sector as u32;
        }
        gd
    }

    fn gd_raw(&mut self, entries: &[u32]) -> &mut Self {
        self.gd_sector = self.sector() + 1;
        let payload: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.meta(2, &payload)
    }

    fn gd(&mut self) -> &mut Self {
        let entries = self.gd_entries();
        self.gd_raw(&entries)
    }

    fn footer(&mut self) -> &mut Self {
        let footer = header_with(self.gd_sector, self.gtes, self.flags);
        self.meta(3, &footer)
    }

    fn eos(&mut self) -> &mut Self {
        self.meta(0, &[])
    }

    /// Grain table of the pending grains (if any), grain directory, footer
    /// and end-of-stream markers.
    fn vmware_tail(&mut self) -> &mut Self {
        if !self.pending.is_empty() {
            self.gt();
        }
        self.gd().footer().eos()
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
    let vmdk = Builder::new().grain(96, &data).vmware_tail().bytes();
    let d = decode(&vmdk).unwrap();
    assert_eq!(d.extents, [(96 * 512, vec![0xee; 2048])]);
}

#[test]
fn empty_disk_is_an_empty_grain_directory() {
    let d = decode(&Builder::new().vmware_tail().bytes()).unwrap();
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
    b.gd().meta(3, &[0; 1024]);
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::BadFooterSize {
            offset: DATA_START as u64 + 1024,
            sectors: 2
        }
    );
    // The footer follows an empty grain directory: marker and payload.
    let footer_at = DATA_START as u64 + 1536;
    let mut footer = header_bytes(GD_AT_END);
    footer[12..20].copy_from_slice(&64u64.to_le_bytes());
    let mut b = Builder::new();
    b.gd().meta(3, &footer);
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::FooterMismatch {
            offset: footer_at,
            field: "capacity"
        }
    );
    let mut b = Builder::new();
    b.gd().meta(3, &[0; 512]);
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::BadMagic {
            offset: footer_at,
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
        "entry 'disk1.vmdk' at byte 0: bad magic [58, 58, 58, 58], expected \"KDMV\""
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

// ------------------------------------- grain tables against the grain stream

/// Entry offset of the `i`th structure after the header area when each
/// takes one sector (grains of one repeated byte compress into one).
fn sector_at(i: u64) -> u64 {
    DATA_START as u64 + 512 * i
}

#[test]
fn duplicate_lba_is_refused() {
    // The table maps the first grain: qemu reads 1s where the markers
    // alone would put 2s.
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).grain(0, &[2; 4096]);
    b.gt_edited(|gt| gt[0] = 4);
    let e = decode_err(&b.vmware_tail().bytes());
    assert_eq!(
        e,
        VmdkError::GrainOutOfOrder {
            offset: sector_at(1),
            lba: 0,
            previous: 0
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
    let line = crate::Error::from(e.clone()).to_string();
    assert!(
        line.starts_with("at byte 2560: grain at lba 0 follows the grain at lba 0"),
        "{line}"
    );
}

#[test]
fn decreasing_lba_is_refused() {
    let e = decode_err(
        &Builder::new()
            .grain(8, &[1; 4096])
            .grain(0, &[2; 4096])
            .vmware_tail()
            .bytes(),
    );
    assert_eq!(
        e,
        VmdkError::GrainOutOfOrder {
            offset: sector_at(1),
            lba: 0,
            previous: 8
        }
    );
}

#[test]
fn grain_not_mapped_by_its_table() {
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).grain(8, &[2; 4096]);
    b.gt_edited(|gt| gt[1] = 0);
    let e = decode_err(&b.vmware_tail().bytes());
    assert_eq!(
        e,
        VmdkError::GrainNotInTable {
            offset: sector_at(1),
            lba: 8
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
    assert_eq!(
        crate::Error::from(e.clone()).to_string(),
        "at byte 2560: grain at lba 8 is not in any grain table"
    );
}

#[test]
fn table_entry_pointing_where_no_grain_is() {
    // Entry 2 (lba 16) points to the grain of lba 0: qemu would read it
    // twice.
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]);
    b.gt_edited(|gt| gt[2] = 4);
    let e = decode_err(&b.vmware_tail().bytes());
    let table = sector_at(2);
    assert_eq!(
        e,
        VmdkError::TableEntryWithoutGrain {
            offset: table + 8,
            lba: 16,
            entry: 4
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
}

#[test]
fn table_and_grains_disagree() {
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).grain(8, &[2; 4096]);
    b.gt_edited(|gt| gt.swap(0, 1));
    let e = decode_err(&b.vmware_tail().bytes());
    assert_eq!(
        e,
        VmdkError::TableEntryMismatch {
            offset: sector_at(3),
            lba: 0,
            entry: 5,
            grain: sector_at(0)
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
    assert_eq!(
        crate::Error::from(e.clone()).to_string(),
        "at byte 3584: grain table entry for lba 0 points to sector 5, \
         but the grain for lba 0 is at entry offset 2048"
    );
}

#[test]
fn grain_after_the_table_of_its_range() {
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).gt().grain(8, &[2; 4096]);
    // Grain, table marker, four sectors of table.
    let offset = sector_at(6);
    let e = decode_err(&b.vmware_tail().bytes());
    assert_eq!(e, VmdkError::GrainNotInTable { offset, lba: 8 });
}

#[test]
fn grains_of_two_ranges_without_a_table_between() {
    // Four grains per table: lba 32 starts the second table's range.
    let mut b = Builder::with(4, FLAGS);
    b.grain(0, &[1; 4096]).grain(32, &[2; 4096]);
    let e = decode_err(&b.vmware_tail().bytes());
    assert_eq!(
        e,
        VmdkError::GrainNotInTable {
            offset: sector_at(0),
            lba: 0
        }
    );
}

#[test]
fn grains_after_the_last_table() {
    let mut b = Builder::with(4, FLAGS);
    b.grain(0, &[1; 4096]).gt().grain(32, &[2; 4096]);
    let offset = sector_at(3);
    let entries = b.gd_entries();
    b.gd_raw(&entries).footer().eos();
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::GrainNotInTable { offset, lba: 32 }
    );
}

#[test]
fn stream_ends_with_grains_in_no_table() {
    // The header puts the grain directory at the end; without it qemu
    // cannot read the file at all.
    let v = Builder::new().grain(0, &[1; 4096]).bytes();
    assert_eq!(
        decode_err(&v),
        VmdkError::GrainNotInTable {
            offset: sector_at(0),
            lba: 0
        }
    );
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).grain(8, &[2; 4096]).eos();
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::GrainNotInTable {
            offset: sector_at(0),
            lba: 0
        }
    );
}

/// Something done to a stream under construction.
type Step<'a> = &'a dyn Fn(&mut Builder);
/// Grain directory entries made from a grain table's sector.
type Entries<'a> = &'a dyn Fn(u32) -> Vec<u32>;

#[test]
fn stream_ends_before_its_tail() {
    let cases: [(Step, &str); 4] = [
        (&|_| {}, "grain directory"),
        (
            &|b| {
                b.grain(0, &[1; 4096]).gt();
            },
            "grain directory",
        ),
        (
            &|b| {
                b.grain(0, &[1; 4096]).gt().gd();
            },
            "footer",
        ),
        (
            &|b| {
                b.grain(0, &[1; 4096]).gt().gd().footer();
            },
            "end-of-stream marker",
        ),
    ];
    for (build, what) in cases {
        let mut b = Builder::new();
        build(&mut b);
        let v = b.bytes();
        let e = decode_err(&v);
        assert_eq!(
            e,
            VmdkError::MissingMetadata {
                offset: v.len() as u64,
                what
            }
        );
        assert_kind(&e, ErrorKind::CorruptImage);
    }
}

#[test]
fn markers_out_of_place() {
    let cases: [(Step, &str, &str); 5] = [
        (
            &|b| {
                b.gd().grain(0, &[1; 4096]);
            },
            "grain marker",
            "footer marker",
        ),
        (
            &|b| {
                b.gd().eos();
            },
            "end-of-stream marker",
            "footer marker",
        ),
        (
            &|b| {
                b.gd().footer().gt();
            },
            "grain table marker",
            "end-of-stream marker",
        ),
        (
            &|b| {
                b.gd().gd();
            },
            "grain directory marker",
            "footer marker",
        ),
        (
            &|b| {
                b.eos();
            },
            "end-of-stream marker",
            "grain directory marker",
        ),
    ];
    for (build, found, expected) in cases {
        let mut b = Builder::new();
        build(&mut b);
        let e = decode_err(&b.bytes());
        assert!(
            matches!(e, VmdkError::UnexpectedMarker { found: f, expected: x, .. }
                if f == found && x == expected),
            "{e}"
        );
    }
    let mut b = Builder::new();
    b.grain(0, &[1; 4096])
        .gt()
        .meta(3, &header_bytes(GD_AT_END));
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::UnexpectedMarker {
            offset: sector_at(6),
            found: "footer marker",
            expected: "grain directory marker"
        }
    );
}

#[test]
fn directory_must_point_to_the_tables() {
    // One grain table at range 0; the directory has four entries.
    let build = |entries: &dyn Fn(u32) -> Vec<u32>| {
        let mut b = Builder::with(4, FLAGS);
        b.grain(0, &[1; 4096]).gt();
        let table = b.tables[0].1 as u32;
        let gd_at = b.buf.len() as u64;
        b.gd_raw(&entries(table)).footer().eos();
        (b.bytes(), gd_at)
    };
    let (v, _) = build(&|t| vec![t, 0, 0, 0]);
    decode(&v).unwrap();
    let cases: [(Entries, u64); 4] = [
        (&|_| vec![0; 4], 0),
        (&|t| vec![t + 1, 0, 0, 0], 1),
        (&|t| vec![0, t, 0, 0], 1),
        (&|t| vec![t, t, 0, 0], 2),
    ];
    for (entries, set) in cases {
        let (v, gd_at) = build(entries);
        let e = decode_err(&v);
        assert_eq!(
            e,
            VmdkError::DirectoryMismatch {
                offset: gd_at,
                entries: set,
                tables: 1
            }
        );
        assert_kind(&e, ErrorKind::CorruptImage);
    }
}

#[test]
fn footer_must_describe_the_stream() {
    let tail = |footer: Vec<u8>| {
        let mut b = Builder::new();
        b.grain(0, &[1; 4096]).gt().gd().meta(3, &footer).eos();
        decode(&b.bytes())
    };
    // Grain, table marker and payload, directory marker and payload.
    let gd_sector = DATA_START as u64 / 512 + 7;
    let footer_at = sector_at(9);
    tail(header_bytes(gd_sector)).unwrap();
    for (footer, field) in [
        (header_bytes(gd_sector + 1), "gdOffset"),
        (header_bytes(GD_AT_END), "gdOffset"),
        (header_with(gd_sector, 256, FLAGS), "numGTEsPerGT"),
        (
            header_with(gd_sector, 512, FLAGS | FLAG_ZERO_GRAIN),
            "zeroed-grain flag",
        ),
    ] {
        assert_eq!(
            tail(footer).unwrap_err(),
            VmdkError::FooterMismatch {
                offset: footer_at,
                field
            }
        );
    }
}

#[test]
fn table_payload_too_small() {
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).meta(1, &[0; 512]);
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::TableTooSmall {
            offset: sector_at(1),
            what: "grain table",
            sectors: 1,
            expected: 4
        }
    );
    let mut b = Builder::new();
    b.meta(2, &[]);
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::TableTooSmall {
            offset: sector_at(0),
            what: "grain directory",
            sectors: 0,
            expected: 1
        }
    );
}

#[test]
fn empty_tables_take_the_next_range() {
    // Writers that emit a table for every range, empty or not.
    let mut b = Builder::with(4, FLAGS);
    b.grain(0, &[1; 4096])
        .gt()
        .gt()
        .grain(64, &[2; 4096])
        .gt()
        .gt();
    let mut done = b.clone();
    let d = decode(&done.vmware_tail().bytes()).unwrap();
    assert_eq!(d.extents.len(), 2);
    // A fifth table has no range left.
    let offset = b.buf.len() as u64;
    b.meta(1, &[0; 16]);
    assert_eq!(
        decode_err(&b.bytes()),
        VmdkError::ExtraTable { offset, tables: 4 }
    );
}

#[test]
fn zeroed_grain_entries() {
    let build = |flags| {
        let mut b = Builder::with(512, flags);
        b.grain(0, &[1; 4096]).gt_edited(|gt| gt[1] = 1);
        b.vmware_tail().bytes()
    };
    let d = decode(&build(FLAGS | FLAG_ZERO_GRAIN)).unwrap();
    assert_eq!(d.extents, [(0, vec![1; 4096])]);
    // Without the flag, qemu reads entry 1 as a grain at sector 1, inside
    // the descriptor.
    assert_eq!(
        decode_err(&build(FLAGS)),
        VmdkError::TableEntryWithoutGrain {
            offset: sector_at(2) + 4,
            lba: 8,
            entry: 1
        }
    );
}

#[test]
fn gtes_per_gt_rules() {
    for count in [0u32, 513, u32::MAX] {
        let mut v = vmware_sample();
        v[44..48].copy_from_slice(&count.to_le_bytes());
        let e = decode_err(&v);
        assert_eq!(
            e,
            VmdkError::BadGtesPerGt {
                offset: 44,
                count,
                limit: 512
            }
        );
        assert_kind(&e, ErrorKind::InvalidFormat);
    }
}

/// A VMware-layout disk over several grain tables: data in ranges 0, 2 and
/// 3 (the last grain partial), none in range 1, which has no table.
fn several_tables() -> (Vec<u8>, Vec<u8>) {
    let mut raw = vec![0u8; CAP_SECTORS as usize * 512];
    raw[..4096].fill(3);
    raw[24 * 512..32 * 512].fill(4);
    raw[64 * 512..72 * 512].fill(5);
    raw[96 * 512..].fill(6);
    let mut b = Builder::with(4, FLAGS);
    b.grain(0, &raw[..4096])
        .grain(24, &raw[24 * 512..32 * 512])
        .gt()
        .grain(64, &raw[64 * 512..72 * 512])
        .gt()
        .grain(96, &raw[96 * 512..])
        .vmware_tail();
    assert_eq!(b.gd_entries().iter().filter(|&&e| e != 0).count(), 3);
    (b.bytes(), raw)
}

#[test]
fn vmware_layout_with_several_tables() {
    let (vmdk, raw) = several_tables();
    let d = assert_split_invariant(&vmdk, 1).unwrap();
    assert_eq!(d.disk(), raw);
    assert_eq!(d.extents.len(), 4);
}

#[test]
fn table_errors_do_not_depend_on_split_points() {
    let mut b = Builder::with(4, FLAGS);
    b.grain(0, &[1; 4096]).grain(8, &[2; 4096]);
    b.gt_edited(|gt| gt.swap(0, 1));
    assert!(matches!(
        assert_split_invariant(&b.vmware_tail().bytes(), 1),
        Err(VmdkError::TableEntryMismatch { .. })
    ));
    let (mut vmdk, _) = several_tables();
    // The grain directory's second entry (range 1, no table) set.
    let gd = vmdk.len() - 4 * 512;
    vmdk[gd + 4..gd + 8].copy_from_slice(&7u32.to_le_bytes());
    assert!(matches!(
        assert_split_invariant(&vmdk, 1),
        Err(VmdkError::DirectoryMismatch { .. })
    ));
    let vmdk = qemu_with_table(|gt| {
        gt[6] = gt[5];
        gt[5] = 0;
    });
    assert!(matches!(
        assert_split_invariant(&vmdk, 4099),
        Err(VmdkError::TablesDisagree { .. })
    ));
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).grain(0, &[2; 4096]).gt();
    assert!(matches!(
        assert_split_invariant(&b.vmware_tail().bytes(), 1),
        Err(VmdkError::GrainOutOfOrder { .. })
    ));
    // Errors found only when the input ends.
    let v = Builder::new().grain(0, &[1; 4096]).bytes();
    assert!(matches!(
        assert_split_invariant(&v, 1),
        Err(VmdkError::GrainNotInTable { .. })
    ));
    let v = Builder::new().grain(0, &[1; 4096]).gt().gd().bytes();
    assert!(matches!(
        assert_split_invariant(&v, 1),
        Err(VmdkError::MissingMetadata { what: "footer", .. })
    ));
}

// ---------------------------- qemu-img's layout: tables in the header area

/// Entry offsets of the grain directory and of its first grain table in a
/// file written by qemu-img.
fn qemu_tables(vmdk: &[u8]) -> (usize, usize) {
    let gd = u64::from_le_bytes(vmdk[56..64].try_into().unwrap()) as usize * 512;
    let gt = u32::from_le_bytes(vmdk[gd..gd + 4].try_into().unwrap()) as usize * 512;
    (gd, gt)
}

/// qemu-img's conversion of [`mixed_raw`] (grains 0, 5, 10, 20 and 48 in
/// its one grain table) with `edit` applied to that table.
fn qemu_with_table(edit: impl FnOnce(&mut Vec<u32>)) -> Vec<u8> {
    let mut vmdk = qemu_stream_optimized(&mixed_raw());
    let (_, gt) = qemu_tables(&vmdk);
    let mut entries: Vec<u32> = vmdk[gt..gt + 2048]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mapped: Vec<usize> = (0..512).filter(|&i| entries[i] != 0).collect();
    assert_eq!(mapped, [0, 5, 10, 20, 48]);
    edit(&mut entries);
    for (i, e) in entries.iter().enumerate() {
        vmdk[gt + 4 * i..gt + 4 * i + 4].copy_from_slice(&e.to_le_bytes());
    }
    vmdk
}

#[test]
fn qemu_layout_is_read_through_its_tables() {
    let vmdk = qemu_stream_optimized(&mixed_raw());
    let (gd, gt) = qemu_tables(&vmdk);
    // The tables lie in the header area, before the first grain.
    let overhead = u64::from_le_bytes(vmdk[64..72].try_into().unwrap()) as usize * 512;
    assert!(gd < gt && gt + 2048 <= overhead);
    assert_eq!(decode(&vmdk).unwrap().disk(), mixed_raw());
}

#[test]
fn qemu_layout_table_maps_a_grain_elsewhere() {
    // Grain 5's entry moved to grain 6: qemu would read the grain there.
    let vmdk = qemu_with_table(|gt| {
        gt[6] = gt[5];
        gt[5] = 0;
    });
    let (gd, _) = qemu_tables(&vmdk);
    let e = decode_err(&vmdk);
    assert_eq!(
        e,
        VmdkError::TablesDisagree {
            offset: gd as u64,
            tables: 5,
            grains: 5
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
    // A grain the table forgets.
    let vmdk = qemu_with_table(|gt| gt[10] = 0);
    assert_eq!(
        decode_err(&vmdk),
        VmdkError::TablesDisagree {
            offset: gd as u64,
            tables: 4,
            grains: 5
        }
    );
}

#[test]
fn qemu_layout_entry_where_no_grain_can_be() {
    let vmdk = qemu_with_table(|gt| gt[6] = gt[5]);
    let (_, table) = qemu_tables(&vmdk);
    let e = decode_err(&vmdk);
    assert!(
        matches!(e, VmdkError::TableEntryWithoutGrain { offset, lba: 768, .. }
            if offset == table as u64 + 24),
        "{e}"
    );
    // Swapped entries decrease.
    let vmdk = qemu_with_table(|gt| gt.swap(0, 5));
    assert!(
        matches!(
            decode_err(&vmdk),
            VmdkError::TableEntryWithoutGrain { lba: 640, .. }
        ),
        "swap"
    );
    // Into the header area.
    let vmdk = qemu_with_table(|gt| gt[1] = 2);
    assert_eq!(
        decode_err(&vmdk),
        VmdkError::TableEntryWithoutGrain {
            offset: table as u64 + 4,
            lba: 128,
            entry: 2
        }
    );
}

#[test]
fn qemu_layout_tables_out_of_reach() {
    let vmdk = qemu_stream_optimized(&mixed_raw());
    let (gd, _) = qemu_tables(&vmdk);
    // A grain directory over the header.
    let mut v = vmdk.clone();
    v[56..64].copy_from_slice(&0u64.to_le_bytes());
    let e = decode_err(&v);
    assert_eq!(
        e,
        VmdkError::OutOfReach {
            offset: 56,
            what: "grain directory",
            sector: 0
        }
    );
    assert_kind(&e, ErrorKind::Unsupported);
    // A grain table before its directory (the redundant directory's).
    let mut v = vmdk.clone();
    v[gd..gd + 4].copy_from_slice(&22u32.to_le_bytes());
    assert_eq!(
        decode_err(&v),
        VmdkError::OutOfReach {
            offset: gd as u64,
            what: "grain table",
            sector: 22
        }
    );
    // A grain directory among the markers: then the grain tables must be
    // markers too, and these grains are in none.
    let overhead = u64::from_le_bytes(vmdk[64..72].try_into().unwrap());
    let mut v = vmdk.clone();
    v[56..64].copy_from_slice(&overhead.to_le_bytes());
    assert!(
        matches!(decode_err(&v), VmdkError::GrainNotInTable { lba: 0, .. }),
        "directory among the markers"
    );
}

// ------------------- vmdktool's layout: the header names the directory marker

/// `b`'s stream with the header's gdOffset set to `sector`, as vmdktool
/// rewrites it once the grain directory is written.
fn naming(b: &Builder, sector: u64) -> Vec<u8> {
    let mut v = b.bytes();
    v[56..64].copy_from_slice(&sector.to_le_bytes());
    v
}

#[test]
fn header_naming_the_directory_marker() {
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).grain(8, &[2; 4096]).gt().gd();
    // Grains, table marker and payload, directory marker.
    assert_eq!(b.gd_sector, DATA_START as u64 / 512 + 8);
    // Readers go by the header: footer and end-of-stream marker may be
    // missing.
    let d = assert_split_invariant(&naming(&b, b.gd_sector), 97).unwrap();
    assert_eq!(d.extents.len(), 2);
    let mut full = b.clone();
    full.footer().eos();
    assert_eq!(decode(&naming(&full, full.gd_sector)).unwrap(), d);
    // The directory elsewhere than the header says.
    let e = decode_err(&naming(&b, b.gd_sector + 1));
    assert_eq!(
        e,
        VmdkError::DirectoryMisplaced {
            offset: sector_at(7),
            sector: b.gd_sector,
            named: b.gd_sector + 1
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
    // No directory at all.
    let mut c = Builder::new();
    c.grain(0, &[1; 4096]).gt();
    let v = naming(&c, 100);
    assert_eq!(
        decode_err(&v),
        VmdkError::MissingMetadata {
            offset: v.len() as u64,
            what: "grain directory"
        }
    );
    // The tables are checked as in VMware's layout.
    let mut c = Builder::new();
    c.grain(0, &[1; 4096]).grain(8, &[2; 4096]);
    c.gt_edited(|gt| gt.swap(0, 1)).gd();
    assert!(matches!(
        decode_err(&naming(&c, c.gd_sector)),
        VmdkError::TableEntryMismatch { lba: 0, .. }
    ));
}

// ------------------ open-vmdk's layout: several tables in the header area

/// A stream with four entries per grain table, its grain directory at
/// sector 2, the tables `gts` (grain directory entry, entries) at sectors
/// 3 to 6 as `gd` says, grains of one repeated byte from sector 8 (one
/// sector each), then an end-of-stream marker, as open-vmdk writes.
fn header_area_stream(gd: [u32; 4], gts: &[(usize, [u32; 4])], grains: &[(u64, u8)]) -> Vec<u8> {
    let mut v = header_with(2, 4, FLAGS);
    v[64..72].copy_from_slice(&8u64.to_le_bytes());
    v.resize(8 * 512, 0);
    for (i, e) in gd.iter().enumerate() {
        v[1024 + 4 * i..1024 + 4 * i + 4].copy_from_slice(&e.to_le_bytes());
    }
    for (slot, entries) in gts {
        let at = gd[*slot] as usize * 512;
        for (i, e) in entries.iter().enumerate() {
            v[at + 4 * i..at + 4 * i + 4].copy_from_slice(&e.to_le_bytes());
        }
    }
    for &(lba, byte) in grains {
        let len = 4096.min((CAP_SECTORS - lba) as usize * 512);
        let z = zlib(&vec![byte; len]);
        v.extend_from_slice(&lba.to_le_bytes());
        v.extend_from_slice(&(z.len() as u32).to_le_bytes());
        v.extend_from_slice(&z);
        pad_sector(&mut v);
    }
    v.extend_from_slice(&[0; 512]);
    v
}

#[test]
fn header_area_tables_over_several_ranges() {
    // Grains 0 (range 0), 5 (range 1) and 12 (range 3); range 2 has no
    // table.
    let grains = [(0, 1), (40, 2), (96, 3)];
    let gd = [3, 4, 0, 6];
    let gts = [(0, [8, 0, 0, 0]), (1, [0, 9, 0, 0]), (3, [10, 0, 0, 0])];
    let d = assert_split_invariant(&header_area_stream(gd, &gts, &grains), 1).unwrap();
    let offsets: Vec<u64> = d.extents.iter().map(|e| e.0).collect();
    assert_eq!(offsets, [0, 40 * 512, 96 * 512]);
    assert_eq!(d.extents[2].1, vec![3; 2048]);
    // Grain 5 mapped as grain 6.
    let moved = [(0, [8, 0, 0, 0]), (1, [0, 0, 9, 0]), (3, [10, 0, 0, 0])];
    assert_eq!(
        decode_err(&header_area_stream(gd, &moved, &grains)),
        VmdkError::TablesDisagree {
            offset: 1024,
            tables: 3,
            grains: 3
        }
    );
    // Two directory entries for one table.
    assert_eq!(
        decode_err(&header_area_stream([3, 3, 0, 6], &gts, &grains)),
        VmdkError::OutOfReach {
            offset: 1028,
            what: "grain table",
            sector: 3
        }
    );
    // A table past the first marker.
    assert_eq!(
        decode_err(&header_area_stream([3, 4, 0, 8], &gts[..2], &grains)),
        VmdkError::OutOfReach {
            offset: 1036,
            what: "grain table",
            sector: 8
        }
    );
}

#[test]
fn header_area_directory_over_limit() {
    // One entry per table and 4 KiB grains: a directory entry per grain.
    let mut v = header_area_stream([0; 4], &[], &[]);
    let sectors = (limits::MAX_VMDK_GD_ENTRIES + 1) * GRAIN_SECTORS;
    v[12..20].copy_from_slice(&sectors.to_le_bytes());
    v[44..48].copy_from_slice(&1u32.to_le_bytes());
    let e = decode_err(&v);
    assert_eq!(
        e,
        VmdkError::DirectoryLimit {
            offset: 56,
            entries: limits::MAX_VMDK_GD_ENTRIES + 1,
            limit: limits::MAX_VMDK_GD_ENTRIES
        }
    );
    assert_kind(&e, ErrorKind::LimitExceeded);
}

#[test]
fn fuzz_entry_survives_mutated_tables() {
    // Mutations land in the grain tables and directories of every layout.
    let mut b = Builder::new();
    b.grain(0, &[1; 4096]).grain(8, &[2; 4096]).gt().gd();
    let bases = [
        several_tables().0,
        header_area_stream(
            [3, 4, 0, 6],
            &[(0, [8, 0, 0, 0]), (1, [0, 9, 0, 0]), (3, [10, 0, 0, 0])],
            &[(0, 1), (40, 2), (96, 3)],
        ),
        naming(&b, b.gd_sector),
    ];
    let mut rng = Rng(43);
    for base in bases {
        for _ in 0..200 {
            let mut v = base.clone();
            for _ in 0..(rng.next() % 4 + 1) {
                let i = (rng.next() % v.len() as u64) as usize;
                v[i] = rng.next() as u8;
            }
            fuzz_entry(&v);
        }
    }
}
