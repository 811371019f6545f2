//! The allocation map of a source volume: which guest ranges hold data and
//! which read as zero. Readers produce it (SEEK_DATA/SEEK_HOLE on raw
//! files, L2 tables on qcow2), the qcow2 stream encoder lays out its image
//! from it, so the output size is known before any byte is written.

use crate::error::{Error, ErrorKind, Result};

/// What a guest range holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    /// Allocated data (may still contain zeros).
    Data,
    /// Reads as zero.
    Zero,
}

/// One guest range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRange {
    /// Guest offset in bytes.
    pub offset: u64,
    /// Length in bytes (> 0).
    pub len: u64,
    /// Data or zero.
    pub kind: RangeKind,
}

/// Sorted, non-overlapping ranges covering `[0, capacity)`; ranges not
/// listed read as zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocationMap {
    capacity: u64,
    ranges: Vec<MapRange>,
}

impl AllocationMap {
    /// An empty map (all zero) of a volume of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        AllocationMap {
            capacity,
            ranges: Vec::new(),
        }
    }

    /// Appends a range; ranges must come in guest order without overlap.
    /// Adjacent ranges of the same kind are merged.
    pub fn push(&mut self, offset: u64, len: u64, kind: RangeKind) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset.checked_add(len).filter(|&e| e <= self.capacity);
        let Some(end) = end else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "range {offset}+{len} lies beyond the capacity of {} bytes",
                    self.capacity
                ),
            ));
        };
        if let Some(last) = self.ranges.last_mut() {
            let last_end = last.offset + last.len;
            if offset < last_end {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "range at {offset} overlaps or precedes the range ending at {last_end}"
                    ),
                ));
            }
            if offset == last_end && last.kind == kind {
                last.len = end - last.offset;
                return Ok(());
            }
        }
        self.ranges.push(MapRange { offset, len, kind });
        Ok(())
    }

    /// The volume's virtual size.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The listed ranges, in guest order.
    pub fn ranges(&self) -> &[MapRange] {
        &self.ranges
    }

    /// Bytes in data ranges.
    pub fn data_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .filter(|r| r.kind == RangeKind::Data)
            .map(|r| r.len)
            .sum()
    }
}

/// Random-access reads of guest bytes, for encoders that stream a volume.
pub trait GuestReader {
    /// Fills `buf` with the guest bytes at `offset` (zeros where unallocated).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_rejects_overlap() {
        let mut m = AllocationMap::new(100);
        m.push(0, 10, RangeKind::Data).unwrap();
        m.push(10, 5, RangeKind::Data).unwrap();
        m.push(20, 5, RangeKind::Zero).unwrap();
        assert_eq!(m.ranges().len(), 2);
        assert_eq!(m.data_bytes(), 15);
        assert!(m.push(22, 1, RangeKind::Data).is_err());
        assert!(m.push(90, 11, RangeKind::Data).is_err());
    }
}
