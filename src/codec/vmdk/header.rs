//! The 512-byte sparse extent header (and its copy, the footer), decoded
//! little-endian and validated field by field, for a streamOptimized
//! extent ([`SparseHeader::parse`]) or a hosted sparse one
//! ([`SparseHeader::parse_hosted`]).

use super::error::VmdkError;
use crate::limits;

/// Bytes per sector; VMDK counts everything in sectors.
pub const SECTOR: u64 = 512;
/// Size of the header and of the footer.
pub const HEADER_SIZE: usize = 512;
/// Bytes per grain table or grain directory entry (a sector number).
pub const ENTRY_SIZE: u64 = 4;
/// The header magic.
pub const MAGIC: [u8; 4] = *b"KDMV";
/// `gdOffset` value in the header of a stream whose grain directory is
/// only known at the end (the real value is in the footer).
pub const GD_AT_END: u64 = u64::MAX;

/// Flag bit 0: the newline-detection characters are valid.
pub const FLAG_NEWLINE_TEST: u32 = 1;
/// Flag bit 1: a redundant grain table is present.
pub const FLAG_REDUNDANT_GT: u32 = 1 << 1;
/// Flag bit 2: a grain table entry of 1 stands for a grain of zeros.
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Flag bit 16: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag bit 17: the extent holds markers.
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` value for uncompressed grains.
pub const COMPRESS_NONE: u16 = 0;
/// `compressAlgorithm` value for deflate (zlib streams).
pub const COMPRESS_DEFLATE: u16 = 1;
/// The newline-detection characters as written by a binary-safe transfer.
pub const NEWLINE_CHARS: [u8; 4] = *b"\n \r\n";

/// Bytes of a grain marker before its compressed data: `u64 lba, u32 size`.
pub(super) const GRAIN_MARKER_LEN: usize = 12;
/// Bytes of a metadata marker that carry information:
/// `u64 numSectors, u32 size (0), u32 type`; the rest of its sector is padding.
pub(super) const META_MARKER_LEN: usize = 16;
/// Metadata marker type: end of stream.
pub(super) const MARKER_EOS: u32 = 0;
/// Metadata marker type: a grain table follows.
pub(super) const MARKER_GT: u32 = 1;
/// Metadata marker type: the grain directory follows.
pub(super) const MARKER_GD: u32 = 2;
/// Metadata marker type: the footer follows.
pub(super) const MARKER_FOOTER: u32 = 3;

const OFF_VERSION: usize = 4;
const OFF_FLAGS: usize = 8;
pub(super) const OFF_CAPACITY: usize = 12;
const OFF_GRAIN: usize = 20;
pub(super) const OFF_DESC_OFFSET: usize = 28;
pub(super) const OFF_DESC_SIZE: usize = 36;
const OFF_NUM_GTES: usize = 44;
const OFF_RGD: usize = 48;
/// Offset of the gdOffset field.
pub(super) const OFF_GD: usize = 56;
const OFF_OVERHEAD: usize = 64;
const OFF_UNCLEAN: usize = 72;
const OFF_NEWLINE: usize = 73;
const OFF_COMPRESS: usize = 77;

/// A validated sparse extent header. Sizes are in sectors, as on disk;
/// [`SparseHeader::capacity_bytes`] and [`SparseHeader::grain_bytes`]
/// convert (and cannot overflow once parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version (1, 2 or 3).
    pub version: u32,
    /// Feature flags (`FLAG_*`).
    pub flags: u32,
    /// Virtual size (sectors).
    pub capacity_sectors: u64,
    /// Grain size (sectors): a power of two of at least 8.
    pub grain_sectors: u64,
    /// Embedded descriptor position (sectors).
    pub descriptor_offset: u64,
    /// Embedded descriptor size (sectors).
    pub descriptor_size: u64,
    /// Grain table entries per grain table (512 in practice).
    pub num_gtes_per_gt: u32,
    /// Redundant grain directory position (sectors).
    pub rgd_offset: u64,
    /// Grain directory position (sectors), or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Where the markers start (sectors).
    pub overhead_sectors: u64,
    /// The extent was not closed cleanly.
    pub unclean_shutdown: bool,
    /// Compression algorithm ([`COMPRESS_DEFLATE`], or [`COMPRESS_NONE`]
    /// in a hosted extent).
    pub compress_algorithm: u16,
}

fn u16_at(b: &[u8; HEADER_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; HEADER_SIZE], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8; HEADER_SIZE], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn four(b: &[u8; HEADER_SIZE], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

impl SparseHeader {
    /// Decodes and validates a streamOptimized header found at entry
    /// offset `base` (0 for the header, the footer's position for the
    /// footer).
    pub fn parse(b: &[u8; HEADER_SIZE], base: u64) -> Result<Self, VmdkError> {
        Self::parse_as(b, base, false)
    }

    /// Decodes and validates the header of a hosted sparse extent
    /// (monolithicSparse): no compressed grains, no markers. qemu inflates
    /// the grains of any extent whose compressAlgorithm is deflate,
    /// whatever its flags say, so only "none" is accepted.
    pub fn parse_hosted(b: &[u8; HEADER_SIZE]) -> Result<Self, VmdkError> {
        Self::parse_as(b, 0, true)
    }

    fn parse_as(b: &[u8; HEADER_SIZE], base: u64, hosted: bool) -> Result<Self, VmdkError> {
        let at = |field: usize| base + field as u64;
        let magic = four(b, 0);
        if magic != MAGIC {
            return Err(VmdkError::BadMagic {
                offset: base,
                found: magic,
            });
        }
        let h = SparseHeader {
            version: u32_at(b, OFF_VERSION),
            flags: u32_at(b, OFF_FLAGS),
            capacity_sectors: u64_at(b, OFF_CAPACITY),
            grain_sectors: u64_at(b, OFF_GRAIN),
            descriptor_offset: u64_at(b, OFF_DESC_OFFSET),
            descriptor_size: u64_at(b, OFF_DESC_SIZE),
            num_gtes_per_gt: u32_at(b, OFF_NUM_GTES),
            rgd_offset: u64_at(b, OFF_RGD),
            gd_offset: u64_at(b, OFF_GD),
            overhead_sectors: u64_at(b, OFF_OVERHEAD),
            unclean_shutdown: b[OFF_UNCLEAN] != 0,
            compress_algorithm: u16_at(b, OFF_COMPRESS),
        };
        if !(1..=3).contains(&h.version) {
            return Err(VmdkError::UnsupportedVersion {
                offset: at(OFF_VERSION),
                version: h.version,
            });
        }
        let stream = FLAG_COMPRESSED | FLAG_MARKERS;
        if hosted && h.flags & stream != 0 {
            return Err(VmdkError::NotHosted {
                offset: at(OFF_FLAGS),
                flags: h.flags,
            });
        }
        if !hosted && h.flags & stream != stream {
            return Err(VmdkError::NotStreamOptimized {
                offset: at(OFF_FLAGS),
                flags: h.flags,
            });
        }
        let newline = four(b, OFF_NEWLINE);
        if h.flags & FLAG_NEWLINE_TEST != 0 && newline != NEWLINE_CHARS {
            return Err(VmdkError::NewlineCorrupted {
                offset: at(OFF_NEWLINE),
                found: newline,
            });
        }
        if hosted && h.compress_algorithm != COMPRESS_NONE {
            return Err(VmdkError::HostedCompression {
                offset: at(OFF_COMPRESS),
                algorithm: h.compress_algorithm,
            });
        }
        if !hosted && h.compress_algorithm != COMPRESS_DEFLATE {
            return Err(VmdkError::UnsupportedCompression {
                offset: at(OFF_COMPRESS),
                algorithm: h.compress_algorithm,
            });
        }
        if !h.grain_sectors.is_power_of_two() || h.grain_sectors < 8 {
            return Err(VmdkError::BadGrainSize {
                offset: at(OFF_GRAIN),
                sectors: h.grain_sectors,
            });
        }
        if h.grain_sectors > limits::MAX_GRAIN_SIZE / SECTOR {
            return Err(VmdkError::GrainSizeLimit {
                offset: at(OFF_GRAIN),
                sectors: h.grain_sectors,
                limit: limits::MAX_GRAIN_SIZE,
            });
        }
        if h.capacity_sectors > limits::MAX_CAPACITY / SECTOR {
            return Err(VmdkError::CapacityLimit {
                offset: at(OFF_CAPACITY),
                sectors: h.capacity_sectors,
                limit: limits::MAX_CAPACITY,
            });
        }
        // qemu refuses larger tables, and the decoder holds one table's
        // worth of grains while it waits for the table.
        if h.num_gtes_per_gt == 0 || h.num_gtes_per_gt > limits::MAX_VMDK_GTES_PER_GT {
            return Err(VmdkError::BadGtesPerGt {
                offset: at(OFF_NUM_GTES),
                count: h.num_gtes_per_gt,
                limit: limits::MAX_VMDK_GTES_PER_GT,
            });
        }
        if h.overhead_sectors == 0 || h.overhead_sectors.checked_mul(SECTOR).is_none() {
            return Err(VmdkError::BadOverhead {
                offset: at(OFF_OVERHEAD),
                sectors: h.overhead_sectors,
            });
        }
        Ok(h)
    }

    /// The 512 bytes of this header (or footer), little-endian, as
    /// [`SparseHeader::parse`] reads them; the padding is zero.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(0, &MAGIC);
        put(OFF_VERSION, &self.version.to_le_bytes());
        put(OFF_FLAGS, &self.flags.to_le_bytes());
        put(OFF_CAPACITY, &self.capacity_sectors.to_le_bytes());
        put(OFF_GRAIN, &self.grain_sectors.to_le_bytes());
        put(OFF_DESC_OFFSET, &self.descriptor_offset.to_le_bytes());
        put(OFF_DESC_SIZE, &self.descriptor_size.to_le_bytes());
        put(OFF_NUM_GTES, &self.num_gtes_per_gt.to_le_bytes());
        put(OFF_RGD, &self.rgd_offset.to_le_bytes());
        put(OFF_GD, &self.gd_offset.to_le_bytes());
        put(OFF_OVERHEAD, &self.overhead_sectors.to_le_bytes());
        put(OFF_UNCLEAN, &[u8::from(self.unclean_shutdown)]);
        put(OFF_NEWLINE, &NEWLINE_CHARS);
        put(OFF_COMPRESS, &self.compress_algorithm.to_le_bytes());
        b
    }

    /// Virtual size in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors.saturating_mul(SECTOR)
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors.saturating_mul(SECTOR)
    }

    /// Entry offset of the first marker.
    pub fn data_start(&self) -> u64 {
        self.overhead_sectors.saturating_mul(SECTOR)
    }

    /// Number of grains the capacity spans (the last one may be partial).
    pub fn total_grains(&self) -> u64 {
        self.capacity_sectors.div_ceil(self.grain_sectors)
    }

    /// Number of grain directory entries (grain tables) the capacity needs.
    pub fn gd_entries(&self) -> u64 {
        // Both factors are bounded by parse: at most 512 * 2048 sectors.
        let per_table = u64::from(self.num_gtes_per_gt) * self.grain_sectors;
        self.capacity_sectors.div_ceil(per_table.max(1))
    }

    /// Whether a grain table entry of 1 reads as a grain of zeros.
    pub fn zero_grain(&self) -> bool {
        self.flags & FLAG_ZERO_GRAIN != 0
    }
}
