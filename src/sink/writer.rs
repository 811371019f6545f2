//! The one place where extents meet a volume: bounds are enforced against
//! the capacity and zero blocks are detected, so that decoders pass data
//! through and volumes only ever see the writes they must make.

use crate::codec::ExtentSink;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::Target;

/// Granularity of zero detection, aligned in guest offsets.
pub const ZERO_BLOCK: usize = 4096;

/// Whether every byte of `b` is zero.
#[inline]
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            acc |= u64::from_ne_bytes(word);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// An [`ExtentSink`] over a [`Volume`]: bounds checks and zero detection.
#[derive(Debug)]
#[must_use = "call finish() to flush and fsync the volume"]
pub struct VolumeWriter<V> {
    volume: V,
    capacity: u64,
    data_bytes: u64,
    /// End of the furthest extent received.
    high_water: u64,
}

impl<V: Target> VolumeWriter<V> {
    /// Wraps a freshly created volume.
    pub fn new(volume: V) -> Self {
        let capacity = volume.capacity();
        VolumeWriter {
            volume,
            capacity,
            data_bytes: 0,
            high_water: 0,
        }
    }

    /// Settles a provisional capacity; fails if extents already lie past it.
    pub fn set_capacity(&mut self, capacity: u64) -> Result<()> {
        if self.high_water > capacity {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "disk content reaches guest offset {} but the disk capacity is {capacity} bytes",
                    self.high_water
                ),
            ));
        }
        self.volume.set_capacity(capacity)?;
        self.capacity = capacity;
        Ok(())
    }

    /// The volume's virtual size.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of non-zero data written so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Flushes metadata and fsyncs; the volume is then complete.
    pub fn finish(mut self) -> Result<()> {
        self.volume.finish()
    }

    fn check(&mut self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => {
                self.high_water = self.high_water.max(end);
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "extent at guest offset {offset} (+{len} bytes) lies beyond the disk capacity of {} bytes",
                    self.capacity
                ),
            )),
        }
    }

    fn write_run(&mut self, offset: u64, data: &[u8], zero: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if zero {
            self.volume.write_zeroes(offset, data.len() as u64)
        } else {
            self.data_bytes += data.len() as u64;
            self.volume.write_at(offset, data)
        }
    }
}

impl<V: Target> ExtentSink for VolumeWriter<V> {
    fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        // Unaligned head: written as data, zero detection starts aligned.
        let head = ((ZERO_BLOCK as u64 - offset % ZERO_BLOCK as u64) % ZERO_BLOCK as u64)
            .min(data.len() as u64) as usize;
        let mut run_start = 0usize;
        let mut run_zero = head == 0 || is_zero(&data[..head]);
        let mut pos = head;
        while pos < data.len() {
            let end = (pos + ZERO_BLOCK).min(data.len());
            let z = is_zero(&data[pos..end]);
            if z != run_zero && pos > run_start {
                self.write_run(offset + run_start as u64, &data[run_start..pos], run_zero)?;
                run_start = pos;
            }
            run_zero = z;
            pos = end;
        }
        self.write_run(offset + run_start as u64, &data[run_start..], run_zero)
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.volume.write_zeroes(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Log {
        ops: Vec<(char, u64, u64)>,
        cap: u64,
    }

    impl Target for Log {
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
            self.ops.push(('d', offset, data.len() as u64));
            Ok(())
        }
        fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
            self.ops.push(('z', offset, len));
            Ok(())
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
        fn capacity(&self) -> u64 {
            self.cap
        }
    }

    fn writer() -> VolumeWriter<Log> {
        VolumeWriter::new(Log {
            ops: vec![],
            cap: 1 << 20,
        })
    }

    #[test]
    fn splits_zero_and_data_runs() {
        let mut w = writer();
        let mut buf = vec![0u8; 4 * ZERO_BLOCK];
        buf[ZERO_BLOCK + 5] = 1;
        buf[2 * ZERO_BLOCK] = 1;
        w.data(0, &buf).unwrap();
        assert_eq!(
            w.volume.ops,
            vec![('z', 0, 4096), ('d', 4096, 8192), ('z', 12288, 4096)]
        );
        assert_eq!(w.data_bytes(), 8192);
    }

    #[test]
    fn unaligned_head_is_its_own_run() {
        let mut w = writer();
        let buf = vec![0u8; 100 + ZERO_BLOCK];
        w.data(ZERO_BLOCK as u64 - 100, &buf).unwrap();
        // Zero head and zero block merge into one zero run.
        assert_eq!(w.volume.ops, vec![('z', 3996, 4196)]);
        let mut w = writer();
        let mut buf = vec![0u8; 100 + ZERO_BLOCK];
        buf[0] = 9;
        w.data(ZERO_BLOCK as u64 - 100, &buf).unwrap();
        assert_eq!(w.volume.ops, vec![('d', 3996, 100), ('z', 4096, 4096)]);
    }

    #[test]
    fn rejects_writes_past_capacity() {
        let mut w = writer();
        let e = w.data((1 << 20) - 10, &[1u8; 11]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage);
        assert!(w.zero(u64::MAX - 1, 5).is_err());
        assert!(w.volume.ops.is_empty());
    }

    #[test]
    fn is_zero_sees_every_byte() {
        let mut b = vec![0u8; 200];
        assert!(is_zero(&b));
        for i in 0..200 {
            b[i] = 1;
            assert!(!is_zero(&b), "{i}");
            b[i] = 0;
        }
    }
}
