//! Tests of the monolithicSparse decoder: images written by qemu-img (and
//! rewritten in place by qemu-io, as a running VM would) compared with what
//! qemu reads from them, split-point invariance, and one test per refusal,
//! each made by patching a qemu-img image. A missing qemu-img fails them.

use std::path::Path;
use std::process::Command;

use super::header::{COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_ZERO_GRAIN};
use super::*;
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::{Classify, ErrorKind};
use crate::limits;
use crate::test_support::Rng;

// ---------------------------------------------------------------- helpers

/// What a decoding produced. Data extents that continue the previous one
/// are merged, so that decodings of differently cut input compare equal.
#[derive(Debug, Default, PartialEq)]
struct Decoded {
    capacity: Option<u64>,
    extents: Vec<(u64, Vec<u8>)>,
    zeros: Vec<(u64, u64)>,
}

impl ExtentSink for Decoded {
    fn capacity(&mut self, bytes: u64) -> crate::Result<()> {
        assert!(self.capacity.is_none() && self.extents.is_empty());
        self.capacity = Some(bytes);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
        let cap = self.capacity.expect("capacity first");
        assert!(!data.is_empty() && offset + data.len() as u64 <= cap);
        match self.extents.last_mut() {
            Some((o, d)) if *o + d.len() as u64 == offset => d.extend_from_slice(data),
            _ => self.extents.push((offset, data.to_vec())),
        }
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> crate::Result<()> {
        let cap = self.capacity.expect("capacity first");
        assert!(len > 0 && offset + len <= cap);
        self.zeros.push((offset, len));
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
        for &(off, len) in &self.zeros {
            disk[off as usize..(off + len) as usize].fill(0);
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

/// Decodes `data` cut at the ascending offsets `cuts`, the entry's size
/// declared when `sized`.
fn decode_with(data: &[u8], cuts: &[usize], sized: bool) -> Result<Decoded, VmdkError> {
    let mut dec = VmdkSparseDecoder::new();
    if sized {
        dec = dec.with_entry_size(data.len() as u64);
    }
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

fn decode_cut(data: &[u8], cuts: &[usize]) -> Result<Decoded, VmdkError> {
    decode_with(data, cuts, false)
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

/// Whole, in random pieces (small and large), byte by byte, and split at
/// every `stride`-th offset: all the same. With the entry's size declared
/// the result is the same too, but for a truncated file, which fails
/// earlier (and the same way however it is cut).
fn assert_split_invariant(data: &[u8], stride: usize) -> Result<Decoded, VmdkError> {
    let whole = decode(data);
    let sized = decode_with(data, &[], true);
    assert_eq!(
        sized.is_ok(),
        whole.is_ok(),
        "entry size declared: {sized:?}"
    );
    if whole.is_ok() {
        assert_eq!(sized, whole, "entry size declared");
    }
    for seed in 1..=3 {
        assert_eq!(decode_cut(data, &random_cuts(data.len(), seed, 7)), whole);
        assert_eq!(
            decode_cut(data, &random_cuts(data.len(), seed, 70_000)),
            whole
        );
        let cuts = random_cuts(data.len(), seed, 5000);
        assert_eq!(decode_with(data, &cuts, true), sized, "sized, {cuts:?}");
    }
    let bytewise: Vec<usize> = (1..data.len()).collect();
    assert_eq!(decode_cut(data, &bytewise), whole, "byte by byte");
    for at in (0..=data.len()).step_by(stride) {
        assert_eq!(decode_cut(data, &[at]), whole, "split at {at}");
    }
    whole
}

fn run(program: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required to run the VMDK tests: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img convert -f raw -O vmdk OPTS` of `raw`: monolithicSparse
/// unless the options say otherwise.
fn qemu_vmdk(raw: &[u8], opts: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let dst = dir.path().join("dst.vmdk");
    std::fs::write(&src, raw).unwrap();
    let mut args: Vec<&std::ffi::OsStr> = ["convert", "-f", "raw", "-O", "vmdk"]
        .iter()
        .map(std::ffi::OsStr::new)
        .collect();
    args.extend(opts.iter().map(std::ffi::OsStr::new));
    args.push(src.as_os_str());
    args.push(dst.as_os_str());
    run("qemu-img", &args);
    std::fs::read(&dst).unwrap()
}

/// What qemu reads from `vmdk`: `qemu-img convert -f vmdk -O raw`.
fn qemu_reads(vmdk: &Path) -> Vec<u8> {
    let out = vmdk.with_extension("read.raw");
    run(
        "qemu-img",
        &[
            "convert".as_ref(),
            "-f".as_ref(),
            "vmdk".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            vmdk.as_os_str(),
            out.as_os_str(),
        ],
    );
    std::fs::read(out).unwrap()
}

/// `qemu-io -f vmdk -c CMD...` on `vmdk`.
fn qemu_io(vmdk: &Path, cmds: &[&str]) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["-f".as_ref(), "vmdk".as_ref()];
    for c in cmds {
        args.push("-c".as_ref());
        args.push(c.as_ref());
    }
    args.push(vmdk.as_os_str());
    run("qemu-io", &args);
}

const GRAIN: usize = 64 << 10;
const MIB: usize = 1 << 20;

/// A raw disk with data, holes, a grain of explicit zeros (qemu-img
/// drops it), a grain with one byte set, and incompressible data.
fn mixed_raw(size: usize) -> Vec<u8> {
    let mut rng = Rng(7);
    let mut raw = vec![0u8; size];
    raw[..GRAIN].fill(0xab);
    raw[5 * GRAIN..6 * GRAIN].copy_from_slice(&rng.bytes(GRAIN));
    raw[10 * GRAIN + 12 * 1024..10 * GRAIN + 16 * 1024].fill(0xcd);
    raw[20 * GRAIN + 511] = 1;
    let tail = size - 40 * 1024;
    for (i, b) in raw[tail..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    raw
}

/// A little-endian field of the header.
fn field(v: &[u8], at: usize, len: usize) -> u64 {
    let mut a = [0u8; 8];
    a[..len].copy_from_slice(&v[at..at + len]);
    u64::from_le_bytes(a)
}

fn set(v: &mut [u8], at: usize, bytes: &[u8]) {
    v[at..at + bytes.len()].copy_from_slice(bytes);
}

fn gd_at(v: &[u8]) -> usize {
    field(v, 56, 8) as usize * 512
}

/// Entry offset of grain table `slot`'s entry `index`.
fn gte_at(v: &[u8], slot: usize, index: usize) -> usize {
    field(v, gd_at(v) + 4 * slot, 4) as usize * 512 + 4 * index
}

fn gte(v: &[u8], slot: usize, index: usize) -> u32 {
    field(v, gte_at(v, slot, index), 4) as u32
}

fn set_gte(v: &mut [u8], slot: usize, index: usize, value: u32) {
    let at = gte_at(v, slot, index);
    set(v, at, &value.to_le_bytes());
}

fn assert_kind(e: &VmdkError, kind: ErrorKind) {
    assert_eq!(Classify::kind(e), kind, "{e}");
}

/// A 4 MiB qemu-img image (and its source) with grains for lba 0, 640,
/// 1280, 2560 and 8064, in that file order, the rest unallocated.
fn small_image() -> (Vec<u8>, Vec<u8>) {
    let raw = mixed_raw(4 * MIB);
    (qemu_vmdk(&raw, &[]), raw)
}

// ---------------------------------------------------------------- qemu-img

#[test]
fn qemu_default_image_is_monolithic_sparse_and_matches_source() {
    let raw = mixed_raw(3 * MIB + 40 * 1024);
    let vmdk = qemu_vmdk(&raw, &[]);
    // What `qemu-img convert -O vmdk` writes by default, and the probe's
    // rule for it.
    assert_eq!(
        crate::codec::probe::probe(&vmdk),
        crate::codec::probe::Format::VmdkSparse
    );
    let h = header::SparseHeader::parse_hosted(vmdk[..512].try_into().unwrap()).unwrap();
    assert_eq!(h.flags & FLAG_ZERO_GRAIN, 0);
    let d = assert_split_invariant(&vmdk, 4099).unwrap();
    assert_eq!(d.capacity, Some(raw.len() as u64));
    assert_eq!(d.disk(), raw);
    // Holes are not emitted; data runs contiguous in file and disk are.
    assert!(d.zeros.is_empty());
    for (off, data) in &d.extents {
        let src = &raw[*off as usize..*off as usize + data.len()];
        assert_eq!(src, &data[..]);
    }
    assert_eq!(d.extents.len(), 5);
}

#[test]
fn qemu_zeroed_grain_image_matches_source() {
    let raw = mixed_raw(4 * MIB);
    let vmdk = qemu_vmdk(&raw, &["-o", "zeroed_grain=on"]);
    let h = header::SparseHeader::parse_hosted(vmdk[..512].try_into().unwrap()).unwrap();
    assert_ne!(h.flags & FLAG_ZERO_GRAIN, 0);
    let d = assert_split_invariant(&vmdk, 8191).unwrap();
    assert_eq!(d.disk(), raw);
}

#[test]
fn capacity_not_a_grain_multiple() {
    let raw = mixed_raw(3 * MIB + 3584);
    let vmdk = qemu_vmdk(&raw, &[]);
    let d = decode(&vmdk).unwrap();
    assert_eq!(d.capacity, Some(raw.len() as u64));
    assert_eq!(d.disk(), raw);
}

#[test]
fn every_split_point_of_a_small_qemu_image() {
    // Three grains: data, hole, data: 64 KiB of header area, two grains.
    let mut raw = vec![0u8; 3 * GRAIN];
    raw[..GRAIN].copy_from_slice(&Rng(3).bytes(GRAIN));
    raw[2 * GRAIN + 100..2 * GRAIN + 200].fill(0x5a);
    let vmdk = qemu_vmdk(&raw, &[]);
    assert_eq!(vmdk.len(), 3 * GRAIN);
    let whole = decode(&vmdk).unwrap();
    assert_eq!(whole.disk(), raw);
    // Every offset in the header area's structures, and around each
    // grain's start and end.
    let metadata_end = gte_at(&vmdk, 0, 512);
    let mut points: Vec<usize> = (0..=metadata_end + 512).collect();
    for edge in [GRAIN, 2 * GRAIN, 3 * GRAIN] {
        points.extend(edge - 600..=edge.min(vmdk.len()));
    }
    points.extend((0..vmdk.len()).step_by(509));
    for at in points {
        assert_eq!(
            decode_cut(&vmdk, &[at]).as_ref(),
            Ok(&whole),
            "split at {at}"
        );
    }
    assert_eq!(assert_split_invariant(&vmdk, 997), Ok(whole));
}

/// A zeroed-grain image that qemu-io then rewrites as a VM would: grains
/// allocated out of disk order, data grains zeroed (an entry of 1) and one
/// left orphaned in the file.
fn rewritten_image(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let raw = mixed_raw(4 * MIB);
    let path = dir.join("rewritten.vmdk");
    std::fs::write(&path, qemu_vmdk(&raw, &["-o", "zeroed_grain=on"])).unwrap();
    qemu_io(
        &path,
        &[
            "write -P 0x11 3M 64k",
            "write -P 0x22 2M 128k",
            "write -z 0 64k",
            "write -z 1280k 64k",
            "write -P 0x33 64k 64k",
            "write -z 3M 64k",
        ],
    );
    let vmdk = std::fs::read(&path).unwrap();
    (path, vmdk)
}

#[test]
fn qemu_io_rewritten_image_reads_as_qemu_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, vmdk) = rewritten_image(dir.path());
    // The grains lie out of disk order and some entries are 1.
    let entries: Vec<u32> = (0..64).map(|i| gte(&vmdk, 0, i)).collect();
    assert!(entries.contains(&1), "{entries:?}");
    let data: Vec<u32> = entries.iter().copied().filter(|&e| e > 1).collect();
    assert!(data.windows(2).any(|w| w[0] > w[1]), "{entries:?}");
    let d = assert_split_invariant(&vmdk, 7919).unwrap();
    assert_eq!(d.disk(), qemu_reads(&path));
    // Zeroed grains come as zero extents, merged where adjacent.
    let grain = GRAIN as u64;
    assert!(d.zeros.contains(&(0, grain)), "{:?}", d.zeros);
    assert!(d.zeros.contains(&(3 * MIB as u64, grain)), "{:?}", d.zeros);
}

#[test]
fn tables_ahead_of_the_stream_are_one_run() {
    // 64 MiB: two grain tables back to back, read as one structure; the
    // grains of each run of data are one more.
    let mut raw = vec![0u8; 64 * MIB];
    raw[..GRAIN].fill(1);
    raw[40 * MIB..40 * MIB + 3 * GRAIN].fill(2);
    let vmdk = qemu_vmdk(&raw, &[]);
    let gd = gd_at(&vmdk);
    let mut dec = VmdkSparseDecoder::new();
    let mut sink = Decoded::default();
    dec.feed(&vmdk[..gd + 8], &mut sink).unwrap();
    assert_eq!(dec.pending_len(), 1, "the tables");
    let tables_end = gte_at(&vmdk, 1, 512);
    dec.feed(&vmdk[gd + 8..tables_end], &mut sink).unwrap();
    assert_eq!(dec.pending_len(), 2, "two runs of grains");
    dec.feed(&vmdk[tables_end..], &mut sink).unwrap();
    dec.finish(&mut sink).unwrap();
    assert_eq!(sink.disk(), raw);
}

// ------------------------------------------------------------------ header

#[test]
fn hosted_header_rules() {
    let (vmdk, _) = small_image();
    let head = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut h = vmdk[..512].to_vec();
        edit(&mut h);
        let h: [u8; 512] = h.try_into().unwrap();
        header::SparseHeader::parse_hosted(&h)
    };
    let ok = head(&|_| {}).unwrap();
    assert_eq!(ok.capacity_bytes(), 4 * MIB as u64);
    assert_eq!(ok.grain_bytes(), GRAIN as u64);
    assert_eq!(ok.gd_entries(), 1);
    for flags in [
        FLAG_COMPRESSED | 3,
        FLAG_MARKERS | 3,
        FLAG_COMPRESSED | FLAG_MARKERS,
    ] {
        let e = head(&|h| set(h, 8, &flags.to_le_bytes())).unwrap_err();
        assert_eq!(e, VmdkError::NotHosted { offset: 8, flags });
        assert_kind(&e, ErrorKind::Unsupported);
    }
    // qemu inflates grains whenever the algorithm is deflate.
    let e = head(&|h| set(h, 77, &COMPRESS_DEFLATE.to_le_bytes())).unwrap_err();
    assert_eq!(
        e,
        VmdkError::HostedCompression {
            offset: 77,
            algorithm: 1
        }
    );
    assert_kind(&e, ErrorKind::Unsupported);
    let e = head(&|h| set(h, 4, &4u32.to_le_bytes())).unwrap_err();
    assert!(matches!(
        e,
        VmdkError::UnsupportedVersion { version: 4, .. }
    ));
    let e = head(&|h| set(h, 20, &12u64.to_le_bytes())).unwrap_err();
    assert!(matches!(e, VmdkError::BadGrainSize { sectors: 12, .. }));
    // The stream decoder still refuses a hosted extent.
    let e = header::SparseHeader::parse(vmdk[..512].try_into().unwrap(), 0).unwrap_err();
    assert!(matches!(e, VmdkError::NotStreamOptimized { .. }), "{e}");
}

#[test]
fn header_fields_qemu_would_read_otherwise() {
    let (vmdk, _) = small_image();
    let with = |at: usize, bytes: &[u8]| {
        let mut v = vmdk.clone();
        set(&mut v, at, bytes);
        decode_err(&v)
    };
    let e = with(12, &0u64.to_le_bytes());
    assert_eq!(e, VmdkError::ZeroCapacity { offset: 12 });
    assert_kind(&e, ErrorKind::Unsupported);
    // An extent without an embedded descriptor (a split disk's).
    for (at, value) in [(28, 0u64), (36, 0), (28, 2)] {
        let e = with(at, &value.to_le_bytes());
        assert!(
            matches!(e, VmdkError::DescriptorPlacement { offset: 28, .. }),
            "{e}"
        );
        assert_kind(&e, ErrorKind::Unsupported);
    }
    let sectors = limits::MAX_VMDK_DESCRIPTOR / 512 + 1;
    let e = with(36, &sectors.to_le_bytes());
    assert_eq!(
        e,
        VmdkError::DescriptorLimit {
            offset: 36,
            sectors,
            limit: limits::MAX_VMDK_DESCRIPTOR
        }
    );
    assert_kind(&e, ErrorKind::LimitExceeded);
    let e = with(56, &u64::MAX.to_le_bytes());
    assert_eq!(e, VmdkError::DirectoryAtEnd { offset: 56 });
    // 64 TiB in 4 KiB grains with one entry per table: a directory far
    // past the limit (and qemu's own).
    let mut v = vmdk.clone();
    set(&mut v, 12, &((64u64 << 40) / 512).to_le_bytes());
    set(&mut v, 20, &8u64.to_le_bytes());
    set(&mut v, 44, &1u32.to_le_bytes());
    let e = decode_err(&v);
    assert!(
        matches!(e, VmdkError::DirectoryLimit { offset: 56, .. }),
        "{e}"
    );
    assert_kind(&e, ErrorKind::LimitExceeded);
}

#[test]
fn directory_inside_the_header() {
    let (vmdk, _) = small_image();
    // qemu would read the header's own bytes as directory entries.
    let mut v = vmdk.clone();
    set(&mut v, 56, &0u64.to_le_bytes());
    let e = decode_err(&v);
    assert_eq!(
        e,
        VmdkError::InHeader {
            offset: 56,
            what: Structure::Directory,
            sector: 0
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
    // Inside the descriptor: the two would share bytes.
    let mut v = vmdk.clone();
    set(&mut v, 56, &5u64.to_le_bytes());
    assert_eq!(
        decode_err(&v),
        VmdkError::Overlap {
            offset: 56,
            what: Structure::Directory,
            sector: 5,
            other: Structure::Descriptor,
            other_sector: 1
        }
    );
}

// ------------------------------------------------------------- descriptor

#[test]
fn parent_disk_is_refused() {
    // qemu-img writes a delta over another VMDK as monolithicSparse with
    // parentFileNameHint; qemu reads its unallocated grains from there.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vmdk");
    std::fs::write(&base, small_image().0).unwrap();
    let child = dir.path().join("child.vmdk");
    run(
        "qemu-img",
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "vmdk".as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            "-F".as_ref(),
            "vmdk".as_ref(),
            child.as_os_str(),
        ],
    );
    let vmdk = std::fs::read(&child).unwrap();
    let text = String::from_utf8_lossy(&vmdk[512..1536]).into_owned();
    let at = text.find("parentFileNameHint").expect(&text) as u64 + 512;
    let e = decode_err(&vmdk);
    assert_eq!(
        e,
        VmdkError::ParentDisk {
            offset: at,
            name: base.to_string_lossy().into_owned()
        }
    );
    assert_kind(&e, ErrorKind::Unsupported);
    // The same refusal whatever the cuts.
    for seed in 1..=3 {
        assert_eq!(
            decode_cut(&vmdk, &random_cuts(vmdk.len(), seed, 11)),
            Err(e.clone())
        );
    }
    // An empty hint names nothing: qemu opens no parent.
    let mut v = small_image().0;
    let desc = String::from_utf8_lossy(&v[512..1536]).into_owned();
    let end = desc.find('\0').unwrap();
    let mut edited = desc[..end].to_owned();
    edited.push_str("parentFileNameHint=\"\"\n");
    set(&mut v, 512, edited.as_bytes());
    assert!(decode(&v).is_ok());
}

#[test]
fn extent_of_a_split_disk_is_refused() {
    // twoGbMaxExtentSparse: the descriptor is its own file; qemu-img
    // leaves each extent's descriptor area empty, and qemu cannot open
    // an extent alone.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, mixed_raw(4 * MIB)).unwrap();
    let out = dir.path().join("split.vmdk");
    run(
        "qemu-img",
        &[
            "convert".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-O".as_ref(),
            "vmdk".as_ref(),
            "-o".as_ref(),
            "subformat=twoGbMaxExtentSparse".as_ref(),
            raw.as_os_str(),
            out.as_os_str(),
        ],
    );
    let extent = std::fs::read(dir.path().join("split-s001.vmdk")).unwrap();
    let e = decode_err(&extent);
    assert_eq!(
        e,
        VmdkError::DescriptorField {
            offset: 512,
            field: "CID"
        }
    );
    assert_kind(&e, ErrorKind::Unsupported);
    // A descriptor with CID but no parentCID: qemu refuses it too.
    let mut v = small_image().0;
    let text = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\n";
    v[512..512 * 21].fill(0);
    set(&mut v, 512, text);
    assert_eq!(
        decode_err(&v),
        VmdkError::DescriptorField {
            offset: 512,
            field: "parentCID"
        }
    );
}

// ------------------------------------------------------- directory, tables

/// `vmdk` with its grain directory and grain table moved after the
/// grains, the header pointing there: qemu reads it the same.
fn tables_after_the_grains(vmdk: &[u8]) -> Vec<u8> {
    let mut v = vmdk.to_vec();
    let gd = gd_at(&v);
    let gt = gte_at(&v, 0, 0);
    let gd_sector = (v.len() / 512) as u32;
    let table = v[gt..gt + 2048].to_vec();
    v.extend_from_slice(&(gd_sector + 1).to_le_bytes());
    v.resize(v.len() + 508, 0);
    v.extend_from_slice(&table);
    v[gd..gd + 4].fill(0);
    v[gt..gt + 2048].fill(0);
    set(&mut v, 56, &u64::from(gd_sector).to_le_bytes());
    v
}

#[test]
fn table_naming_a_passed_sector_is_refused() {
    // Tables after the data they map: reading them would need a spool;
    // the decoder has none, and says so.
    let (vmdk, raw) = small_image();
    let moved = tables_after_the_grains(&vmdk);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moved.vmdk");
    std::fs::write(&path, &moved).unwrap();
    assert_eq!(qemu_reads(&path), raw, "qemu reads the moved tables");
    let e = decode_err(&moved);
    assert_eq!(
        e,
        VmdkError::Passed {
            offset: gte_at(&moved, 0, 0) as u64,
            what: Structure::Grain { lba: 0 },
            sector: u64::from(gte(&moved, 0, 0))
        }
    );
    assert_kind(&e, ErrorKind::Unsupported);
    // The redundant table lies before the directory: the stream has passed
    // it when the directory names it.
    let rgt = field(&vmdk, field(&vmdk, 48, 8) as usize * 512, 4);
    let mut v = vmdk.clone();
    let gd = gd_at(&v);
    set(&mut v, gd, &(rgt as u32).to_le_bytes());
    assert_eq!(
        decode_err(&v),
        VmdkError::Passed {
            offset: gd as u64,
            what: Structure::Table { lba: 0 },
            sector: rgt
        }
    );
    // Into the directory or the descriptor, passed or not: an overlap.
    let gd_sector = gd as u64 / 512;
    for (sector, other, other_sector) in [
        (gd_sector, Structure::Directory, gd_sector),
        (3, Structure::Descriptor, 1),
    ] {
        let mut v = vmdk.clone();
        set_gte(&mut v, 0, 20, sector as u32);
        let e = decode_err(&v);
        assert!(
            matches!(e, VmdkError::Overlap { other: o, other_sector: s, .. } if o == other && s == other_sector),
            "{e}"
        );
        assert_kind(&e, ErrorKind::CorruptImage);
    }
}

#[test]
fn overlapping_grains_are_refused() {
    let (vmdk, _) = small_image();
    let first = gte(&vmdk, 0, 0);
    // Two entries naming one grain: qemu would show it twice.
    let mut v = vmdk.clone();
    set_gte(&mut v, 0, 30, first);
    let e = decode_err(&v);
    assert_eq!(
        e,
        VmdkError::Overlap {
            offset: gte_at(&v, 0, 30) as u64,
            what: Structure::Grain { lba: 30 * 128 },
            sector: u64::from(first),
            other: Structure::Grain { lba: 0 },
            other_sector: u64::from(first)
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
    // Sharing some sectors (with the grains on either side).
    let mut v = vmdk.clone();
    set_gte(&mut v, 0, 30, first + 8);
    assert!(matches!(
        decode_err(&v),
        VmdkError::Overlap {
            what: Structure::Grain { lba: 3840 },
            other: Structure::Grain { .. },
            ..
        }
    ));
    // A grain over its own table.
    let mut v = vmdk.clone();
    let gt_sector = (gte_at(&v, 0, 0) / 512) as u32;
    set_gte(&mut v, 0, 30, gt_sector + 1);
    assert!(
        matches!(
            decode_err(&v),
            VmdkError::Overlap {
                other: Structure::Table { lba: 0 },
                ..
            }
        ),
        "{}",
        decode_err(&v)
    );
    // Two directory entries naming one table.
    let mut raw = vec![0u8; 33 * MIB];
    raw[0] = 1;
    raw[33 * MIB - 1] = 1;
    let mut big = qemu_vmdk(&raw, &[]);
    let gd = gd_at(&big);
    let t0 = field(&big, gd, 4) as u32;
    set(&mut big, gd + 4, &t0.to_le_bytes());
    assert!(
        matches!(
            decode_err(&big),
            VmdkError::Overlap {
                what: Structure::Table { lba: 65536 },
                other: Structure::Table { lba: 0 },
                ..
            }
        ),
        "{}",
        decode_err(&big)
    );
}

#[test]
fn grains_beyond_the_capacity_are_refused() {
    // 4 MiB holds 64 grains; the table's other 448 entries are never read,
    // and must not map anything.
    let (vmdk, raw) = small_image();
    let mut v = vmdk.clone();
    let free = u32::try_from(v.len() / 512).unwrap();
    v.extend_from_slice(&vec![0u8; GRAIN]);
    set_gte(&mut v, 0, 64, free);
    let e = decode_err(&v);
    assert_eq!(
        e,
        VmdkError::EntryBeyondCapacity {
            offset: gte_at(&v, 0, 64) as u64,
            lba: 64 * 128,
            entry: free,
            capacity: 4 * MIB as u64
        }
    );
    assert_kind(&e, ErrorKind::CorruptImage);
    // Empty entries there are fine, and so is a zeroed grain when the
    // flag allows it.
    let mut z = qemu_vmdk(&raw, &["-o", "zeroed_grain=on"]);
    set_gte(&mut z, 0, 511, 1);
    assert_eq!(decode(&z).unwrap().disk(), raw);
    let mut nz = vmdk.clone();
    set_gte(&mut nz, 0, 511, 1);
    assert!(matches!(
        decode_err(&nz),
        VmdkError::EntryBeyondCapacity { entry: 1, .. }
    ));
}

#[test]
fn entry_of_one_is_a_sector_without_the_zeroed_grain_flag() {
    // Sector 1 is the descriptor's.
    let (mut v, _) = small_image();
    set_gte(&mut v, 0, 3, 1);
    assert!(
        matches!(
            decode_err(&v),
            VmdkError::Overlap {
                other: Structure::Descriptor,
                sector: 1,
                ..
            }
        ),
        "{}",
        decode_err(&v)
    );
}

// -------------------------------------------------------------- truncation

#[test]
fn truncation_names_the_structure() {
    let (vmdk, _) = small_image();
    let gt = gte_at(&vmdk, 0, 0);
    let last = vmdk.len() - GRAIN;
    let cases: [(usize, VmdkError); 5] = [
        (
            100,
            VmdkError::Truncated {
                offset: 0,
                end: 100,
                what: "header",
            },
        ),
        (
            gt + 10,
            VmdkError::Truncated {
                offset: gt as u64,
                end: gt as u64 + 10,
                what: "grain table",
            },
        ),
        (
            gt + 2048,
            VmdkError::Missing {
                offset: u64::from(gte(&vmdk, 0, 0)) * 512,
                end: gt as u64 + 2048,
                what: Structure::Grain { lba: 0 },
            },
        ),
        (
            vmdk.len() - 1,
            VmdkError::Truncated {
                offset: last as u64,
                end: vmdk.len() as u64 - 1,
                what: "grain",
            },
        ),
        (
            1000,
            VmdkError::Truncated {
                offset: 512,
                end: 1000,
                what: "embedded descriptor",
            },
        ),
    ];
    for (len, want) in cases {
        assert_eq!(decode_err(&vmdk[..len]), want, "cut at {len}");
        assert_kind(&want, ErrorKind::CorruptImage);
    }
    // With the entry's size known, a grain past it fails as soon as its
    // table names it.
    let cut = &vmdk[..vmdk.len() - 1];
    let e = decode_with(cut, &[], true).unwrap_err();
    assert!(
        matches!(
            e,
            VmdkError::OutsideEntry {
                what: Structure::Grain { .. },
                ..
            }
        ),
        "{e}"
    );
    // The header area must reach overHead, as qemu checks.
    let mut empty = qemu_vmdk(&vec![0u8; 4 * MIB], &[]);
    assert!(decode(&empty).unwrap().extents.is_empty());
    empty.truncate(64 * 512);
    assert!(matches!(
        decode_err(&empty),
        VmdkError::Truncated {
            what: "header area up to overHead",
            ..
        }
    ));
}

// -------------------------------------------------------------- contracts

#[test]
fn errors_do_not_depend_on_split_points() {
    let (vmdk, _) = small_image();
    let mut broken = vec![];
    let mut v = vmdk.clone();
    let first = gte(&v, 0, 0);
    set_gte(&mut v, 0, 30, first);
    broken.push(v);
    let mut v = vmdk.clone();
    v[512..1024].fill(0);
    broken.push(v);
    broken.push(tables_after_the_grains(&vmdk));
    broken.push(vmdk[..vmdk.len() - 100].to_vec());
    for v in broken {
        let whole = decode(&v);
        assert!(whole.is_err());
        assert_eq!(assert_split_invariant(&v, 3001), whole);
    }
}

#[test]
fn decoder_refuses_input_after_an_error() {
    let mut dec = VmdkSparseDecoder::new();
    let mut sink = Decoded::default();
    assert!(dec.feed(b"nope", &mut sink).is_ok());
    assert!(dec.finish(&mut sink).is_err());
    let e = dec.feed(b"more", &mut sink).unwrap_err();
    assert_eq!(leaf(&e), VmdkError::Poisoned { offset: 4 });
    // And after a successful finish, more bytes are a misuse.
    let (vmdk, _) = small_image();
    let mut dec = VmdkSparseDecoder::new();
    dec.feed(&vmdk, &mut sink).unwrap();
    dec.finish(&mut Decoded::default()).unwrap();
    assert!(dec.feed(&[0], &mut sink).is_err());
}

#[test]
fn error_message_names_what_and_where() {
    let (mut v, _) = small_image();
    let first = gte(&v, 0, 0);
    set_gte(&mut v, 0, 30, first);
    let at = gte_at(&v, 0, 30);
    let e = crate::Error::from(decode_err(&v)).in_entry_at("disk1.vmdk", 1536, 0);
    assert_eq!(
        e.to_string(),
        format!(
            "entry 'disk1.vmdk' at byte {}: grain for lba 3840 at sector {s} overlaps \
             the grain for lba 0 at sector {s}",
            1536 + at,
            s = gte(&v, 0, 0)
        )
    );
}

/// One random edit of the structures qemu reads the disk through: an
/// entry of the grain table at `gt` or of the directory at `gd` (where
/// the unedited image has them), or a header field.
fn mutate_tables(rng: &mut Rng, v: &mut [u8], gd: usize, gt: usize) {
    let sectors = (v.len() / 512) as u64;
    let entry = |rng: &mut Rng, old: u32| -> u32 {
        match rng.below(6) {
            0 => 0,
            1 => 1,
            2 => old.wrapping_add(rng.below(3) as u32 * 128),
            3 => old.wrapping_sub(rng.below(130) as u32),
            _ => rng.below(sectors + 200) as u32,
        }
    };
    match rng.below(8) {
        0..=4 => {
            let span = if rng.below(4) == 0 { 512 } else { 64 };
            let at = gt + 4 * rng.below(span) as usize;
            let old = field(v, at, 4) as u32;
            let new = entry(rng, old);
            set(v, at, &new.to_le_bytes());
        }
        5 => {
            let at = gd;
            let old = field(v, at, 4) as u32;
            let new = entry(rng, old);
            set(v, at, &new.to_le_bytes());
        }
        _ => {
            let (at, value): (usize, u64) = match rng.below(6) {
                0 => (56, rng.below(sectors + 4)),
                1 => (12, rng.below(2 * 8192 + 2)),
                2 => (20, [8u64, 16, 64, 256][rng.below(4) as usize]),
                3 => (44, [1u64, 4, 128, 512][rng.below(4) as usize]),
                4 => (8, field(v, 8, 4) ^ u64::from(FLAG_ZERO_GRAIN)),
                _ => (64, rng.below(200)),
            };
            let len = if matches!(at, 8 | 44) { 4 } else { 8 };
            set(v, at, &value.to_le_bytes()[..len]);
        }
    }
}

#[test]
fn decodes_damaged_tables_as_qemu_reads_them_or_refuses() {
    // The promise behind every refusal: whatever the decoder accepts, it
    // reads as qemu does.
    let dir = tempfile::tempdir().unwrap();
    let (_, base) = rewritten_image(dir.path());
    let path = dir.path().join("damaged.vmdk");
    let (gd, gt) = (gd_at(&base), gte_at(&base, 0, 0));
    let mut rng = Rng(0x5a5a);
    let (mut accepted, mut compared) = (0, 0);
    for case in 0..120 {
        let mut v = base.clone();
        for _ in 0..=rng.below(2) {
            mutate_tables(&mut rng, &mut v, gd, gt);
        }
        let Ok(d) = decode(&v) else {
            continue;
        };
        accepted += 1;
        std::fs::write(&path, &v).unwrap();
        let out = path.with_extension("read.raw");
        let read = Command::new("qemu-img")
            .args(["convert", "-f", "vmdk", "-O", "raw"])
            .arg(&path)
            .arg(&out)
            .output()
            .expect("qemu-img is required to run the VMDK tests");
        if !read.status.success() {
            continue;
        }
        compared += 1;
        assert!(
            std::fs::read(&out).unwrap() == d.disk(),
            "case {case}: qemu reads another disk"
        );
    }
    assert!(
        accepted >= 20 && compared >= 20,
        "{accepted} accepted, {compared} compared"
    );
}

#[test]
fn fuzz_seed_decodes() {
    // The seed of the `vmdk` fuzz target: a data grain, then a grain
    // zeroed by qemu-io, in a 256 KiB disk.
    let seed = include_bytes!("../../../fuzz/seeds/vmdk/qemu-sparse.vmdk");
    let d = assert_split_invariant(seed, 4093).unwrap();
    assert_eq!(d.capacity, Some(256 << 10));
    assert_eq!(d.zeros, [(GRAIN as u64, GRAIN as u64)]);
    assert_eq!(d.extents.len(), 1);
    assert!(d.extents[0].1.starts_with(b"ovaio fuzz seed"));
    fuzz_entry(seed);
}

#[test]
fn fuzz_entry_survives_mutations() {
    let (base, _) = small_image();
    let mut rng = Rng(42);
    let metadata_end = gte_at(&base, 0, 512);
    for _ in 0..200 {
        let mut v = base.clone();
        for _ in 0..(rng.next() % 8 + 1) {
            // Mostly in the header area, where the structures are.
            let span = if rng.next().is_multiple_of(4) {
                v.len()
            } else {
                metadata_end
            };
            let i = (rng.next() % span as u64) as usize;
            v[i] = rng.next() as u8;
        }
        let cut = (rng.next() % (v.len() as u64 + 1)) as usize;
        fuzz_entry(&v[..cut]);
        fuzz_entry(&v);
    }
    fuzz_entry(&base);
}
