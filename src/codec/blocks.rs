//! Images whose one table maps fixed-size blocks of the disk to places in
//! the file: VHD dynamic (the BAT) and VDI (the block map). Their writers
//! put the table before the blocks, so one pass suffices: the table is
//! read whole into a [`BlockMapBuilder`], which checks each entry as it
//! arrives and then sorts the allocated blocks by file offset; the
//! [`BlockWalk`] hands each block's data to the sink as the stream reaches
//! it, in whatever guest order the file holds the blocks.
//!
//! Only the positions of allocated blocks are kept, 8 bytes each and at
//! most [`limits::MAX_MAPPED_BLOCKS`]; block data goes from the caller's
//! buffer straight to the sink. Nothing is spooled: a block stored before
//! the end of its table is refused, naming that layout.

use crate::codec::ExtentSink;
use crate::error::{Classify, ErrorKind, Result};
use crate::limits;

/// Bytes per table entry (a `u32` in both formats).
const ENTRY: u64 = 4;

/// Where a table's blocks lie in the entry and what they hold.
#[derive(Debug, Clone)]
pub(crate) struct Geometry {
    /// How messages name the table (`BAT`, `block map`).
    pub(crate) table: &'static str,
    /// Entry offset of the table's first entry.
    pub(crate) table_start: u64,
    /// Entry offset where the table ends.
    pub(crate) table_end: u64,
    /// A block the table names `key` starts at entry offset
    /// `base + key * unit`.
    pub(crate) base: u64,
    /// See `base`.
    pub(crate) unit: u64,
    /// Bytes at the start of each block before its data (VHD's sector
    /// bitmap, which qemu does not read either).
    pub(crate) lead: u64,
    /// Guest bytes per block.
    pub(crate) block_size: u64,
    /// The disk's capacity: block bytes past it are never read.
    pub(crate) capacity: u64,
    /// Bytes the format puts after the last block (VHD's footer).
    pub(crate) trailer: u64,
    /// How messages name the room `trailer` takes (`" less its 512-byte
    /// footer"`), empty without one.
    pub(crate) trailer_note: &'static str,
    /// The entry's size, when known: a block past it is refused before
    /// any data flows.
    pub(crate) entry_size: Option<u64>,
    /// Structures no block may overlap: entry offsets `[start, end)`, and
    /// how messages name them.
    pub(crate) metadata: Vec<(u64, u64, &'static str)>,
}

impl Geometry {
    fn start_of(&self, key: u32) -> u64 {
        // base < 2^33 and unit <= 2^32: no overflow.
        self.base + u64::from(key) * self.unit
    }

    fn span(&self) -> u64 {
        self.lead + self.block_size
    }

    fn entry_at(&self, index: u32) -> u64 {
        self.table_start + u64::from(index) * ENTRY
    }

