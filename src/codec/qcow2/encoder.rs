//! The qcow2 stream encoder: lays out a qcow2 v3 image from an
//! [`AllocationMap`] so that its exact size is known before the first byte
//! is written, then produces the image in one sequential pass as a
//! [`std::io::Read`].
//!
//! Layout, every offset cluster aligned and every cluster referenced once
//! (refcount 1):
//!
//! ```text
//! header | refcount table | refcount blocks | L1 table |
//!   for each L1 entry that maps anything, in guest order:
//!     its L2 table | the data clusters it maps, in guest order
//! ```
//!
//! A guest cluster is allocated when any byte of it lies in a data range;
//! zero ranges produce nothing (unallocated clusters of a fresh image read
//! as zero). Every L2 table precedes the data it maps, so the image decodes
//! again in one pass without a spool.
//!
//! Metadata is generated one cluster at a time; guest data is read in runs
//! of up to [`limits::READ_CHUNK`] bytes (or straight into the caller's
//! buffer when it is large enough). Memory is bounded by one run buffer,
//! the merged allocated runs of the map and one entry per used L1 slot.

use std::io::{self, Read};

use super::header::{
    self, CompressionType, Header, L2E_OFFSET_MASK, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS,
    OFLAG_COPIED, V3_HEADER_LEN,
};
use crate::codec::map::{AllocationMap, GuestReader, RangeKind};
#[cfg(any(test, feature = "fuzzing"))]
use crate::codec::verify::{PatternReader, VerifySink};
use crate::error::{Classify, ErrorKind};
use crate::limits;

/// Cluster size used by [`Qcow2Layout::new`]: 64 KiB, qemu's default.
pub const DEFAULT_CLUSTER_BITS: u32 = 16;
/// 16-bit refcounts, qemu's default.
const REFCOUNT_ORDER: u32 = 4;
/// qemu counts the virtual size in whole sectors.
const SECTOR: u64 = 512;

/// Why an image cannot be laid out or produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Qcow2EncodeError {
    /// A cluster size qcow2 does not allow.
    #[error("cluster_bits {0} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}")]
    ClusterBits(u32),
    /// The volume is larger than [`limits::MAX_CAPACITY`].
    #[error("virtual size {value} is larger than the limit of {limit} bytes")]
    Capacity {
        /// The map's capacity.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// The L1 table would exceed [`limits::MAX_QCOW2_L1_ENTRIES`].
    #[error("L1 table of {value} entries is larger than the limit of {limit}")]
    L1Entries {
        /// Entries needed.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// The image would not fit the 56-bit host offsets of qcow2.
    #[error("image of {clusters} clusters does not fit qcow2 host offsets")]
    TooLarge {
        /// Clusters needed.
        clusters: u64,
    },
    /// The byte count produced differs from the layout (an internal fault).
    #[error("qcow2 encoder produced {produced} bytes, the layout promised {expected}")]
    SizeMismatch {
        /// Bytes produced.
        produced: u64,
        /// Bytes promised by [`Qcow2Layout::total_size`].
        expected: u64,
    },
    /// `read` called after an error.
    #[error("qcow2 encoder used after an earlier error")]
    Poisoned,
}

impl Classify for Qcow2EncodeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Qcow2EncodeError::ClusterBits(_) | Qcow2EncodeError::Poisoned => {
                ErrorKind::InvalidArgument
            }
            Qcow2EncodeError::Capacity { .. }
            | Qcow2EncodeError::L1Entries { .. }
            | Qcow2EncodeError::TooLarge { .. } => ErrorKind::LimitExceeded,
            Qcow2EncodeError::SizeMismatch { .. } => ErrorKind::Io,
        }
    }
}

/// One used L1 slot: its index and the host offset of its L2 table (the
/// data clusters it maps follow the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Table {
    l1_index: u64,
    l2_host: u64,
}

/// The exact layout of the qcow2 image for one allocation map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Layout {
    cluster_bits: u32,
    /// Bytes the guest reader holds (the map's capacity).
    capacity: u64,
    /// Virtual size recorded in the header: capacity rounded up to 512.
    size: u64,
    l1_size: u64,
    rt_clusters: u64,
    rb_clusters: u64,
    l1_clusters: u64,
    total_clusters: u64,
    data_clusters: u64,
    /// Allocated guest clusters as merged runs `[start, end)`.
    runs: Vec<(u64, u64)>,
    /// Used L1 slots, in guest order.
    tables: Vec<Table>,
}

