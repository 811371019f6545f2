//! qcow2 (v2 and v3): on-disk layout helpers ([`header`]) and a one-pass
//! stream decoder ([`Qcow2StreamDecoder`]) that turns the bytes of a qcow2
//! image, read once in file order, into an extent stream.
//!
//! The decoder follows the image's own tables only: a backing file name is
//! reported, never opened; external data files and encryption are refused.
//! Bytes met before the table that maps them go to a [`Spool`] when one is
//! provided.

pub mod encoder;
pub mod header;
pub mod spool;
mod stream;
#[cfg(test)]
mod tests;

pub use header::{CompressionType, Header, L2Entry};
pub use spool::{IoSpool, MemSpool, Spool};
pub use stream::Qcow2StreamDecoder;

use crate::error::{Classify, ErrorKind};

/// What can be wrong with a qcow2 image. Offsets are byte offsets within
/// the image (the tar entry); the messages leave the main one out, because
/// the caller reports it as a package offset ([`Classify::offset`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Qcow2Error {
    /// The first bytes are not `QFI\xfb`.
    #[error("not a qcow2 image (bad magic)")]
    BadMagic,
    /// A version other than 2 or 3.
    #[error("qcow2 version {0} is not supported")]
    UnsupportedVersion(u32),
    /// A header field is out of range.
    #[error("invalid qcow2 header field {field}: {reason}")]
    InvalidHeader {
        /// Offset of the field.
        offset: u64,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A valid feature this decoder refuses to handle.
    #[error("qcow2 feature not supported: {feature}")]
    Unsupported {
        /// Offset of the field naming the feature.
        offset: u64,
        /// The feature.
        feature: String,
    },
    /// Incompatible feature bit 1 is set.
    #[error("qcow2 image is marked corrupt (incompatible feature bit 1)")]
    MarkedCorrupt,
    /// The image's tables are inconsistent.
    #[error("corrupt qcow2 image: {reason}")]
    Corrupt {
        /// Offset of the offending entry or field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A table or cluster lies beyond the end of the entry.
    #[error("{what} ends at entry offset {end}, beyond the entry's {entry_size} bytes")]
    OutsideEntry {
        /// What was referenced.
        what: &'static str,
        /// Its host offset.
        offset: u64,
        /// Its end.
        end: u64,
        /// The entry's size.
        entry_size: u64,
    },
    /// A table maps bytes the stream has already passed, and there is no
    /// spool to read them back from.
    #[error("{what} lies before the table that maps it; decoding this image needs a spool")]
    NeedsSpool {
        /// What was referenced.
        what: &'static str,
        /// Its host offset.
        offset: u64,
    },
    /// A table maps bytes the stream passed while they had another role, so
    /// they were not spooled (a cluster shared with metadata or mapped by a
    /// later table after it was streamed).
    #[error("{what} was already passed in another role and is not spooled")]
    NotSpooled {
        /// What was referenced.
        what: &'static str,
        /// Its host offset.
        offset: u64,
    },
    /// The image ended before a mapped cluster.
    #[error("image ends before the cluster for guest offset {guest} at entry offset {offset}")]
    MissingCluster {
        /// Host offset of the cluster.
        offset: u64,
        /// Guest offset it maps.
        guest: u64,
        /// Where the image ended.
        end: u64,
    },
    /// The image ended before a header or table.
    #[error("image ends before the {what} at entry offset {offset}")]
    Truncated {
        /// What was missing.
        what: &'static str,
        /// Its host offset.
        offset: u64,
        /// Where the image ended.
        end: u64,
    },
    /// A compressed cluster inflates to more than one cluster.
    #[error(
        "compressed cluster for guest offset {guest} inflates beyond the cluster size {cluster_size}"
    )]
    CompressedBomb {
        /// Host offset of the compressed data.
        offset: u64,
        /// Guest offset it maps.
        guest: u64,
        /// The limit.
        cluster_size: u64,
    },
    /// A compressed cluster does not decompress.
    #[error("compressed cluster for guest offset {guest}: {reason}")]
    BadCompressed {
        /// Host offset of the compressed data.
        offset: u64,
        /// Guest offset it maps.
        guest: u64,
        /// Why.
        reason: String,
    },
    /// A hostile-input limit.
    #[error("limit exceeded: {what} ({value} > {limit})")]
    Limit {
        /// Where.
        offset: u64,
        /// Which limit.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// `feed` or `finish` called after an error.
    #[error("qcow2 decoder used after an earlier error")]
    Poisoned,
}

