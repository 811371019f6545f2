//! Microsoft VHD (Virtual PC, Hyper-V, XenServer): footers, the one-pass
//! decoder of dynamic images ([`VhdDynamicDecoder`]) and the check that
//! tells a fixed image from a raw one ([`fixed_footer`]).
//!
//! A dynamic VHD is a copy of the 512-byte footer (`conectix`), the
//! dynamic header (`cxsparse`), the block allocation table, then blocks,
//! each a sector bitmap and the block's data, and the footer again at the
//! end. qemu-img and XenServer write the BAT before the blocks, so one pass
//! suffices ([`crate::codec::blocks`]). A fixed VHD is the disk's bytes and
//! the footer after them: nothing at its start says VHD, so it arrives as a
//! raw entry and the raw decoder asks [`fixed_footer`] about its last 512
//! bytes.
//!
//! The disk is what qemu's `vpc` driver reads (block/vpc.c), since
//! `qemu-img` judges the result: the same size rule (CHS geometry for the
//! creators `vpc ` and `qemu`, the footer's current size otherwise, or when
//! the geometry is the largest there is), no sector bitmap consulted, the
//! same limits. A differencing VHD needs its parent, which is never opened:
//! it is refused.

mod dynamic;
#[cfg(test)]
mod tests;

pub use dynamic::VhdDynamicDecoder;

use crate::codec::blocks::BlockError;
use crate::error::{Classify, ErrorKind};
use crate::limits;

/// Bytes of a footer (and of the part of the dynamic header qemu reads).
pub const FOOTER_LEN: usize = 512;
const SECTOR: u64 = 512;
const COOKIE: &[u8; 8] = b"conectix";
/// `disk type` of a fixed VHD.
const TYPE_FIXED: u32 = 2;
/// `disk type` of a dynamic VHD.
const TYPE_DYNAMIC: u32 = 3;
/// `disk type` of a differencing VHD.
const TYPE_DIFFERENCING: u32 = 4;
/// qemu's `VHD_MAX_SECTORS`: 2040 GiB.
const MAX_SECTORS: u64 = 0xff00_0000;
/// qemu's `VHD_MAX_GEOMETRY`: the largest CHS geometry, which makes qemu
/// use the current size whatever the creator.
const MAX_GEOMETRY: u64 = 65535 * 16 * 255;
/// Where the checksum lies in a footer.
const CHECKSUM_AT: usize = 64;