    fn guest(&self, index: u32) -> u64 {
        u64::from(index) * self.block_size
    }
}

/// What is wrong with a block table or the blocks it maps. Offsets are
/// within the entry; the one [`Classify::offset`] reports is left out of
/// the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// More allocated blocks than [`limits::MAX_MAPPED_BLOCKS`].
    #[error(
        "the {table} maps more than {limit} blocks, the most whose positions are held while the blocks stream by"
    )]
    Limit {
        /// Offset of the first entry over the limit.
        offset: u64,
        /// The table's name.
        table: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A block placed over the image's own metadata.
    #[error(
        "the {table} places the block for guest offset {guest} at entry offset {start}, inside the {what}"
    )]
    InsideMetadata {
        /// Offset of the table entry.
        offset: u64,
        /// The table's name.
        table: &'static str,
        /// Guest offset of the block.
        guest: u64,
        /// Entry offset where the block starts.
        start: u64,
        /// The structure it overlaps.
        what: &'static str,
    },
    /// A block stored before the end of the table that maps it: the
    /// stream has passed it by the time the table says what it is.
    #[error(
        "the {table} places the block for guest offset {guest} at entry offset {start}, before the {table} ends at entry offset {table_end}; an image whose blocks come before the table that maps them cannot be read in one pass"
    )]
    BeforeTable {
        /// Offset of the table entry.
        offset: u64,
        /// The table's name.
        table: &'static str,
        /// Guest offset of the block.
        guest: u64,
        /// Entry offset where the block starts.
        start: u64,
        /// Entry offset where the table ends.
        table_end: u64,
    },
    /// A block that ends past the entry (less what must follow it).
    #[error(
        "the {table} places the block for guest offset {guest} at entry offset {start}, ending at entry offset {end}, beyond the entry's {entry_size} bytes{note}"
    )]
    OutsideEntry {
        /// Offset of the table entry.
        offset: u64,
        /// The table's name.
        table: &'static str,
        /// Guest offset of the block.
        guest: u64,
        /// Entry offset where the block starts.
        start: u64,
        /// Entry offset where it ends.
        end: u64,
        /// The entry's size.
        entry_size: u64,
        /// What else must fit in the entry.
        note: &'static str,
    },
    /// Two table entries whose blocks share bytes of the file.
    #[error(
        "the {table} places the blocks for guest offsets {first} and {second} so that they overlap at entry offset {at}"
    )]
    Overlap {
        /// Offset of the table entry of the block that starts later.
        offset: u64,
        /// The table's name.
        table: &'static str,
        /// Guest offset of the block that starts first.
        first: u64,
        /// Guest offset of the block that starts later.
        second: u64,
        /// Entry offset where the later block starts.
        at: u64,
    },
    /// The entry ended before a mapped block did.
    #[error(
        "image ends before the end of the block for guest offset {guest} at entry offset {start}"
    )]
    Truncated {
        /// Guest offset of the block.
        guest: u64,
        /// Entry offset where the block starts.
        start: u64,
        /// Where the image ended.
        end: u64,
    },
}

impl Classify for BlockError {
    fn kind(&self) -> ErrorKind {
        match self {
            BlockError::Limit { .. } => ErrorKind::LimitExceeded,
            BlockError::BeforeTable { .. } => ErrorKind::Unsupported,
            BlockError::InsideMetadata { .. }
            | BlockError::OutsideEntry { .. }
            | BlockError::Overlap { .. }
            | BlockError::Truncated { .. } => ErrorKind::CorruptImage,
        }
    }

    fn offset(&self) -> Option<u64> {
        match *self {
            BlockError::Limit { offset, .. }
            | BlockError::InsideMetadata { offset, .. }
            | BlockError::BeforeTable { offset, .. }
            | BlockError::OutsideEntry { offset, .. }
            | BlockError::Overlap { offset, .. } => Some(offset),
            BlockError::Truncated { end, .. } => Some(end),
        }
    }
}

/// Collects a table's allocated entries, checking each one.
#[derive(Debug)]
pub(crate) struct BlockMapBuilder {
    geo: Geometry,
    /// `(key, table index)` of each allocated block, in table order until
    /// [`BlockMapBuilder::finish`] sorts them by file offset.
    blocks: Vec<(u32, u32)>,
}

impl BlockMapBuilder {
    pub(crate) fn new(geo: Geometry) -> Self {
        BlockMapBuilder {
            geo,
            blocks: Vec::new(),
        }
    }

