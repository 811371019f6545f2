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
use super::header::{HEADER_SIZE, SECTOR, SparseHeader};
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::Result;
use crate::limits;

/// Bytes of a grain marker before its compressed data: `u64 lba, u32 size`.
const GRAIN_MARKER_LEN: usize = 12;
/// Bytes of a metadata marker that carry information:
/// `u64 numSectors, u32 size (0), u32 type`; the rest of its sector is padding.
const META_MARKER_LEN: usize = 16;

const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// What follows a skipped region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Marker,
    Footer,
    End,
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
/// the stream) are not emitted: the sink starts empty. GT, GD, footer and
/// end-of-stream markers are checked for framing and skipped; files that
/// simply end after their last grain (as qemu-img writes them) are accepted.
///
/// Memory is bounded by one grain ([`limits::MAX_GRAIN_SIZE`]) plus the
/// inflater's window, whatever the input.
pub struct VmdkStreamDecoder {
    state: State,
    /// Entry offset of the next input byte.
    pos: u64,
    header: Option<SparseHeader>,
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
        *input = input.get(n..).unwrap_or(&[]);
        self.pos += n as u64;
    }

    /// Copies input into `small` until it holds `need` bytes; true when it
    /// does.
    fn fill_small(&mut self, input: &mut &[u8], need: usize) -> bool {
        if self.fill < need {
            let n = (need - self.fill).min(input.len());
            self.small[self.fill..self.fill + n].copy_from_slice(&input[..n]);
            self.fill += n;
            self.advance(input, n);
        }
        self.fill >= need
    }

    fn enter(&mut self, then: Then) {
        self.fill = 0;
        self.start = self.pos;
        self.state = match then {
            Then::Marker => State::Marker,
            Then::Footer => State::Footer,
            Then::End => State::End,
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

    /// Consumes some input (or changes state) once.
    fn step(&mut self, input: &mut &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        match self.state {
            State::Header => {
                if self.fill_small(input, HEADER_SIZE) {
                    let h = SparseHeader::parse(&self.small, 0)?;
                    out.capacity(h.capacity_bytes())?;
                    // grain_bytes <= MAX_GRAIN_SIZE, checked by parse.
                    self.grain = vec![0; h.grain_bytes() as usize + 1];
                    let data_start = h.data_start();
                    self.header = Some(h);
                    self.skip_to(data_start, Then::Marker, 0, "header area");
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

    /// A complete metadata marker `{numSectors, 0, type}` at `self.start`.
    fn metadata(&mut self, sectors: u64, kind: u32) -> Result<(), VmdkError> {
        let offset = self.start;
        let body = offset + SECTOR;
        match kind {
            MARKER_EOS => self.skip_to(body, Then::End, offset, "end-of-stream marker"),
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
                self.skip_to(end, Then::Marker, offset, what);
            }
            MARKER_FOOTER => {
                if sectors != 1 {
                    return Err(VmdkError::BadFooterSize { offset, sectors });
                }
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
        let truncated = |what| VmdkError::Truncated {
            offset: self.start,
            end: self.pos,
            what,
        };
        let err = match self.state {
            State::Marker if self.fill == 0 => return Ok(()),
            State::End => return Ok(()),
            State::Header => VmdkError::Truncated {
                offset: 0,
                end: self.pos,
                what: "header",
            },
            State::Skip { what, .. } => truncated(what),
            State::Marker => truncated("marker"),
            State::Grain { .. } => truncated("grain marker"),
            State::Footer => truncated("footer"),
            State::Failed => VmdkError::Poisoned { offset: self.pos },
        };
        self.state = State::Failed;
        Err(err.into())
    }

    fn capacity(&self) -> Option<u64> {
        self.header.as_ref().map(SparseHeader::capacity_bytes)
    }
}
