//! The streamOptimized VMDK stream encoder: lays out the extent VMware and
//! VirtualBox import from an [`AllocationMap`] so that its exact size is
//! known before the first byte is written, then produces it in one
//! sequential pass as a [`std::io::Read`].
//!
//! The layout is VMware's (what ovftool and ESXi write, and what
//! [`super::VmdkStreamDecoder`] checks as its `GD_AT_END` layout):
//!
//! ```text
//! header (gdOffset = GD_AT_END) | embedded descriptor | zeros up to overHead (128 sectors)
//!   for each grain table range (512 grains, 32 MiB) that holds data, in guest order:
//!     a grain marker {lba, size, zlib stream} per allocated grain, padded to 512
//!     a grain table marker and the 512 entries (sector of each grain's marker, or 0)
//! grain directory marker and the directory (sector of each grain table, or 0)
//! footer marker and the footer (the header with the real gdOffset)
//! end-of-stream marker
//! ```
//!
//! Every grain is a whole 64 KiB grain (the last one zero-filled past the
//! capacity: qemu inflates every grain to a whole one) and only grains
//! holding data are written, so the extent stays sparse. How a grain's
//! zlib stream is made is [`GrainCoding`]'s choice:
//!
//! * [`GrainCoding::Stored`]: deflate *stored* blocks. A grain's marker
//!   then has the same size whatever its bytes, so the extent's size
//!   follows from the allocation map alone ([`VmdkLayout::stored`]) and the
//!   source is read once. No compression: about 66 KiB per 64 KiB grain.
//! * [`GrainCoding::Deflate`]: real deflate (a grain that would not shrink
//!   is stored). Sizes depend on the bytes, so [`VmdkLayout::deflate`]
//!   reads and compresses every grain once to count them, and the encoder
//!   does it again while it streams: the source is read twice and
//!   compressed twice, for a smaller package. The second pass must produce
//!   the counted size, or the encoder fails ([`VmdkEncodeError::SizeMismatch`]):
//!   a source that changes in between cannot be streamed this way.
//!
//! Memory is bounded by one run of grains ([`limits::READ_CHUNK`]) with
//! its framing, one grain table (2 KiB), the merged allocated runs of the
//! map and one entry per grain table written (at most
//! [`limits::MAX_VMDK_GD_ENTRIES`]).

#[cfg(any(test, feature = "fuzzing"))]
mod fuzz;
mod layout;

use std::io::{self, Read};

use flate2::{Compress, Compression, FlushCompress, Status};

use super::header::{
    COMPRESS_DEFLATE, ENTRY_SIZE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, GD_AT_END,
    GRAIN_MARKER_LEN, HEADER_SIZE, MARKER_FOOTER, MARKER_GD, MARKER_GT, SECTOR, SparseHeader,
};
use crate::codec::map::{AllocationMap, GuestReader, RangeKind};
use crate::error::{Classify, ErrorKind};
use crate::limits;

/// Grain size in sectors: 64 KiB, what VMware writes.
pub const GRAIN_SECTORS: u64 = 128;
/// Grain size in bytes.
pub const GRAIN_SIZE: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per grain table (VMware's and qemu's 512): one
/// table maps 32 MiB.
pub const GTES_PER_GT: u64 = 512;
/// Sector of the embedded descriptor.
const DESCRIPTOR_OFFSET: u64 = 1;
/// Sectors kept for the embedded descriptor (VMware's and qemu's 20).
const DESCRIPTOR_SECTORS: u64 = 20;
/// Sectors before the first marker: header and descriptor area, padded to
/// one grain, as VMware writes it.
pub const OVERHEAD_SECTORS: u64 = 128;
/// Largest deflate stored block.
const STORED_BLOCK: usize = 65_535;
/// Sectors of a grain table's payload.
const GT_SECTORS: u64 = GTES_PER_GT * ENTRY_SIZE / SECTOR;
/// Grain directory sectors produced per step.
const GD_CHUNK_SECTORS: u64 = 128;
/// The deflate level of [`GrainCoding::Deflate`]: zlib's fastest, since
/// every grain is compressed twice. Most of what deflate saves on disk
/// images (zero-filled and repetitive blocks) it saves at level 1 too.
pub const DEFLATE_LEVEL: u32 = 1;
/// Sector numbers in grain tables and the directory are 32-bit: the
/// extent cannot be longer than this many sectors (2 TiB).
const MAX_SECTORS: u64 = 1 << 32;