impl Qcow2Layout {
    /// Computes the exact image layout for `map` with 64 KiB clusters.
    pub fn new(map: &AllocationMap) -> crate::Result<Self> {
        Self::with_cluster_bits(map, DEFAULT_CLUSTER_BITS)
    }

    /// Computes the exact image layout for `map` with clusters of
    /// `1 << cluster_bits` bytes (9..=21).
    pub fn with_cluster_bits(map: &AllocationMap, cluster_bits: u32) -> crate::Result<Self> {
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Qcow2EncodeError::ClusterBits(cluster_bits).into());
        }
        let capacity = map.capacity();
        if capacity > limits::MAX_CAPACITY {
            return Err(Qcow2EncodeError::Capacity {
                value: capacity,
                limit: limits::MAX_CAPACITY,
            }
            .into());
        }
        let cs = 1u64 << cluster_bits;
        let l2_entries = cs / 8;
        let size = capacity.div_ceil(SECTOR) * SECTOR;
        let l1_size = header::l1_entries_for(size, cluster_bits);
        if l1_size > limits::MAX_QCOW2_L1_ENTRIES {
            return Err(Qcow2EncodeError::L1Entries {
                value: l1_size,
                limit: limits::MAX_QCOW2_L1_ENTRIES,
            }
            .into());
        }

        // Allocated clusters, merged (data ranges may share a cluster).
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for r in map.ranges().iter().filter(|r| r.kind == RangeKind::Data) {
            let start = r.offset / cs;
            let end = (r.offset + r.len).div_ceil(cs);
            match runs.last_mut() {
                Some(last) if last.1 >= start => last.1 = last.1.max(end),
                _ => runs.push((start, end)),
            }
        }

        // Clusters mapped by each used L1 slot.
        let mut counts: Vec<(u64, u64)> = Vec::new();
        for &(start, end) in &runs {
            let mut c = start;
            while c < end {
                let l1 = c / l2_entries;
                let stop = end.min((l1 + 1) * l2_entries);
                match counts.last_mut() {
                    Some(last) if last.0 == l1 => last.1 += stop - c,
                    _ => counts.push((l1, stop - c)),
                }
                c = stop;
            }
        }
        let data_clusters: u64 = counts.iter().map(|c| c.1).sum();
        // An empty L1 table takes no cluster (qemu points the offset past
        // the refcount blocks all the same).
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let fixed = 1 + l1_clusters + counts.len() as u64 + data_clusters;

        // Refcount table and blocks cover every cluster, themselves included.
        let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let (mut rt, mut rb) = (1u64, 1u64);
        loop {
            let total = fixed + rt + rb;
            let rb2 = total.div_ceil(per_block);
            let rt2 = (rb2 * 8).div_ceil(cs);
            if (rb2, rt2) == (rb, rt) {
                break;
            }
            // Both only grow: the loop ends.
            rb = rb.max(rb2);
            rt = rt.max(rt2);
        }
        let total_clusters = fixed + rt + rb;
        if total_clusters > (L2E_OFFSET_MASK >> cluster_bits) {
            return Err(Qcow2EncodeError::TooLarge {
                clusters: total_clusters,
            }
            .into());
        }

        let mut host = (1 + rt + rb + l1_clusters) * cs;
        let tables = counts
            .iter()
            .map(|&(l1_index, n)| {
                let t = Table {
                    l1_index,
                    l2_host: host,
                };
                host += (1 + n) * cs;
                t
            })
            .collect();
        debug_assert_eq!(host, total_clusters * cs);

        Ok(Qcow2Layout {
            cluster_bits,
            capacity,
            size,
            l1_size,
            rt_clusters: rt,
            rb_clusters: rb,
            l1_clusters,
            total_clusters,
            data_clusters,
            runs,
            tables,
        })
    }

    /// Exact byte count the encoder produces.
    pub fn total_size(&self) -> u64 {
        self.total_clusters << self.cluster_bits
    }

    /// Allocated data clusters.
    pub fn data_clusters(&self) -> u64 {
        self.data_clusters
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Virtual size recorded in the header: the map's capacity rounded up
    /// to a multiple of 512, as `qemu-img convert` records it.
    pub fn virtual_size(&self) -> u64 {
        self.size
    }

    /// The header the image starts with.
    pub fn header(&self) -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: self.cluster_bits,
            size: self.size,
            crypt_method: 0,
            l1_size: self.l1_size as u32,
            l1_table_offset: self.l1_offset(),
            refcount_table_offset: self.cluster_size(),
            refcount_table_clusters: self.rt_clusters as u32,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: REFCOUNT_ORDER,
            header_length: V3_HEADER_LEN,
            compression_type: CompressionType::Zlib,
        }
    }

    fn l1_offset(&self) -> u64 {
        (1 + self.rt_clusters + self.rb_clusters) << self.cluster_bits
    }

    /// Guest bytes of allocated clusters, clipped to the virtual size.
    #[cfg(any(test, feature = "fuzzing"))]
    fn allocated_bytes(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let cb = self.cluster_bits;
        self.runs
            .iter()
            .map(move |&(s, e)| (s << cb, (e << cb).min(self.size)))
    }
}

