//! Source volume tests against real files made with `qemu-img`/`qemu-io`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::codec::map::MapRange;
use crate::error::ErrorKind;

const MIB: u64 = 1 << 20;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Guest bytes as qemu sees them.
fn qemu_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("qemu-view.raw");
    run("qemu-img", &["convert", "-O", "raw", p(image), p(&out)]);
    std::fs::read(&out).expect("read converted")
}

/// Every guest byte read through `v` in uneven pieces.
fn read_all(v: &mut SourceVolume) -> Vec<u8> {
    let cap = v.capacity();
    let mut out = vec![0u8; cap as usize];
    let mut off = 0u64;
    let mut step = 4093u64;
    while off < cap {
        let n = step.min(cap - off);
        v.read_at(off, &mut out[off as usize..(off + n) as usize])
            .expect("read_at");
        off += n;
        step = (step * 7 + 12_345) % (3 * MIB) + 1;
    }
    out
}

fn range(offset: u64, len: u64, kind: RangeKind) -> MapRange {
    MapRange { offset, len, kind }
}

/// Data ranges of `qemu-img map --output=json`, merged.
fn qemu_data_ranges(image: &Path) -> Vec<(u64, u64)> {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", p(image)])
        .output()
        .expect("qemu-img map");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for e in v.as_array().expect("array") {
        if e["data"].as_bool() != Some(true) {
            continue;
        }
        let s = e["start"].as_u64().expect("start");
        let l = e["length"].as_u64().expect("length");
        match ranges.last_mut() {
            Some(last) if last.0 + last.1 == s => last.1 += l,
            _ => ranges.push((s, l)),
        }
    }
    ranges
}

fn data_of(map: &AllocationMap) -> Vec<(u64, u64)> {
    map.ranges()
        .iter()
        .filter(|r| r.kind == RangeKind::Data)
        .map(|r| (r.offset, r.len))
        .collect()
}

fn write_pattern(f: &File, offset: u64, len: usize, seed: u8) {
    let buf: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect();
    f.write_all_at(&buf, offset).expect("write");
}

fn roots(dir: &Path) -> AllowedRoots {
    AllowedRoots::new(&[dir.to_path_buf()]).expect("roots")
}

#[test]
fn source_volume_is_send() {
    fn send<T: Send>() {}
    send::<SourceVolume>();
}

#[test]
fn raw_sparse_map_reports_exact_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.raw");
    let f = File::create(&path).unwrap();
    f.set_len(8 * MIB).unwrap();
    write_pattern(&f, 0, 4096, 1);
    write_pattern(&f, MIB, 3 * 4096, 2);
    write_pattern(&f, 5 * MIB + 8192, 4096, 3);
    write_pattern(&f, 8 * MIB - 4096, 4096, 4);
    drop(f);

    let mut v = SourceVolume::open(&path, None, &roots(dir.path())).unwrap();
    assert_eq!(v.format(), VolumeFormat::Raw);
    assert_eq!(v.capacity(), 8 * MIB);
    let map = v.allocation_map(false).unwrap();
    assert_eq!(
        map.ranges(),
        &[
            range(0, 4096, RangeKind::Data),
            range(MIB, 3 * 4096, RangeKind::Data),
            range(5 * MIB + 8192, 4096, RangeKind::Data),
            range(8 * MIB - 4096, 4096, RangeKind::Data),
        ]
    );
    assert_eq!(read_all(&mut v), std::fs::read(&path).unwrap());
}

#[test]
fn raw_fully_allocated_is_one_data_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.raw");
    let f = File::create(&path).unwrap();
    write_pattern(&f, 0, (MIB + 777) as usize, 9);
    drop(f);
    let mut v = SourceVolume::open(&path, Some(VolumeFormat::Raw), &AllowedRoots::any()).unwrap();
    assert_eq!(v.capacity(), MIB + 777);
    let map = v.allocation_map(false).unwrap();
    assert_eq!(map.ranges(), &[range(0, MIB + 777, RangeKind::Data)]);
    assert_eq!(read_all(&mut v), std::fs::read(&path).unwrap());
    // Beyond the capacity is an error, not zeros.
    let mut b = [0u8; 2];
    let e = v.read_at(MIB + 776, &mut b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn raw_empty_has_capacity_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.raw");
    File::create(&path).unwrap();
    let mut v = SourceVolume::open(&path, None, &roots(dir.path())).unwrap();
    assert_eq!(v.format(), VolumeFormat::Raw);
    assert_eq!(v.capacity(), 0);
    assert!(v.allocation_map(true).unwrap().ranges().is_empty());
    v.read_at(0, &mut []).unwrap();
    assert!(v.read_at(0, &mut [0u8; 1]).is_err());
}

