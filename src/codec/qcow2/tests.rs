//! Tests of the qcow2 stream decoder against images made by qemu-img and
//! images crafted here (tables after data, hostile fields).

use crate::test_support::Rng;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use super::header::{self, CompressionType, Header};
use super::*;
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::ErrorKind;

// ---------------------------------------------------------------- helpers

/// Flat in-memory sink that checks the extent contract.
#[derive(Debug, Default)]
struct Sink {
    capacity: Option<u64>,
    bytes: Vec<u8>,
    fill: u8,
    zeros: Vec<(u64, u64)>,
    data_calls: usize,
}

impl Sink {
    fn with_fill(fill: u8) -> Self {
        Sink {
            fill,
            ..Sink::default()
        }
    }
}

impl ExtentSink for Sink {
    fn capacity(&mut self, bytes: u64) -> crate::Result<()> {
        assert!(self.capacity.is_none());
        self.capacity = Some(bytes);
        self.bytes = vec![self.fill; bytes as usize];
        Ok(())
    }
    fn data(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
        let cap = self.capacity.expect("capacity first");
        let end = offset + data.len() as u64;
        assert!(end <= cap, "data {offset}+{} past {cap}", data.len());
        self.bytes[offset as usize..end as usize].copy_from_slice(data);
        self.data_calls += 1;
        Ok(())
    }
    fn zero(&mut self, offset: u64, len: u64) -> crate::Result<()> {
        let cap = self.capacity.expect("capacity first");
        assert!(offset + len <= cap);
        self.bytes[offset as usize..(offset + len) as usize].fill(0);
        self.zeros.push((offset, len));
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Split {
    Whole,
    Random(u64),
    At(usize),
}

struct Decoded {
    result: crate::Result<()>,
    sink: Sink,
    backing: Option<String>,
}

fn decode_with(img: &[u8], split: Split, spool: bool, entry_size: bool, fill: u8) -> Decoded {
    let spool: Option<Box<dyn Spool + Send>> = if spool {
        Some(Box::new(MemSpool::new(64 << 20)))
    } else {
        None
    };
    let mut dec = Qcow2StreamDecoder::new(spool);
    if entry_size {
        dec = dec.with_entry_size(img.len() as u64);
    }
    let mut sink = Sink::with_fill(fill);
    let mut pieces: Vec<&[u8]> = Vec::new();
    match split {
        Split::Whole => pieces.push(img),
        Split::At(n) => {
            pieces.push(&img[..n]);
            pieces.push(&img[n..]);
        }
        Split::Random(seed) => {
            let mut rng = Rng(seed | 1);
            let mut i = 0;
            while i < img.len() {
                let max = if rng.below(4) == 0 { 70_000 } else { 600 };
                let n = (1 + rng.below(max) as usize).min(img.len() - i);
                pieces.push(&img[i..i + n]);
                i += n;
            }
        }
    }
    let mut result = Ok(());
    for p in pieces {
        result = dec.feed(p, &mut sink);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = dec.finish(&mut sink);
    }
    Decoded {
        result,
        sink,
        backing: dec.backing_file().map(str::to_owned),
    }
}

fn decode(img: &[u8], split: Split, spool: bool) -> Decoded {
    decode_with(img, split, spool, true, 0)
}

fn leaf(e: &crate::Error) -> Qcow2Error {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Qcow2Error>())
        .cloned()
        .unwrap_or_else(|| panic!("not a qcow2 leaf error: {e}"))
}

fn expect_err(img: &[u8], spool: bool) -> Qcow2Error {
    let d = decode(img, Split::Whole, spool);
    let e = d.result.expect_err("decoding must fail");
    let q = leaf(&e);
    // The same error whatever the split.
    let d2 = decode(img, Split::Random(7), spool);
    assert_eq!(leaf(&d2.result.expect_err("must fail in pieces")), q);
    q
}

/// Deterministic disk content: 4 KiB blocks, one third of them holes,
/// some blocks half-random so compression does real work.
fn pattern(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (i, block) in v.chunks_mut(4096).enumerate() {
        if (i / 16) % 3 == 1 {
            continue;
        }
        for (j, b) in block.iter_mut().enumerate() {
            *b = if j < 2048 {
                (i as u8).wrapping_mul(31).wrapping_add(j as u8 / 8)
            } else {
                rng.next() as u8
            };
        }
    }
    v
}

fn qemu_available() -> bool {
    crate::test_support::require_tool("qemu-img")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
}

fn check_all_splits(img: &[u8], expected: &[u8], spool: bool) {
    for split in [Split::Whole, Split::Random(1), Split::Random(0xdead_beef)] {
        let d = decode(img, split, spool);
        d.result
            .unwrap_or_else(|e| panic!("{split:?}: {}", e.one_line()));
        assert_eq!(d.sink.capacity, Some(expected.len() as u64));
        assert!(d.sink.bytes == expected, "{split:?}: content differs");
    }
    // Also without knowing the entry size.
    let d = decode_with(img, Split::Random(3), spool, false, 0);
    d.result.unwrap();
    assert!(d.sink.bytes == expected);
}

// ---------------------------------------------------------- qemu images

/// Converts `raw` with `qemu-img convert -O qcow2 ARGS` and returns the image.
fn qemu_convert(dir: &Path, raw: &[u8], args: &[&str]) -> Vec<u8> {
    let src = dir.join("src.raw");
    let dst = dir.join("out.qcow2");
    write_file(&src, raw);
    let _ = std::fs::remove_file(&dst);
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-f", "raw", "-O", "qcow2"])
        .args(args)
        .arg(&src)
        .arg(&dst);
    run(&mut cmd);
    std::fs::read(&dst).unwrap()
}

/// Virtual size not a multiple of the cluster size (qemu rounds to 512).
const QEMU_SIZE: usize = 3 * 1024 * 1024 + 12800;

#[test]
fn qemu_v3_default() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern(QEMU_SIZE);
    let img = qemu_convert(dir.path(), &raw, &[]);
    let h = Header::parse(&img[..112]).unwrap();
    assert_eq!(h.version, 3);
    assert_ne!(h.size % h.cluster_size(), 0, "want a partial last cluster");
    // qemu-img puts every L2 table before the data it maps: no spool needed.
    check_all_splits(&img, &raw, false);
    check_all_splits(&img, &raw, true);
}

