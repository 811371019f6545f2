//! The one-pass streamOptimized decoder: a state machine with no I/O that
//! takes the entry's bytes in pieces of any size and pushes each grain to
//! the extent sink as soon as its zlib stream ends.
//!
//! Compressed bytes go straight from the caller's buffer into the inflater
//! (nothing is buffered but the 12 to 512 bytes of a marker, header or
//! footer), and every grain inflates into one reused buffer of one grain
//! plus one byte: the extra byte is how a decompression bomb is caught
//! without ever writing past the grain.

use std::fmt;

use flate2::{Decompress, FlushDecompress, Status};

use super::error::VmdkError;
use super::header::{
    ENTRY_SIZE, GRAIN_MARKER_LEN, HEADER_SIZE, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT,
    META_MARKER_LEN, SECTOR, SparseHeader,
};
use super::tables::{Read, Table, Tables};
use crate::codec::gather;
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::Result;
use crate::limits;

/// What follows a skipped region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Marker,
    Footer,
    End,
    /// A grain table or grain directory.
    Entries(Read),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the 512-byte header.
    Header,
    /// Discarding bytes up to entry offset `until`: the descriptor area,
    /// padding, GT/GD payloads. `what` names the structure for truncation
    /// errors; it started at `self.start`.
    Skip {
        until: u64,
        then: Then,
        what: &'static str,
    },
    /// Collecting a marker (12 bytes, or 16 for a metadata marker).
    Marker,
    /// Reading entry `index` of a grain table or grain directory.
    Entries { read: Read, index: u64 },
    /// Inflating the `remaining` of `size` compressed bytes of a grain.
    Grain { remaining: u64, size: u64 },
    /// Collecting the footer sector.
    Footer,
    /// After the end-of-stream marker: only zero bytes may follow.
    End,
    /// An error was reported; the decoder accepts nothing more.
    Failed,
}

/// One-pass decoder of a VMware streamOptimized VMDK into an extent
/// stream.
///
/// Announces the capacity as soon as the header is parsed, then emits each
/// grain as `data(lba * 512, inflated)` in file order. Holes (grains not in
/// the stream) are not emitted: the sink starts empty. The grain directory
/// and grain tables, wherever the header places them, must map exactly the
/// grains of the stream (see [`super::tables`]); an error may therefore
/// come after grains were emitted, as late as [`DiskDecoder::finish`].
///
/// Memory is bounded by one grain ([`limits::MAX_GRAIN_SIZE`]) plus the
/// inflater's window, one grain table's worth of grain positions
/// ([`limits::MAX_VMDK_GTES_PER_GT`]) and, for a grain directory in the
/// header area, that directory ([`limits::MAX_VMDK_GD_ENTRIES`]).
pub struct VmdkStreamDecoder {
    state: State,
    /// Entry offset of the next input byte.
    pos: u64,
    header: Option<SparseHeader>,
    /// The check of the grain tables against the grains, once the header
    /// is known.
    tables: Option<Tables>,
    /// Marker, header or footer bytes collected so far.
    small: [u8; HEADER_SIZE],
    fill: usize,
    /// Entry offset where the structure being read started.
    start: u64,
    /// Sector named by the current grain marker.
    lba: u64,
    inflate: Decompress,
    stream_ended: bool,
    /// Inflated grain: one grain plus one byte to detect overflow.
    grain: Vec<u8>,
    grain_len: usize,
}

