//! Volume sinks: target files written under `.partial` names.
pub mod format;
pub mod partial;
pub mod qcow2;
pub mod raw;
pub mod spool;
pub mod target;
pub mod writer;

/// "bytes at offsets" storage of one target volume. All offsets are guest offsets < capacity.
pub trait Volume {
    /// Writes `data` at guest offset `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> crate::Result<()>;
    /// Make [offset, offset+len) read as zero. On a fresh volume this is a no-op for never-written ranges.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> crate::Result<()>;
    /// Flush metadata and data, fsync. After this the file is a complete valid image.
    fn finish(&mut self) -> crate::Result<()>;
    /// The virtual size in bytes.
    fn capacity(&self) -> u64;
}