/// How each grain's zlib stream is made; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrainCoding {
    /// Deflate stored blocks: size known from the map, one read pass.
    Stored,
    /// Deflate at [`DEFLATE_LEVEL`]: sized by a counting pass.
    Deflate,
}

/// Why an extent cannot be laid out or produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmdkEncodeError {
    /// The volume is larger than [`limits::MAX_CAPACITY`].
    #[error("virtual size {value} is larger than the limit of {limit} bytes")]
    Capacity {
        /// The map's capacity.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// The extent would have sectors beyond the 32-bit sector numbers of
    /// grain tables.
    #[error(
        "a streamOptimized VMDK of {bytes} bytes is too large: its grain tables address 2 TiB (use qcow2, or compress)"
    )]
    TooLarge {
        /// Bytes the extent would have.
        bytes: u64,
    },
    /// The byte count produced differs from the layout: the source changed
    /// since it was counted, or an internal fault.
    #[error(
        "VMDK encoder produced {produced} bytes, the layout promised {expected} (did the source change while it was exported?)"
    )]
    SizeMismatch {
        /// Bytes produced (so far, when it went past the promise).
        produced: u64,
        /// Bytes promised by [`VmdkLayout::total_size`].
        expected: u64,
    },
    /// A disk of 0 bytes: VMDK readers (qemu, VMware) take a sparse
    /// header with a zero capacity for a pointer to a descriptor file.
    #[error(
        "a disk of 0 bytes cannot be a streamOptimized VMDK (readers take a zero capacity for a descriptor pointer)"
    )]
    Empty,
    /// `read` called after an error.
    #[error("VMDK encoder used after an earlier error")]
    Poisoned,
}

impl Classify for VmdkEncodeError {
    fn kind(&self) -> ErrorKind {
        match self {
            VmdkEncodeError::Poisoned => ErrorKind::InvalidArgument,
            VmdkEncodeError::Capacity { .. } | VmdkEncodeError::TooLarge { .. } => {
                ErrorKind::LimitExceeded
            }
            VmdkEncodeError::SizeMismatch { .. } => ErrorKind::Io,
            VmdkEncodeError::Empty => ErrorKind::Unsupported,
        }
    }
}

/// Bytes of the zlib stream of `n` bytes in stored blocks: 2 header
/// bytes, 5 per block, the bytes, the 4-byte Adler-32.
fn stored_zlib_len(n: usize) -> usize {
    2 + 5 * n.div_ceil(STORED_BLOCK).max(1) + n + 4
}

/// Bytes of a grain marker holding `zlib` bytes, padded to a sector.
fn marker_len(zlib: usize) -> usize {
    (GRAIN_MARKER_LEN + zlib).next_multiple_of(SECTOR as usize)
}

/// Bytes of the marker of a grain in stored blocks.
fn stored_marker_len() -> usize {
    marker_len(stored_zlib_len(GRAIN_SIZE as usize))
}

