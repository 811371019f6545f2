//! qcow2 target volume: a qcow2 v3 file (64 KiB clusters, 16-bit
//! refcounts, no compression, no lazy refcounts) written with writes in any
//! order and at any alignment.
//!
//! Layout: cluster 0 holds the header, the L1 table follows it (its size is
//! known from the capacity), then L2 tables and data clusters are appended
//! in the order they are first needed — an L2 table right before the first
//! data cluster it maps, so a volume written in guest order has every L2
//! table before its data. `finish()` appends the refcount blocks and the
//! refcount table and writes the header last. Every cluster in the file is
//! used exactly once, so all refcounts are 1 and nothing can leak.
//!
//! Memory is bounded whatever the capacity, except for the L1 table
//! (8 bytes per 512 MiB): a write-back cache of [`L2_CACHE_TABLES`] L2
//! tables, one assembly buffer collecting partial writes into a cluster not
//! yet allocated, and one scratch cluster. Runs of whole clusters that get
//! contiguous host clusters go to the file in one `pwrite`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::sink::Target;
use crate::sink::target::{TargetError, check_capacity, check_range};
use crate::volume::ZEROS;

/// log2 of the cluster size.
pub const CLUSTER_BITS: u32 = 16;
/// Cluster size in bytes.
pub const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// L2 tables kept in memory at once (64 KiB each).
pub const L2_CACHE_TABLES: usize = 32;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const VERSION: u32 = 3;
const HEADER_LENGTH: u32 = 112;
/// 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
const L2_ENTRIES: u64 = CLUSTER_SIZE / 8;
/// Guest bytes mapped by one L2 table (512 MiB).
const L2_COVERAGE: u64 = L2_ENTRIES * CLUSTER_SIZE;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER_SIZE * 8 / (1 << REFCOUNT_ORDER);
/// Refcount is exactly one: the cluster may be written in place.
const OFLAG_COPIED: u64 = 1 << 63;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// One L2 table held in memory. Entries are host offsets, 0 when the
/// cluster is unallocated; flags are added when the table is written.
#[derive(Debug)]
struct CachedL2 {
    l1_index: usize,
    host: u64,
    entries: Vec<u64>,
    dirty: bool,
    last_use: u64,
}

/// The guest cluster being collected in the assembly buffer.
#[derive(Debug, Clone, Copy)]
struct Assembly {
    cluster: u64,
    /// Written range `[lo, hi)` within the cluster, while writes touch.
    lo: u64,
    hi: u64,
    /// Set once writes left a gap: the cluster is then only flushed when a
    /// write goes elsewhere.
    fragmented: bool,
}

/// A qcow2 file being written; see the module documentation.
#[derive(Debug)]
#[must_use = "call finish() to write the metadata and fsync the volume"]
pub struct Qcow2Volume {
    file: File,
    capacity: u64,
    /// Host offsets of the L2 tables, 0 when not allocated.
    l1: Vec<u64>,
    l1_offset: u64,
    /// Host offset of the next cluster to allocate (the end of the file).
    next_free: u64,
    cache: Vec<CachedL2>,
    clock: u64,
    assembly: Option<Assembly>,
    assembly_buf: Vec<u8>,
    scratch: Vec<u8>,
    finished: bool,
}

fn io_error(e: std::io::Error, what: String) -> Error {
    Error::from(e).with_message(what)
}

impl Qcow2Volume {
    /// Takes a fresh file (any content is discarded) for an image of
    /// `capacity` bytes. Nothing valid is on disk before `finish()`.
    ///
    /// A capacity that is not a multiple of 512 is recorded rounded up to
    /// one (qemu counts whole sectors), like `qemu-img convert` does.
    pub fn new(file: File, capacity: u64) -> Result<Self> {
        check_capacity(capacity)?;
        file.set_len(0)
            .map_err(|e| io_error(e, "cannot truncate the qcow2 volume".into()))?;
        let l1_len = capacity.div_ceil(L2_COVERAGE);
        let l1_clusters = (l1_len * 8).div_ceil(CLUSTER_SIZE);
        Ok(Qcow2Volume {
            file,
            capacity,
            l1: vec![0; l1_len as usize],
            l1_offset: CLUSTER_SIZE,
            next_free: CLUSTER_SIZE * (1 + l1_clusters),
            cache: Vec::new(),
            clock: 0,
            assembly: None,
            assembly_buf: Vec::new(),
            scratch: vec![0; CLUSTER_SIZE as usize],
            finished: false,
        })
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if self.finished {
            return Err(TargetError::Finished(offset).into());
        }
        check_range(offset, len, self.capacity)?;
        Ok(())
    }

