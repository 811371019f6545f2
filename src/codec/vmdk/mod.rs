//! VMware streamOptimized VMDK: the one-pass decoder behind OVA disk
//! entries whose content starts with `KDMV`.
//!
//! A streamOptimized extent is a 512-byte sparse header, the embedded
//! descriptor, then markers on sector boundaries: grain markers
//! `{u64 lba, u32 size, zlib data}` and metadata markers
//! `{u64 sectors, u32 0, u32 type}` (end of stream, grain table, grain
//! directory, footer). Every grain names its own sector, so the decoder
//! needs no second pass: it turns the entry into an extent stream as the
//! bytes arrive.
//!
//! Other readers (qemu, VMware) ignore the sector a grain names and go
//! through the grain directory and grain tables, so the decoder checks, as
//! the tables pass, that they map exactly the grains of the stream, and
//! that grains come in strictly increasing order ([`tables`]). The layouts
//! seen in practice are accepted: VMware's (GT markers after their grains,
//! then GD, footer and end-of-stream markers), vmdktool's (the same, the
//! header naming the GD) and qemu-img's and open-vmdk's (GD and GTs in the
//! header area, the last grain, then possibly an end-of-stream marker or
//! zero sectors that read as one). Only zero bytes may follow the
//! end-of-stream marker. The last grain of a disk whose capacity is not a
//! grain multiple may be short or zero-filled to a whole grain; non-zero
//! bytes past the capacity are an error.

mod error;
pub mod header;
mod stream;
mod tables;

#[cfg(test)]
mod tests;

pub use error::VmdkError;
pub use stream::VmdkStreamDecoder;

use crate::codec::{DiskDecoder, ExtentSink};

/// Sink for [`fuzz_entry`]: asserts the decoder's output contract (capacity
/// first and once, every extent inside it) and digests what it receives.
#[derive(Debug, Default)]
struct CheckingSink {
    capacity: Option<u64>,
    extents: Vec<(u64, usize, u64)>,
}

impl ExtentSink for CheckingSink {
    fn capacity(&mut self, bytes: u64) -> crate::Result<()> {
        assert!(self.capacity.is_none(), "capacity announced twice");
        assert!(self.extents.is_empty(), "capacity announced after data");
        self.capacity = Some(bytes);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
        let cap = self.capacity.expect("data before capacity");
        let end = offset
            .checked_add(data.len() as u64)
            .expect("extent overflows");
        assert!(
            end <= cap,
            "extent {offset}+{} beyond capacity {cap}",
            data.len()
        );
        // FNV-1a: enough to tell two decodings apart.
        let digest = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        self.extents.push((offset, data.len(), digest));
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> crate::Result<()> {
        let cap = self.capacity.expect("zero before capacity");
        let end = offset.checked_add(len).expect("extent overflows");
        assert!(end <= cap, "zero extent beyond capacity");
        Ok(())
    }
}

/// How a decoding failed: kind and offset of the faulty structure.
type Failure = (crate::ErrorKind, u64);

fn fuzz_decode(data: &[u8], piece: usize) -> (Result<(), Failure>, CheckingSink) {
    let mut dec = VmdkStreamDecoder::new();
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
/// taken from the first byte); panics only if the decoder breaks its
/// contract or the two decodings differ.
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
}