/// Where the encoder is in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    RefTable(u64),
    RefBlock(u64),
    L1(u64),
    L2(usize),
    Data(usize),
    End,
}

/// What one step produced.
enum Step {
    /// The internal buffer was refilled, or the stage moved on.
    Again,
    /// This many bytes were read straight into the caller's buffer.
    Direct(usize),
    /// The image is complete.
    Eof,
}

/// Produces the qcow2 image laid out by a [`Qcow2Layout`], reading guest
/// data from a [`GuestReader`]. Yields exactly
/// [`Qcow2Layout::total_size`] bytes, then 0.
pub struct Qcow2Encoder<R: GuestReader> {
    layout: Qcow2Layout,
    reader: R,
    stage: Stage,
    buf: Vec<u8>,
    buf_pos: usize,
    buf_len: usize,
    /// Index of the allocated run being emitted.
    run: usize,
    /// Next guest cluster to emit within `layout.runs[run]`.
    next_cluster: u64,
    produced: u64,
    failed: bool,
}

impl<R: GuestReader> std::fmt::Debug for Qcow2Encoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Encoder")
            .field("stage", &self.stage)
            .field("produced", &self.produced)
            .field("total", &self.layout.total_size())
            .finish()
    }
}

impl<R: GuestReader> Qcow2Encoder<R> {
    /// An encoder for `layout`, reading guest bytes from `reader`.
    pub fn new(layout: Qcow2Layout, reader: R) -> Self {
        let next_cluster = layout.runs.first().map_or(0, |r| r.0);
        Qcow2Encoder {
            layout,
            reader,
            stage: Stage::Header,
            buf: Vec::new(),
            buf_pos: 0,
            buf_len: 0,
            run: 0,
            next_cluster,
            produced: 0,
            failed: false,
        }
    }

