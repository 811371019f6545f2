//! VirtualBox VDI: the one-pass decoder ([`VdiDecoder`]).
//!
//! A VDI is a 512-byte header (64 bytes of text, the signature
//! `0xbeda107f` at 0x40, then offsets and sizes, little-endian), a block
//! map of one `u32` per block of the disk, and the blocks, block `n` of
//! the file at `offset_data + n * block_size`. A map entry names the file
//! block holding that part of the disk, or says the part reads as zero
//! (`0xffffffff` never written, `0xfffffffe` discarded). Dynamic and
//! static images differ only in how many blocks are allocated. VirtualBox
//! and qemu-img write the map before the blocks, so one pass suffices
//! ([`crate::codec::blocks`]).
//!
//! The disk is what qemu's `vdi` driver reads (block/vdi.c): the same
//! header checks and limits, the size rounded up to whole sectors. An image
//! linked to a parent needs it, and is refused, as qemu refuses it.

#[cfg(test)]
mod tests;

use std::fmt;

use crate::codec::blocks::{BlockError, BlockMapBuilder, BlockWalk, Geometry};
use crate::codec::gather;
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::{Classify, ErrorKind, Result};
use crate::limits;

/// Bytes of the header.
pub const HEADER_LEN: usize = 512;
const SECTOR: u64 = 512;
/// The signature, little-endian at 0x40.
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Version 1.1, the only one qemu reads.
const VERSION: u32 = 0x0001_0001;
/// Image type of a dynamic image (VirtualBox's "normal").
const TYPE_DYNAMIC: u32 = 1;
/// Image type of a static image (VirtualBox's "fixed").
const TYPE_STATIC: u32 = 2;
/// The only block size qemu reads (1 MiB).
const BLOCK_SIZE: u32 = 1 << 20;
/// Map entries at or above this are not allocated: `0xfffffffe`
/// (discarded) and `0xffffffff` (never written) both read as zero.
const FIRST_UNALLOCATED: u32 = 0xffff_fffe;
/// qemu's `VDI_BLOCKS_IN_IMAGE_MAX`: a map qemu can read in one go.
const MAX_BLOCKS: u32 = ((i32::MAX as u32) + 1 - 512) / 4;
/// Bytes per map entry.
const MAP_ENTRY: u64 = 4;

