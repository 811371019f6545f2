//! Source volumes of an export: a raw file (or block device) or a qcow2
//! image with its backing chain, opened read-only under the configured
//! storage roots. Each yields an [`AllocationMap`] — so the qcow2 stream
//! encoder knows the exact output size before the first byte — and serves
//! guest reads through [`GuestReader`].

/// The allocation map of a volume reached by URL, from its extents
/// (holes are left out).
fn extents_allocation_map(v: &Volume) -> Result<AllocationMap> {
    use crate::volume::{ExtentKind, Extents};
    let mut map = AllocationMap::new(v.size());
    for e in v.extents(0, v.size())? {
        match e.kind {
            ExtentKind::Data => map.push(e.start, e.len, RangeKind::Data)?,
            ExtentKind::Zero => map.push(e.start, e.len, RangeKind::Zero)?,
            ExtentKind::Hole => {}
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests;

use std::path::Path;

pub use crate::roots::AllowedRoots;
use crate::volume::Format as VolumeFormat;
pub use crate::volume::VolumeError;

use crate::codec::map::{AllocationMap, GuestReader, RangeKind};
use crate::error::Result;
use crate::limits::READ_CHUNK;
use crate::sink::writer::is_zero;
use crate::volume::{OpenOptions, ReadAt, Size, Volume};

/// Granularity of zero detection over allocated data, aligned in guest
/// offsets: the cluster size of the qcow2 images ovaio writes.
pub const ZERO_CLUSTER: u64 = 64 << 10;

/// An opened source volume: capacity, allocation map and guest reads.
#[derive(Debug)]
pub struct SourceVolume {
    inner: Volume,
}

impl SourceVolume {
    /// Opens a volume read-only; format `None` = probe by magic (`QFI\xfb`
    /// → qcow2, else raw). The path, and every backing file a qcow2 image
    /// names, must resolve under `roots`.
    pub fn open(path: &Path, format: Option<VolumeFormat>, roots: &AllowedRoots) -> Result<Self> {
        let (file, canonical) = roots.open_checked(path)?;
        let opts = OpenOptions {
            format,
            ..OpenOptions::default()
        };
        let inner = Volume::from_file(file, &canonical, path, &opts, roots)?;
        Ok(SourceVolume { inner })
    }

    /// Connects read-only to the NBD export or remote volume at `url`.
    pub fn open_net(url: &crate::volume::NetUrl) -> Result<Self> {
        Ok(SourceVolume {
            inner: crate::volume::open_net(url, false)?,
        })
    }

    /// Virtual size in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.size()
    }

    /// The format the volume was opened as.
    pub fn format(&self) -> VolumeFormat {
        self.inner.format()
    }

    /// Allocation map. With `detect_zeros`, allocated data is read as well
    /// and each piece of it within one aligned [`ZERO_CLUSTER`] that is all
    /// zero is marked `Zero`.
    pub fn allocation_map(&mut self, detect_zeros: bool) -> Result<AllocationMap> {
        let map = match &self.inner {
            Volume::Raw(r) => r.allocation_map()?,
            Volume::Qcow2(q) => q.allocation_map()?,
            Volume::Nbd(_) | Volume::Imageio(_) => extents_allocation_map(&self.inner)?,
        };
        if detect_zeros {
            self.detect_zeros(&map)
        } else {
            Ok(map)
        }
    }

    /// Re-maps all-zero pieces of the data ranges of `map` as `Zero`.
    fn detect_zeros(&mut self, map: &AllocationMap) -> Result<AllocationMap> {
        let mut out = AllocationMap::new(map.capacity());
        let mut buf = vec![0u8; READ_CHUNK];
        for r in map.ranges() {
            if r.kind == RangeKind::Zero {
                out.push(r.offset, r.len, r.kind)?;
                continue;
            }
            let end = r.offset + r.len;
            let mut off = r.offset;
            while off < end {
                // Chunks end on cluster boundaries so no cluster straddles two.
                let chunk_end = (off + READ_CHUNK as u64) / ZERO_CLUSTER * ZERO_CLUSTER;
                let chunk_end = if chunk_end <= off {
                    off + READ_CHUNK as u64
                } else {
                    chunk_end
                }
                .min(end);
                let n = (chunk_end - off) as usize;
                self.read_at(off, &mut buf[..n])?;
                let mut p = off;
                while p < chunk_end {
                    let next = ((p / ZERO_CLUSTER + 1) * ZERO_CLUSTER).min(chunk_end);
                    let s = (p - off) as usize;
                    let e = (next - off) as usize;
                    let kind = if is_zero(&buf[s..e]) {
                        RangeKind::Zero
                    } else {
                        RangeKind::Data
                    };
                    out.push(p, next - p, kind)?;
                    p = next;
                }
                off = chunk_end;
            }
        }
        Ok(out)
    }
}

impl GuestReader for SourceVolume {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buf)
    }
}