#[test]
fn qemu_v2_compat_0_10() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern(QEMU_SIZE);
    let img = qemu_convert(dir.path(), &raw, &["-o", "compat=0.10"]);
    assert_eq!(Header::parse(&img[..72]).unwrap().version, 2);
    check_all_splits(&img, &raw, false);
}

#[test]
fn qemu_compressed_zlib() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern(QEMU_SIZE);
    let img = qemu_convert(dir.path(), &raw, &["-c"]);
    let h = Header::parse(&img[..112]).unwrap();
    assert_eq!(h.compression_type, CompressionType::Zlib);
    check_all_splits(&img, &raw, false);
}

#[test]
fn qemu_compressed_zstd() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern(QEMU_SIZE);
    let img = qemu_convert(dir.path(), &raw, &["-c", "-o", "compression_type=zstd"]);
    let h = Header::parse(&img[..112]).unwrap();
    assert_eq!(h.compression_type, CompressionType::Zstd);
    check_all_splits(&img, &raw, false);
}

#[test]
fn qemu_small_clusters_many_l2_tables() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern(QEMU_SIZE);
    for cs in ["512", "4096"] {
        let img = qemu_convert(dir.path(), &raw, &["-o", &format!("cluster_size={cs}")]);
        check_all_splits(&img, &raw, false);
        let img = qemu_convert(
            dir.path(),
            &raw,
            &["-c", "-o", &format!("cluster_size={cs}")],
        );
        // qemu packs compressed clusters into shared sectors, so with small
        // clusters one can land before the L2 table that maps it: whether
        // it does depends on the data. The import pipeline always spools.
        check_all_splits(&img, &raw, true);
    }
}

