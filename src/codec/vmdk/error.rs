//! Errors of the streamOptimized VMDK decoder. Every variant carries the
//! byte offset within the entry where the offending structure starts;
//! the messages leave it out, because the caller reports it as a package
//! offset ([`Classify::offset`]).

use crate::error::{Classify, ErrorKind};

/// What is wrong with a streamOptimized VMDK, and where (byte offset within
/// the entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmdkError {
    /// The header (or footer) does not start with `KDMV`.
    #[error("bad magic {found:02x?}, expected \"KDMV\"")]
    BadMagic {
        /// Offset of the magic.
        offset: u64,
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A sparse extent version other than 1, 2 or 3.
    #[error("unsupported sparse extent version {version} (known: 1, 2, 3)")]
    UnsupportedVersion {
        /// Offset of the version field.
        offset: u64,
        /// The version found.
        version: u32,
    },
    /// The flags lack compressed grains or markers: a monolithic sparse
    /// extent, which cannot be read in one pass.
    #[error(
        "flags {flags:#010x} lack compressed grains and markers: \
         not a streamOptimized extent"
    )]
    NotStreamOptimized {
        /// Offset of the flags field.
        offset: u64,
        /// The flags found.
        flags: u32,
    },
    /// A compression algorithm other than deflate.
    #[error("unsupported compression algorithm {algorithm} (only 1, deflate)")]
    UnsupportedCompression {
        /// Offset of the compressAlgorithm field.
        offset: u64,
        /// The algorithm found.
        algorithm: u16,
    },
    /// The newline-detection characters were altered, typically by a text
    /// mode transfer that also damaged the grains.
    #[error(
        "newline detection characters {found:02x?} are altered \
         (file transferred in text mode?)"
    )]
    NewlineCorrupted {
        /// Offset of the four characters.
        offset: u64,
        /// The characters found.
        found: [u8; 4],
    },
    /// The grain size is not a power of two of at least 8 sectors.
    #[error(
        "grain size of {sectors} sectors is not a power of two \
         of at least 8 sectors"
    )]
    BadGrainSize {
        /// Offset of the grainSize field.
        offset: u64,
        /// The grain size found (sectors).
        sectors: u64,
    },
    /// The grain size is over [`crate::limits::MAX_GRAIN_SIZE`].
    #[error("grain size of {sectors} sectors exceeds the limit of {limit} bytes")]
    GrainSizeLimit {
        /// Offset of the grainSize field.
        offset: u64,
        /// The grain size found (sectors).
        sectors: u64,
        /// The limit (bytes).
        limit: u64,
    },
    /// The capacity is over [`crate::limits::MAX_CAPACITY`].
    #[error("capacity of {sectors} sectors exceeds the limit of {limit} bytes")]
    CapacityLimit {
        /// Offset of the capacity field.
        offset: u64,
        /// The capacity found (sectors).
        sectors: u64,
        /// The limit (bytes).
        limit: u64,
    },
    /// overHead places the first marker inside the header, or overflows.
    #[error("overHead of {sectors} sectors does not lie after the header")]
    BadOverhead {
        /// Offset of the overHead field.
        offset: u64,
        /// The overHead found (sectors).
        sectors: u64,
    },
    /// numGTEsPerGT is 0 or above [`crate::limits::MAX_VMDK_GTES_PER_GT`].
    #[error("{count} entries per grain table; 1 to {limit} can be read")]
    BadGtesPerGt {
        /// Offset of the numGTEsPerGT field.
        offset: u64,
        /// The count found.
        count: u32,
        /// The largest count accepted.
        limit: u32,
    },
    /// A grain marker whose sector is not the first of a grain.
    #[error(
        "grain at lba {lba} is not aligned to the grain size \
         of {grain_sectors} sectors"
    )]
    UnalignedGrain {
        /// Offset of the grain marker.
        offset: u64,
        /// The sector named by the marker.
        lba: u64,
        /// The grain size (sectors).
        grain_sectors: u64,
    },
    /// A grain that starts at or after the capacity, or holds non-zero
    /// bytes past it.
    #[error("grain at lba {lba} extends beyond the capacity of {capacity} bytes")]
    GrainBeyondCapacity {
        /// Offset of the grain marker.
        offset: u64,
        /// The sector named by the marker.
        lba: u64,
        /// The disk capacity (bytes).
        capacity: u64,
    },
    /// A grain marker's compressed size is over
    /// [`crate::limits::MAX_VMDK_COMPRESSED_GRAIN`].
    #[error("compressed grain of {size} bytes exceeds the limit of {limit} bytes")]
    CompressedGrainLimit {
        /// Offset of the grain marker.
        offset: u64,
        /// The compressed size found.
        size: u64,
        /// The limit (bytes).
        limit: u64,
    },
    /// A grain inflates to more than one grain (decompression bomb).
    #[error("grain at lba {lba} inflates past the grain size of {grain} bytes")]
    GrainOverflow {
        /// Offset of the grain marker.
        offset: u64,
        /// The sector named by the marker.
        lba: u64,
        /// The grain size (bytes).
        grain: u64,
    },
    /// A grain inflates to less than a grain, and it is not the last
    /// (partial) grain of the disk.
    #[error("grain at lba {lba} inflates to {len} bytes, expected {expected}")]
    ShortGrain {
        /// Offset of the grain marker.
        offset: u64,
        /// The sector named by the marker.
        lba: u64,
        /// The inflated length.
        len: u64,
        /// The expected length.
        expected: u64,
    },
    /// The zlib stream of a grain is invalid.
    #[error("grain at lba {lba}: invalid zlib data: {message}")]
    Zlib {
        /// Offset of the grain marker.
        offset: u64,
        /// The sector named by the marker.
        lba: u64,
        /// What the inflater reported.
        message: String,
    },
    /// The zlib stream of a grain ends before the marker's compressed size.
    #[error(
        "grain at lba {lba}: zlib stream ends before the marker's \
         {size} compressed bytes"
    )]
    ZlibTrailing {
        /// Offset of the grain marker.
        offset: u64,
        /// The sector named by the marker.
        lba: u64,
        /// The marker's compressed size.
        size: u64,
    },
    /// The marker's compressed bytes end before the zlib stream does.
    #[error(
        "grain at lba {lba}: zlib stream incomplete after the marker's \
         {size} compressed bytes"
    )]
    ZlibIncomplete {
        /// Offset of the grain marker.
        offset: u64,
        /// The sector named by the marker.
        lba: u64,
        /// The marker's compressed size.
        size: u64,
    },
    /// A grain whose lba is not above the previous grain's: a second grain
    /// for the same sector, or grains out of order. Readers that go through
    /// the grain tables would see only one of two grains for a sector.
    #[error(
        "grain at lba {lba} follows the grain at lba {previous}: \
         grains must come in increasing lba order, each once"
    )]
    GrainOutOfOrder {
        /// Offset of the grain marker.
        offset: u64,
        /// The sector named by the marker.
        lba: u64,
        /// The sector named by the previous grain marker.
        previous: u64,
    },
    /// A grain that no grain table maps: readers that go through the
    /// tables would not see it.
    #[error("grain at lba {lba} is not in any grain table")]
    GrainNotInTable {
        /// Offset of the grain marker.
        offset: u64,
        /// The sector named by the marker.
        lba: u64,
    },
    /// A grain table entry that points elsewhere than the grain the stream
    /// holds for its lba.
    #[error(
        "grain table entry for lba {lba} points to sector {entry}, \
         but the grain for lba {lba} is at entry offset {grain}"
    )]
    TableEntryMismatch {
        /// Offset of the grain table entry.
        offset: u64,
        /// The first sector of the grain the entry maps.
        lba: u64,
        /// The entry (a sector of the file).
        entry: u32,
        /// Offset of the grain marker for that lba.
        grain: u64,
    },
    /// A grain table entry that maps a sector for which the stream holds no
    /// grain.
    #[error(
        "grain table entry for lba {lba} points to sector {entry}, \
         where the stream holds no grain for lba {lba}"
    )]
    TableEntryWithoutGrain {
        /// Offset of the grain table entry.
        offset: u64,
        /// The first sector of the grain the entry maps.
        lba: u64,
        /// The entry (a sector of the file).
        entry: u32,
    },
    /// A grain table or grain directory marker whose payload is smaller
    /// than the table.
    #[error("{what} marker of {sectors} sectors, the table needs {expected}")]
    TableTooSmall {
        /// Offset of the marker.
        offset: u64,
        /// "grain table" or "grain directory".
        what: &'static str,
        /// The payload size found (sectors).
        sectors: u64,
        /// The payload size the table needs (sectors).
        expected: u64,
    },
    /// A grain table marker that follows the last grain table the disk can
    /// have.
    #[error("grain table beyond the {tables} grain tables of the disk")]
    ExtraTable {
        /// Offset of the marker.
        offset: u64,
        /// Grain tables the capacity needs.
        tables: u64,
    },
    /// A grain directory that does not point to exactly the grain tables of
    /// the stream, each for its own range of grains.
    #[error(
        "grain directory with {entries} entries set does not point \
         to the {tables} grain tables of the stream, each at its place"
    )]
    DirectoryMismatch {
        /// Offset of the grain directory marker.
        offset: u64,
        /// Non-zero entries of the directory.
        entries: u64,
        /// Grain table markers in the stream.
        tables: u64,
    },
    /// The grain tables of the header area's grain directory map other
    /// grains than the stream holds.
    #[error(
        "the grain tables of this grain directory map {tables} grains, \
         which are not the {grains} grains of the stream"
    )]
    TablesDisagree {
        /// Offset of the grain directory.
        offset: u64,
        /// Grains the tables map.
        tables: u64,
        /// Grains in the stream.
        grains: u64,
    },
    /// A marker out of place in a stream whose header puts the grain
    /// directory at the end (grains and grain tables, then the grain
    /// directory, the footer and the end-of-stream marker).
    #[error("{found} where the {expected} belongs")]
    UnexpectedMarker {
        /// Offset of the marker.
        offset: u64,
        /// The marker found.
        found: &'static str,
        /// The marker expected.
        expected: &'static str,
    },
    /// The grain directory marker's payload is not at the sector the
    /// header names.
    #[error(
        "grain directory marker for sector {sector}, \
         but the header places the grain directory at sector {named}"
    )]
    DirectoryMisplaced {
        /// Offset of the marker.
        offset: u64,
        /// Sector of its payload.
        sector: u64,
        /// Sector the header's gdOffset names.
        named: u64,
    },
    /// A stream whose grain tables come as markers ends without its grain
    /// directory or, when the header leaves the directory to the footer,
    /// its footer or end-of-stream marker.
    #[error("the stream ends without its {what}")]
    MissingMetadata {
        /// Offset where the input ends.
        offset: u64,
        /// The structure missing.
        what: &'static str,
    },
    /// A grain directory or grain table in the header area that one pass
    /// cannot read: not after the header and the structures before it, or
    /// not before the first marker.
    #[error(
        "{what} at sector {sector} does not lie in order between the \
         header and the first marker: it cannot be checked in one pass"
    )]
    OutOfReach {
        /// Offset of the field or entry naming the sector.
        offset: u64,
        /// "grain directory" or "grain table".
        what: &'static str,
        /// The sector named.
        sector: u64,
    },
    /// A header-area grain directory with more entries than
    /// [`crate::limits::MAX_VMDK_GD_ENTRIES`].
    #[error("grain directory of {entries} entries exceeds the limit of {limit}")]
    DirectoryLimit {
        /// Offset of the gdOffset field.
        offset: u64,
        /// Entries the capacity needs.
        entries: u64,
        /// The limit (entries).
        limit: u64,
    },
    /// A metadata marker of a type other than EOS, GT, GD or footer.
    #[error("unknown metadata marker type {kind}")]
    UnknownMarker {
        /// Offset of the marker.
        offset: u64,
        /// The type found.
        kind: u32,
    },
    /// A metadata marker whose payload would end past any possible file.
    #[error("metadata marker of {sectors} sectors is too large")]
    MarkerTooLarge {
        /// Offset of the marker.
        offset: u64,
        /// The payload size found (sectors).
        sectors: u64,
    },
    /// A footer marker whose payload is not one sector.
    #[error("footer marker of {sectors} sectors, expected 1")]
    BadFooterSize {
        /// Offset of the marker.
        offset: u64,
        /// The payload size found (sectors).
        sectors: u64,
    },
    /// The footer disagrees with the header.
    #[error("footer {field} differs from the header's")]
    FooterMismatch {
        /// Offset of the footer.
        offset: u64,
        /// The field that differs.
        field: &'static str,
    },
    /// Non-zero bytes after the end-of-stream marker.
    #[error("non-zero bytes after the end-of-stream marker")]
    TrailingGarbage {
        /// Offset of the first non-zero byte.
        offset: u64,
    },
    /// The entry ends inside a structure.
    #[error("input ends inside the {what} that starts at entry offset {offset}")]
    Truncated {
        /// Offset where the structure starts.
        offset: u64,
        /// Offset where the input ends.
        end: u64,
        /// The structure.
        what: &'static str,
    },
    /// The decoder was used again after it reported an error.
    #[error("decoding already failed at this point")]
    Poisoned {
        /// Offset where decoding stopped.
        offset: u64,
    },
}