#[test]
fn raw_detect_zeros_marks_zero_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zeros.raw");
    let f = File::create(&path).unwrap();
    // 1 MiB + 100 bytes, all written: clusters 2, 3 and 9 hold zeros, and
    // so does the short tail piece.
    let len = MIB + 100;
    let mut buf = vec![0x5au8; len as usize];
    for c in [2u64, 3, 9] {
        let s = (c * ZERO_CLUSTER) as usize;
        buf[s..s + ZERO_CLUSTER as usize].fill(0);
    }
    buf[MIB as usize..].fill(0);
    f.write_all_at(&buf, 0).unwrap();
    drop(f);

    let mut v = SourceVolume::open(&path, None, &roots(dir.path())).unwrap();
    assert_eq!(
        v.allocation_map(false).unwrap().ranges(),
        &[range(0, len, RangeKind::Data)]
    );
    let z = ZERO_CLUSTER;
    assert_eq!(
        v.allocation_map(true).unwrap().ranges(),
        &[
            range(0, 2 * z, RangeKind::Data),
            range(2 * z, 2 * z, RangeKind::Zero),
            range(4 * z, 5 * z, RangeKind::Data),
            range(9 * z, z, RangeKind::Zero),
            range(10 * z, 6 * z, RangeKind::Data),
            range(16 * z, 100, RangeKind::Zero),
        ]
    );
}

/// A raw file with data at a few places, made into a qcow2 by qemu-img,
/// plus an explicit zero cluster and a compressed cluster.
fn make_qcow2(dir: &Path) -> PathBuf {
    let raw = dir.join("src.raw");
    let f = File::create(&raw).unwrap();
    f.set_len(16 * MIB).unwrap();
    write_pattern(&f, 0, 100_000, 1);
    write_pattern(&f, 3 * MIB + 512, 4096, 2);
    write_pattern(&f, 9 * MIB, 2 * MIB as usize, 3);
    drop(f);
    let q = dir.join("img.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", p(&raw), p(&q)]);
    run("qemu-io", &["-c", "write -z 9M 64k", p(&q)]);
    run("qemu-io", &["-c", "write -c -P 0x77 12M 64k", p(&q)]);
    q
}

#[test]
fn qcow2_map_and_reads_match_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let q = make_qcow2(dir.path());
    let mut v = SourceVolume::open(&q, Some(VolumeFormat::Qcow2), &roots(dir.path())).unwrap();
    assert_eq!(v.format(), VolumeFormat::Qcow2);
    assert_eq!(v.capacity(), 16 * MIB);
    let map = v.allocation_map(false).unwrap();
    assert_eq!(data_of(&map), qemu_data_ranges(&q));
    assert!(
        map.ranges()
            .contains(&range(9 * MIB, ZERO_CLUSTER, RangeKind::Zero))
    );
    let expect = qemu_raw(&q, dir.path());
    assert_eq!(read_all(&mut v), expect);
    // Every non-zero byte lies in a data range.
    let mut covered = vec![false; expect.len()];
    for (o, l) in data_of(&map) {
        covered[o as usize..(o + l) as usize].fill(true);
    }
    assert!(expect.iter().zip(&covered).all(|(&b, &c)| b == 0 || c));
}

#[test]
fn qcow2_forced_raw_reads_the_file_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let q = make_qcow2(dir.path());
    let mut v = SourceVolume::open(&q, Some(VolumeFormat::Raw), &roots(dir.path())).unwrap();
    assert_eq!(v.format(), VolumeFormat::Raw);
    assert_eq!(read_all(&mut v), std::fs::read(&q).unwrap());
}

#[test]
fn qcow2_backing_chain_reads_the_merged_view() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let base = make_qcow2(dir.path());
    // Middle layer named relative to itself: ../img.qcow2.
    let mid = sub.join("mid.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "../img.qcow2",
            "-F",
            "qcow2",
            p(&mid),
        ],
    );
    run("qemu-io", &["-c", "write -P 0x11 1M 128k", p(&mid)]);
    run("qemu-io", &["-c", "write -z 0 64k", p(&mid)]);
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            p(&mid),
            "-F",
            "qcow2",
            p(&top),
            "20M",
        ],
    );
    run("qemu-io", &["-c", "write -P 0x22 1088k 64k", p(&top)]);
    run("qemu-io", &["-c", "write -P 0x33 18M 4k", p(&top)]);

    // Probed under roots, a backing chain is not followed: the header
    // could be a raw volume's guest data. Without roots (the command
    // line naming its own files) or stated, it is.
    let e = SourceVolume::open(&top, None, &roots(dir.path())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidFormat, "{}", e.one_line());
    assert!(
        e.one_line().contains("probed, not stated"),
        "{}",
        e.one_line()
    );
    SourceVolume::open(&top, None, &AllowedRoots::any()).unwrap();
    let mut v = SourceVolume::open(&top, Some(VolumeFormat::Qcow2), &roots(dir.path())).unwrap();
    assert_eq!(v.capacity(), 20 * MIB);
    let map = v.allocation_map(false).unwrap();
    assert_eq!(data_of(&map), qemu_data_ranges(&top));
    assert_eq!(read_all(&mut v), qemu_raw(&top, dir.path()));
    let _ = base;
}