/// What is wrong with a VHD image. Offsets are within the entry; the one
/// [`Classify::offset`] reports is left out of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VhdError {
    /// No `conectix` cookie where a footer must be.
    #[error("no VHD footer ('conectix') {place}")]
    NoFooter {
        /// Offset of the footer.
        offset: u64,
        /// `at the start`, `at the end of the image`.
        place: &'static str,
    },
    /// The footer's checksum does not match its bytes (qemu refuses it too).
    #[error("VHD footer checksum {stored:#010x} does not match its contents ({computed:#010x})")]
    BadChecksum {
        /// Offset of the footer.
        offset: u64,
        /// The checksum stored.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// A differencing VHD: part of its data lies in a parent image.
    #[error(
        "differencing VHD not supported: part of its data lies in a parent image, and images named inside a package are never opened"
    )]
    Differencing {
        /// Offset of the disk type field.
        offset: u64,
    },
    /// A disk type that cannot stand where it was found.
    #[error("VHD disk type {found} {why}")]
    DiskType {
        /// Offset of the disk type field.
        offset: u64,
        /// The type found.
        found: u32,
        /// Why it cannot stand here.
        why: &'static str,
    },
    /// The disk is larger than qemu reads or than ovaio accepts.
    #[error("VHD disk size of {bytes} bytes exceeds the limit of {limit} bytes")]
    CapacityLimit {
        /// Offset of the size field that decided.
        offset: u64,
        /// The size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A fixed VHD whose data is not the size qemu reads.
    #[error(
        "fixed VHD footer has a current size of {current} bytes, but qemu reads {reads} bytes ({rule}) for creator '{creator}'"
    )]
    FixedSize {
        /// Offset of the footer.
        offset: u64,
        /// The current size.
        current: u64,
        /// The size qemu reads.
        reads: u64,
        /// Which rule gives that size.
        rule: &'static str,
        /// The creator application.
        creator: String,
    },
    /// A field of the dynamic header is out of range.
    #[error("invalid VHD dynamic header field {field}: {reason}")]
    Header {
        /// Offset of the field.
        offset: u64,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The dynamic header or the BAT is not where a one-pass read finds it.
    #[error("{what} at entry offset {at} {why}")]
    Placement {
        /// Offset of the field that places it.
        offset: u64,
        /// The structure.
        what: &'static str,
        /// Its entry offset.
        at: u64,
        /// Why it cannot be read there.
        why: &'static str,
    },
    /// A structure that lies past the entry's end.
    #[error("{what} ends at entry offset {end}, beyond the entry's {entry_size} bytes")]
    OutsideEntry {
        /// Offset of the field that places it.
        offset: u64,
        /// The structure.
        what: &'static str,
        /// Where it ends.
        end: u64,
        /// The entry's size.
        entry_size: u64,
    },
    /// The footer at the end describes another disk than the copy at the
    /// start.
    #[error("the footer at the end of the image differs from the copy at its start in {field}")]
    FooterMismatch {
        /// Offset of the footer at the end.
        offset: u64,
        /// The first field that differs.
        field: &'static str,
    },
    /// The image ended before a structure was complete.
    #[error("image ends before the end of the {what} at entry offset {offset}")]
    Truncated {
        /// Where the structure starts.
        offset: u64,
        /// The structure.
        what: &'static str,
        /// Where the image ended.
        end: u64,
    },
    /// A problem with the BAT or the blocks it maps.
    #[error(transparent)]
    Blocks(#[from] BlockError),
    /// `feed` or `finish` called after an error.
    #[error("VHD decoder used after an earlier error")]
    Poisoned {
        /// Where the decoder stopped.
        offset: u64,
    },
}

impl Classify for VhdError {
    fn kind(&self) -> ErrorKind {
        match self {
            VhdError::NoFooter { .. }
            | VhdError::BadChecksum { .. }
            | VhdError::DiskType { .. }
            | VhdError::Header { .. } => ErrorKind::InvalidFormat,
            VhdError::Differencing { .. }
            | VhdError::FixedSize { .. }
            | VhdError::Placement { .. } => ErrorKind::Unsupported,
            VhdError::CapacityLimit { .. } => ErrorKind::LimitExceeded,
            VhdError::OutsideEntry { .. }
            | VhdError::FooterMismatch { .. }
            | VhdError::Truncated { .. } => ErrorKind::CorruptImage,
            VhdError::Blocks(b) => b.kind(),
            VhdError::Poisoned { .. } => ErrorKind::InvalidArgument,
        }
    }

    fn offset(&self) -> Option<u64> {
        match self {
            VhdError::NoFooter { offset, .. }
            | VhdError::BadChecksum { offset, .. }
            | VhdError::Differencing { offset }
            | VhdError::DiskType { offset, .. }
            | VhdError::CapacityLimit { offset, .. }
            | VhdError::FixedSize { offset, .. }
            | VhdError::Header { offset, .. }
            | VhdError::Placement { offset, .. }
            | VhdError::OutsideEntry { offset, .. }
            | VhdError::FooterMismatch { offset, .. }
            | VhdError::Poisoned { offset } => Some(*offset),
            VhdError::Truncated { end, .. } => Some(*end),
            VhdError::Blocks(b) => b.offset(),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The fields of a VHD footer that decide what disk it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Entry offset of the dynamic header (all ones for a fixed disk).
    pub data_offset: u64,
    /// The creator application, which decides how qemu sizes the disk.
    pub creator_app: [u8; 4],
    /// The disk's size in bytes, as the footer states it.
    pub current_size: u64,
    /// CHS geometry: cylinders.
    pub cylinders: u16,
    /// CHS geometry: heads.
    pub heads: u8,
    /// CHS geometry: sectors per track.
    pub sectors: u8,
    /// 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: u32,
}

/// The checksum of a footer: the one's complement of the sum of its bytes,
/// the checksum field counting as zero.
fn checksum(b: &[u8; FOOTER_LEN]) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(CHECKSUM_AT..CHECKSUM_AT + 4).contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(u32::from(x)));
    !sum
}

impl Footer {
    /// Parses the footer whose 512 bytes are `b`, found at entry offset
    /// `at` (`place` says where, for messages): cookie and checksum must
    /// be right.
    pub fn parse(b: &[u8; FOOTER_LEN], at: u64, place: &'static str) -> Result<Footer, VhdError> {
        if &b[..8] != COOKIE {
            return Err(VhdError::NoFooter { offset: at, place });
        }
        let stored = be32(b, CHECKSUM_AT);
        let computed = checksum(b);
        if stored != computed {
            return Err(VhdError::BadChecksum {
                offset: at,
                stored,
                computed,
            });
        }
        let mut creator_app = [0u8; 4];
        creator_app.copy_from_slice(&b[28..32]);
        Ok(Footer {
            data_offset: be64(b, 16),
            creator_app,
            current_size: be64(b, 48),
            cylinders: be16(b, 56),
            heads: b[58],
            sectors: b[59],
            disk_type: be32(b, 60),
        })
    }

    /// Whether qemu sizes the disk by its CHS geometry rather than by its
    /// current size.
    fn sized_by_chs(&self) -> bool {
        matches!(&self.creator_app, b"vpc " | b"qemu") && self.chs_sectors() != MAX_GEOMETRY
    }

    /// Sectors of the CHS geometry.
    fn chs_sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }

    /// The disk size qemu reads, in bytes. Virtual PC and old qemu
    /// versions size a disk by its CHS geometry, every other creator by
    /// the current size (qemu 10.0's rule; earlier versions listed the
    /// current-size creators instead, and used the geometry for unknown
    /// ones). The footer lies at entry offset `at`.
    pub fn capacity(&self, at: u64) -> Result<u64, VhdError> {
        let chs = self.chs_sectors();
        let (sectors, field) = if self.sized_by_chs() {
            (chs, 56)
        } else {
            (self.current_size / SECTOR, 48)
        };
        let limit = (MAX_SECTORS * SECTOR).min(limits::MAX_CAPACITY);
        let bytes = sectors * SECTOR;
        if bytes > limit {
            return Err(VhdError::CapacityLimit {
                offset: at + field,
                bytes,
                limit,
            });
        }
        Ok(bytes)
    }

    /// The first field in which `self` and `other` describe different
    /// disks.
    fn differs_from(&self, other: &Footer) -> Option<&'static str> {
        if self.disk_type != other.disk_type {
            Some("disk type")
        } else if self.current_size != other.current_size {
            Some("current size")
        } else if (self.cylinders, self.heads, self.sectors)
            != (other.cylinders, other.heads, other.sectors)
        {
            Some("disk geometry")
        } else if self.creator_app != other.creator_app {
            Some("creator application")
        } else if self.data_offset != other.data_offset {
            Some("data offset")
        } else {
            None
        }
    }
}

