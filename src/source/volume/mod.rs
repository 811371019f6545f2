//! Source volumes of an export: a raw file (or block device) or a qcow2
//! image with its backing chain, opened read-only under the configured
//! storage roots. Each yields an [`AllocationMap`] — so the qcow2 stream
//! encoder knows the exact output size before the first byte — and serves
//! guest reads through [`GuestReader`].

mod qcow2;
mod raw;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use crate::roots::AllowedRoots;
pub(crate) use raw::data_ranges;

use crate::codec::map::{AllocationMap, GuestReader, RangeKind};
use crate::error::{Classify, Error, ErrorKind, Result};
use crate::limits::READ_CHUNK;
use crate::sink::writer::is_zero;

/// Granularity of zero detection over allocated data, aligned in guest
/// offsets: the cluster size of the qcow2 images ovaio writes.
pub const ZERO_CLUSTER: u64 = 64 << 10;

/// Format of a source volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeFormat {
    /// Guest bytes as they are.
    Raw,
    /// qcow2, possibly with a backing chain.
    Qcow2,
}

impl VolumeFormat {
    /// Name as used in summaries.
    pub fn name(self) -> &'static str {
        match self {
            VolumeFormat::Raw => "raw",
            VolumeFormat::Qcow2 => "qcow2",
        }
    }
}

/// Errors particular to opening source volumes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// A backing chain returns to an image already in it.
    #[error("backing chain loop: {} names {}, which is already in the chain", path.display(), backing.display())]
    BackingLoop {
        /// The image naming the backing file.
        path: PathBuf,
        /// The backing file it names.
        backing: PathBuf,
    },
    /// A backing chain is longer than `MAX_BACKING_CHAIN`.
    #[error("backing chain of {} is longer than {max} images", path.display())]
    ChainTooLong {
        /// The top image.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// An image needs an external data file.
    #[error("{} uses an external data file, which is not supported", path.display())]
    ExternalDataFile {
        /// The image.
        path: PathBuf,
    },
    /// An encrypted qcow2 image.
    #[error("{} is encrypted, which is not supported", path.display())]
    Encrypted {
        /// The image.
        path: PathBuf,
    },
    /// A qcow2 image whose compressed clusters are zstd.
    #[error("{} uses zstd compression, which the volume reader does not support", path.display())]
    ZstdCompressed {
        /// The image.
        path: PathBuf,
    },
    /// A backing format other than qcow2 or raw.
    #[error("{} names a backing file of format '{format}', which is not supported", path.display())]
    UnknownBackingFormat {
        /// The image naming it.
        path: PathBuf,
        /// The format string from its header.
        format: String,
    },
    /// A backing file name that is not a plain path (`json:`, a URL).
    #[error("{} names backing file '{name}', which is not a local path", path.display())]
    BackingNotAFile {
        /// The image naming it.
        path: PathBuf,
        /// The name from its header.
        name: String,
    },
    /// SEEK_DATA/SEEK_HOLE answered inconsistently (the file changed).
    #[error("{}: SEEK_DATA/SEEK_HOLE inconsistent at byte {offset}", path.display())]
    SeekInconsistent {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
    },
    /// A read beyond the capacity.
    #[error("read of {len} bytes at {offset} lies beyond the capacity of {capacity} bytes")]
    OutOfBounds {
        /// Guest offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The volume's capacity.
        capacity: u64,
    },
}

impl Classify for VolumeError {
    fn kind(&self) -> ErrorKind {
        match self {
            VolumeError::OutOfBounds { .. } => ErrorKind::InvalidArgument,
            VolumeError::BackingLoop { .. } | VolumeError::SeekInconsistent { .. } => {
                ErrorKind::CorruptImage
            }
            VolumeError::ChainTooLong { .. } => ErrorKind::LimitExceeded,
            VolumeError::ExternalDataFile { .. }
            | VolumeError::Encrypted { .. }
            | VolumeError::ZstdCompressed { .. }
            | VolumeError::UnknownBackingFormat { .. }
            | VolumeError::BackingNotAFile { .. } => ErrorKind::Unsupported,
        }
    }
}

/// The open volume's reader.
#[derive(Debug)]
enum Inner {
    Raw(raw::RawVolume),
    Qcow2(qcow2::Qcow2Volume),
}

/// An opened source volume: capacity, allocation map and guest reads.
#[derive(Debug)]
pub struct SourceVolume {
    inner: Inner,
}

impl SourceVolume {
    /// Opens a volume read-only; format `None` = probe by magic (`QFI\xfb`
    /// → qcow2, else raw). The path, and every backing file a qcow2 image
    /// names, must resolve under `roots`.
    pub fn open(path: &Path, format: Option<VolumeFormat>, roots: &AllowedRoots) -> Result<Self> {
        let (file, canonical) = roots.open_checked(path)?;
        let format = match format {
            Some(f) => f,
            None => probe(&file, path)?,
        };
        let inner = match format {
            VolumeFormat::Raw => Inner::Raw(raw::RawVolume::new(file, path)?),
            VolumeFormat::Qcow2 => {
                Inner::Qcow2(qcow2::Qcow2Volume::open(file, canonical, path, roots)?)
            }
        };
        Ok(SourceVolume { inner })
    }

    /// Virtual size in bytes.
    pub fn capacity(&self) -> u64 {
        match &self.inner {
            Inner::Raw(r) => r.capacity(),
            Inner::Qcow2(q) => q.capacity(),
        }
    }

    /// The format the volume was opened as.
    pub fn format(&self) -> VolumeFormat {
        match &self.inner {
            Inner::Raw(_) => VolumeFormat::Raw,
            Inner::Qcow2(_) => VolumeFormat::Qcow2,
        }
    }

    /// Allocation map. With `detect_zeros`, allocated data is read as well
    /// and each piece of it within one aligned [`ZERO_CLUSTER`] that is all
    /// zero is marked `Zero`.
    pub fn allocation_map(&mut self, detect_zeros: bool) -> Result<AllocationMap> {
        let map = match &self.inner {
            Inner::Raw(r) => r.allocation_map()?,
            Inner::Qcow2(q) => q.allocation_map()?,
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
        let capacity = self.capacity();
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > capacity) {
            return Err(VolumeError::OutOfBounds {
                offset,
                len,
                capacity,
            }
            .into());
        }
        match &self.inner {
            Inner::Raw(r) => r.read_at(offset, buf),
            Inner::Qcow2(q) => q.read_at(offset, buf),
        }
    }
}

/// Tells qcow2 from raw by the first four bytes.
fn probe(file: &File, path: &Path) -> Result<VolumeFormat> {
    Ok(if qcow2::has_qcow2_magic(file, path)? {
        VolumeFormat::Qcow2
    } else {
        VolumeFormat::Raw
    })
}

/// An I/O error on `path` with a one-level message.
fn io_at(e: std::io::Error, path: &Path, what: &str) -> Error {
    Error::from(e).at_path(path).with_message(what)
}

/// An error from imago on `path`, classified by its io kind.
fn imago_err(e: std::io::Error, path: &Path, what: &str) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            ErrorKind::CorruptImage
        }
        std::io::ErrorKind::Unsupported => ErrorKind::Unsupported,
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::InvalidArgument,
        _ => ErrorKind::Io,
    };
    Error::wrap(kind, e).at_path(path).with_message(what)
}
