//! VMware VMDK sparse extents: the one-pass decoders behind OVA disk
//! entries whose content starts with `KDMV`, and the streamOptimized
//! encoder export writes them with ([`encoder`]). The header's flags tell the
//! two subformats apart: streamOptimized (compressed grains and markers,
//! [`VmdkStreamDecoder`]) and monolithicSparse (a hosted sparse extent,
//! [`VmdkSparseDecoder`], see [`sparse`]).
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

pub mod encoder;
mod error;
pub mod header;
pub mod sparse;
mod stream;
mod tables;

#[cfg(test)]
mod sparse_tests;
#[cfg(test)]
mod tests;

pub use error::{Structure, VmdkError};
pub use sparse::VmdkSparseDecoder;
pub use stream::VmdkStreamDecoder;

#[cfg(any(test, feature = "fuzzing"))]
mod fuzz;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub use fuzz::fuzz_entry;
