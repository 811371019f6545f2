//! The one-pass dynamic VHD decoder: a state machine with no I/O that
//! takes the entry's bytes in pieces of any size. It reads the footer
//! copy, the dynamic header and the BAT as they pass, then hands each
//! block's data to the sink when the stream reaches it, and checks at the
//! end that the image closes with its footer.
//!
//! Nothing is buffered but one 512-byte structure (a footer, the header,
//! a BAT entry cut between two pieces, the last 512 bytes) and the BAT's
//! allocated entries ([`crate::codec::blocks`]).

use std::fmt;

use super::{
    FOOTER_LEN, Footer, SECTOR, TYPE_DIFFERENCING, TYPE_DYNAMIC, TYPE_FIXED, VhdError, be32, be64,
};
use crate::codec::blocks::{BlockMapBuilder, BlockWalk, Geometry};
use crate::codec::gather;
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::Result;

const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";
/// A BAT entry for a block with no data in the file.
const UNALLOCATED: u32 = 0xffff_ffff;
/// The dynamic header's size in the specification; qemu reads the first
/// 512 bytes, the rest holds a differencing disk's parent locators.
const HEADER_SPAN: u64 = 1024;
/// qemu refuses a BAT of more entries (`INT_MAX / 4`).
const MAX_TABLE_ENTRIES: u32 = (i32::MAX / 4) as u32;
/// Bytes per BAT entry.
const BAT_ENTRY: u64 = 4;

/// What follows a skipped region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Header,
    Bat { count: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the footer copy at entry offset 0.
    Footer,
    /// Dropping bytes up to entry offset `until`, where the `what` starts.
    Skip {
        until: u64,
        then: Then,
        what: &'static str,
    },
    /// Collecting the first 512 bytes of the dynamic header.
    Header,
    /// Reading BAT entry `index` of `count`.
    Bat { index: u32, count: u32 },
    /// Passing the blocks to the sink.
    Blocks,
    /// After the last block: keeping the last 512 bytes, the footer.
    Tail,
    /// An error was reported; nothing more is accepted.
    Failed,
}

/// One-pass decoder of a dynamic VHD into an extent stream.
///
/// Announces the capacity once the footer copy and the dynamic header are
/// checked, then emits each block's data (clipped at the capacity) in file
/// order. Blocks the BAT leaves unallocated are not emitted: the sink
/// starts empty. Like qemu, the decoder ignores the sector bitmaps: every
/// sector of an allocated block is read from the block.
///
/// Contract: with non-empty input, `feed` consumes all of it or fails.
/// Errors are sticky: after one, every call fails. The image must end with
/// a footer that describes the same disk as the copy at its start, after
/// the last block; an error may therefore come after data was emitted, as
/// late as [`DiskDecoder::finish`]. With the entry's size given
/// ([`VhdDynamicDecoder::with_entry_size`]), a header, BAT or block that
/// lies past it is refused before any data flows.
pub struct VhdDynamicDecoder {
    state: State,
    /// Entry offset of the next input byte.
    pos: u64,
    entry_size: Option<u64>,
    /// A structure being collected, or in [`State::Tail`] the last bytes.
    small: [u8; FOOTER_LEN],
    fill: usize,
    /// Entry offset where the structure being read starts.
    start: u64,
    footer: Option<Footer>,
    /// The disk size the footer gives, announced once the header is read.
    disk_bytes: u64,
    capacity: Option<u64>,
    bat: Option<BlockMapBuilder>,
    walk: Option<BlockWalk>,
    /// Bytes after the last block.
    tail_len: u64,
}

