//! The grain directory and grain tables, checked against the grain stream.
//!
//! The decoder places each grain at the lba its marker names. qemu and
//! VMware read a streamOptimized extent through its grain directory and
//! grain tables instead, and never look at that lba. A file whose tables
//! map other grains than its markers name would show ovaio one disk and
//! them another, so a stream is accepted only when both readings are the
//! same: grains come in strictly increasing lba order, and every grain
//! table entry is either empty (0, or 1 with the zeroed-grain flag) or the
//! sector of the marker of the grain for its lba.
//!
//! Where the tables lie depends on the header's gdOffset:
//!
//! - `GD_AT_END` (VMware's and VirtualBox's layout): the footer names the
//!   grain directory, which follows the grain tables as metadata markers,
//!   and each grain table follows the grains it maps. Each table is
//!   compared with the grains seen since the previous one (at most one
//!   table's worth is remembered), the directory with the tables (by a
//!   digest taken as they passed) and the footer with the directory. qemu
//!   cannot open such a file without its footer, so the stream must end
//!   with grain directory, footer and end-of-stream marker.
//! - a sector past the header area (vmdktool's layout, which rewrites the
//!   header at the end): the same markers, checked the same way, with the
//!   grain directory marker's payload at that sector. Readers go by the
//!   header, so footer and end-of-stream marker may be missing.
//! - a sector in the header area (qemu-img's and open-vmdk's layout): the
//!   grain directory and its tables lie before the first marker, filled in
//!   after the grains were written. The directory is kept (bounded by
//!   [`limits::MAX_VMDK_GD_ENTRIES`]), the tables are digested as they pass
//!   and compared with a digest of the grains when the stream ends. Grain
//!   table, grain directory and footer markers in such a stream are not
//!   what readers use; they are only framed.

use sha2::{Digest, Sha256};

use super::error::VmdkError;
use super::header::{ENTRY_SIZE, GD_AT_END, HEADER_SIZE, OFF_GD, SECTOR, SparseHeader};
use crate::limits;

/// A table read entry by entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    /// The payload of a grain table marker.
    MarkerGt,
    /// The payload of the grain directory marker.
    MarkerGd,
    /// The grain directory in the header area.
    HeaderGd,
    /// A grain table the header-area directory points to.
    HeaderGt,
}

/// Where and how to read a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Read {
    pub table: Table,
    /// Entry offset of the first entry.
    pub at: u64,
    /// Number of entries.
    pub count: u64,
    /// Entry offset where the structure holding the table ends.
    pub until: u64,
    /// Entry offset where that structure starts, and its name, for
    /// truncation errors.
    pub start: u64,
    pub what: &'static str,
}

/// A digest of a sequence of pairs: two sequences are equal exactly when
/// their counts and digests are, without keeping either.
#[derive(Debug, Clone, Default)]
struct Sequence {
    hash: Sha256,
    count: u64,
}

impl Sequence {
    fn push(&mut self, a: u64, b: u64) {
        self.hash.update(a.to_le_bytes());
        self.hash.update(b.to_le_bytes());
        self.count += 1;
    }

    fn same_as(&self, other: &Sequence) -> bool {
        self.count == other.count && self.hash.clone().finalize() == other.hash.clone().finalize()
    }
}

/// A grain seen in the stream.
#[derive(Debug, Clone, Copy)]
struct Grain {
    lba: u64,
    /// Grain number: lba / grain size.
    index: u64,
    /// File sector of the grain marker: what a grain table entry holds.
    sector: u64,
    /// Entry offset of the grain marker.
    offset: u64,
}

/// Where a `GD_AT_END` stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Grains and grain tables.
    Grains,
    /// After the grain directory: the footer comes next.
    Directory,
    /// After the footer: the end-of-stream marker comes next.
    Footer,
}

impl Phase {
    fn expected(self) -> &'static str {
        match self {
            Phase::Grains => "grain directory marker",
            Phase::Directory => "footer marker",
            Phase::Footer => "end-of-stream marker",
        }
    }
}