impl VmdkError {
    /// Byte offset within the entry where the faulty structure starts (for
    /// [`VmdkError::Truncated`], where it starts, not where the input ends).
    pub fn offset(&self) -> u64 {
        use VmdkError::*;
        match *self {
            BadMagic { offset, .. }
            | UnsupportedVersion { offset, .. }
            | NotStreamOptimized { offset, .. }
            | UnsupportedCompression { offset, .. }
            | NewlineCorrupted { offset, .. }
            | BadGrainSize { offset, .. }
            | GrainSizeLimit { offset, .. }
            | CapacityLimit { offset, .. }
            | BadOverhead { offset, .. }
            | BadGtesPerGt { offset, .. }
            | GrainOutOfOrder { offset, .. }
            | GrainNotInTable { offset, .. }
            | TableEntryMismatch { offset, .. }
            | TableEntryWithoutGrain { offset, .. }
            | TableTooSmall { offset, .. }
            | ExtraTable { offset, .. }
            | DirectoryMismatch { offset, .. }
            | TablesDisagree { offset, .. }
            | UnexpectedMarker { offset, .. }
            | MissingMetadata { offset, .. }
            | DirectoryMisplaced { offset, .. }
            | OutOfReach { offset, .. }
            | DirectoryLimit { offset, .. }
            | UnalignedGrain { offset, .. }
            | GrainBeyondCapacity { offset, .. }
            | CompressedGrainLimit { offset, .. }
            | GrainOverflow { offset, .. }
            | ShortGrain { offset, .. }
            | Zlib { offset, .. }
            | ZlibTrailing { offset, .. }
            | ZlibIncomplete { offset, .. }
            | UnknownMarker { offset, .. }
            | MarkerTooLarge { offset, .. }
            | BadFooterSize { offset, .. }
            | FooterMismatch { offset, .. }
            | TrailingGarbage { offset }
            | Truncated { offset, .. }
            | Poisoned { offset } => offset,
        }
    }
}