impl fmt::Debug for VhdDynamicDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhdDynamicDecoder")
            .field("state", &self.state)
            .field("pos", &self.pos)
            .field("footer", &self.footer)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for VhdDynamicDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl VhdDynamicDecoder {
    /// A decoder waiting for the footer copy at entry offset 0.
    pub fn new() -> Self {
        VhdDynamicDecoder {
            state: State::Footer,
            pos: 0,
            entry_size: None,
            small: [0; FOOTER_LEN],
            fill: 0,
            start: 0,
            footer: None,
            disk_bytes: 0,
            capacity: None,
            bat: None,
            walk: None,
            tail_len: 0,
        }
    }

    /// Tells the decoder the entry's size, so that structures placed past
    /// it are refused as soon as they are named.
    pub fn with_entry_size(mut self, size: u64) -> Self {
        self.entry_size = Some(size);
        self
    }

    /// The footer copy, once read.
    pub fn footer(&self) -> Option<&Footer> {
        self.footer.as_ref()
    }

    fn advance(&mut self, input: &mut &[u8], n: usize) {
        gather::advance(input, &mut self.pos, n);
    }

    /// Copies input into `small` until it holds `need` bytes; true when it
    /// does.
    fn fill_small(&mut self, input: &mut &[u8], need: usize) -> bool {
        gather::gather(&mut self.small, &mut self.fill, input, &mut self.pos, need)
    }

    fn poisoned(&self) -> VhdError {
        VhdError::Poisoned { offset: self.pos }
    }

    fn enter(&mut self, then: Then) -> Result<(), VhdError> {
        self.fill = 0;
        self.start = self.pos;
        match then {
            Then::Header => self.state = State::Header,
            Then::Bat { count } => {
                self.state = State::Bat { index: 0, count };
                if count == 0 {
                    self.end_bat()?;
                }
            }
        }
        Ok(())
    }

    fn skip_to(&mut self, until: u64, then: Then, what: &'static str) -> Result<(), VhdError> {
        if until <= self.pos {
            self.enter(then)
        } else {
            self.state = State::Skip { until, then, what };
            Ok(())
        }
    }

    fn outside_entry(&self, offset: u64, what: &'static str, end: u64) -> Result<(), VhdError> {
        match self.entry_size {
            Some(entry_size) if end > entry_size => Err(VhdError::OutsideEntry {
                offset,
                what,
                end,
                entry_size,
            }),
            _ => Ok(()),
        }
    }

    /// The footer copy at entry offset 0 is complete.
    fn footer_copy(&mut self) -> Result<(), VhdError> {
        let f = Footer::parse(&self.small, 0, "at the start")?;
        match f.disk_type {
            TYPE_DYNAMIC => {}
            TYPE_DIFFERENCING => return Err(VhdError::Differencing { offset: 60 }),
            TYPE_FIXED => {
                return Err(VhdError::DiskType {
                    offset: 60,
                    found: TYPE_FIXED,
                    why: "(fixed) in a footer copy at the start, where a fixed VHD has none",
                });
            }
            found => {
                return Err(VhdError::DiskType {
                    offset: 60,
                    found,
                    why: "is none of fixed (2), dynamic (3) and differencing (4)",
                });
            }
        }
        self.disk_bytes = f.capacity(0)?;
        let header = f.data_offset;
        if header < FOOTER_LEN as u64 {
            return Err(VhdError::Placement {
                offset: 16,
                what: "dynamic header",
                at: header,
                why: "lies inside the footer copy",
            });
        }
        self.outside_entry(16, "dynamic header", header.saturating_add(HEADER_SPAN / 2))?;
        self.footer = Some(f);
        self.skip_to(header, Then::Header, "dynamic header")
    }

    /// The dynamic header's first 512 bytes are in `small`.
    fn header(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        let at = self.start;
        let b = &self.small;
        if &b[..8] != DYNAMIC_COOKIE {
            return Err(VhdError::Header {
                offset: at,
                field: "cookie",
                reason: format!("{:02x?} is not \"cxsparse\"", &b[..8]),
            }
            .into());
        }
        let table = be64(b, 16);
        let count = be32(b, 28);
        let block_size = be32(b, 32);
        let capacity = self.disk_bytes;
        let invalid = |offset, field, reason: String| VhdError::Header {
            offset,
            field,
            reason,
        };
        // qemu's checks, in qemu's order.
        if !block_size.is_power_of_two() || u64::from(block_size) < SECTOR {
            return Err(invalid(
                at + 32,
                "block size",
                format!("{block_size} is not a power of two of at least 512"),
            )
            .into());
        }
        let block = u64::from(block_size);
        if capacity / block > u64::from(u32::MAX) {
            return Err(invalid(
                at + 32,
                "block size",
                format!("{block_size} makes more than 2^32 blocks"),
            )
            .into());
        }
        if u64::from(count) * block < capacity {
            return Err(invalid(
                at + 28,
                "max table entries",
                format!(
                    "{count} blocks of {block_size} bytes do not cover the disk size of {capacity} bytes"
                ),
            )
            .into());
        }
        if count > MAX_TABLE_ENTRIES {
            return Err(invalid(
                at + 28,
                "max table entries",
                format!("{count} is more than the {MAX_TABLE_ENTRIES} qemu reads"),
            )
            .into());
        }
        let header_end = at + HEADER_SPAN / 2;
        if table < header_end {
            return Err(VhdError::Placement {
                offset: at + 16,
                what: "BAT",
                at: table,
                why: "starts before the end of the dynamic header, which one pass must read first",
            }
            .into());
        }
        let table_end = table.saturating_add(u64::from(count) * BAT_ENTRY);
        self.outside_entry(at + 16, "BAT", table_end)?;
        // qemu's bitmap size: a bit per sector, in whole sectors.
        let lead = (block / (8 * SECTOR)).next_multiple_of(SECTOR);
        let geo = Geometry {
            table: "BAT",
            table_start: table,
            table_end,
            base: 0,
            unit: SECTOR,
            lead,
            block_size: block,
            capacity,
            trailer: FOOTER_LEN as u64,
            trailer_note: " less its 512-byte footer",
            entry_size: self.entry_size,
            metadata: vec![
                (0, FOOTER_LEN as u64, "footer copy"),
                (at, at.saturating_add(HEADER_SPAN), "dynamic header"),
                (table, table_end, "BAT"),
            ],
        };
        out.capacity(capacity)?;
        self.capacity = Some(capacity);
        self.bat = Some(BlockMapBuilder::new(geo));
        self.skip_to(table, Then::Bat { count }, "BAT")?;
        Ok(())
    }

    /// Every BAT entry is in: on to the blocks.
    fn end_bat(&mut self) -> Result<(), VhdError> {
        let bat = self.bat.take().ok_or_else(|| self.poisoned())?;
        let walk = bat.finish()?;
        self.state = if walk.is_done() {
            State::Tail
        } else {
            State::Blocks
        };
        self.start = self.pos;
        self.walk = Some(walk);
        Ok(())
    }

    /// Keeps the last 512 bytes seen after the last block.
    fn tail(&mut self, input: &mut &[u8]) {
        let n = input.len();
        if n >= FOOTER_LEN {
            self.small.copy_from_slice(&input[n - FOOTER_LEN..]);
        } else {
            self.small.copy_within(n.., 0);
            self.small[FOOTER_LEN - n..].copy_from_slice(input);
        }
        self.tail_len += n as u64;
        self.advance(input, n);
    }

    /// The image ended after its last block: it must end with its footer.
    fn end_footer(&self) -> Result<(), VhdError> {
        let at = self.pos - FOOTER_LEN as u64;
        let f = Footer::parse(&self.small, at, "at the end of the image")?;
        let head = self.footer.as_ref().ok_or_else(|| self.poisoned())?;
        match head.differs_from(&f) {
            Some(field) => Err(VhdError::FooterMismatch { offset: at, field }),
            None => Ok(()),
        }
    }

    /// Consumes some input (or changes state) once.
    fn step(&mut self, input: &mut &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        match self.state {
            State::Footer => {
                if self.fill_small(input, FOOTER_LEN) {
                    self.footer_copy()?;
                }
            }
            State::Skip { until, then, .. } => {
                let n = (until - self.pos).min(input.len() as u64) as usize;
                self.advance(input, n);
                if self.pos == until {
                    self.enter(then)?;
                }
            }
            State::Header => {
                if self.fill_small(input, FOOTER_LEN) {
                    self.header(out)?;
                }
            }
            State::Bat { mut index, count } => {
                const LEN: usize = BAT_ENTRY as usize;
                while index < count {
                    // Whole entries come straight from the input; only one
                    // cut between two pieces goes through `small`.
                    let entry = match input.get(..LEN) {
                        Some(&[a, b, c, d]) if self.fill == 0 => {
                            self.advance(input, LEN);
                            u32::from_be_bytes([a, b, c, d])
                        }
                        _ if self.fill_small(input, LEN) => {
                            self.fill = 0;
                            be32(&self.small, 0)
                        }
                        _ => {
                            self.state = State::Bat { index, count };
                            return Ok(());
                        }
                    };
                    if entry != UNALLOCATED {
                        let bat = self
                            .bat
                            .as_mut()
                            .ok_or(VhdError::Poisoned { offset: self.pos })?;
                        bat.push(index, entry).map_err(VhdError::from)?;
                    }
                    index += 1;
                }
                self.end_bat()?;
            }
            State::Blocks => {
                let walk = self
                    .walk
                    .as_mut()
                    .ok_or(VhdError::Poisoned { offset: self.pos })?;
                let n = walk.step(self.pos, input, out)?;
                let done = walk.is_done();
                self.advance(input, n);
                if done {
                    self.start = self.pos;
                    self.state = State::Tail;
                }
            }
            State::Tail => self.tail(input),
            State::Failed => return Err(self.poisoned().into()),
        }
        Ok(())
    }
}

impl DiskDecoder for VhdDynamicDecoder {
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
        let truncated = |offset, what| VhdError::Truncated { offset, what, end };
        let err = match self.state {
            State::Tail if self.tail_len >= FOOTER_LEN as u64 => match self.end_footer() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
            State::Tail => truncated(self.start, "footer that closes the image"),
            State::Blocks => match self.walk.as_ref().and_then(|w| w.truncated(end)) {
                Some(e) => e.into(),
                None => self.poisoned(),
            },
            State::Footer => truncated(0, "footer copy"),
            State::Skip { until, what, .. } => truncated(until, what),
            State::Header => truncated(self.start, "dynamic header"),
            State::Bat { .. } => truncated(self.start, "BAT"),
            State::Failed => self.poisoned(),
        };
        self.state = State::Failed;
        Err(err.into())
    }

    fn capacity(&self) -> Option<u64> {
        self.capacity
    }
}