impl fmt::Debug for VmdkStreamDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmdkStreamDecoder")
            .field("state", &self.state)
            .field("pos", &self.pos)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Default for VmdkStreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl VmdkStreamDecoder {
    /// A decoder waiting for the header at entry offset 0.
    pub fn new() -> Self {
        VmdkStreamDecoder {
            state: State::Header,
            pos: 0,
            header: None,
            tables: None,
            small: [0; HEADER_SIZE],
            fill: 0,
            start: 0,
            lba: 0,
            inflate: Decompress::new(true),
            stream_ended: false,
            grain: Vec::new(),
            grain_len: 0,
        }
    }

    /// The parsed header, once seen.
    pub fn header(&self) -> Option<&SparseHeader> {
        self.header.as_ref()
    }

    /// Entry offset of the next byte `feed` expects.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Bytes held by the grain buffer (for tests of the memory bound).
    #[cfg(test)]
    pub(crate) fn grain_buffer_capacity(&self) -> usize {
        self.grain.capacity()
    }

    fn advance(&mut self, input: &mut &[u8], n: usize) {
        gather::advance(input, &mut self.pos, n);
    }

    /// Copies input into `small` until it holds `need` bytes; true when it
    /// does.
    fn fill_small(&mut self, input: &mut &[u8], need: usize) -> bool {
        gather::gather(&mut self.small, &mut self.fill, input, &mut self.pos, need)
    }

    fn enter(&mut self, then: Then) {
        self.fill = 0;
        self.start = self.pos;
        self.state = match then {
            Then::Marker => State::Marker,
            Then::Footer => State::Footer,
            Then::End => State::End,
            Then::Entries(read) => {
                self.start = read.start;
                State::Entries { read, index: 0 }
            }
        };
    }

    /// Skips to entry offset `until`; the structure skipped started at
    /// `start`.
    fn skip_to(&mut self, until: u64, then: Then, start: u64, what: &'static str) {
        if until <= self.pos {
            self.enter(then);
        } else {
            self.start = start;
            self.state = State::Skip { until, then, what };
        }
    }

    fn header_ref(&self) -> Result<&SparseHeader, VmdkError> {
        // Every state past `Header` has a header; this only guards the
        // invariant without panicking.
        self.header
            .as_ref()
            .ok_or(VmdkError::Poisoned { offset: self.pos })
    }

    fn tables(&mut self) -> Result<&mut Tables, VmdkError> {
        // Like `header_ref`: set together with the header.
        self.tables
            .as_mut()
            .ok_or(VmdkError::Poisoned { offset: self.pos })
    }

    /// Consumes some input (or changes state) once.
    fn step(&mut self, input: &mut &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        match self.state {
            State::Header => {
                if self.fill_small(input, HEADER_SIZE) {
                    let h = SparseHeader::parse(&self.small, 0)?;
                    let tables = Tables::new(&h)?;
                    out.capacity(h.capacity_bytes())?;
                    // grain_bytes <= MAX_GRAIN_SIZE, checked by parse.
                    self.grain = vec![0; h.grain_bytes() as usize + 1];
                    let data_start = h.data_start();
                    self.header = Some(h);
                    let first = tables.header_area();
                    self.tables = Some(tables);
                    match first {
                        Some(read) => self.skip_to(read.at, Then::Entries(read), 0, "header area"),
                        None => self.skip_to(data_start, Then::Marker, 0, "header area"),
                    }
                }
            }
            State::Skip { until, then, .. } => {
                let n = (until - self.pos).min(input.len() as u64) as usize;
                self.advance(input, n);
                if self.pos == until {
                    self.enter(then);
                }
            }
            State::Marker => {
                if !self.fill_small(input, GRAIN_MARKER_LEN) {
                    return Ok(());
                }
                let lba = u64_le(&self.small, 0);
                let size = u32_le(&self.small, 8);
                if size != 0 {
                    self.begin_grain(lba, u64::from(size))?;
                } else if self.fill_small(input, META_MARKER_LEN) {
                    self.metadata(lba, u32_le(&self.small, 12))?;
                }
            }
            State::Entries { read, mut index } => {
                // Tables in the header area can take megabytes: whole
                // entries come straight from the input; only one cut
                // between two pieces of input goes through `small`.
                const LEN: usize = ENTRY_SIZE as usize;
                while index < read.count {
                    let entry = match input.get(..LEN) {
                        Some(&[a, b, c, d]) if self.fill == 0 => {
                            self.advance(input, LEN);
                            u32::from_le_bytes([a, b, c, d])
                        }
                        _ if self.fill_small(input, LEN) => {
                            self.fill = 0;
                            u32_le(&self.small, 0)
                        }
                        _ => {
                            self.state = State::Entries { read, index };
                            return Ok(());
                        }
                    };
                    let at = read.at + index * ENTRY_SIZE;
                    self.tables()?.entry(read.table, index, entry, at)?;
                    index += 1;
                }
                self.end_table(read)?;
            }
            State::Grain { remaining, size } => {
                let n = remaining.min(input.len() as u64) as usize;
                let (chunk, _) = input.split_at(n);
                self.inflate_chunk(chunk, size)?;
                self.advance(input, n);
                let remaining = remaining - n as u64;
                if remaining == 0 {
                    self.end_grain(size, out)?;
                } else {
                    self.state = State::Grain { remaining, size };
                }
            }
            State::Footer => {
                if self.fill_small(input, HEADER_SIZE) {
                    let footer = SparseHeader::parse(&self.small, self.start)?;
                    let h = self.header_ref()?;
                    let field = if footer.capacity_sectors != h.capacity_sectors {
                        Some("capacity")
                    } else if footer.grain_sectors != h.grain_sectors {
                        Some("grainSize")
                    } else {
                        None
                    };
                    if let Some(field) = field {
                        return Err(VmdkError::FooterMismatch {
                            offset: self.start,
                            field,
                        }
                        .into());
                    }
                    let start = self.start;
                    self.tables()?.footer(&footer, start)?;
                    self.enter(Then::Marker);
                }
            }
            State::End => {
                if let Some(i) = input.iter().position(|&b| b != 0) {
                    return Err(VmdkError::TrailingGarbage {
                        offset: self.pos + i as u64,
                    }
                    .into());
                }
                let n = input.len();
                self.advance(input, n);
            }
            State::Failed => return Err(VmdkError::Poisoned { offset: self.pos }.into()),
        }
        Ok(())
    }

    fn begin_grain(&mut self, lba: u64, size: u64) -> Result<(), VmdkError> {
        let h = self.header_ref()?;
        let offset = self.start;
        if !lba.is_multiple_of(h.grain_sectors) {
            return Err(VmdkError::UnalignedGrain {
                offset,
                lba,
                grain_sectors: h.grain_sectors,
            });
        }
        if lba >= h.capacity_sectors {
            return Err(VmdkError::GrainBeyondCapacity {
                offset,
                lba,
                capacity: h.capacity_bytes(),
            });
        }
        if size > limits::MAX_VMDK_COMPRESSED_GRAIN {
            return Err(VmdkError::CompressedGrainLimit {
                offset,
                size,
                limit: limits::MAX_VMDK_COMPRESSED_GRAIN,
            });
        }
        self.tables()?.grain(lba, offset)?;
        self.lba = lba;
        self.inflate.reset(true);
        self.stream_ended = false;
        self.grain_len = 0;
        self.state = State::Grain {
            remaining: size,
            size,
        };
        Ok(())
    }

    /// Inflates compressed bytes of the current grain into the grain buffer.
    fn inflate_chunk(&mut self, mut input: &[u8], size: u64) -> Result<(), VmdkError> {
        let (offset, lba) = (self.start, self.lba);
        // The buffer is one grain plus one byte; filling that byte means the
        // grain inflates past its size.
        let limit = self.grain.len().saturating_sub(1);
        while !input.is_empty() {
            if self.stream_ended {
                return Err(VmdkError::ZlibTrailing { offset, lba, size });
            }
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let dst = self.grain.get_mut(self.grain_len..).unwrap_or(&mut []);
            let status = self
                .inflate
                .decompress(input, dst, FlushDecompress::None)
                .map_err(|e| VmdkError::Zlib {
                    offset,
                    lba,
                    message: e.to_string(),
                })?;
            let used = (self.inflate.total_in() - in0) as usize;
            let produced = (self.inflate.total_out() - out0) as usize;
            input = input.get(used..).unwrap_or(&[]);
            self.grain_len += produced;
            if self.grain_len > limit {
                return Err(VmdkError::GrainOverflow {
                    offset,
                    lba,
                    grain: limit as u64,
                });
            }
            match status {
                Status::StreamEnd => self.stream_ended = true,
                Status::Ok | Status::BufError => {
                    if used == 0 && produced == 0 {
                        return Err(VmdkError::Zlib {
                            offset,
                            lba,
                            message: "inflater made no progress".into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// All compressed bytes of the grain are in: check it and emit it.
    fn end_grain(&mut self, size: u64, out: &mut dyn ExtentSink) -> Result<()> {
        let (offset, lba) = (self.start, self.lba);
        if !self.stream_ended {
            // Ask once more with the finish flag, in case the inflater holds
            // the end back until told no more input comes.
            let limit = self.grain.len().saturating_sub(1);
            let out0 = self.inflate.total_out();
            let dst = self.grain.get_mut(self.grain_len..).unwrap_or(&mut []);
            let status = self.inflate.decompress(&[], dst, FlushDecompress::Finish);
            self.grain_len += (self.inflate.total_out() - out0) as usize;
            if self.grain_len > limit {
                return Err(VmdkError::GrainOverflow {
                    offset,
                    lba,
                    grain: limit as u64,
                }
                .into());
            }
            if !matches!(status, Ok(Status::StreamEnd)) {
                return Err(VmdkError::ZlibIncomplete { offset, lba, size }.into());
            }
        }
        let h = self.header_ref()?;
        let capacity = h.capacity_bytes();
        // lba < capacity_sectors <= MAX_CAPACITY / 512: no overflow.
        let guest = lba * SECTOR;
        let expected = h.grain_bytes().min(capacity - guest) as usize;
        let len = self.grain_len;
        if len < expected {
            return Err(VmdkError::ShortGrain {
                offset,
                lba,
                len: len as u64,
                expected: expected as u64,
            }
            .into());
        }
        // Some writers fill the last grain of a disk whose capacity is not a
        // grain multiple with zeros; those bytes are not part of the disk.
        if self.grain[expected..len].iter().any(|&b| b != 0) {
            return Err(VmdkError::GrainBeyondCapacity {
                offset,
                lba,
                capacity,
            }
            .into());
        }
        out.data(guest, &self.grain[..expected])?;
        let padded = self.pos.next_multiple_of(SECTOR);
        self.skip_to(padded, Then::Marker, offset, "grain marker");
        Ok(())
    }

    /// All entries of a table are in: go on after it.
    fn end_table(&mut self, read: Read) -> Result<(), VmdkError> {
        let next = self.tables()?.table_end(read.table)?;
        match read.table {
            Table::MarkerGt | Table::MarkerGd => {
                self.skip_to(read.until, Then::Marker, read.start, read.what);
            }
            Table::HeaderGd | Table::HeaderGt => match next {
                Some(next) => self.skip_to(next.at, Then::Entries(next), 0, "header area"),
                None => {
                    let data_start = self.header_ref()?.data_start();
                    self.skip_to(data_start, Then::Marker, 0, "header area");
                }
            },
        }
        Ok(())
    }

    /// A complete metadata marker `{numSectors, 0, type}` at `self.start`.
    fn metadata(&mut self, sectors: u64, kind: u32) -> Result<(), VmdkError> {
        let offset = self.start;
        let body = offset + SECTOR;
        match kind {
            MARKER_EOS => {
                self.tables()?.end_of_stream(offset)?;
                self.skip_to(body, Then::End, offset, "end-of-stream marker");
            }
            MARKER_GT | MARKER_GD => {
                let end = sectors
                    .checked_mul(SECTOR)
                    .and_then(|n| body.checked_add(n))
                    .ok_or(VmdkError::MarkerTooLarge { offset, sectors })?;
                let what = if kind == MARKER_GT {
                    "grain table marker"
                } else {
                    "grain directory marker"
                };
                let read = self
                    .tables()?
                    .table_marker(kind == MARKER_GD, offset, sectors, end)?;
                match read {
                    Some(read) => self.skip_to(body, Then::Entries(read), offset, what),
                    None => self.skip_to(end, Then::Marker, offset, what),
                }
            }
            MARKER_FOOTER => {
                if sectors != 1 {
                    return Err(VmdkError::BadFooterSize { offset, sectors });
                }
                self.tables()?.footer_marker(offset)?;
                self.skip_to(body, Then::Footer, offset, "footer marker");
            }
            _ => return Err(VmdkError::UnknownMarker { offset, kind }),
        }
        Ok(())
    }
}

fn u32_le(b: &[u8; HEADER_SIZE], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_le(b: &[u8; HEADER_SIZE], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl DiskDecoder for VmdkStreamDecoder {
    fn feed(&mut self, mut input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        if self.state == State::Failed {
            return Err(VmdkError::Poisoned { offset: self.pos }.into());
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
        let (start, end) = (self.start, self.pos);
        let truncated = |what| VmdkError::Truncated {
            offset: start,
            end,
            what,
        };
        let err = match self.state {
            // Between two markers, or after the end-of-stream marker: the
            // grains are complete, the tables must agree with them.
            State::Marker if self.fill == 0 => {
                match self.tables().and_then(|t| t.finish(end, false)) {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                }
            }
            State::End => match self.tables().and_then(|t| t.finish(end, true)) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
            State::Header => VmdkError::Truncated {
                offset: 0,
                end,
                what: "header",
            },
            State::Skip { what, .. } => truncated(what),
            State::Marker => truncated("marker"),
            State::Entries { read, .. } => truncated(read.what),
            State::Grain { .. } => truncated("grain marker"),
            State::Footer => truncated("footer"),
            State::Failed => VmdkError::Poisoned { offset: end },
        };
        self.state = State::Failed;
        Err(err.into())
    }

    fn capacity(&self) -> Option<u64> {
        self.header.as_ref().map(SparseHeader::capacity_bytes)
    }
}