/// Frames one whole grain (`data`, [`GRAIN_SIZE`] bytes) at guest sector
/// `lba` into `out` (at least [`stored_marker_len`] bytes): marker,
/// zlib stream, zero padding. Returns the bytes used, a multiple of 512.
/// With a compressor, the grain is deflated unless that does not make it
/// smaller than stored blocks; the result depends only on the bytes.
fn frame_grain(z: Option<&mut Compress>, lba: u64, data: &[u8], out: &mut [u8]) -> usize {
    let stored = stored_zlib_len(data.len());
    let body = &mut out[GRAIN_MARKER_LEN..GRAIN_MARKER_LEN + stored];
    let mut len = None;
    if let Some(z) = z {
        z.reset();
        // Room for less than stored blocks only: a stream that does not
        // end inside it is no gain.
        if let Ok(Status::StreamEnd) =
            z.compress(data, &mut body[..stored - 1], FlushCompress::Finish)
        {
            len = Some(z.total_out() as usize);
        }
    }
    let len = len.unwrap_or_else(|| {
        body[0] = 0x78; // deflate, 32 KiB window
        body[1] = 0x01; // no dictionary, fastest; (0x7801 % 31) == 0
        let mut at = 2;
        let blocks = data.len().div_ceil(STORED_BLOCK).max(1);
        for (i, chunk) in data
            .chunks(STORED_BLOCK)
            .chain(data.is_empty().then_some(&[][..]))
            .enumerate()
        {
            let n = chunk.len() as u16;
            body[at] = u8::from(i + 1 == blocks); // BFINAL, BTYPE 00
            body[at + 1..at + 3].copy_from_slice(&n.to_le_bytes());
            body[at + 3..at + 5].copy_from_slice(&(!n).to_le_bytes());
            body[at + 5..at + 5 + chunk.len()].copy_from_slice(chunk);
            at += 5 + chunk.len();
        }
        let mut a = simd_adler32::Adler32::new();
        a.write(data);
        body[at..at + 4].copy_from_slice(&a.finish().to_be_bytes());
        stored
    });
    out[..8].copy_from_slice(&lba.to_le_bytes());
    out[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    let total = marker_len(len);
    out[GRAIN_MARKER_LEN + len..total].fill(0);
    total
}

/// Reads `dst.len()` guest bytes from grain `first`, clipped to the
/// capacity; the rest is zero.
fn read_grains<R: GuestReader>(
    reader: &mut R,
    capacity: u64,
    first: u64,
    dst: &mut [u8],
) -> crate::Result<()> {
    let g = first * GRAIN_SIZE;
    let avail = capacity.saturating_sub(g).min(dst.len() as u64) as usize;
    if avail > 0 {
        reader.read_at(g, &mut dst[..avail])?;
    }
    dst[avail..].fill(0);
    Ok(())
}

/// Where the encoder is in the extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Header, descriptor, padding to the overhead.
    Header,
    /// The grains of table `k` of the layout.
    Grains(usize),
    /// The grain table marker and table `k`.
    Table(usize),
    /// The grain directory marker.
    DirectoryMarker,
    /// Directory sectors from this one (relative to the payload).
    Directory(u64),
    /// Footer marker, footer, end-of-stream marker.
    Footer,
    End,
}

/// Produces the extent laid out by a [`VmdkLayout`], reading guest data
/// from a [`GuestReader`]. Yields exactly [`VmdkLayout::total_size`]
/// bytes, then 0; fails rather than yield a different count.
pub struct VmdkEncoder<R: GuestReader> {
    layout: VmdkLayout,
    reader: R,
    stage: Stage,
    /// Framed bytes waiting to be read.
    buf: Vec<u8>,
    buf_pos: usize,
    buf_len: usize,
    /// Guest bytes of a run of grains.
    run_buf: Vec<u8>,
    compress: Option<Compress>,
    /// Index of the allocated run being emitted.
    run: usize,
    /// Next grain to emit within `layout.runs[run]`.
    next_grain: u64,
    /// The grain table being filled: sector of each grain's marker.
    gt: Vec<u32>,
    /// `(directory index, payload sector)` of every table written.
    written: Vec<(u64, u32)>,
    /// Sector of the grain directory's payload, once written.
    gd_sector: u64,
    produced: u64,
    failed: bool,
}

impl<R: GuestReader> std::fmt::Debug for VmdkEncoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmdkEncoder")
            .field("stage", &self.stage)
            .field("produced", &self.produced)
            .field("total", &self.layout.total_size())
            .finish()
    }
}

impl<R: GuestReader> VmdkEncoder<R> {
    /// An encoder for `layout`, reading guest bytes from `reader`.
    pub fn new(layout: VmdkLayout, reader: R) -> Self {
        let next_grain = layout.runs.first().map_or(0, |r| r.0);
        let compress = (layout.coding == GrainCoding::Deflate)
            .then(|| Compress::new(Compression::new(DEFLATE_LEVEL), true));
        VmdkEncoder {
            reader,
            stage: Stage::Header,
            buf: Vec::new(),
            buf_pos: 0,
            buf_len: 0,
            run_buf: Vec::new(),
            compress,
            run: 0,
            next_grain,
            gt: vec![0; GTES_PER_GT as usize],
            written: Vec::with_capacity(layout.tables.len()),
            gd_sector: 0,
            produced: 0,
            failed: false,
            layout,
        }
    }