/// Whether `tail`, the last 512 bytes of a raw entry whose first
/// `data_len` bytes went to the disk, is a fixed VHD's footer for those
/// bytes: cookie, checksum, disk type fixed and a current size of
/// `data_len`. `Ok(None)` when it is not (the bytes are disk data);
/// `Ok(Some(capacity))` when it is; an error for a fixed VHD that qemu
/// would read as another size, or refuse.
pub fn fixed_footer(tail: &[u8; FOOTER_LEN], data_len: u64) -> Result<Option<u64>, VhdError> {
    let Ok(f) = Footer::parse(tail, data_len, "at the end") else {
        return Ok(None);
    };
    if f.disk_type != TYPE_FIXED || f.current_size != data_len {
        return Ok(None);
    }
    let capacity = f.capacity(data_len)?;
    if capacity != data_len {
        let rule = if f.sized_by_chs() {
            "its CHS geometry"
        } else {
            "whole sectors of the current size"
        };
        return Err(VhdError::FixedSize {
            offset: data_len,
            current: f.current_size,
            reads: capacity,
            rule,
            creator: String::from_utf8_lossy(&f.creator_app).into_owned(),
        });
    }
    Ok(Some(capacity))
}

/// Fuzzing entry point: `data` as a dynamic VHD entry and as a raw entry
/// that may be a fixed VHD, each whole and in pieces; must never panic,
/// and the decodings must agree.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    use crate::codec::blocks::fuzz_decode;
    use crate::codec::raw::RawDecoder;

    fuzz_decode(data, |size| {
        let d = VhdDynamicDecoder::new();
        match size {
            Some(n) => d.with_entry_size(n),
            None => d,
        }
    });
    // The raw decoder announces no capacity: give the checker one.
    struct Sized(RawDecoder, bool);
    impl crate::codec::DiskDecoder for Sized {
        fn feed(
            &mut self,
            input: &[u8],
            out: &mut dyn crate::codec::ExtentSink,
        ) -> crate::Result<()> {
            if !self.1 {
                self.1 = true;
                out.capacity(limits::MAX_CAPACITY)?;
            }
            self.0.feed(input, out)
        }
        fn finish(&mut self, out: &mut dyn crate::codec::ExtentSink) -> crate::Result<()> {
            if !self.1 {
                self.1 = true;
                out.capacity(limits::MAX_CAPACITY)?;
            }
            self.0.finish(out)
        }
        fn capacity(&self) -> Option<u64> {
            None
        }
    }
    fuzz_decode(data, |size| {
        Sized(
            match size {
                Some(n) => RawDecoder::with_size_hint(n),
                None => RawDecoder::new(),
            },
            false,
        )
    });
}
