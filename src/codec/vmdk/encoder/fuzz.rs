//! Round trips for tests and the fuzz target: encode, decode with the
//! stream decoder, compare.

use super::*;

// ------------------------------------------------------------ verification

/// Encodes `map` read through `reader` (as a pattern of `seed`), feeding
/// the extent to [`super::VmdkStreamDecoder`] in pieces of `piece` bytes,
/// and checks the result: the byte count equals the layout's, the decoded
/// data equals the reader's bytes on exactly the allocated grains.
/// Returns the extent.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn encode_decode_check(
    map: &AllocationMap,
    coding: GrainCoding,
    seed: u64,
    piece: usize,
) -> Vec<u8> {
    use crate::codec::DiskDecoder;
    use crate::codec::verify::{PatternReader, VerifySink};
    let layout = match coding {
        GrainCoding::Stored => VmdkLayout::stored(map, "disk.vmdk"),
        GrainCoding::Deflate => VmdkLayout::deflate(
            map,
            "disk.vmdk",
            &mut PatternReader::new(map, seed),
            &mut |_| Ok(()),
        ),
    }
    .expect("layout");
    let total = layout.total_size();
    let cap = layout.capacity;
    let allocated: Vec<(u64, u64)> = layout
        .runs
        .iter()
        .map(|&(s, e)| (s * GRAIN_SIZE, (e * GRAIN_SIZE).min(layout.virtual_size())))
        .collect();
    let size = layout.virtual_size();
    let mut enc = VmdkEncoder::new(layout, PatternReader::new(map, seed));
    let mut expected = PatternReader::new(map, seed);
    let mut sink = VerifySink::new(&mut expected, cap);
    let mut dec = crate::codec::vmdk::VmdkStreamDecoder::new();
    let mut buf = vec![0u8; piece.max(1)];
    let mut all = Vec::new();
    loop {
        let n = enc.read(&mut buf).expect("encoder read");
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        dec.feed(&buf[..n], &mut sink)
            .unwrap_or_else(|e| panic!("decode: {}", e.one_line()));
    }
    dec.finish(&mut sink)
        .unwrap_or_else(|e| panic!("decode finish: {}", e.one_line()));
    assert_eq!(all.len() as u64, total, "bytes produced vs predicted");
    assert_eq!(sink.capacity, Some(size));
    assert_eq!(sink.zero_extents, 0);
    assert_eq!(sink.covered, allocated, "decoded guest ranges");
    all
}

/// Most guest data in one [`fuzz_roundtrip`] map.
#[cfg(any(test, feature = "fuzzing"))]
const MAX_FUZZ_DATA: u64 = 4 << 20;

/// Fuzzing entry point: builds an allocation map from `data` (bounded
/// capacity), encodes it with stored or deflated grains (first byte),
/// decodes the extent with ovaio's stream decoder and asserts the size and
/// the content match.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_roundtrip(data: &[u8]) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let coding = if byte(0) & 1 == 0 {
        GrainCoding::Stored
    } else {
        GrainCoding::Deflate
    };
    // Capacity up to 96 MiB (three grain tables), any byte count.
    let capacity = u64::from(u32::from_be_bytes([0, byte(1), byte(2), byte(3)])) * 6;
    if capacity == 0 {
        let e = VmdkLayout::stored(&AllocationMap::new(0), "x").expect_err("empty disk");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        return;
    }
    let mut map = AllocationMap::new(capacity);
    let mut pos = 0u64;
    let mut data_bytes = 0u64;
    for rec in data.get(4..).unwrap_or(&[]).chunks(4) {
        let mut r = [0u8; 4];
        r[..rec.len()].copy_from_slice(rec);
        let scale = 1u64 << (r[0] % 26);
        let gap = u64::from(r[1]) * scale / 16;
        let len = 1 + u64::from(r[2]) * scale / 8;
        let kind = if r[3] & 1 == 0 {
            RangeKind::Data
        } else {
            RangeKind::Zero
        };
        let start = pos + gap;
        if start >= capacity || data_bytes >= MAX_FUZZ_DATA {
            break;
        }
        let mut len = len.min(capacity - start);
        if kind == RangeKind::Data {
            // At most 4 MiB of data in all: the work of one input stays small.
            len = len.min(MAX_FUZZ_DATA - data_bytes);
            data_bytes += len;
        }
        map.push(start, len, kind).expect("ordered ranges");
        pos = start + len;
    }
    let piece = 1 + usize::from(byte(3)) * 509;
    encode_decode_check(&map, coding, u64::from(byte(2)), piece);
}