#[test]
fn qcow2_over_sparse_raw_base_leaves_its_holes_out() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let f = File::create(&base).unwrap();
    f.set_len(4 * MIB).unwrap();
    write_pattern(&f, 2 * MIB, 8192, 5);
    drop(f);
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            p(&base),
            "-F",
            "raw",
            p(&top),
        ],
    );
    run("qemu-io", &["-c", "write -P 0x44 0 64k", p(&top)]);
    let mut v = SourceVolume::open(&top, Some(VolumeFormat::Qcow2), &roots(dir.path())).unwrap();
    let map = v.allocation_map(false).unwrap();
    assert_eq!(data_of(&map), vec![(0, ZERO_CLUSTER), (2 * MIB, 8192)]);
    assert_eq!(read_all(&mut v), qemu_raw(&top, dir.path()));
}

#[test]
fn backing_file_outside_roots_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("inside");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&inside).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let base = outside.join("secret.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", p(&base), "1M"]);
    let top = inside.join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "../outside/secret.qcow2",
            "-F",
            "qcow2",
            p(&top),
        ],
    );
    let e = SourceVolume::open(&top, Some(VolumeFormat::Qcow2), &roots(&inside)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.one_line().contains("secret.qcow2"), "{}", e.one_line());
    // With the whole tree allowed it opens.
    SourceVolume::open(&top, Some(VolumeFormat::Qcow2), &roots(dir.path())).unwrap();
    // The top image itself outside the roots.
    let e = SourceVolume::open(&base, None, &roots(&inside)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.one_line().contains("secret.qcow2"));
}

#[test]
fn backing_loop_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", p(&b), "1M"]);
    run(
        "qemu-img",
        &["create", "-f", "qcow2", "-b", p(&b), "-F", "qcow2", p(&a)],
    );
    run(
        "qemu-img",
        &["rebase", "-u", "-b", p(&a), "-F", "qcow2", p(&b)],
    );
    let e = SourceVolume::open(&a, Some(VolumeFormat::Qcow2), &roots(dir.path())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e:?}");
    assert!(e.one_line().contains("b.qcow2"), "{}", e.one_line());
    assert!(e.one_line().contains("loop"), "{}", e.one_line());
}

#[test]
fn backing_chain_too_long_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut prev = dir.path().join("l0.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", p(&prev), "1M"]);
    for i in 1..=crate::limits::MAX_BACKING_CHAIN {
        let next = dir.path().join(format!("l{i}.qcow2"));
        run(
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                p(&prev),
                "-F",
                "qcow2",
                p(&next),
            ],
        );
        prev = next;
    }
    let e = SourceVolume::open(&prev, Some(VolumeFormat::Qcow2), &roots(dir.path())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
}

#[test]
fn missing_backing_file_is_not_found_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("gone.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", p(&base), "1M"]);
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            p(&base),
            "-F",
            "qcow2",
            p(&top),
        ],
    );
    std::fs::remove_file(&base).unwrap();
    let e = SourceVolume::open(&top, Some(VolumeFormat::Qcow2), &roots(dir.path())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.one_line().contains("gone.qcow2"), "{}", e.one_line());
}

#[test]
fn missing_source_is_not_found_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing-here.raw");
    let e = SourceVolume::open(&path, None, &roots(dir.path())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("nothing-here.raw"), "{e}");
}

#[test]
fn external_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("ext.qcow2");
    let data = dir.path().join("ext.data");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", p(&data)),
            p(&q),
            "1M",
        ],
    );
    let e = SourceVolume::open(&q, None, &roots(dir.path())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e:?}");
    assert!(e.one_line().contains("ext.qcow2"));
}

