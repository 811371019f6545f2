//! The one-pass monolithicSparse decoder: a state machine with no I/O that
//! takes the entry's bytes in pieces of any size and passes each grain
//! through to the extent sink as the stream reaches it.
//!
//! A hosted sparse extent holds no markers: a grain is found only through
//! the grain directory and its grain tables, which qemu and VMware read
//! from wherever the header and the directory place them. Every writer
//! known (qemu-img, VirtualBox, VMware) puts them first: header, embedded
//! descriptor, redundant directory and tables, directory and tables, then
//! the grains at overHead. So the decoder reads the directory where the
//! header says, each table where the directory says, and remembers for
//! every grain a table maps ahead of the stream which disk sectors it holds
//! (one entry per run of grains contiguous in file and disk). A table that
//! names bytes the stream has already passed is refused rather than
//! spooled: no writer known lays a file out so, and refusing keeps the
//! decoder free of storage.
//!
//! What qemu reads and this decoder does not is refused, never read
//! differently: a descriptor naming a parent disk (`parentFileNameHint`),
//! or lacking the `CID` qemu needs (an extent of a split disk), structures
//! that overlap, a capacity of 0 (qemu then reads the descriptor as one of
//! other files), compressed grains without markers. The redundant
//! directory and tables are never read: qemu and VMware read through the
//! primary ones.

use std::collections::BTreeMap;
use std::fmt;

use super::error::{Structure, VmdkError};
use super::header::{
    ENTRY_SIZE, GD_AT_END, HEADER_SIZE, OFF_CAPACITY, OFF_DESC_OFFSET, OFF_DESC_SIZE, OFF_GD,
    SECTOR, SparseHeader,
};
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::Result;
use crate::limits;

/// Where qemu reads the descriptor of a sparse extent (whatever
/// descriptorOffset says), and how many bytes (its `DESC_SIZE`).
const QEMU_DESC_AT: u64 = 512;
const QEMU_DESC_SIZE: u64 = 20 * 512;
/// The descriptor key that makes qemu open a parent disk.
const PARENT_HINT: &[u8] = b"parentFileNameHint";

/// What a range of the entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The embedded descriptor (read by the descriptor scan).
    Descriptor,
    /// The grain directory.
    Directory,
    /// Grain tables of consecutive directory slots, back to back, the
    /// first for slot `slot`.
    Tables { slot: u64 },
    /// Grains contiguous in file and disk, the first at guest offset
    /// `guest`.
    Grains { guest: u64 },
}

/// A range of the entry whose role a table (or the header) gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Need {
    /// Entry offset of the first byte.
    start: u64,
    /// Entry offset one past the last byte.
    end: u64,
    kind: Kind,
}

/// Header values the body needs, in bytes or grains.
#[derive(Debug, Clone, Copy, Default)]
struct Geo {
    capacity: u64,
    grain: u64,
    grain_sectors: u64,
    gtes: u64,
    total_grains: u64,
    zero_grain: bool,
    /// Bytes of one grain table.
    table: u64,
    /// Sectors the file must have at least (overHead), as qemu checks.
    overhead_sectors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the 512-byte header.
    Header,
    /// Passing the body: structures where the tables place them.
    Body,
    /// `finish` succeeded.
    Done,
    /// An error was reported; the decoder accepts nothing more.
    Failed,
}

/// The descriptor text collected until its first NUL, as qemu's `strstr`
/// sees it.
#[derive(Debug)]
struct Scan {
    /// Entry offset where the window qemu or VMware reads ends.
    end: u64,
    text: Vec<u8>,
}

