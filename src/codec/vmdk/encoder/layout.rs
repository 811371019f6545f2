//! The exact layout of a streamOptimized extent, computed from the
//! allocation map before a byte is written.

use super::*;

/// The exact layout of the streamOptimized extent for one allocation map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkLayout {
    pub(super) coding: GrainCoding,
    /// Bytes the guest reader holds (the map's capacity).
    pub(super) capacity: u64,
    /// Virtual size in sectors (the capacity rounded up).
    pub(super) capacity_sectors: u64,
    /// Allocated grains as merged runs `[start, end)` of grain numbers.
    pub(super) runs: Vec<(u64, u64)>,
    /// Grain directory indexes of the grain tables written, in order.
    pub(super) tables: Vec<u64>,
    pub(super) data_grains: u64,
    /// Bytes of every grain marker together.
    pub(super) grain_bytes: u64,
    pub(super) gd_entries: u64,
    pub(super) total_size: u64,
    /// The extent's name in the embedded descriptor.
    pub(super) name: String,
}

impl VmdkLayout {
    /// The layout of `map` with grains in stored blocks: known from the
    /// map alone. `name` is the extent's file name, recorded in the
    /// embedded descriptor.
    pub fn stored(map: &AllocationMap, name: &str) -> crate::Result<Self> {
        let mut l = Self::skeleton(map, name, GrainCoding::Stored)?;
        l.grain_bytes = l.data_grains * stored_marker_len() as u64;
        l.finish()
    }

    /// The layout of `map` with deflated grains: reads every allocated
    /// grain from `reader` and compresses it to count its marker's bytes.
    /// `tick` is called with the guest bytes read after each run (for
    /// progress and cancellation: an error stops the count).
    pub fn deflate<R: GuestReader>(
        map: &AllocationMap,
        name: &str,
        reader: &mut R,
        tick: &mut dyn FnMut(u64) -> crate::Result<()>,
    ) -> crate::Result<Self> {
        let mut l = Self::skeleton(map, name, GrainCoding::Deflate)?;
        let mut z = Compress::new(Compression::new(DEFLATE_LEVEL), true);
        let per_run = (limits::READ_CHUNK as u64 / GRAIN_SIZE).max(1);
        let mut data = vec![0u8; (per_run * GRAIN_SIZE) as usize];
        let mut out = vec![0u8; stored_marker_len()];
        let mut bytes = 0u64;
        for &(start, end) in &l.runs {
            let mut g = start;
            while g < end {
                let n = (end - g).min(per_run);
                let len = (n * GRAIN_SIZE) as usize;
                read_grains(reader, l.capacity, g, &mut data[..len])?;
                for (i, grain) in data[..len].chunks(GRAIN_SIZE as usize).enumerate() {
                    let lba = (g + i as u64) * GRAIN_SECTORS;
                    bytes += frame_grain(Some(&mut z), lba, grain, &mut out) as u64;
                }
                tick(len as u64)?;
                g += n;
            }
        }
        l.grain_bytes = bytes;
        l.finish()
    }