    /// The layout being produced.
    pub fn layout(&self) -> &Qcow2Layout {
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

    fn cs(&self) -> usize {
        1usize << self.layout.cluster_bits
    }

    /// Allocates the output buffer on first use: one run of data, at least
    /// one cluster.
    fn ensure_buf(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0u8; self.cs().max(limits::READ_CHUNK)];
        }
    }

    /// Zeroes one cluster of the buffer for a metadata cluster.
    fn meta_cluster(&mut self) -> &mut [u8] {
        let cs = self.cs();
        self.ensure_buf();
        self.buf_pos = 0;
        self.buf_len = cs;
        let b = &mut self.buf[..cs];
        b.fill(0);
        b
    }

    /// The next run of data clusters of table `k`, at most `max` clusters:
    /// `(first guest cluster, count)`, advancing the cursor; `None` when
    /// the table's clusters are all emitted.
    fn next_run(&mut self, k: usize, max: u64) -> Option<(u64, u64)> {
        let l2_entries = self.layout.cluster_size() / 8;
        let l1_end = (self.layout.tables[k].l1_index + 1) * l2_entries;
        let &(_, run_end) = self.layout.runs.get(self.run)?;
        if self.next_cluster >= l1_end {
            return None;
        }
        let first = self.next_cluster;
        let n = (run_end.min(l1_end) - first).min(max.max(1));
        self.next_cluster += n;
        if self.next_cluster == run_end {
            self.run += 1;
            if let Some(r) = self.layout.runs.get(self.run) {
                self.next_cluster = r.0;
            }
        }
        Some((first, n))
    }

    /// Reads `dst.len()` guest bytes from guest cluster `first`, clipped to
    /// the capacity; the rest is zero.
    fn read_guest(
        reader: &mut R,
        capacity: u64,
        cluster_bits: u32,
        first: u64,
        dst: &mut [u8],
    ) -> io::Result<()> {
        let g = first << cluster_bits;
        let avail = capacity.saturating_sub(g).min(dst.len() as u64) as usize;
        if avail > 0 {
            reader
                .read_at(g, &mut dst[..avail])
                .map_err(io::Error::other)?;
        }
        dst[avail..].fill(0);
        Ok(())
    }

    fn step(&mut self, out: &mut [u8]) -> io::Result<Step> {
        let cb = self.layout.cluster_bits;
        let cs = self.cs() as u64;
        match self.stage {
            Stage::Header => {
                let h = self.layout.header().to_bytes();
                // The end-of-extensions marker (8 zero bytes) follows.
                self.meta_cluster()[..h.len()].copy_from_slice(&h);
                self.stage = Stage::RefTable(0);
            }
            Stage::RefTable(j) => {
                let per = cs / 8;
                let first_block = 1 + self.layout.rt_clusters;
                let blocks = self.layout.rb_clusters;
                let b = self.meta_cluster();
                for e in j * per..((j + 1) * per).min(blocks) {
                    let at = ((e - j * per) * 8) as usize;
                    let host = (first_block + e) << cb;
                    b[at..at + 8].copy_from_slice(&host.to_be_bytes());
                }
                self.stage = if j + 1 < self.layout.rt_clusters {
                    Stage::RefTable(j + 1)
                } else {
                    Stage::RefBlock(0)
                };
            }
            Stage::RefBlock(j) => {
                let per = cs * 8 / (1 << REFCOUNT_ORDER);
                let total = self.layout.total_clusters;
                let n = total.saturating_sub(j * per).min(per) as usize;
                let b = self.meta_cluster();
                for e in b[..n * 2].chunks_exact_mut(2) {
                    e[1] = 1;
                }
                self.stage = if j + 1 < self.layout.rb_clusters {
                    Stage::RefBlock(j + 1)
                } else if self.layout.l1_clusters > 0 {
                    Stage::L1(0)
                } else {
                    Stage::End
                };
            }
            Stage::L1(j) => {
                let per = cs / 8;
                let (lo, hi) = (j * per, (j + 1) * per);
                let tables = &self.layout.tables;
                let from = tables.partition_point(|t| t.l1_index < lo);
                let to = tables.partition_point(|t| t.l1_index < hi);
                let entries: Vec<(usize, u64)> = tables[from..to]
                    .iter()
                    .map(|t| (((t.l1_index - lo) * 8) as usize, OFLAG_COPIED | t.l2_host))
                    .collect();
                let b = self.meta_cluster();
                for (at, v) in entries {
                    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
                }
                self.stage = if j + 1 < self.layout.l1_clusters {
                    Stage::L1(j + 1)
                } else if self.layout.tables.is_empty() {
                    Stage::End
                } else {
                    Stage::L2(0)
                };
            }
            Stage::L2(k) => {
                let l2_entries = cs / 8;
                let t = self.layout.tables[k];
                let base = t.l1_index * l2_entries;
                let end = base + l2_entries;
                let mut host = t.l2_host + cs;
                let mut entries: Vec<(usize, u64)> = Vec::new();
                let mut c = self.next_cluster;
                for &(s, e) in &self.layout.runs[self.run.min(self.layout.runs.len())..] {
                    if s >= end {
                        break;
                    }
                    c = c.max(s);
                    while c < e.min(end) {
                        entries.push((((c - base) * 8) as usize, OFLAG_COPIED | host));
                        host += cs;
                        c += 1;
                    }
                }
                let b = self.meta_cluster();
                for (at, v) in entries {
                    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
                }
                self.stage = Stage::Data(k);
            }
            Stage::Data(k) => {
                let direct = out.len() as u64 >= cs;
                let max = if direct {
                    out.len() as u64 / cs
                } else {
                    (limits::READ_CHUNK as u64 / cs).max(1)
                };
                let Some((first, n)) = self.next_run(k, max) else {
                    self.stage = if k + 1 < self.layout.tables.len() {
                        Stage::L2(k + 1)
                    } else {
                        Stage::End
                    };
                    return Ok(Step::Again);
                };
                let len = (n * cs) as usize;
                let capacity = self.layout.capacity;
                if direct {
                    Self::read_guest(&mut self.reader, capacity, cb, first, &mut out[..len])?;
                    return Ok(Step::Direct(len));
                }
                self.ensure_buf();
                self.buf_pos = 0;
                self.buf_len = len;
                Self::read_guest(&mut self.reader, capacity, cb, first, &mut self.buf[..len])?;
            }
            Stage::End => {
                let expected = self.layout.total_size();
                if self.produced != expected {
                    return Err(io::Error::other(crate::Error::from(
                        Qcow2EncodeError::SizeMismatch {
                            produced: self.produced,
                            expected,
                        },
                    )));
                }
                return Ok(Step::Eof);
            }
        }
        Ok(Step::Again)
    }
}

