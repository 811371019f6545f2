//! In-memory sink for decoder unit tests.

use crate::codec::ExtentSink;
use crate::error::{Error, ErrorKind, Result};

/// Collects an extent stream into a flat image.
#[derive(Debug, Default)]
pub(crate) struct MemSink {
    pub(crate) bytes: Vec<u8>,
    pub(crate) capacity: Option<u64>,
}

impl ExtentSink for MemSink {
    fn capacity(&mut self, bytes: u64) -> Result<()> {
        self.capacity = Some(bytes);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        if let Some(cap) = self.capacity
            && end > cap
        {
            return Err(Error::new(ErrorKind::CorruptImage, "write past capacity"));
        }
        if self.bytes.len() < end as usize {
            self.bytes.resize(end as usize, 0);
        }
        self.bytes[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        let end = (offset + len) as usize;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[offset as usize..end].fill(0);
        Ok(())
    }
}
