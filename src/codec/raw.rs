//! Raw disks: the entry's bytes are the guest bytes. Zero detection is not
//! done here but once, in the volume writer.

use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::Result;

/// Passes bytes through at a running guest offset.
#[derive(Debug, Default)]
pub struct RawDecoder {
    offset: u64,
    size_hint: Option<u64>,
}

impl RawDecoder {
    /// A decoder positioned at guest offset 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that tells its sink the disk is `size` bytes (the entry's
    /// size) before the first extent.
    pub fn with_size_hint(size: u64) -> Self {
        RawDecoder {
            offset: 0,
            size_hint: Some(size),
        }
    }
}

impl DiskDecoder for RawDecoder {
    fn feed(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        if input.is_empty() {
            return Ok(());
        }
        if let Some(size) = self.size_hint.take() {
            out.size_hint(size)?;
        }
        out.data(self.offset, input)?;
        self.offset += input.len() as u64;
        Ok(())
    }

    fn finish(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        if let Some(size) = self.size_hint.take() {
            out.size_hint(size)?;
        }
        Ok(())
    }

    fn capacity(&self) -> Option<u64> {
        None
    }
}