/// VMware's and vmdktool's layouts: tables as metadata markers after their
/// grains.
#[derive(Debug)]
struct MarkerTables {
    /// Sector of the grain directory's payload, when the header names it
    /// (readers then need no footer).
    named: Option<u64>,
    phase: Phase,
    /// Grains since the last grain table, all in one table's range.
    pending: Vec<Grain>,
    /// How many of `pending` the grain table being read has matched.
    cursor: usize,
    /// Range (grain directory index) of the last grain table marker.
    range: Option<u64>,
    /// `(range, payload sector)` of every grain table marker.
    tables: Sequence,
    /// `(index, entry)` of every non-zero grain directory entry.
    directory: Sequence,
    /// Offset of the grain directory marker and sector of its payload.
    gd: Option<(u64, u64)>,
}

impl MarkerTables {
    /// Whether the stream may end here (before or at an end-of-stream
    /// marker): once its grain directory is in when the header names it,
    /// else once the footer, which names it, is in.
    fn may_end(&self) -> bool {
        match self.named {
            None => self.phase == Phase::Footer,
            Some(_) => self.phase != Phase::Grains,
        }
    }
}

/// qemu-img's and open-vmdk's layout: directory and tables in the header
/// area.
#[derive(Debug)]
struct HeaderTables {
    /// Entry offset of the grain directory.
    gd_at: u64,
    /// Entry offset of the first marker.
    data_start: u64,
    /// The directory's entries, while its tables are still ahead.
    directory: Vec<u32>,
    /// Directory index of the grain table being read.
    slot: usize,
    /// Entry offset before which no further grain table may start.
    free_from: u64,
    /// The last non-empty grain table entry.
    last_entry: Option<u32>,
    /// `(grain number, sector)` of every non-empty grain table entry.
    tables: Sequence,
    /// `(grain number, marker sector)` of every grain of the stream.
    grains: Sequence,
}

#[derive(Debug)]
enum Layout {
    Markers(MarkerTables),
    Header(HeaderTables),
}

/// The check of one stream, fed with what the decoder meets.
#[derive(Debug)]
pub(super) struct Tables {
    grain_sectors: u64,
    gtes: u64,
    total_grains: u64,
    gd_entries: u64,
    zero_grain: bool,
    /// Lba of the previous grain.
    previous: Option<u64>,
    layout: Layout,
}

impl Tables {
    /// The check for a stream with header `h`.
    pub fn new(h: &SparseHeader) -> Result<Self, VmdkError> {
        let gtes = u64::from(h.num_gtes_per_gt);
        let gd_entries = h.gd_entries();
        let data_start = h.data_start();
        let gd_at = h.gd_offset.checked_mul(SECTOR);
        let markers = |named| {
            Layout::Markers(MarkerTables {
                named,
                phase: Phase::Grains,
                pending: Vec::new(),
                cursor: 0,
                range: None,
                tables: Sequence::default(),
                directory: Sequence::default(),
                gd: None,
            })
        };
        let layout = if h.gd_offset == GD_AT_END {
            markers(None)
        } else if gd_at.is_some_and(|at| at >= data_start) {
            markers(Some(h.gd_offset))
        } else {
            let field = OFF_GD as u64;
            if gd_entries > limits::MAX_VMDK_GD_ENTRIES {
                return Err(VmdkError::DirectoryLimit {
                    offset: field,
                    entries: gd_entries,
                    limit: limits::MAX_VMDK_GD_ENTRIES,
                });
            }
            let gd_end = gd_at.and_then(|at| at.checked_add(gd_entries * ENTRY_SIZE));
            let (gd_at, gd_end) = match (gd_at, gd_end) {
                (Some(at), Some(end))
                    if gd_entries == 0 || (at >= HEADER_SIZE as u64 && end <= data_start) =>
                {
                    (at, end)
                }
                _ => {
                    return Err(VmdkError::OutOfReach {
                        offset: field,
                        what: "grain directory",
                        sector: h.gd_offset,
                    });
                }
            };
            Layout::Header(HeaderTables {
                gd_at,
                data_start,
                directory: Vec::new(),
                slot: 0,
                free_from: gd_end,
                last_entry: None,
                tables: Sequence::default(),
                grains: Sequence::default(),
            })
        };
        Ok(Tables {
            grain_sectors: h.grain_sectors,
            gtes,
            total_grains: h.total_grains(),
            gd_entries,
            zero_grain: h.zero_grain(),
            previous: None,
            layout,
        })
    }

