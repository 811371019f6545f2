//! Raw source volumes: a regular file or block device read with `pread`;
//! the allocation map comes from `SEEK_DATA`/`SEEK_HOLE`.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::{VolumeError, io_at};
use crate::codec::map::{AllocationMap, RangeKind};
use crate::error::Result;

/// An opened raw volume.
#[derive(Debug)]
pub(crate) struct RawVolume {
    file: File,
    capacity: u64,
    path: PathBuf,
}

impl RawVolume {
    /// Wraps an opened file; its capacity is its length (a block device's
    /// size, found by seeking to its end).
    pub(crate) fn new(mut file: File, path: &Path) -> Result<Self> {
        let capacity = file
            .seek(SeekFrom::End(0))
            .map_err(|e| io_at(e, path, "cannot find the size"))?;
        Ok(RawVolume {
            file,
            capacity,
            path: path.to_path_buf(),
        })
    }

    /// Virtual size in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Exact data ranges as the file system reports them; everything
    /// when it cannot tell holes apart.
    pub(crate) fn allocation_map(&self) -> Result<AllocationMap> {
        data_ranges(&self.file, self.capacity, &self.path)
    }

    /// Reads guest bytes; zeros past the end of the file (a file that
    /// shrank after it was opened reads as zero up to the capacity).
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            match self.file.read_at(&mut buf[done..], pos) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(io_at(
                        e,
                        &self.path,
                        &format!("read at guest offset {pos} failed"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The data ranges of `file` within `[0, capacity)` by `SEEK_DATA` and
/// `SEEK_HOLE`. A file system without support (`EINVAL`, `EOPNOTSUPP`)
/// yields one data range over everything.
pub(crate) fn data_ranges(file: &File, capacity: u64, path: &Path) -> Result<AllocationMap> {
    let mut map = AllocationMap::new(capacity);
    let mut off = 0u64;
    while off < capacity {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) if off == 0 => {
                map.push(0, capacity, RangeKind::Data)?;
                return Ok(map);
            }
            Err(e) => {
                return Err(io_at(
                    e.into(),
                    path,
                    &format!("SEEK_DATA from {off} failed"),
                ));
            }
        };
        if data >= capacity {
            break;
        }
        let hole = match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data)) {
            Ok(h) => h.min(capacity),
            // The file shrank between the two calls: data runs to its end.
            Err(Errno::NXIO) => capacity,
            Err(e) => {
                return Err(io_at(
                    e.into(),
                    path,
                    &format!("SEEK_HOLE from {data} failed"),
                ));
            }
        };
        if hole <= data || data < off {
            return Err(VolumeError::SeekInconsistent {
                path: path.to_path_buf(),
                offset: data,
            }
            .into());
        }
        map.push(data, hole - data, RangeKind::Data)?;
        off = hole;
    }
    Ok(map)
}