/// What is wrong with a VDI image. Offsets are within the entry; the one
/// [`Classify::offset`] reports is left out of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VdiError {
    /// Not the VDI signature.
    #[error("VDI signature {found:#010x} is not 0xbeda107f")]
    BadSignature {
        /// Offset of the signature.
        offset: u64,
        /// What was found.
        found: u32,
    },
    /// A header value qemu does not read.
    #[error("unsupported VDI image: {what}")]
    Unsupported {
        /// Offset of the field.
        offset: u64,
        /// What it is.
        what: String,
    },
    /// A header field that contradicts another.
    #[error("invalid VDI header field {field}: {reason}")]
    Invalid {
        /// Offset of the field.
        offset: u64,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The image is linked to another one (a differencing image).
    #[error(
        "VDI image with a {field} UUID not supported: part of its data lies in another image, and images named inside a package are never opened"
    )]
    Linked {
        /// Offset of the UUID.
        offset: u64,
        /// `link` or `parent`.
        field: &'static str,
    },
    /// The disk is larger than ovaio accepts.
    #[error("VDI disk size of {bytes} bytes exceeds the limit of {limit} bytes")]
    CapacityLimit {
        /// Offset of the disk size field.
        offset: u64,
        /// The size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The block map is not where a one-pass read finds it.
    #[error("block map at entry offset {at} lies inside the 512-byte header")]
    MapPlacement {
        /// Offset of the field that places it.
        offset: u64,
        /// Its entry offset.
        at: u64,
    },
    /// The block map lies past the entry's end.
    #[error("block map ends at entry offset {end}, beyond the entry's {entry_size} bytes")]
    OutsideEntry {
        /// Offset of the field that places it.
        offset: u64,
        /// Where it ends.
        end: u64,
        /// The entry's size.
        entry_size: u64,
    },
    /// A map entry naming a block the image does not have.
    #[error(
        "the block map names block {number} for guest offset {guest}, beyond the image's {blocks} blocks"
    )]
    BlockNumber {
        /// Offset of the map entry.
        offset: u64,
        /// Guest offset of the block.
        guest: u64,
        /// The block number found.
        number: u32,
        /// Blocks in the image.
        blocks: u32,
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
    /// A problem with the block map or the blocks it maps.
    #[error(transparent)]
    Blocks(#[from] BlockError),
    /// `feed` or `finish` called after an error.
    #[error("VDI decoder used after an earlier error")]
    Poisoned {
        /// Where the decoder stopped.
        offset: u64,
    },
}

impl Classify for VdiError {
    fn kind(&self) -> ErrorKind {
        match self {
            VdiError::BadSignature { .. }
            | VdiError::Invalid { .. }
            | VdiError::MapPlacement { .. } => ErrorKind::InvalidFormat,
            VdiError::Unsupported { .. } | VdiError::Linked { .. } => ErrorKind::Unsupported,
            VdiError::CapacityLimit { .. } => ErrorKind::LimitExceeded,
            VdiError::OutsideEntry { .. }
            | VdiError::BlockNumber { .. }
            | VdiError::Truncated { .. } => ErrorKind::CorruptImage,
            VdiError::Blocks(b) => b.kind(),
            VdiError::Poisoned { .. } => ErrorKind::InvalidArgument,
        }
    }

    fn offset(&self) -> Option<u64> {
        match self {
            VdiError::BadSignature { offset, .. }
            | VdiError::Unsupported { offset, .. }
            | VdiError::Invalid { offset, .. }
            | VdiError::Linked { offset, .. }
            | VdiError::CapacityLimit { offset, .. }
            | VdiError::MapPlacement { offset, .. }
            | VdiError::OutsideEntry { offset, .. }
            | VdiError::BlockNumber { offset, .. }
            | VdiError::Poisoned { offset } => Some(*offset),
            VdiError::Truncated { end, .. } => Some(*end),
            VdiError::Blocks(b) => b.offset(),
        }
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The header fields the decoder needs, checked as qemu checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 1 dynamic or 2 static, read alike; other types are refused.
    pub image_type: u32,
    /// Entry offset of the block map.
    pub offset_bmap: u64,
    /// Entry offset of file block 0.
    pub offset_data: u64,
    /// The disk's size, rounded up to whole sectors as qemu reads it.
    pub disk_size: u64,
    /// Bytes per block.
    pub block_size: u32,
    /// Entries in the block map.
    pub blocks: u32,
}

impl Header {
    /// Parses and checks the 512-byte header.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, VdiError> {
        let unsupported = |offset: u64, what: String| VdiError::Unsupported { offset, what };
        let disk_size = le64(b, 0x170);
        let blocks = le32(b, 0x180);
        let block_size = le32(b, 0x178);
        // qemu's checks, in qemu's order.
        let qemu_max = u64::from(MAX_BLOCKS) * u64::from(BLOCK_SIZE);
        if disk_size > qemu_max {
            return Err(unsupported(
                0x170,
                format!("disk size {disk_size} is above the {qemu_max} bytes qemu reads"),
            ));
        }
        let disk_size = disk_size.next_multiple_of(SECTOR);
        let signature = le32(b, 0x40);
        if signature != SIGNATURE {
            return Err(VdiError::BadSignature {
                offset: 0x40,
                found: signature,
            });
        }
        let version = le32(b, 0x44);
        if version != VERSION {
            return Err(unsupported(
                0x44,
                format!("version {}.{}", version >> 16, version & 0xffff),
            ));
        }
        // qemu does not check the type, and reads an undo or differencing
        // image without its parent as if it were whole: refused here.
        let image_type = le32(b, 0x4c);
        if image_type != TYPE_DYNAMIC && image_type != TYPE_STATIC {
            let name = match image_type {
                3 => " (undo)",
                4 => " (differencing)",
                _ => "",
            };
            return Err(unsupported(
                0x4c,
                format!(
                    "image type {image_type}{name}; ovaio reads dynamic (1) and static (2) images"
                ),
            ));
        }
        let offset_bmap = u64::from(le32(b, 0x154));
        if offset_bmap % SECTOR != 0 {
            return Err(unsupported(
                0x154,
                format!("block map offset {offset_bmap} is not a multiple of 512"),
            ));
        }
        let offset_data = u64::from(le32(b, 0x158));
        if offset_data % SECTOR != 0 {
            return Err(unsupported(
                0x158,
                format!("data offset {offset_data} is not a multiple of 512"),
            ));
        }
        let sector_size = le32(b, 0x168);
        if u64::from(sector_size) != SECTOR {
            return Err(unsupported(
                0x168,
                format!("sector size {sector_size} is not 512"),
            ));
        }
        if block_size != BLOCK_SIZE {
            return Err(unsupported(
                0x178,
                format!("block size {block_size} is not {BLOCK_SIZE}"),
            ));
        }
        let room = u64::from(blocks) * u64::from(block_size);
        if disk_size > room {
            return Err(VdiError::Invalid {
                offset: 0x170,
                field: "disk size",
                reason: format!(
                    "{disk_size} bytes, more than the {blocks} blocks of the block map hold"
                ),
            });
        }
        for (at, field) in [(0x1a8, "link"), (0x1b8, "parent")] {
            if b[at..at + 16].iter().any(|&x| x != 0) {
                return Err(VdiError::Linked {
                    offset: at as u64,
                    field,
                });
            }
        }
        if blocks > MAX_BLOCKS {
            return Err(unsupported(
                0x180,
                format!("{blocks} blocks, more than the {MAX_BLOCKS} qemu reads"),
            ));
        }
        if disk_size > limits::MAX_CAPACITY {
            return Err(VdiError::CapacityLimit {
                offset: 0x170,
                bytes: disk_size,
                limit: limits::MAX_CAPACITY,
            });
        }
        if offset_bmap < HEADER_LEN as u64 {
            return Err(VdiError::MapPlacement {
                offset: 0x154,
                at: offset_bmap,
            });
        }
        Ok(Header {
            image_type,
            offset_bmap,
            offset_data,
            disk_size,
            block_size,
            blocks,
        })
    }

    fn map_end(&self) -> u64 {
        self.offset_bmap + u64::from(self.blocks) * MAP_ENTRY
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the header.
    Header,
    /// Dropping bytes up to the block map.
    Skip { until: u64 },
    /// Reading map entry `index`.
    Map { index: u32 },
    /// Passing the blocks to the sink.
    Blocks,
    /// After the last block: qemu reads nothing more.
    Rest,
    /// An error was reported; nothing more is accepted.
    Failed,
}

/// One-pass decoder of a VDI into an extent stream.
///
/// Announces the capacity once the header is checked, then emits each
/// allocated block's data (clipped at the capacity) in file order.
/// Unallocated and discarded blocks are not emitted: the sink starts
/// empty. Bytes after the last block are ignored, as qemu ignores them.
///
/// Contract: with non-empty input, `feed` consumes all of it or fails.
/// Errors are sticky: after one, every call fails. An image that ends
/// before its last block fails in [`DiskDecoder::finish`], after the
/// earlier blocks were emitted. With the entry's size given
/// ([`VdiDecoder::with_entry_size`]), a map or block that lies past it is
/// refused before any data flows.
pub struct VdiDecoder {
    state: State,
    /// Entry offset of the next input byte.
    pos: u64,
    entry_size: Option<u64>,
    small: [u8; HEADER_LEN],
    fill: usize,
    header: Option<Header>,
    map: Option<BlockMapBuilder>,
    walk: Option<BlockWalk>,
}

impl fmt::Debug for VdiDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VdiDecoder")
            .field("state", &self.state)
            .field("pos", &self.pos)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Default for VdiDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl VdiDecoder {
    /// A decoder waiting for the header at entry offset 0.
    pub fn new() -> Self {
        VdiDecoder {
            state: State::Header,
            pos: 0,
            entry_size: None,
            small: [0; HEADER_LEN],
            fill: 0,
            header: None,
            map: None,
            walk: None,
        }
    }

    /// Tells the decoder the entry's size, so that a map or block placed
    /// past it is refused as soon as it is named.
    pub fn with_entry_size(mut self, size: u64) -> Self {
        self.entry_size = Some(size);
        self
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    fn advance(&mut self, input: &mut &[u8], n: usize) {
        gather::advance(input, &mut self.pos, n);
    }

    fn fill_small(&mut self, input: &mut &[u8], need: usize) -> bool {
        gather::gather(&mut self.small, &mut self.fill, input, &mut self.pos, need)
    }

    fn poisoned(&self) -> VdiError {
        VdiError::Poisoned { offset: self.pos }
    }

    fn blocks(&self) -> u32 {
        self.header.as_ref().map_or(0, |h| h.blocks)
    }

    /// The header is complete.
    fn start(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        let h = Header::parse(&self.small)?;
        let map_end = h.map_end();
        if let Some(entry_size) = self.entry_size
            && map_end > entry_size
        {
            return Err(VdiError::OutsideEntry {
                offset: 0x154,
                end: map_end,
                entry_size,
            }
            .into());
        }
        let geo = Geometry {
            table: "block map",
            table_start: h.offset_bmap,
            table_end: map_end,
            base: h.offset_data,
            unit: u64::from(h.block_size),
            lead: 0,
            block_size: u64::from(h.block_size),
            capacity: h.disk_size,
            trailer: 0,
            trailer_note: "",
            entry_size: self.entry_size,
            metadata: vec![
                (0, HEADER_LEN as u64, "header"),
                (h.offset_bmap, map_end, "block map"),
            ],
        };
        out.capacity(h.disk_size)?;
        self.map = Some(BlockMapBuilder::new(geo));
        let until = h.offset_bmap;
        self.header = Some(h);
        self.fill = 0;
        if until > self.pos {
            self.state = State::Skip { until };
            Ok(())
        } else {
            self.enter_map().map_err(Into::into)
        }
    }

    fn enter_map(&mut self) -> Result<(), VdiError> {
        self.fill = 0;
        self.state = State::Map { index: 0 };
        if self.blocks() == 0 {
            self.end_map()?;
        }
        Ok(())
    }

    /// Map entry `index` reads `entry`.
    fn entry(&mut self, index: u32, entry: u32) -> Result<(), VdiError> {
        if entry >= FIRST_UNALLOCATED {
            return Ok(());
        }
        let h = self.header.as_ref().ok_or_else(|| self.poisoned())?;
        if entry >= h.blocks {
            return Err(VdiError::BlockNumber {
                offset: h.offset_bmap + u64::from(index) * MAP_ENTRY,
                guest: u64::from(index) * u64::from(h.block_size),
                number: entry,
                blocks: h.blocks,
            });
        }
        let map = self.map.as_mut().ok_or(VdiError::Poisoned { offset: 0 })?;
        map.push(index, entry)?;
        Ok(())
    }

    fn end_map(&mut self) -> Result<(), VdiError> {
        let map = self.map.take().ok_or_else(|| self.poisoned())?;
        let walk = map.finish()?;
        self.state = if walk.is_done() {
            State::Rest
        } else {
            State::Blocks
        };
        self.walk = Some(walk);
        Ok(())
    }

    /// Consumes some input (or changes state) once.
    fn step(&mut self, input: &mut &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        match self.state {
            State::Header => {
                if self.fill_small(input, HEADER_LEN) {
                    self.start(out)?;
                }
            }
            State::Skip { until } => {
                let n = (until - self.pos).min(input.len() as u64) as usize;
                self.advance(input, n);
                if self.pos == until {
                    self.enter_map()?;
                }
            }
            State::Map { mut index } => {
                const LEN: usize = MAP_ENTRY as usize;
                let count = self.blocks();
                while index < count {
                    // Whole entries come straight from the input; only one
                    // cut between two pieces goes through `small`.
                    let entry = match input.get(..LEN) {
                        Some(&[a, b, c, d]) if self.fill == 0 => {
                            self.advance(input, LEN);
                            u32::from_le_bytes([a, b, c, d])
                        }
                        _ if self.fill_small(input, LEN) => {
                            self.fill = 0;
                            le32(&self.small, 0)
                        }
                        _ => {
                            self.state = State::Map { index };
                            return Ok(());
                        }
                    };
                    self.entry(index, entry)?;
                    index += 1;
                }
                self.end_map()?;
            }
            State::Blocks => {
                let walk = self
                    .walk
                    .as_mut()
                    .ok_or(VdiError::Poisoned { offset: self.pos })?;
                let n = walk.step(self.pos, input, out)?;
                let done = walk.is_done();
                self.advance(input, n);
                if done {
                    self.state = State::Rest;
                }
            }
            State::Rest => {
                let n = input.len();
                self.advance(input, n);
            }
            State::Failed => return Err(self.poisoned().into()),
        }
        Ok(())
    }
}

impl DiskDecoder for VdiDecoder {
    fn feed(&mut self, mut input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        if self.state == State::Failed {
            return Err(self.poisoned().into());
        }
        while !input.is_empty() {
            if let Err(e) = self.step(&mut input, out) {
                self.state = State::Failed;
                return Err(e);
            }
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut dyn ExtentSink) -> Result<()> {
        let end = self.pos;
        let truncated = |offset, what| VdiError::Truncated { offset, what, end };
        let map_at = self.header.as_ref().map_or(0, |h| h.offset_bmap);
        let err = match self.state {
            State::Rest => return Ok(()),
            State::Blocks => match self.walk.as_ref().and_then(|w| w.truncated(end)) {
                Some(e) => e.into(),
                None => self.poisoned(),
            },
            State::Header => truncated(0, "header"),
            State::Skip { .. } | State::Map { .. } => truncated(map_at, "block map"),
            State::Failed => self.poisoned(),
        };
        self.state = State::Failed;
        Err(err.into())
    }

    fn capacity(&self) -> Option<u64> {
        self.header.as_ref().map(|h| h.disk_size)
    }
}

/// Fuzzing entry point: `data` as a VDI entry, whole and in pieces, with
/// and without its size; must never panic, and the decodings must agree.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    crate::codec::blocks::fuzz_decode(data, |size| {
        let d = VdiDecoder::new();
        match size {
            Some(n) => d.with_entry_size(n),
            None => d,
        }
    });
}