    /// The first table to read in the header area, if any.
    pub fn header_area(&self) -> Option<Read> {
        match &self.layout {
            Layout::Header(h) if self.gd_entries > 0 => Some(Read {
                table: Table::HeaderGd,
                at: h.gd_at,
                count: self.gd_entries,
                until: h.free_from,
                start: h.gd_at,
                what: "grain directory",
            }),
            _ => None,
        }
    }

    fn hole(&self, entry: u32) -> bool {
        entry == 0 || (entry == 1 && self.zero_grain)
    }

    /// A grain marker for `lba` at entry offset `offset` (a sector
    /// boundary), already checked to be aligned and inside the capacity.
    pub fn grain(&mut self, lba: u64, offset: u64) -> Result<(), VmdkError> {
        if let Some(previous) = self.previous
            && lba <= previous
        {
            return Err(VmdkError::GrainOutOfOrder {
                offset,
                lba,
                previous,
            });
        }
        self.previous = Some(lba);
        let grain = Grain {
            lba,
            index: lba / self.grain_sectors,
            sector: offset / SECTOR,
            offset,
        };
        match &mut self.layout {
            Layout::Markers(m) => {
                if m.phase != Phase::Grains {
                    return Err(VmdkError::UnexpectedMarker {
                        offset,
                        found: "grain marker",
                        expected: m.phase.expected(),
                    });
                }
                let range = grain.index / self.gtes;
                if m.range.is_some_and(|r| range <= r) {
                    // Its range's grain table has passed without it.
                    return Err(VmdkError::GrainNotInTable { offset, lba });
                }
                if let Some(first) = m.pending.first()
                    && first.index / self.gtes != range
                {
                    // A grain table follows the grains it maps, so the
                    // earlier range's table should have come by now.
                    return Err(not_in_table(first));
                }
                // Strictly increasing grains of one range: never more than
                // `gtes` (at most MAX_VMDK_GTES_PER_GT) of them.
                m.pending.push(grain);
            }
            Layout::Header(h) => h.grains.push(grain.index, grain.sector),
        }
        Ok(())
    }

    /// A grain table (`directory` false) or grain directory marker at
    /// `offset` whose payload of `sectors` sectors ends at `until`: the
    /// table to read from it, or `None` to skip it.
    pub fn table_marker(
        &mut self,
        directory: bool,
        offset: u64,
        sectors: u64,
        until: u64,
    ) -> Result<Option<Read>, VmdkError> {
        let Layout::Markers(m) = &mut self.layout else {
            return Ok(None);
        };
        let (what, found, count) = if directory {
            ("grain directory", "grain directory marker", self.gd_entries)
        } else {
            ("grain table", "grain table marker", self.gtes)
        };
        if m.phase != Phase::Grains {
            return Err(VmdkError::UnexpectedMarker {
                offset,
                found,
                expected: m.phase.expected(),
            });
        }
        let expected = (count * ENTRY_SIZE).div_ceil(SECTOR);
        if sectors < expected {
            return Err(VmdkError::TableTooSmall {
                offset,
                what,
                sectors,
                expected,
            });
        }
        let payload = offset + SECTOR;
        if directory {
            if let Some(first) = m.pending.first() {
                return Err(not_in_table(first));
            }
            if let Some(named) = m.named
                && named != payload / SECTOR
            {
                return Err(VmdkError::DirectoryMisplaced {
                    offset,
                    sector: payload / SECTOR,
                    named,
                });
            }
            m.phase = Phase::Directory;
            m.gd = Some((offset, payload / SECTOR));
        } else {
            // An empty grain table maps nothing; writers that emit them
            // emit one per range, in order.
            let range = match m.pending.first() {
                Some(g) => g.index / self.gtes,
                None => m.range.map_or(0, |r| r + 1),
            };
            if range >= self.gd_entries {
                return Err(VmdkError::ExtraTable {
                    offset,
                    tables: self.gd_entries,
                });
            }
            m.range = Some(range);
            m.cursor = 0;
            m.tables.push(range, payload / SECTOR);
        }
        Ok(Some(Read {
            table: if directory {
                Table::MarkerGd
            } else {
                Table::MarkerGt
            },
            at: payload,
            count,
            until,
            start: offset,
            what: found,
        }))
    }