#[test]
fn qemu_zero_clusters() {
    if !qemu_available() || !crate::test_support::require_tool("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img_path = dir.path().join("z.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img_path)
        .arg("4M"));
    run(Command::new("qemu-io")
        .args(["-c", "write -q -P 0x55 0 2M", "-c", "write -q -z 512k 1M"])
        .args(["-c", "write -q -z 3M 128k"])
        .arg(&img_path));
    let img = std::fs::read(&img_path).unwrap();
    // Unallocated clusters must stay untouched: fill the sink with 0xee.
    let mut expected = vec![0xeeu8; 4 << 20];
    expected[..2 << 20].fill(0x55);
    expected[512 << 10..1536 << 10].fill(0);
    expected[3 << 20..(3 << 20) + (128 << 10)].fill(0);
    for split in [Split::Whole, Split::Random(11)] {
        let d = decode_with(&img, split, false, true, 0xee);
        d.result.unwrap();
        assert!(d.sink.bytes == expected);
        assert_eq!(
            d.sink.zeros,
            vec![(512 << 10, 1 << 20), (3 << 20, 128 << 10)]
        );
    }
}

#[test]
fn qemu_backing_file_reported_never_opened() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    write_file(&base, &pattern(1 << 20));
    let over = dir.path().join("over.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&over));
    run(Command::new("qemu-io")
        .args(["-c", "write -q -P 0x11 64k 64k"])
        .arg(&over));
    let img = std::fs::read(&over).unwrap();
    // Remove the base: the decoder must not need it.
    std::fs::remove_file(&base).unwrap();
    let d = decode(&img, Split::Random(5), false);
    d.result.unwrap();
    assert_eq!(d.backing.as_deref(), base.to_str());
    let mut expected = vec![0u8; 1 << 20];
    expected[64 << 10..128 << 10].fill(0x11);
    assert!(d.sink.bytes == expected);
}

// --------------------------------------------------------- crafted images

#[derive(Clone, Debug)]
enum C {
    /// Uncompressed content (≤ one cluster).
    Data(Vec<u8>),
    /// Zero flag.
    Zero,
    /// Content stored compressed.
    Comp(Vec<u8>),
    /// Exactly these compressed bytes.
    CompRaw(Vec<u8>),
    /// An L2 entry pointing at this host offset (hostile).
    Raw(u64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// header, L1, L2 tables, data.
    MetaFirst,
    /// header, L1, data, L2 tables.
    L2AfterData,
    /// header, data, L2 tables, L1.
    AllMetaLast,
    /// header, L1, the first L2 table, data, the other L2 tables.
    FirstL2First,
}

#[derive(Clone, Debug)]
struct Craft {
    cb: u32,
    size: u64,
    version: u32,
    ctype: CompressionType,
    clusters: Vec<(u64, C)>,
    layout: Layout,
    backing: Option<String>,
    incompat: u64,
    crypt: u32,
}

impl Craft {
    fn new(cb: u32, size: u64) -> Self {
        Craft {
            cb,
            size,
            version: 3,
            ctype: CompressionType::Zlib,
            clusters: Vec::new(),
            layout: Layout::MetaFirst,
            backing: None,
            incompat: 0,
            crypt: 0,
        }
    }

    fn cs(&self) -> u64 {
        1 << self.cb
    }

    fn compress(&self, content: &[u8]) -> Vec<u8> {
        let mut full = content.to_vec();
        full.resize(self.cs() as usize, 0);
        match self.ctype {
            CompressionType::Zlib => {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&full).unwrap();
                e.finish().unwrap()
            }
            CompressionType::Zstd => zstd::bulk::compress(&full, 3).unwrap(),
        }
    }

