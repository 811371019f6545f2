//! Disk format codecs. A decoder turns the bytes of one tar entry, fed in
//! pieces of any size, into an extent stream pushed to an [`ExtentSink`];
//! it never opens files (storage it needs, such as a spool, comes in
//! through a small trait).

pub mod blocks;
pub(crate) mod gather;
pub mod gzip;
pub mod map;
pub mod probe;
pub mod qcow2;
pub mod raw;
pub mod select;
pub mod vdi;
pub mod vhd;
pub mod vmdk;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod verify;

#[cfg(test)]
pub(crate) mod test_support;

use crate::error::Result;

/// Receives the extent stream: `(guest_offset, data | zero)`.
///
/// Extents need not arrive in guest order, but a decoder never emits bytes
/// past the capacity it announced.
pub trait ExtentSink {
    /// The virtual size, as soon as the decoder knows it from its header.
    /// Called at most once, before any extent.
    fn capacity(&mut self, _bytes: u64) -> Result<()> {
        Ok(())
    }
    /// The disk is at least this large (a raw entry's size): a fallback for
    /// sinks that know no better capacity. Called at most once, before any
    /// extent; after [`ExtentSink::size_pending`], once at the end instead.
    fn size_hint(&mut self, _bytes: u64) -> Result<()> {
        Ok(())
    }
    /// A raw entry of `entry` bytes whose last `trailer` bytes are held
    /// back, because they may be a fixed VHD's footer rather than disk
    /// data: the disk is at least `entry - trailer` bytes. Called at most
    /// once, before any extent; [`ExtentSink::size_hint`] follows at the
    /// end with the size the data turned out to have, before the held-back
    /// bytes if they are data.
    fn size_pending(&mut self, _entry: u64, _trailer: u64) -> Result<()> {
        Ok(())
    }
    /// `data` belongs at guest offset `offset`.
    fn data(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// `len` bytes at guest offset `offset` read as zero.
    fn zero(&mut self, offset: u64, len: u64) -> Result<()>;
}

/// A one-pass decoder of one disk format.
pub trait DiskDecoder {
    /// Feeds the next bytes of the entry; `input` may be split anywhere.
    fn feed(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<()>;
    /// The entry ended: flush what is pending, and fail if the image is
    /// incomplete.
    fn finish(&mut self, out: &mut dyn ExtentSink) -> Result<()>;
    /// The virtual size once known from the image itself.
    fn capacity(&self) -> Option<u64>;
}

/// The disk formats ovaio decodes; [`probe`] tells which one an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Plain bytes.
    Raw,
    /// qcow2 (v2 or v3).
    Qcow2,
    /// VMware streamOptimized VMDK.
    Vmdk,
    /// VMware monolithicSparse VMDK (a hosted sparse extent).
    VmdkSparse,
    /// Microsoft VHD: dynamic, or fixed (a raw entry ending with its footer).
    Vhd,
    /// VirtualBox VDI, dynamic or static.
    Vdi,
}

impl SourceFormat {
    /// Name as used in summaries: the format family, as an OVF's
    /// `ovf:format` names it (every VMDK subformat is `vmdk`).
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Raw => "raw",
            SourceFormat::Qcow2 => "qcow2",
            SourceFormat::Vmdk | SourceFormat::VmdkSparse => "vmdk",
            SourceFormat::Vhd => "vhd",
            SourceFormat::Vdi => "vdi",
        }
    }
}
