//! Tests of the qcow2 stream encoder: layout arithmetic, the `Read`
//! contract, round trips through the spool-less stream decoder, and
//! `qemu-img check`/`compare`/`info` as referee.

use super::*;
use crate::test_support::Rng;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::codec::map::{AllocationMap, RangeKind};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const CS: u64 = 64 * KIB;

fn map_of(capacity: u64, ranges: &[(u64, u64, RangeKind)]) -> AllocationMap {
    let mut m = AllocationMap::new(capacity);
    for &(o, l, k) in ranges {
        m.push(o, l, k).unwrap();
    }
    m
}

use RangeKind::{Data, Zero};

fn qemu_available() -> bool {
    crate::test_support::require_tool("qemu-img")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// Reads the whole image with read calls of varying sizes (seeded).
fn encode_bytes(map: &AllocationMap, cluster_bits: u32, seed: u64, sizes: &[usize]) -> Vec<u8> {
    let layout = Qcow2Layout::with_cluster_bits(map, cluster_bits).unwrap();
    let total = layout.total_size();
    let mut enc = Qcow2Encoder::new(layout, PatternReader::new(map, seed));
    let mut out = Vec::new();
    let mut buf = vec![0u8; sizes.iter().copied().max().unwrap_or(1)];
    let mut i = 0;
    loop {
        let want = sizes[i % sizes.len()];
        i += 1;
        let n = enc.read(&mut buf[..want]).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out.len() as u64, total);
    assert_eq!(enc.read(&mut buf).unwrap(), 0, "EOF is sticky");
    out
}

/// Streams the image into `path`; returns its length.
fn encode_to_file(map: &AllocationMap, cluster_bits: u32, seed: u64, path: &Path) -> u64 {
    let layout = Qcow2Layout::with_cluster_bits(map, cluster_bits).unwrap();
    let mut enc = Qcow2Encoder::new(layout, PatternReader::new(map, seed));
    let mut w = BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 2 * MIB as usize];
    let mut n_total = 0u64;
    loop {
        let n = enc.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).unwrap();
        n_total += n as u64;
    }
    w.flush().unwrap();
    n_total
}

/// A sparse raw file with the same guest content.
fn write_raw(map: &AllocationMap, seed: u64, path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(map.capacity()).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for r in map.ranges().iter().filter(|r| r.kind == Data) {
        let mut o = r.offset;
        let end = r.offset + r.len;
        while o < end {
            let n = (end - o).min(MIB) as usize;
            PatternReader::pattern(seed, o, &mut buf[..n]);
            f.write_all_at(&buf[..n], o).unwrap();
            o += n as u64;
        }
    }
}

/// Encodes `map`, then: file length == total_size, `qemu-img check` clean,
/// `qemu-img info` virtual size, `qemu-img compare` against a raw file with
/// the same content, and the spool-less decoder round trip.
fn referee(map: &AllocationMap, cluster_bits: u32, seed: u64) {
    referee_with(map, cluster_bits, seed, true);
}

/// [`referee`], optionally without the raw comparison (for capacities the
/// file system cannot hold as a sparse file).
fn referee_with(map: &AllocationMap, cluster_bits: u32, seed: u64, compare: bool) {
    let layout = Qcow2Layout::with_cluster_bits(map, cluster_bits).unwrap();
    encode_decode_check(map, cluster_bits, seed, 1 << 20);
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("out.qcow2");
    let raw = dir.path().join("ref.raw");
    let n = encode_to_file(map, cluster_bits, seed, &img);
    assert_eq!(n, layout.total_size());
    assert_eq!(std::fs::metadata(&img).unwrap().len(), layout.total_size());
    let check = run(Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&img));
    assert!(check.contains("No errors were found"), "{check}");
    assert!(!check.contains("leak"), "{check}");
    let info = run(Command::new("qemu-img")
        .args(["info", "-f", "qcow2", "--output=json"])
        .arg(&img));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"].as_u64(), Some(layout.virtual_size()));
    assert_eq!(
        info["format-specific"]["data"]["compat"].as_str(),
        Some("1.1")
    );
    let qmap = run(Command::new("qemu-img")
        .args(["map", "-f", "qcow2", "--output=json"])
        .arg(&img));
    let qmap: serde_json::Value = serde_json::from_str(&qmap).unwrap();
    let mut allocated: Vec<(u64, u64)> = Vec::new();
    for e in qmap.as_array().unwrap() {
        if e["data"].as_bool() == Some(true) {
            let (o, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            match allocated.last_mut() {
                Some(last) if last.1 == o => last.1 = o + l,
                _ => allocated.push((o, o + l)),
            }
        }
    }
    assert_eq!(allocated, layout.allocated_bytes().collect::<Vec<_>>());
    if !compare {
        return;
    }
    write_raw(map, seed, &raw);
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&raw)
        .arg(&img));
}