    /// Returns (image, expected guest content).
    fn build(&self) -> (Vec<u8>, Vec<u8>) {
        let cs = self.cs();
        let l2e = cs / 8;
        let l1_size = header::l1_entries_for(self.size, self.cb);
        let l1_bytes = (l1_size * 8).div_ceil(cs) * cs;
        let mut expected = vec![0u8; self.size as usize];
        // Host layout: allocate in order.
        let mut next = cs; // after the header cluster
        let mut alloc = |n: u64| {
            let o = next;
            next += n.div_ceil(cs) * cs;
            o
        };
        let mut l1_off = 0;
        if self.layout != Layout::AllMetaLast {
            l1_off = alloc(l1_bytes);
        }
        let mut l2_tabs: Vec<u64> = self.clusters.iter().map(|(g, _)| g / l2e).collect();
        l2_tabs.sort();
        l2_tabs.dedup();
        let mut l2_off = std::collections::HashMap::new();
        match self.layout {
            Layout::MetaFirst => {
                for t in &l2_tabs {
                    l2_off.insert(*t, alloc(cs));
                }
            }
            Layout::FirstL2First => {
                l2_off.insert(l2_tabs[0], alloc(cs));
            }
            _ => {}
        }
        let mut body: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut entries: Vec<(u64, u64)> = Vec::new();
        let mut comp_area: Vec<u8> = Vec::new();
        let mut comp_entries: Vec<(u64, usize, usize)> = Vec::new();
        for (g, c) in &self.clusters {
            let gofs = (g * cs) as usize;
            let glen = (self.size as usize - gofs).min(cs as usize);
            match c {
                C::Data(d) => {
                    let o = alloc(cs);
                    let mut d = d.clone();
                    d.resize(cs as usize, 0);
                    expected[gofs..gofs + glen].copy_from_slice(&d[..glen]);
                    body.push((o, d));
                    entries.push((*g, header::OFLAG_COPIED | o));
                }
                C::Zero => {
                    expected[gofs..gofs + glen].fill(0);
                    entries.push((*g, header::OFLAG_ZERO));
                }
                C::Comp(d) | C::CompRaw(d) => {
                    let bytes = if let C::Comp(_) = c {
                        let mut d2 = d.clone();
                        d2.resize(cs as usize, 0);
                        expected[gofs..gofs + glen].copy_from_slice(&d2[..glen]);
                        self.compress(d)
                    } else {
                        d.clone()
                    };
                    comp_entries.push((*g, comp_area.len(), bytes.len()));
                    comp_area.extend_from_slice(&bytes);
                }
                C::Raw(host) => entries.push((*g, *host)),
            }
        }
        if !comp_area.is_empty() {
            let base = alloc(comp_area.len() as u64);
            for (g, off, len) in comp_entries {
                let host = base + off as u64;
                entries.push((
                    g,
                    header::compressed_l2_entry(host, len as u64, self.cb).unwrap(),
                ));
            }
            body.push((base, comp_area));
        }
        if self.layout != Layout::MetaFirst {
            for t in &l2_tabs {
                if !l2_off.contains_key(t) {
                    l2_off.insert(*t, alloc(cs));
                }
            }
        }
        if self.layout == Layout::AllMetaLast {
            l1_off = alloc(l1_bytes);
        }
        let mut img = vec![0u8; next as usize];
        let h = Header {
            version: self.version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: self.cb,
            size: self.size,
            crypt_method: self.crypt,
            l1_size: l1_size as u32,
            l1_table_offset: l1_off,
            refcount_table_offset: 0,
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: self.incompat
                | if self.ctype == CompressionType::Zstd {
                    header::INCOMPAT_COMPRESSION
                } else {
                    0
                },
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: if self.version == 2 { 72 } else { 112 },
            compression_type: self.ctype,
        };
        let mut hb = h.to_bytes();
        if let Some(name) = &self.backing {
            let off = hb.len() as u64;
            hb[8..16].copy_from_slice(&off.to_be_bytes());
            hb[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            hb.extend_from_slice(name.as_bytes());
        }
        img[..hb.len()].copy_from_slice(&hb);
        for (t, o) in &l2_off {
            let l1e = header::OFLAG_COPIED | o;
            let at = (l1_off + t * 8) as usize;
            img[at..at + 8].copy_from_slice(&l1e.to_be_bytes());
        }
        for (g, e) in entries {
            let at = (l2_off[&(g / l2e)] + (g % l2e) * 8) as usize;
            img[at..at + 8].copy_from_slice(&e.to_be_bytes());
        }
        for (o, d) in body {
            img[o as usize..o as usize + d.len()].copy_from_slice(&d);
        }
        (img, expected)
    }
}

fn content(seed: u64, n: usize) -> Vec<u8> {
    let mut r = Rng(seed * 2 + 1);
    (0..n)
        .map(|i| {
            if i % 64 < 32 {
                (i / 64) as u8 ^ seed as u8
            } else {
                r.next() as u8
            }
        })
        .collect()
}

/// Small image: 512-byte clusters, 5 L2 tables, every kind of cluster,
/// virtual size not a cluster multiple.
fn small(layout: Layout) -> Craft {
    let mut c = Craft::new(9, 64 * 512 * 4 + 700);
    c.layout = layout;
    for g in [0u64, 1, 2, 5, 63, 64, 66, 130, 200, 257] {
        c.clusters.push((g, C::Data(content(g, 512))));
    }
    for g in [3u64, 65, 131] {
        c.clusters.push((g, C::Comp(content(g + 1000, 512))));
    }
    c.clusters.push((4, C::Zero));
    c.clusters.push((199, C::Zero));
    c
}

#[test]
fn crafted_meta_first_every_split() {
    let (img, expected) = small(Layout::MetaFirst).build();
    for n in 0..=img.len() {
        let d = decode(&img, Split::At(n), false);
        d.result
            .unwrap_or_else(|e| panic!("split at {n}: {}", e.one_line()));
        assert!(d.sink.bytes == expected, "split at {n}");
    }
    check_all_splits(&img, &expected, false);
}

#[test]
fn crafted_metadata_after_data_needs_spool() {
    for layout in [
        Layout::L2AfterData,
        Layout::AllMetaLast,
        Layout::FirstL2First,
    ] {
        let (img, expected) = small(layout).build();
        check_all_splits(&img, &expected, true);
        for n in (0..=img.len()).step_by(7) {
            let d = decode(&img, Split::At(n), true);
            d.result
                .unwrap_or_else(|e| panic!("{layout:?} split at {n}: {}", e.one_line()));
            assert!(d.sink.bytes == expected, "{layout:?} split at {n}");
        }
        let e = expect_err(&img, false);
        assert!(
            matches!(e, Qcow2Error::NeedsSpool { .. }),
            "{layout:?}: {e:?}"
        );
        assert_eq!(crate::Error::from(e).kind(), ErrorKind::Unsupported);
    }
}

#[test]
fn crafted_v2_and_zstd_and_big_clusters() {
    let mut c = small(Layout::MetaFirst);
    c.version = 2;
    c.clusters.retain(|(_, k)| !matches!(k, C::Zero));
    let (img, expected) = c.build();
    check_all_splits(&img, &expected, false);

    let mut c = small(Layout::L2AfterData);
    c.ctype = CompressionType::Zstd;
    let (img, expected) = c.build();
    check_all_splits(&img, &expected, true);

    // 2 MiB clusters, partial last cluster, compressed and not.
    let mut c = Craft::new(21, (2 << 20) * 2 + 4096);
    c.clusters.push((0, C::Comp(content(1, 2 << 20))));
    c.clusters.push((1, C::Data(content(2, 2 << 20))));
    c.clusters.push((2, C::Comp(content(3, 4096))));
    let (img, expected) = c.build();
    check_all_splits(&img, &expected, false);
}

#[test]
fn data_runs_are_passed_through_in_large_slices() {
    let mut c = Craft::new(16, 8 << 20);
    for g in 0..128 {
        c.clusters.push((g, C::Data(content(g, 1 << 16))));
    }
    let (img, expected) = c.build();
    let d = decode(&img, Split::Whole, false);
    d.result.unwrap();
    assert!(d.sink.bytes == expected);
    // One contiguous run in host and guest: one extent.
    assert_eq!(d.sink.data_calls, 1);
}

#[test]
fn truncated_image_names_guest_offset() {
    let (img, _) = small(Layout::MetaFirst).build();
    let cut = &img[..img.len() - 600];
    let d = decode_with(cut, Split::Random(3), false, false, 0);
    match leaf(&d.result.unwrap_err()) {
        Qcow2Error::MissingCluster { guest, end, .. } => {
            assert_eq!(end, cut.len() as u64);
            assert_eq!(guest % 512, 0);
        }
        e => panic!("{e:?}"),
    }
    let d = decode_with(&img[..50], Split::Whole, false, false, 0);
    assert!(matches!(
        leaf(&d.result.unwrap_err()),
        Qcow2Error::Truncated { .. }
    ));
}

// ---------------------------------------------------------- hostile input

#[test]
fn table_outside_entry() {
    let (img, _) = small(Layout::MetaFirst).build();
    // Point the L1 entry for table 0 far beyond the entry.
    let mut bad = img.clone();
    let l1 = 512usize;
    bad[l1..l1 + 8].copy_from_slice(&(header::OFLAG_COPIED | (1u64 << 40)).to_be_bytes());
    let e = expect_err(&bad, false);
    assert_eq!(
        e,
        Qcow2Error::OutsideEntry {
            what: "L2 table",
            offset: 1 << 40,
            end: (1 << 40) + 512,
            entry_size: bad.len() as u64
        }
    );
    // L1 itself outside the entry.
    let mut bad = img.clone();
    bad[40..48].copy_from_slice(&(1u64 << 30).to_be_bytes());
    assert!(matches!(
        expect_err(&bad, true),
        Qcow2Error::OutsideEntry {
            what: "L1 table",
            ..
        }
    ));
}

#[test]
fn l2_pointing_at_header_or_l1_or_unaligned() {
    // A data cluster on the L1 table (cluster 1 of a 512-byte-cluster image).
    let mut c = small(Layout::MetaFirst);
    c.clusters.push((7, C::Raw(header::OFLAG_COPIED | 512)));
    let (img, _) = c.build();
    let e = expect_err(&img, true);
    assert!(
        matches!(&e, Qcow2Error::Corrupt { reason, .. } if reason.contains("L1 table")),
        "{e:?}"
    );

    // An unaligned data cluster.
    let mut c = Craft::new(12, 64 << 10);
    c.clusters.push((0, C::Data(content(0, 4096))));
    c.clusters.push((1, C::Raw(header::OFLAG_COPIED | 0x2200)));
    let (img, _) = c.build();
    let e = expect_err(&img, true);
    assert!(
        matches!(&e, Qcow2Error::Corrupt { reason, .. } if reason.contains("not aligned")),
        "{e:?}"
    );

    // A compressed cluster inside the header cluster.
    let mut c = Craft::new(12, 64 << 10);
    c.clusters.push((
        1,
        C::Raw(header::compressed_l2_entry(200, 100, 12).unwrap()),
    ));
    let (img, _) = c.build();
    let e = expect_err(&img, true);
    assert!(
        matches!(&e, Qcow2Error::Corrupt { reason, .. } if reason.contains("header cluster")),
        "{e:?}"
    );
}

#[test]
fn compressed_bomb_is_refused() {
    let mut c = Craft::new(12, 64 << 10);
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![7u8; 1 << 20]).unwrap();
    c.clusters.push((0, C::CompRaw(e.finish().unwrap())));
    let (img, _) = c.build();
    assert!(matches!(
        expect_err(&img, false),
        Qcow2Error::CompressedBomb {
            guest: 0,
            cluster_size: 4096,
            ..
        }
    ));

