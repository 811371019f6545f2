//! Import targets: the volumes a package's disks are written into, under
//! `.partial` names, each fed by an extent stream through
//! [`writer::VolumeWriter`]. A fresh raw target is a sparse file that
//! punches holes through the volume layer's raw backend
//! ([`crate::volume::raw`]); a fresh qcow2 target is written by
//! [`qcow2::Qcow2Volume`], which lays out every L2 table before the data
//! it maps. An NBD export ([`nbd`]) and a remote volume ([`imageio`]) are
//! written in place, as guest bytes.
pub mod format;
pub mod imageio;
pub mod nbd;
pub mod partial;
pub mod qcow2;
pub mod raw;
pub mod spool;
pub mod target;
pub mod writer;

/// "bytes at offsets" storage of one import target, written once from
/// an extent stream. All offsets are guest offsets < capacity.
pub trait Target {
    /// Writes `data` at guest offset `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> crate::Result<()>;
    /// Make [offset, offset+len) read as zero. On a fresh volume this is a no-op for never-written ranges.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> crate::Result<()>;
    /// Flush metadata and data, fsync. After this the file is a complete valid image.
    fn finish(&mut self) -> crate::Result<()>;
    /// The virtual size in bytes.
    fn capacity(&self) -> u64;
    /// Settles a provisional capacity (a volume opened before its size was
    /// known) at `capacity`, which is not larger than the current one. The
    /// caller guarantees nothing was written at or past it.
    fn set_capacity(&mut self, capacity: u64) -> crate::Result<()> {
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!("this volume cannot change its capacity to {capacity}"),
        ))
    }
}