#[test]
fn qcow2_detect_zeros_marks_written_zero_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("z.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", p(&q), "1M"]);
    // Data clusters written with zeros (allocated, not zero-flagged).
    run("qemu-io", &["-c", "write -P 0 0 128k", p(&q)]);
    run("qemu-io", &["-c", "write -P 0x9 128k 64k", p(&q)]);
    let mut v = SourceVolume::open(&q, None, &roots(dir.path())).unwrap();
    assert_eq!(
        v.allocation_map(false).unwrap().ranges(),
        &[range(0, 3 * ZERO_CLUSTER, RangeKind::Data)]
    );
    assert_eq!(
        v.allocation_map(true).unwrap().ranges(),
        &[
            range(0, 2 * ZERO_CLUSTER, RangeKind::Zero),
            range(2 * ZERO_CLUSTER, ZERO_CLUSTER, RangeKind::Data),
        ]
    );
}

#[test]
fn roots_reject_dotdot_and_symlink_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("in");
    std::fs::create_dir(&inside).unwrap();
    let secret = dir.path().join("secret.raw");
    std::fs::write(&secret, b"x").unwrap();
    std::os::unix::fs::symlink(&secret, inside.join("link.raw")).unwrap();
    let r = roots(&inside);
    assert!(r.check(&inside.join("../secret.raw")).is_err());
    assert!(r.check(&inside.join("link.raw")).is_err());
    let ok = inside.join("ok.raw");
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&ok)
        .unwrap();
    assert_eq!(r.check(&ok).unwrap(), ok.canonicalize().unwrap());
    assert!(AllowedRoots::new(&[secret]).is_err());
    assert!(AllowedRoots::new(&[]).unwrap().check(&ok).is_err());
}

/// Read throughput through imago for a 1 GiB qcow2 (half data) against the
/// raw file it came from. Run with
/// `cargo test --release --lib source::volume::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_read_throughput() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("half.raw");
    let f = File::create(&raw).unwrap();
    let size = 1024 * MIB;
    f.set_len(size).unwrap();
    let mut chunk = vec![0u8; MIB as usize];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151) | 1;
    }
    for i in (0..1024u64).step_by(2) {
        f.write_all_at(&chunk, i * MIB).unwrap();
    }
    drop(f);
    let q = dir.path().join("half.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", p(&raw), p(&q)]);

    let mut buf = vec![0u8; READ_CHUNK];
    for (name, path) in [("raw", &raw), ("qcow2 (imago)", &q)] {
        let mut v = SourceVolume::open(path, None, &AllowedRoots::any()).unwrap();
        let t = Instant::now();
        let map = v.allocation_map(false).unwrap();
        let t_map = t.elapsed();
        assert_eq!(map.data_bytes(), size / 2);
        for _ in 0..2 {
            // Whole guest, holes included.
            let t = Instant::now();
            let mut off = 0;
            while off < size {
                v.read_at(off, &mut buf).unwrap();
                off += buf.len() as u64;
            }
            let all = t.elapsed();
            // Data ranges only, as the encoder reads.
            let t = Instant::now();
            for r in map.ranges() {
                let mut o = r.offset;
                while o < r.offset + r.len {
                    let n = (r.offset + r.len - o).min(buf.len() as u64);
                    v.read_at(o, &mut buf[..n as usize]).unwrap();
                    o += n;
                }
            }
            let data = t.elapsed();
            // Data ranges in 64 KiB reads.
            let t = Instant::now();
            for r in map.ranges() {
                let mut o = r.offset;
                while o < r.offset + r.len {
                    let n = (r.offset + r.len - o).min(ZERO_CLUSTER);
                    v.read_at(o, &mut buf[..n as usize]).unwrap();
                    o += n;
                }
            }
            let data64k = t.elapsed();
            let t = Instant::now();
            let z = v.allocation_map(true).unwrap();
            let zt = t.elapsed();
            assert_eq!(z.data_bytes(), size / 2);
            eprintln!(
                "{name}: map {:?}; whole 1 GiB {:.0} MiB/s; 512 MiB data {:.0} MiB/s (1 MiB reads), {:.0} MiB/s (64 KiB reads); map+zero scan {:?}",
                t_map,
                1024.0 / all.as_secs_f64(),
                512.0 / data.as_secs_f64(),
                512.0 / data64k.as_secs_f64(),
                zt
            );
        }
    }
}

#[test]
fn zstd_compressed_qcow2_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("zstd.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compression_type=zstd",
            p(&q),
            "1M",
        ],
    );
    let e = SourceVolume::open(&q, None, &roots(dir.path())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.one_line().contains("zstd.qcow2"));
}

#[test]
fn encrypted_qcow2_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("luks.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "--object",
            "secret,id=s0,data=pw",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            p(&q),
            "1M",
        ],
    );
    let e = SourceVolume::open(&q, None, &roots(dir.path())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.one_line().contains("luks.qcow2"));
}