impl<R: GuestReader> Read for Qcow2Encoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.failed {
            return Err(io::Error::other(crate::Error::from(
                Qcow2EncodeError::Poisoned,
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
            match self.step(out) {
                Ok(Step::Again) => {}
                Ok(Step::Direct(n)) => {
                    self.produced += n as u64;
                    return Ok(n);
                }
                Ok(Step::Eof) => return Ok(0),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
    }
}

// ------------------------------------------------------------ verification

/// Encodes `map` read through `reader`, feeding the image to a spool-less
/// stream decoder in pieces of `piece` bytes, and checks the result: the
/// byte count equals the layout's, the decoded data equals the reader's
/// bytes on exactly the allocated clusters. Returns the byte count.
#[cfg(any(test, feature = "fuzzing"))]
fn encode_decode_check(map: &AllocationMap, cluster_bits: u32, seed: u64, piece: usize) -> u64 {
    use crate::codec::DiskDecoder;
    let layout = Qcow2Layout::with_cluster_bits(map, cluster_bits).expect("layout");
    let total = layout.total_size();
    let allocated: Vec<(u64, u64)> = layout.allocated_bytes().collect();
    let size = layout.virtual_size();
    let mut enc = Qcow2Encoder::new(layout, PatternReader::new(map, seed));
    let mut expected = PatternReader::new(map, seed);
    let mut sink = VerifySink::new(&mut expected, map.capacity());
    let mut dec = super::Qcow2StreamDecoder::new(None).with_entry_size(total);
    let mut buf = vec![0u8; piece.max(1)];
    let mut produced = 0u64;
    loop {
        let n = enc.read(&mut buf).expect("encoder read");
        if n == 0 {
            break;
        }
        produced += n as u64;
        dec.feed(&buf[..n], &mut sink)
            .unwrap_or_else(|e| panic!("decode: {}", e.one_line()));
    }
    dec.finish(&mut sink)
        .unwrap_or_else(|e| panic!("decode finish: {}", e.one_line()));
    assert_eq!(produced, total, "bytes produced vs predicted");
    assert_eq!(sink.capacity, Some(size));
    assert_eq!(sink.zero_extents, 0);
    assert_eq!(sink.covered, allocated, "decoded guest ranges");
    produced
}

/// Fuzzing entry point: builds an allocation map from `data` (bounded
/// capacity), encodes it, decodes the image without a spool and asserts
/// the size and the content match.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_roundtrip(data: &[u8]) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let cluster_bits = MIN_CLUSTER_BITS + u32::from(byte(0)) % 8; // 512 B..64 KiB
    // Capacity up to 4 MiB, any byte count.
    let capacity = u64::from(u32::from_be_bytes([0, byte(1), byte(2), byte(3)])) % (4 << 20);
    let mut map = AllocationMap::new(capacity);
    let mut pos = 0u64;
    for rec in data.get(4..).unwrap_or(&[]).chunks(4) {
        let mut r = [0u8; 4];
        r[..rec.len()].copy_from_slice(rec);
        let scale = 1u64 << (r[0] % 20);
        let gap = u64::from(r[1]) * scale / 16;
        let len = 1 + u64::from(r[2]) * scale / 8;
        let kind = if r[3] & 1 == 0 {
            RangeKind::Data
        } else {
            RangeKind::Zero
        };
        let start = pos + gap;
        if start >= capacity {
            break;
        }
        let len = len.min(capacity - start);
        map.push(start, len, kind).expect("ordered ranges");
        pos = start + len;
    }
    let piece = 1 + usize::from(byte(3)) * 509;
    encode_decode_check(&map, cluster_bits, u64::from(byte(2)), piece);
}

#[cfg(test)]
#[path = "encoder_tests.rs"]
mod tests;