    /// The layout being produced.
    pub fn layout(&self) -> &VmdkLayout {
        &self.layout
    }

    /// Bytes produced so far.
    pub fn position(&self) -> u64 {
        self.produced
    }

    /// Gives the reader back.
    pub fn into_inner(self) -> R {
        self.reader
    }

    /// Grains framed per step.
    fn per_run() -> u64 {
        (limits::READ_CHUNK as u64 / GRAIN_SIZE).max(1)
    }

    /// The output buffer's first `len` bytes, to be filled (allocated on
    /// first use, at its largest: one run of framed grains); zeroed when
    /// `zero` (metadata), left as they are when every byte is written
    /// (grains).
    fn out(&mut self, len: usize, zero: bool) -> &mut [u8] {
        let want = (Self::per_run() as usize * stored_marker_len())
            .max((OVERHEAD_SECTORS * SECTOR) as usize)
            .max((GD_CHUNK_SECTORS * SECTOR) as usize);
        if self.buf.len() < want {
            self.buf = vec![0u8; want];
        }
        self.buf_pos = 0;
        self.buf_len = len;
        let b = &mut self.buf[..len];
        if zero {
            b.fill(0);
        }
        b
    }

    /// A metadata marker `{sectors, 0, kind}` in its own sector.
    fn meta_marker(b: &mut [u8], sectors: u64, kind: u32) {
        b[..8].copy_from_slice(&sectors.to_le_bytes());
        b[12..16].copy_from_slice(&kind.to_le_bytes());
    }

    /// The next run of allocated grains of table `k`, at most `max`:
    /// `(first grain, count)`; `None` when the table's grains are done.
    fn next_run(&mut self, k: usize, max: u64) -> Option<(u64, u64)> {
        let table_end = (self.layout.tables[k] + 1) * GTES_PER_GT;
        let &(_, run_end) = self.layout.runs.get(self.run)?;
        if self.next_grain >= table_end {
            return None;
        }
        let first = self.next_grain;
        let n = (run_end.min(table_end) - first).min(max.max(1));
        self.next_grain += n;
        if self.next_grain == run_end {
            self.run += 1;
            if let Some(r) = self.layout.runs.get(self.run) {
                self.next_grain = r.0;
            }
        }
        Some((first, n))
    }

