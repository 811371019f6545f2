//! The fuzz target's harness for the VMDK decoders: the contract
//! checking sink and the whole-versus-pieces comparison.

use super::{VmdkError, VmdkSparseDecoder, VmdkStreamDecoder};
use crate::codec::{DiskDecoder, ExtentSink};

/// Sink for [`fuzz_entry`]: asserts the decoder's output contract (capacity
/// first and once, every extent inside it) and digests what it receives.
/// Extents that continue the previous one are merged, so that a decoder
/// passing data through in the pieces it was fed digests the same however
/// the input was cut.
#[derive(Debug, Default)]
struct CheckingSink {
    capacity: Option<u64>,
    /// `(offset, length, FNV-1a of the bytes)`.
    extents: Vec<(u64, u64, u64)>,
    zeros: Vec<(u64, u64)>,
}

/// FNV-1a: enough to tell two decodings apart, and it can go on where it
/// stopped.
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl CheckingSink {
    fn check(&self, offset: u64, len: u64) {
        let cap = self.capacity.expect("extent before capacity");
        let end = offset.checked_add(len).expect("extent overflows");
        assert!(end <= cap, "extent {offset}+{len} beyond capacity {cap}");
        assert!(len > 0, "empty extent at {offset}");
    }
}

impl ExtentSink for CheckingSink {
    fn capacity(&mut self, bytes: u64) -> crate::Result<()> {
        assert!(self.capacity.is_none(), "capacity announced twice");
        assert!(
            self.extents.is_empty() && self.zeros.is_empty(),
            "capacity announced after data"
        );
        self.capacity = Some(bytes);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
        self.check(offset, data.len() as u64);
        match self.extents.last_mut() {
            Some((o, l, h)) if *o + *l == offset => {
                *l += data.len() as u64;
                *h = fnv(*h, data);
            }
            _ => self
                .extents
                .push((offset, data.len() as u64, fnv(0xcbf2_9ce4_8422_2325, data))),
        }
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> crate::Result<()> {
        self.check(offset, len);
        self.zeros.push((offset, len));
        Ok(())
    }
}

/// How a decoding failed: kind and offset of the faulty structure.
type Failure = (crate::ErrorKind, u64);

fn fuzz_decode(data: &[u8], piece: usize) -> (Result<(), Failure>, CheckingSink) {
    // The probe's rule: flags without both compressed grains and markers
    // make a hosted sparse extent.
    let hosted = crate::codec::probe::probe(data) == crate::codec::probe::Format::VmdkSparse;
    let mut dec: Box<dyn DiskDecoder> = if hosted {
        Box::new(VmdkSparseDecoder::new().with_entry_size(data.len() as u64))
    } else {
        Box::new(VmdkStreamDecoder::new())
    };
    let mut sink = CheckingSink::default();
    let mut result = Ok(());
    for chunk in data.chunks(piece.max(1)) {
        result = dec.feed(chunk, &mut sink);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = dec.finish(&mut sink);
    }
    let result = result.map_err(|e| {
        let leaf = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<VmdkError>());
        let leaf = leaf.expect("decoder errors are VmdkError");
        (e.kind(), leaf.offset())
    });
    (result, sink)
}

/// Fuzz target body: decodes `data` whole and in pieces (the piece size is
/// taken from the first byte) with the decoder the content probe picks
/// (streamOptimized, or monolithicSparse when the flags say so); panics
/// only if the decoder breaks its contract or the two decodings differ.
///
/// Two failing decodings must fail on the same structure with the same
/// kind, but not necessarily with the same variant: in a grain that is both
/// a bomb and corrupt, the inflater reads ahead by up to its window, so
/// which fault shows first depends on where the input was cut.
#[doc(hidden)]
pub fn fuzz_entry(data: &[u8]) {
    let (whole, whole_sink) = fuzz_decode(data, data.len());
    let piece = usize::from(data.first().copied().unwrap_or(0) % 97) + 1;
    let (pieces, pieces_sink) = fuzz_decode(data, piece);
    assert_eq!(whole, pieces, "result depends on how the input is split");
    assert_eq!(whole_sink.capacity, pieces_sink.capacity);
    assert_eq!(whole_sink.extents, pieces_sink.extents);
    assert_eq!(whole_sink.zeros, pieces_sink.zeros);
}