impl Classify for VmdkError {
    fn offset(&self) -> Option<u64> {
        Some(match *self {
            VmdkError::Truncated { end, .. } => end,
            _ => VmdkError::offset(self),
        })
    }

    fn kind(&self) -> ErrorKind {
        use VmdkError::*;
        match self {
            BadMagic { .. } | BadGrainSize { .. } | BadOverhead { .. } | BadGtesPerGt { .. } => {
                ErrorKind::InvalidFormat
            }
            UnsupportedVersion { .. }
            | NotStreamOptimized { .. }
            | UnsupportedCompression { .. }
            | OutOfReach { .. } => ErrorKind::Unsupported,
            GrainSizeLimit { .. }
            | CapacityLimit { .. }
            | CompressedGrainLimit { .. }
            | DirectoryLimit { .. } => ErrorKind::LimitExceeded,
            NewlineCorrupted { .. }
            | GrainOutOfOrder { .. }
            | GrainNotInTable { .. }
            | TableEntryMismatch { .. }
            | TableEntryWithoutGrain { .. }
            | TableTooSmall { .. }
            | ExtraTable { .. }
            | DirectoryMismatch { .. }
            | TablesDisagree { .. }
            | UnexpectedMarker { .. }
            | MissingMetadata { .. }
            | DirectoryMisplaced { .. }
            | UnalignedGrain { .. }
            | GrainBeyondCapacity { .. }
            | GrainOverflow { .. }
            | ShortGrain { .. }
            | Zlib { .. }
            | ZlibTrailing { .. }
            | ZlibIncomplete { .. }
            | UnknownMarker { .. }
            | MarkerTooLarge { .. }
            | BadFooterSize { .. }
            | FooterMismatch { .. }
            | TrailingGarbage { .. }
            | Truncated { .. }
            | Poisoned { .. } => ErrorKind::CorruptImage,
        }
    }
}
