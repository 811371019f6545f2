//! Raw volumes: a regular file or block device whose bytes are the guest
//! bytes. Reads and writes are `pread`/`pwrite` (streams of whole blocks
//! go through [`super::direct::DirectWriter`] with `O_DIRECT`); zeroing
//! punches holes or asks for zeroed blocks (`fallocate`), writing zeros
//! only where the file system can do neither; the allocation map comes
//! from `SEEK_DATA`/`SEEK_HOLE`.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::{
    Extent, ExtentKind, Extents, Flush, ReadAt, Size, VolumeError, WriteAt, ZEROS, Zero,
    check_bounds, io_at, push_extent,
};
use crate::codec::map::{AllocationMap, RangeKind};
use crate::error::Result;

/// An open raw volume.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    path: PathBuf,
    writable: bool,
}

impl RawFile {
    /// Wraps an opened file (opened for writing when `writable`); its
    /// size is its length (a block device's size, found by seeking to its
    /// end).
    pub fn new(mut file: File, path: &Path, writable: bool) -> Result<Self> {
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| io_at(e, path, "cannot find the size"))?;
        Ok(RawFile {
            file,
            size,
            path: path.to_path_buf(),
            writable,
        })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path the volume was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the volume was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Exact data ranges as the file system reports them; everything
    /// when it cannot tell holes apart.
    pub(crate) fn allocation_map(&self) -> Result<AllocationMap> {
        data_ranges(&self.file, self.size, &self.path)
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(VolumeError::ReadOnly {
                path: self.path.clone(),
            }
            .into())
        }
    }
}

impl Size for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for RawFile {
    /// Zeros past the end of the file: a file that shrank after it was
    /// opened reads as zeros up to the size it had.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_bounds("read", offset, buf.len() as u64, self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            match self.file.read_at(&mut buf[done..], pos) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
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

impl WriteAt for RawFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_writable()?;
        check_bounds("write", offset, data.len() as u64, self.size)?;
        self.file.write_all_at(data, offset).map_err(|e| {
            io_at(
                e,
                &self.path,
                &format!("write of {} bytes at offset {offset} failed", data.len()),
            )
        })
    }
}

impl Zero for RawFile {
    fn zero(&self, offset: u64, len: u64, punch: bool) -> Result<()> {
        self.check_writable()?;
        check_bounds("zero", offset, len, self.size)?;
        zero_range(&self.file, offset, len, punch)
            .map_err(|e| io_at(e, &self.path, &format!("zeroing at offset {offset} failed")))
    }
}

impl Flush for RawFile {
    fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| io_at(e, &self.path, "fdatasync failed"))
    }
}

impl Extents for RawFile {
    /// Data and holes as `SEEK_DATA`/`SEEK_HOLE` report them.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_bounds("extents", offset, len, self.size)?;
        let end = offset + len;
        let map = data_ranges(&self.file, self.size, &self.path)?;
        let mut out = Vec::new();
        let mut pos = offset;
        for r in map.ranges() {
            let (s, e) = (r.offset.max(offset), (r.offset + r.len).min(end));
            if e <= s {
                continue;
            }
            push_extent(&mut out, pos, s - pos, ExtentKind::Hole);
            push_extent(&mut out, s, e - s, ExtentKind::Data);
            pos = e;
        }
        push_extent(&mut out, pos, end - pos, ExtentKind::Hole);
        Ok(out)
    }
}

/// Zeroes `[offset, offset+len)` of `f`: with `punch` deallocates (a hole),
/// else asks for allocated zeros; writes zeros where the file system
/// supports neither. The file's length never changes.
pub(crate) fn zero_range(f: &File, offset: u64, len: u64, punch: bool) -> io::Result<()> {
    use rustix::fs::FallocateFlags as F;
    if len == 0 {
        return Ok(());
    }
    let mode = if punch {
        F::PUNCH_HOLE | F::KEEP_SIZE
    } else {
        F::ZERO_RANGE | F::KEEP_SIZE
    };
    match rustix::fs::fallocate(f, mode, offset, len) {
        Ok(()) => return Ok(()),
        Err(Errno::OPNOTSUPP | Errno::INVAL) => {}
        Err(e) => return Err(e.into()),
    }
    let mut off = offset;
    let end = offset + len;
    while off < end {
        let n = (end - off).min(ZEROS.len() as u64) as usize;
        f.write_all_at(&ZEROS[..n], off)?;
        off += n as u64;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_range_zeroes_and_keeps_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.raw");
        std::fs::write(&p, vec![7u8; 10_000]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        zero_range(&f, 100, 5000, true).unwrap();
        zero_range(&f, 6000, 100, false).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 10_000);
        assert!(got[100..5100].iter().all(|&b| b == 0));
        assert!(got[6000..6100].iter().all(|&b| b == 0));
        assert_eq!(got[99], 7);
        assert_eq!(got[5100], 7);
        assert_eq!(got[6100], 7);
    }

    #[test]
    fn extents_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.raw");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mib = 1u64 << 20;
        f.set_len(8 * mib).unwrap();
        f.write_all_at(&vec![1u8; mib as usize], 2 * mib).unwrap();
        let v = RawFile::new(f, &p, false).unwrap();
        let list = v.extents(0, 8 * mib).unwrap();
        // Either the file system reports holes (three extents) or it does
        // not (one data extent); both cover the file without gaps.
        let mut pos = 0;
        for e in &list {
            assert_eq!(e.start, pos);
            pos += e.len;
        }
        assert_eq!(pos, 8 * mib);
        if list.len() > 1 {
            assert!(
                list.iter().any(|e| e.kind == ExtentKind::Data
                    && e.start <= 2 * mib
                    && e.end() >= 3 * mib)
            );
            assert_eq!(list[0].kind, ExtentKind::Hole);
        }
        // A window: clipped to it.
        let part = v.extents(2 * mib + 5, mib).unwrap();
        assert_eq!(part[0].start, 2 * mib + 5);
        assert_eq!(part.iter().map(|e| e.len).sum::<u64>(), mib);
        assert!(v.extents(0, 0).unwrap().is_empty());
        assert!(v.extents(8 * mib, 1).is_err());
    }

    #[test]
    fn a_read_only_volume_refuses_writes() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let v = RawFile::new(f, Path::new("v"), false).unwrap();
        let e = v.write_at(0, b"x").unwrap_err();
        assert!(e.to_string().contains("reading only"), "{e}");
        assert!(v.zero(0, 1, true).is_err());
        let mut b = [1u8; 3];
        v.read_at(4093, &mut b).unwrap();
        assert_eq!(b, [0; 3]);
        assert!(v.read_at(4094, &mut b).is_err());
    }
}