    /// Guest bytes of `cluster` that lie inside the capacity.
    fn span(&self, cluster: u64) -> u64 {
        (self.capacity - cluster * CLUSTER_SIZE).min(CLUSTER_SIZE)
    }

    fn alloc_cluster(&mut self) -> u64 {
        let host = self.next_free;
        self.next_free += CLUSTER_SIZE;
        host
    }

    /// Writes cached table `i` to its cluster.
    fn write_back(&mut self, i: usize) -> Result<()> {
        let t = &mut self.cache[i];
        if !t.dirty {
            return Ok(());
        }
        for (chunk, &e) in self.scratch.chunks_exact_mut(8).zip(&t.entries) {
            let v = if e == 0 { 0 } else { e | OFLAG_COPIED };
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        self.file.write_all_at(&self.scratch, t.host).map_err(|e| {
            io_error(
                e,
                format!("cannot write L2 table at host offset {}", t.host),
            )
        })?;
        t.dirty = false;
        Ok(())
    }

    /// A cache slot to fill: a new one, or the least recently used table
    /// written back.
    fn free_slot(&mut self) -> Result<usize> {
        if self.cache.len() < L2_CACHE_TABLES {
            self.cache.push(CachedL2 {
                l1_index: usize::MAX,
                host: 0,
                entries: vec![0; L2_ENTRIES as usize],
                dirty: false,
                last_use: 0,
            });
            return Ok(self.cache.len() - 1);
        }
        let mut lru = 0;
        for (i, t) in self.cache.iter().enumerate() {
            if t.last_use < self.cache[lru].last_use {
                lru = i;
            }
        }
        self.write_back(lru)?;
        Ok(lru)
    }

    /// The cache slot of the L2 table for `l1_index`: loaded from the file,
    /// or, with `create`, allocated at the end of the file. `None` when the
    /// table does not exist and `create` is false.
    fn l2_slot(&mut self, l1_index: usize, create: bool) -> Result<Option<usize>> {
        self.clock += 1;
        if let Some(i) = self.cache.iter().position(|t| t.l1_index == l1_index) {
            self.cache[i].last_use = self.clock;
            return Ok(Some(i));
        }
        let host = self.l1[l1_index];
        if host == 0 && !create {
            return Ok(None);
        }
        let i = self.free_slot()?;
        if host == 0 {
            let host = self.alloc_cluster();
            self.l1[l1_index] = host;
            let t = &mut self.cache[i];
            t.entries.fill(0);
            t.host = host;
            t.dirty = true;
        } else {
            // Mark the slot empty until it holds the table again.
            self.cache[i].l1_index = usize::MAX;
            self.file
                .read_exact_at(&mut self.scratch, host)
                .map_err(|e| io_error(e, format!("cannot read L2 table at host offset {host}")))?;
            let t = &mut self.cache[i];
            for (e, chunk) in t.entries.iter_mut().zip(self.scratch.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                *e = u64::from_be_bytes(b) & OFFSET_MASK;
            }
            t.host = host;
            t.dirty = false;
        }
        let t = &mut self.cache[i];
        t.l1_index = l1_index;
        t.last_use = self.clock;
        Ok(Some(i))
    }

    /// Host offset of guest cluster `cluster`, 0 when unallocated.
    fn lookup(&mut self, cluster: u64) -> Result<u64> {
        let l1_index = (cluster / L2_ENTRIES) as usize;
        Ok(match self.l2_slot(l1_index, false)? {
            Some(i) => self.cache[i].entries[(cluster % L2_ENTRIES) as usize],
            None => 0,
        })
    }

    /// Allocates a host cluster for the unallocated guest `cluster`.
    fn allocate(&mut self, cluster: u64) -> Result<u64> {
        let l1_index = (cluster / L2_ENTRIES) as usize;
        let i = match self.l2_slot(l1_index, true)? {
            Some(i) => i,
            None => return Err(Error::internal("no L2 table after creating one")),
        };
        let host = self.alloc_cluster();
        let t = &mut self.cache[i];
        t.entries[(cluster % L2_ENTRIES) as usize] = host;
        t.dirty = true;
        Ok(host)
    }

    /// Allocates and writes the assembled cluster, if any.
    fn flush_assembly(&mut self) -> Result<()> {
        if let Some(a) = self.assembly.take() {
            let host = self.allocate(a.cluster)?;
            self.file
                .write_all_at(&self.assembly_buf, host)
                .map_err(|e| {
                    io_error(
                        e,
                        format!(
                            "cannot write the data cluster for guest offset {} at host offset {host}",
                            a.cluster * CLUSTER_SIZE
                        ),
                    )
                })?;
        }
        Ok(())
    }

    /// Copies `bytes` (or zeros when `None`) into unallocated guest
    /// `cluster` at `within` through the assembly buffer.
    fn assemble(
        &mut self,
        cluster: u64,
        within: u64,
        bytes: Option<&[u8]>,
        len: u64,
    ) -> Result<()> {
        if self.assembly.is_some_and(|a| a.cluster != cluster) {
            self.flush_assembly()?;
        }
        if self.assembly.is_none() {
            if self.assembly_buf.is_empty() {
                self.assembly_buf = vec![0; CLUSTER_SIZE as usize];
            } else {
                self.assembly_buf.fill(0);
            }
            self.assembly = Some(Assembly {
                cluster,
                lo: within,
                hi: within,
                fragmented: false,
            });
        }
        let dst = &mut self.assembly_buf[within as usize..(within + len) as usize];
        match bytes {
            Some(b) => dst.copy_from_slice(b),
            None => dst.fill(0),
        }
        let span = self.span(cluster);
        let full = match &mut self.assembly {
            Some(a) => {
                let end = within + len;
                if within <= a.hi && end >= a.lo {
                    a.lo = a.lo.min(within);
                    a.hi = a.hi.max(end);
                } else {
                    a.fragmented = true;
                }
                !a.fragmented && a.lo == 0 && a.hi >= span
            }
            None => false,
        };
        if full {
            self.flush_assembly()?;
        }
        Ok(())
    }
}

/// Refcount blocks and refcount table clusters needed to count `used`
/// clusters plus themselves.
fn refcount_layout(used: u64) -> (u64, u64) {
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let total = used + blocks + table;
        let b = total.div_ceil(REFCOUNTS_PER_BLOCK);
        let t = (b * 8).div_ceil(CLUSTER_SIZE);
        if (b, t) == (blocks, table) {
            return (blocks, table);
        }
        (blocks, table) = (b, t);
    }
}