    /// Entry `index` of `table`, holding `entry`, at entry offset `offset`.
    pub fn entry(
        &mut self,
        table: Table,
        index: u64,
        entry: u32,
        offset: u64,
    ) -> Result<(), VmdkError> {
        let hole = self.hole(entry);
        let (gtes, grain_sectors, total_grains) =
            (self.gtes, self.grain_sectors, self.total_grains);
        match (&mut self.layout, table) {
            (Layout::Markers(m), Table::MarkerGt) => {
                let range = m.range.unwrap_or(0);
                let g = range * gtes + index;
                // Entries past the capacity are never read.
                if g >= total_grains {
                    return Ok(());
                }
                let lba = g * grain_sectors;
                match m.pending.get(m.cursor) {
                    Some(p) if p.index == g => {
                        if hole {
                            return Err(not_in_table(p));
                        }
                        if u64::from(entry) != p.sector {
                            return Err(VmdkError::TableEntryMismatch {
                                offset,
                                lba,
                                entry,
                                grain: p.offset,
                            });
                        }
                        m.cursor += 1;
                    }
                    _ if !hole => {
                        return Err(VmdkError::TableEntryWithoutGrain { offset, lba, entry });
                    }
                    _ => {}
                }
            }
            (Layout::Markers(m), Table::MarkerGd) if entry != 0 => {
                m.directory.push(index, u64::from(entry));
            }
            (Layout::Header(h), Table::HeaderGd) => {
                h.directory.push(entry);
                if entry != 0 {
                    let at = u64::from(entry) * SECTOR;
                    let end = at + gtes * ENTRY_SIZE;
                    if at < h.free_from || end > h.data_start {
                        return Err(VmdkError::OutOfReach {
                            offset,
                            what: "grain table",
                            sector: u64::from(entry),
                        });
                    }
                    h.free_from = end;
                }
            }
            (Layout::Header(h), Table::HeaderGt) => {
                let g = h.slot as u64 * gtes + index;
                if g >= total_grains || hole {
                    return Ok(());
                }
                // The stream's grains have increasing lbas and increasing
                // sectors past the header area; entries that do not can
                // name no grain of it.
                let first = h.data_start / SECTOR;
                if u64::from(entry) < first || h.last_entry.is_some_and(|l| entry <= l) {
                    return Err(VmdkError::TableEntryWithoutGrain {
                        offset,
                        lba: g * grain_sectors,
                        entry,
                    });
                }
                h.last_entry = Some(entry);
                h.tables.push(g, u64::from(entry));
            }
            // The decoder only reads the tables this check asked for.
            _ => {}
        }
        Ok(())
    }

