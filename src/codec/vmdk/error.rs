//! Errors of the VMDK decoders (streamOptimized and monolithicSparse).
//! Every variant carries the byte offset within the entry where the
//! offending structure starts; the messages leave it out, because the
//! caller reports it as a package offset ([`Classify::offset`]).

use std::fmt;

use crate::error::{Classify, ErrorKind};

/// A structure of a monolithicSparse extent that a table or the header
/// places, as error messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// The embedded descriptor.
    Descriptor,
    /// The grain directory.
    Directory,
    /// The grain table whose first grain is at this lba.
    Table {
        /// First sector of the disk the table maps.
        lba: u64,
    },
    /// The grain for this lba.
    Grain {
        /// First sector of the disk the grain holds.
        lba: u64,
    },
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Structure::Descriptor => f.write_str("embedded descriptor"),
            Structure::Directory => f.write_str("grain directory"),
            Structure::Table { lba } => write!(f, "grain table for lba {lba}"),
            Structure::Grain { lba } => write!(f, "grain for lba {lba}"),
        }
    }
}

/// What is wrong with a VMDK sparse extent, and where (byte offset within
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
    /// The flags lack compressed grains or markers: not a streamOptimized
    /// extent (the probe gives monolithicSparse extents their own decoder).
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
    /// A hosted sparse extent whose flags have compressed grains or
    /// markers, but not both: neither monolithicSparse nor streamOptimized.
    #[error(
        "flags {flags:#010x} have compressed grains or markers but not both: \
         neither a monolithicSparse nor a streamOptimized extent"
    )]
    NotHosted {
        /// Offset of the flags field.
        offset: u64,
        /// The flags found.
        flags: u32,
    },
    /// A compression algorithm in an extent whose flags say its grains are
    /// not compressed: qemu inflates them if it is deflate.
    #[error(
        "compression algorithm {algorithm} in an extent without compressed grains \
         (only 0, none, can be read the same way by every reader)"
    )]
    HostedCompression {
        /// Offset of the compressAlgorithm field.
        offset: u64,
        /// The algorithm found.
        algorithm: u16,
    },
    /// A hosted extent of capacity 0: qemu reads its embedded descriptor
    /// as a descriptor file naming other extents.
    #[error("capacity of 0 sectors: qemu would read the extent as a descriptor of other files")]
    ZeroCapacity {
        /// Offset of the capacity field.
        offset: u64,
    },
    /// The embedded descriptor is not at sector 1, where qemu reads it; an
    /// extent without one belongs to a disk split over several files.
    #[error(
        "embedded descriptor at sector {sector} of {sectors} sectors, not at sector 1: \
         an extent without one belongs to a disk split over several files"
    )]
    DescriptorPlacement {
        /// Offset of the descriptorOffset field.
        offset: u64,
        /// The descriptorOffset found.
        sector: u64,
        /// The descriptorSize found (sectors).
        sectors: u64,
    },
    /// An embedded descriptor over [`crate::limits::MAX_VMDK_DESCRIPTOR`].
    #[error("embedded descriptor of {sectors} sectors exceeds the limit of {limit} bytes")]
    DescriptorLimit {
        /// Offset of the descriptorSize field.
        offset: u64,
        /// The descriptorSize found (sectors).
        sectors: u64,
        /// The limit (bytes).
        limit: u64,
    },
    /// The embedded descriptor lacks a field qemu needs to open the extent
    /// (the extents of a split disk carry an empty one).
    #[error(
        "the embedded descriptor has no {field} value, without which qemu does not \
         open the extent (an extent of a disk split over several files has none)"
    )]
    DescriptorField {
        /// Offset of the descriptor.
        offset: u64,
        /// `CID` or `parentCID`.
        field: &'static str,
    },
    /// The descriptor names a parent disk: the extent holds only what
    /// changed since the parent, whose other sectors it reads through.
    #[error(
        "the embedded descriptor names a parent disk '{}' (parentFileNameHint): \
         the disk is a delta over another file, and parent disks are never opened",
        crate::names::printable(.name)
    )]
    ParentDisk {
        /// Offset of `parentFileNameHint`.
        offset: u64,
        /// The name given (lossily decoded).
        name: String,
    },
    /// gdOffset says "at the end", which only a stream with a footer has.
    #[error(
        "gdOffset places the grain directory in a footer, \
         which an extent without markers does not have"
    )]
    DirectoryAtEnd {
        /// Offset of the gdOffset field.
        offset: u64,
    },
    /// A structure placed inside the 512-byte header.
    #[error("{what} at sector {sector} lies inside the header")]
    InHeader {
        /// Offset of the field or entry naming it.
        offset: u64,
        /// The structure.
        what: Structure,
        /// The sector named.
        sector: u64,
    },
    /// Two structures that share bytes: readers would take the same bytes
    /// for both.
    #[error("{what} at sector {sector} overlaps the {other} at sector {other_sector}")]
    Overlap {
        /// Offset of the field or entry naming the later one.
        offset: u64,
        /// The structure named last.
        what: Structure,
        /// Its first sector.
        sector: u64,
        /// The structure it overlaps.
        other: Structure,
        /// That one's first sector.
        other_sector: u64,
    },
    /// A structure that a table names after the stream has passed its
    /// bytes: metadata that follows what it maps, or points into earlier
    /// metadata, cannot be read in one pass.
    #[error(
        "{what} at sector {sector} lies in bytes the stream had already passed \
         when its table named it: one pass reads only tables that precede what they map"
    )]
    Passed {
        /// Offset of the entry naming it.
        offset: u64,
        /// The structure.
        what: Structure,
        /// Its first sector.
        sector: u64,
    },
    /// A grain table entry past the capacity that is not empty.
    #[error(
        "grain table entry for lba {lba} points to sector {entry}, \
         past the capacity of {capacity} bytes"
    )]
    EntryBeyondCapacity {
        /// Offset of the entry.
        offset: u64,
        /// The first sector of the grain the entry would map.
        lba: u64,
        /// The entry.
        entry: u32,
        /// The disk capacity (bytes).
        capacity: u64,
    },
    /// A structure that ends past the entry.
    #[error(
        "{what} at sector {sector} ends at entry offset {end}, \
         beyond the entry's {entry_size} bytes"
    )]
    OutsideEntry {
        /// Offset of the field or entry naming it.
        offset: u64,
        /// The structure.
        what: Structure,
        /// Its first sector.
        sector: u64,
        /// Entry offset where it ends.
        end: u64,
        /// The entry's size.
        entry_size: u64,
    },
    /// The entry ends before a structure the tables place.
    #[error("input ends before the {what} at entry offset {offset}")]
    Missing {
        /// Offset where the structure starts.
        offset: u64,
        /// Offset where the input ends.
        end: u64,
        /// The structure.
        what: Structure,
    },
    /// More outstanding structures than
    /// [`crate::limits::MAX_VMDK_SPARSE_PENDING`].
    #[error(
        "{count} grain tables and runs of grains outstanding \
         exceed the limit of {limit}"
    )]
    PendingLimit {
        /// Offset of the entry that would add one more.
        offset: u64,
        /// How many there would be.
        count: u64,
        /// The limit.
        limit: u64,
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
            | Poisoned { offset }
            | NotHosted { offset, .. }
            | HostedCompression { offset, .. }
            | ZeroCapacity { offset }
            | DescriptorPlacement { offset, .. }
            | DescriptorLimit { offset, .. }
            | DescriptorField { offset, .. }
            | ParentDisk { offset, .. }
            | DirectoryAtEnd { offset }
            | InHeader { offset, .. }
            | Overlap { offset, .. }
            | Passed { offset, .. }
            | EntryBeyondCapacity { offset, .. }
            | OutsideEntry { offset, .. }
            | Missing { offset, .. }
            | PendingLimit { offset, .. } => offset,
        }
    }
}

impl Classify for VmdkError {
    fn offset(&self) -> Option<u64> {
        Some(match *self {
            VmdkError::Truncated { end, .. } | VmdkError::Missing { end, .. } => end,
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
            | OutOfReach { .. }
            | NotHosted { .. }
            | HostedCompression { .. }
            | ZeroCapacity { .. }
            | DescriptorPlacement { .. }
            | DescriptorField { .. }
            | ParentDisk { .. }
            | DirectoryAtEnd { .. }
            | Passed { .. } => ErrorKind::Unsupported,
            GrainSizeLimit { .. }
            | CapacityLimit { .. }
            | CompressedGrainLimit { .. }
            | DirectoryLimit { .. }
            | DescriptorLimit { .. }
            | PendingLimit { .. } => ErrorKind::LimitExceeded,
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
            | Poisoned { .. }
            | InHeader { .. }
            | Overlap { .. }
            | EntryBeyondCapacity { .. }
            | OutsideEntry { .. }
            | Missing { .. } => ErrorKind::CorruptImage,
        }
    }
}