    /// Entry `index` of the table names the block `key`.
    pub(crate) fn push(&mut self, index: u32, key: u32) -> Result<(), BlockError> {
        let g = &self.geo;
        let offset = g.entry_at(index);
        let guest = g.guest(index);
        let start = g.start_of(key);
        let end = start + g.span();
        if let Some(&(_, _, what)) = g.metadata.iter().find(|(s, e, _)| start < *e && *s < end) {
            return Err(BlockError::InsideMetadata {
                offset,
                table: g.table,
                guest,
                start,
                what,
            });
        }
        if start < g.table_end {
            return Err(BlockError::BeforeTable {
                offset,
                table: g.table,
                guest,
                start,
                table_end: g.table_end,
            });
        }
        if let Some(entry_size) = g.entry_size
            && end + g.trailer > entry_size
        {
            return Err(BlockError::OutsideEntry {
                offset,
                table: g.table,
                guest,
                start,
                end,
                entry_size,
                note: g.trailer_note,
            });
        }
        if self.blocks.len() >= limits::MAX_MAPPED_BLOCKS {
            return Err(BlockError::Limit {
                offset,
                table: g.table,
                limit: limits::MAX_MAPPED_BLOCKS,
            });
        }
        self.blocks.push((key, index));
        Ok(())
    }

    /// The table is complete: the blocks in file order, none sharing a
    /// byte with another.
    pub(crate) fn finish(mut self) -> Result<BlockWalk, BlockError> {
        self.blocks.sort_unstable();
        let g = &self.geo;
        // All blocks have one length: only neighbours in file order can overlap.
        for pair in self.blocks.windows(2) {
            let [(k1, i1), (k2, i2)] = [pair[0], pair[1]];
            let at = g.start_of(k2);
            if at < g.start_of(k1) + g.span() {
                return Err(BlockError::Overlap {
                    offset: g.entry_at(i2),
                    table: g.table,
                    first: g.guest(i1),
                    second: g.guest(i2),
                    at,
                });
            }
        }
        self.blocks.shrink_to_fit();
        Ok(BlockWalk {
            geo: self.geo,
            blocks: self.blocks,
            next: 0,
        })
    }
}

/// The mapped blocks in file order, passed to the sink as the stream
/// reaches them.
#[derive(Debug)]
pub(crate) struct BlockWalk {
    geo: Geometry,
    blocks: Vec<(u32, u32)>,
    next: usize,
}

impl BlockWalk {
    /// Every block has passed.
    pub(crate) fn is_done(&self) -> bool {
        self.next >= self.blocks.len()
    }

    /// Takes bytes of `input`, which starts at entry offset `pos`, up to
    /// the end of the next block, and returns how many: gap and lead bytes
    /// are dropped, data bytes inside the capacity go to `out` at their
    /// guest offset. The walk starts at the table's end or later, and
    /// blocks do not overlap, so `pos` never lies past the next block's
    /// start when that block is reached.
    pub(crate) fn step(
        &mut self,
        pos: u64,
        input: &[u8],
        out: &mut dyn ExtentSink,
    ) -> Result<usize> {
        let Some(&(key, index)) = self.blocks.get(self.next) else {
            return Ok(0);
        };
        let g = &self.geo;
        let data = g.start_of(key) + g.lead;
        let end = data + g.block_size;
        let len = input.len() as u64;
        if pos < data {
            return Ok((data - pos).min(len) as usize);
        }
        let n = end.saturating_sub(pos).min(len);
        let guest = g.guest(index) + (pos - data);
        let visible = n.min(g.capacity.saturating_sub(guest)) as usize;
        if visible > 0 {
            out.data(guest, &input[..visible])?;
        }
        if pos + n >= end {
            self.next += 1;
        }
        Ok(n as usize)
    }

    /// The error for an image that ended at entry offset `end` before the
    /// walk was done.
    pub(crate) fn truncated(&self, end: u64) -> Option<BlockError> {
        let &(key, index) = self.blocks.get(self.next)?;
        Some(BlockError::Truncated {
            guest: self.geo.guest(index),
            start: self.geo.start_of(key),
            end,
        })
    }
}

