//! Checks shared by the stream encoders' tests and fuzz targets: a guest
//! whose every sector says where it is ([`PatternReader`]), and an extent
//! sink that compares a decoded image with it ([`VerifySink`]).

use crate::codec::map::{AllocationMap, GuestReader, RangeKind};

/// qemu counts sizes in 512-byte sectors; so does the pattern.
const SECTOR: u64 = 512;

/// Guest bytes for tests and fuzzing: a position-stamped pattern inside the
/// data ranges of a map, zeros elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct PatternReader {
    data: Vec<(u64, u64)>,
    seed: u64,
}

impl PatternReader {
    pub(crate) fn new(map: &AllocationMap, seed: u64) -> Self {
        PatternReader {
            data: map
                .ranges()
                .iter()
                .filter(|r| r.kind == RangeKind::Data)
                .map(|r| (r.offset, r.offset + r.len))
                .collect(),
            seed,
        }
    }

    /// Fills `buf` with the pattern for guest offset `offset`: the first 8
    /// bytes of each 512-byte sector hold its offset, the rest one byte
    /// value derived from it (never zero).
    pub(crate) fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
        let mut p = 0usize;
        while p < buf.len() {
            let o = offset + p as u64;
            let sector = o / SECTOR;
            let within = (o % SECTOR) as usize;
            let seg = (SECTOR as usize - within).min(buf.len() - p);
            let stamp = (sector ^ seed).to_be_bytes();
            let fill = (sector.wrapping_mul(7).wrapping_add(seed) as u8) | 1;
            let seg_buf = &mut buf[p..p + seg];
            for (i, b) in seg_buf.iter_mut().enumerate() {
                let w = within + i;
                if w >= 8 {
                    break;
                }
                *b = stamp[w];
            }
            let head = 8usize.saturating_sub(within).min(seg);
            seg_buf[head..].fill(fill);
            p += seg;
        }
    }
}

impl GuestReader for PatternReader {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        let from = self.data.partition_point(|r| r.1 <= offset);
        for &(s, e) in &self.data[from..] {
            if s >= end {
                break;
            }
            let (a, b) = (s.max(offset), e.min(end));
            Self::pattern(
                self.seed,
                a,
                &mut buf[(a - offset) as usize..(b - offset) as usize],
            );
        }
        Ok(())
    }
}

/// An extent sink that checks a decoded image against the guest reader it
/// was encoded from and records which guest bytes it received.
pub(crate) struct VerifySink<'a, R: GuestReader> {
    expected: &'a mut R,
    capacity_limit: u64,
    pub(crate) capacity: Option<u64>,
    pub(crate) covered: Vec<(u64, u64)>,
    pub(crate) zero_extents: u64,
    scratch: Vec<u8>,
}

impl<'a, R: GuestReader> VerifySink<'a, R> {
    pub(crate) fn new(expected: &'a mut R, capacity_limit: u64) -> Self {
        VerifySink {
            expected,
            capacity_limit,
            capacity: None,
            covered: Vec::new(),
            zero_extents: 0,
            scratch: Vec::new(),
        }
    }
}

impl<R: GuestReader> crate::codec::ExtentSink for VerifySink<'_, R> {
    fn capacity(&mut self, bytes: u64) -> crate::Result<()> {
        assert!(self.capacity.is_none(), "capacity announced twice");
        self.capacity = Some(bytes);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
        let cap = self.capacity.expect("data before capacity");
        let end = offset + data.len() as u64;
        assert!(
            !data.is_empty() && end <= cap,
            "data {offset}+{} past {cap}",
            data.len()
        );
        self.scratch.resize(data.len(), 0);
        let avail = self
            .capacity_limit
            .saturating_sub(offset)
            .min(data.len() as u64) as usize;
        if avail > 0 {
            self.expected.read_at(offset, &mut self.scratch[..avail])?;
        }
        self.scratch[avail..].fill(0);
        if let Some(i) = (0..data.len()).find(|&i| data[i] != self.scratch[i]) {
            panic!("decoded byte at guest offset {} differs", offset + i as u64);
        }
        match self.covered.last_mut() {
            Some(last) if last.1 == offset => last.1 = end,
            _ => self.covered.push((offset, end)),
        }
        Ok(())
    }

    fn zero(&mut self, _offset: u64, _len: u64) -> crate::Result<()> {
        self.zero_extents += 1;
        Ok(())
    }
}