/// A run of bytes of one `write_at` call bound for contiguous host bytes.
#[derive(Debug, Clone, Copy)]
struct Run {
    host: u64,
    start: usize,
    len: usize,
}

impl Qcow2Volume {
    fn write_run(&self, run: Option<Run>, data: &[u8], guest: u64) -> Result<()> {
        if let Some(r) = run {
            self.file
                .write_all_at(&data[r.start..r.start + r.len], r.host)
                .map_err(|e| {
                    io_error(
                        e,
                        format!(
                            "cannot write {} bytes for guest offset {} at host offset {}",
                            r.len,
                            guest + r.start as u64,
                            r.host
                        ),
                    )
                })?;
        }
        Ok(())
    }
}

impl Target for Qcow2Volume {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        let mut run: Option<Run> = None;
        let mut pos = 0usize;
        while pos < data.len() {
            let guest = offset + pos as u64;
            let cluster = guest / CLUSTER_SIZE;
            let within = guest % CLUSTER_SIZE;
            let n = (CLUSTER_SIZE - within).min((data.len() - pos) as u64);
            let mut host = self.lookup(cluster)?;
            if host == 0 && within == 0 && n == self.span(cluster) {
                // A whole cluster: supersedes any partial assembly of it.
                if self.assembly.is_some_and(|a| a.cluster == cluster) {
                    self.assembly = None;
                }
                host = self.allocate(cluster)?;
            }
            if host != 0 {
                let h = host + within;
                match &mut run {
                    Some(r) if r.host + r.len as u64 == h => r.len += n as usize,
                    _ => {
                        self.write_run(run, data, offset)?;
                        run = Some(Run {
                            host: h,
                            start: pos,
                            len: n as usize,
                        });
                    }
                }
            } else {
                let piece = &data[pos..pos + n as usize];
                self.assemble(cluster, within, Some(piece), n)?;
            }
            pos += n as usize;
        }
        self.write_run(run, data, offset)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let cluster = pos / CLUSTER_SIZE;
            let within = pos % CLUSTER_SIZE;
            let n = (CLUSTER_SIZE - within).min(end - pos);
            if self.assembly.is_some_and(|a| a.cluster == cluster) {
                if within == 0 && n == self.span(cluster) {
                    // Never allocated: dropping it leaves the cluster zero.
                    self.assembly = None;
                } else {
                    self.assemble(cluster, within, None, n)?;
                }
                pos += n;
                continue;
            }
            let l1_index = (cluster / L2_ENTRIES) as usize;
            if self.l1[l1_index] == 0 {
                // No table: nothing in its range is allocated, except
                // perhaps the cluster being assembled.
                let mut next = end.min((l1_index as u64 + 1) * L2_COVERAGE);
                if let Some(a) = self.assembly {
                    let a_start = a.cluster * CLUSTER_SIZE;
                    if a_start > pos && a_start < next {
                        next = a_start;
                    }
                }
                pos = next;
                continue;
            }
            let host = self.lookup(cluster)?;
            if host != 0 {
                let h = host + within;
                self.file
                    .write_all_at(&ZEROS[..n as usize], h)
                    .map_err(|e| {
                        io_error(
                            e,
                            format!("cannot write {n} zero bytes for guest offset {pos} at host offset {h}"),
                        )
                    })?;
            }
            pos += n;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.flush_assembly()?;
        for i in 0..self.cache.len() {
            self.write_back(i)?;
        }