// ------------------------------------------------------------ layout

#[test]
fn layout_of_empty_disk() {
    let l = Qcow2Layout::new(&AllocationMap::new(MIB)).unwrap();
    // header, refcount table, refcount block, L1.
    assert_eq!(l.total_size(), 4 * CS);
    assert_eq!(l.data_clusters(), 0);
    assert_eq!(l.virtual_size(), MIB);
    let h = l.header();
    assert_eq!(h.l1_size, 1);
    assert_eq!(h.l1_table_offset, 3 * CS);
    assert_eq!(h.refcount_table_offset, CS);
    assert_eq!(Header::parse(&h.to_bytes()), Ok(h));
}

#[test]
fn layout_counts_partial_and_shared_clusters() {
    // Two data ranges in one cluster, one straddling two clusters, one at
    // the partial tail.
    let cap = 10 * CS + 1000;
    let m = map_of(
        cap,
        &[
            (10, 5, Data),
            (15, 100, Zero),
            (200, 7, Data),
            (3 * CS - 1, 2, Data),
            (10 * CS + 10, 10, Data),
        ],
    );
    let l = Qcow2Layout::new(&m).unwrap();
    assert_eq!(l.data_clusters(), 4);
    // header, RT, RB, L1, one L2, 4 data.
    assert_eq!(l.total_size(), 9 * CS);
    assert_eq!(l.virtual_size(), 10 * CS + 1024);
}

#[test]
fn layout_one_l2_per_used_l1_slot() {
    let per_l2 = CS * CS / 8; // 512 MiB
    let m = map_of(
        5 * GIB,
        &[
            (0, 1, Data),
            (per_l2 - 1, 2, Data),
            (3 * per_l2 + 5, 1, Data),
        ],
    );
    let l = Qcow2Layout::new(&m).unwrap();
    assert_eq!(l.data_clusters(), 4);
    // header, RT, RB, L1, 3 L2 + 4 data.
    assert_eq!(l.total_size(), (4 + 3 + 4) * CS);
}

#[test]
fn layout_refcount_fixed_point() {
    // 512-byte clusters: a refcount block covers 256 clusters, a refcount
    // table cluster 64 blocks.
    for cap in [0, 512, 100 * KIB, 8 * MIB, 8 * MIB + 77] {
        let m = map_of(cap, &[(0, cap, Data)]);
        let l = Qcow2Layout::with_cluster_bits(&m, 9).unwrap();
        let n = l.total_size() / 512;
        assert_eq!(l.rb_clusters, n.div_ceil(256), "cap {cap}");
        assert_eq!(l.rt_clusters, l.rb_clusters.div_ceil(64), "cap {cap}");
        // Minimal: one block fewer would not cover every cluster.
        assert!((l.rb_clusters - 1) * 256 < n);
    }
}

#[test]
fn layout_limits() {
    let e = Qcow2Layout::new(&AllocationMap::new(limits::MAX_CAPACITY + 1)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    let e = Qcow2Layout::with_cluster_bits(&AllocationMap::new(MIB), 8).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // 512-byte clusters map 32 KiB per L1 entry: 1 TiB needs too many.
    let e = Qcow2Layout::with_cluster_bits(&AllocationMap::new(1 << 40), 9).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    let l = Qcow2Layout::new(&AllocationMap::new(limits::MAX_CAPACITY)).unwrap();
    // 128 Ki L1 entries = 1 MiB = 16 clusters.
    assert_eq!(l.total_size(), (3 + 16) * CS);
    let l = Qcow2Layout::new(&AllocationMap::new(0)).unwrap();
    assert_eq!(l.total_size(), 3 * CS);
    assert_eq!(l.header().l1_table_offset, 3 * CS);
}

// ------------------------------------------------------------ Read contract

#[test]
fn read_sizes_do_not_change_the_bytes() {
    let m = map_of(
        3 * MIB + 300,
        &[
            (0, 100 * KIB, Data),
            (MIB + 7, 1500 * KIB, Data),
            (3 * MIB, 300, Data),
        ],
    );
    let whole = encode_bytes(&m, 16, 5, &[4 << 20]);
    assert_eq!(
        encode_bytes(&m, 16, 5, &[1, 7, 4096, 65536, 65537, 3 << 20]),
        whole
    );
    assert_eq!(encode_bytes(&m, 16, 5, &[65535]), whole);
    assert_eq!(encode_bytes(&m, 12, 5, &[1]).len() as u64, {
        Qcow2Layout::with_cluster_bits(&m, 12).unwrap().total_size()
    });
    // Header fields as written.
    let h = Header::parse(&whole[..112]).unwrap();
    assert_eq!(h.header_length, 112);
    assert_eq!(h.compression_type, CompressionType::Zlib);
    assert_eq!(
        &whole[104..120],
        &[0u8; 16],
        "compression type 0, end marker"
    );
}

struct FailingReader {
    fail_at: u64,
}

impl GuestReader for FailingReader {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        if offset + buf.len() as u64 > self.fail_at {
            return Err(crate::Error::new(ErrorKind::Io, "device gone"));
        }
        buf.fill(1);
        Ok(())
    }
}