impl Classify for Qcow2Error {
    fn offset(&self) -> Option<u64> {
        match *self {
            Qcow2Error::BadMagic | Qcow2Error::UnsupportedVersion(_) => Some(0),
            Qcow2Error::MarkedCorrupt => Some(72),
            Qcow2Error::InvalidHeader { offset, .. }
            | Qcow2Error::Unsupported { offset, .. }
            | Qcow2Error::Corrupt { offset, .. }
            | Qcow2Error::OutsideEntry { offset, .. }
            | Qcow2Error::NeedsSpool { offset, .. }
            | Qcow2Error::NotSpooled { offset, .. }
            | Qcow2Error::CompressedBomb { offset, .. }
            | Qcow2Error::BadCompressed { offset, .. }
            | Qcow2Error::Limit { offset, .. } => Some(offset),
            Qcow2Error::MissingCluster { end, .. } | Qcow2Error::Truncated { end, .. } => Some(end),
            Qcow2Error::Poisoned => None,
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Qcow2Error::BadMagic | Qcow2Error::InvalidHeader { .. } => ErrorKind::InvalidFormat,
            Qcow2Error::UnsupportedVersion(_)
            | Qcow2Error::Unsupported { .. }
            | Qcow2Error::NeedsSpool { .. }
            | Qcow2Error::NotSpooled { .. } => ErrorKind::Unsupported,
            Qcow2Error::MarkedCorrupt
            | Qcow2Error::Corrupt { .. }
            | Qcow2Error::OutsideEntry { .. }
            | Qcow2Error::MissingCluster { .. }
            | Qcow2Error::Truncated { .. }
            | Qcow2Error::CompressedBomb { .. }
            | Qcow2Error::BadCompressed { .. } => ErrorKind::CorruptImage,
            Qcow2Error::Limit { .. } => ErrorKind::LimitExceeded,
            Qcow2Error::Poisoned => ErrorKind::InvalidArgument,
        }
    }
}

/// Fuzzing entry point: decodes `data` as one qcow2 entry, in pieces, with
/// a small in-memory spool, into a sink that checks the extent contract.
/// Must never panic.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    use crate::codec::{DiskDecoder, ExtentSink};

    struct Checker {
        capacity: Option<u64>,
        extents: u64,
    }
    impl ExtentSink for Checker {
        fn capacity(&mut self, bytes: u64) -> crate::Result<()> {
            assert!(self.capacity.is_none(), "capacity announced twice");
            assert_eq!(self.extents, 0, "capacity after an extent");
            self.capacity = Some(bytes);
            Ok(())
        }
        fn data(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
            let cap = self.capacity.expect("data before capacity");
            assert!(!data.is_empty(), "empty data extent");
            assert!(offset + data.len() as u64 <= cap, "data past capacity");
            self.extents += 1;
            Ok(())
        }
        fn zero(&mut self, offset: u64, len: u64) -> crate::Result<()> {
            let cap = self.capacity.expect("zero before capacity");
            assert!(len > 0, "empty zero extent");
            assert!(offset + len <= cap, "zero past capacity");
            self.extents += 1;
            Ok(())
        }
    }

    let spool = Box::new(MemSpool::new(4 << 20));
    let mut dec = Qcow2StreamDecoder::new(Some(spool)).with_entry_size(data.len() as u64);
    let mut sink = Checker {
        capacity: None,
        extents: 0,
    };
    // Split points derived from the input so runs are reproducible.
    let step = 1 + data.first().map_or(0, |b| *b as usize) * 7;
    let mut ok = true;
    for piece in data.chunks(step) {
        if dec.feed(piece, &mut sink).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        let _ = dec.finish(&mut sink);
    }
}