        // L1 table, in the clusters reserved after the header.
        let mut l1 = Vec::with_capacity(self.l1.len() * 8);
        for &e in &self.l1 {
            let v = if e == 0 { 0 } else { e | OFLAG_COPIED };
            l1.extend_from_slice(&v.to_be_bytes());
        }
        self.file.write_all_at(&l1, self.l1_offset).map_err(|e| {
            io_error(
                e,
                format!("cannot write L1 table at host offset {}", self.l1_offset),
            )
        })?;

        // Refcount blocks and table at the end; they count themselves.
        let used = self.next_free / CLUSTER_SIZE;
        let (blocks, table) = refcount_layout(used);
        let total = used + blocks + table;
        let blocks_offset = self.next_free;
        let table_offset = blocks_offset + blocks * CLUSTER_SIZE;
        let mut rt = vec![0u8; (table * CLUSTER_SIZE) as usize];
        for b in 0..blocks {
            let first = b * REFCOUNTS_PER_BLOCK;
            let ones = (total - first).min(REFCOUNTS_PER_BLOCK) as usize;
            self.scratch.fill(0);
            for chunk in self.scratch.chunks_exact_mut(2).take(ones) {
                chunk.copy_from_slice(&1u16.to_be_bytes());
            }
            let host = blocks_offset + b * CLUSTER_SIZE;
            self.file.write_all_at(&self.scratch, host).map_err(|e| {
                io_error(
                    e,
                    format!("cannot write refcount block at host offset {host}"),
                )
            })?;
            rt[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&host.to_be_bytes());
        }
        self.file.write_all_at(&rt, table_offset).map_err(|e| {
            io_error(
                e,
                format!("cannot write refcount table at host offset {table_offset}"),
            )
        })?;
        self.next_free = table_offset + table * CLUSTER_SIZE;