    /// Everything but the grains' bytes.
    pub(super) fn skeleton(
        map: &AllocationMap,
        name: &str,
        coding: GrainCoding,
    ) -> crate::Result<Self> {
        let capacity = map.capacity();
        if capacity == 0 {
            return Err(VmdkEncodeError::Empty.into());
        }
        if capacity > limits::MAX_CAPACITY {
            return Err(VmdkEncodeError::Capacity {
                value: capacity,
                limit: limits::MAX_CAPACITY,
            }
            .into());
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for r in map.ranges().iter().filter(|r| r.kind == RangeKind::Data) {
            let start = r.offset / GRAIN_SIZE;
            let end = (r.offset + r.len).div_ceil(GRAIN_SIZE);
            match runs.last_mut() {
                Some(last) if last.1 >= start => last.1 = last.1.max(end),
                _ => runs.push((start, end)),
            }
        }
        let mut tables: Vec<u64> = Vec::new();
        for &(start, end) in &runs {
            for t in start / GTES_PER_GT..=(end - 1) / GTES_PER_GT {
                if tables.last() != Some(&t) {
                    tables.push(t);
                }
            }
        }
        let capacity_sectors = capacity.div_ceil(SECTOR);
        Ok(VmdkLayout {
            coding,
            capacity,
            capacity_sectors,
            data_grains: runs.iter().map(|r| r.1 - r.0).sum(),
            runs,
            tables,
            grain_bytes: 0,
            gd_entries: capacity_sectors.div_ceil(GRAIN_SECTORS * GTES_PER_GT),
            total_size: 0,
            name: name.to_owned(),
        })
    }

    /// Adds up the metadata and checks the 32-bit sector numbers.
    pub(super) fn finish(mut self) -> crate::Result<Self> {
        let sectors = OVERHEAD_SECTORS
            + self.tables.len() as u64 * (1 + GT_SECTORS)
            + 1
            + self.gd_sectors()
            + 3; // footer marker, footer, end-of-stream marker
        let total = sectors * SECTOR + self.grain_bytes;
        if total / SECTOR > MAX_SECTORS {
            return Err(VmdkEncodeError::TooLarge { bytes: total }.into());
        }
        self.total_size = total;
        Ok(self)
    }

    pub(super) fn gd_sectors(&self) -> u64 {
        (self.gd_entries * ENTRY_SIZE).div_ceil(SECTOR)
    }

    /// Exact byte count the encoder produces.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// Allocated grains written.
    pub fn data_grains(&self) -> u64 {
        self.data_grains
    }

    /// Grain size in bytes.
    pub fn grain_size(&self) -> u64 {
        GRAIN_SIZE
    }

    /// How grains are coded.
    pub fn coding(&self) -> GrainCoding {
        self.coding
    }

    /// Virtual size recorded: the capacity rounded up to whole sectors.
    pub fn virtual_size(&self) -> u64 {
        self.capacity_sectors * SECTOR
    }

    /// The header (`footer` false: gdOffset [`GD_AT_END`]) or the footer
    /// (with the grain directory's sector).
    pub(super) fn header(&self, gd_offset: u64) -> SparseHeader {
        SparseHeader {
            version: 3,
            flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity_sectors: self.capacity_sectors,
            grain_sectors: GRAIN_SECTORS,
            descriptor_offset: DESCRIPTOR_OFFSET,
            descriptor_size: DESCRIPTOR_SECTORS,
            num_gtes_per_gt: GTES_PER_GT as u32,
            rgd_offset: 0,
            gd_offset,
            overhead_sectors: OVERHEAD_SECTORS,
            unclean_shutdown: false,
            compress_algorithm: COMPRESS_DEFLATE,
        }
    }

    /// The embedded descriptor, as VMware writes it for a stream: the
    /// content id is derived from the layout, so that the same source
    /// gives the same bytes.
    pub fn descriptor(&self) -> String {
        let mut h: u32 = 0x811c_9dc5;
        let mut mix = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
            }
        };
        mix(self.name.as_bytes());
        mix(&self.capacity_sectors.to_le_bytes());
        for r in &self.runs {
            mix(&r.0.to_le_bytes());
            mix(&r.1.to_le_bytes());
        }
        mix(&self.grain_bytes.to_le_bytes());
        // The extent name sits between quotes on one line.
        let name: String = self
            .name
            .chars()
            .take(255)
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let cylinders = (self.capacity_sectors / (255 * 63)).clamp(1, 65_535);
        format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={h:08x}\nparentCID=ffffffff\n\
             createType=\"streamOptimized\"\n\n# Extent description\nRW {} SPARSE \"{name}\"\n\n\
             # The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n\
             ddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"255\"\n\
             ddb.geometry.sectors = \"63\"\nddb.virtualHWVersion = \"4\"\n",
            self.capacity_sectors
        )
    }
}
