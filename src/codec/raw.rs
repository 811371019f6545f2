//! Raw disks: the entry's bytes are the guest bytes. Zero detection is not
//! done here but once, in the volume writer.

use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::Result;

/// Passes bytes through at a running guest offset.
#[derive(Debug, Default)]
pub struct RawDecoder {
    offset: u64,
}

impl RawDecoder {
    /// A decoder positioned at guest offset 0.
    pub fn new() -> Self {
        Self::default()
    }
}

impl DiskDecoder for RawDecoder {
    fn feed(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        if input.is_empty() {
            return Ok(());
        }
        out.data(self.offset, input)?;
        self.offset += input.len() as u64;
        Ok(())
    }

    fn finish(&mut self, _out: &mut dyn ExtentSink) -> Result<()> {
        Ok(())
    }

    fn capacity(&self) -> Option<u64> {
        None
    }
}