    fn step(&mut self) -> io::Result<bool> {
        let sector = |bytes: u64| bytes / SECTOR;
        match self.stage {
            Stage::Header => {
                let header = self.layout.header(GD_AT_END).to_bytes();
                let descriptor = self.layout.descriptor();
                let b = self.out((OVERHEAD_SECTORS * SECTOR) as usize, true);
                b[..HEADER_SIZE].copy_from_slice(&header);
                let at = (DESCRIPTOR_OFFSET * SECTOR) as usize;
                let room = (DESCRIPTOR_SECTORS * SECTOR) as usize;
                let d = descriptor.as_bytes();
                let n = d.len().min(room);
                b[at..at + n].copy_from_slice(&d[..n]);
                self.stage = if self.layout.tables.is_empty() {
                    Stage::DirectoryMarker
                } else {
                    Stage::Grains(0)
                };
            }
            Stage::Grains(k) => {
                let Some((first, n)) = self.next_run(k, Self::per_run()) else {
                    self.stage = Stage::Table(k);
                    return Ok(true);
                };
                let len = (n * GRAIN_SIZE) as usize;
                if self.run_buf.len() < len {
                    self.run_buf = vec![0u8; (Self::per_run() * GRAIN_SIZE) as usize];
                }
                read_grains(
                    &mut self.reader,
                    self.layout.capacity,
                    first,
                    &mut self.run_buf[..len],
                )
                .map_err(io::Error::other)?;
                let max = n as usize * stored_marker_len();
                self.out(max, false);
                let base = self.produced;
                let mut at = 0usize;
                let table = self.layout.tables[k];
                for i in 0..n {
                    let g = first + i;
                    let s = sector(base + at as u64);
                    // Checked by the layout: every sector fits 32 bits.
                    self.gt[(g - table * GTES_PER_GT) as usize] = s as u32;
                    let data =
                        &self.run_buf[(i * GRAIN_SIZE) as usize..((i + 1) * GRAIN_SIZE) as usize];
                    at += frame_grain(
                        self.compress.as_mut(),
                        g * GRAIN_SECTORS,
                        data,
                        &mut self.buf[at..],
                    );
                }
                self.buf_len = at;
            }
            Stage::Table(k) => {
                let marker = sector(self.produced);
                let gt = std::mem::replace(&mut self.gt, vec![0; GTES_PER_GT as usize]);
                let b = self.out(((1 + GT_SECTORS) * SECTOR) as usize, true);
                Self::meta_marker(b, GT_SECTORS, MARKER_GT);
                for (i, e) in gt.iter().enumerate() {
                    let at = SECTOR as usize + i * ENTRY_SIZE as usize;
                    b[at..at + 4].copy_from_slice(&e.to_le_bytes());
                }
                self.written
                    .push((self.layout.tables[k], (marker + 1) as u32));
                self.stage = if k + 1 < self.layout.tables.len() {
                    Stage::Grains(k + 1)
                } else {
                    Stage::DirectoryMarker
                };
            }
            Stage::DirectoryMarker => {
                self.gd_sector = sector(self.produced) + 1;
                let n = self.layout.gd_sectors();
                let b = self.out(SECTOR as usize, true);
                Self::meta_marker(b, n, MARKER_GD);
                self.stage = if n > 0 {
                    Stage::Directory(0)
                } else {
                    Stage::Footer
                };
            }
            Stage::Directory(j) => {
                let total = self.layout.gd_sectors();
                let sectors = (total - j).min(GD_CHUNK_SECTORS);
                let per = SECTOR / ENTRY_SIZE;
                let (lo, hi) = (j * per, (j + sectors) * per);
                let from = self.written.partition_point(|t| t.0 < lo);
                let to = self.written.partition_point(|t| t.0 < hi);
                let entries: Vec<(usize, u32)> = self.written[from..to]
                    .iter()
                    .map(|&(i, s)| (((i - lo) * ENTRY_SIZE) as usize, s))
                    .collect();
                let b = self.out((sectors * SECTOR) as usize, true);
                for (at, s) in entries {
                    b[at..at + 4].copy_from_slice(&s.to_le_bytes());
                }
                self.stage = if j + sectors < total {
                    Stage::Directory(j + sectors)
                } else {
                    Stage::Footer
                };
            }
            Stage::Footer => {
                let footer = self.layout.header(self.gd_sector).to_bytes();
                let b = self.out(3 * SECTOR as usize, true);
                Self::meta_marker(b, 1, MARKER_FOOTER);
                b[SECTOR as usize..SECTOR as usize + HEADER_SIZE].copy_from_slice(&footer);
                // The end-of-stream marker is a zero sector.
                self.stage = Stage::End;
            }
            Stage::End => {
                let expected = self.layout.total_size();
                if self.produced != expected {
                    return Err(io::Error::other(crate::Error::from(
                        VmdkEncodeError::SizeMismatch {
                            produced: self.produced,
                            expected,
                        },
                    )));
                }
                return Ok(false);
            }
        }
        // Deflated grains may come out longer than counted (a source that
        // changed): fail before a byte past the promise leaves.
        let next = self.produced + self.buf_len as u64;
        if next > self.layout.total_size() {
            return Err(io::Error::other(crate::Error::from(
                VmdkEncodeError::SizeMismatch {
                    produced: next,
                    expected: self.layout.total_size(),
                },
            )));
        }
        Ok(true)
    }
}

impl<R: GuestReader> Read for VmdkEncoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.failed {
            return Err(io::Error::other(crate::Error::from(
                VmdkEncodeError::Poisoned,
            )));
        }
        loop {
            if self.buf_pos < self.buf_len {
                let n = out.len().min(self.buf_len - self.buf_pos);
                out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
                self.buf_pos += n;
                self.produced += n as u64;
                return Ok(n);
            }
            match self.step() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
use fuzz::encode_decode_check;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub use fuzz::fuzz_roundtrip;
pub use layout::VmdkLayout;

#[cfg(test)]
#[path = "encoder_tests.rs"]
mod tests;