#[test]
fn reader_error_surfaces_and_poisons() {
    let m = map_of(4 * MIB, &[(0, 4 * MIB, Data)]);
    let l = Qcow2Layout::new(&m).unwrap();
    let mut enc = Qcow2Encoder::new(l, FailingReader { fail_at: 2 * MIB });
    let mut buf = vec![0u8; 100_000];
    let err = loop {
        match enc.read(&mut buf) {
            Ok(0) => panic!("EOF despite a failing reader"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("device gone"), "{err}");
    let again = enc.read(&mut buf).unwrap_err();
    assert!(again.to_string().contains("earlier error"), "{again}");
}

// ------------------------------------------------------------ referee

#[test]
fn qemu_empty_disks() {
    referee(&AllocationMap::new(MIB), 16, 1);
    referee(&AllocationMap::new(0), 16, 1);
    referee(&map_of(20 * MIB, &[(0, 20 * MIB, Zero)]), 16, 1);
}

#[test]
fn qemu_fully_allocated_small_disk() {
    referee(&map_of(3 * MIB, &[(0, 3 * MIB, Data)]), 16, 2);
}

#[test]
fn qemu_sparse_5gib() {
    let m = map_of(
        5 * GIB,
        &[
            (0, 4096, Data),
            (700 * MIB, CS, Data),
            (2 * GIB + 4096, 3 * CS, Data),
            (2 * GIB + 4096 + 3 * CS, GIB, Zero),
            (4 * GIB + 13, 100, Data),
            (5 * GIB - 100, 100, Data),
        ],
    );
    referee(&m, 16, 3);
}

#[test]
fn qemu_partial_last_cluster() {
    let cap = MIB + 4096;
    referee(&map_of(cap, &[(MIB - 10, 4106, Data)]), 16, 4);
    referee(&map_of(cap, &[(0, cap, Data)]), 16, 4);
}

#[test]
fn qemu_capacity_not_multiple_of_512() {
    let cap = MIB + 1000;
    referee(&map_of(cap, &[(0, 10, Data), (MIB, 1000, Data)]), 16, 5);
    referee(&map_of(1000, &[(0, 1000, Data)]), 16, 5);
    referee(&map_of(cap, &[(0, cap, Data)]), 9, 5);
}

#[test]
fn qemu_unaligned_data_ranges() {
    let m = map_of(
        4 * MIB,
        &[
            (1, 2, Data),
            (100, 50, Zero),
            (4000, 70_000, Data),
            (CS * 5 + 17, 3, Data),
            (CS * 5 + 1000, 10, Data),
            (2 * MIB - 1, 2, Data),
            (3 * MIB + 12345, 999_999, Data),
        ],
    );
    referee(&m, 16, 6);
}

#[test]
fn qemu_small_clusters_many_refcount_blocks() {
    // 512-byte clusters: tens of refcount blocks, several refcount table
    // clusters, L1 spanning clusters.
    let m = map_of(
        11 * MIB + 512,
        &[(0, 3 * MIB, Data), (4 * MIB + 3, 7 * MIB, Data)],
    );
    let l = Qcow2Layout::with_cluster_bits(&m, 9).unwrap();
    assert!(l.rt_clusters > 1 && l.l1_clusters > 1, "{l:?}");
    referee(&m, 9, 7);
    referee(&m, 12, 7);
    referee(&m, 21, 7);
}

#[test]
fn qemu_largest_capacity_empty() {
    let m = map_of(
        limits::MAX_CAPACITY,
        &[(0, 1, Data), (limits::MAX_CAPACITY - CS, CS, Data)],
    );
    let l = Qcow2Layout::new(&m).unwrap();
    assert_eq!(l.data_clusters(), 2);
    // ext4 holds no 64 TiB file, even a sparse one.
    referee_with(&m, 16, 8, false);
}

// ------------------------------------------------------------ property

fn random_map(rng: &mut Rng, cluster_bits: u32) -> AllocationMap {
    let cs = 1u64 << cluster_bits;
    let mut cap = rng.below(64 * MIB + 1);
    if rng.below(2) == 0 {
        cap = cap / cs * cs;
    }
    let aligned = rng.below(2) == 0;
    let mut m = AllocationMap::new(cap);
    let mut pos = 0u64;
    let mut data = 0u64;
    while pos < cap && data < 6 * MIB {
        let scale = 1u64 << rng.below(24);
        let mut gap = rng.below(scale);
        let mut len = 1 + rng.below(scale);
        if aligned {
            gap = gap.div_ceil(cs) * cs;
            len = len.div_ceil(cs) * cs;
            if !pos.is_multiple_of(cs) {
                break;
            }
        }
        let start = pos + gap;
        if start >= cap {
            break;
        }
        let len = len.min(cap - start);
        let kind = if rng.below(3) == 0 { Zero } else { Data };
        if kind == Data {
            data += len;
        }
        m.push(start, len, kind).unwrap();
        pos = start + len;
    }
    m
}

#[test]
fn property_random_maps_round_trip() {
    let mut rng = Rng(0x005e_ed0f_ec0d);
    let bits = [16, 16, 16, 9, 12, 20];
    for case in 0..50 {
        let cb = bits[rng.below(bits.len() as u64) as usize];
        let m = random_map(&mut rng, cb);
        let piece = if m.data_bytes() < 256 * KIB {
            1 + rng.below(70_000) as usize
        } else {
            4096 + rng.below(3 * MIB) as usize
        };
        let l = Qcow2Layout::with_cluster_bits(&m, cb).unwrap();
        let n = encode_decode_check(&m, cb, case, piece);
        assert_eq!(n, l.total_size(), "case {case}");
        if case % 10 == 0 {
            referee(&m, cb, case);
        }
    }
}

#[test]
fn fuzz_roundtrip_inputs() {
    fuzz_roundtrip(&[]);
    fuzz_roundtrip(&[0]);
    fuzz_roundtrip(&[7, 0, 1, 0]);
    fuzz_roundtrip(&[7, 0x3f, 0xff, 0xff, 5, 1, 200, 0, 19, 3, 3, 0]);
    let mut rng = Rng(99);
    for _ in 0..40 {
        let n = rng.below(64) as usize;
        let v: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        fuzz_roundtrip(&v);
    }
}

// ------------------------------------------------------------ throughput

/// A reader that costs a memset per call.
struct FillReader;

impl GuestReader for FillReader {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        buf.fill((offset >> 16) as u8 | 1);
        Ok(())
    }
}

/// `cargo test --release --lib codec::qcow2::encoder -- --ignored --nocapture`
#[test]
#[ignore]
fn throughput_1gib_half_data() {
    let mut m = AllocationMap::new(GIB);
    // Alternating 4 MiB data / 4 MiB zero.
    let mut o = 0;
    while o < GIB {
        m.push(o, 4 * MIB, Data).unwrap();
        m.push(o + 4 * MIB, 4 * MIB, Zero).unwrap();
        o += 8 * MIB;
    }
    fn measure<R: GuestReader>(name: &str, m: &AllocationMap, reader: R, read_size: usize) {
        let l = Qcow2Layout::new(m).unwrap();
        let total = l.total_size();
        let mut enc = Qcow2Encoder::new(l, reader);
        let mut buf = vec![0u8; read_size];
        let t = std::time::Instant::now();
        let mut n = 0u64;
        let mut sum = 0u64;
        loop {
            let k = enc.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
            // Touch the output so nothing is optimised away.
            sum = sum.wrapping_add(u64::from(buf[k - 1]));
            std::hint::black_box(&buf);
        }
        let s = t.elapsed().as_secs_f64();
        assert_eq!(n, total);
        eprintln!(
            "{name}, read size {read_size}: {n} bytes in {s:.3} s = {:.0} MiB/s ({sum})",
            n as f64 / s / MIB as f64
        );
    }
    for read_size in [16 * KIB, 64 * KIB, MIB, 4 * MIB] {
        let read_size = read_size as usize;
        measure("memset reader", &m, FillReader, read_size);
        measure("pattern reader", &m, PatternReader::new(&m, 1), read_size);
    }
}
