//! The closed set of target volume formats behind one [`Volume`], and the
//! errors every volume shares (writes out of range, capacity limits).

use crate::error::{Classify, ErrorKind, Result};
use crate::limits::MAX_CAPACITY;
use crate::sink::Target;
use crate::sink::imageio::ImageioTarget;
use crate::sink::nbd::NbdTarget;
use crate::sink::qcow2::Qcow2Volume;
use crate::sink::raw::RawVolume;

/// Errors common to all target volumes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// A write reaches at or past the end of the volume.
    #[error(
        "write of {len} bytes at guest offset {offset} reaches past the volume capacity of {capacity} bytes"
    )]
    BeyondCapacity {
        /// Guest offset of the write.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// The volume's capacity.
        capacity: u64,
    },
    /// The capacity asked for is above [`MAX_CAPACITY`].
    #[error("volume capacity of {0} bytes is above the limit of {MAX_CAPACITY} bytes")]
    TooLarge(u64),
    /// A write came after `finish()`.
    #[error("write at guest offset {0} after the volume was finished")]
    Finished(u64),
}

impl Classify for TargetError {
    fn kind(&self) -> ErrorKind {
        match self {
            TargetError::BeyondCapacity { .. } | TargetError::Finished(_) => {
                ErrorKind::InvalidArgument
            }
            TargetError::TooLarge(_) => ErrorKind::LimitExceeded,
        }
    }
}

/// Fails unless `[offset, offset + len)` lies inside `[0, capacity)`.
pub(crate) fn check_range(offset: u64, len: u64, capacity: u64) -> Result<(), TargetError> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(TargetError::BeyondCapacity {
            offset,
            len,
            capacity,
        }),
    }
}

/// Fails if `capacity` is above the crate's limit.
pub(crate) fn check_capacity(capacity: u64) -> Result<(), TargetError> {
    if capacity > MAX_CAPACITY {
        Err(TargetError::TooLarge(capacity))
    } else {
        Ok(())
    }
}

/// A target volume in one of the formats ovaio writes.
#[derive(Debug)]
pub enum TargetVolume {
    /// A sparse raw file.
    Raw(RawVolume),
    /// A qcow2 v3 file.
    Qcow2(Qcow2Volume),
    /// An NBD export, written in place.
    Nbd(NbdTarget),
    /// A remote volume, written in place.
    Imageio(ImageioTarget),
}

impl Target for TargetVolume {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            TargetVolume::Raw(v) => v.write_at(offset, data),
            TargetVolume::Qcow2(v) => v.write_at(offset, data),
            TargetVolume::Nbd(v) => v.write_at(offset, data),
            TargetVolume::Imageio(v) => v.write_at(offset, data),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        match self {
            TargetVolume::Raw(v) => v.write_zeroes(offset, len),
            TargetVolume::Qcow2(v) => v.write_zeroes(offset, len),
            TargetVolume::Nbd(v) => v.write_zeroes(offset, len),
            TargetVolume::Imageio(v) => v.write_zeroes(offset, len),
        }
    }

    fn finish(&mut self) -> Result<()> {
        match self {
            TargetVolume::Raw(v) => v.finish(),
            TargetVolume::Qcow2(v) => v.finish(),
            TargetVolume::Nbd(v) => v.finish(),
            TargetVolume::Imageio(v) => v.finish(),
        }
    }

    fn set_capacity(&mut self, capacity: u64) -> Result<()> {
        match self {
            TargetVolume::Raw(v) => v.set_capacity(capacity),
            TargetVolume::Qcow2(v) => v.set_capacity(capacity),
            TargetVolume::Nbd(v) => v.set_capacity(capacity),
            TargetVolume::Imageio(v) => v.set_capacity(capacity),
        }
    }

    fn capacity(&self) -> u64 {
        match self {
            TargetVolume::Raw(v) => v.capacity(),
            TargetVolume::Qcow2(v) => v.capacity(),
            TargetVolume::Nbd(v) => v.capacity(),
            TargetVolume::Imageio(v) => v.capacity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(10, 0, 10).is_ok());
        assert_eq!(
            check_range(5, 6, 10),
            Err(TargetError::BeyondCapacity {
                offset: 5,
                len: 6,
                capacity: 10
            })
        );
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
        assert!(check_capacity(MAX_CAPACITY).is_ok());
        assert_eq!(
            check_capacity(MAX_CAPACITY + 1),
            Err(TargetError::TooLarge(MAX_CAPACITY + 1))
        );
    }

    #[test]
    fn dispatches_to_the_format() {
        let f = tempfile::tempfile().unwrap();
        let mut v = TargetVolume::Raw(RawVolume::new(f, 4096).unwrap());
        assert_eq!(v.capacity(), 4096);
        v.write_at(0, b"abc").unwrap();
        v.write_zeroes(0, 1).unwrap();
        v.finish().unwrap();
        let f = tempfile::tempfile().unwrap();
        let mut v = TargetVolume::Qcow2(Qcow2Volume::new(f, 1 << 20).unwrap());
        assert_eq!(v.capacity(), 1 << 20);
        v.write_at(100, b"abc").unwrap();
        v.finish().unwrap();
        let e = v.write_at(1 << 20, b"x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
