//! In-memory sink for decoder unit tests.

use crate::codec::ExtentSink;
use crate::error::{Error, ErrorKind, Result};
use crate::test_support::Rng;

/// Collects an extent stream into a flat image.
#[derive(Debug, Default)]
pub(crate) struct MemSink {
    pub(crate) bytes: Vec<u8>,
    pub(crate) capacity: Option<u64>,
}

impl ExtentSink for MemSink {
    fn capacity(&mut self, bytes: u64) -> Result<()> {
        self.capacity = Some(bytes);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        if let Some(cap) = self.capacity
            && end > cap
        {
            return Err(Error::new(ErrorKind::CorruptImage, "write past capacity"));
        }
        if self.bytes.len() < end as usize {
            self.bytes.resize(end as usize, 0);
        }
        self.bytes[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        let end = (offset + len) as usize;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[offset as usize..end].fill(0);
        Ok(())
    }
}

/// How one decoding ended: the error line (if any), the capacity
/// announced and the disk written (zero-filled to the capacity).
#[derive(Debug, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) result: std::result::Result<(), (ErrorKind, String)>,
    pub(crate) capacity: Option<u64>,
    pub(crate) bytes: Vec<u8>,
}

/// Decodes `data` cut at the ascending offsets `cuts`.
pub(crate) fn decode_cut(
    dec: &mut dyn crate::codec::DiskDecoder,
    data: &[u8],
    cuts: &[usize],
) -> Outcome {
    let mut sink = MemSink::default();
    let mut at = 0;
    let mut result = Ok(());
    for &cut in cuts.iter().chain([data.len()].iter()) {
        result = dec.feed(&data[at..cut], &mut sink);
        at = cut;
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = dec.finish(&mut sink);
    }
    if let Some(cap) = sink.capacity {
        sink.bytes.resize(cap as usize, 0);
    }
    Outcome {
        result: result.map_err(|e| (e.kind(), e.one_line())),
        capacity: sink.capacity,
        bytes: sink.bytes,
    }
}

/// Every offset of `ranges` (clipped to `len`), and every `stride`-th
/// offset elsewhere: split points where a decoder's structures are, and a
/// sample of the rest.
pub(crate) fn split_points(
    len: usize,
    ranges: &[std::ops::Range<usize>],
    stride: usize,
) -> Vec<usize> {
    let mut points: Vec<usize> = (0..=len).step_by(stride.max(1)).collect();
    for r in ranges {
        points.extend(r.start.min(len)..r.end.min(len + 1));
    }
    points.sort_unstable();
    points.dedup();
    points
}

/// The outcome of `data` decoded whole by a decoder from `make`, after
/// checking that a single cut at each of `points`, random small and large
/// pieces, and byte-by-byte feeding of the first `bytewise` bytes all give
/// the same.
pub(crate) fn same_for_every_split<D: crate::codec::DiskDecoder>(
    make: impl Fn() -> D,
    data: &[u8],
    points: &[usize],
    bytewise: usize,
) -> Outcome {
    let whole = decode_cut(&mut make(), data, &[]);
    for &at in points {
        assert!(
            decode_cut(&mut make(), data, &[at]) == whole,
            "split at {at} differs from whole: {:?}",
            whole.result
        );
    }
    // Pieces of a few bytes only for small images: in a debug build they
    // cost a second per megabyte.
    let small = if data.len() <= 1 << 20 { 7 } else { 700 };
    for seed in 1..=3u64 {
        for max in [small, 700, 300_000] {
            let mut rng = Rng(seed * 0x9e37_79b9 + max);
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                at += 1 + rng.below(max) as usize;
                if at >= data.len() {
                    break;
                }
                cuts.push(at);
            }
            assert!(
                decode_cut(&mut make(), data, &cuts) == whole,
                "random pieces of up to {max} bytes (seed {seed}) differ"
            );
        }
    }
    let bytewise: Vec<usize> = (1..bytewise.min(data.len())).collect();
    assert!(
        decode_cut(&mut make(), data, &bytewise) == whole,
        "byte by byte"
    );
    whole
}

/// Runs a qemu tool, failing the test if it is missing or fails: tests
/// judged by qemu never pass without it.
pub(crate) fn qemu(program: &str, args: &[&std::ffi::OsStr]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed by this test: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What qemu reads from `image` as `format`: `qemu-img convert -O raw`.
pub(crate) fn qemu_reading(image: &std::path::Path, format: &str) -> Vec<u8> {
    let out = image.with_extension("qemu-read.raw");
    qemu(
        "qemu-img",
        &[
            "convert".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            image.as_os_str(),
            out.as_os_str(),
        ],
    );
    let bytes = std::fs::read(&out).expect("read qemu's reading");
    std::fs::remove_file(&out).expect("remove qemu's reading");
    bytes
}