        let mut h = [0u8; HEADER_LENGTH as usize + 8];
        h[0..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&VERSION.to_be_bytes());
        h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
        // qemu reads the size in whole sectors, rounded down: round up, as
        // `qemu-img convert` does; the tail past the capacity reads as zero.
        let size = self.capacity.div_ceil(512) * 512;
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[36..40].copy_from_slice(&(self.l1.len() as u32).to_be_bytes());
        h[40..48].copy_from_slice(&self.l1_offset.to_be_bytes());
        h[48..56].copy_from_slice(&table_offset.to_be_bytes());
        h[56..60].copy_from_slice(&(table as u32).to_be_bytes());
        h[96..100].copy_from_slice(&REFCOUNT_ORDER.to_be_bytes());
        h[100..104].copy_from_slice(&HEADER_LENGTH.to_be_bytes());
        // 104: compression type 0 (deflate); 112..120: end of extensions.
        self.file
            .write_all_at(&h, 0)
            .map_err(|e| io_error(e, "cannot write the qcow2 header".into()))?;
        self.file
            .sync_all()
            .map_err(|e| io_error(e, "cannot sync the qcow2 volume".into()))?;
        self.finished = true;
        Ok(())
    }

    /// The L1 table keeps the size it was created with (a larger L1
    /// table than the capacity needs is valid qcow2); only the recorded
    /// virtual size changes.
    fn set_capacity(&mut self, capacity: u64) -> Result<()> {
        check_range(0, capacity, self.capacity)?;
        self.capacity = capacity;
        Ok(())
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::Rng;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;
    use crate::error::ErrorKind;
    use crate::sink::raw::RawVolume;

    /// One operation applied to both a raw and a qcow2 volume.
    #[derive(Debug, Clone)]
    enum Op {
        Data(u64, Vec<u8>),
        Zero(u64, u64),
    }

    /// Non-zero bytes, so that every data write is visible.
    fn nonzero_bytes(r: &mut Rng, n: usize) -> Vec<u8> {
        (0..n).map(|_| (r.next() % 255 + 1) as u8).collect()
    }

    fn apply(v: &mut dyn Target, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Data(o, d) => v.write_at(*o, d).unwrap(),
                Op::Zero(o, n) => v.write_zeroes(*o, *n).unwrap(),
            }
        }
        v.finish().unwrap();
    }

    fn qemu_img(args: &[&str]) -> (bool, String) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img is required to run the qcow2 sink tests");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn check_clean(q: &Path) {
        let (ok, out) = qemu_img(&["check", "-f", "qcow2", q.to_str().unwrap()]);
        assert!(ok, "qemu-img check failed:\n{out}");
        assert!(out.contains("No errors were found"), "{out}");
        assert!(!out.contains("leak"), "{out}");
    }

    fn virtual_size(q: &Path) -> u64 {
        let (ok, out) = qemu_img(&["info", "--output=json", "-f", "qcow2", q.to_str().unwrap()]);
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["virtual-size"].as_u64().unwrap()
    }

    /// Applies `ops` to a raw and a qcow2 volume of `capacity` bytes and
    /// has qemu-img judge the qcow2 against the raw file.
    fn same_as_raw(capacity: u64, ops: &[Op]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("t.raw");
        let q = dir.path().join("t.qcow2");
        let mut rv = RawVolume::new(File::create(&raw).unwrap(), capacity).unwrap();
        apply(&mut rv, ops);
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&q)
            .unwrap();
        let mut qv = Qcow2Volume::new(f, capacity).unwrap();
        apply(&mut qv, ops);
        check_clean(&q);
        assert_eq!(virtual_size(&q), capacity.div_ceil(512) * 512);
        let (ok, out) = qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        assert!(ok, "qemu-img compare: {out}");
        (dir, q)
    }

    #[test]
    fn sequential_odd_chunks() {
        let cap = 3 * (1 << 20) + 5 * 512;
        let mut rng = Rng(0x5eed_0001);
        let mut ops = vec![];
        let mut pos = 0u64;
        while pos < cap {
            let n = (rng.below(70_000) + 1).min(cap - pos);
            if rng.below(5) == 0 {
                ops.push(Op::Zero(pos, n));
            } else {
                ops.push(Op::Data(pos, nonzero_bytes(&mut rng, n as usize)));
            }
            pos += n;
        }
        same_as_raw(cap, &ops);
    }

    #[test]
    fn random_order_with_overlaps_and_zeroes() {
        let cap = 4 << 20;
        let mut rng = Rng(0x5eed_0002);
        let mut ops = vec![];
        for _ in 0..300 {
            let off = rng.below(cap);
            let len = (rng.below(200_000) + 1).min(cap - off);
            // Some writes aligned to clusters, so whole clusters mix in.
            let off = if rng.below(4) == 0 {
                off / CLUSTER_SIZE * CLUSTER_SIZE
            } else {
                off
            };
            match rng.below(4) {
                0 => ops.push(Op::Zero(off, len)),
                _ => ops.push(Op::Data(off, nonzero_bytes(&mut rng, len as usize))),
            }
        }
        same_as_raw(cap, &ops);
    }

    #[test]
    fn last_partial_cluster() {
        let cap = 2 * (1 << 20) + 4096 + 512;
        let tail = cap - cap % CLUSTER_SIZE;
        let mut rng = Rng(0x5eed_0003);
        // Pieces, then the whole tail at once, then the very last bytes.
        let ops = vec![
            Op::Data(cap - 100, nonzero_bytes(&mut rng, 100)),
            Op::Data(tail, nonzero_bytes(&mut rng, 10)),
            Op::Data(0, nonzero_bytes(&mut rng, 10)),
            Op::Data(tail, nonzero_bytes(&mut rng, (cap - tail) as usize)),
            Op::Zero(cap - 600, 300),
            Op::Data(cap - 1, vec![9]),
        ];
        same_as_raw(cap, &ops);
        // A tail cluster filled exactly and then partly zeroed.
        let ops = vec![
            Op::Data(tail - 5, nonzero_bytes(&mut rng, (cap - tail + 5) as usize)),
            Op::Zero(tail + 1, 2),
        ];
        same_as_raw(cap, &ops);
        // A tail cluster assembled from pieces and flushed by finish().
        let ops = vec![
            Op::Data(tail + 512, nonzero_bytes(&mut rng, 512)),
            Op::Data(tail, nonzero_bytes(&mut rng, 512)),
        ];
        same_as_raw(cap, &ops);
    }

    #[test]
    fn zeroes_over_written_data() {
        let cap = 1 << 20;
        let mut rng = Rng(0x5eed_0004);
        let ops = vec![
            Op::Data(0, nonzero_bytes(&mut rng, cap as usize)),
            Op::Zero(100, 200_000),
            Op::Data(300_000, nonzero_bytes(&mut rng, 10)),
            // Assembling cluster 5, then zeroed whole: never allocated.
            Op::Data(5 * CLUSTER_SIZE + 7, nonzero_bytes(&mut rng, 100)),
            Op::Zero(0, 0),
            Op::Zero(300_001, 3),
        ];
        same_as_raw(cap, &ops);
        let ops = vec![
            Op::Data(3 * CLUSTER_SIZE + 7, nonzero_bytes(&mut rng, 100)),
            Op::Zero(3 * CLUSTER_SIZE, CLUSTER_SIZE),
            Op::Data(CLUSTER_SIZE, nonzero_bytes(&mut rng, 10)),
            Op::Zero(CLUSTER_SIZE + 5, 1),
            Op::Data(CLUSTER_SIZE + 20, nonzero_bytes(&mut rng, 10)),
        ];
        let (_dir, q) = same_as_raw(cap, &ops);
        // Header, L1, L2, one data cluster, refcount block and table.
        assert_eq!(std::fs::metadata(q).unwrap().len(), 6 * CLUSTER_SIZE);
    }

    #[test]
    fn whole_clusters_are_contiguous_in_one_run() {
        let cap = 4 << 20;
        let mut rng = Rng(0x5eed_0005);
        let ops = vec![Op::Data(0, nonzero_bytes(&mut rng, 1 << 20))];
        let (_dir, q) = same_as_raw(cap, &ops);
        // Header, L1, L2, 16 data clusters, refcount block and table.
        assert_eq!(
            std::fs::metadata(&q).unwrap().len(),
            (5 + 16) * CLUSTER_SIZE
        );
        let (ok, out) = qemu_img(&["map", "--output=json", "-f", "qcow2", q.to_str().unwrap()]);
        assert!(ok, "{out}");
        let map: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(map[0]["length"].as_u64(), Some(1 << 20), "{out}");
        assert_eq!(map[0]["offset"].as_u64(), Some(3 * CLUSTER_SIZE), "{out}");
    }

    #[test]
    fn large_sparse_capacity() {
        // 5 GiB: ten L2 tables, several touched, far apart.
        let cap = 5 << 30;
        let mut rng = Rng(0x5eed_0006);
        // Zero ranges stay below the raw file's high-water mark where it
        // is large, so the raw reference writes few zeros.
        let ops = vec![
            Op::Data(0, nonzero_bytes(&mut rng, 3 * CLUSTER_SIZE as usize + 17)),
            Op::Zero(100, 3 << 30),
            Op::Data((600 << 20) + 12345, nonzero_bytes(&mut rng, 200_000)),
            Op::Data(L2_COVERAGE - 1000, nonzero_bytes(&mut rng, 2000)),
            Op::Data(L2_COVERAGE + (16 << 20), nonzero_bytes(&mut rng, 100)),
            Op::Zero(L2_COVERAGE - (32 << 20), 64 << 20),
            Op::Data((1 << 30) + 3, nonzero_bytes(&mut rng, 70_000)),
            Op::Data(
                L2_COVERAGE * 2,
                nonzero_bytes(&mut rng, CLUSTER_SIZE as usize),
            ),
            Op::Data((3 << 30) - 100, nonzero_bytes(&mut rng, 200)),
            Op::Data(100, nonzero_bytes(&mut rng, 10)),
            Op::Zero((1 << 30) + 10, 100),
            Op::Data(cap - 1000, nonzero_bytes(&mut rng, 1000)),
        ];
        same_as_raw(cap, &ops);
    }

    #[test]
    fn multi_cluster_l1_and_l2_cache_eviction() {
        // 5 TiB needs 10240 L1 entries: two L1 clusters. Touching more
        // tables than the cache holds forces write-back and reload.
        let cap = 5u64 << 40;
        let mut rng = Rng(0x5eed_0007);
        let mut ops = vec![];
        let tables = cap / L2_COVERAGE;
        for i in 0..(L2_CACHE_TABLES as u64 * 2 + 3) {
            let t = (i * 97) % tables;
            ops.push(Op::Data(
                t * L2_COVERAGE + 4096 * i,
                nonzero_bytes(&mut rng, 5000),
            ));
        }
        // Revisit every table: data into allocated clusters and zeroes.
        for i in 0..(L2_CACHE_TABLES as u64 * 2 + 3) {
            let t = (i * 97) % tables;
            ops.push(Op::Data(
                t * L2_COVERAGE + 4096 * i + 10,
                nonzero_bytes(&mut rng, 10),
            ));
            ops.push(Op::Zero(t * L2_COVERAGE + 4096 * i + 100, 50));
        }
        ops.push(Op::Data(cap - 512, nonzero_bytes(&mut rng, 512)));
        same_as_raw(cap, &ops);
    }

    #[test]
    fn empty_and_tiny_volumes() {
        same_as_raw(0, &[]);
        same_as_raw(512, &[Op::Data(1, vec![1, 2, 3])]);
        same_as_raw(CLUSTER_SIZE, &[]);
        same_as_raw(1000, &[Op::Data(990, vec![5; 10])]);
    }

    #[test]
    fn refcount_layout_counts_itself() {
        for used in [
            1,
            2,
            REFCOUNTS_PER_BLOCK - 2,
            REFCOUNTS_PER_BLOCK - 1,
            REFCOUNTS_PER_BLOCK,
            L2_ENTRIES * REFCOUNTS_PER_BLOCK - 1,
            L2_ENTRIES * REFCOUNTS_PER_BLOCK + 5,
            1 << 30,
        ] {
            let (b, t) = refcount_layout(used);
            assert!(used + b + t <= b * REFCOUNTS_PER_BLOCK, "{used}");
            assert!(b * 8 <= t * CLUSTER_SIZE, "{used}");
            // Minimal: one block fewer would not do.
            assert!(used + b + t > (b - 1) * REFCOUNTS_PER_BLOCK, "{used}");
        }
        assert_eq!(refcount_layout(REFCOUNTS_PER_BLOCK - 2), (1, 1));
        assert_eq!(refcount_layout(REFCOUNTS_PER_BLOCK - 1), (2, 1));
        assert!(refcount_layout(L2_ENTRIES * REFCOUNTS_PER_BLOCK).1 >= 2);
    }

    #[test]
    fn nothing_at_or_past_capacity() {
        let f = tempfile::tempfile().unwrap();
        let mut v = Qcow2Volume::new(f, 1 << 20).unwrap();
        let e = v.write_at((1 << 20) - 1, b"ab").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("offset 1048575"), "{e}");
        assert!(v.write_zeroes(1 << 20, 1).is_err());
        assert!(v.write_zeroes(5, u64::MAX).is_err());
        v.finish().unwrap();
        let e = v.write_at(0, b"a").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let f = tempfile::tempfile().unwrap();
        let e = Qcow2Volume::new(f, crate::limits::MAX_CAPACITY + 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    }
}