/// One-pass decoder of a VMDK hosted sparse extent (monolithicSparse)
/// into an extent stream.
///
/// Announces the capacity as soon as the header is parsed, then emits each
/// grain as `data` when the stream passes it, in file order (grains are
/// passed through from the input, never copied), and each run of zeroed
/// grains (an entry of 1 with the zeroed-grain flag) as `zero`.
/// Unallocated grains are not emitted: the sink starts empty. An error may
/// come after grains were emitted, as late as [`DiskDecoder::finish`].
///
/// Progress and errors: `feed` consumes all of its input or fails; errors
/// are sticky, every later call returns [`VmdkError::Poisoned`]. Memory is
/// the 512-byte header, the descriptor up to its first NUL (at most
/// [`limits::MAX_VMDK_DESCRIPTOR`]) and the structures the tables placed
/// ahead of the stream ([`limits::MAX_VMDK_SPARSE_PENDING`]), whatever the
/// size of the image.
pub struct VmdkSparseDecoder {
    state: State,
    /// Entry offset of the next input byte.
    pos: u64,
    entry_size: Option<u64>,
    head: [u8; HEADER_SIZE],
    fill: usize,
    header: Option<SparseHeader>,
    geo: Geo,
    /// The descriptor and the grain directory: their places are fixed by
    /// the header, so a table naming them is told so, even once passed.
    fixed: [Need; 2],
    /// Ranges placed ahead of the stream, disjoint, keyed by start.
    pending: BTreeMap<u64, Need>,
    /// The range the stream is inside of.
    active: Option<Need>,
    /// Keys of the last grain run and table run inserted, to extend them.
    last_grains: Option<u64>,
    last_tables: Option<u64>,
    /// Bytes of a table entry cut between two pieces of input.
    carry: [u8; 4],
    carry_len: usize,
    /// Zeroed grains being merged: (guest offset, length).
    zero_run: Option<(u64, u64)>,
    /// The descriptor scan, until it is judged.
    scan: Option<Scan>,
}