    /// All entries of `table` are in: the next header-area table to read,
    /// if any.
    pub fn table_end(&mut self, table: Table) -> Result<Option<Read>, VmdkError> {
        let gtes = self.gtes;
        match (&mut self.layout, table) {
            (Layout::Markers(m), Table::MarkerGt) => {
                // Every pending grain lies in the table's range, before the
                // capacity, so the entries have met each of them.
                if let Some(p) = m.pending.get(m.cursor) {
                    return Err(not_in_table(p));
                }
                m.pending.clear();
                Ok(None)
            }
            (Layout::Markers(m), Table::MarkerGd) => {
                if !m.directory.same_as(&m.tables) {
                    return Err(VmdkError::DirectoryMismatch {
                        offset: m.gd.map_or(0, |g| g.0),
                        entries: m.directory.count,
                        tables: m.tables.count,
                    });
                }
                Ok(None)
            }
            (Layout::Header(h), Table::HeaderGd | Table::HeaderGt) => {
                let from = if table == Table::HeaderGd {
                    0
                } else {
                    h.slot + 1
                };
                let next = (from..h.directory.len()).find(|&i| h.directory[i] != 0);
                let Some(slot) = next else {
                    h.directory = Vec::new();
                    return Ok(None);
                };
                h.slot = slot;
                let at = u64::from(h.directory[slot]) * SECTOR;
                Ok(Some(Read {
                    table: Table::HeaderGt,
                    at,
                    count: gtes,
                    until: at + gtes * ENTRY_SIZE,
                    start: at,
                    what: "grain table",
                }))
            }
            _ => Ok(None),
        }
    }

    /// A footer marker at `offset`.
    pub fn footer_marker(&self, offset: u64) -> Result<(), VmdkError> {
        match &self.layout {
            Layout::Markers(m) if m.phase != Phase::Directory => Err(VmdkError::UnexpectedMarker {
                offset,
                found: "footer marker",
                expected: m.phase.expected(),
            }),
            _ => Ok(()),
        }
    }

    /// The footer at `offset`, already checked against the header's
    /// capacity and grain size. qemu reads the whole extent through it.
    pub fn footer(&mut self, footer: &SparseHeader, offset: u64) -> Result<(), VmdkError> {
        let Layout::Markers(m) = &mut self.layout else {
            return Ok(());
        };
        let field = if Some(footer.gd_offset) != m.gd.map(|g| g.1) {
            Some("gdOffset")
        } else if u64::from(footer.num_gtes_per_gt) != self.gtes {
            Some("numGTEsPerGT")
        } else if footer.zero_grain() != self.zero_grain {
            Some("zeroed-grain flag")
        } else {
            None
        };
        if let Some(field) = field {
            return Err(VmdkError::FooterMismatch { offset, field });
        }
        m.phase = Phase::Footer;
        Ok(())
    }

    /// An end-of-stream marker at `offset`.
    pub fn end_of_stream(&self, offset: u64) -> Result<(), VmdkError> {
        match &self.layout {
            Layout::Markers(m) if !m.may_end() => {
                if let Some(first) = m.pending.first() {
                    return Err(not_in_table(first));
                }
                Err(VmdkError::UnexpectedMarker {
                    offset,
                    found: "end-of-stream marker",
                    expected: m.phase.expected(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The entry ended at `offset` between two markers (`ended`: after the
    /// end-of-stream marker).
    pub fn finish(&self, offset: u64, ended: bool) -> Result<(), VmdkError> {
        match &self.layout {
            Layout::Markers(_) if ended => Ok(()),
            // qemu reads the footer as the last sectors but one.
            Layout::Markers(m) if m.named.is_some() && m.may_end() => Ok(()),
            Layout::Markers(m) => {
                if let Some(first) = m.pending.first() {
                    return Err(not_in_table(first));
                }
                let what = match m.phase {
                    Phase::Grains => "grain directory",
                    Phase::Directory => "footer",
                    Phase::Footer => "end-of-stream marker",
                };
                Err(VmdkError::MissingMetadata { offset, what })
            }
            Layout::Header(h) => {
                if h.grains.same_as(&h.tables) {
                    Ok(())
                } else {
                    Err(VmdkError::TablesDisagree {
                        offset: h.gd_at,
                        tables: h.tables.count,
                        grains: h.grains.count,
                    })
                }
            }
        }
    }
}

fn not_in_table(g: &Grain) -> VmdkError {
    VmdkError::GrainNotInTable {
        offset: g.offset,
        lba: g.lba,
    }
}