    let mut c = Craft::new(12, 64 << 10);
    c.ctype = CompressionType::Zstd;
    c.clusters.push((
        0,
        C::CompRaw(zstd::bulk::compress(&vec![7u8; 1 << 20], 3).unwrap()),
    ));
    let (img, _) = c.build();
    assert!(matches!(
        expect_err(&img, false),
        Qcow2Error::CompressedBomb { .. }
    ));

    // Garbage instead of deflate data.
    let mut c = Craft::new(12, 64 << 10);
    c.clusters.push((0, C::CompRaw(vec![0xff; 300])));
    let (img, _) = c.build();
    assert!(matches!(
        expect_err(&img, false),
        Qcow2Error::BadCompressed { .. }
    ));
}

#[test]
fn refused_header_features() {
    let mut c = small(Layout::MetaFirst);
    c.incompat = header::INCOMPAT_DATA_FILE;
    let e = expect_err(&c.build().0, true);
    assert!(
        matches!(&e, Qcow2Error::Unsupported { feature, .. } if feature.contains("external data file"))
    );
    assert_eq!(crate::Error::from(e).kind(), ErrorKind::Unsupported);

    c.incompat = header::INCOMPAT_EXTENDED_L2;
    assert!(matches!(
        expect_err(&c.build().0, true),
        Qcow2Error::Unsupported { .. }
    ));

    c.incompat = header::INCOMPAT_CORRUPT;
    let e = expect_err(&c.build().0, true);
    assert_eq!(e, Qcow2Error::MarkedCorrupt);
    assert_eq!(crate::Error::from(e).kind(), ErrorKind::CorruptImage);

    c.incompat = header::INCOMPAT_DIRTY;
    let (img, expected) = c.build();
    check_all_splits(&img, &expected, false);

    c.incompat = 0;
    c.crypt = 2;
    let e = expect_err(&c.build().0, true);
    assert!(
        matches!(&e, Qcow2Error::Unsupported { feature, .. } if feature.contains("encryption"))
    );

    let mut bad = small(Layout::MetaFirst).build().0;
    bad[3] = 0;
    assert_eq!(expect_err(&bad, true), Qcow2Error::BadMagic);
    let mut bad = small(Layout::MetaFirst).build().0;
    bad[7] = 4;
    assert_eq!(expect_err(&bad, true), Qcow2Error::UnsupportedVersion(4));
    let mut bad = small(Layout::MetaFirst).build().0;
    bad[23] = 22;
    assert!(matches!(
        expect_err(&bad, true),
        Qcow2Error::InvalidHeader {
            field: "cluster_bits",
            ..
        }
    ));
    // L1 too small for the size.
    let mut bad = small(Layout::MetaFirst).build().0;
    bad[36..40].copy_from_slice(&1u32.to_be_bytes());
    assert!(matches!(
        expect_err(&bad, true),
        Qcow2Error::Corrupt { offset: 36, .. }
    ));
}

