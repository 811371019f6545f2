//! Raw target volume: guest offset = file offset, in a sparse file sized to
//! the capacity up front, so never-written ranges stay holes.
//!
//! Zeroing punches holes (through the volume layer's
//! [`zero_range`], which writes zeros only where the file system cannot
//! deallocate), and only where something may have been written: the
//! volume keeps a high-water mark of written bytes and ignores zero ranges
//! (or their parts) above it. A volume fed in guest order, as the decoders
//! mostly do, therefore never touches a zero range at all.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::sink::Target;
use crate::sink::target::{TargetError, check_capacity, check_range};
use crate::volume::raw::zero_range;

/// A sparse raw file; see the module documentation.
#[derive(Debug)]
#[must_use = "call finish() to fsync the volume"]
pub struct RawVolume {
    file: File,
    capacity: u64,
    /// Nothing at or above this offset has been written.
    high_water: u64,
    finished: bool,
}

impl RawVolume {
    /// Takes a fresh file (any content is discarded) and sizes it to
    /// `capacity` without allocating blocks.
    pub fn new(file: File, capacity: u64) -> Result<Self> {
        check_capacity(capacity)?;
        file.set_len(0)
            .and_then(|()| file.set_len(capacity))
            .map_err(|e| {
                Error::from(e)
                    .with_message(format!("cannot size the raw volume to {capacity} bytes"))
            })?;
        Ok(RawVolume {
            file,
            capacity,
            high_water: 0,
            finished: false,
        })
    }

    /// Takes a fresh file for a volume whose size is not known yet: it
    /// grows as written, up to [`crate::limits::MAX_CAPACITY`], until
    /// [`Target::set_capacity`] settles it.
    pub fn growable(file: File) -> Result<Self> {
        file.set_len(0)
            .map_err(|e| Error::from(e).with_message("cannot truncate the raw volume"))?;
        Ok(RawVolume {
            file,
            capacity: crate::limits::MAX_CAPACITY,
            high_water: 0,
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
}

impl Target for RawVolume {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        self.file.write_all_at(data, offset).map_err(|e| {
            Error::from(e).with_message(format!(
                "cannot write {} bytes at guest offset {offset}",
                data.len()
            ))
        })?;
        self.high_water = self.high_water.max(offset + data.len() as u64);
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        let end = (offset + len).min(self.high_water);
        if end > offset {
            zero_range(&self.file, offset, end - offset, true).map_err(|e| {
                Error::from(e).with_message(format!(
                    "cannot zero {} bytes at guest offset {offset}",
                    end - offset
                ))
            })?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::from(e).with_message("cannot sync the raw volume"))?;
        self.finished = true;
        Ok(())
    }

    fn set_capacity(&mut self, capacity: u64) -> Result<()> {
        check_range(0, capacity, self.capacity)?;
        if self.high_water > capacity {
            return Err(TargetError::BeyondCapacity {
                offset: capacity,
                len: self.high_water - capacity,
                capacity,
            }
            .into());
        }
        self.file.set_len(capacity).map_err(|e| {
            Error::from(e).with_message(format!("cannot size the raw volume to {capacity} bytes"))
        })?;
        self.capacity = capacity;
        Ok(())
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::error::ErrorKind;

    fn read_all(f: &File) -> Vec<u8> {
        let len = f.metadata().unwrap().len() as usize;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn writes_land_at_their_offsets_and_file_is_sparse() {
        let f = tempfile::tempfile().unwrap();
        let mut v = RawVolume::new(f.try_clone().unwrap(), 64 << 20).unwrap();
        v.write_at(10 << 20, b"hello").unwrap();
        v.write_at(3, b"xy").unwrap();
        // Above the high-water mark: nothing is written.
        v.write_zeroes(20 << 20, 40 << 20).unwrap();
        v.finish().unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(m.blocks() * 512 < 1 << 20, "{} blocks", m.blocks());
        let mut b = [0u8; 5];
        f.read_exact_at(&mut b, 10 << 20).unwrap();
        assert_eq!(&b, b"hello");
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"\0\0\0xy");
    }

    #[test]
    fn zeroes_clear_written_data() {
        let f = tempfile::tempfile().unwrap();
        let cap = 300_000u64;
        let mut v = RawVolume::new(f.try_clone().unwrap(), cap).unwrap();
        v.write_at(0, &vec![7u8; cap as usize]).unwrap();
        v.write_zeroes(1000, 200_000).unwrap();
        v.write_zeroes(cap - 1, 1).unwrap();
        v.finish().unwrap();
        let got = read_all(&f);
        let mut want = vec![7u8; cap as usize];
        want[1000..201_000].fill(0);
        want[cap as usize - 1] = 0;
        assert_eq!(got, want);
    }

    #[test]
    fn nothing_at_or_past_capacity() {
        let f = tempfile::tempfile().unwrap();
        let mut v = RawVolume::new(f.try_clone().unwrap(), 1000).unwrap();
        v.write_at(999, b"a").unwrap();
        let e = v.write_at(999, b"ab").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("offset 999"), "{e}");
        assert!(v.write_at(1000, b"a").is_err());
        assert!(v.write_zeroes(u64::MAX, 2).is_err());
        assert_eq!(f.metadata().unwrap().len(), 1000);
    }

    #[test]
    fn capacity_limit() {
        let f = tempfile::tempfile().unwrap();
        let e = RawVolume::new(f, crate::limits::MAX_CAPACITY + 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    }
}