impl fmt::Debug for VmdkSparseDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmdkSparseDecoder")
            .field("state", &self.state)
            .field("pos", &self.pos)
            .field("header", &self.header)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Default for VmdkSparseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn u32_le(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

impl VmdkSparseDecoder {
    /// A decoder waiting for the header at entry offset 0.
    pub fn new() -> Self {
        let none = Need {
            start: 0,
            end: 0,
            kind: Kind::Descriptor,
        };
        VmdkSparseDecoder {
            state: State::Header,
            pos: 0,
            entry_size: None,
            head: [0; HEADER_SIZE],
            fill: 0,
            header: None,
            geo: Geo::default(),
            fixed: [none; 2],
            pending: BTreeMap::new(),
            active: None,
            last_grains: None,
            last_tables: None,
            carry: [0; 4],
            carry_len: 0,
            zero_run: None,
            scan: None,
        }
    }

    /// Declares the entry's size: a table or grain placed beyond it is an
    /// error as soon as a table names it.
    pub fn with_entry_size(mut self, n: u64) -> Self {
        self.entry_size = Some(n);
        self
    }

    /// The parsed header, once seen.
    pub fn header(&self) -> Option<&SparseHeader> {
        self.header.as_ref()
    }

    /// Entry offset of the next byte `feed` expects.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Structures placed ahead of the stream (for tests of the memory
    /// bound).
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn feed_inner(&mut self, mut input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        if self.state == State::Header {
            let n = (HEADER_SIZE - self.fill).min(input.len());
            self.head[self.fill..self.fill + n].copy_from_slice(&input[..n]);
            self.fill += n;
            self.pos += n as u64;
            input = &input[n..];
            if self.fill < HEADER_SIZE {
                return Ok(());
            }
            self.start_body(out)?;
        }
        while !input.is_empty() {
            let n = self.step(input, out)?;
            input = &input[n..];
        }
        Ok(())
    }

    /// The header is in: check what qemu would read otherwise, announce
    /// the capacity and place the descriptor and the grain directory.
    fn start_body(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        let h = SparseHeader::parse_hosted(&self.head)?;
        let field = |at: usize| at as u64;
        if h.capacity_sectors == 0 {
            return Err(VmdkError::ZeroCapacity {
                offset: field(OFF_CAPACITY),
            }
            .into());
        }
        if h.descriptor_offset != QEMU_DESC_AT / SECTOR || h.descriptor_size == 0 {
            return Err(VmdkError::DescriptorPlacement {
                offset: field(OFF_DESC_OFFSET),
                sector: h.descriptor_offset,
                sectors: h.descriptor_size,
            }
            .into());
        }
        let desc_len = h
            .descriptor_size
            .checked_mul(SECTOR)
            .filter(|&n| n <= limits::MAX_VMDK_DESCRIPTOR)
            .ok_or(VmdkError::DescriptorLimit {
                offset: field(OFF_DESC_SIZE),
                sectors: h.descriptor_size,
                limit: limits::MAX_VMDK_DESCRIPTOR,
            })?;
        if h.gd_offset == GD_AT_END {
            return Err(VmdkError::DirectoryAtEnd {
                offset: field(OFF_GD),
            }
            .into());
        }
        let gd_entries = h.gd_entries();
        if gd_entries > limits::MAX_VMDK_GD_ENTRIES {
            return Err(VmdkError::DirectoryLimit {
                offset: field(OFF_GD),
                entries: gd_entries,
                limit: limits::MAX_VMDK_GD_ENTRIES,
            }
            .into());
        }
        let gtes = u64::from(h.num_gtes_per_gt);
        self.geo = Geo {
            capacity: h.capacity_bytes(),
            grain: h.grain_bytes(),
            grain_sectors: h.grain_sectors,
            gtes,
            total_grains: h.total_grains(),
            zero_grain: h.zero_grain(),
            table: gtes * ENTRY_SIZE,
            overhead_sectors: h.overhead_sectors,
        };
        let gd_sector = h.gd_offset;
        out.capacity(h.capacity_bytes())?;
        self.header = Some(h);
        self.state = State::Body;
        self.scan = Some(Scan {
            end: QEMU_DESC_AT + QEMU_DESC_SIZE.max(desc_len),
            text: Vec::new(),
        });
        self.register(
            Structure::Descriptor,
            Kind::Descriptor,
            QEMU_DESC_AT / SECTOR,
            desc_len,
            field(OFF_DESC_OFFSET),
        )?;
        self.register(
            Structure::Directory,
            Kind::Directory,
            gd_sector,
            gd_entries * ENTRY_SIZE,
            field(OFF_GD),
        )?;
        let gd_start = gd_sector.saturating_mul(SECTOR);
        self.fixed = [
            Need {
                start: QEMU_DESC_AT,
                end: QEMU_DESC_AT + desc_len,
                kind: Kind::Descriptor,
            },
            Need {
                start: gd_start,
                end: gd_start.saturating_add(gd_entries * ENTRY_SIZE),
                kind: Kind::Directory,
            },
        ];
        Ok(())
    }

    /// Consumes the input up to the next boundary (a structure's start or
    /// end, the end of the descriptor scan); returns how much.
    fn step(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<usize> {
        if self.active.is_none()
            && let Some(entry) = self.pending.first_entry()
            && *entry.key() <= self.pos
        {
            self.active = Some(entry.remove());
            self.carry_len = 0;
        }
        let mut end = self.pos + input.len() as u64;
        match self.active {
            Some(a) => end = end.min(a.end),
            None => {
                if let Some((&k, _)) = self.pending.first_key_value() {
                    end = end.min(k);
                }
            }
        }
        // The descriptor is judged at a fixed place (its first NUL, or the
        // end of the window), so that what comes before it is handled
        // first however the input is cut.
        let (mut judge, mut nul) = (false, false);
        if let Some(scan) = &self.scan {
            if scan.end <= end {
                end = scan.end;
                judge = true;
            }
            let len = (end - self.pos) as usize;
            if let Some(i) = input[..len].iter().position(|&b| b == 0) {
                end = self.pos + i as u64 + 1;
                (judge, nul) = (true, true);
            }
        }
        let n = (end - self.pos) as usize;
        let seg = &input[..n];
        let at = self.pos;
        self.pos = end;
        if let Some(scan) = &mut self.scan {
            scan.text
                .extend_from_slice(if nul { &seg[..n - 1] } else { seg });
        }
        if let Some(need) = self.active {
            self.consume(need, at, seg, out)?;
            if self.pos == need.end {
                self.active = None;
                if matches!(need.kind, Kind::Tables { .. }) {
                    self.flush_zero(out)?;
                }
            }
        }
        if judge {
            self.judge_descriptor()?;
        }
        Ok(n)
    }

    /// Bytes `seg` at entry offset `at` of the active structure `need`.
    fn consume(&mut self, need: Need, at: u64, seg: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        match need.kind {
            Kind::Descriptor => Ok(()),
            Kind::Grains { guest } => out.data(guest + (at - need.start), seg),
            Kind::Directory | Kind::Tables { .. } => self.entries(need, at, seg, out),
        }
    }

    /// Splits table bytes into little-endian entries; an entry cut between
    /// two pieces of input waits in `carry`.
    fn entries(
        &mut self,
        need: Need,
        at: u64,
        mut bytes: &[u8],
        out: &mut dyn ExtentSink,
    ) -> Result<()> {
        const LEN: usize = ENTRY_SIZE as usize;
        let mut off = at;
        while !bytes.is_empty() {
            let value = if self.carry_len > 0 || bytes.len() < LEN {
                let take = (LEN - self.carry_len).min(bytes.len());
                self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&bytes[..take]);
                self.carry_len += take;
                bytes = &bytes[take..];
                off += take as u64;
                if self.carry_len < LEN {
                    return Ok(());
                }
                self.carry_len = 0;
                u32::from_le_bytes(self.carry)
            } else {
                let v = u32_le(bytes);
                bytes = &bytes[LEN..];
                off += LEN as u64;
                v
            };
            let entry_at = off - ENTRY_SIZE;
            let index = (entry_at - need.start) / ENTRY_SIZE;
            match need.kind {
                Kind::Directory => self.directory_entry(index, value, entry_at)?,
                Kind::Tables { slot } => {
                    let gtes = self.geo.gtes;
                    self.table_entry(slot + index / gtes, index % gtes, value, entry_at, out)?;
                }
                Kind::Descriptor | Kind::Grains { .. } => {}
            }
        }
        Ok(())
    }

    /// Directory entry `index` holds `value`: the sector of the grain table
    /// for its range, or 0.
    fn directory_entry(&mut self, index: u64, value: u32, entry_at: u64) -> Result<()> {
        if value == 0 {
            return Ok(());
        }
        let lba = index * self.geo.gtes * self.geo.grain_sectors;
        self.register(
            Structure::Table { lba },
            Kind::Tables { slot: index },
            u64::from(value),
            self.geo.table,
            entry_at,
        )
    }

    /// Entry `index` of the grain table of directory slot `slot` holds
    /// `value`: the sector of the grain, 0, or 1 for a zeroed grain.
    fn table_entry(
        &mut self,
        slot: u64,
        index: u64,
        value: u32,
        entry_at: u64,
        out: &mut dyn ExtentSink,
    ) -> Result<()> {
        let g = self.geo;
        let grain = slot * g.gtes + index;
        let lba = grain * g.grain_sectors;
        let zeroed = value == 1 && g.zero_grain;
        if grain >= g.total_grains {
            // Never read by qemu; a table that maps grains there is not
            // the table of this disk.
            if value != 0 && !zeroed {
                return Err(VmdkError::EntryBeyondCapacity {
                    offset: entry_at,
                    lba,
                    entry: value,
                    capacity: g.capacity,
                }
                .into());
            }
            return Ok(());
        }
        if value == 0 {
            return Ok(());
        }
        // grain < total_grains: guest < capacity.
        let guest = grain * g.grain;
        let len = g.grain.min(g.capacity - guest);
        if zeroed {
            return self.zero(guest, len, out);
        }
        self.register(
            Structure::Grain { lba },
            Kind::Grains { guest },
            u64::from(value),
            len,
            entry_at,
        )
    }

    fn zero(&mut self, guest: u64, len: u64, out: &mut dyn ExtentSink) -> Result<()> {
        match &mut self.zero_run {
            Some((g, l)) if *g + *l == guest => *l += len,
            _ => {
                self.flush_zero(out)?;
                self.zero_run = Some((guest, len));
            }
        }
        Ok(())
    }

    fn flush_zero(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        if let Some((g, l)) = self.zero_run.take() {
            out.zero(g, l)?;
        }
        Ok(())
    }

    /// The structure `need` holds at entry offset `at`, and its first
    /// sector: one table or grain of a run.
    fn piece(&self, need: &Need, at: u64) -> (Structure, u64) {
        let g = self.geo;
        let into = at.max(need.start) - need.start;
        match need.kind {
            Kind::Descriptor => (Structure::Descriptor, need.start / SECTOR),
            Kind::Directory => (Structure::Directory, need.start / SECTOR),
            Kind::Tables { slot } => {
                let i = into / g.table.max(1);
                let lba = (slot + i) * g.gtes * g.grain_sectors;
                let start = need.start + i * g.table;
                (Structure::Table { lba }, start / SECTOR)
            }
            Kind::Grains { guest } => {
                let i = into / g.grain.max(1);
                let lba = (guest + i * g.grain) / SECTOR;
                let start = need.start + i * g.grain;
                (Structure::Grain { lba }, start / SECTOR)
            }
        }
    }

    fn overlap(
        &self,
        what: Structure,
        sector: u64,
        entry_at: u64,
        other: &Need,
        at: u64,
    ) -> VmdkError {
        let (other, other_sector) = self.piece(other, at);
        VmdkError::Overlap {
            offset: entry_at,
            what,
            sector,
            other,
            other_sector,
        }
    }

    /// Places `what` (`len` bytes at file sector `sector`, named by the
    /// field or entry at `entry_at`) ahead of the stream.
    fn register(
        &mut self,
        what: Structure,
        kind: Kind,
        sector: u64,
        len: u64,
        entry_at: u64,
    ) -> Result<()> {
        let start = sector.saturating_mul(SECTOR);
        let end = start.saturating_add(len);
        if start < HEADER_SIZE as u64 {
            return Err(VmdkError::InHeader {
                offset: entry_at,
                what,
                sector,
            }
            .into());
        }
        if let Some(n) = self.entry_size
            && end > n
        {
            return Err(VmdkError::OutsideEntry {
                offset: entry_at,
                what,
                sector,
                end,
                entry_size: n,
            }
            .into());
        }
        let overlaps = |n: &Need| start < n.end && end > n.start;
        for f in self.fixed.iter().chain(self.active.iter()) {
            if overlaps(f) {
                return Err(self.overlap(what, sector, entry_at, f, start).into());
            }
        }
        if start < self.pos {
            return Err(VmdkError::Passed {
                offset: entry_at,
                what,
                sector,
            }
            .into());
        }
        // Pending ranges are disjoint: the last one starting before `end`
        // ends last among them.
        if let Some((_, p)) = self.pending.range(..end).next_back()
            && p.end > start
        {
            return Err(self.overlap(what, sector, entry_at, p, start).into());
        }
        if self.extend(kind, start, end) {
            return Ok(());
        }
        if self.pending.len() >= limits::MAX_VMDK_SPARSE_PENDING {
            return Err(VmdkError::PendingLimit {
                offset: entry_at,
                count: self.pending.len() as u64 + 1,
                limit: limits::MAX_VMDK_SPARSE_PENDING as u64,
            }
            .into());
        }
        self.pending.insert(start, Need { start, end, kind });
        match kind {
            Kind::Grains { .. } => self.last_grains = Some(start),
            Kind::Tables { .. } => self.last_tables = Some(start),
            Kind::Descriptor | Kind::Directory => {}
        }
        Ok(())
    }

    /// Extends the last run of the same kind when `[start, end)` continues
    /// it in the file and in the disk (or the directory).
    fn extend(&mut self, kind: Kind, start: u64, end: u64) -> bool {
        let g = self.geo;
        let (key, per) = match kind {
            Kind::Grains { .. } => (self.last_grains, g.grain),
            Kind::Tables { .. } => (self.last_tables, g.table),
            Kind::Descriptor | Kind::Directory => return false,
        };
        let Some(prev) = key.and_then(|k| self.pending.get_mut(&k)) else {
            return false;
        };
        let len = prev.end - prev.start;
        let continues = prev.end == start
            && len.is_multiple_of(per.max(1))
            && match (prev.kind, kind) {
                (Kind::Grains { guest: a }, Kind::Grains { guest: b }) => a + len == b,
                (Kind::Tables { slot: a }, Kind::Tables { slot: b }) => a + len / g.table == b,
                _ => false,
            };
        if continues {
            prev.end = end;
        }
        continues
    }

    /// The descriptor text is complete: refuse what qemu would read
    /// differently or not at all.
    fn judge_descriptor(&mut self) -> Result<(), VmdkError> {
        let Some(scan) = self.scan.take() else {
            return Ok(());
        };
        let text = &scan.text;
        if let Some(at) = find(text, PARENT_HINT) {
            // qemu skips the key and two characters (`="`) and reads the
            // name up to the next quote; an empty name opens nothing.
            let rest = text.get(at + PARENT_HINT.len() + 2..).unwrap_or(&[]);
            let name = match rest.iter().position(|&b| b == b'"') {
                Some(0) => None,
                Some(q) => Some(&rest[..q]),
                None => Some(rest),
            };
            if let Some(name) = name {
                let name = &name[..name.len().min(256)];
                return Err(VmdkError::ParentDisk {
                    offset: QEMU_DESC_AT + at as u64,
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
        // qemu reads the CIDs from its window less its last byte, which it
        // overwrites with a NUL.
        let window = &text[..text.len().min(QEMU_DESC_SIZE as usize - 1)];
        for (field, key) in [("CID", &b"CID"[..]), ("parentCID", b"parentCID")] {
            let ok = find(window, key)
                .and_then(|at| window.get(at + key.len() + 1..))
                .is_some_and(scans_hex);
            if !ok {
                return Err(VmdkError::DescriptorField {
                    offset: QEMU_DESC_AT,
                    field,
                });
            }
        }
        Ok(())
    }

    fn finish_inner(&mut self) -> Result<(), VmdkError> {
        let end = self.pos;
        match self.state {
            State::Failed => return Err(VmdkError::Poisoned { offset: end }),
            State::Done => return Ok(()),
            State::Header => {
                return Err(VmdkError::Truncated {
                    offset: 0,
                    end,
                    what: "header",
                });
            }
            State::Body => {}
        }
        if let Some(a) = self.active {
            let what = match a.kind {
                Kind::Descriptor => "embedded descriptor",
                Kind::Directory => "grain directory",
                Kind::Tables { .. } => "grain table",
                Kind::Grains { .. } => "grain",
            };
            let (_, sector) = self.piece(&a, end);
            return Err(VmdkError::Truncated {
                offset: sector * SECTOR,
                end,
                what,
            });
        }
        if let Some(p) = self.pending.values().next() {
            let (what, _) = self.piece(p, p.start);
            return Err(VmdkError::Missing {
                offset: p.start,
                end,
                what,
            });
        }
        // The entry ended inside qemu's descriptor window, which it reads
        // as zeros past the end of the file.
        self.judge_descriptor()?;
        if end.div_ceil(SECTOR) < self.geo.overhead_sectors {
            return Err(VmdkError::Truncated {
                offset: 0,
                end,
                what: "header area up to overHead",
            });
        }
        Ok(())
    }
}

/// Where `needle` first occurs in `hay`, as `strstr` finds it.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `sscanf("%x")` reads a number from `s`: blanks, a sign, then a
/// hexadecimal digit (the `0` of a `0x` prefix counts).
fn scans_hex(s: &[u8]) -> bool {
    let s = match s.iter().position(|b| !b" \t\n\x0b\x0c\r".contains(b)) {
        Some(i) => &s[i..],
        None => return false,
    };
    let s = s
        .strip_prefix(b"+")
        .or_else(|| s.strip_prefix(b"-"))
        .unwrap_or(s);
    s.first().is_some_and(u8::is_ascii_hexdigit)
}

impl DiskDecoder for VmdkSparseDecoder {
    fn feed(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        match self.state {
            State::Failed => return Err(VmdkError::Poisoned { offset: self.pos }.into()),
            // Bytes after a successful finish: the caller broke the
            // protocol; say so the same way.
            State::Done if !input.is_empty() => {
                self.state = State::Failed;
                return Err(VmdkError::Poisoned { offset: self.pos }.into());
            }
            _ => {}
        }
        let r = self.feed_inner(input, out);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn finish(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        let r = self
            .finish_inner()
            .map_err(crate::Error::from)
            .and_then(|()| self.flush_zero(out));
        match r {
            Ok(()) => self.state = State::Done,
            Err(_) => self.state = State::Failed,
        }
        r
    }

    fn capacity(&self) -> Option<u64> {
        self.header.as_ref().map(SparseHeader::capacity_bytes)
    }
}