#[test]
fn backing_file_is_reported() {
    let mut c = small(Layout::MetaFirst);
    c.backing = Some("/etc/passwd".into());
    let (img, expected) = c.build();
    for n in [0, 100, 115, 120, 200, img.len()] {
        let d = decode(&img, Split::At(n), false);
        d.result.unwrap();
        assert_eq!(d.backing.as_deref(), Some("/etc/passwd"));
        assert!(d.sink.bytes == expected);
    }
    let mut dec = Qcow2StreamDecoder::new(None);
    let mut sink = Sink::default();
    dec.feed(&img[..112], &mut sink).unwrap();
    assert!(dec.has_backing_file());
}

#[test]
fn poisoned_after_error() {
    let mut dec = Qcow2StreamDecoder::new(None);
    let mut sink = Sink::default();
    assert!(dec.feed(b"nope", &mut sink).is_err());
    assert_eq!(
        leaf(&dec.feed(b"QFI", &mut sink).unwrap_err()),
        Qcow2Error::Poisoned
    );
}

#[test]
fn decoder_is_send() {
    fn is_send<T: Send>() {}
    is_send::<Qcow2StreamDecoder>();
}

#[test]
fn fuzz_entry_survives_mutations() {
    let mut seeds = vec![
        small(Layout::MetaFirst).build().0,
        small(Layout::AllMetaLast).build().0,
    ];
    let mut z = small(Layout::L2AfterData);
    z.ctype = CompressionType::Zstd;
    seeds.push(z.build().0);
    let mut rng = Rng(42);
    for seed in &seeds {
        fuzz_entry(seed);
        for _ in 0..300 {
            let mut m = seed.clone();
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(m.len() as u64) as usize;
                match rng.below(3) {
                    0 => m[i] = rng.next() as u8,
                    1 => m[i] ^= 1 << rng.below(8),
                    _ => {
                        // Hit table entries and header fields more often.
                        let i = (rng.below(4) * 512 + rng.below(64) * 8) as usize;
                        if i + 8 <= m.len() {
                            m[i..i + 8].copy_from_slice(&rng.next().to_be_bytes());
                        }
                    }
                }
            }
            if rng.below(5) == 0 {
                let n = rng.below(m.len() as u64) as usize;
                m.truncate(n);
            }
            fuzz_entry(&m);
        }
    }
}

#[test]
fn empty_image_with_wild_l1_offset() {
    let mut c = Craft::new(16, 0);
    c.layout = Layout::MetaFirst;
    let (mut img, expected) = c.build();
    img[40..48].copy_from_slice(&u64::MAX.to_be_bytes());
    img[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    fuzz_entry(&img);
    img[36..40].copy_from_slice(&7u32.to_be_bytes());
    check_all_splits(&img, &expected, false);
}