/// Fuzzing support shared by the table-mapped formats: decodes `data`
/// whole and in pieces (the piece size taken from the first byte), with
/// and without the entry size, into a sink that checks the extent
/// contract; the decodings must agree.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_decode<D: crate::codec::DiskDecoder>(
    data: &[u8],
    make: impl Fn(Option<u64>) -> D,
) {
    #[derive(Debug, Default, PartialEq)]
    struct Check {
        capacity: Option<u64>,
        /// Data bytes received.
        bytes: u64,
        /// A sum over every data byte of a hash of its offset and value:
        /// the same however the decoder cut its extents.
        digest: u64,
    }
    impl ExtentSink for Check {
        fn capacity(&mut self, bytes: u64) -> Result<()> {
            assert!(self.capacity.is_none(), "capacity announced twice");
            assert_eq!(self.bytes, 0, "capacity after an extent");
            self.capacity = Some(bytes);
            Ok(())
        }
        fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
            let cap = self.capacity.expect("data before capacity");
            assert!(!data.is_empty(), "empty data extent");
            let end = offset.checked_add(data.len() as u64);
            assert!(end.is_some_and(|e| e <= cap), "data past capacity");
            for (at, &b) in (offset..).zip(data) {
                let h = (at ^ (u64::from(b) << 56)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                self.digest = self.digest.wrapping_add(h ^ (h >> 29));
            }
            self.bytes += data.len() as u64;
            Ok(())
        }
        fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
            let cap = self.capacity.expect("zero before capacity");
            assert!(offset.checked_add(len).is_some_and(|e| e <= cap));
            Ok(())
        }
    }

    let run = |piece: usize, size: Option<u64>| {
        let mut dec = make(size);
        let mut sink = Check::default();
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
        (result.map_err(|e| (e.kind(), e.one_line())), sink)
    };
    let (whole, whole_sink) = run(data.len(), Some(data.len() as u64));
    let piece = usize::from(data.first().copied().unwrap_or(0) % 97) + 1;
    let (pieces, pieces_sink) = run(piece, Some(data.len() as u64));
    assert_eq!(whole, pieces, "result depends on how the input is split");
    // Data already passed to the sink before an error depends on where
    // the input was cut; a success does not.
    if whole.is_ok() {
        assert_eq!(whole_sink, pieces_sink, "output depends on the split");
        // Without the entry size, checks move to the end but agree.
        let (unsized_result, unsized_sink) = run(piece, None);
        assert!(unsized_result.is_ok(), "{unsized_result:?}");
        assert_eq!(whole_sink, unsized_sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support::MemSink;

    fn geometry() -> Geometry {
        Geometry {
            table: "BAT",
            table_start: 1024,
            table_end: 1040,
            base: 0,
            unit: 512,
            lead: 512,
            block_size: 4096,
            capacity: 3 * 4096 + 100,
            trailer: 512,
            trailer_note: " less its 512-byte footer",
            entry_size: Some(1 << 20),
            metadata: vec![
                (0, 512, "footer copy"),
                (512, 1024, "dynamic header"),
                (1024, 1040, "BAT"),
            ],
        }
    }

    #[test]
    fn entries_are_checked_in_table_order() {
        let mut b = BlockMapBuilder::new(geometry());
        assert_eq!(
            b.push(2, 1),
            Err(BlockError::InsideMetadata {
                offset: 1032,
                table: "BAT",
                guest: 8192,
                start: 512,
                what: "dynamic header"
            })
        );
        let e = b.push(0, 2).unwrap_err();
        assert!(
            matches!(e, BlockError::InsideMetadata { what: "BAT", .. }),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::CorruptImage);
        let mut g = geometry();
        g.table_end = 8192;
        g.metadata.push((1024, 1040, "BAT"));
        let e = BlockMapBuilder::new(g).push(1, 4).unwrap_err();
        assert!(
            matches!(e, BlockError::BeforeTable { start: 2048, .. }),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(e.offset(), Some(1028));
        // The footer must fit after the last block.
        let last = ((1 << 20) - 512 - 4608) / 512;
        assert!(BlockMapBuilder::new(geometry()).push(0, last).is_ok());
        let e = BlockMapBuilder::new(geometry())
            .push(0, last + 1)
            .unwrap_err();
        assert!(matches!(e, BlockError::OutsideEntry { .. }), "{e}");
        assert!(e.to_string().ends_with("less its 512-byte footer"), "{e}");
    }

    #[test]
    fn overlapping_blocks_are_refused() {
        let mut b = BlockMapBuilder::new(geometry());
        b.push(0, 10).unwrap();
        b.push(1, 19).unwrap();
        b.push(2, 27).unwrap();
        assert_eq!(
            b.finish().unwrap_err(),
            BlockError::Overlap {
                offset: 1032,
                table: "BAT",
                first: 4096,
                second: 8192,
                at: 27 * 512
            }
        );
        let mut b = BlockMapBuilder::new(geometry());
        b.push(0, 10).unwrap();
        b.push(1, 10).unwrap();
        assert!(matches!(b.finish(), Err(BlockError::Overlap { .. })));
    }

    #[test]
    fn walk_emits_blocks_in_file_order_and_clips_at_the_capacity() {
        let geo = geometry();
        let mut b = BlockMapBuilder::new(geo.clone());
        // Guest blocks 3 (past the capacity but for 100 bytes), 0 and 1,
        // in that file order, with a gap before block 0.
        b.push(3, 4).unwrap();
        b.push(0, 20).unwrap();
        b.push(1, 29).unwrap();
        let mut file = vec![0u8; 38 * 512];
        for (key, fill) in [(4usize, 3u8), (20, 1), (29, 2)] {
            let data = key * 512 + 512;
            file[key * 512..data].fill(0xee); // the bitmap, never read
            file[data..data + 4096].fill(fill);
        }
        let expected = {
            let mut d = vec![0u8; geo.capacity as usize];
            d[..4096].fill(1);
            d[4096..8192].fill(2);
            d[3 * 4096..].fill(3);
            d
        };
        for piece in [1, 7, 512, 4096, 100_000] {
            let mut walk = BlockMapBuilder::new(geo.clone());
            walk.push(3, 4).unwrap();
            walk.push(0, 20).unwrap();
            walk.push(1, 29).unwrap();
            let mut walk = walk.finish().unwrap();
            let mut sink = MemSink {
                capacity: Some(geo.capacity),
                ..MemSink::default()
            };
            let mut pos = geo.table_end;
            let mut rest = &file[pos as usize..];
            while !walk.is_done() {
                let take = piece.min(rest.len());
                let n = walk.step(pos, &rest[..take], &mut sink).unwrap();
                assert!(n > 0 || walk.is_done());
                pos += n as u64;
                rest = &rest[n..];
            }
            sink.bytes.resize(geo.capacity as usize, 0);
            assert_eq!(sink.bytes, expected, "piece {piece}");
            assert_eq!(pos, 38 * 512);
        }
        let mut walk = b.finish().unwrap();
        let mut sink = MemSink::default();
        let mut pos = 1040;
        while pos < 3000 {
            pos += walk
                .step(pos, &file[pos as usize..3000], &mut sink)
                .unwrap() as u64;
        }
        assert!(!walk.is_done());
        assert_eq!(
            walk.truncated(3000),
            Some(BlockError::Truncated {
                guest: 3 * 4096,
                start: 2048,
                end: 3000
            })
        );
    }

    #[test]
    fn the_limit_is_on_allocated_blocks() {
        let mut g = geometry();
        g.entry_size = None;
        g.block_size = 512;
        g.lead = 0;
        let mut b = BlockMapBuilder::new(g);
        for i in 0..limits::MAX_MAPPED_BLOCKS as u32 {
            b.push(i, 10 + i).unwrap();
        }
        let over = limits::MAX_MAPPED_BLOCKS as u32;
        let e = b.push(over, 10 + over).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        assert_eq!(e.offset(), Some(1024 + 4 * u64::from(over)));
    }
}
