//! Sequential writes into a raw volume with `O_DIRECT`, as ovirt-imageio
//! does: whole aligned blocks go from an aligned buffer straight to the
//! device, so a busy server does not copy every byte into the page cache
//! (measured: with 8 concurrent uploads that copy was over half of the
//! server's CPU time). The unaligned head and tail of a request go through
//! the ordinary descriptor; where `O_DIRECT` is not available (tmpfs,
//! some network file systems) everything does.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;

/// Alignment of direct writes: offsets, lengths and the buffer address.
pub const ALIGN: usize = 4096;

/// Writes consecutive bytes from `offset` on; see the module docs.
#[derive(Debug)]
pub struct DirectWriter<'a> {
    buffered: &'a File,
    direct: Option<File>,
    /// `capacity + ALIGN` bytes; the aligned window starts at `start`.
    buf: Vec<u8>,
    start: usize,
    capacity: usize,
    fill: usize,
    /// File offset of the next byte given to `write`.
    pos: u64,
}

impl<'a> DirectWriter<'a> {
    /// A writer at `offset` of `file` with a buffer of `capacity` bytes
    /// (rounded to the alignment). Opens a second, direct descriptor on
    /// the same open file (through `/proc/self/fd`, so no path is
    /// resolved again).
    pub fn new(file: &'a File, offset: u64, capacity: usize) -> Self {
        let capacity = capacity.max(ALIGN) / ALIGN * ALIGN;
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .ok();
        let (buf, start) = if direct.is_some() {
            let buf = vec![0u8; capacity + ALIGN];
            let start = buf.as_ptr().align_offset(ALIGN);
            (buf, start)
        } else {
            (Vec::new(), 0)
        };
        DirectWriter {
            buffered: file,
            direct,
            buf,
            start,
            capacity,
            fill: 0,
            pos: offset,
        }
    }

    /// The file offset up to which every byte given has been written to
    /// the file (the rest waits in the buffer for a whole block).
    pub fn written_through(&self) -> u64 {
        self.pos - self.fill as u64
    }

    /// The file offset of the next byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether whole blocks bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends `data`.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.direct.is_none() {
            self.buffered.write_all_at(data, self.pos)?;
            self.pos += data.len() as u64;
            return Ok(());
        }
        // An unaligned start goes through the page cache up to the next
        // block boundary.
        if self.fill == 0 {
            let mis = (self.pos % ALIGN as u64) as usize;
            if mis != 0 {
                let n = (ALIGN - mis).min(data.len());
                self.buffered.write_all_at(&data[..n], self.pos)?;
                self.pos += n as u64;
                data = &data[n..];
            }
        }
        while !data.is_empty() {
            let n = (self.capacity - self.fill).min(data.len());
            let at = self.start + self.fill;
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.fill += n;
            self.pos += n as u64;
            data = &data[n..];
            if self.fill == self.capacity {
                self.flush_blocks()?;
            }
        }
        Ok(())
    }

    /// Writes what is buffered: whole blocks directly, the rest through
    /// the page cache. Returns the offset after the last byte.
    pub fn finish(mut self) -> io::Result<u64> {
        self.flush_blocks()?;
        if self.fill > 0 {
            let off = self.pos - self.fill as u64;
            let at = self.start;
            self.buffered
                .write_all_at(&self.buf[at..at + self.fill], off)?;
            self.fill = 0;
        }
        Ok(self.pos)
    }

    /// Writes the whole blocks at the front of the buffer directly and
    /// moves the remainder to the front.
    fn flush_blocks(&mut self) -> io::Result<()> {
        let blocks = self.fill / ALIGN * ALIGN;
        if blocks == 0 {
            return Ok(());
        }
        let off = self.pos - self.fill as u64;
        let range = self.start..self.start + blocks;
        let r = match &self.direct {
            Some(d) => d.write_all_at(&self.buf[range.clone()], off),
            None => self.buffered.write_all_at(&self.buf[range.clone()], off),
        };
        match r {
            Ok(()) => {}
            // The file system takes no direct I/O at this alignment after
            // all: write through the page cache from now on.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                self.direct = None;
                self.buffered.write_all_at(&self.buf[range], off)?;
            }
            Err(e) => return Err(e),
        }
        self.buf
            .copy_within(self.start + blocks..self.start + self.fill, self.start);
        self.fill -= blocks;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Rng;

    fn check(offset: u64, pieces: &[usize], capacity: usize) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.raw");
        let size = 1 << 20;
        std::fs::write(&p, vec![0xeeu8; size]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut rng = Rng(offset ^ pieces.len() as u64);
        let mut expect = vec![0xeeu8; size];
        let mut w = DirectWriter::new(&f, offset, capacity);
        let mut pos = offset as usize;
        for &n in pieces {
            let data = rng.bytes(n);
            expect[pos..pos + n].copy_from_slice(&data);
            pos += n;
            w.write(&data).unwrap();
        }
        assert_eq!(w.finish().unwrap(), pos as u64);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            expect,
            "offset {offset} pieces {pieces:?}"
        );
    }

    #[test]
    fn every_alignment_of_head_and_tail_lands_in_place() {
        check(0, &[8192], 8192);
        check(0, &[100, 5000, 3000, 70_000], 16384);
        check(1, &[4095, 1, 4096, 9], 8192);
        check(4095, &[2], 4096);
        check(12_345, &[65_536, 77, 4096 * 3 + 5], 8192);
        check(4096 * 7, &[1], 4096);
        check(100, &[], 4096);
    }
}
