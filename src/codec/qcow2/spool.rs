//! Storage for host bytes the stream decoder passed before it knew their
//! role (data clusters ahead of the L2 table that maps them). The decoder
//! writes them at their host offset and reads them back when a table later
//! maps them; it never opens files itself.

use std::io::{Read, Seek, SeekFrom, Write};

use super::Qcow2Error;
use crate::error::Result;
use crate::limits;

/// Bytes at host offsets, written once in increasing order, read back at
/// random.
pub trait Spool {
    /// Stores `data` at host offset `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// Fills `buf` from host offset `offset` (previously written).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// A spool in memory, refusing to grow beyond `cap` bytes of host offset.
/// Meant for tests, fuzzing and small images.
#[derive(Debug, Clone)]
pub struct MemSpool {
    data: Vec<u8>,
    cap: u64,
}

impl MemSpool {
    /// An empty spool that accepts host offsets below `cap`.
    pub fn new(cap: u64) -> Self {
        MemSpool {
            data: Vec::new(),
            cap,
        }
    }
}

impl Spool for MemSpool {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset.saturating_add(data.len() as u64);
        if end > self.cap {
            return Err(Qcow2Error::Limit {
                offset,
                what: "in-memory spool size",
                value: end,
                limit: self.cap,
            }
            .into());
        }
        let (o, e) = (offset as usize, end as usize);
        if self.data.len() < e {
            self.data.resize(e, 0);
        }
        self.data[o..e].copy_from_slice(data);
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.data.len() as u64 {
            return Err(Qcow2Error::Corrupt {
                offset,
                reason: format!(
                    "spool read up to {end} beyond the {} bytes spooled",
                    self.data.len()
                ),
            }
            .into());
        }
        buf.copy_from_slice(&self.data[offset as usize..end as usize]);
        Ok(())
    }
}

/// A spool over any seekable byte store (an anonymous temporary file, for
/// instance); the caller creates and removes it.
#[derive(Debug)]
pub struct IoSpool<F>(pub F);

impl<F: Read + Write + Seek> Spool for IoSpool<F> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.0.seek(SeekFrom::Start(offset))?;
        self.0.write_all(data)?;
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.seek(SeekFrom::Start(offset))?;
        self.0.read_exact(buf)?;
        Ok(())
    }
}

/// Host ranges written to the spool: sorted, disjoint, merged when
/// adjacent. Ranges arrive in increasing order (stream order).
#[derive(Debug, Default, Clone)]
pub(crate) struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Records `[start, end)`, which begins at or after every recorded range.
    pub(crate) fn add(&mut self, start: u64, end: u64) -> std::result::Result<(), Qcow2Error> {
        if start >= end {
            return Ok(());
        }
        if let Some(last) = self.ranges.last_mut()
            && last.1 == start
        {
            last.1 = end;
            return Ok(());
        }
        if self.ranges.len() >= limits::MAX_QCOW2_PENDING {
            return Err(Qcow2Error::Limit {
                offset: start,
                what: "spooled ranges",
                value: self.ranges.len() as u64 + 1,
                limit: limits::MAX_QCOW2_PENDING as u64,
            });
        }
        self.ranges.push((start, end));
        Ok(())
    }

    /// Whether every byte of `[start, end)` was recorded.
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let i = self.ranges.partition_point(|r| r.0 <= start);
        i > 0 && self.ranges[i - 1].1 >= end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_set_merges_and_covers() {
        let mut r = RangeSet::default();
        r.add(10, 20).unwrap();
        r.add(20, 30).unwrap();
        r.add(40, 50).unwrap();
        assert!(r.covers(10, 30));
        assert!(r.covers(15, 25));
        assert!(!r.covers(5, 15));
        assert!(!r.covers(25, 45));
        assert!(r.covers(40, 50));
        assert!(!r.covers(49, 51));
        assert!(r.covers(7, 7));
    }

    #[test]
    fn mem_spool_is_bounded() {
        let mut s = MemSpool::new(16);
        s.write_at(4, b"abcd").unwrap();
        let mut b = [0u8; 4];
        s.read_at(4, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        assert!(s.write_at(14, b"xyz").is_err());
        assert!(s.read_at(6, &mut b).is_err());
    }
}
